"""Local runs of the TensorRT targets (``TrtSource.local_errors``): each layer alone, on fp32 inputs.

One ONNX Runtime fp32 run of the model captures every tensor (the reference values,
:func:`parity.lib.onnx.reference.reference_values`); then each ONNX node producing a float
activation is cut out into a model of its own (:func:`single_node_model`), built into a TensorRT
engine at the target precision (:mod:`.loader`) and fed the fp32 reference values of its inputs
(:mod:`.runner`). Its output against the reference output is that layer's local error. Results
are keyed by the ONNX tensor name, as ``TrtSource.run`` names the records it can map exactly; a
tensor fused away inside the full engine has no record, so its local result joins no row and is
ignored.

Everything here but :func:`local_results` is plain ONNX and tested without TensorRT.
(``keep_high_precision`` and ``outputs_only`` are :func:`.config.run_engine_config`.)
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

import numpy as np

from parity.contract.atomic import atomic_path
from parity.contract.errors import ParityError
from parity.contract.source import RunConfig
from parity.lib.onnx.models import onnx_model_for
from parity.lib.onnx.reference import reference_values

from .config import EngineConfig, layer_name, run_engine_config, run_options, with_constraints
from .marking import SHAPE_INPUTS

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from parity.contract.records import LocalResult

_FLOAT = {"float32", "float16", "float64", "bfloat16"}


# --------------------------------------------------------------------------- single-node models

def _has_subgraph(node: "onnx.NodeProto") -> bool:
    import onnx

    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


class NodeExtractor:
    """Cuts single nodes out of one model; shape inference and graph facts are computed once."""

    def __init__(self, model: "onnx.ModelProto") -> None:
        import onnx
        from parity.lib.onnx.graph import without_weights, model_inputs, tensor_sites

        self.model = model
        g = model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.sparse = {t.values.name: t for t in g.sparse_initializer}
        self.constant_node = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output}
        self.live = {vi.name for vi in model_inputs(model)} | {s.name for s in tensor_sites(model)}
        try:
            inferred = onnx.shape_inference.infer_shapes(without_weights(model), strict_mode=False)
        except Exception:  # noqa: BLE001 - typed from the values instead
            inferred = model
        ig = inferred.graph
        self.types = {vi.name: vi for vi in list(ig.value_info) + list(ig.input) + list(ig.output)
                      if vi.type.HasField("tensor_type")}

    def _value_info(self, name: str, value: np.ndarray | None) -> "onnx.ValueInfoProto":
        from onnx import helper

        vi = self.types.get(name)
        if value is not None:
            return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                 list(value.shape))
        if vi is not None:
            out = type(vi)()
            out.CopyFrom(vi)
            return out
        v = helper.ValueInfoProto()
        v.name = name
        return v

    def extract(self, node_index: int, values: Mapping[str, np.ndarray] | None = None) -> "onnx.ModelProto":
        """A model of node ``node_index`` alone: see :func:`single_node_model`."""
        import onnx
        from onnx import numpy_helper

        values = values or {}
        g = self.model.graph
        node = g.node[node_index]
        label = layer_name(node) or f"#{node_index}"
        if _has_subgraph(node):
            raise ParityError(f"node {label!r} ({node.op_type}) holds a body graph and cannot run alone. "
                              f"Note: control flow has no local run")
        new = onnx.ModelProto()
        for f in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
            setattr(new, f, getattr(self.model, f))
        new.opset_import.extend(self.model.opset_import)
        new.functions.extend(self.model.functions)
        ng = new.graph
        ng.name = f"parity_local_{node_index}"
        shape_pos = set(SHAPE_INPUTS.get(node.op_type, ()))
        seen: set[str] = set()
        for pos, x in enumerate(node.input):
            if not x or x in seen:
                continue
            seen.add(x)
            if x in self.inits:
                ng.initializer.append(self.inits[x])
            elif x in self.sparse:
                ng.sparse_initializer.append(self.sparse[x])
            elif x in self.live and not (pos in shape_pos and x in values):
                ng.input.append(self._value_info(x, np.asarray(values[x]) if x in values else None))
            elif x in self.constant_node:
                ng.node.append(self.constant_node[x])
            elif x in values:
                # computed from constants, or a shape the node reads: fixed for this input
                ng.initializer.append(numpy_helper.from_array(np.asarray(values[x]), name=x))
            else:
                raise ParityError(f"input {x!r} of node {label!r} is computed from constants and its value "
                                  f"is not known. Note: capture it in the reference run")
        ng.node.append(node)
        for o in node.output:
            if o:
                ng.output.append(self._value_info(o, np.asarray(values[o]) if o in values else None))
        return new


def single_node_model(model: "onnx.ModelProto", node_index: int,
                      values: Mapping[str, np.ndarray] | None = None) -> "onnx.ModelProto":
    """Node ``node_index`` of ``model`` as a model of its own, without TensorRT.

    Initializers it reads are copied; inputs computed from the graph inputs become graph inputs
    (typed from ``values`` where given, else from ONNX shape inference); inputs computed from
    constants only, and inputs the node reads as shapes (Reshape's shape...), become initializers
    holding their ``values`` so TensorRT sees constants, as in the full network. Outputs are the
    node's outputs. For many nodes of one model use :class:`NodeExtractor` (one shape inference).
    """
    return NodeExtractor(model).extract(node_index, values)


# --------------------------------------------------------------------------- local runs

def _save_model(model: "onnx.ModelProto", workdir: Path) -> Path:
    """The single-node model under ``workdir/trt-local``, named by its content (engines key on it)."""
    data = model.SerializeToString()
    path = Path(workdir) / "trt-local" / f"{hashlib.sha256(data).hexdigest()[:24]}.onnx"
    if not path.is_file():
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    return path


@dataclasses.dataclass
class LocalCase:
    """One node's local run, ready for TensorRT: its model, the fp32 values to feed, the reference outputs."""

    node_index: int
    layer: str
    op_type: str
    keys: list[str]
    model: "onnx.ModelProto"
    feed: dict[str, np.ndarray]
    ref: dict[str, np.ndarray]


def local_cases(orig: "onnx.ModelProto", cfg: RunConfig, feed: Mapping[str, np.ndarray], ecfg: EngineConfig,
                label: str = "the model") -> Iterator[LocalCase]:
    """The single-node runs for ``feed``, from one ONNX Runtime fp32 run capturing every tensor needed.

    Plain ONNX Runtime, no TensorRT; ``orig`` gains the captured tensors as graph outputs.
    Nodes with a body graph are left out, and so are tensors
    ``trt_mark`` / ``trt_mark_names`` do not select. The reference runs on the CPU unless
    ``ort_providers`` says otherwise (the CUDA provider may compute fp32 in TF32).
    """
    from parity.lib.onnx.graph import tensor_sites

    extractor = NodeExtractor(orig)
    nodes = orig.graph.node
    wanted = sorted({s.node_index for s in tensor_sites(orig)
                     if not _has_subgraph(nodes[s.node_index])
                     and ecfg.selects(s.name, layer_name(nodes[s.node_index]))})
    need: set[str] = set()
    for i in wanted:
        need.update(x for x in nodes[i].input if x and x not in extractor.inits and x not in extractor.sparse)
        need.update(o for o in nodes[i].output if o)
    names = [o for n in nodes for o in n.output if o and o in need]
    feed = {k: np.asarray(v) for k, v in feed.items()}
    ref = reference_values(orig, names, feed, cfg.options, cfg.workdir, label)
    ref.update(feed)
    for i in wanted:
        node = nodes[i]
        keys = [o for o in node.output if o in ref and str(ref[o].dtype) in _FLOAT]
        if not keys:
            continue
        model = extractor.extract(i, ref)
        yield LocalCase(i, layer_name(node), node.op_type, keys, model,
                        {vi.name: ref[vi.name] for vi in model.graph.input}, {k: ref[k] for k in keys})


def local_results(target: str, precision: str, cfg: RunConfig, feed: dict[str, np.ndarray],
                  skipped: list[dict[str, str]]) -> Iterator["LocalResult"]:
    """Each float-producing ONNX node as its own engine at ``precision``, on fp32 inputs.

    Layers that cannot run alone are appended to ``skipped`` as ``{key, onnx_node, reason}``.
    """
    from parity.contract.records import LocalResult
    from parity.lib.onnx.graph import load_model

    from .config import TARGET_LIBRARY
    from .loader import build_engine, tensorrt_with_cuda, typed_model
    from .runner import run_built

    lib = TARGET_LIBRARY[target]
    trt = tensorrt_with_cuda(f"the local runs of {target}", lib)
    run_engine_config(precision, run_options(cfg), library=lib)  # bad options fail before any work
    onnx_path, _names = onnx_model_for(cfg, feed)
    orig = load_model(onnx_path, what="model")
    ecfg = run_engine_config(precision, run_options(cfg), orig, onnx_path.name, library=lib)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in orig.graph.node):
        skipped.append({"key": "*", "onnx_node": "*", "reason": (
            "the model is Q/DQ-quantized: a node cut out alone loses its QuantizeLinear/DequantizeLinear "
            "pairs, so no local run would show the engine's int8 arithmetic")})
        return
    for case in local_cases(orig, cfg, feed, ecfg, onnx_path.name):
        node_ecfg = dataclasses.replace(
            ecfg, capture="outputs", mark_regex=None, mark_names=(),
            layer_precisions=tuple(lp for lp in ecfg.layer_precisions if lp.matches(case.layer)))
        if node_ecfg.precision_constraints != "none" and not node_ecfg.layer_precisions:
            node_ecfg = with_constraints(node_ecfg, "none")
        calib = [case.feed] if "INT8" in node_ecfg.builder_flags else []
        try:
            path = typed_model(_save_model(case.model, Path(cfg.workdir)), node_ecfg, Path(cfg.workdir))
            built = build_engine(trt, path, node_ecfg, case.feed, calib, Path(cfg.workdir), False)
            got = run_built(trt, built, case.feed, f"the local engine of {case.layer!r}")
        except ParityError as e:
            skipped.extend({"key": k, "onnx_node": case.layer, "reason": str(e)} for k in case.keys)
            continue
        for k in case.keys:
            if k not in got:
                continue
            meta = {"onnx_node": case.layer, "precision": precision, "local_nodes": 1,
                    "local_inputs": list(case.feed), "engine_cache": built.notes.get("engine_cache")}
            if calib:
                meta["warning"] = "int8 local run calibrated on its own fp32 inputs: scales differ from the engine's"
            yield LocalResult(key=k, ref=case.ref[k], target=got[k], op_type=case.op_type, meta=meta)
        del got

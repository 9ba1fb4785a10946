"""Diagnosis support for the TensorRT targets: local runs, keeping layers in fp32, outputs only.

*Local runs* (``TrtSource.local_errors``): one ONNX Runtime fp32 run of the model captures
every tensor (the reference values); then each ONNX node producing a float activation is cut
out into a model of its own (:func:`single_node_model`), built into a TensorRT engine at the
target precision and fed the fp32 reference values of its inputs. Its output against the
reference output is that layer's local error. Results are keyed by the ONNX tensor name, as
``TrtSource.run`` names the records it can map exactly; a tensor fused away inside the full
engine has no record, so its local result joins no row and is ignored.

*Keeping layers* (``keep_high_precision``, what ``parity fix`` searches): record keys are ONNX
tensor names; their producing nodes become per-layer ``fp32`` overrides (TensorRT's ONNX parser
names network layers after ONNX nodes) with precision constraints obeyed.

*Outputs only* (``outputs_only``): capture mode ``outputs``, no debug tensors, no marking.

Everything here but :func:`run_built` and :func:`local_results` is plain ONNX and tested
without TensorRT.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import numpy as np

from parity.contract.atomic import atomic_path
from parity.contract.errors import ParityError, first_line
from parity.contract.options import as_bool, as_list
from parity.contract.source import RunConfig
from parity.lib.onnx.models import onnx_model_for

from .config import (EngineConfig, LayerPrecision, engine_config, parse_layer_precisions,
                     with_constraints)
from .marking import SHAPE_INPUTS

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from parity.contract.records import LocalResult

    from .source import TrtSource

_FLOAT = {"float32", "float16", "float64", "bfloat16"}


# --------------------------------------------------------------------------- names

def layer_name(node: "onnx.NodeProto") -> str:
    """The network layer TensorRT's ONNX parser makes for ``node`` (``node_of_<out>`` when unnamed)."""
    return node.name or (f"node_of_{node.output[0]}" if node.output else "")


def keep_to_layer_precisions(model: "onnx.ModelProto", keys: Iterable[str],
                             existing: Mapping[str, str] | Iterable[LayerPrecision] | str | None = None,
                             label: str = "the model") -> dict[str, str]:
    """Layer precision overrides (name or pattern -> precision) keeping ``keys``' producers in fp32.

    ``existing`` (a ``layer_precisions`` spec, parsed entries, or a dict) comes first, in its
    order; each kept node is then set to ``fp32``, overriding an earlier entry for the same name.
    A key that no top-level node produces is an error naming it.
    """
    out: dict[str, str] = {}
    if isinstance(existing, Mapping):
        out.update((str(k), str(v)) for k, v in existing.items())
    elif isinstance(existing, str) or existing is None:
        out.update((lp.pattern, lp.precision) for lp in parse_layer_precisions(existing))
    else:
        for lp in existing:
            if isinstance(lp, LayerPrecision):
                out[lp.pattern] = lp.precision
            else:
                out.update((p.pattern, p.precision) for p in parse_layer_precisions(str(lp)))
    producer = {o: n for n in model.graph.node for o in n.output if o}
    keys = list(dict.fromkeys(str(k) for k in keys))
    unknown = [k for k in keys if k not in producer]
    if unknown:
        inputs = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
        why = ("a graph input or weight, not computed by a layer" if all(k in inputs for k in unknown)
               else "not a tensor computed by a node")
        example = next(iter(producer), "")
        raise ParityError(f"keep_high_precision names {', '.join(map(repr, unknown[:5]))}, {why} of {label}. "
                          f"Note: give record keys named after ONNX tensors (e.g. {example!r}); records "
                          f"named after engine tensors cannot be kept")
    for k in keys:
        name = layer_name(producer[k])
        out.pop(name, None)  # re-insert so the keep entry comes last
        out[name] = "fp32"
    return out


def run_engine_config(precision: str, options: Mapping[str, Any] | None,
                      model: "onnx.ModelProto | None" = None, label: str = "the model") -> EngineConfig:
    """The :class:`EngineConfig` for a run, with ``outputs_only`` and ``keep_high_precision`` applied.

    Without ``model`` the keep set is only checked for shape; with it, it becomes per-layer
    fp32 overrides merged after ``trt_layer_precisions`` / ``layer_precisions``, and precision
    constraints are obeyed (``prefer`` when the user asked for it). The overrides are build
    fields, so they are part of the engine cache key.
    """
    o = dict(options or {})
    only = as_bool(o.pop("outputs_only", False), "outputs_only")
    keep = tuple(as_list(o.pop("keep_high_precision", None)))
    if only:
        o["trt_capture"] = "outputs"
    ecfg = engine_config(precision, o)
    if not keep:
        return ecfg
    if ecfg.strongly_typed:
        raise ParityError("keep_high_precision cannot be used with trt_strongly_typed: a strongly typed "
                          "network takes each layer's precision from its ONNX types. Note: drop one of them")
    asked = o.get("trt_precision_constraints")
    if asked is not None and str(asked).lower() == "none":
        raise ParityError("keep_high_precision has no effect with trt_precision_constraints none. "
                          "Note: use obey (the default) or prefer")
    if model is None:
        return ecfg
    merged = keep_to_layer_precisions(model, keep, ecfg.layer_precisions, label)
    constraints = "prefer" if ecfg.precision_constraints == "prefer" else "obey"
    return with_constraints(ecfg, constraints,
                            layer_precisions=tuple(LayerPrecision(n, p) for n, p in merged.items()))


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


# --------------------------------------------------------------------------- TensorRT (thin)

def run_built(trt: Any, built: Any, feed: Mapping[str, np.ndarray], label: str) -> dict[str, np.ndarray]:
    """Run a built engine once on ``feed``; every output as a host array.

    The same TensorRT 10 tensor API calls as ``TrtSource.run`` ([PY Core/ICudaEngine],
    [PY Core/IExecutionContext] in :mod:`.source`).
    """
    import torch

    from ._cuda import to_host
    from .source import bind_inputs, bind_outputs, load_engine

    engine = load_engine(trt, built)
    if engine is None:
        raise ParityError(f"TensorRT could not load the engine built for {label}")
    context = engine.create_execution_context()
    stream = torch.cuda.Stream()
    keep: list[Any] = []
    bind_inputs(trt, engine, context, feed, keep, label)
    outputs = bind_outputs(trt, engine, context, label)
    if not context.execute_async_v3(stream.cuda_stream):
        raise ParityError(f"TensorRT failed running {label}. Note: see its log above")
    stream.synchronize()
    return {n: to_host(t) for n, t in outputs.items()}


def _save_model(model: "onnx.ModelProto", workdir: Path) -> Path:
    """The single-node model under ``workdir/trt-local``, named by its content (engines key on it)."""
    data = model.SerializeToString()
    path = Path(workdir) / "trt-local" / f"{hashlib.sha256(data).hexdigest()[:24]}.onnx"
    if not path.is_file():
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    return path


def reference_values(orig: "onnx.ModelProto", names: list[str], feed: Mapping[str, np.ndarray], cfg: RunConfig,
                     label: str = "the model") -> dict[str, np.ndarray]:
    """``names`` from one ONNX Runtime fp32 run of ``orig`` (which gains them as outputs, in place:
    a copy would double the weights in memory). CPU unless ``ort_providers`` says otherwise."""
    import tempfile

    import onnx
    import onnxruntime as ort
    from google.protobuf.message import EncodeError
    from parity.lib.onnx.graph import with_outputs

    o = cfg.options
    providers = tuple(as_list(o.get("ort_providers"))) or ("CPUExecutionProvider",)
    bad = [p for p in providers if p not in ort.get_available_providers()]
    if bad:
        raise ParityError(f"ort_providers asks for {list(bad)}, which this onnxruntime does not have. "
                          f"Note: available providers are {ort.get_available_providers()}")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if o.get("ort_threads"):
        try:
            so.intra_op_num_threads = int(o["ort_threads"])
        except (TypeError, ValueError):
            raise ParityError(f"ort_threads {o['ort_threads']!r} is not a whole number. Note: e.g. 4") from None
    model = with_outputs(orig, names)
    try:
        try:
            data: bytes | None = model.SerializeToString()
        except EncodeError:  # over protobuf's 2 GB: through a file with external weights
            data = None
        if data is not None:
            sess = ort.InferenceSession(data, so, providers=list(providers))
            vals = sess.run(names, dict(feed))
        else:
            Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cfg.workdir) as d:
                path = Path(d) / "reference.onnx"
                onnx.save(model, str(path), save_as_external_data=True, location="reference.onnx.data")
                sess = ort.InferenceSession(str(path), so, providers=list(providers))
                vals = sess.run(names, dict(feed))
                del sess
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types; one line for the user
        msg = first_line(e)
        raise ParityError(f"onnxruntime failed running {label} for the fp32 reference of the local runs. "
                          f"Note: {msg[:400]}") from e
    return {n: v for n, v in zip(names, vals) if isinstance(v, np.ndarray)}


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
    ref = reference_values(orig, names, feed, cfg, label)
    ref.update(feed)
    for i in wanted:
        node = nodes[i]
        keys = [o for o in node.output if o in ref and str(ref[o].dtype) in _FLOAT]
        if not keys:
            continue
        model = extractor.extract(i, ref)
        yield LocalCase(i, layer_name(node), node.op_type, keys, model,
                        {vi.name: ref[vi.name] for vi in model.graph.input}, {k: ref[k] for k in keys})


def local_results(source: "TrtSource", cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator["LocalResult"]:
    """Each float-producing ONNX node as its own engine at ``source``'s precision, on fp32 inputs."""
    from parity.contract.records import LocalResult
    from parity.lib.onnx.graph import load_model

    from ._cuda import cuda_status
    from .source import build_engine, import_tensorrt

    source.last_local_skipped = []
    trt = import_tensorrt()
    ok, why = cuda_status()
    if not ok:
        raise ParityError(f"{source.name} local runs need a CUDA device. Note: {why}")
    run_engine_config(source.precision, cfg.options)  # bad options fail before any work
    onnx_path, _names = onnx_model_for(cfg, feed)
    orig = load_model(onnx_path, what="model")
    ecfg = run_engine_config(source.precision, cfg.options, orig, onnx_path.name)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in orig.graph.node):
        source.last_local_skipped.append({"key": "*", "onnx_node": "*", "reason": (
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
            path = _save_model(case.model, Path(cfg.workdir))
            built = build_engine(trt, path, node_ecfg, case.feed, calib, Path(cfg.workdir), False)
            got = run_built(trt, built, case.feed, f"the local engine of {case.layer!r}")
        except ParityError as e:
            source.last_local_skipped.extend({"key": k, "onnx_node": case.layer, "reason": str(e)}
                                             for k in case.keys)
            continue
        for k in case.keys:
            if k not in got:
                continue
            meta = {"onnx_node": case.layer, "precision": source.precision, "local_nodes": 1,
                    "local_inputs": list(case.feed), "engine_cache": built.notes.get("engine_cache")}
            if calib:
                meta["warning"] = "int8 local run calibrated on its own fp32 inputs: scales differ from the engine's"
            yield LocalResult(key=k, ref=case.ref[k], target=got[k], op_type=case.op_type, meta=meta)
        del got

"""The ONNX a ModelOpt-quantized model exports to, run in ONNX Runtime: the export and runtime stages.

Why two sources over one file: ``modelopt-int8-qdq`` runs the exported Q/DQ graph literally (graph
optimizations off: QuantizeLinear and DequantizeLinear are separate float ops, as the fake quantizers
were), so its difference from ``modelopt-int8`` is what the *export* changed; ``modelopt-int8-ort``
runs the same file as ONNX Runtime deploys it (all optimizations: Q/DQ folded into integer kernels),
so its difference from ``-qdq`` is what the *runtime* changed. ``parity compare --stages`` chains them
(:mod:`parity.core.stages`).

The export is ``torch.onnx.export(..., dynamo=False)`` of the quantized twin (the TorchScript exporter
emits ModelOpt's quantizers as QuantizeLinear/DequantizeLinear; the dynamo exporter cannot trace them
in this ModelOpt). Its node names carry the module scope (``/layers.0/q_proj/MatMul``), so a module's
output is the last tensor its scope produces for a node outside it: records are named by module path
and pair exactly with the ``torch`` reference.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from parity.contract.capability import NumberFormat, StageKind
from parity.contract.errors import ParityError, first_line
from parity.contract.records import Activation
from parity.contract.source import InputSpec, RunConfig, Source
from parity.lib.options import LOADING
from parity.lib.torch_loader import resolve_input_specs

from .quant import ONNX_PRESETS, PRESETS, call_args, loaded_model, quantize, resolve_config


def scope_of(node_name: str) -> str:
    """``/layers.0/q_proj/MatMul`` -> ``layers.0.q_proj`` (the TorchScript exporter's module scope)."""
    return node_name.rsplit("/", 1)[0].strip("/").replace("/", ".")


def module_outputs(model: Any) -> dict[str, str]:
    """Module path -> the tensor that is its output: the last one produced inside the module's scope
    and read outside it (or a graph output). Quantizer scopes are never modules of the reference."""
    consumers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(scope_of(n.name))
    graph_outputs = {o.name for o in model.graph.output}
    out: dict[str, str] = {}
    for n in model.graph.node:
        scope = scope_of(n.name)
        if not scope or "_quantizer" in scope:
            continue
        parts = scope.split(".")
        for t in n.output:
            readers = consumers.get(t, [])
            # every enclosing module whose scope this tensor leaves (or that ends the graph)
            for k in range(len(parts), 0, -1):
                mod = ".".join(parts[:k])
                if t in graph_outputs or any(r != mod and not r.startswith(mod + ".") for r in readers):
                    out[mod] = t  # later nodes overwrite: the module's last such tensor
    return out


class ModelOptOnnxSource(Source):
    """The ONNX export of a ModelOpt fake-quantized model in ONNX Runtime, literal (``-qdq``) or optimized (``-ort``)."""

    runs_deployed = True
    supports_outputs_only = True

    def __init__(self, preset: str, optimized: bool) -> None:
        if preset not in ONNX_PRESETS:
            raise ValueError(f"preset must be one of {', '.join(ONNX_PRESETS)}")
        self.preset, self.optimized = preset, optimized
        self.name = f"modelopt-{preset}-{'ort' if optimized else 'qdq'}"
        self.number_format = NumberFormat.INT8
        self.stage_kind = StageKind.RUNTIME if optimized else StageKind.EXPORT
        self.option_schema = LOADING
        self.description = (f"the Q/DQ ONNX of ModelOpt {PRESETS[preset]} (torch.onnx.export) in ONNX Runtime, "
                            + ("all graph optimizations (as deployed: int8 kernels)" if optimized else
                               "graph optimizations off (the Q/DQ graph literally)"))
        self.semantics = self.description
        self._sessions: dict[tuple[str, bool], Any] = {}

    def check(self, cfg: RunConfig | None = None) -> str | None:
        from .source import modelopt_version

        if modelopt_version() is None:
            return "nvidia-modelopt is not installed (pip install 'parity[modelopt]')"
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnx and onnxruntime are needed (pip install 'parity[onnx]')"
        return None

    def input_specs(self, cfg: RunConfig) -> list[InputSpec]:
        return resolve_input_specs(loaded_model(cfg), cfg.input_shapes)

    def input_names(self, cfg: RunConfig) -> list[str] | None:
        return loaded_model(cfg).input_names

    def exported(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> tuple[Path, list[str]]:
        """The quantized model's ONNX (cached beside the quantization cache, by its digest)."""
        import torch

        qz = quantize(cfg, resolve_config(PRESETS[self.preset]))
        path = Path(cfg.workdir) / "modelopt" / f"{qz.digest}.qdq.onnx"
        args, kwargs = call_args(qz.loaded, feed, cfg.device)
        names = [n for n in (qz.loaded.input_names or []) if n in feed] or list(feed)
        if not path.is_file():
            from parity.contract.atomic import atomic_path

            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(qz.quantized, args, str(tmp), dynamo=False, input_names=names,
                                      kwargs=kwargs or None,
                                      dynamic_axes={n: {0: "batch"} for n in names})
            except Exception as e:
                raise ParityError(f"could not export the ModelOpt-quantized {cfg.model} to ONNX: "
                                  f"{first_line(e)}") from None
        return path, names

    def _session(self, path: Path, capture: bool) -> tuple[Any, list[tuple[str, str]]]:
        import onnx
        import onnxruntime as ort

        key = (str(path), capture)
        if key in self._sessions:
            return self._sessions[key]
        model = onnx.load(str(path))
        mods: list[tuple[str, str]] = []
        if capture:
            outs = module_outputs(model)
            have = {o.name for o in model.graph.output}
            order = {t: i for i, n in enumerate(model.graph.node) for t in n.output}
            mods = sorted(outs.items(), key=lambda kv: order.get(kv[1], 0))
            for _, t in mods:
                if t not in have:
                    model.graph.output.append(onnx.ValueInfoProto(name=t))
                    have.add(t)
        so = ort.SessionOptions()
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if self.optimized
                                       else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self._sessions[key] = (sess, mods)
        return sess, mods

    def run(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Activation]:
        path, names = self.exported(cfg, feed)
        sess, mods = self._session(path, capture=not cfg.outputs_only)
        fetch = [o.name for o in sess.get_outputs()]
        try:
            values = dict(zip(fetch, sess.run(None, {n: feed[n] for n in names})))
        except Exception as e:
            raise ParityError(f"ONNX Runtime could not run {path}: {first_line(e)}") from None
        order = 0
        for mod, t in mods:
            if cfg.layers is not None and not cfg.layers.selects(mod):
                continue
            yield Activation(name=mod, array=values[t], order=order, op_type=None,
                             meta={"module_path": mod, "onnx_tensor": t, "source": self.name})
            order += 1
        # the model's own outputs come first in the session's list; the captured ones were appended
        for i, t in enumerate(fetch[: len(_graph_outputs(path))]):
            yield Activation(name="output", array=values[t], output_index=i, order=order + i, op_type="output",
                             meta={"is_output": True, "onnx_tensor": t, "model_file": str(path)})


def _graph_outputs(path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]

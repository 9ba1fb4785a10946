"""The ONNX model any ONNX consumer runs: the user's ``.onnx`` file, or parity's export of a torch model.

Why one place: ONNX Runtime, TensorRT and any future ONNX-consuming source (OpenVINO, say) must
run the *same* graph with the same provenance, exported with the same options read the same
way; two copies of this once disagreed on ``export_dynamic_batch=false``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from parity.contract.errors import ParityError
from parity.contract.options import option_bool, option_int
from parity.contract.source import InputSpec, RunConfig


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX file to run, and the torch module names when parity exported it (for provenance)."""

    path: Path
    module_names: list[str] | None = None

    def __iter__(self):  # type: ignore[no-untyped-def]
        """Unpacks as ``path, module_names``."""
        return iter((self.path, self.module_names))


def is_onnx_file(model: Any) -> bool:
    return Path(str(model)).suffix.lower() == ".onnx"


def export_options(options: dict[str, Any]) -> dict[str, Any]:
    """The exporter settings from ``--option``: ``opset``, ``export_dynamic_batch``, ``export_optimize``, ``export_dynamo``."""
    return {"opset": option_int(options, "opset", None),
            "dynamic_batch": option_bool(options, "export_dynamic_batch", True),
            "optimize": option_bool(options, "export_optimize", True),
            "dynamo": option_bool(options, "export_dynamo", True)}


def _load_torch(cfg: RunConfig) -> Any:
    try:
        from parity.lib.torch_loader import load_torch_model
    except ImportError as e:  # torch missing: say what the model needs
        raise ParityError(f"model {cfg.model} is not an .onnx file, so it must be exported from torch, "
                          f"which needs torch (pip install 'parity[torch]'). Note: {e}") from e
    return load_torch_model(cfg)


def onnx_model_for(cfg: RunConfig, feed: dict[str, np.ndarray]) -> OnnxModel:
    """The fp32 ONNX model for ``cfg``: the file itself, or a cached export (with provenance) of the torch model."""
    if is_onnx_file(cfg.model):
        return OnnxModel(Path(str(cfg.model)))
    from parity.lib.onnx.export import cached_export

    loaded = _load_torch(cfg)
    module = loaded.module
    try:
        module = module.to("cpu")
    except Exception:  # noqa: BLE001 - a TorchScript or exported module may not move; export as it is
        pass
    o = export_options(cfg.options)
    path = cached_export(module, feed, Path(cfg.workdir), getattr(loaded, "path", None) or cfg.model,
                         o["opset"], dynamic_batch=o["dynamic_batch"], optimize=o["optimize"], dynamo=o["dynamo"],
                         input_order=getattr(loaded, "input_names", None))
    names = [n for n, _ in module.named_modules()] if hasattr(module, "named_modules") else None
    return OnnxModel(Path(path), names)


def _fmt_dims(dims: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def onnx_input_specs(cfg: RunConfig) -> list[InputSpec]:
    """The inputs of ``cfg``'s model as an ONNX consumer sees them, with ``--input-shape`` applied."""
    if is_onnx_file(cfg.model):
        from parity.lib.onnx.graph import elem_dtype, load_model, model_inputs, value_dims

        m = load_model(cfg.model, what="model")
        specs = []
        for vi in model_inputs(m):
            dims = value_dims(vi)
            specs.append(InputSpec(vi.name, tuple(dims) if dims is not None else (),
                                   elem_dtype(vi.type.tensor_type.elem_type) or "float32"))
        return _apply_shapes(cfg, specs)
    from parity.lib.torch_loader import resolve_input_specs

    return list(resolve_input_specs(_load_torch(cfg), cfg.input_shapes))


def _apply_shapes(cfg: RunConfig, specs: list[InputSpec]) -> list[InputSpec]:
    if not cfg.input_shapes:
        return specs
    by = {s.name: s for s in specs}
    unknown = [n for n in cfg.input_shapes if n not in by]
    if unknown:
        raise ParityError(f"--input-shape names {unknown}, which model {cfg.model} does not have. "
                          f"Note: its inputs are {list(by)}")
    out = []
    for s in specs:
        if s.name not in cfg.input_shapes:
            out.append(s)
            continue
        want = tuple(int(d) for d in cfg.input_shapes[s.name])
        if s.shape and len(s.shape) != len(want):
            raise ParityError(f"--input-shape {s.name}:{'x'.join(map(str, want))} has rank {len(want)}; "
                              f"model {cfg.model} declares {_fmt_dims(s.shape)}")
        for have, w in zip(s.shape, want):
            if have is not None and have != w:
                raise ParityError(f"--input-shape {s.name}:{'x'.join(map(str, want))} conflicts with the "
                                  f"fixed shape {_fmt_dims(s.shape)} of model {cfg.model}")
        out.append(InputSpec(s.name, want, s.dtype))
    return out

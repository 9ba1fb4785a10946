"""Capture a ModelOpt fake-quantized model: every module's output, and what each quantizer did.

Why forward hooks on the quantized twin: ModelOpt keeps the float model's module names and only
inserts ``TensorQuantizer`` children (``<module>.input_quantizer``, ``weight_quantizer``,
``output_quantizer``), so a record named by module path pairs exactly with the ``torch`` reference's.
The quantizers themselves are never records (the reference has none); what they did in this call
rides on their module's record as ``meta["quantizers"]`` (:func:`quantizer_stats`).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterator

import numpy as np

from parity.contract.errors import ParityError
from parity.contract.records import Activation
from parity.contract.source import RunConfig

from .quant import Quantized, call_args

ROLES = ("input", "weight", "output")


def quantizer_parts(name: str) -> tuple[str, str] | None:
    """``a.b.weight_quantizer.0`` -> (``a.b``, ``weight[0]``); None for a name that is no quantizer's."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].endswith("_quantizer"):
            role = parts[i][: -len("_quantizer")]
            rest = parts[i + 1:]
            return ".".join(parts[:i]), role + "".join(f"[{r}]" for r in rest)
    return None


def leaf_quantizers(model: Any) -> dict[str, Any]:
    """Every ``TensorQuantizer`` by its full name (a ``SequentialQuantizer``'s members as ``name.0`` ...)."""
    return {n: m for n, m in model.named_modules() if type(m).__name__ == "TensorQuantizer"}


def qmax_of(q: Any) -> float | None:
    """The largest value of the quantizer's grid before scaling: 127 for int8, 448 for fp8 E4M3, 6 for E2M1."""
    bits = getattr(q, "num_bits", None)
    if isinstance(bits, int):
        return float(2 ** (bits - 1) - 1)
    if isinstance(bits, (tuple, list)) and len(bits) == 2:
        return {(4, 3): 448.0, (5, 2): 57344.0, (2, 1): 6.0}.get(tuple(bits))
    return None


def format_name(q: Any) -> str:
    bits = getattr(q, "num_bits", None)
    if isinstance(bits, int):
        return f"int{bits}"
    if isinstance(bits, (tuple, list)) and len(bits) == 2:
        return {(4, 3): "fp8 e4m3", (5, 2): "fp8 e5m2", (2, 1): "fp4 e2m1"}.get(tuple(bits), f"e{bits[0]}m{bits[1]}")
    return str(bits)


def amax_of(q: Any) -> Any:
    a = getattr(q, "amax", None)
    return None if a is None else a.detach().float()


def quantizer_stats(q: Any, x: Any, y: Any) -> dict[str, Any]:
    """What one quantizer call did to its values ``x`` (as the quantizer saw them) giving ``y``.

    ``clipped``: share of the finite values beyond amax (where amax is static and broadcasts over
    ``x``; a block quantizer's amax is each block's own maximum, so nothing clips: ``None``).
    ``to_zero``: share of the nonzero finite values whose quantized value is 0. ``amax``: the largest
    amax (``amax_min`` the smallest, ``amax_count`` how many: one per channel or block).
    """
    import torch

    xf = x.detach().float()
    pqs = getattr(q, "pre_quant_scale", None)
    if pqs is not None:  # AWQ/SmoothQuant: the quantizer sees x * pre_quant_scale
        xf = xf * pqs.detach().float()
    yf = y.detach().float()
    fin = torch.isfinite(xf)
    n = int(fin.sum())
    nz = fin & (xf != 0)
    n_nz = int(nz.sum())
    out: dict[str, Any] = {"format": format_name(q), "elements": int(xf.numel()),
                           "to_zero": (int(((yf == 0) & nz).sum()) / n_nz) if n_nz else 0.0}
    bs = getattr(q, "block_sizes", None)
    if bs:
        out["block_sizes"] = {str(k): v for k, v in dict(bs).items()}
    a = amax_of(q)
    if a is not None and a.numel():
        out.update(amax=float(a.max()), amax_min=float(a.min()), amax_count=int(a.numel()))
        try:
            torch.broadcast_shapes(a.shape, xf.shape)
            ok = not bs
        except RuntimeError:
            ok = False
        out["clipped"] = (int(((xf.abs() > a) & fin).sum()) / n) if ok and n else None
    else:
        out.update(amax=None, clipped=None)
    return out


def _disabled_paths(cfg: RunConfig) -> list[str]:
    """``keep_high_precision`` entries (record keys, module paths or quantizer names) as name prefixes."""
    out = []
    for k in cfg.keep_high_precision:
        k = k.split(":", 1)[0].split("#", 1)[0]
        out.append(k)
    return out


class KeepHighPrecision:
    """Disable the quantizers of the kept modules (or the kept quantizers) for one run, then restore."""

    def __init__(self, model: Any, keep: list[str]) -> None:
        self.switched: list[Any] = []
        if not keep:
            return
        qs = leaf_quantizers(model)
        hit = set()
        for name, q in qs.items():
            if not q.is_enabled:
                continue
            for k in keep:
                if name == k or name.startswith(k + ".") or (k == "" and "." not in name):
                    self.switched.append(q)
                    hit.add(k)
                    break
        missing = [k for k in keep if k not in hit]
        if missing and len(missing) == len(keep):
            raise ParityError(f"keep_high_precision {', '.join(missing)}: no enabled ModelOpt quantizer there. "
                              f"Note: give module paths whose quantizers are enabled")

    def __enter__(self) -> "KeepHighPrecision":
        for q in self.switched:
            q.disable()
        return self

    def __exit__(self, *exc: Any) -> None:
        for q in self.switched:
            q.enable()


def capture(qz: Quantized, cfg: RunConfig, feed: dict[str, np.ndarray], source_name: str) -> Iterator[Activation]:
    """One forward of the quantized model; records in execution order, outputs last."""
    import torch

    model = qz.quantized
    args, kwargs = call_args(qz.loaded, feed, cfg.device)
    outputs_only = cfg.outputs_only
    records: list[Activation] = []
    handles = []
    pending: dict[str, dict[str, Any]] = {}
    calls: Counter[str] = Counter()
    order = [0]
    layers = cfg.layers

    def emit(name: str, value: Any, op_type: str | None, meta: dict[str, Any]) -> None:
        leaves = [value] if isinstance(value, torch.Tensor) else [v for v in _flatten(value)]
        for i, t in enumerate(leaves):
            if not t.is_floating_point():
                continue
            if layers is not None and not meta.get("is_output") and not layers.selects(name, meta.get("module_path")):
                continue
            m = dict(meta, dtype="float32", device=str(t.device), source=source_name)
            records.append(Activation(name=name, array=t.detach().to("cpu", torch.float32).numpy().copy(),
                                      output_index=i, order=order[0], op_type=op_type, meta=m))
            order[0] += 1

    if not outputs_only:
        for path, mod in model.named_modules():
            if not path:
                continue
            parts = quantizer_parts(path)
            if parts is not None:
                if type(mod).__name__ == "TensorQuantizer":
                    def qhook(m: Any, inp: Any, out: Any, _p: tuple[str, str] = parts, _n: str = path) -> None:
                        if m.is_enabled and inp and isinstance(inp[0], torch.Tensor) and isinstance(out, torch.Tensor):
                            s = quantizer_stats(m, inp[0], out)
                            s["quantizer"] = _n
                            pending.setdefault(_p[0], {})[_p[1]] = s
                    handles.append(mod.register_forward_hook(qhook))
                continue
            cls = type(mod)
            base = next((c for c in cls.__mro__[1:] if c.__module__.startswith("torch.nn")), cls) \
                if cls.__name__.startswith("Quant") else cls
            op_type = base.__name__

            def hook(m: Any, inp: Any, out: Any, _path: str = path, _op: str = op_type,
                     _qual: str = f"{base.__module__}.{base.__qualname__}") -> None:
                k = calls[_path]
                calls[_path] += 1
                name = _path if k == 0 else f"{_path}#{k}"
                meta: dict[str, Any] = {"module_path": _path, "module_type": _qual, "call_index": k}
                stats = pending.pop(_path, None)
                if stats:
                    meta["quantizers"] = stats
                emit(name, out, _op, meta)
            handles.append(mod.register_forward_hook(hook))
    try:
        with KeepHighPrecision(model, _disabled_paths(cfg)), torch.no_grad():
            out = model(*args, **kwargs)
    except ParityError:
        raise
    except Exception as e:
        raise ParityError(f"the ModelOpt-quantized {cfg.model} failed to run: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from None
    finally:
        for h in handles:
            h.remove()
    n = len(records)
    emit("output", out, "output", {"is_output": True})
    yield from records[:n]
    yield from records[n:]


def _flatten(value: Any) -> Iterator[Any]:
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _flatten(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _flatten(v)
    elif hasattr(value, "to_tuple"):
        yield from _flatten(value.to_tuple())

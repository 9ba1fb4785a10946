"""Each quantized module alone on the reference's inputs, and which of its quantizers causes the error.

Local error (docs/diagnosis.md): the module run with quantization on, fed the fp32 model's inputs to
it, against the fp32 module's output. A ModelOpt module has up to three quantizers (input, weight,
output); running the module with one quantizer on at a time says which one the error comes from,
and :func:`cause_words` says why, in the terms a ModelOpt user changes: amax against the useful
range of the values, an outlier channel under a per-tensor amax, a block whose largest value sets
the step of its neighbours (INT4/NVFP4).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterator

import numpy as np

from parity.contract.records import LocalResult
from parity.contract.source import RunConfig

from .quant import Quantized, call_args
from .runner import amax_of, format_name, leaf_quantizers, qmax_of, quantizer_parts, quantizer_stats

#: an amax at least this many times the 99.9th percentile of |values| wastes the grid on a few values
AMAX_WASTE = 4.0
#: a channel (or block) whose absmax is this many times the median one's dominates a shared amax
OUTLIER_RATIO = 16.0


def rel_error(ref: np.ndarray, out: np.ndarray) -> float:
    r = np.asarray(ref, dtype=np.float64).reshape(-1)
    d = np.asarray(out, dtype=np.float64).reshape(-1) - r
    den = float(np.linalg.norm(r))
    return float(np.linalg.norm(d)) / den if den > 0 else float(np.linalg.norm(d))


def _channels(a: np.ndarray) -> tuple[int, np.ndarray] | None:
    """Per-channel absmax on the axis where one channel dominates most (axis 1 of NCHW, last of [B, T, C])."""
    if a.ndim < 2:
        return None
    best = None
    for axis in sorted({1, a.ndim - 1}):
        if a.shape[axis] < 4:
            continue
        cam = np.abs(a).max(axis=tuple(i for i in range(a.ndim) if i != axis))
        med = float(np.median(cam))
        if med > 0 and (best is None or cam.max() / med > best[1].max() / np.median(best[1])):
            best = (axis, cam)
    return best


def cause_words(name: str, q: Any, x: np.ndarray, stats: dict[str, Any], err: float) -> str:
    """Why quantizer ``name`` loses information on the values ``x`` it quantizes, in one sentence."""
    fmt = format_name(q)
    a = np.abs(np.asarray(x, dtype=np.float64))
    a = a[np.isfinite(a)] if a.size else a
    head = f"quantizer {name} ({fmt}) alone adds relative error {err:.3g}"
    if a.size == 0:
        return head
    bs = getattr(q, "block_sizes", None)
    if bs:
        size = next((v for k, v in dict(bs).items() if isinstance(k, int) and isinstance(v, int)), None)
        flat = np.abs(np.asarray(x, dtype=np.float64))
        if size and flat.shape[-1] % size == 0:
            blocks = flat.reshape(-1, size)
            bmax = blocks.max(axis=1)
            bmed = np.median(blocks, axis=1)
            ratio = np.where(bmed > 0, bmax / np.maximum(bmed, 1e-30), 0.0)
            worst = int(np.argmax(ratio))
            return (f"{head}: block size {size} along the last axis, each block's largest value sets the step "
                    f"of its {size - 1} neighbours; the worst block's max is {ratio[worst]:.3g}x its median, "
                    f"so {stats.get('to_zero', 0.0):.0%} of the values round to 0 (a smaller block size, or "
                    f"keeping this module unquantized, helps)")
        return f"{head}: block quantization ({dict(bs)}); {stats.get('to_zero', 0.0):.0%} of the values round to 0"
    amax = amax_of(q)
    amax_v = float(amax.max()) if amax is not None and amax.numel() else None
    p999 = float(np.quantile(a, 0.999))
    qmax = qmax_of(q)
    if amax is not None and amax.numel() == 1 and x.ndim >= 2:
        ch = _channels(np.asarray(x, dtype=np.float64))
        if ch is not None:
            axis, cam = ch
            med = float(np.median(cam))
            c = int(np.argmax(cam))
            if cam[c] >= OUTLIER_RATIO * med:
                levels = f" {med / amax_v * qmax:.2g} of its {qmax:g} levels" if qmax and amax_v else " few levels"
                return (f"{head}: outlier channel {c} (axis {axis}) reaches {cam[c]:.4g}, {cam[c] / med:.0f}x the "
                        f"median channel's {med:.4g}; the per-tensor amax {amax_v:.4g} it sets leaves the median "
                        f"channel{levels}, and {stats.get('to_zero', 0.0):.0%} of the values round to 0 "
                        f"(per-channel quantization or SmoothQuant/AWQ spreads it)")
    if amax_v is not None and stats.get("clipped"):
        return (f"{head}: amax {amax_v:.4g} is below the values' range (|x| up to {float(a.max()):.4g}); "
                f"{stats['clipped']:.2%} of them clip")
    if amax_v is not None and p999 > 0 and amax_v >= AMAX_WASTE * p999:
        return (f"{head}: amax {amax_v:.4g} is {amax_v / p999:.3g}x the 99.9th percentile {p999:.4g} of the values "
                f"it quantizes, so the useful range gets {p999 / amax_v * (qmax or 1):.3g} steps and "
                f"{stats.get('to_zero', 0.0):.0%} of the values round to 0 (calibrate on data without the extreme "
                f"values, or use a percentile/MSE calibrator)")
    if amax_v is not None:
        return (f"{head}: amax {amax_v:.4g} against values up to {float(a.max()):.4g} (99.9th percentile "
                f"{p999:.4g}); {stats.get('to_zero', 0.0):.0%} round to 0: the {fmt} grid itself is too coarse here")
    return f"{head}; {stats.get('to_zero', 0.0):.0%} of the values round to 0"


def local_results(qz: Quantized, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[LocalResult]:
    """Every module with an enabled quantizer, alone on the fp32 model's inputs, one quantizer at a time too."""
    import torch

    ref_model, q_model = qz.reference, qz.quantized
    qmods = dict(q_model.named_modules())
    by_parent: dict[str, dict[str, Any]] = {}
    for name, q in leaf_quantizers(q_model).items():
        parts = quantizer_parts(name)
        if parts is not None and q.is_enabled:
            by_parent.setdefault(parts[0], {})[name] = q
    out: list[LocalResult] = []
    calls: Counter[str] = Counter()
    handles = []

    def run_alone(path: str, args: tuple, kwargs: dict, ref_out: Any) -> None:
        k = calls[path]
        calls[path] += 1
        if not isinstance(ref_out, torch.Tensor):
            return
        twin = qmods[path]
        quants = by_parent[path]
        ref_np = ref_out.detach().float().cpu().numpy()
        seen: dict[str, tuple[Any, Any]] = {}

        def watch(m: Any, inp: Any, o: Any, _n: str = "") -> None:
            seen[_n] = (inp[0], o)
        hs = [q.register_forward_hook(lambda m, i, o, _n=n: watch(m, i, o, _n)) for n, q in quants.items()]
        try:
            with torch.no_grad():
                tgt = twin(*args, **kwargs)
        finally:
            for h in hs:
                h.remove()
        alone: dict[str, float] = {}
        if len(quants) > 1:
            for n in quants:
                others = [q for m, q in quants.items() if m != n]
                for q in others:
                    q.disable()
                try:
                    with torch.no_grad():
                        alone[n] = rel_error(ref_np, twin(*args, **kwargs).detach().float().cpu().numpy())
                finally:
                    for q in others:
                        q.enable()
        tgt_np = tgt.detach().float().cpu().numpy()
        total = rel_error(ref_np, tgt_np)
        worst = max(alone, key=alone.get) if alone else next(iter(quants))
        x, y = seen.get(worst, (None, None))
        meta: dict[str, Any] = {"module_path": path, "quantizers_alone": alone or {worst: total}}
        if x is not None:
            stats = quantizer_stats(quants[worst], x, y)
            xv = x.detach().float().cpu().numpy()
            pqs = getattr(quants[worst], "pre_quant_scale", None)
            if pqs is not None:
                xv = xv * pqs.detach().float().cpu().numpy()
            words = cause_words(worst, quants[worst], xv, stats, alone.get(worst, total))
            meta["quantizer"] = {**stats, "node": worst, "bad": True, "cause": words}
            meta["cause"] = words
        name = path if k == 0 else f"{path}#{k}"
        out.append(LocalResult(key=name, ref=ref_np, target=tgt_np, op_type=type(twin).__name__, meta=meta))

    for path, mod in ref_model.named_modules():
        if path in by_parent:
            def pre(m: Any, args: Any, kwargs: Any, _p: str = path) -> None:
                m._parity_local_args = (args, kwargs)

            def post(m: Any, args: Any, kwargs: Any, o: Any, _p: str = path) -> None:
                a, kw = getattr(m, "_parity_local_args", (args, kwargs))
                run_alone(_p, a, kw, o)
            handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(mod.register_forward_hook(post, with_kwargs=True))
    args, kwargs = call_args(qz.loaded, feed, cfg.device)
    try:
        with torch.no_grad():
            ref_model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        for path in by_parent:
            m = dict(ref_model.named_modules()).get(path)
            if m is not None and hasattr(m, "_parity_local_args"):
                del m._parity_local_args
    yield from out

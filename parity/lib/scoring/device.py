"""Scoring a pair where its tensors are: the fused moments as torch float64 reductions on the device.

Why: on a GPU, copying every captured tensor to the host to score it costs more than the forward
itself (issue 19: ~1 s a feed against a 10 ms forward pair at BERT-base batch 32). The moments a
metric declares (``Metric.moments``: n, r.r, t.t, r.t, (t-r)^2, |t-r|, max|t-r|, the within count)
and the non-finite counts reduce on the tensors' device; only those dozen scalars cross to the
host, where the metrics finish from them with the host path's own code
(:func:`parity.lib.scoring.score.metric_values`), so a value means the same on both paths.

Same semantics as :func:`parity.lib.scoring.score_pair`: sums over positions finite on both
sides, elements converted to float64 first (bfloat16, float16 and float32 convert exactly), and
the within count's floor ``max(abs_tol, rms_tol * rms(r))`` with rms over the positions finite on
both sides (what the host path settles on); the tolerance limit ``|r| * rel + floor`` is rounded
twice, as numpy does. Values equal the host path's up to float64 summation order (~1e-15
relative); counts are exact. A pair is scored the same way wherever and whenever it is scored
(a function of its tensors alone), so values are bit-identical across worker counts.

What needs values the moments do not give falls back to a host copy (:func:`to_host`): streaming
metrics without moments (``kl``, third-party ones), ``needs_range``, and whole-pair metrics that
read the arrays (``Metric.uses_values``). torch is imported when a pair is scored, never at import.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from parity.contract.metric import MOMENTS, Metric, PairContext
from parity.contract.records import tensor_dtype_name, to_host
from parity.lib.scoring import fused as F
from parity.lib.scoring.score import metric_values, plan_moments, score_pair

#: elements converted to float64 at once on a GPU: 16 Mi elements = two 128 MiB buffers, whatever the pair's size
DEVICE_CHUNK = 1 << 24
#: on the CPU (device scoring forced on a CPU run): below torch's parallel grain (32 Ki elements) a
#: reduction runs on one thread, so a sum does not depend on how many threads the process has (a Ray
#: worker has fewer): values stay bit-identical across worker counts
CPU_CHUNK = 1 << 15

# positions of the per-chunk sums in the device accumulator (all float64; counts stay exact below 2^53)
_N, _RR, _TT, _RT, _DD, _AD, _WITHIN, _REF_NAN, _REF_NONFIN, _TGT_NAN, _TGT_NONFIN, _NEW = range(12)
_SUMS = 12


def host_needed(metrics: list[Metric]) -> bool:
    """Whether some metric needs the pair's values beyond the moments for the whole pass (then the
    pair is scored on host copies: :func:`score_pair_device` falls back to :func:`score_pair`)."""
    return any(m.needs_range or (m.streaming and not m.moments) for m in metrics)


def _dot(a: Any, b: Any) -> Any:
    """Σ a·b as a 0-dim float64 tensor: one cuBLAS read on a GPU, no temporary; on the CPU a product
    and a sum (a BLAS dot there may thread by the process's thread count, and its bits with it)."""
    import torch

    return torch.dot(a, b) if a.device.type != "cpu" else (a * b).sum()


def _moments(ref: Any, tgt: Any, rel: float, abs_tol: float, rms_tol: float, count: bool,
             chunk_elements: int) -> tuple[np.ndarray, float, bool]:
    """One read of the pair on its device: the sums (``_SUMS`` long, on the host), max|t-r|, and
    whether the within count is in them.

    The within count needs the floor max(abs_tol, rms_tol * rms(r)): without ``rms_tol`` it is known
    at once; with it, a pair read in one piece computes rms(r) first and the floor on the device
    (the same IEEE operations as the host's Python floats); a pair read in several pieces leaves the
    count to :func:`_within`, once the whole pair's rms is known.
    """
    import torch

    r_flat = ref.detach().reshape(-1)
    t_flat = tgt.detach().reshape(-1)
    n = r_flat.numel()
    dev = r_flat.device
    one_read = n <= chunk_elements
    counted = count and (not rms_tol or one_read)
    acc = torch.zeros(_SUMS, dtype=torch.float64, device=dev)
    mx = torch.zeros((), dtype=torch.float64, device=dev)
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    n_plain = 0  # elements of the pieces with no NaN/Inf: counted here, not on the device
    for s in range(0, n, chunk_elements):
        e = min(s + chunk_elements, n)
        r = r_flat[s:e].to(torch.float64)
        t = t_flat[s:e].to(torch.float64)
        rr, tt = _dot(r, r), _dot(t, t)
        both = None
        # a NaN or Inf makes its side's sum of squares non-finite: the common case needs no masks
        # (one boolean crosses to the host; a float64 overflow of finite squares takes the masked path too)
        if bool(torch.isfinite(rr + tt)):
            rz, tz, nb = r, t, e - s
            n_plain += nb
            nonfinite = [zero] * 5
        else:
            rf, tf = torch.isfinite(r), torch.isfinite(t)
            both = rf & tf
            rz = torch.where(both, r, 0.0)  # excluded positions add nothing to any sum
            tz = torch.where(both, t, 0.0)
            rr, tt = _dot(rz, rz), _dot(tz, tz)
            nb = both.sum()
            nonfinite = [torch.isnan(r).sum(), (~rf).sum(), torch.isnan(t).sum(), (~tf).sum(), (rf & ~tf).sum()]
        rt = _dot(rz, tz)
        d = tz - rz
        dd = _dot(d, d)
        ad = d.abs_()
        within: Any = zero
        if counted:
            floor: Any = abs_tol
            if rms_tol:  # one piece: rms over the positions finite on both sides, as the host settles it
                floor = torch.clamp(torch.sqrt(rr / nb) * rms_tol, min=abs_tol)
            lim = rz.abs().mul_(rel).add_(floor)  # two roundings, as numpy: |r| * rel, then + floor
            ok = ad <= lim
            if both is not None:
                ok &= both
            within = ok.sum()
        parts = [nb if both is not None else zero, rr, tt, rt, dd, ad.sum(), within, *nonfinite]
        acc += torch.stack([p.to(torch.float64) for p in parts])
        mx = torch.maximum(mx, ad.max())
    out = torch.cat([acc, mx.reshape(1)]).cpu().numpy()  # the one transfer of this read
    sums = out[:_SUMS].copy()
    sums[_N] += n_plain
    return sums, float(out[_SUMS]), counted


def _within(ref: Any, tgt: Any, rel: float, atol: float, chunk_elements: int) -> int:
    """Positions finite on both sides with |t - r| <= |r| * rel + atol: a counting read of the pair."""
    import torch

    r_flat = ref.detach().reshape(-1)
    t_flat = tgt.detach().reshape(-1)
    n = r_flat.numel()
    total = torch.zeros((), dtype=torch.int64, device=r_flat.device)
    for s in range(0, n, chunk_elements):
        e = min(s + chunk_elements, n)
        r = r_flat[s:e].to(torch.float64)
        t = t_flat[s:e].to(torch.float64)
        lim = r.abs().mul_(rel).add_(atol)
        ok = (t - r).abs_() <= lim  # NaN compares false; Inf - Inf is NaN
        ok &= torch.isfinite(r) & torch.isfinite(t)
        total += ok.sum()
    return int(total)


def score_pair_device(ref: Any, tgt: Any, metrics: list[Metric], options: dict[str, Any] | None = None,
                      chunk_elements: int | None = None) -> tuple[dict[str, float], PairContext]:
    """:func:`parity.lib.scoring.score_pair` for two tensors on one device: values by metric name and
    the context, reduced where the tensors are (see the module's doc)."""
    if host_needed(metrics):
        return score_pair(to_host(ref), to_host(tgt), metrics, options)
    if chunk_elements is None:
        chunk_elements = CPU_CHUNK if ref.device.type == "cpu" else DEVICE_CHUNK
    size, tsize = int(ref.numel()), int(tgt.numel())
    if size != tsize:
        raise ValueError(f"size mismatch: {size} vs {tsize}")
    ctx = PairContext(size=size, ref_dtype=tensor_dtype_name(ref), tgt_dtype=tensor_dtype_name(tgt),
                      options=dict(options or {}))
    moment_metrics, wanted, tol_owner, (rel, abs_tol, rms_tol) = plan_moments(metrics, ctx)
    count = tol_owner is not None
    sums, max_ad, counted = _moments(ref, tgt, rel, abs_tol, rms_tol, count, chunk_elements)
    n = int(sums[_N])
    if count and not counted:  # several pieces: the floor from the whole pair's rms, then a counting read
        atol = max(abs_tol, rms_tol * math.sqrt(sums[_RR] / n)) if n else abs_tol
        sums[_WITHIN] = _within(ref, tgt, rel, atol, chunk_elements) if n else 0
    ctx.ref_nan = int(sums[_REF_NAN])
    ctx.ref_inf = int(sums[_REF_NONFIN]) - ctx.ref_nan
    ctx.tgt_nan = int(sums[_TGT_NAN])
    ctx.tgt_inf = int(sums[_TGT_NONFIN]) - ctx.tgt_nan
    ctx.tgt_new_nonfinite = int(sums[_NEW])
    ctx.finite_size = n
    acc = np.zeros(F.ACC_LEN)
    acc[F.A_N], acc[F.A_RR], acc[F.A_TT], acc[F.A_RT] = n, sums[_RR], sums[_TT], sums[_RT]
    acc[F.A_DD], acc[F.A_AD], acc[F.A_MAXAD], acc[F.A_WITHIN] = sums[_DD], sums[_AD], max_ad, sums[_WITHIN]
    if moment_metrics:
        ctx.moments = {name: float(acc[i]) for i, name in enumerate(MOMENTS) if name in wanted}
    held: list[tuple[np.ndarray, np.ndarray]] = []

    def arrays() -> tuple[Any, Any]:  # host copies, made once, only for a metric that reads values
        if not held:
            held.append((to_host(ref), to_host(tgt)))
        return held[0]

    return metric_values(metrics, ctx, [], arrays, (ref, tgt)), ctx


"""The numba kernels of :mod:`parity.lib.scoring.fused` (imported only when numba is importable).

Module level, not built in a function: numba caches a function on disk (``cache=True``) only
when what it calls is a global, so the compile cost is paid once per machine, not per process.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numba
import numpy as np

from parity.lib.scoring.layout import BLOCK


# reassoc lets the sums vectorize; no nnan/ninf (the finiteness tests must stay). The block
# loops also allow contract (FMA for the sums: ~15% faster), but the tolerance limit
# |r| * rel + floor must round twice, as numpy does: it is computed by ``limit``, compiled
# without contract. LLVM inlines it and keeps its per-instruction flags; numba's own
# inline="always" would not (it re-lowers the body with the caller's flags).
fm = {"reassoc", "nsz"}
fmc = {"reassoc", "nsz", "contract"}


def jit(**kw: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit`` cached on disk; without a writable cache location, compiled per process."""
    def deco(fn: Callable[..., Any]) -> Any:
        try:
            return numba.njit(cache=True, nogil=True, **kw)(fn)
        except Exception:  # pragma: no cover - no writable cache location: compile per process
            return numba.njit(cache=False, nogil=True, **kw)(fn)
    return deco


# One loop per block converts each element once and folds it into every accumulator.
# Inner loops run over sliced blocks with range(x.size) (a range(s, e) loop over the
# whole array did not vectorize); counters are int32 (int64 counters next to float64
# sums halved the speed). The max is not reduced here (a float max reduction does not
# vectorize under NaN semantics): the loop counts elements above the running max, and
# the rare block where that count is non-zero is rescanned by ``rescan_max``.
@jit(fastmath=fm)
def limit(a: float, rel: float, floor: float) -> float:
    return abs(a) * rel + floor


@jit(fastmath=fmc)
def block3(r: Any, t: Any, mx: float, rel: float, lo: float,
           hi: float) -> tuple[float, float, float, int, int, int]:
    rr = 0.0
    tt = 0.0
    rt = 0.0
    over = np.int32(0)
    within = np.int32(0)
    within_hi = np.int32(0)
    for i in range(r.size):
        a = np.float64(r[i])
        b = np.float64(t[i])
        rr += a * a
        tt += b * b
        rt += a * b
        x = abs(b - a)
        over += np.int32(x > mx)
        within += np.int32(x <= limit(a, rel, lo))
        within_hi += np.int32(x <= limit(a, rel, hi))
    return rr, tt, rt, over, within, within_hi


@jit(fastmath=fmc)
def block5(r: Any, t: Any, mx: float, rel: float, lo: float,
           hi: float) -> tuple[float, float, float, float, float, int, int, int]:
    rr = 0.0
    tt = 0.0
    rt = 0.0
    dd = 0.0
    ad = 0.0
    over = np.int32(0)
    within = np.int32(0)
    within_hi = np.int32(0)
    for i in range(r.size):
        a = np.float64(r[i])
        b = np.float64(t[i])
        d = b - a
        x = abs(d)
        rr += a * a
        tt += b * b
        rt += a * b
        dd += d * d
        ad += x
        over += np.int32(x > mx)
        within += np.int32(x <= limit(a, rel, lo))
        within_hi += np.int32(x <= limit(a, rel, hi))
    return rr, tt, rt, dd, ad, over, within, within_hi


@jit()
def rescan_max(r: Any, t: Any, mx: float) -> float:
    for i in range(r.size):
        x = abs(np.float64(t[i]) - np.float64(r[i]))
        if x > mx:
            mx = x
    return mx


@jit(fastmath=fm)
def sumsq(r: Any) -> float:
    sq = 0.0
    for i in range(r.size):
        a = np.float64(r[i])
        sq += a * a
    return sq


@jit()
def slow_block(r: Any, t: Any, full: bool, acc: Any) -> None:
    """Exact per-element path of a block holding a NaN/Inf (or a float64 square overflow).
    The within count is left to a recount (the block is marked ambiguous)."""
    for i in range(r.size):
        a = np.float64(r[i])
        b = np.float64(t[i])
        fa = math.isfinite(a)
        fb = math.isfinite(b)
        if not fa:
            if math.isnan(a):
                acc[8] += 1.0
            else:
                acc[9] += 1.0
        if not fb:
            if math.isnan(b):
                acc[10] += 1.0
            else:
                acc[11] += 1.0
            if fa:
                acc[12] += 1.0
        if fa and fb:
            d = b - a
            x = abs(d)
            acc[0] += 1.0
            acc[1] += a * a
            acc[2] += b * b
            acc[3] += a * b
            if full:
                acc[4] += d * d
                acc[5] += x
            if x > acc[6]:
                acc[6] = x


@jit()
def fused(r: Any, t: Any, full: bool, count: bool, rel: float, lo: float, hi: float,
          acc: Any, amb: Any, offset: int) -> None:
    """Fold the pair into ``acc``. The within count is judged at two floors, ``lo`` and ``hi``,
    that bracket the true one (not known before the end); a block whose two counts agree is
    settled whatever the floor in between, the start of any other block goes to ``amb``
    (``acc[13]`` entries, absolute index = ``offset`` + position) for a recount once the floor
    is known. With ``lo == hi`` every block is settled."""
    n = r.size
    for s in range(0, n, BLOCK):
        e = min(s + BLOCK, n)
        rb = r[s:e]
        tb = t[s:e]
        if full:
            rr, tt, rt, dd, ad, over, w_lo, w_hi = block5(rb, tb, acc[6], rel, lo, hi)
        else:
            rr, tt, rt, over, w_lo, w_hi = block3(rb, tb, acc[6], rel, lo, hi)
            dd = ad = 0.0
        if math.isfinite(rr) and math.isfinite(tt):
            acc[0] += e - s
            acc[1] += rr
            acc[2] += tt
            acc[3] += rt
            acc[4] += dd
            acc[5] += ad
            if over:
                acc[6] = rescan_max(rb, tb, acc[6])
            if count:
                if w_lo == w_hi:
                    acc[7] += w_lo
                else:
                    amb[int(acc[13])] = offset + s
                    acc[13] += 1.0
        else:
            slow_block(rb, tb, full, acc)
            if count:
                amb[int(acc[13])] = offset + s
                acc[13] += 1.0


@jit(fastmath=fm)
def count_only(r: Any, t: Any, rel: float, atol: float) -> int:
    c = 0
    for i in range(r.size):
        a = np.float64(r[i])
        b = np.float64(t[i])
        if math.isfinite(a) and math.isfinite(b):
            c += abs(b - a) <= limit(a, rel, atol)
    return c


@jit()
def ref_sumsq(r: Any, acc: Any) -> None:
    n = r.size
    for s in range(0, n, BLOCK):
        e = min(s + BLOCK, n)
        sq = sumsq(r[s:e])
        if math.isfinite(sq):
            acc[0] += e - s
            acc[1] += sq
        else:
            for i in range(s, e):
                a = np.float64(r[i])
                if math.isfinite(a):
                    acc[0] += 1.0
                    acc[1] += a * a


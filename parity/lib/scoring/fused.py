"""The fused moments pass: every shared sum of a pair in one read, compiled with numba when present.

Why: scoring a pair with cosine, max-abs and rel-diff through per-chunk numpy calls reads
each chunk many times (conversion, difference, abs, three dots, a max, a compare) and runs
at ~4 GB/s; one compiled loop that converts each element once and folds it into every
accumulator runs near memory bandwidth. numba is optional (``parity[fast]``); without it,
or with ``PARITY_NO_NUMBA=1``, :func:`parity.lib.scoring.score_pair` uses the numpy chunk
path, which gives the same values up to float64 summation order; pairs under
:data:`MIN_COMPILED_SIZE` elements always take the numpy path.

The accumulator vector (float64, ``ACC_LEN`` long) is shared by both paths; positions are
the ``A_*`` constants of :mod:`parity.lib.scoring.layout`. Sums are over positions finite on
both sides; a block of ``BLOCK`` elements whose r.r and t.t block sums are finite has no
NaN/Inf (a NaN or Inf element makes its square's sum non-finite), so the common case runs a
branch-free, vectorized loop and only blocks with a non-finite value (or a float64 square
overflow) take the exact per-element path.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from parity.lib.scoring.layout import (  # noqa: F401 (re-exported: F.A_N, F.ACC_LEN, ...)
    A_AD, A_AMBIGUOUS, A_DD, A_MAXAD, A_N, A_NEW_NONFINITE, A_REF_INF, A_REF_NAN, A_RR, A_RT, A_TGT_INF,
    A_TGT_NAN, A_TT, A_WITHIN, ACC_LEN, BLOCK,
)

#: pairs up to this size read the reference alone for rms(r) (cheap, and it stays in cache);
#: larger ones guess the floor from a sample (see ``sample_floor_band``)
SAMPLE_MIN = 1 << 18
#: a sample where more than this share of blocks would stay open falls back to the prepass
MAX_OPEN_SHARE = 0.2
#: smaller pairs use the numpy path. The path is a function of the pair's size alone, never of the
#: run (how many feeds, how they are sharded over workers): the two paths sum in different orders,
#: so a pair must take the same one wherever and whenever it is scored for a value to be the same
#: bit for bit. At 64 Ki elements the kernel saves ~0.25 ms a pair; its load (~1.2 s a process,
#: from the disk cache) is repaid by a dataset within a few feeds, and a run of small tensors
#: (LeNet) never loads it.
MIN_COMPILED_SIZE = 1 << 16
#: elements converted at once for dtypes the kernel does not take (float16, integers).
PIECE = 1 << 18

_KERNEL: Any = None  # None: not tried yet; False: unavailable


def numba_disabled() -> bool:
    """``PARITY_NO_NUMBA=1`` forces the numpy path (tests run both)."""
    return os.environ.get("PARITY_NO_NUMBA", "") not in ("", "0")


def _build() -> Any:
    """The compiled kernels by name; ``False`` when numba is not importable."""
    try:
        from parity.lib.scoring import kernels as K
    except ImportError:
        return False
    return {"fused": K.fused, "count_only": K.count_only, "ref_sumsq": K.ref_sumsq}


def kernel() -> Any:
    """The compiled kernels, or ``None`` (numba missing or disabled by ``PARITY_NO_NUMBA=1``).

    Importing them costs ~0.5 s (numba itself); each dtype signature compiles on its first call
    (a few seconds, once per machine: ``cache=True`` keeps the machine code on disk) or loads
    from that cache (tens of ms). ``benchmarks/metrics_throughput.py`` prints both.
    """
    global _KERNEL
    if numba_disabled():
        return None
    if _KERNEL is None:
        _KERNEL = _build()
    return _KERNEL or None


def _kernel_ready(x: np.ndarray) -> bool:
    return x.dtype == np.float32 or x.dtype == np.float64


def _pieces(ref: np.ndarray, tgt: np.ndarray) -> Any:
    """Contiguous 1-D (ref, tgt) pieces the kernel takes: whole arrays when they are float32/64,
    float64 conversions of ``PIECE`` elements otherwise (float16, integers, bool)."""
    r = np.ascontiguousarray(ref.reshape(-1))
    t = np.ascontiguousarray(tgt.reshape(-1))
    if _kernel_ready(r) and _kernel_ready(t):
        yield r, t
        return
    n = r.size
    rb = None if _kernel_ready(r) else np.empty(min(PIECE, n), np.float64)
    tb = None if _kernel_ready(t) else np.empty(min(PIECE, n), np.float64)
    for s in range(0, n, PIECE):
        e = min(s + PIECE, n)
        rp = r[s:e] if rb is None else _fill(rb, r[s:e])
        tp = t[s:e] if tb is None else _fill(tb, t[s:e])
        yield rp, tp


def _fill(buf: np.ndarray, x: np.ndarray) -> np.ndarray:
    out = buf[: x.size]
    out[...] = x
    return out


def compiled_moments(k: Any, ref: np.ndarray, tgt: np.ndarray, full: bool, count: bool,
                     rel: float = 0.0, lo: float = 0.0, hi: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Accumulators of one fused read of the pair, and the start index of every block whose
    within count is left open (its counts at floors ``lo`` and ``hi`` differ, or it holds a
    non-finite value): see ``kernels.fused``."""
    acc = np.zeros(ACC_LEN)
    amb = np.empty(ref.size // BLOCK + 2 + ref.size // PIECE, dtype=np.int64) if count else np.empty(1, np.int64)
    off = 0
    for r, t in _pieces(ref, tgt):
        k["fused"](r, t, full, count, rel, lo, hi, acc, amb, off)
        off += r.size
    return acc, amb[: int(acc[A_AMBIGUOUS])]


def settle_within(k: Any, ref: np.ndarray, tgt: np.ndarray, acc: np.ndarray, starts: np.ndarray,
                  rel: float, lo: float, hi: float, atol: float) -> int:
    """The exact within count once the floor ``atol`` is known: the settled blocks' count plus a
    recount of the open blocks, or a recount of the whole pair if ``atol`` left [lo, hi]."""
    if not lo <= atol <= hi:
        return compiled_count(k, ref, tgt, rel, atol)
    r = ref.reshape(-1)
    t = tgt.reshape(-1)
    n = int(acc[A_WITHIN])
    for s in starts.tolist():
        n += compiled_count(k, r[s:s + BLOCK], t[s:s + BLOCK], rel, atol)
    return n


def sample_floor_band(k: Any, ref: np.ndarray, tgt: np.ndarray, rel: float, abs_tol: float, rms_tol: float,
                      blocks: int = 64, spread: float = 0.1) -> tuple[float, float, float] | None:
    """Guess the rms floor from ``blocks`` evenly spaced blocks: (lo, hi) = the guess -/+ ``spread``,
    and the share of sampled blocks that would stay open. ``None`` when nothing sampled is finite."""
    r = ref.reshape(-1)
    t = tgt.reshape(-1)
    n = r.size
    step = max(BLOCK, (n // blocks) // BLOCK * BLOCK)
    starts = list(range(0, n - BLOCK + 1, step))[:blocks] or [0]
    # the sampled blocks side by side, each BLOCK long, so one kernel call reads them all and counts
    # open blocks as it would in place (a call per block cost ~25 us each: 1 s a feed of 150 pairs)
    rs = np.concatenate([r[s:s + BLOCK] for s in starts])
    ts = np.concatenate([t[s:s + BLOCK] for s in starts])
    if not _kernel_ready(rs):
        rs = rs.astype(np.float64)
    if not _kernel_ready(ts):
        ts = ts.astype(np.float64)
    acc = np.zeros(ACC_LEN)
    k["fused"](rs, ts, False, False, 0.0, 0.0, 0.0, acc, acc[:0].astype(np.int64), 0)
    if acc[A_N] == 0:
        return None
    guess = rms_tol * math.sqrt(acc[A_RR] / acc[A_N])
    lo = max(abs_tol, guess * (1.0 - spread))
    hi = max(abs_tol, guess * (1.0 + spread))
    acc2 = np.zeros(ACC_LEN)
    amb = np.empty(len(starts) + 2, np.int64)
    k["fused"](rs, ts, False, True, rel, lo, hi, acc2, amb, 0)
    return lo, hi, int(acc2[A_AMBIGUOUS]) / len(starts)


def compiled_count(k: Any, ref: np.ndarray, tgt: np.ndarray, rel: float, atol: float) -> int:
    """Elements finite on both sides with |t - r| <= |r| * rel + atol (a counting-only read)."""
    return int(sum(k["count_only"](r, t, rel, atol) for r, t in _pieces(ref, tgt)))


def compiled_ref_sumsq(k: Any, ref: np.ndarray) -> tuple[int, float]:
    """(count, sum of squares) of the reference's finite values: one read of the reference only."""
    acc = np.zeros(ACC_LEN)
    r = np.ascontiguousarray(ref.reshape(-1))
    if _kernel_ready(r):
        k["ref_sumsq"](r, acc)
    else:
        buf = np.empty(min(PIECE, r.size), np.float64)
        for s in range(0, r.size, PIECE):
            k["ref_sumsq"](_fill(buf, r[s:s + PIECE]), acc)
    return int(acc[0]), float(acc[1])

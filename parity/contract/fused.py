"""The fused moments pass: every shared sum of a pair in one read, compiled with numba when present.

Why: scoring a pair with cosine, max-abs and rel-diff through per-chunk numpy calls reads
each chunk many times (conversion, difference, abs, three dots, a max, a compare) and runs
at ~4 GB/s; one compiled loop that converts each element once and folds it into every
accumulator runs near memory bandwidth. numba is optional (``parity[fast]``); without it,
or with ``PARITY_NO_NUMBA=1``, :func:`parity.contract.metric.score_pair` uses the numpy chunk
path, which gives the same values (only float64 summation order differs).

The accumulator vector (float64, ``ACC_LEN`` long) is shared by both paths; positions are
the ``A_*`` constants. Sums are over positions finite on both sides; a block of ``BLOCK``
elements whose r.r and t.t block sums are finite has no NaN/Inf (a NaN or Inf element makes
its square's sum non-finite), so the common case runs a branch-free, vectorized loop and
only blocks with a non-finite value (or a float64 square overflow) take the exact
per-element path.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

import numpy as np

A_N, A_RR, A_TT, A_RT, A_DD, A_AD, A_MAXAD, A_WITHIN = range(8)
A_REF_NAN, A_REF_INF, A_TGT_NAN, A_TGT_INF, A_NEW_NONFINITE = range(8, 13)
ACC_LEN = 13
#: elements per block of the compiled loop: both sides of a block stay in L1 for the
#: count and max loops that re-read it.
BLOCK = 2048
#: elements converted at once for dtypes the kernel does not take (float16, integers).
PIECE = 1 << 16

_KERNEL: Any = None  # None: not tried yet; False: unavailable
COMPILE_SECONDS: float | None = None  # seconds the kernels' import took in this process


def numba_disabled() -> bool:
    """``PARITY_NO_NUMBA=1`` forces the numpy path (tests run both)."""
    return os.environ.get("PARITY_NO_NUMBA", "") not in ("", "0")


def _build() -> Any:
    """The compiled kernels by name; ``False`` when numba is not importable."""
    try:
        from parity.contract import _fused_kernels as K
    except ImportError:
        return False
    return {"fused": K.fused, "count_only": K.count_only, "ref_sumsq": K.ref_sumsq}


def kernel() -> Any:
    """The compiled kernels, or ``None`` (numba missing or disabled by ``PARITY_NO_NUMBA=1``).

    Importing them costs ~0.5 s (numba itself); each dtype signature compiles on its first call
    (a few seconds, once per machine: ``cache=True`` keeps the machine code on disk) or loads
    from that cache (tens of ms). ``benchmarks/metrics_throughput.py`` prints both.
    """
    global _KERNEL, COMPILE_SECONDS
    if numba_disabled():
        return None
    if _KERNEL is None:
        t0 = time.perf_counter()
        _KERNEL = _build()
        COMPILE_SECONDS = time.perf_counter() - t0
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


def compiled_moments(k: Any, ref: np.ndarray, tgt: np.ndarray, full: bool,
                     tol: tuple[float, float] | None) -> np.ndarray:
    """Accumulators of one fused read of the pair (``tol`` = (rel, atol) adds the within count)."""
    acc = np.zeros(ACC_LEN)
    rel, atol = tol if tol is not None else (0.0, 0.0)
    for r, t in _pieces(ref, tgt):
        k["fused"](r, t, full, tol is not None, rel, atol, acc)
    return acc


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

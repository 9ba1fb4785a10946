"""The one scoring pass: every metric of a pair from shared reads, chunked or compiled.

Why here and not in the contract: the contract holds what a metric *is* (:class:`Metric`,
:class:`PairContext`, :class:`Chunk`, ``MOMENTS``); how a pair is read (chunk sizes, the fused
moments kernel, numba) is machinery that the core and plugins share, and it may change
(compiled kernels, device scoring) without a plugin author noticing.

Why chunked: an activation can be gigabytes; converting it whole to float64 would
double or quadruple memory. Every streaming metric instead sees the same sequence of
float64 chunks (a few hundred KB each, cache sized), so the extra memory per pair is
bounded by the chunk size, whatever the activation size, and conversions and the
difference are computed once per chunk for all metrics together.

Elements where either side is NaN or Inf are excluded from the chunks and counted
instead (see :class:`PairContext`), so an FP16 overflow shows up as a count rather
than turning every metric into NaN.

Fused moments: a metric may instead declare the shared sums it needs (``moments``).
:func:`score_pair` computes the union of them in *one* read of the pair (a compiled kernel,
:mod:`parity.lib.scoring.fused`, when numba is installed; the chunk pass otherwise) and hands
each such metric its moments as its state.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import numpy as np

from parity.contract.metric import MOMENTS, Chunk, Metric, PairContext
from parity.contract.records import to_host
from parity.lib.scoring import fused as F

#: Elements per chunk. 64 Ki float64 values = 512 KiB per array: fits in L2 with room.
CHUNK_ELEMENTS = 1 << 16
_FULL = frozenset({"dd", "ad"})  # moments only the wider kernel variant computes


def value_stats(a: np.ndarray, rms: bool = True) -> dict[str, float] | None:
    """Range facts of one array over its finite values: min, max, absmax and (if asked) rms.

    Chunked: min/max in the array's own dtype, the sum of squares in float64 one chunk at a time.
    ``None`` when nothing is finite.
    """
    lo = hi = None
    sumsq = 0.0
    n = 0
    flat = a.reshape(-1)
    step = CHUNK_ELEMENTS * 16
    for s in range(0, flat.size, step):
        c = flat[s : s + step]
        if not np.issubdtype(c.dtype, np.floating):
            c = c.astype(np.float64)
        cmin, cmax = c.min(), c.max()
        if not (np.isfinite(cmin) and np.isfinite(cmax)):  # NaN propagates into min/max, Inf is extreme
            c = c[np.isfinite(c)]
            if c.size == 0:
                continue
            cmin, cmax = c.min(), c.max()
        lo = float(cmin) if lo is None else min(lo, float(cmin))
        hi = float(cmax) if hi is None else max(hi, float(cmax))
        if rms:
            c64 = np.asarray(c, dtype=np.float64)
            sumsq += float(np.dot(c64, c64))
            n += c64.size
    if lo is None or hi is None:
        return None
    out = {"min": lo, "max": hi, "absmax": max(abs(lo), abs(hi))}
    if rms:
        out["rms"] = math.sqrt(sumsq / n)
    return out


def _finite_range(a: np.ndarray) -> tuple[float, float] | None:
    st = value_stats(a, rms=False)
    return None if st is None else (st["min"], st["max"])


def iter_chunks(ref: np.ndarray, tgt: np.ndarray, ctx: PairContext,
                chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[Chunk]:
    """Yield float64 chunks of the finite-on-both-sides positions, counting the rest into ``ctx``."""
    r_flat = ref.reshape(-1)
    t_flat = tgt.reshape(-1)
    n = r_flat.size
    rbuf = np.empty(min(chunk_elements, n), dtype=np.float64)
    tbuf = np.empty(min(chunk_elements, n), dtype=np.float64)
    scratch = [np.empty_like(rbuf) for _ in range(4)]
    finite = 0
    for s in range(0, n, chunk_elements):
        e = min(s + chunk_elements, n)
        m = e - s
        r = rbuf[:m]
        t = tbuf[:m]
        r[...] = r_flat[s:e]
        t[...] = t_flat[s:e]
        # A finite sum means every element is finite (float64 cannot overflow from fp32 inputs
        # in 64Ki elements), so the common case costs one cheap reduction per side.
        # errstate: +inf + -inf (or a float64 overflow) must not print a RuntimeWarning.
        with np.errstate(invalid="ignore", over="ignore"):
            all_finite = math.isfinite(float(np.add.reduce(r))) and math.isfinite(float(np.add.reduce(t)))
        if all_finite:
            finite += m
            yield Chunk(r, t, scratch)
            continue
        rf = np.isfinite(r)
        tf = np.isfinite(t)
        rn = np.isnan(r)
        tn = np.isnan(t)
        ctx.ref_nan += int(np.count_nonzero(rn))
        ctx.ref_inf += int(m - np.count_nonzero(rf) - np.count_nonzero(rn))
        ctx.tgt_nan += int(np.count_nonzero(tn))
        ctx.tgt_inf += int(m - np.count_nonzero(tf) - np.count_nonzero(tn))
        ctx.tgt_new_nonfinite += int(np.count_nonzero(rf & ~tf))
        both = rf & tf
        k = int(np.count_nonzero(both))
        finite += k
        if k:
            yield Chunk(r[both], t[both], scratch)
    ctx.finite_size = finite


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Single-threaded float64 dot: pieces short enough that BLAS never starts threads for them."""
    n = a.size
    if n <= 8192:
        return float(np.dot(a, b))
    return float(sum(np.dot(a[s:s + 8192], b[s:s + 8192]) for s in range(0, n, 8192)))


def _chunk_moments(chunk: Chunk, acc: np.ndarray, full: bool, tol: tuple[float, float] | None) -> None:
    """Fold one chunk into the accumulator vector (the numpy twin of the compiled kernel)."""
    r, t = chunk.ref, chunk.tgt
    acc[F.A_N] += r.size
    with np.errstate(over="ignore", invalid="ignore"):  # float64 squares may overflow: inf, as numba
        acc[F.A_RR] += _dot(r, r)
        acc[F.A_TT] += _dot(t, t)
        acc[F.A_RT] += _dot(r, t)
        ad = chunk.absdiff
        if full:
            acc[F.A_DD] += _dot(chunk.diff, chunk.diff)
            acc[F.A_AD] += float(np.add.reduce(ad))
    mx = float(ad.max())
    if mx > acc[F.A_MAXAD]:
        acc[F.A_MAXAD] = mx
    if tol is not None:
        acc[F.A_WITHIN] += _chunk_within(chunk, *tol)


def _chunk_within(chunk: Chunk, rel: float, atol: float) -> int:
    """Elements of the chunk with |t - r| <= |r| * rel + atol (scratch buffer 3 holds the limit)."""
    lim = np.multiply(chunk.absref, rel, out=chunk._out(3))
    lim += atol
    return int(np.count_nonzero(np.less_equal(chunk.absdiff, lim)))


def _ref_sumsq(ref: np.ndarray, k: Any) -> tuple[int, float]:
    """(count, sum of squares) of the reference's finite values."""
    if k is not None:
        return F.compiled_ref_sumsq(k, ref)
    n, sq = 0, 0.0
    flat = ref.reshape(-1)
    for s in range(0, flat.size, CHUNK_ELEMENTS):
        c = np.asarray(flat[s:s + CHUNK_ELEMENTS], dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):  # a finite square may overflow: inf
            v = _dot(c, c)
            if not math.isfinite(v):
                c = c[np.isfinite(c)]
                v = _dot(c, c)
        n += c.size
        sq += v
    return n, sq


def _count_within(ref: np.ndarray, tgt: np.ndarray, rel: float, atol: float, chunk_elements: int) -> int:
    """Counting-only read of the pair (numpy path): positions finite on both sides within rel*|r| + atol."""
    own = PairContext(int(ref.size), str(ref.dtype), str(tgt.dtype))  # counts go nowhere
    return sum(_chunk_within(chunk, rel, atol) for chunk in iter_chunks(ref, tgt, own, chunk_elements))


def plan_moments(metrics: list[Metric], ctx: PairContext
                 ) -> tuple[list[Metric], set[str], Metric | None, tuple[float, float, float]]:
    """The moment metrics of a pass, the moments they want, and the one tolerance of its ``within`` count.

    Why one: a pass counts one ``within``; the first metric declaring it sets (rel, abs, rms) and a
    metric asking for another is refused rather than silently given the first one's count. Shared by
    the host pass and the device pass so both refuse and choose alike.
    """
    moment_metrics = [m for m in metrics if m.moments]
    wanted = {k for m in moment_metrics for k in m.moments}
    unknown = wanted - set(MOMENTS)
    if unknown:
        raise ValueError(f"unknown moments {sorted(unknown)}; known: {sorted(MOMENTS)}")
    tol_owner = next((m for m in moment_metrics if "within" in m.moments), None)
    tol: tuple[float, float, float] = (0.0, 0.0, 0.0)
    if tol_owner is not None:
        rel, abs_tol, rms_tol = tol_owner.within_tolerance(ctx)
        tol = (rel, abs_tol, rms_tol)
        for m in moment_metrics:
            if "within" in m.moments and tuple(m.within_tolerance(ctx)) != tol:
                raise ValueError(f"metrics {tol_owner.name!r} and {m.name!r} ask for different "
                                 "tolerances of the 'within' moment; one pass counts one")
    return moment_metrics, wanted, tol_owner, tol


def score_pair(ref: np.ndarray, tgt: np.ndarray, metrics: list[Metric],
               options: dict[str, Any] | None = None,
               chunk_elements: int = CHUNK_ELEMENTS) -> tuple[dict[str, float], PairContext]:
    """Score two equal-size arrays with every metric; return values by metric name and the context.

    Shapes may differ as long as sizes agree (the caller decides whether that is allowed).
    Reads: one fused read of the pair for every moment metric and the non-finite counts
    (compiled when numba is available and the pair has ``fused.MIN_COMPILED_SIZE`` elements or
    more), plus, for the ``within`` moment's rms floor, either a
    sample-guessed floor band settled in the same read (large pairs, compiled path) or one read
    of the reference alone first; blocks the band leaves open are recounted. Streaming metrics
    with start/update (``kl``, third-party ones) get float64 chunks: in the same read on the
    numpy path, in a read of their own on the compiled path. ``ctx.states`` gets the state of
    every mergeable metric.
    """
    if ref.size != tgt.size:
        raise ValueError(f"size mismatch: {ref.size} vs {tgt.size}")
    ctx = PairContext(size=int(ref.size), ref_dtype=str(ref.dtype), tgt_dtype=str(tgt.dtype),
                      options=dict(options or {}))
    if any(m.needs_range for m in metrics):
        ctx.ref_range = _finite_range(ref)
        ctx.tgt_range = _finite_range(tgt)
    moment_metrics, wanted, tol_owner, (rel, abs_tol, rms_tol) = plan_moments(metrics, ctx)
    full = bool(wanted & _FULL)
    chunked = [m for m in metrics if m.streaming and not m.moments]
    k = None if ref.size == 0 or ref.size < F.MIN_COMPILED_SIZE else F.kernel()
    count = tol_owner is not None
    # The floor max(abs_tol, rms_tol * rms(r)) needs rms(r) before any element is judged.
    # Compiled path, large pair: guess it from a sample and judge every block at both ends of
    # a band around the guess in the one fused read; blocks the band leaves open are recounted
    # once the exact floor is known (see fused.settle_within). Otherwise, or when the sample
    # says many blocks would stay open (a noisy pair), read the reference alone first.
    lo = hi = atol = abs_tol
    band = None
    if count and rms_tol and k is not None and ref.size > F.SAMPLE_MIN:
        band = F.sample_floor_band(k, ref, tgt, rel, abs_tol, rms_tol)
        if band is not None and band[2] > F.MAX_OPEN_SHARE:
            band = None
        if band is not None:
            lo, hi = band[0], band[1]
    prepass = count and rms_tol and band is None
    if prepass:
        n_ref, sq_ref = _ref_sumsq(ref, k)
        if n_ref:
            lo = hi = atol = max(abs_tol, rms_tol * math.sqrt(sq_ref / n_ref))
    tol = (rel, atol) if count else None

    states = [m.start(ctx) for m in chunked]
    if k is not None:
        acc, open_blocks = F.compiled_moments(k, ref, tgt, full, count, rel, lo, hi)
        ctx.ref_nan, ctx.ref_inf = int(acc[F.A_REF_NAN]), int(acc[F.A_REF_INF])
        ctx.tgt_nan, ctx.tgt_inf = int(acc[F.A_TGT_NAN]), int(acc[F.A_TGT_INF])
        ctx.tgt_new_nonfinite = int(acc[F.A_NEW_NONFINITE])
        ctx.finite_size = int(acc[F.A_N])
        if count:
            if rms_tol and ctx.finite_size and (band is not None or ctx.tgt_new_nonfinite):
                # rms(r) over positions finite on both sides (the reference-only prepass also
                # held positions where only the target overflowed)
                atol = max(abs_tol, rms_tol * math.sqrt(acc[F.A_RR] / ctx.finite_size))
            acc[F.A_WITHIN] = F.settle_within(k, ref, tgt, acc, open_blocks, rel, lo, hi, atol)
        if chunked:
            # third-party streaming metrics still get float64 chunks, in a read of their own
            # (the counts were taken by the kernel: this pass counts into a throwaway context)
            own = PairContext(ctx.size, ctx.ref_dtype, ctx.tgt_dtype, options=ctx.options)
            for chunk in iter_chunks(ref, tgt, own, chunk_elements):
                for i, m in enumerate(chunked):
                    states[i] = m.update(states[i], chunk)
    else:
        # The pass runs even with no streaming metric: it fills the non-finite counts that
        # reports and whole-pair metrics (``nonfinite``) read from ctx.
        acc = np.zeros(F.ACC_LEN)
        for chunk in iter_chunks(ref, tgt, ctx, chunk_elements):
            if moment_metrics:
                _chunk_moments(chunk, acc, full, tol)
            for i, m in enumerate(chunked):
                states[i] = m.update(states[i], chunk)
        if count and rms_tol and ctx.tgt_new_nonfinite and ctx.finite_size:
            # rms(r) is over positions finite on both sides; the reference-only sum also held
            # positions where only the target overflowed: judge again with the exact floor.
            atol = max(abs_tol, rms_tol * math.sqrt(acc[F.A_RR] / ctx.finite_size))
            acc[F.A_WITHIN] = _count_within(ref, tgt, rel, atol, chunk_elements)
    if moment_metrics:
        ctx.moments = {name: float(acc[i]) for i, name in enumerate(MOMENTS)
                       if name in wanted}

    return metric_values(metrics, ctx, states, lambda: (ref, tgt), (ref, tgt)), ctx


def metric_values(metrics: list[Metric], ctx: PairContext, states: list[Any],
                  arrays: Callable[[], tuple[np.ndarray, np.ndarray]], raw: tuple[Any, Any]) -> dict[str, float]:
    """Every metric's value once the pass filled ``ctx`` (counts, moments) and ``states`` (the streaming
    metrics' states, in order); ``ctx.states`` gets each mergeable metric's state.

    Shared by the host pass and the device pass (:mod:`parity.lib.scoring.device`), so a value is
    finished by the same code on both. A whole-pair metric gets ``arrays()`` (host arrays), or ``raw``
    (the pair as it is, maybe device tensors) when it says it reads no values (``uses_values = False``).
    """
    out: dict[str, float] = {}
    si = 0
    for m in metrics:
        if m.moments:
            st: Any = {name: ctx.moments[name] for name in m.moments}  # type: ignore[index]
            out[m.name] = float(m.empty_value) if ctx.finite_size == 0 else float(m.finish(st, ctx))
        elif m.streaming:
            st = states[si]
            si += 1
            out[m.name] = float(m.empty_value) if ctx.finite_size == 0 else float(m.finish(st, ctx))
        else:
            ref, tgt = arrays() if getattr(m, "uses_values", True) else raw
            if m.mergeable:
                st = m.compute_state(ref, tgt, ctx)
                out[m.name] = float(m.finish(st, ctx))
            else:
                st = None
                out[m.name] = float(m.compute(ref, tgt, ctx))
        if m.mergeable:
            ctx.states[m.name] = st
    return out


def pooled_value(metric: Metric, state: Any, ctx: PairContext) -> float:
    """A metric's value from a (merged) state and context, with the same empty rule as
    :func:`score_pair`: a metric scored in the shared pass gives ``empty_value`` when no
    position is finite on both sides."""
    if metric.streaming and ctx.finite_size == 0:
        return float(metric.empty_value)
    return float(metric.finish(state, ctx))


def metric_similarity(metric: Metric, options: dict | None = None) -> Callable[[np.ndarray, np.ndarray], float]:
    """A ``similarity(a, b)`` callable computed by ``metric`` through :func:`score_pair`
    (what the core hands a matcher as ``MatchContext.similarity``); device tensors are copied to the host."""

    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        return score_pair(to_host(a), to_host(b), [metric], options)[0][metric.name]

    return similarity

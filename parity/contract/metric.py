"""The metric contract and the one chunked pass that feeds every metric.

Why chunked: an activation can be gigabytes; converting it whole to float64 would
double or quadruple memory. Every streaming metric instead sees the same sequence of
float64 chunks (a few hundred KB each, cache sized), so the extra memory per pair is
bounded by the chunk size, whatever the activation size, and conversions and the
difference are computed once per chunk for all metrics together.

Elements where either side is NaN or Inf are excluded from the chunks and counted
instead (see :class:`PairContext`), so an FP16 overflow shows up as a count rather
than turning every metric into NaN.

Fused moments: a metric may instead declare the shared sums it needs (``moments``: n, r.r,
t.t, r.t, (t-r)^2, |t-r|, max|t-r|, the within-tolerance count). :func:`score_pair` computes
the union of them in *one* read of the pair (a compiled kernel, :mod:`parity.contract.fused`,
when numba is installed; the chunk pass otherwise) and hands each such metric its moments as
its state. The moments are also what makes a metric *mergeable*: sums add and maxima take
the max, so a metric's value over many pairs is its ``finish`` of merged states
(:meth:`Metric.merge`, :func:`merge_contexts`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Iterator

import numpy as np

#: Elements per chunk. 64 Ki float64 values = 512 KiB per array: fits in L2 with room.
CHUNK_ELEMENTS = 1 << 16


@dataclass
class PairContext:
    """What a metric may know about a pair before and after the chunk pass.

    ``ref_range``/``tgt_range`` are (min, max) over finite values; they are filled only
    when some selected metric sets ``needs_range`` (it costs one extra read of both arrays).
    Non-finite counts are filled during the pass.
    """

    size: int
    ref_dtype: str
    tgt_dtype: str
    ref_range: tuple[float, float] | None = None
    tgt_range: tuple[float, float] | None = None
    ref_nan: int = 0
    ref_inf: int = 0
    tgt_nan: int = 0
    tgt_inf: int = 0
    #: target elements that are NaN/Inf where the reference is finite: overflow created by the target.
    tgt_new_nonfinite: int = 0
    finite_size: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    #: per-pair state of every selected metric with ``mergeable=True``, by metric name
    #: (picklable; no reference to the arrays). Merge with :meth:`Metric.merge`.
    states: dict[str, Any] = field(default_factory=dict)
    #: the fused moments of the pass (see ``MOMENTS``), when some metric declared any
    moments: dict[str, float] | None = None


#: The shared moments a metric may declare (``Metric.moments``), over positions finite on both
#: sides, and how two pairs' values merge. ``within`` is the count of |t - r| <= rel*|r| + atol
#: for the tolerance of :meth:`Metric.within_tolerance`.
MOMENTS: dict[str, str] = {
    "n": "sum", "rr": "sum", "tt": "sum", "rt": "sum", "dd": "sum", "ad": "sum",
    "max_ad": "max", "within": "sum",
}
_FULL = frozenset({"dd", "ad"})  # moments only the wider kernel variant computes


def merge_contexts(a: PairContext, b: PairContext, metrics: list["Metric"] | None = None) -> PairContext:
    """The context of two pairs taken together, for :meth:`Metric.finish` on merged states.

    Counts add (size, finite_size, NaN/Inf counts, tgt_new_nonfinite); ranges take the min of
    the minima and the max of the maxima; options come from ``a``; a dtype that differs reads
    ``"mixed"``. ``states`` (and ``moments``) are merged only when ``metrics`` is given (each
    metric present in both with ``mergeable=True`` merges its own); otherwise they are empty.
    """
    def rng(x: tuple[float, float] | None, y: tuple[float, float] | None) -> tuple[float, float] | None:
        if x is None or y is None:
            return x if y is None else y
        return (min(x[0], y[0]), max(x[1], y[1]))

    out = PairContext(
        size=a.size + b.size,
        ref_dtype=a.ref_dtype if a.ref_dtype == b.ref_dtype else "mixed",
        tgt_dtype=a.tgt_dtype if a.tgt_dtype == b.tgt_dtype else "mixed",
        ref_range=rng(a.ref_range, b.ref_range), tgt_range=rng(a.tgt_range, b.tgt_range),
        ref_nan=a.ref_nan + b.ref_nan, ref_inf=a.ref_inf + b.ref_inf,
        tgt_nan=a.tgt_nan + b.tgt_nan, tgt_inf=a.tgt_inf + b.tgt_inf,
        tgt_new_nonfinite=a.tgt_new_nonfinite + b.tgt_new_nonfinite,
        finite_size=a.finite_size + b.finite_size, options=dict(a.options))
    if metrics is not None:
        for m in metrics:
            if m.mergeable and m.name in a.states and m.name in b.states:
                out.states[m.name] = m.merge(a.states[m.name], b.states[m.name])
    if a.moments is not None and b.moments is not None:
        out.moments = merge_moments(a.moments, b.moments)
    return out


def merge_moments(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Merge two moment dicts key by key (``MOMENTS`` says sum or max); keys in one only are kept."""
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
        elif MOMENTS.get(k) == "max":
            out[k] = max(out[k], v)
        else:
            out[k] = out[k] + v
    return out


def fails(value: float | None, bound: float, higher_is_better: bool) -> bool:
    """Whether ``value`` is worse than ``bound``: below it for similarities, above it for distances.

    The one definition of "worse" used by thresholds, ``--fail-under``, culprits and ``parity fix``;
    NaN (and a missing value) is always worse.
    """
    if value is None or math.isnan(value):
        return True
    return value < bound if higher_is_better else value > bound


def default_error(value: float | None, higher_is_better: bool, perfect: float | None = None) -> float:
    """:meth:`Metric.error` of a metric described only by its direction and perfect value.

    Lower is better: the value itself (clamped at 0). Higher is better: the distance to
    ``perfect``, relative to it; with no perfect value, ``exp(-value)`` (it ranks, its ratios mean little).
    """
    if value is None or math.isnan(value):
        return math.inf
    if not higher_is_better:
        return max(0.0, float(value))
    if perfect is not None:
        return max(0.0, perfect - value) / (abs(perfect) or 1.0)
    return math.exp(-value) if value > -700 else math.inf


def special_format(value: float | None) -> str | None:
    """The spelling of no value and of non-finite values, shared by every :meth:`Metric.format`."""
    if value is None:
        return ""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return None


def default_format(value: float | None, percent: bool = False) -> str:
    """4 significant digits, or 4 decimals and a ``%`` sign for a percentage."""
    s = special_format(value)
    if s is not None:
        return s
    return f"{value:.4f}%" if percent else f"{value:.4g}"


class Chunk:
    """A float64 slice of both arrays, finite positions only, with shared derived values cached.

    The arrays (and ``diff``/``absdiff``/``absref``) live in buffers that :func:`iter_chunks`
    reuses for the next chunk: a metric must fold what it needs in ``update`` and keep no
    reference to them. Reuse matters: fresh half-megabyte arrays per chunk are returned to
    the OS and faulted back in, which costs more than the arithmetic.
    """

    __slots__ = ("ref", "tgt", "_scratch", "__dict__")

    def __init__(self, ref: np.ndarray, tgt: np.ndarray, scratch: list[np.ndarray] | None = None):
        self.ref = ref
        self.tgt = tgt
        self._scratch = scratch  # four float64 buffers at least as long as the chunk, or None

    def _out(self, i: int) -> np.ndarray | None:
        """Scratch buffer ``i`` (0 diff, 1 absdiff, 2 absref, 3 free for the pass's own use)."""
        return None if self._scratch is None else self._scratch[i][: self.ref.size]

    @cached_property
    def diff(self) -> np.ndarray:
        return np.subtract(self.tgt, self.ref, out=self._out(0))

    @cached_property
    def absdiff(self) -> np.ndarray:
        return np.abs(self.diff, out=self._out(1))

    @cached_property
    def absref(self) -> np.ndarray:
        return np.abs(self.ref, out=self._out(2))

    def __len__(self) -> int:
        return int(self.ref.size)


class Metric:
    """Base class for a metric plugin.

    A streaming metric implements :meth:`start`, :meth:`update` and :meth:`finish`; the
    engine runs all streaming metrics of a pair in one pass over shared chunks. A metric
    that needs structure (rows of logits, say) overrides :meth:`compute` instead and is
    then responsible for bounding its own memory.

    A metric owns its meaning; the core never switches on metric names. It asks the metric:

    * ``higher_is_better`` and :meth:`fails` — what "worse than a bound" means (thresholds,
      ``--fail-under``, culprits, ``parity fix`` goals);
    * :meth:`error` — a non-negative badness, 0 for no loss, growing with the loss, whose
      ratios mean something (diagnosis compares a layer's local error to its accumulated
      error; ``parity fix`` ranks candidate layers by it). The default is the value itself for
      a lower-is-better metric and the distance to ``perfect`` for a higher-is-better one;
      override it when neither fits (``sqnr`` turns decibels into a noise power ratio);
    * :meth:`format` — how reports print a value (``percent`` adds a ``%`` sign);
    * ``default_threshold`` — used to mark the first diverging layer when the user gives none
      (``None``: the metric is scale dependent and has no universal threshold).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    default_threshold: ClassVar[float | None] = None
    percent: ClassVar[bool] = False
    needs_range: ClassVar[bool] = False
    #: the value of a perfect match, for a higher-is-better metric (cosine 1, rel-diff 100):
    #: the default :meth:`error` is the distance to it, relative to it
    perfect: ClassVar[float | None] = None
    #: value when both arrays have no finite element to compare
    empty_value: ClassVar[float] = math.nan
    #: True when the value over several pairs (a dataset, shards on other machines) is exactly
    #: ``finish(merge(state_1, ..., state_n), merge_contexts(ctx_1, ..., ctx_n))``; the per-pair
    #: state is then left in ``ctx.states[name]`` by :func:`score_pair`. A metric that says
    #: nothing is not mergeable.
    mergeable: ClassVar[bool] = False
    #: shared sums (keys of ``MOMENTS``) this metric is computed from. Non-empty: the metric
    #: needs no start/update; :func:`score_pair` computes the union of all selected metrics'
    #: moments in one fused read and passes ``{name: value}`` of the declared ones to
    #: :meth:`finish` as the state; :meth:`merge` then works with no code.
    moments: ClassVar[tuple[str, ...]] = ()

    def within_tolerance(self, ctx: PairContext) -> tuple[float, float, float]:
        """(rel_tol, abs_tol, rms_tol) of the ``within`` moment: an element is within iff
        |t - r| <= rel_tol*|r| + max(abs_tol, rms_tol*rms(r)). Only for metrics declaring ``within``."""
        raise NotImplementedError

    def merge(self, a: Any, b: Any) -> Any:
        """Combine two per-pair states into the state of both pairs (associative, commutative).

        The default merges moment states (sums add, maxima take the max); a mergeable
        metric with its own state overrides it.
        """
        if self.moments and isinstance(a, dict) and isinstance(b, dict):
            return merge_moments(a, b)
        raise NotImplementedError(f"metric {self.name!r} does not define merge")

    def compute_state(self, ref: np.ndarray, tgt: np.ndarray, ctx: PairContext) -> Any:
        """The mergeable state of a whole-pair metric (one that overrides :meth:`compute`);
        :func:`score_pair` then takes ``finish(state, ctx)`` as the value."""
        raise NotImplementedError

    # -- streaming interface -------------------------------------------------
    def start(self, ctx: PairContext) -> Any:
        raise NotImplementedError

    def update(self, state: Any, chunk: Chunk) -> Any:
        """Fold one chunk into ``state``; return the new state (may be the same object)."""
        raise NotImplementedError

    def finish(self, state: Any, ctx: PairContext) -> float:
        raise NotImplementedError

    # -- whole-pair interface ------------------------------------------------
    @property
    def streaming(self) -> bool:
        """Scored inside the shared pass (moments or start/update), not by :meth:`compute`."""
        return type(self).compute is Metric.compute

    def compute(self, ref: np.ndarray, tgt: np.ndarray, ctx: PairContext) -> float:
        """Score a pair outside the shared pass. Only metrics that override this use it."""
        raise NotImplementedError

    # -- meaning of a value: direction, error, formatting -----------------------
    def fails(self, value: float | None, bound: float) -> bool:
        """True if ``value`` is worse than ``bound`` for this metric. NaN (and no value) always fails."""
        return fails(value, bound, self.higher_is_better)

    def worse(self, value: float, threshold: float) -> bool:
        """Alias of :meth:`fails`."""
        return self.fails(value, threshold)

    def error(self, value: float) -> float:
        """Non-negative badness of ``value``: 0 for no loss, larger for more, ``inf`` for NaN.

        Comparable across layers of one metric, ratios included (see the class docstring).
        """
        return default_error(value, self.higher_is_better, self.perfect)

    def format(self, value: float | None) -> str:
        """The value as reports print it ("" for no value; "nan", "inf", "-inf" spelled out)."""
        return default_format(value, self.percent)

    def __repr__(self) -> str:
        return f"<metric {self.name}>"


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
    from parity.contract import fused as F

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
        from parity.contract.fused import compiled_ref_sumsq

        return compiled_ref_sumsq(k, ref)
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
    from parity.contract import fused as F

    if ref.size != tgt.size:
        raise ValueError(f"size mismatch: {ref.size} vs {tgt.size}")
    ctx = PairContext(size=int(ref.size), ref_dtype=str(ref.dtype), tgt_dtype=str(tgt.dtype),
                      options=dict(options or {}))
    if any(m.needs_range for m in metrics):
        ctx.ref_range = _finite_range(ref)
        ctx.tgt_range = _finite_range(tgt)
    moment_metrics = [m for m in metrics if m.moments]
    wanted = {k for m in moment_metrics for k in m.moments}
    unknown = wanted - set(MOMENTS)
    if unknown:
        raise ValueError(f"unknown moments {sorted(unknown)}; known: {sorted(MOMENTS)}")
    full = bool(wanted & _FULL)
    chunked = [m for m in metrics if m.streaming and not m.moments]
    # One tolerance per pass: the first metric declaring ``within`` sets it.
    tol_owner = next((m for m in moment_metrics if "within" in m.moments), None)
    rel = abs_tol = rms_tol = 0.0
    if tol_owner is not None:
        rel, abs_tol, rms_tol = tol_owner.within_tolerance(ctx)
        for m in moment_metrics:
            if "within" in m.moments and m.within_tolerance(ctx) != (rel, abs_tol, rms_tol):
                raise ValueError(f"metrics {tol_owner.name!r} and {m.name!r} ask for different "
                                 "tolerances of the 'within' moment; one pass counts one")
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
        elif m.mergeable:
            st = m.compute_state(ref, tgt, ctx)
            out[m.name] = float(m.finish(st, ctx))
        else:
            st = None
            out[m.name] = float(m.compute(ref, tgt, ctx))
        if m.mergeable:
            ctx.states[m.name] = st
    return out, ctx


def pooled_value(metric: Metric, state: Any, ctx: PairContext) -> float:
    """A metric's value from a (merged) state and context, with the same empty rule as
    :func:`score_pair`: a metric scored in the shared pass gives ``empty_value`` when no
    position is finite on both sides."""
    if metric.streaming and ctx.finite_size == 0:
        return float(metric.empty_value)
    return float(metric.finish(state, ctx))

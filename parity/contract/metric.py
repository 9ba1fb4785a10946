"""The metric contract and the one chunked pass that feeds every metric.

Why chunked: an activation can be gigabytes; converting it whole to float64 would
double or quadruple memory. Every streaming metric instead sees the same sequence of
float64 chunks (a few hundred KB each, cache sized), so the extra memory per pair is
bounded by the chunk size, whatever the activation size, and conversions and the
difference are computed once per chunk for all metrics together.

Elements where either side is NaN or Inf are excluded from the chunks and counted
instead (see :class:`PairContext`), so an FP16 overflow shows up as a count rather
than turning every metric into NaN.
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
        self._scratch = scratch  # three float64 buffers at least as long as the chunk, or None

    def _out(self, i: int) -> np.ndarray | None:
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
    scratch = [np.empty_like(rbuf) for _ in range(3)]
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


def score_pair(ref: np.ndarray, tgt: np.ndarray, metrics: list[Metric],
               options: dict[str, Any] | None = None,
               chunk_elements: int = CHUNK_ELEMENTS) -> tuple[dict[str, float], PairContext]:
    """Score two equal-size arrays with every metric; return values by metric name and the context.

    Shapes may differ as long as sizes agree (the caller decides whether that is allowed).
    """
    if ref.size != tgt.size:
        raise ValueError(f"size mismatch: {ref.size} vs {tgt.size}")
    ctx = PairContext(size=int(ref.size), ref_dtype=str(ref.dtype), tgt_dtype=str(tgt.dtype),
                      options=dict(options or {}))
    if any(m.needs_range for m in metrics):
        ctx.ref_range = _finite_range(ref)
        ctx.tgt_range = _finite_range(tgt)
    streaming = [m for m in metrics if m.streaming]
    states = [m.start(ctx) for m in streaming]
    # The pass runs even with no streaming metric: it fills the non-finite counts that
    # reports and whole-pair metrics (``nonfinite``) read from ctx.
    for chunk in iter_chunks(ref, tgt, ctx, chunk_elements):
        for i, m in enumerate(streaming):
            states[i] = m.update(states[i], chunk)
    out: dict[str, float] = {}
    si = 0
    for m in metrics:
        if m.streaming:
            st = states[si]
            si += 1
            out[m.name] = float(m.empty_value) if ctx.finite_size == 0 else float(m.finish(st, ctx))
        else:
            out[m.name] = float(m.compute(ref, tgt, ctx))
    return out, ctx

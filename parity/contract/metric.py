"""The metric contract: what a metric is, what it may know about a pair, and how values merge.

A metric plugin subclasses :class:`Metric`: a streaming metric folds float64 :class:`Chunk` s of
the pair (finite positions only; NaN/Inf are counted into :class:`PairContext` instead), or
declares the shared sums it needs (``moments``: n, r.r, t.t, r.t, (t-r)^2, |t-r|, max|t-r|, the
within-tolerance count) and only finishes them. The moments are also what makes a metric
*mergeable*: sums add and maxima take the max, so a metric's value over many pairs is its
``finish`` of merged states (:meth:`Metric.merge`, :func:`merge_contexts`).

Why only types here: the pass that reads a pair and feeds every metric (chunking, the compiled
fused kernel) is machinery, not contract; it lives in :mod:`parity.lib.scoring`
(``score_pair``), so it can change without touching what a plugin author writes against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

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

    The arrays (and ``diff``/``absdiff``/``absref``) live in buffers that the pass
    (:func:`parity.lib.scoring.iter_chunks`) reuses for the next chunk: a metric must fold what
    it needs in ``update`` and keep no reference to them. Reuse matters: fresh half-megabyte arrays per chunk are returned to
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
    #: state is then left in ``ctx.states[name]`` by :func:`~parity.lib.scoring.score_pair`. A metric that says
    #: nothing is not mergeable.
    mergeable: ClassVar[bool] = False
    #: shared sums (keys of ``MOMENTS``) this metric is computed from. Non-empty: the metric
    #: needs no start/update; :func:`~parity.lib.scoring.score_pair` computes the union of all selected metrics'
    #: moments in one fused read and passes ``{name: value}`` of the declared ones to
    #: :meth:`finish` as the state; :meth:`merge` then works with no code.
    moments: ClassVar[tuple[str, ...]] = ()
    #: whether :meth:`compute` / :meth:`compute_state` read the arrays' values. False (a metric that
    #: reads only ``ctx``, like ``nonfinite``): a pair scored on its device hands it the tensors as
    #: they are, with no host copy; True (the default): it gets numpy arrays, copied when need be
    uses_values: ClassVar[bool] = True

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
        :func:`~parity.lib.scoring.score_pair` then takes ``finish(state, ctx)`` as the value."""
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

"""The built-in metrics.

The pairwise metrics (l2, cosine, rel-diff, max-abs, mean-abs, sqnr) declare the shared
moments they are computed from (``Metric.moments``): ``score_pair`` computes them all in one
fused read of the pair, and they are each metric's mergeable state (sums add, maxima take the
max), so a metric's value over many pairs is exact from merged per-pair states.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from parity import ParityError
from parity.contract.metric import Chunk, Metric, PairContext, special_format

#: Elements a whole-pair metric converts to float64 at once (per side).
BLOCK_ELEMENTS = 1 << 16
#: Longest row handed to one BLAS row dot (OpenBLAS threads dots longer than 10,000 elements).
DOT_BLOCK = 8192

_rowdot = getattr(np, "vecdot", None)  # numpy >= 2.0: one BLAS dot per row, no temporary
if _rowdot is None:  # pragma: no cover - numpy 1.x
    def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", a, b)


def _option(ctx: PairContext, key: str, default: float, *, minimum: float = 0.0,
            maximum: float = math.inf, integer: bool = False) -> float:
    """Read a numeric option, refusing values that would make the metric meaningless."""
    raw = ctx.options.get(key)
    if raw is None:
        return default
    try:
        val = int(raw) if integer else float(raw)
    except (TypeError, ValueError):
        raise ParityError(f"metric option {key}={raw!r} is not a number. "
                          f"Note: expected {'an integer' if integer else 'a number'} >= {minimum:g}") from None
    if not (minimum <= val <= maximum) or (not integer and not math.isfinite(val)):
        upper = f" and <= {maximum:g}" if maximum < math.inf else ""
        raise ParityError(f"metric option {key}={raw!r} is out of range. "
                          f"Note: expected a finite {'integer' if integer else 'number'} >= {minimum:g}{upper}")
    return val


class L2Metric(Metric):
    """Euclidean distance; scale dependent, so it has no default threshold."""

    name = "l2"
    description = "Euclidean distance ||target - ref||_2 (lower is better)"
    higher_is_better = False
    mergeable = True
    moments = ("n", "dd")

    def finish(self, state: dict[str, float], ctx: PairContext) -> float:
        return self.empty_value if state["n"] == 0 else math.sqrt(state["dd"])


class CosineMetric(Metric):
    """Cosine similarity of the flattened tensors.

    Zero vectors: both zero gives 1.0 (nothing differs), exactly one zero gives 0.0
    (the direction is lost entirely).
    """

    name = "cosine"
    description = "cosine similarity of the flattened tensors (higher is better; 1 = same direction)"
    higher_is_better = True
    default_threshold = 0.999
    perfect = 1.0  # error: 1 - cosine

    def format(self, value: float | None) -> str:
        s = special_format(value)
        return s if s is not None else f"{value:.7f}"  # 0.9999 vs 0.99999 matters: keep the nines

    mergeable = True
    moments = ("n", "rr", "tt", "rt")

    def finish(self, state: dict[str, float], ctx: PairContext) -> float:
        if state["n"] == 0:
            return self.empty_value
        rr, tt, rt = state["rr"], state["tt"], state["rt"]
        if rr == 0.0 and tt == 0.0:
            return 1.0
        if rr == 0.0 or tt == 0.0:
            return 0.0
        # sqrt each side first: rr * tt can overflow for large float64 inputs.
        val = rt / (math.sqrt(rr) * math.sqrt(tt))
        return min(1.0, max(-1.0, val))


class RelDiffMetric(Metric):
    """Share of elements within tolerance: the TensorRT per-layer recipe's Similarity%, with a floor.

    An element is within iff ``|t - r| <= rel_tol * |r| + max(abs_tol, rms_tol * rms(r))``, rms
    over the reference's finite values. The floor tied to the tensor's scale plays the part of
    ``numpy.isclose``'s ``atol``: with a purely relative test, elements near zero (which every
    real activation has, where values cross zero) fail on rounding noise far below the tensor's
    magnitude, so an fp16 output at cosine 0.999999 failed and an int8 layer at cosine 0.9993
    read 55%. With the floor, the share says how many elements are wrong by 10% of themselves
    *and* 10% of the tensor's typical magnitude. ``rms_tol=0`` gives the recipe's pure test.

    The rms must be known before the first element is judged: ``score_pair`` reads the
    reference alone first (half a pair), or, for large pairs on the compiled path, counts at both
    ends of a sampled floor band in the fused read and recounts what the band leaves open
    (docs/metrics.md, "rel-diff's floor").

    Mergeable: the state is (elements within, elements compared); over several pairs the value
    is the share of all their elements within, each element judged with *its own pair's*
    tolerance (its own rms floor), not with the rms of the concatenation.
    """

    name = "rel-diff"
    description = ("Similarity%: share of elements with |t-r| <= rel_tol*|r| + max(abs_tol, rms_tol*rms(r)) "
                   "(0.1, 0, 0.1)")
    higher_is_better = True
    default_threshold = 99.0
    percent = True
    perfect = 100.0  # error: share of elements out of tolerance
    mergeable = True
    moments = ("n", "within")

    def __init__(self, rel_tol: float = 0.1, abs_tol: float = 0.0, rms_tol: float = 0.1):
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol
        self.rms_tol = rms_tol

    def within_tolerance(self, ctx: PairContext) -> tuple[float, float, float]:
        return (_option(ctx, "rel_tol", self.rel_tol), _option(ctx, "abs_tol", self.abs_tol),
                _option(ctx, "rms_tol", self.rms_tol))

    def finish(self, state: dict[str, float], ctx: PairContext) -> float:
        if state["n"] == 0:
            return self.empty_value
        return 100.0 * state["within"] / state["n"]


class MaxAbsMetric(Metric):
    name = "max-abs"
    description = "largest absolute error max|target - ref| (lower is better)"
    higher_is_better = False
    mergeable = True
    moments = ("n", "max_ad")

    def finish(self, state: dict[str, float], ctx: PairContext) -> float:
        return self.empty_value if state["n"] == 0 else state["max_ad"]


class MeanAbsMetric(Metric):
    name = "mean-abs"
    description = "mean absolute error mean|target - ref| (lower is better)"
    higher_is_better = False
    mergeable = True
    moments = ("n", "ad")

    def finish(self, state: dict[str, float], ctx: PairContext) -> float:
        return self.empty_value if state["n"] == 0 else state["ad"] / state["n"]


class SqnrMetric(Metric):
    """Signal-to-quantization-noise ratio. 30 dB is about cosine 0.9995 for noise uncorrelated with the signal."""

    name = "sqnr"
    description = "signal-to-noise ratio 10*log10(sum r^2 / sum (t-r)^2) in dB (higher is better)"
    higher_is_better = True
    default_threshold = 30.0

    def error(self, value: float) -> float:
        """Noise power over signal power, 10^(-sqnr/10): dB are a log scale, errors must add up."""
        if value is None or math.isnan(value):
            return math.inf
        if math.isinf(value):
            return 0.0 if value > 0 else math.inf
        return 10.0 ** (-value / 10.0) if value > -3000 else math.inf

    mergeable = True
    moments = ("n", "rr", "dd")  # signal energy, noise energy

    def finish(self, state: dict[str, float], ctx: PairContext) -> float:
        if state["n"] == 0:
            return self.empty_value
        sig, noise = state["rr"], state["dd"]
        if noise == 0.0:
            return math.inf  # identical (including both all-zero)
        if sig == 0.0:
            return -math.inf
        return 10.0 * math.log10(sig / noise)


class KLHistogramMetric(Metric):
    """KL divergence between the value distributions (histograms) of the two tensors.

    Position-free: it asks "does the target produce the same *distribution* of values",
    which is what calibration cares about, and is blind to permutations. Bins are shared
    and span the union of both finite ranges, so no value falls outside.

    Not mergeable: the bin edges are the pair's own range, so two pairs' histograms have
    different bins, and fixed edges would change what one pair's value means.
    """

    name = "kl"
    description = ("KL(P_ref || Q_tgt) of value histograms, shared bins over both ranges (nats, lower is better; "
                   "no default threshold)")
    higher_is_better = False
    #: none: a value histogram is not a distribution the layer predicts. Discrete-valued tensors
    #: (token embeddings: a few hundred distinct rows) put spikes on bin edges that fp16 rounding
    #: moves across, so KL flags them at cosine 1.0; and being blind to positions it barely moves
    #: when an output is scrambled (cosine 0.49). It describes calibration, it does not judge a
    #: layer; for logits and probabilities use kl-softmax. ``--threshold kl=X`` sets one on request.
    default_threshold = None
    needs_range = True
    #: probability given to an empty bin before renormalizing, so log(P/Q) stays finite
    eps = 1e-10

    def __init__(self, bins: int = 256):
        self.bins = bins

    def start(self, ctx: PairContext) -> dict[str, Any]:
        bins = int(_option(ctx, "kl_bins", self.bins, minimum=1, maximum=1 << 20, integer=True))
        lo = hi = 0.0
        ranges = [r for r in (ctx.ref_range, ctx.tgt_range) if r is not None]
        if ranges:
            lo = min(r[0] for r in ranges)
            hi = max(r[1] for r in ranges)
        # Values are halved first only when hi - lo overflows (float64 extremes).
        pre = 1.0 if math.isfinite(hi - lo) else 0.5
        width = hi * pre - lo * pre
        # A constant tensor (width 0) puts everything in bin 0.
        scale = bins / width if width > 0 and math.isfinite(bins / width) else 0.0
        return {"bins": bins, "lo": lo * pre, "pre": pre, "scale": scale,
                "p": np.zeros(bins, dtype=np.int64), "q": np.zeros(bins, dtype=np.int64),
                "buf": None, "ibuf": None}

    def _count(self, x: np.ndarray, st: dict[str, Any], out: np.ndarray) -> None:
        n = x.size
        if st["buf"] is None or st["buf"].size < n:
            st["buf"] = np.empty(n, dtype=np.float64)
            st["ibuf"] = np.empty(n, dtype=np.intp)
        f = st["buf"][:n]
        idx = st["ibuf"][:n]
        # x >= lo, so (x - lo) * scale >= 0 and truncation equals floor.
        if st["pre"] != 1.0:
            np.multiply(x, st["pre"], out=f)
            f -= st["lo"]
        else:
            np.subtract(x, st["lo"], out=f)
        f *= st["scale"]
        np.copyto(idx, f, casting="unsafe")
        counts = np.bincount(idx, minlength=st["bins"])
        # The top edge (x == hi) lands on index ``bins``: it belongs to the last bin, as in
        # np.histogram. Folding it here is cheaper than clipping every element.
        bins = st["bins"]
        out += counts[:bins]
        if counts.size > bins:
            out[bins - 1] += counts[bins:].sum()

    def update(self, state: dict[str, Any], chunk: Chunk) -> dict[str, Any]:
        self._count(chunk.ref, state, state["p"])
        self._count(chunk.tgt, state, state["q"])
        return state

    def finish(self, state: dict[str, Any], ctx: PairContext) -> float:
        return kl_from_counts(state["p"], state["q"], self.eps)


def kl_from_counts(p_counts: np.ndarray, q_counts: np.ndarray, eps: float) -> float:
    """KL(P || Q) in nats from two histograms over the same bins, empty bins set to ``eps``."""
    p = p_counts / p_counts.sum()
    q = q_counts / q_counts.sum()
    p[p == 0] = eps
    q[q == 0] = eps
    p /= p.sum()
    q /= q.sum()
    return max(0.0, float(np.dot(p, np.log(p / q))))


class KLSoftmaxMetric(Metric):
    """Mean over rows (last axis) of KL(softmax(ref_row) || softmax(tgt_row)).

    For logits: it compares the *predicted distributions* row by row, so a shift that
    softmax ignores (adding a constant to a row) scores 0. Not streaming because it needs
    whole rows. Memory stays bounded: rows are converted ``BLOCK_ELEMENTS`` values per side
    at a time, and a row longer than that is read twice in pieces (log-sum-exp first).
    Rows with NaN or +Inf on either side are skipped; -Inf is a logit of probability zero
    (masking), so the value is +inf if the target masks what the reference does not.
    """

    name = "kl-softmax"
    description = "mean over rows of KL(softmax(ref) || softmax(target)) on the last axis, for logits (nats)"
    higher_is_better = False
    default_threshold = 0.001
    #: a mean over rows: the state (sum of row KLs, rows used) adds, and the pooled value is the
    #: mean over the rows of all pairs (as if the pairs' rows were stacked)
    mergeable = True

    def compute(self, ref: np.ndarray, tgt: np.ndarray, ctx: PairContext) -> float:
        return self.finish(self.compute_state(ref, tgt, ctx), ctx)

    def merge(self, a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        return {"sum": a["sum"] + b["sum"], "rows": a["rows"] + b["rows"]}

    def finish(self, state: dict[str, float], ctx: PairContext) -> float:
        if state["rows"] == 0:
            return math.nan
        return max(0.0, state["sum"] / state["rows"])

    def compute_state(self, ref: np.ndarray, tgt: np.ndarray, ctx: PairContext) -> dict[str, float]:
        if ref.size == 0:
            return {"sum": 0.0, "rows": 0}
        cols = ref.shape[-1] if ref.ndim else 1
        tcols = tgt.shape[-1] if tgt.ndim else 1
        if tcols != cols:
            raise ParityError(f"kl-softmax needs the same last axis on both sides. "
                              f"Note: reference has {cols}, target has {tcols}")
        r2 = ref.reshape(-1, cols)
        t2 = tgt.reshape(-1, cols)
        block = BLOCK_ELEMENTS
        total = 0.0
        rows = 0
        if cols > block:
            for i in range(r2.shape[0]):
                v = _kl_long_row(r2[i], t2[i], block)
                if v is not None:
                    total += v
                    rows += 1
        else:
            step = max(1, block // cols)
            nrows = r2.shape[0]
            bufs = np.empty((3, min(step, nrows), cols), dtype=np.float64)  # reused: no allocation churn
            for s in range(0, nrows, step):
                k = min(step, nrows - s)
                r, t = bufs[0, :k], bufs[1, :k]
                r[...] = r2[s:s + k]
                t[...] = t2[s:s + k]
                # finite sums mean finite elements: the common case skips every mask
                if math.isfinite(float(np.add.reduce(r, axis=None))) and \
                        math.isfinite(float(np.add.reduce(t, axis=None))):
                    total += _kl_rows_finite(r, t, bufs[2, :k])
                    rows += k
                    continue
                ok = _usable_rows(r) & _usable_rows(t)
                if not ok.all():
                    r, t = r[ok], t[ok]
                    if r.shape[0] == 0:
                        continue
                total += _kl_terms(_log_softmax(r), _log_softmax(t))
                rows += r.shape[0]
        return {"sum": float(total), "rows": int(rows)}


def _kl_rows_finite(r: np.ndarray, t: np.ndarray, e: np.ndarray) -> float:
    """Sum over rows of KL(softmax(r) || softmax(t)) for finite rows; overwrites r, t and e.

    With z = x - max(x) and s = sum(exp(z)), log p = z_r - log s_r, so
    KL = sum(exp(z_r) * (z_r - z_t)) / s_r - log s_r + log s_t: two exp passes and one dot.
    """
    r -= r.max(axis=1, keepdims=True)
    t -= t.max(axis=1, keepdims=True)
    np.exp(t, out=e)
    s_t = e.sum(axis=1)
    np.exp(r, out=e)
    s_r = e.sum(axis=1)
    r -= t
    cross = _rowdot(e, r) if r.shape[1] <= DOT_BLOCK else np.einsum("ij,ij->i", e, r)
    return float(np.sum(cross / s_r - np.log(s_r) + np.log(s_t)))


def _kl_terms(lp: np.ndarray, lq: np.ndarray) -> float:
    """Sum of p * (log p - log q); p == 0 contributes 0, p > 0 with q == 0 gives +inf."""
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):
        terms = p * (lp - lq)
    terms[p == 0] = 0.0
    return float(terms.sum())


def _usable_rows(x: np.ndarray) -> np.ndarray:
    """Rows with no NaN or +Inf and at least one finite logit."""
    bad = np.isnan(x) | (x == np.inf)
    return ~bad.any(axis=1) & np.isfinite(x).any(axis=1)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    z = x - m
    with np.errstate(divide="ignore"):
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _logsumexp_pieces(x: np.ndarray, block: int) -> float | None:
    """log(sum(exp(x))) of one long row read in pieces; None if the row is unusable."""
    m = -math.inf
    acc = 0.0
    for s in range(0, x.size, block):
        a = x[s:s + block].astype(np.float64)
        if np.isnan(a).any():
            return None
        pm = float(a.max())
        if pm == math.inf:
            return None
        if pm == -math.inf:
            continue  # all masked: adds nothing
        if pm > m:
            acc *= math.exp(m - pm)
            m = pm
        acc += float(np.exp(a - m).sum())
    return None if m == -math.inf else m + math.log(acc)


def _kl_long_row(r: np.ndarray, t: np.ndarray, block: int) -> float | None:
    lse_r = _logsumexp_pieces(r, block)
    lse_t = _logsumexp_pieces(t, block) if lse_r is not None else None
    if lse_r is None or lse_t is None:
        return None
    total = 0.0
    for s in range(0, r.size, block):
        lp = r[s:s + block].astype(np.float64) - lse_r
        lq = t[s:s + block].astype(np.float64) - lse_t
        total += _kl_terms(lp, lq)
    return total


class NonFiniteMetric(Metric):
    """Target elements that became NaN/Inf where the reference is finite (FP16 overflow, say).

    Reads the count the shared chunk pass puts in ``ctx``; it is a whole-pair metric only
    so that it still reports when *no* position is finite on both sides.
    """

    name = "nonfinite"
    description = "count of target NaN/Inf where the reference is finite (lower is better; any fails)"
    higher_is_better = False
    default_threshold = 0.0
    mergeable = True  # a count: counts add
    uses_values = False  # reads ctx only: a pair scored on its device needs no host copy for it

    def compute(self, ref: np.ndarray, tgt: np.ndarray, ctx: PairContext) -> float:
        return float(ctx.tgt_new_nonfinite)

    def compute_state(self, ref: np.ndarray, tgt: np.ndarray, ctx: PairContext) -> dict[str, int]:
        return {"tgt_new_nonfinite": int(ctx.tgt_new_nonfinite)}

    def merge(self, a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
        return {"tgt_new_nonfinite": a["tgt_new_nonfinite"] + b["tgt_new_nonfinite"]}

    def finish(self, state: dict[str, int], ctx: PairContext) -> float:
        return float(state["tgt_new_nonfinite"])

    def format(self, value: float | None) -> str:
        s = special_format(value)
        return s if s is not None else str(int(value))  # a count


ALL_METRICS: tuple[type[Metric], ...] = (
    CosineMetric, RelDiffMetric, MaxAbsMetric, MeanAbsMetric, L2Metric, SqnrMetric,
    KLHistogramMetric, KLSoftmaxMetric, NonFiniteMetric,
)

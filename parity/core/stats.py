"""Per-layer statistics over a dataset, mergeable: a sharded run gives the report a one-process run gives.

Why: a layer that is fine on average can be ruined on 1% of inputs, and a dataset of thousands
of feeds is compared on several workers. Each feed's report rows are folded into a
:class:`DatasetStats` as they are scored (no per-feed report is kept), and two
``DatasetStats`` merge exactly:

* counts (NaN/Inf, inputs, top-1 agreement, match methods) add;
* a *mergeable* metric's sufficient statistics (``ctx.states``: float64 sums, extrema, counts)
  merge with the metric's own ``merge`` and give its **pooled** value over the whole dataset
  (e.g. cosine of all elements of all inputs). The sums of moment states (and of range squares)
  are kept exactly (:class:`ExactSum`), so the pooled value is the same bit for bit however the
  inputs were split over workers and in whatever order the parts merged;
* every metric's per-input values are kept with their input's stable index, so the mean, the
  worst-side quantiles and the worst inputs are computed from the same sorted list whoever
  computed the parts (8 bytes and an index per layer, metric and input);
* value ranges, error-vs-magnitude histograms (fixed edges) and local errors merge exactly.
"""
from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parity.contract.metric import MOMENTS, Metric, PairContext, merge_contexts
from parity.lib.scoring import pooled_value
from parity.contract.report import NEW_NONFINITE, LayerResult, MetricInfo, Report
from parity.core.rows import classify, merge_error_vs_magnitude

#: how many worst inputs each layer and metric lists
WORST_K = 5
#: worst-side quantiles reported per metric: q90 is the value 90% of inputs are at least as good as
QUANTILES = (0.5, 0.9, 0.99)


class ExactSum:
    """A sum of float64 values kept exactly, as non-overlapping partials (Shewchuk; what ``math.fsum``
    does for a list), read as the correctly rounded value of the exact sum.

    Why: float addition is not associative, so a dataset's sums folded feed by feed in one process
    and folded per shard then across shards differ in the last bits. The exact sum does not depend
    on the order, so neither does its rounded value: ``--workers N`` gives one process's pooled
    values bit for bit. A few partials per sum (~2 us an addition in Python: a feed of 200 layers
    folds in a few ms more than with plain floats); NaN/Inf values add into ``special`` (their sum
    is order independent too) and win over the finite part.
    """

    __slots__ = ("partials", "special")

    def __init__(self, x: float = 0.0) -> None:
        self.partials: list[float] = []
        self.special = 0.0
        self.add(x)

    def add(self, x: float) -> "ExactSum":
        x = float(x)
        if not math.isfinite(x):
            self.special += x
            return self
        ps = self.partials
        i = 0
        for y in ps:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                ps[i] = lo
                i += 1
            x = hi
        ps[i:] = [x]
        return self

    def merge(self, other: "ExactSum | float") -> "ExactSum":
        if isinstance(other, ExactSum):
            for p in other.partials:
                self.add(p)
            self.special += other.special
        else:
            self.add(other)
        return self

    def value(self) -> float:
        if self.special != 0.0:  # NaN too (NaN != 0)
            return self.special
        try:
            return math.fsum(self.partials)
        except OverflowError:  # the exact sum is past float64's range
            return math.copysign(math.inf, sum(self.partials))


def _add_exact(a: "ExactSum | float", b: "ExactSum | float") -> ExactSum:
    """``a + b`` kept exactly; ``a`` is updated in place when it is already an :class:`ExactSum`."""
    out = a if isinstance(a, ExactSum) else ExactSum(a)
    return out.merge(b)


def _plain(v: Any) -> Any:
    return v.value() if isinstance(v, ExactSum) else v


#: moments that count elements: exact in float64 whatever the order
_COUNTS = frozenset({"n", "within"})


def _merge_moment_states(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """:func:`parity.contract.metric.merge_moments` with every sum kept exactly (maxima are exact anyway)."""
    out = a
    for k, v in b.items():
        if k not in out:
            out[k] = ExactSum().merge(v) if isinstance(v, ExactSum) else v
        elif MOMENTS.get(k) == "max":
            out[k] = max(_plain(out[k]), _plain(v))
        elif k in _COUNTS and not isinstance(out[k], ExactSum) and not isinstance(v, ExactSum):
            out[k] = out[k] + v  # whole numbers: float64 adds them exactly (below 2**53)
        else:
            out[k] = _add_exact(out[k], v)
    return out


def _exact_merge_applies(m: Any, a: Any, b: Any) -> bool:
    """A moment metric merged by the default rule (sums add, maxima take the max): its sums can be exact."""
    return (bool(getattr(m, "moments", ())) and type(m).merge is Metric.merge
            and isinstance(a, dict) and isinstance(b, dict))


def _merge_contexts(a: PairContext | None, b: PairContext | None) -> PairContext | None:
    if a is None or b is None:
        return a or b
    return merge_contexts(a, b)


@dataclass
class LayerStats:
    """One layer (a reference/target pair of names) over the inputs seen so far."""

    template: LayerResult  # the row of the lowest-indexed input: names, shapes, op types, notes
    index: int  # that input's index
    n: int = 0
    #: per metric, the inputs' indices and values (16 bytes an input: thousands of feeds stay small)
    samples: dict[str, tuple[array, array]] = field(default_factory=dict)
    states: dict[str, Any] = field(default_factory=dict)
    pair: PairContext | None = None
    counts: dict[str, int] = field(default_factory=dict)
    local: dict[str, list[float]] = field(default_factory=dict)
    ranges: dict[str, dict[str, float]] = field(default_factory=dict)
    evm: dict[str, Any] | None = None

    @classmethod
    def of(cls, index: int, row: LayerResult) -> "LayerStats":
        pair = row.pair_stats
        st = cls(template=_bare(row), index=index, n=1)
        for name, v in row.values.items():
            st.samples[name] = (array("q", [index]), array("d", [float(v)]))
        if pair is not None:
            import copy

            # merges may update a state in place: the row's own states stay untouched (flat dicts of
            # numbers, the built-in metrics' states, are copied cheaply)
            st.states = {k: (dict(v) if isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values())
                             else copy.deepcopy(v)) for k, v in pair.states.items()}
            st.pair = copy.copy(pair)
            st.pair.states = {}  # the states live in ``st.states``; the context keeps the counts
        st.counts = {"ref_nan": row.ref_nan, "ref_inf": row.ref_inf, "target_nan": row.target_nan,
                     "target_inf": row.target_inf, "target_new_nonfinite": int(row.meta.get("target_new_nonfinite", 0))}
        for k, v in row.local.items():
            st.local[k] = [float(v)]
        for side in ("ref", "target"):
            r = row.range.get(side)
            if r:
                st.ranges[side] = {"min": r["min"], "max": r["max"], "absmax": r["absmax"],
                                   "ms": r["rms"] ** 2, "n": 1}
        st.evm = row.range.get("error_vs_magnitude")
        return st

    def merge(self, other: "LayerStats", infos: list[MetricInfo]) -> None:
        if other.index < self.index:
            self.template, self.index = other.template, other.index
        by_name = {i.name: i.metric for i in infos}
        for name in set(self.states) | set(other.states):
            m = by_name.get(name)
            if name in self.states and name in other.states and m is not None:
                a, b = self.states[name], other.states[name]
                self.states[name] = _merge_moment_states(a, b) if _exact_merge_applies(m, a, b) else m.merge(a, b)
            else:  # some inputs scored this layer without the metric's state: no pooled value
                self.states.pop(name, None)
        self.n += other.n
        for name, (idx, vals) in other.samples.items():
            mine = self.samples.setdefault(name, (array("q"), array("d")))
            mine[0].extend(idx)
            mine[1].extend(vals)
        self.pair = _merge_contexts(self.pair, other.pair)
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        for k, v in other.local.items():
            self.local.setdefault(k, []).extend(v)
        for side, r in other.ranges.items():
            mine = self.ranges.get(side)
            self.ranges[side] = dict(r) if mine is None else {
                "min": min(mine["min"], r["min"]), "max": max(mine["max"], r["max"]),
                "absmax": max(mine["absmax"], r["absmax"]), "ms": _add_exact(mine["ms"], r["ms"]),
                "n": mine["n"] + r["n"]}
        if other.evm is not None:
            self.evm = other.evm if self.evm is None else merge_error_vs_magnitude([self.evm, other.evm])

    def result(self, infos: list[MetricInfo], total: int) -> LayerResult:
        """The report row over every input seen (the lone row itself when there was one input)."""
        out = _bare(self.template)
        if total == 1 and self.n == 1:
            out.values = {k: v[1][0] for k, v in self.samples.items()}
            out.local = {k: v[0] for k, v in self.local.items()}
            self._fill_common(out)
            out.range = _ranges(self.ranges, self.evm)
            out.status = self.template.status
            return out
        self._fill_common(out)
        out.n_inputs = self.n
        out.range = _ranges(self.ranges, self.evm)
        out.local = _local(self.local, infos)
        for info in infos:
            if info.name not in self.samples or not len(self.samples[info.name][0]):
                continue
            idx = np.frombuffer(self.samples[info.name][0], dtype=np.int64)
            vals = np.frombuffer(self.samples[info.name][1], dtype=np.float64)
            by_index = np.argsort(idx, kind="stable")  # the same order however the shards arrived
            idx, vals = idx[by_index], vals[by_index]
            out.values[info.name] = float(vals.mean())  # NaN/Inf on any input shows in the mean
            finite = vals[np.isfinite(vals)]
            out.spread[info.name] = float(finite.std()) if finite.size > 1 else 0.0
            err = np.array([info.error(v) for v in vals.tolist()], dtype=np.float64)
            order = np.lexsort((idx, -err))  # worst first; ties: the lower index
            out.worst[info.name] = float(vals[order[0]])
            out.worst_input[info.name] = int(idx[order[0]])
            out.worst_inputs[info.name] = [[int(idx[j]), float(vals[j])] for j in order[:WORST_K] if err[j] > 0]
            best_first = order[::-1]
            out.quantiles[info.name] = {f"q{int(q * 100)}": float(vals[best_first[max(0, math.ceil(q * len(vals)) - 1)]])
                                        for q in QUANTILES}
            if info is infos[0] and info.threshold is not None:  # how many inputs fail, not only on average
                out.meta["failing_inputs"] = int(sum(info.fails(v, info.threshold) for v in vals.tolist()))
            m = info.metric
            state = self.states.get(info.name)
            if m is not None and state is not None and getattr(m, "mergeable", False) and self.pair is not None:
                if isinstance(state, dict) and any(isinstance(v, ExactSum) for v in state.values()):
                    state = {k: _plain(v) for k, v in state.items()}
                out.pooled[info.name] = pooled_value(m, state, self.pair)
        if self.n != total:
            out.notes.append(f"present for {self.n} of {total} inputs")
        classify(out, infos)
        return out

    def _fill_common(self, out: LayerResult) -> None:
        c = self.counts
        out.ref_nan, out.ref_inf = c.get("ref_nan", 0), c.get("ref_inf", 0)
        out.target_nan, out.target_inf = c.get("target_nan", 0), c.get("target_inf", 0)
        if "target_new_nonfinite" in self.template.meta or c.get("target_new_nonfinite"):
            out.meta["target_new_nonfinite"] = c.get("target_new_nonfinite", 0)


def _bare(row: LayerResult) -> LayerResult:
    """The row's identity and annotations, without values or per-input statistics."""
    return LayerResult(
        name=row.name, ref_name=row.ref_name, target_name=row.target_name, order=row.order,
        ref_shape=row.ref_shape, target_shape=row.target_shape, ref_dtype=row.ref_dtype,
        target_dtype=row.target_dtype, op_type=row.op_type, target_op_type=row.target_op_type,
        status=row.status, match=row.match, confidence=row.confidence, notes=list(row.notes),
        meta={k: v for k, v in row.meta.items()})


def _ranges(ranges: dict[str, dict[str, float]], evm: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side, r in ranges.items():
        out[side] = {"min": r["min"], "max": r["max"], "absmax": r["absmax"], "rms": math.sqrt(_plain(r["ms"]) / r["n"])}
    if evm is not None:
        out["error_vs_magnitude"] = evm
    return out


def _local(local: dict[str, list[float]], infos: list[MetricInfo]) -> dict[str, float]:
    """Local errors over several inputs: the worst one, since a culprit on any input is a culprit."""
    out: dict[str, float] = {}
    if NEW_NONFINITE in local:
        out[NEW_NONFINITE] = float(sum(local[NEW_NONFINITE]))
    for k, vals in local.items():
        if k.startswith("_") and k != NEW_NONFINITE:
            out[k] = float(max(vals))
    for info in infos:
        vals = local.get(info.name)
        if vals:
            arr = np.array(vals, dtype=np.float64)
            out[info.name] = float(np.nan if np.isnan(arr).any() else (arr.min() if info.higher_is_better
                                                                         else arr.max()))
    return out


@dataclass
class DatasetStats:
    """Everything a comparison keeps over its inputs: per-layer statistics and run-level counts.

    Picklable (it crosses from Ray workers to the driver) and small: no arrays of activations.
    """

    layers: dict[tuple[str | None, str | None], LayerStats] = field(default_factory=dict)
    inputs: int = 0
    labels: dict[int, str] = field(default_factory=dict)
    agree: int = 0
    top1_total: int = 0
    match_stats: dict[str, int] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    summary_index: int = -1
    #: how the report names the reference and the target (the target source's own name: ``dump:x.json``)
    labels_of_sides: tuple[str, str] | None = None
    #: the deployed-outputs check (:class:`parity.core.deployed.DeployedStats`), None when not run
    deployed: Any = None
    #: target tensors not captured because no reference record could pair with them, summed over inputs
    capture_skipped: int = 0

    def add(self, index: int, label: str, report: Report) -> None:
        """Fold one input's report in (its rows are not kept)."""
        infos = report.metrics
        part = DatasetStats(inputs=1, labels={index: label}, summary=dict(report.summary), summary_index=index)
        for row in report.layers:
            part.layers[(row.ref_name, row.target_name)] = LayerStats.of(index, row)
        self.merge(part, infos)

    def merge(self, other: "DatasetStats", infos: list[MetricInfo]) -> "DatasetStats":
        """Fold ``other`` (another shard's statistics) into this one; returns self."""
        for key, st in other.layers.items():
            mine = self.layers.get(key)
            if mine is None:
                self.layers[key] = st
            else:
                mine.merge(st, infos)
        self.inputs += other.inputs
        self.labels.update(other.labels)
        self.agree += other.agree
        self.top1_total += other.top1_total
        for k, v in other.match_stats.items():
            self.match_stats[k] = self.match_stats.get(k, 0) + v
        self.capture_skipped += other.capture_skipped
        self.labels_of_sides = self.labels_of_sides or other.labels_of_sides
        if other.deployed is not None:
            self.deployed = other.deployed if self.deployed is None else self.deployed.merge(other.deployed, infos)
        if other.summary_index >= 0 and (self.summary_index < 0 or other.summary_index < self.summary_index):
            self.summary, self.summary_index = dict(other.summary), other.summary_index
        return self

    def report(self, infos: list[MetricInfo], ref_label: str, target_label: str) -> Report:
        """The report over every input folded in, rows in execution order."""
        rows = [st.result(infos, self.inputs) for st in self.layers.values()]
        rows.sort(key=lambda r: (r.order, r.name))
        summary = dict(self.summary)
        if self.inputs > 1:
            worst = sorted({i for r in rows for w in r.worst_inputs.values() for i, _ in w})
            summary["input_labels"] = {str(i): self.labels.get(i, str(i)) for i in worst}
        return Report(rows, infos, ref_label, target_label, summary=summary)

"""The report data model: what a comparison produced, without arrays.

Reporters (table, JSON, CSV, HTML ...) and the core share these types, so they live in the
contract: a reporter plugin reads a :class:`Report` and needs nothing else of parity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from parity.contract.errors import ParityError
from parity.contract.metric import Metric, default_error, default_format, fails

# Layer statuses, in report terms.
OK = "ok"
BELOW = "below"                # primary metric worse than its threshold
NONFINITE = "nonfinite"        # target produced NaN/Inf where the reference is finite
SHAPE_MISMATCH = "shape-mismatch"
REF_ONLY = "ref-only"
TARGET_ONLY = "target-only"
FAILING = (BELOW, NONFINITE)
#: key under which a row's ``local`` values carry the count of NaN/Inf the layer alone produced
NEW_NONFINITE = "_new_nonfinite"


@dataclass
class MetricInfo:
    """A metric as a report knows it: name, direction, threshold, and the metric object itself.

    ``fails``, ``error`` and ``format`` ask the metric (it owns its meaning); a report rebuilt
    without metric objects falls back to what direction and ``percent`` say.
    """

    name: str
    higher_is_better: bool
    percent: bool
    threshold: float | None
    description: str = ""
    metric: Metric | None = field(default=None, repr=False, compare=False)

    def fails(self, value: float | None, bound: float) -> bool:
        return self.metric.fails(value, bound) if self.metric is not None else fails(value, bound, self.higher_is_better)

    def error(self, value: float) -> float:
        return self.metric.error(value) if self.metric is not None else default_error(value, self.higher_is_better)

    def format(self, value: float | None) -> str:
        return self.metric.format(value) if self.metric is not None else default_format(value, self.percent)

    def schema(self) -> dict[str, Any]:
        """The fields reports write (the metric object is not one of them)."""
        return {"name": self.name, "higher_is_better": self.higher_is_better, "percent": self.percent,
                "threshold": self.threshold, "description": self.description}


@dataclass
class LayerResult:
    """One row of the report."""

    name: str
    ref_name: str | None
    target_name: str | None
    order: float
    ref_shape: tuple[int, ...] | None = None
    target_shape: tuple[int, ...] | None = None
    ref_dtype: str | None = None
    target_dtype: str | None = None
    op_type: str | None = None
    target_op_type: str | None = None
    values: dict[str, float] = field(default_factory=dict)
    status: str = OK
    match: str = "exact"
    confidence: float = 1.0
    notes: list[str] = field(default_factory=list)
    ref_nan: int = 0
    ref_inf: int = 0
    target_nan: int = 0
    target_inf: int = 0
    #: per metric, the worst value over inputs and which input gave it (several inputs only)
    worst: dict[str, float] = field(default_factory=dict)
    worst_input: dict[str, int] = field(default_factory=dict)
    spread: dict[str, float] = field(default_factory=dict)
    n_inputs: int = 1
    #: per metric, with several inputs: the value over all inputs pooled (mergeable metrics only: e.g.
    #: cosine of every element of every input), worst-side quantiles ``q50/q90/q99`` (q90: 90% of inputs
    #: are at least this good) and the worst inputs as ``[index, value]``, worst first
    pooled: dict[str, float] = field(default_factory=dict)
    quantiles: dict[str, dict[str, float]] = field(default_factory=dict)
    worst_inputs: dict[str, list[list[float]]] = field(default_factory=dict)
    #: metric values of the layer run alone in the target setting, fed the reference inputs
    local: dict[str, float] = field(default_factory=dict)
    #: reference value range (min, max, absmax, rms) and, for low-precision targets, format facts
    range: dict[str, Any] = field(default_factory=dict)
    #: 1 for the layer that most explains the loss, 2 for the next... (None: not a culprit)
    culprit_rank: int | None = None
    #: the culprit whose error this row only carries on (a consumer of its overflow, the module that
    #: contains it, the same tensor), grouped under it and never ranked; ``meta["consequence"]`` says how
    caused_by: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: the scoring context of one input (counts and the metrics' mergeable states); the core folds it
    #: into dataset statistics and drops it; reporters ignore it
    pair_stats: Any = field(default=None, repr=False, compare=False)

    @property
    def failing(self) -> bool:
        return self.status in FAILING

    @property
    def shape(self) -> tuple[int, ...] | None:
        return self.ref_shape if self.ref_shape is not None else self.target_shape


@dataclass
class Report:
    """A whole comparison: rows in execution order plus what was asked."""

    layers: list[LayerResult]
    metrics: list[MetricInfo]
    ref_label: str = "reference"
    target_label: str = "target"
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def primary(self) -> MetricInfo | None:
        return self.metrics[0] if self.metrics else None

    @property
    def first_divergent(self) -> LayerResult | None:
        """The first layer in execution order that fails: where to start looking."""
        for layer in self.layers:
            if layer.failing:
                return layer
        return None

    @property
    def matched(self) -> list[LayerResult]:
        return [l for l in self.layers if l.ref_name is not None and l.target_name is not None]

    def __bool__(self) -> bool:
        dep = self.summary.get("deployed") or {}
        if dep.get("perturbed") and self.primary is not None:  # the rows are not the deployed run
            return not deployed_failures(dep, self.primary, self.primary.threshold)
        return self.first_divergent is None

    def worst_value(self, metric: str) -> float | None:
        """The worst value of ``metric`` over matched layers (NaN counts as worst)."""
        info = next((m for m in self.metrics if m.name == metric), None)
        if info is None:
            raise ParityError(f"metric {metric!r} is not in this report. Note: report has "
                              f"{', '.join(m.name for m in self.metrics)}.")
        vals = [l.worst.get(metric, l.values.get(metric)) for l in self.matched if metric in l.values]
        if not vals:
            return None
        if any(v is None or math.isnan(v) for v in vals):
            return math.nan
        return min(vals) if info.higher_is_better else max(vals)

    # -- what print(report) and a notebook's echo show: a few lines, not a dataclass dump of every row

    def __repr__(self) -> str:
        shown = f" {self.summary['model']}" if self.summary.get("model") else ""
        return (f"<{type(self).__name__}{shown}: {self.ref_label} vs {self.target_label}, "
                f"{len(self.matched)} layers compared, {'PASS' if _passes(self) else 'FAIL'}>")

    def __str__(self) -> str:
        return "\n".join(short_summary(self))


# -- the verdict in plain words, shared by every human-readable reporter ---------------------------

def _passes(report: Report) -> bool:
    """The comparison passes: layers were compared, none fails or gains NaN/Inf, no shapes differ."""
    return bool(report.matched) and bool(report) and not any(l.status == SHAPE_MISMATCH for l in report.layers)


def _metric_value(row: LayerResult, p: MetricInfo) -> float | None:
    v = row.worst.get(p.name, row.values.get(p.name))
    return None if v is None else float(v)


def short_summary(report: Report, worst: int = 5) -> list[str]:
    """``print(report)``: what was compared, the verdict, the culprits and the worst layers.

    Why not the table: a report printed in a notebook or a script log should answer "did it pass,
    and where does it break" in a few lines; the full table is one reporter away.
    """
    p = report.primary
    head = f"parity report: {report.ref_label} vs {report.target_label}"
    if report.summary.get("model"):
        head += f" on {report.summary['model']}"
    verdict = summary_lines(report)
    lines = [head, verdict[0]]
    first = report.first_divergent
    dep = report.summary.get("deployed") or {}
    if dep.get("perturbed") and p is not None and report.matched:  # the deployed outputs decide, as the gate does
        why = deployed_failures(dep, p, p.threshold)
        lines.append(f"FAIL: {why[0]}" if why else "PASS: the deployed outputs pass (capture changed the captured run)")
    elif _passes(report):
        lines.append("PASS" + (f": no layer fails {p.name} threshold {p.threshold:g}"
                               if p is not None and p.threshold is not None else ""))
    elif not report.matched:
        lines.append("FAIL: no layer was compared")
    elif first is not None:
        lines.append("FAIL: " + verdict[1].removeprefix("First divergence: "))
    else:
        bad = [l.name for l in report.layers if l.status == SHAPE_MISMATCH]
        lines.append(f"FAIL: shapes differ at {', '.join(bad[:5])}")
    culprits = [r for r, _ in culprit_groups(report)]  # the report's one ordering, as every reporter shows it
    if culprits:
        parts = [f"{r.name} ({r.op_type or r.target_op_type or 'layer'}" + (f"; alone, {_alone(r, p)})" if p is not None else ")")
                 for r in culprits[:worst]]
        more = f" (+{len(culprits) - worst} more)" if len(culprits) > worst else ""
        lines.append("culprits: " + ", ".join(parts) + more)
    if p is not None:
        scored = [(r, _metric_value(r, p)) for r in report.matched]
        scored = [(r, v) for r, v in scored if v is not None]
        # a layer gaining NaN/Inf fails whatever its score over the finite values: it ranks first
        scored.sort(key=lambda rv: (rv[0].status != NONFINITE, -math.inf if math.isnan(rv[1]) else -p.error(rv[1])))
        if scored:
            lines.append(f"worst layers by {p.name}: " + ", ".join(
                f"{r.name} {p.format(v)}{' (NaN/Inf)' if r.status == NONFINITE else ''}" for r, v in scored[:worst]))
    return lines


def summary_lines(report: Report) -> list[str]:
    """The verdict under the table, in plain words (also what ``--quiet`` prints)."""
    out: list[str] = []
    p = report.primary
    matched = report.matched
    out.append(f"{len(matched)} layers compared"
               + (f", {sum(1 for l in report.layers if l.status == REF_ONLY)} only in {report.ref_label}"
                  f", {sum(1 for l in report.layers if l.status == TARGET_ONLY)} only in {report.target_label}"
                  if len(matched) != len(report.layers) else "")
               + (f", over {report.summary['inputs']} inputs" if report.summary.get("inputs", 1) > 1 else ""))
    first = report.first_divergent
    if p is None:
        return out
    if first is None:
        out.append(f"No layer fails {p.name} threshold {p.threshold:g}." if p.threshold is not None
                   else f"No threshold for {p.name}; pass --threshold to mark the first diverging layer.")
    elif first.status == NONFINITE:
        out.append(f"First divergence: {first.name} produces {first.meta.get('target_new_nonfinite', 0)} "
                   f"NaN/Inf values in {report.target_label} where {report.ref_label} is finite (overflow?).")
    else:
        v = first.worst.get(p.name, first.values.get(p.name))
        out.append(f"First divergence: {first.name} ({first.op_type or first.target_op_type or 'layer'}), "
                   f"{p.name} {p.format(v)} {'<' if p.higher_is_better else '>'} {p.format(p.threshold)}.")
    out.extend(deployed_lines(report.summary))
    out.extend(_dataset_lines(report))
    unmatched = [l for l in report.layers if l.status in (REF_ONLY, TARGET_ONLY)]
    if unmatched:
        names = ", ".join(f"{l.name} ({l.status})" for l in unmatched[:8])
        out.append(f"Unmatched: {names}{' …' if len(unmatched) > 8 else ''}")
    for k, v in report.summary.items():
        if k in ("inputs", "model") or "_" in k or isinstance(v, (dict, list)):
            continue
        out.append(f"{k}: {v}")
    return out + diagnosis_lines(report)


def deployed_failures(summary: dict[str, Any], primary: MetricInfo, bound: float | None) -> list[str]:
    """Why the deployed outputs fail the comparison (the gate when capture perturbed the run)."""
    out: list[str] = []
    for o in summary.get("outputs", []):
        if o["nonfinite"]:
            out.append(f"deployed output {o['name']} holds {o['nonfinite']} NaN/Inf values where the reference is finite")
        v = o["values"].get(primary.name)
        if bound is not None and v is not None and primary.fails(v, bound):
            side = "below" if primary.higher_is_better else "above"
            out.append(f"deployed output {o['name']} has {primary.name} {primary.format(v)}, {side} {bound:g}")
    return out


def deployed_lines(summary: dict[str, Any]) -> list[str]:
    """The verdict's lines on the deployed outputs: printed by every reporter that prints a verdict."""
    dep = summary.get("deployed")
    if not dep or not dep.get("outputs"):
        return []
    p = dep.get("primary")
    lines: list[str] = []
    if dep.get("perturbed"):
        for o in dep["outputs"]:
            if not o.get("perturbed"):
                continue
            what = [f"{o['capture_diff']:.3g} of its magnitude"] if math.isfinite(o["capture_diff"]) else []
            if o["captured_nonfinite"] != o["nonfinite"]:
                what.append(f"{o['captured_nonfinite']} NaN/Inf captured vs {o['nonfinite']} deployed")
            cap, dv = o["captured_values"].get(p), o["values"].get(p)
            nums = f"; {p} {cap:.7g} captured vs {dv:.7g} deployed" if p and cap is not None and dv is not None else ""
            lines.append(f"Capture changed the output {o['name']} ({', '.join(what)}){nums}: the per-layer rows "
                         f"describe the captured run, not the deployed one; the pass/fail verdict uses the "
                         f"deployed outputs.")
    else:
        shown = [o for o in dep["outputs"] if p in o["values"]]
        if shown and p:
            vals = ", ".join(f"{o['name']} {o['values'][p]:.7g} deployed / {o['captured_values'].get(p, math.nan):.7g} "
                             f"captured" for o in shown[:3])
            lines.append(f"Deployed outputs (no capture) agree with the captured run; {p}: {vals}.")
    if dep.get("semantics"):
        lines.append(f"Target semantics: {dep['semantics']}.")
    if dep.get("fp32_fallback_ops"):
        ops = ", ".join(f"{k} x{v}" for k, v in dep["fp32_fallback_ops"].items())
        lines.append(f"Run in float32 by the target (no float16 kernel on its provider): {ops}.")
    return lines


def _dataset_lines(report: Report) -> list[str]:
    """Over several inputs: at the first layer some inputs fail, how many fail and which are worst.

    Why: a layer fine on average can be ruined on 1% of inputs; the mean hides it, these lines don't.
    """
    p = report.primary
    n = report.summary.get("inputs", 1)
    if p is None or n <= 1 or p.threshold is None:
        return []
    row = next((l for l in report.layers if l.meta.get("failing_inputs")), None)
    if row is None:
        return []
    labels = report.summary.get("input_labels", {})
    worst = ", ".join(f"#{int(i)} {labels.get(str(int(i)), '')} ({p.format(v)})"
                      for i, v in row.worst_inputs.get(p.name, [])[:3])
    return [f"Inputs: {row.meta['failing_inputs']} of {n} fail {p.name} {p.format(p.threshold)} at {row.name} "
            f"(first such layer); worst: {worst}."]


def made_nonfinite(layer: LayerResult, local: bool = False) -> bool:
    """Whether the layer produced NaN/Inf where the reference is finite: end to end, or run alone
    (``local``). Its error is then infinite, whatever a metric computed on the finite part says (an
    overflowing Linear reads cosine 1 - 1e-7 there): every reporter that ranks or colours by error asks this.
    """
    if local:
        return layer.local.get(NEW_NONFINITE, 0) > 0 or bool(layer.meta.get("overflow"))
    return layer.status == NONFINITE or layer.meta.get("target_new_nonfinite", 0) > 0


def culprit_groups(report: Report) -> list[tuple[LayerResult, list[LayerResult]]]:
    """The report's one culprit ordering: each culprit by rank, with the rows grouped under it
    (``caused_by``), in execution order. Every reporter and the API read this, never their own sort."""
    byname = {r.name: r for r in report.layers}
    out = []
    for name in report.summary.get("culprits") or []:
        r = byname.get(name)
        if r is not None:
            out.append((r, [c for c in report.layers if c.caused_by == name]))
    return out


def _alone(r: LayerResult, p: MetricInfo) -> str:
    """What the culprit does run alone in the target: its overflow in numbers, else its local value."""
    ov = r.meta.get("overflow") or {}
    top, fmax = ov.get("ref_absmax"), ov.get("format_max")
    if ov and fmax is not None and (top is not None and top > fmax or ov.get("saturated")):
        return (f"{ov['count']} of its values exceed the {ov.get('format') or 'target'} max {fmax:g}"
                + (f" (the reference reaches {top:.4g})" if top is not None else "") + " and become Inf")
    nf = int(ov.get("count") or r.local.get(NEW_NONFINITE, 0))
    if nf and ov.get("input_from") is not None and fmax is not None:
        return (f"it produces {nf} NaN/Inf values: its input {ov['input_from']} reaches {ov['input_absmax']:.4g} "
                f"(reference) > the {ov.get('format') or 'target'} max {fmax:g} and is Inf once cast for it")
    if nf:
        return f"it produces {nf} NaN/Inf values" + (f" (its reference stays within ±{top:.4g})" if top is not None else "")
    return f"it reaches {p.name} {p.format(r.local.get(p.name))}"


def diagnosis_lines(report: Report) -> list[str]:
    """Plain-words verdict of a diagnosis (culprits, first NaN/Inf, range risks), from the report alone."""
    out = []
    p = report.primary
    byname = {r.name: r for r in report.layers}
    groups = culprit_groups(report)
    if groups and p is not None:
        r, cons = groups[0]
        where = r.meta.get("ref_module_path") or r.meta.get("target_onnx_node") or r.target_name
        if not r.meta.get("ref_module_path") and r.meta.get("module"):  # a target-only node: the module it sits in
            where = f"{where} in {r.meta['module']}"
        out.append(f"Culprit: {r.name} ({r.op_type or r.target_op_type or 'layer'}; {where}) — run alone in the "
                   f"target, {_alone(r, p)}; it causes the loss, the layers after it inherit it.")
        if r.meta.get("culprit_cause") and not r.meta.get("overflow"):
            out.append(f"cause: {r.meta['culprit_cause']}")
        if cons:
            out.append(f"Grouped under {r.name} (they carry its error, not culprits): "
                       + "; ".join(f"{c.name} ({c.meta.get('consequence', 'inherits it')})" for c in cons[:6])
                       + (" …" if len(cons) > 6 else ""))
        if len(groups) > 1:
            out.append("Other culprits by local error: " + ", ".join(
                f"#{c.culprit_rank} {c.name}" + (f" (+{len(cs)} grouped)" if cs else "") for c, cs in groups[1:]))
        fc = report.summary.get("first_culprit")
        if fc and fc != r.name and fc in byname:
            out.append(f"First culprit in execution order: {fc} (#{byname[fc].culprit_rank}); the layers after it "
                       f"read its error.")
    elif any(r.local for r in report.layers) and not report:
        out.append("No layer's local error explains the loss: it builds up over many layers.")
    if report.summary.get("first_nonfinite"):
        r = byname[report.summary["first_nonfinite"]]
        out.append(f"First NaN/Inf: {r.name} ({r.op_type or r.target_op_type or 'layer'}).")
    ov = report.summary.get("overflow_layers") or []
    if ov:
        fmt = report.summary.get("target_format")
        names = ", ".join(f"{n} ({byname[n].op_type or byname[n].target_op_type or 'layer'})" for n in ov[:6])
        out.append(f"Reference values exceed the {fmt} range in: {names}{' …' if len(ov) > 6 else ''}")
    risky = [r for r in report.layers if r.range.get("risk") and r.name not in ov]
    if risky and report.summary.get("target_format") == "int8":
        out.append("Outlier-heavy for int8: " + ", ".join(r.name for r in risky[:6]))
    return out

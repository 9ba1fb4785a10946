"""Diagnosis beyond the table: local vs accumulated error, culprits, overflow and range tracing.

*Accumulated* error is what a compare run measures: the target run end to end, so every
layer inherits the error of all layers before it. *Local* error is what a layer adds on its
own: the layer run in the target setting, fed the *reference* activations as inputs, scored
against the reference output. A layer with high accumulated but low local error merely
inherits; a layer whose local error is high causes the loss. Sources provide local runs
through an optional ``local_errors(cfg, feed)`` method (see docs/diagnosis.md).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Iterator


from parity.contract.records import LocalResult
from parity.contract.report import NEW_NONFINITE, NONFINITE, LayerResult, MetricInfo, Report, diagnosis_lines
from parity.contract.metric import Metric, score_pair

__all__ = ["FORMATS", "LocalResult", "attach_local", "diagnosis_lines", "error_of", "find_culprits", "score_local",
           "target_format", "trace_ranges"]

#: largest finite value and smallest normal value of each low-precision format
FORMATS: dict[str, dict[str, float]] = {
    "float16": {"max": 65504.0, "tiny": 6.103515625e-05, "mantissa_bits": 10},
    "bfloat16": {"max": 3.3895313892515355e38, "tiny": 1.1754943508222875e-38, "mantissa_bits": 7},
    "float32": {"max": 3.4028234663852886e38, "tiny": 1.1754943508222875e-38, "mantissa_bits": 23},
}
#: absmax/rms above which a tensor is outlier-heavy for per-tensor int8 (most values then
#: share a few of the 255 levels)
INT8_CREST_RISK = 20.0
#: a layer is a culprit when its local error is at least this share of its accumulated error
CAUSE_SHARE = 0.5


def target_format(source_name: str, row: LayerResult | None = None) -> str | None:
    """The number format a target computes in, from its name (``ort-fp16``) or the row's dtype."""
    n = source_name.lower()
    if "int8" in n:
        return "int8"
    if "bf16" in n:
        return "bfloat16"
    if "fp16" in n or "half" in n:
        return "float16"
    if row is not None and row.target_dtype in FORMATS and row.target_dtype != "float32":
        return row.target_dtype
    return None


def score_local(results: Iterable[LocalResult], metrics: list[Metric],
                options: dict[str, Any] | None = None) -> Iterator[tuple[str, dict[str, float]]]:
    """Score each local run with the same metrics as the compare run, one at a time."""
    for lr in results:
        if lr.ref.size != lr.target.size:
            continue
        values, ctx = score_pair(lr.ref, lr.target, metrics, options)
        # new NaN/Inf in the local run is local error too, even when the finite part still agrees
        values[NEW_NONFINITE] = float(ctx.tgt_new_nonfinite)
        yield lr.key, values


def attach_local(report: Report, local: dict[str, dict[str, float]]) -> int:
    """Put local values on the rows whose target record they belong to; returns how many rows got one."""
    n = 0
    for row in report.layers:
        if row.target_name is not None and row.target_name in local:
            row.local = dict(local[row.target_name])
            n += 1
    return n


def error_of(value: float | None, info: MetricInfo) -> float | None:
    """The metric's own error for ``value`` (0 = no loss, ``inf`` for NaN); ``None`` for no value."""
    return None if value is None else info.error(value)


def find_culprits(report: Report, top: int = 5) -> list[LayerResult]:
    """Rank the layers that cause the loss: high local error, and enough of it to explain the drop.

    A layer qualifies when its local value fails the primary threshold, or when its local
    error is at least ``CAUSE_SHARE`` of its accumulated error while the accumulated value
    fails. The first culprit in execution order is the one to fix first; the ranking is by
    local error, worst first.
    """
    p = report.primary
    if p is None:
        return []
    cands = []
    for row in report.layers:
        if p.name not in row.local:
            continue
        loc = row.local[p.name]
        acc = row.worst.get(p.name, row.values.get(p.name))
        e_loc = error_of(loc, p)
        if row.local.get(NEW_NONFINITE, 0) > 0:
            e_loc = math.inf  # the layer alone overflows: it causes, whatever the finite values say
        e_acc = error_of(acc, p)
        fails_local = p.threshold is not None and p.fails(loc, p.threshold)
        fails_local = fails_local or row.local.get(NEW_NONFINITE, 0) > 0
        fails_acc = row.failing
        explains = e_loc is not None and e_acc is not None and e_acc > 0 and e_loc >= CAUSE_SHARE * e_acc
        row.meta["local_share"] = (e_loc / e_acc) if (e_loc is not None and e_acc) else None
        if fails_local or (fails_acc and explains) or row.status == NONFINITE and explains:
            cands.append((e_loc if e_loc is not None else 0.0, row))
    cands.sort(key=lambda x: (-x[0], x[1].order))  # equal local error: the earlier layer first
    ranked = [r for _, r in cands[:top]]
    for i, r in enumerate(ranked, 1):
        r.culprit_rank = i
    if ranked:
        first = min(ranked, key=lambda r: r.order)
        report.summary["first_culprit"] = first.name
        report.summary["culprits"] = [r.name for r in ranked]
    return ranked


def trace_ranges(report: Report, fmt: str | None) -> None:
    """Compare each layer's reference range to the target format; name overflows and risky layers."""
    report.summary["target_format"] = fmt
    overflow: list[str] = []
    first_nonfinite = next((r.name for r in report.layers if r.meta.get("target_new_nonfinite", 0) > 0), None)
    for row in report.layers:
        ref = row.range.get("ref") if row.range else None
        if not ref:
            continue
        info: dict[str, Any] = {}
        if fmt in FORMATS:
            fmax = FORMATS[fmt]["max"]
            info["format_max"] = fmax
            info["headroom"] = fmax / ref["absmax"] if ref["absmax"] > 0 else math.inf
            if ref["absmax"] > fmax:
                info["risk"] = f"reference values reach {ref['absmax']:.4g} > {fmt} max {fmax:g}: overflows"
                overflow.append(row.name)
            elif ref["absmax"] > fmax / 8:
                info["risk"] = f"reference values reach {ref['absmax']:.4g}, within 8x of {fmt} max {fmax:g}"
        elif fmt == "int8":
            crest = ref["absmax"] / ref["rms"] if ref["rms"] > 0 else 0.0
            info["crest"] = crest
            info["int8_step"] = ref["absmax"] / 127.0
            if crest > INT8_CREST_RISK:
                info["risk"] = (f"outlier-heavy: absmax {ref['absmax']:.4g} is {crest:.0f}x the rms; "
                                f"a per-tensor int8 scale leaves most values a few levels")
        row.range.update(info)
    report.summary["overflow_layers"] = overflow
    report.summary["first_nonfinite"] = first_nonfinite

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
from parity.contract.report import LayerResult, Report
from parity.contract.metric import Metric, fails, score_pair

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
#: key under which local results carry their count of new NaN/Inf values
NEW_NONFINITE = "_new_nonfinite"


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


def error_of(value: float | None, metric: str, higher_is_better: bool) -> float | None:
    """An error that grows from 0 with the loss, for ranking: 1 - similarity, or the distance itself."""
    if value is None:
        return None
    if math.isnan(value):
        return math.inf
    if metric == "cosine":
        return max(0.0, 1.0 - value)
    if metric == "rel-diff":
        return max(0.0, 100.0 - value) / 100.0
    if metric == "sqnr":
        return 10 ** (-value / 10.0) if math.isfinite(value) else 0.0
    return value if not higher_is_better else -value


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
        e_loc = error_of(loc, p.name, p.higher_is_better)
        if row.local.get(NEW_NONFINITE, 0) > 0:
            e_loc = math.inf  # the layer alone overflows: it causes, whatever the finite values say
        e_acc = error_of(acc, p.name, p.higher_is_better)
        fails_local = p.threshold is not None and fails(loc, p.threshold, p.higher_is_better)
        fails_local = fails_local or row.local.get(NEW_NONFINITE, 0) > 0
        fails_acc = row.failing
        explains = e_loc is not None and e_acc is not None and e_acc > 0 and e_loc >= CAUSE_SHARE * e_acc
        row.meta["local_share"] = (e_loc / e_acc) if (e_loc is not None and e_acc) else None
        if fails_local or (fails_acc and explains) or row.status == "nonfinite" and explains:
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


def diagnosis_lines(report: Report) -> list[str]:
    """Plain-words verdict of the diagnosis, printed under the table."""
    out = []
    p = report.primary
    byname = {r.name: r for r in report.layers}
    fc = report.summary.get("first_culprit")
    if fc and p is not None:
        r = byname[fc]
        where = r.meta.get("ref_module_path") or r.meta.get("target_onnx_node") or r.target_name
        nf = int(r.local.get(NEW_NONFINITE, 0))
        alone = (f"produces {nf} NaN/Inf values" if nf else
                 f"reaches {p.name} {r.local.get(p.name, float('nan')):.6g}")
        out.append(f"Culprit: {r.name} ({r.op_type or r.target_op_type or 'layer'}; {where}) — run alone in the "
                   f"target it {alone}; it causes the loss, the layers after it inherit it.")
        others = [c for c in report.summary.get("culprits", []) if c != fc]
        if others:
            out.append("Other culprits by local error: " + ", ".join(others))
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

"""Report writers: terminal table, JSON (versioned schema), CSV.

The JSON schema is documented in docs/report-schema.md; bump ``SCHEMA_VERSION`` on any
change a consumer could notice.
"""
from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, TextIO

import numpy as np

from parity.contract.atomic import write_text
from parity.contract.report import FAILING, LayerResult, MetricInfo, Report

SCHEMA = "parity.core.report"
SCHEMA_VERSION = 2
SORTS = ("order", "worst")


def _fmt(v: float | None, info: MetricInfo) -> str:
    if v is None:
        return ""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if info.name == "nonfinite":
        return str(int(v))
    if info.percent:
        return f"{v:.4f}%"
    if info.name == "cosine":
        return f"{v:.7f}"
    return f"{v:.4g}"


def _badness(layer: LayerResult, info: MetricInfo) -> float:
    """Sort key: larger is worse. Unscored rows go last."""
    v = layer.worst.get(info.name, layer.values.get(info.name))
    if layer.status == "nonfinite":
        return math.inf
    if v is None:
        return -math.inf
    if math.isnan(v):
        return math.inf
    return -v if info.higher_is_better else v


def sorted_layers(report: Report, sort: str = "order") -> list[LayerResult]:
    if sort == "order":
        return list(report.layers)
    if sort == "worst":
        p = report.primary
        return sorted(report.layers, key=lambda l: _badness(l, p), reverse=True) if p else list(report.layers)
    raise ValueError(sort)


def render_table(report: Report, sort: str = "order", file: TextIO | None = None,
                 max_rows: int | None = None, width: int | None = None) -> None:
    """Print the per-layer table with the first diverging layer marked."""
    from rich.console import Console
    from rich.table import Table

    import sys

    out = file or sys.stdout
    # a terminal gets its own width; a pipe or file gets room for every column, not rich's 80
    console = Console(file=file, width=width or (None if out.isatty() else 220), highlight=False,
                      soft_wrap=False)
    first = report.first_divergent
    show_match = any(l.match not in ("exact",) for l in report.layers)
    show_nonfinite = any(l.ref_nan + l.ref_inf + l.target_nan + l.target_inf for l in report.layers)
    multi = any(l.n_inputs > 1 for l in report.layers)
    show_local = any(l.local for l in report.layers)
    show_range = any(l.range.get("risk") for l in report.layers)
    table = Table(title=f"{report.ref_label} vs {report.target_label}", title_justify="left",
                  show_lines=False, pad_edge=False)
    table.add_column("#", justify="right")
    table.add_column("LayerName", overflow="fold")
    table.add_column("LayerShape", justify="right")
    table.add_column("Op")
    for m in report.metrics:
        thr = "" if m.threshold is None else f" ({'≥' if m.higher_is_better else '≤'}{m.threshold:g}{'%' if m.percent else ''})"
        table.add_column(f"{m.name}{' mean' if multi else ''}{thr}", justify="right")
        if multi and m is report.primary:
            table.add_column(f"{m.name} worst", justify="right")
        if show_local and m is report.primary:
            table.add_column(f"local {m.name}", justify="right")
    if show_range:
        table.add_column("ref |max|", justify="right")
    if show_nonfinite:
        table.add_column("NaN/Inf ref|tgt", justify="right")
    if show_match:
        table.add_column("Matched", overflow="fold")
    table.add_column("")
    rows = sorted_layers(report, sort)
    for i, layer in enumerate(rows):
        if max_rows is not None and i >= max_rows:
            table.add_row("…", f"{len(rows) - max_rows} more rows (see JSON/CSV)")
            break
        name = layer.name if layer.target_name in (None, layer.ref_name) or layer.ref_name is None \
            else f"{layer.ref_name} ↔ {layer.target_name}"
        cells = [str(int(layer.order)) if layer.order == int(layer.order) else "", name,
                 str(list(layer.shape)) if layer.shape is not None else "",
                 layer.op_type or layer.target_op_type or ""]
        for m in report.metrics:
            cells.append(_fmt(layer.values.get(m.name), m))
            if multi and m is report.primary:
                cells.append(_fmt(layer.worst.get(m.name), m))
            if show_local and m is report.primary:
                loc = _fmt(layer.local.get(m.name), m)
                cells.append(loc + (" NaN/Inf" if layer.local.get("_new_nonfinite", 0) > 0 else ""))
        if show_range:
            ref = layer.range.get("ref") or {}
            risk = layer.range.get("risk", "")
            flag = " OVERFLOW" if "overflows" in risk else (" risk" if risk else "")
            cells.append(f"{ref['absmax']:.4g}{flag}" if ref else "")
        if show_nonfinite:
            cells.append(f"{layer.ref_nan + layer.ref_inf}|{layer.target_nan + layer.target_inf}")
        if show_match:
            fuzzy = layer.match in ("order+shape", "value")
            cells.append(f"{layer.match} ({layer.confidence:.2f})" if fuzzy else layer.match)
        marker = ""
        if layer.culprit_rank is not None:
            marker = f"◀ CULPRIT #{layer.culprit_rank}"
            if layer is first:
                marker += ", first divergence"
        elif layer is first:
            marker = "◀ first divergence"
        elif layer.status in FAILING:
            marker = "below" if layer.status == "below" else "NaN/Inf"
        elif layer.status != "ok":
            marker = layer.status
        style = "bold red" if layer is first else ("yellow" if layer.status in FAILING else None)
        table.add_row(*cells, marker, style=style)
    console.print(table)
    for line in summary_lines(report):
        console.print(line)


def summary_lines(report: Report) -> list[str]:
    """The verdict under the table, in plain words."""
    out: list[str] = []
    p = report.primary
    matched = report.matched
    out.append(f"{len(matched)} layers compared"
               + (f", {sum(1 for l in report.layers if l.status == 'ref-only')} only in {report.ref_label}"
                  f", {sum(1 for l in report.layers if l.status == 'target-only')} only in {report.target_label}"
                  if len(matched) != len(report.layers) else "")
               + (f", over {report.summary['inputs']} inputs" if report.summary.get("inputs", 1) > 1 else ""))
    first = report.first_divergent
    if p is None:
        return out
    if first is None:
        out.append(f"No layer fails {p.name} threshold {p.threshold:g}." if p.threshold is not None
                   else f"No threshold for {p.name}; pass --threshold to mark the first diverging layer.")
    elif first.status == "nonfinite":
        out.append(f"First divergence: {first.name} produces {first.meta.get('target_new_nonfinite', 0)} "
                   f"NaN/Inf values in {report.target_label} where {report.ref_label} is finite (overflow?).")
    else:
        v = first.worst.get(p.name, first.values.get(p.name))
        out.append(f"First divergence: {first.name} ({first.op_type or first.target_op_type or 'layer'}), "
                   f"{p.name} {_fmt(v, p)} {'<' if p.higher_is_better else '>'} {_fmt(p.threshold, p)}.")
    unmatched = [l for l in report.layers if l.status in ("ref-only", "target-only")]
    if unmatched:
        names = ", ".join(f"{l.name} ({l.status})" for l in unmatched[:8])
        out.append(f"Unmatched: {names}{' …' if len(unmatched) > 8 else ''}")
    for k, v in report.summary.items():
        if k in ("inputs", "model") or "_" in k or isinstance(v, (dict, list)):
            continue
        out.append(f"{k}: {v}")
    from parity.core.diagnose import diagnosis_lines

    return out + diagnosis_lines(report)


def _num(v: Any) -> Any:
    """JSON has no NaN/Inf: they are written as the strings "nan", "inf", "-inf"."""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    return v


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, float):
        return _num(obj)
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return str(obj)


def to_dict(report: Report) -> dict[str, Any]:
    first = report.first_divergent
    return _clean({
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "reference": report.ref_label,
        "target": report.target_label,
        "passed": bool(report),
        "first_divergent": first.name if first else None,
        "metrics": [m.__dict__ for m in report.metrics],
        "summary": report.summary,
        "layers": [{
            "order": l.order, "name": l.name, "ref_name": l.ref_name, "target_name": l.target_name,
            "ref_shape": list(l.ref_shape) if l.ref_shape is not None else None,
            "target_shape": list(l.target_shape) if l.target_shape is not None else None,
            "ref_dtype": l.ref_dtype, "target_dtype": l.target_dtype,
            "op_type": l.op_type, "target_op_type": l.target_op_type,
            "status": l.status, "match": l.match, "confidence": l.confidence,
            "values": l.values, "worst": l.worst, "worst_input": l.worst_input, "spread": l.spread,
            "n_inputs": l.n_inputs,
            "local": l.local, "range": l.range, "culprit_rank": l.culprit_rank,
            "nonfinite": {"ref_nan": l.ref_nan, "ref_inf": l.ref_inf,
                          "target_nan": l.target_nan, "target_inf": l.target_inf},
            "notes": l.notes, "meta": l.meta,
        } for l in report.layers],
    })


def write_json(report: Report, path: str) -> None:
    write_text(path, json.dumps(to_dict(report), indent=2, allow_nan=False) + "\n")


def csv_text(report: Report) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = [m.name for m in report.metrics]
    multi = any(l.n_inputs > 1 for l in report.layers)
    head = ["order", "name", "ref_name", "target_name", "shape", "ref_dtype", "target_dtype", "op_type",
            "status", "match", "confidence", *names]
    if multi:
        head += [f"{n}_worst" for n in names] + [f"{n}_worst_input" for n in names]
    local = any(l.local for l in report.layers)
    if local:
        head += [f"local_{n}" for n in names] + ["culprit_rank"]
    head += ["ref_absmax", "range_risk"]
    head += ["ref_nan", "ref_inf", "target_nan", "target_inf", "notes"]
    w.writerow(head)
    for l in report.layers:
        row: list[Any] = [l.order, l.name, l.ref_name or "", l.target_name or "",
                          "x".join(map(str, l.shape)) if l.shape is not None else "",
                          l.ref_dtype or "", l.target_dtype or "", l.op_type or l.target_op_type or "",
                          l.status, l.match, l.confidence]
        row += [_num(l.values[n]) if n in l.values else "" for n in names]
        if multi:
            row += [_num(l.worst[n]) if n in l.worst else "" for n in names]
            row += [l.worst_input.get(n, "") for n in names]
        if local:
            row += [_num(l.local[n]) if n in l.local else "" for n in names]
            row += [l.culprit_rank if l.culprit_rank is not None else ""]
        ref = l.range.get("ref") or {}
        row += [_num(ref["absmax"]) if ref else "", l.range.get("risk", "")]
        row += [l.ref_nan, l.ref_inf, l.target_nan, l.target_inf, "; ".join(l.notes)]
        w.writerow(row)
    return buf.getvalue()


def write_csv(report: Report, path: str) -> None:
    write_text(path, csv_text(report))



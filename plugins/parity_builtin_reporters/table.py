"""The table reporter: the per-layer table with the first divergence and culprits marked, then the verdict.

With the ``quiet`` option it prints only the verdict lines. Every value is printed by its metric
(:meth:`parity.contract.report.MetricInfo.format`), rows sorted worst-first by the metric's own error.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Mapping, TextIO

from parity.contract.report import (FAILING, NEW_NONFINITE, NONFINITE, LayerResult, MetricInfo, Report,
                                    summary_lines)
from parity.contract.reporter import Reporter

SORTS = ("order", "worst")


def _badness(layer: LayerResult, info: MetricInfo) -> float:
    """Sort key: larger is worse (the metric's own error). Unscored rows go last."""
    v = layer.worst.get(info.name, layer.values.get(info.name))
    if layer.status == NONFINITE:
        return math.inf
    if v is None:
        return -math.inf
    return info.error(v)


def sorted_layers(report: Report, sort: str = "order") -> list[LayerResult]:
    if sort == "order":
        return list(report.layers)
    if sort == "worst":
        p = report.primary
        return sorted(report.layers, key=lambda l: _badness(l, p), reverse=True) if p else list(report.layers)
    raise ValueError(sort)


def render_table(report: Report, sort: str = "order", file: TextIO | None = None,
                 max_rows: int | None = None, width: int | None = None) -> None:
    """Print the per-layer table with the first diverging layer marked, then the verdict lines."""
    from rich.console import Console
    from rich.table import Table

    out = file or sys.stdout
    # a terminal gets its own width; a pipe or file gets room for every column, not rich's 80
    console = Console(file=out, width=width or (None if out.isatty() else 220), highlight=False,
                      soft_wrap=False)
    first = report.first_divergent
    show_match = any(l.match not in ("exact",) for l in report.layers)
    show_nonfinite = any(l.ref_nan + l.ref_inf + l.target_nan + l.target_inf for l in report.layers)
    multi = any(l.n_inputs > 1 for l in report.layers)
    show_failing = multi and any(l.meta.get("failing_inputs") for l in report.layers)
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
            table.add_column(f"{m.name} q90", justify="right")  # 90% of inputs are at least this good
            table.add_column(f"{m.name} worst", justify="right")
            if show_failing:
                table.add_column("inputs failing", justify="right")
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
            cells.append(m.format(layer.values.get(m.name)))
            if multi and m is report.primary:
                cells.append(m.format(layer.quantiles.get(m.name, {}).get("q90")))
                cells.append(m.format(layer.worst.get(m.name)))
                if show_failing:
                    k = layer.meta.get("failing_inputs")
                    cells.append(f"{k}/{layer.n_inputs}" if k else "")
            if show_local and m is report.primary:
                loc = m.format(layer.local.get(m.name))
                cells.append(loc + (" NaN/Inf" if layer.local.get(NEW_NONFINITE, 0) > 0 else ""))
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
        elif layer.caused_by is not None:
            # a consequence: grouped under its culprit (the report's one ordering), never ranked itself
            ranked = report.summary.get("culprits") or []
            marker = (f"↳ of #{ranked.index(layer.caused_by) + 1} {layer.caused_by}" if layer.caused_by in ranked
                      else f"↳ of {layer.caused_by}") + (", first divergence" if layer is first else "")
        elif layer is first:
            marker = "◀ first divergence"
        elif layer.status in FAILING:
            marker = "below" if layer.status != NONFINITE else "NaN/Inf"
        elif layer.status != "ok":
            marker = layer.status
        style = "bold red" if layer is first else ("yellow" if layer.status in FAILING else None)
        table.add_row(*cells, marker, style=style)
    console.print(table)
    for line in summary_lines(report):
        console.print(line)


class TableReporter(Reporter):
    name = "table"
    description = "per-layer table, first divergence and culprits marked, and the verdict (terminal)"
    extension = ".txt"

    def write(self, report: Report, out: TextIO, options: Mapping[str, Any]) -> None:
        if options.get("quiet"):
            for line in summary_lines(report):
                print(line, file=out)
            return
        sort = options.get("sort") or "order"
        if sort not in SORTS:
            from parity.contract.errors import UsageError

            raise UsageError(f"table: unknown sort {sort!r}. Note: valid: {', '.join(SORTS)}.")
        render_table(report, sort=sort, file=out, max_rows=options.get("max_rows"), width=options.get("width"))

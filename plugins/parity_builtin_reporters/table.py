"""The table reporter: the per-layer table with the first divergence and culprits marked, then the verdict.

With the ``quiet`` option it prints only the verdict lines. Every value is printed by its metric
(:meth:`parity.contract.report.MetricInfo.format`), rows sorted worst-first by the metric's own error.

Why the width logic (docs/reports.md, "The terminal table"): a number cut to ``0.9…`` or a word
folded to ``prove/nance`` is worse than no column at all. So no cell but a layer name is ever
shortened: each column is as wide as its widest value (headers wrap at spaces), and when the
terminal is too narrow, secondary columns are dropped by priority, and a line under the table names
them and says how to see them (``--columns``, or the JSON/HTML report).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, TextIO

from rich.cells import cell_len

from parity.contract.report import (FAILING, NEW_NONFINITE, NONFINITE, LayerResult, MetricInfo, Report, made_nonfinite,
                                    summary_lines)
from parity.contract.reporter import Reporter

SORTS = ("order", "worst")
#: the width a file or pipe gets at least (room for every column; a terminal gets its own width)
FILE_WIDTH = 220
#: a layer name keeps at least this many characters (or a quarter of the width) before secondary
#: columns are dropped for it: a name broken over lines reads worse than a missing secondary column
NAME_MIN = 20


def _badness(layer: LayerResult, info: MetricInfo) -> float:
    """Sort key: larger is worse (the metric's own error). Unscored rows go last."""
    v = layer.worst.get(info.name, layer.values.get(info.name))
    if made_nonfinite(layer):
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


def order_label(layer: LayerResult) -> str:
    """The ``#`` column (the HTML page's too): the execution order, blank for a row between two others."""
    return str(int(layer.order)) if layer.order == int(layer.order) else ""


@dataclass
class Col:
    """One table column. ``drop``: the order in which columns go when the width is short (higher goes
    first; 0 never goes). ``kind``: ``whole`` cells (numbers, shapes, ops) are never wrapped, ``words``
    wrap at spaces only, ``name`` may fold a long name (the only cell that is ever broken). Widths are
    terminal cells (``rich.cells.cell_len``: a wide character counts two)."""

    key: str
    header: str
    drop: int = 0
    kind: str = "whole"
    justify: str = "right"
    cells: list[str] = field(default_factory=list)

    def _header_min(self) -> int:
        return max((cell_len(w) for w in self.header.split()), default=0)

    def minimum(self, width: int = 0) -> int:
        if self.kind == "name":
            return min(self.natural(), max(NAME_MIN, width // 4))
        if self.kind == "words":
            return max([self._header_min()] + [cell_len(w) for c in self.cells for w in c.split()])
        return max([self._header_min()] + [cell_len(c) for c in self.cells])

    def natural(self) -> int:
        return max([cell_len(self.header)] + [cell_len(c) for c in self.cells])


def _overhead(n: int) -> int:
    """Characters a table of ``n`` columns spends beside its cells: a border per column and one more,
    one space of padding either side."""
    return 3 * n + 1


def table_width(cols: Sequence[Col], widths: Sequence[int]) -> int:
    return sum(widths) + _overhead(len(cols))


def fit(cols: list[Col], width: int, chosen: Sequence[str] | None = None) -> tuple[list[Col], list[int], list[Col]]:
    """The columns to show within ``width`` and their widths, and the columns hidden.

    ``chosen`` (``--columns``) names the columns to show besides the ones always shown, or ``all``;
    then nothing is dropped and the table may be wider than ``width`` (numbers are never cut).
    """
    least = {c.key: c.minimum(width) for c in cols}  # each scans every cell: once, not per dropped column
    if chosen is not None:
        keep = [c for c in cols if c.drop == 0 or "all" in chosen or c.key in chosen]
        hidden = [c for c in cols if c not in keep]
    else:
        keep = list(cols)
        hidden = []
        while sum(least[c.key] for c in keep) + _overhead(len(keep)) > width:
            droppable = [c for c in keep if c.drop]
            if not droppable:
                break
            worst = max(droppable, key=lambda c: c.drop)
            keep.remove(worst)
            hidden.append(worst)
        hidden.sort(key=lambda c: cols.index(c))
    widths = [least[c.key] for c in keep]
    if table_width(keep, widths) > width:  # chosen columns, or nothing left to drop: the name gives way first
        widths = [min(c.natural(), NAME_MIN) if c.kind == "name" else w for c, w in zip(keep, widths)]
    room = width - table_width(keep, widths)
    # spare room: first the layer name, then the marker's words, then headers kept on one line
    for kind in ("name", "words", "whole"):
        for i, c in enumerate(keep):
            if room > 0 and c.kind == kind:
                add = min(room, c.natural() - widths[i])
                widths[i] += add
                room -= add
    return keep, widths, hidden


def columns(report: Report, rows: Sequence[LayerResult], max_rows: int | None = None) -> list[Col]:
    """Every column this report can show, with its cells (the rows already sorted)."""
    first = report.first_divergent
    p = report.primary
    show_match = any(l.match not in ("exact",) for l in report.layers)
    show_nonfinite = any(l.ref_nan + l.ref_inf + l.target_nan + l.target_inf for l in report.layers)
    multi = any(l.n_inputs > 1 for l in report.layers)
    show_failing = multi and any(l.meta.get("failing_inputs") for l in report.layers)
    show_local = any(l.local for l in report.layers)
    show_range = any(l.range.get("risk") for l in report.layers)
    shown = rows if max_rows is None else rows[:max_rows]

    cols = [Col("#", "#"), Col("layer", "layer", kind="name", justify="left"),
            Col("shape", "shape", drop=80), Col("op", "op", drop=50, justify="left")]
    for k, m in enumerate(report.metrics):
        thr = "" if m.threshold is None else f" ({'≥' if m.higher_is_better else '≤'}{m.threshold:.10g}{'%' if m.percent else ''})"
        primary = m is p
        # the primary metric stays; in a multi-input table, its worst value over inputs is the one kept last
        cols.append(Col(m.name, f"{m.name}{' mean' if multi else ''}{thr}",
                        drop=(40 if multi else 0) if primary else 90 + k))
        if multi and primary:
            cols.append(Col(f"{m.name}-q90", f"{m.name} q90", drop=75))  # 90% of inputs are at least this good
            cols.append(Col(f"{m.name}-worst", f"{m.name} worst"))
            if show_failing:
                cols.append(Col("failing", "inputs failing", drop=35))
        if show_local and primary:
            cols.append(Col("local", f"local {m.name}", drop=30))
    if show_range:
        cols.append(Col("absmax", "ref |max|", drop=45))
    if show_nonfinite:
        cols.append(Col("naninf", "NaN/Inf ref|tgt", drop=20))
    if show_match:
        cols.append(Col("matched", "matched", drop=100, justify="left"))
    cols.append(Col("", "", kind="words", justify="left"))
    by = {c.key: c for c in cols}

    for layer in shown:
        name = layer.name if layer.target_name in (None, layer.ref_name) or layer.ref_name is None \
            else f"{layer.ref_name} ↔ {layer.target_name}"
        by["#"].cells.append(order_label(layer))
        by["layer"].cells.append(name)
        by["shape"].cells.append("x".join(map(str, layer.shape)) if layer.shape is not None else "")
        by["op"].cells.append(layer.op_type or layer.target_op_type or "")
        for m in report.metrics:
            by[m.name].cells.append(m.format(layer.values.get(m.name)))
            if multi and m is p:
                by[f"{m.name}-q90"].cells.append(m.format(layer.quantiles.get(m.name, {}).get("q90")))
                by[f"{m.name}-worst"].cells.append(m.format(layer.worst.get(m.name)))
                if show_failing:
                    k = layer.meta.get("failing_inputs")
                    by["failing"].cells.append(f"{k}/{layer.n_inputs}" if k else "")
            if show_local and m is p:
                loc = m.format(layer.local.get(m.name))
                by["local"].cells.append(loc + (" NaN/Inf" if layer.local.get(NEW_NONFINITE, 0) > 0 else ""))
        if show_range:
            ref = layer.range.get("ref") or {}
            risk = layer.range.get("risk", "")
            flag = " OVERFLOW" if "overflows" in risk else (" risk" if risk else "")
            by["absmax"].cells.append(f"{ref['absmax']:.4g}{flag}" if ref else "")
        if show_nonfinite:
            by["naninf"].cells.append(f"{layer.ref_nan + layer.ref_inf}|{layer.target_nan + layer.target_inf}")
        if show_match:
            fuzzy = layer.match in ("order+shape", "value")
            by["matched"].cells.append(f"{layer.match} ({layer.confidence:.2f})" if fuzzy else layer.match)
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
        by[""].cells.append(marker)
    return cols


def column_keys(report: Report) -> list[str]:
    """The names ``--columns`` accepts for this report (the columns it can show)."""
    return [c.key for c in columns(report, []) if c.key]


#: column names that do not depend on the metrics (some appear only with --diagnose, several inputs ...)
STATIC_COLUMNS = ("#", "layer", "shape", "op", "local", "absmax", "naninf", "matched", "failing")


def known_columns(metrics: Sequence[str]) -> list[str]:
    """Every name ``--columns`` can take for a report with these metrics, present in it or not."""
    return [*STATIC_COLUMNS, *metrics, *(f"{m}-{k}" for m in metrics[:1] for k in ("q90", "worst"))]


def check_columns(spec: Any, metrics: Sequence[str]) -> list[str] | None:
    """``--columns a,b`` as a list of column keys (``all``: every column); a name no report with these
    metrics can have is a :class:`~parity.contract.errors.UsageError` listing the names."""
    if spec is None or spec == "":
        return None
    keys = [k.strip() for k in (spec.split(",") if isinstance(spec, str) else spec) if k.strip()]
    valid = known_columns(metrics)
    bad = [k for k in keys if k != "all" and k not in valid]
    if bad:
        from parity.contract.errors import UsageError

        raise UsageError(f"--columns: no column {', '.join(map(repr, bad))}. Note: valid: all, "
                         f"{', '.join(valid[2:])} (some only with --diagnose or several inputs).")
    return keys


def render_table(report: Report, sort: str = "order", file: TextIO | None = None,
                 max_rows: int | None = None, width: int | None = None, columns_shown: Any = None) -> None:
    """Print the per-layer table with the first diverging layer marked, then the verdict lines.

    ``width``: the width to fit (default: the terminal's; a file or pipe gets every column).
    ``columns_shown``: ``--columns`` (a comma list or a sequence of column keys, or ``all``).
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    out = file or sys.stdout
    rows = sorted_layers(report, sort)
    cols = columns(report, rows, max_rows)
    # a known name this report has no column for (local without --diagnose) shows nothing
    chosen = check_columns(columns_shown, [m.name for m in report.metrics])
    if width is None:
        width = Console(file=out).width if out.isatty() else \
            max(FILE_WIDTH, table_width(cols, [c.natural() for c in cols]))
    keep, widths, hidden = fit(cols, width, chosen)
    console = Console(file=out, width=max(width, table_width(keep, widths)), highlight=False, soft_wrap=False)
    first = report.first_divergent
    table = Table(title=f"{report.ref_label} vs {report.target_label}", title_justify="left",
                  show_lines=False, box=box.HEAVY_HEAD)
    for c, w in zip(keep, widths):
        # every cell fits its width by construction (fit): only a layer name longer than its column folds
        table.add_column(c.header, justify=c.justify, width=w, overflow="fold")
    for i, layer in enumerate(rows if max_rows is None else rows[:max_rows]):
        style = "bold red" if layer is first else ("yellow" if layer.status in FAILING else None)
        table.add_row(*(c.cells[i] for c in keep), style=style)
    if max_rows is not None and len(rows) > max_rows:
        table.add_row(*("…" if c.key == "#" else f"{len(rows) - max_rows} more rows (see JSON/CSV)"
                        if c.key == "layer" else "" for c in keep))
    console.print(table)
    if hidden and chosen is None:
        console.print(f"Hidden to fit {width} columns: {', '.join(c.key for c in hidden)}. Show them with "
                      f"--columns NAME,... (or --columns all), or see the JSON/HTML report.")
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
        render_table(report, sort=sort, file=out, max_rows=options.get("max_rows"), width=options.get("width"),
                     columns_shown=options.get("columns"))

    def check_options(self, options: Mapping[str, Any], metrics: Sequence[str]) -> None:
        check_columns(options.get("columns"), metrics)

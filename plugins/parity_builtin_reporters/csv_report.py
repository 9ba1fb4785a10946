"""The CSV reporter: one row per layer, one column per metric (spreadsheets, pandas)."""
from __future__ import annotations

import csv
import io
from typing import Any, Mapping, Sequence, TextIO

from parity.contract.report import Report
from parity.contract.reporter import Reporter

from .json_report import number as _num


def csv_table(report: Report) -> tuple[list[str], list[list[Any]]]:
    """The CSV's header and rows (one per layer)."""
    names = [m.name for m in report.metrics]
    multi = any(l.n_inputs > 1 for l in report.layers)
    head = ["order", "name", "ref_name", "target_name", "shape", "ref_dtype", "target_dtype", "op_type",
            "status", "match", "confidence", *names]
    if multi:
        head += [f"{n}_worst" for n in names] + [f"{n}_worst_input" for n in names]
        head += [f"{n}_q90" for n in names] + [f"{n}_pooled" for n in names] + ["failing_inputs"]
    local = any(l.local for l in report.layers)
    if local:
        head += [f"local_{n}" for n in names] + ["culprit_rank", "caused_by"]
    head += ["ref_absmax", "range_risk"]
    head += ["ref_nan", "ref_inf", "target_nan", "target_inf", "notes"]
    rows = []
    for l in report.layers:
        row: list[Any] = [l.order, l.name, l.ref_name or "", l.target_name or "",
                          "x".join(map(str, l.shape)) if l.shape is not None else "",
                          l.ref_dtype or "", l.target_dtype or "", l.op_type or l.target_op_type or "",
                          l.status, l.match, l.confidence]
        row += [_num(l.values[n]) if n in l.values else "" for n in names]
        if multi:
            row += [_num(l.worst[n]) if n in l.worst else "" for n in names]
            row += [l.worst_input.get(n, "") for n in names]
            row += [_num(l.quantiles[n]["q90"]) if n in l.quantiles else "" for n in names]
            row += [_num(l.pooled[n]) if n in l.pooled else "" for n in names]
            row += [l.meta.get("failing_inputs", "")]
        if local:
            row += [_num(l.local[n]) if n in l.local else "" for n in names]
            row += [l.culprit_rank if l.culprit_rank is not None else "", l.caused_by or ""]
        ref = l.range.get("ref") or {}
        row += [_num(ref["absmax"]) if ref else "", l.range.get("risk", "")]
        row += [l.ref_nan, l.ref_inf, l.target_nan, l.target_inf, "; ".join(l.notes)]
        rows.append(row)
    return head, rows


def csv_text(report: Report) -> str:
    head, rows = csv_table(report)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    w.writerows(rows)
    return buf.getvalue()


class CsvReporter(Reporter):
    name = "csv"
    description = "one row per layer, one column per metric (and worst/local columns when present)"
    extension = ".csv"

    def write(self, report: Report, out: TextIO, options: Mapping[str, Any]) -> None:
        out.write(csv_text(report))

    def write_many(self, reports: Sequence[Report], out: TextIO, options: Mapping[str, Any]) -> None:
        """Several targets on standard output: one table with a leading ``target`` column and the
        union of the reports' columns (two header lines would not be one CSV table)."""
        tables = [csv_table(r) for r in reports]
        head = ["target"]
        for names, _ in tables:
            head += [name for name in names if name not in head]
        w = csv.DictWriter(out, head, lineterminator="\n", restval="")
        w.writeheader()
        for r, (names, rows) in zip(reports, tables):
            for row in rows:
                w.writerow({"target": r.target_label, **dict(zip(names, row))})

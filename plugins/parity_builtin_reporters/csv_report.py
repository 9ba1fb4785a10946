"""The CSV reporter: one row per layer, one column per metric (spreadsheets, pandas)."""
from __future__ import annotations

import csv
import io
from typing import Any, Mapping, Sequence, TextIO

from parity.contract.report import Report
from parity.contract.reporter import Reporter

from .json_report import number as _num


def csv_text(report: Report) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
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
            row += [_num(l.quantiles[n]["q90"]) if n in l.quantiles else "" for n in names]
            row += [_num(l.pooled[n]) if n in l.pooled else "" for n in names]
            row += [l.meta.get("failing_inputs", "")]
        if local:
            row += [_num(l.local[n]) if n in l.local else "" for n in names]
            row += [l.culprit_rank if l.culprit_rank is not None else "", l.caused_by or ""]
        ref = l.range.get("ref") or {}
        row += [_num(ref["absmax"]) if ref else "", l.range.get("risk", "")]
        row += [l.ref_nan, l.ref_inf, l.target_nan, l.target_inf, "; ".join(l.notes)]
        w.writerow(row)
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
        texts = [csv_text(r) for r in reports]
        tables = [list(csv.DictReader(io.StringIO(t))) for t in texts]
        head = ["target"]
        for t in texts:
            head += [name for name in next(csv.reader(io.StringIO(t))) if name not in head]
        w = csv.DictWriter(out, head, lineterminator="\n", restval="")
        w.writeheader()
        for r, rows in zip(reports, tables):
            for row in rows:
                w.writerow({"target": r.target_label, **row})

"""The JSON reporter: the whole report as one strict JSON document (versioned schema).

The schema is documented in docs/report-schema.md; bump ``SCHEMA_VERSION`` on any change a
consumer could notice.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence, TextIO

import numpy as np

from parity.contract.report import Report
from parity.contract.reporter import Reporter

#: the schema identifier of the JSON report (unchanged since schema version 1)
SCHEMA = "parity.report"
SCHEMA_VERSION = 4


def number(v: Any) -> Any:
    """JSON has no NaN/Inf: they are written as the strings "nan", "inf", "-inf" (the CSV report too)."""
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
        return number(obj)
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return str(obj)


def to_dict(report: Report) -> dict[str, Any]:
    """The report as the JSON document's object (NaN/Inf already spelled as strings)."""
    first = report.first_divergent
    return _clean({
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "reference": report.ref_label,
        "target": report.target_label,
        "passed": bool(report),
        "first_divergent": first.name if first else None,
        "metrics": [m.schema() for m in report.metrics],
        "summary": report.summary,
        "layers": [{
            "order": l.order, "name": l.name, "ref_name": l.ref_name, "target_name": l.target_name,
            "ref_shape": list(l.ref_shape) if l.ref_shape is not None else None,
            "target_shape": list(l.target_shape) if l.target_shape is not None else None,
            "ref_dtype": l.ref_dtype, "target_dtype": l.target_dtype,
            "op_type": l.op_type, "target_op_type": l.target_op_type,
            "status": l.status, "match": l.match, "confidence": l.confidence,
            "values": l.values, "worst": l.worst, "worst_input": l.worst_input, "spread": l.spread,
            "n_inputs": l.n_inputs, "pooled": l.pooled, "quantiles": l.quantiles, "worst_inputs": l.worst_inputs,
            "local": l.local, "range": l.range, "culprit_rank": l.culprit_rank, "caused_by": l.caused_by,
            "nonfinite": {"ref_nan": l.ref_nan, "ref_inf": l.ref_inf,
                          "target_nan": l.target_nan, "target_inf": l.target_inf},
            "notes": l.notes, "meta": l.meta,
        } for l in report.layers],
    })


def json_text(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2, allow_nan=False) + "\n"


class JsonReporter(Reporter):
    name = "json"
    description = "the whole report as strict JSON, versioned schema (docs/report-schema.md)"
    extension = ".json"

    def write(self, report: Report, out: TextIO, options: Mapping[str, Any]) -> None:
        out.write(json_text(report))

    def write_many(self, reports: Sequence[Report], out: TextIO, options: Mapping[str, Any]) -> None:
        """Several targets on standard output: one JSON list of report documents, in the targets' order
        (two documents one after the other would not be JSON)."""
        out.write(json.dumps([to_dict(r) for r in reports], indent=2, allow_nan=False) + "\n")

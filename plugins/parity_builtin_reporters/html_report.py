"""The HTML reporter: one self-contained page per report, to open offline and to attach to a ticket.

Why this shape (docs/reports.md): the page carries the report as one compact JSON block and a small
hand-written renderer (``html_assets``) that draws the plots as SVG and builds the sortable,
filterable table in the browser. No third-party script and no CDN, so it opens without a network;
the data is written once and every plot and the table read it, so a 1,000-layer report stays a few
hundred kilobytes (``benchmarks/html_size.py``). Values are formatted here by their metric (a metric
owns its spelling) and carried raw beside for sorting; errors for the log-scale plots come from the
metric's own :meth:`~parity.contract.report.MetricInfo.error`.
"""
from __future__ import annotations

import html
import json
import math
from typing import Any, Mapping, TextIO

from parity.contract.report import (FAILING, NEW_NONFINITE, LayerResult, MetricInfo, Report, made_nonfinite,
                                    summary_lines)
from parity.contract.reporter import Reporter

from .html_assets import CSS, JS
from .json_report import _clean, number
from .table import order_label

#: at most this many layers carry their error-vs-magnitude histogram into the page
MAX_HISTOGRAMS = 12
#: the rounding unit (half an ulp, relative) of the float formats the magnitude plot draws a guide for
ROUNDING = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}


def _num(v: Any) -> Any:
    """A float as JSON takes it: NaN/Inf spelled as strings (as in the JSON report), others at 9 digits."""
    if isinstance(v, float) and math.isfinite(v):
        return float(f"{v:.9g}")
    return number(v)


def _error(p: MetricInfo, v: float | None) -> Any:
    return None if v is None else _num(float(p.error(v)))


def _depth_errors(p: MetricInfo | None, l: LayerResult) -> tuple[Any, Any]:
    """The accumulated and local error the depth plot draws: infinite where the layer has new NaN/Inf.

    Why: a metric of a tensor holding Inf is computed on its finite part (cosine ~1 - 1e-7 at an
    overflowing Linear); plotted as such, the layer that broke the run would sit at the bottom.
    """
    if p is None:
        return None, None
    acc = _error(p, l.worst.get(p.name, l.values.get(p.name)))
    if acc is not None and made_nonfinite(l):
        acc = "inf"
    loc = _error(p, l.local.get(p.name)) if p.name in l.local else None
    if loc is not None and made_nonfinite(l, local=True):
        loc = "inf"
    return acc, loc


def _histogram_rows(report: Report) -> list[LayerResult]:
    """Layers whose error-vs-magnitude picture the page embeds: culprits first, then what explains the loss."""
    p = report.primary
    byname = {r.name: r for r in report.layers}
    names: list[str] = list(report.summary.get("culprits") or [])
    fd = report.first_divergent
    names += [fd.name] if fd else []
    names += [report.summary.get("first_nonfinite") or ""] + list(report.summary.get("overflow_layers") or [])[:4]
    if p is not None:  # the worst layers by the primary metric's own error, so a passing run has a picture too
        scored = [r for r in report.layers if p.name in r.values]
        scored.sort(key=lambda r: (-float(p.error(r.worst.get(p.name, r.values[p.name]))), r.order))
        names += [r.name for r in scored[:3]]
    out: list[LayerResult] = []
    for n in names:
        r = byname.get(n)
        if r is not None and r not in out and (r.range or {}).get("error_vs_magnitude"):
            out.append(r)
    return out[:MAX_HISTOGRAMS]


def page_data(report: Report) -> dict[str, Any]:
    """Everything the page shows, as one JSON-ready object (no arrays of the model, only the report)."""
    p = report.primary
    metrics = report.metrics
    multi = any(l.n_inputs > 1 for l in report.layers)
    rows = []
    for i, l in enumerate(report.layers):
        # several inputs: the worst value over inputs, the one the status is judged by
        shown = [l.worst.get(m.name, l.values.get(m.name)) if multi else l.values.get(m.name) for m in metrics]
        vals = [[_num(v), m.format(v)] for m, v in zip(metrics, shown)]
        ref = (l.range or {}).get("ref") or {}
        acc, loc = _depth_errors(p, l)
        rows.append({
            "i": i, "order": _num(l.order), "name": l.name,
            "num": order_label(l),  # the # column as the terminal table writes it
            "pair": "" if l.target_name in (None, l.ref_name) or l.ref_name is None else f"{l.ref_name} ↔ {l.target_name}",
            "op": l.op_type or l.target_op_type or "", "shape": "x".join(map(str, l.shape)) if l.shape else "",
            "status": l.status, "failing": l.status in FAILING, "culprit": l.culprit_rank, "cb": l.caused_by,
            "v": vals,
            "acc": acc, "loc": loc,
            "locv": _num(l.local[p.name]) if p and p.name in l.local else None,
            "locf": p.format(l.local[p.name]) if p and p.name in l.local else "",
            "newnf": int(l.local.get(NEW_NONFINITE, 0)),
            "absmax": _num(ref.get("absmax")) if ref else None, "rms": _num(ref.get("rms")) if ref else None,
            "tabsmax": _num(((l.range or {}).get("target") or {}).get("absmax")) if (l.range or {}).get("target") else None,
            "risk": (l.range or {}).get("risk", ""),
            "nf": l.target_nan + l.target_inf, "notes": "; ".join(l.notes),
        })
    fmt = report.summary.get("target_format")
    fmax = next((l.range["format_max"] for l in report.layers if (l.range or {}).get("format_max")), None)
    first = report.first_divergent
    return {
        "ref": report.ref_label, "target": report.target_label, "passed": bool(report),
        "first": first.name if first else None,
        "metrics": [{"name": m.name, "hib": m.higher_is_better, "thr": _num(m.threshold),
                     "thrf": "" if m.threshold is None else m.format(m.threshold),
                     "thre": _error(m, m.threshold)} for m in metrics],
        "multi": multi,
        "verdict": summary_lines(report),
        "culprits": list(report.summary.get("culprits") or []),
        "cause": report.summary.get("first_culprit_cause"),
        "fix": report.summary.get("fix"),
        "diagnosed": any(l.local for l in report.layers) or any(l.range for l in report.layers),
        "format": fmt, "format_max": _num(fmax), "rounding": ROUNDING.get(fmt or ""),
        "rows": rows,
        "hist": {r.name: r.range["error_vs_magnitude"] for r in _histogram_rows(report)},
    }


def _json_for_script(obj: Any) -> str:
    """JSON that cannot end its <script> element early (no '</' and no HTML comment openers)."""
    # NaN/Inf anywhere (a fix's baseline of nan) spelled as in the JSON report
    text = json.dumps(_clean(obj), separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def html_text(report: Report) -> str:
    title = f"parity: {report.ref_label} vs {report.target_label}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        # nothing may be fetched: the page is the whole report, and opens offline
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>"
        f"<noscript>This report draws its plots and table with JavaScript; the data is in the "
        f"element #parity-data.</noscript><div id=\"app\"></div>\n"
        f"<script type=\"application/json\" id=\"parity-data\">{_json_for_script(page_data(report))}</script>\n"
        f"<script>{JS}</script>\n</body></html>\n")


class HtmlReporter(Reporter):
    name = "html"
    description = "one self-contained HTML page: verdict, plots along depth, error vs magnitude, sortable table"
    extension = ".html"

    def write(self, report: Report, out: TextIO, options: Mapping[str, Any]) -> None:
        out.write(html_text(report))

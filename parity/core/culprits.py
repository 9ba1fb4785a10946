"""Culprits: one ranked list of the layers that cause the loss, each with the rows that only carry it.

Why a module of its own: every reporter and the API read one ordering (``culprit_rank``,
``caused_by``, ``summary["culprits"]`` / ``["culprit_groups"]``), and that ordering has rules of
its own beyond scoring a layer: a layer's *fault* (local error, an overflow a consumer feels) makes
it a candidate, and the *mechanism* by which a second row shows the same fault (it reads an
infinity the first one wrote, it is the module containing it, it is the same tensor, it reads the
values through the same destroyed quantizer) makes that row a consequence, grouped under its cause
and never ranked. docs/diagnosis.md, section "Culprits", states the rules.
"""
from __future__ import annotations

import bisect
import math

from parity.contract.report import BELOW, NEW_NONFINITE, NONFINITE, LayerResult, MetricInfo, Report
from parity.core.causes import (CAUSE_SHARE, FORMATS, MASKED, NEGLIGIBLE_SHARE, SATURATED, SENTINEL_GAP,
                                error_of)

__all__ = ["find_culprits"]


def _order(row: LayerResult) -> float:
    return row.order


def _matches(row: LayerResult, p: MetricInfo) -> bool:
    """Whether a layer's output agrees with the reference: end to end where it was compared, else alone."""
    if row.meta.get("target_new_nonfinite", 0) > 0 or row.local.get(NEW_NONFINITE, 0) > 0:
        return False
    v = row.worst.get(p.name, row.values.get(p.name))
    if v is None:
        v = row.local.get(p.name)
    return v is not None and p.threshold is not None and not p.fails(v, p.threshold)


def _consumers(row: LayerResult, by_target: dict[str, list[LayerResult]]) -> list[LayerResult]:
    """The rows reading ``row``'s tensor (``local_consumers``, from the source's graph); without that
    knowledge, the next layer in execution order stands in for them."""
    names = row.meta.get("local_consumers")
    if names:
        return [r for n in names for r in by_target.get(n, [])]
    seq = by_target.get("\0order", [])
    i = bisect.bisect_right(seq, row.order, key=_order)
    return seq[i:i + 1]


def _producers(row: LayerResult, by_target: dict[str, list[LayerResult]],
               readers: dict[str, list[LayerResult]] | None) -> list[LayerResult]:
    """The rows whose tensor ``row`` reads: the inverse of ``local_consumers`` when the source gives
    the graph (``readers``), else the previous layer in execution order."""
    if readers is not None:
        return list(readers.get(row.target_name or "", []))
    seq = by_target.get("\0order", [])
    i = bisect.bisect_left(seq, row.order, key=_order)
    return seq[i - 1:i] if i else []


def _beyond_format(row: LayerResult, fmax: float | None) -> bool:
    """The reference value of ``row`` lies beyond the target format: in the target it is an infinity."""
    if row.local.get(SATURATED, 0) > 0:
        return True
    absmax = (row.range.get("ref") or {}).get("absmax") if row.range else None
    return fmax is not None and absmax is not None and absmax > fmax


def _saturation_harmless(row: LayerResult, by_target: dict[str, list[LayerResult]], p: MetricInfo,
                         fmax: float | None = None) -> bool:
    """Saturation to the same-signed infinity is harmless when every consumer's output still matches.

    A consumer that passes the out-of-range value on (its own reference is beyond the format too: a
    ReLU, a Reshape, a residual Add) matches trivially on its finite part, so its own consumers are
    asked in turn, until a layer brings the value back into range (a softmax over a mask) or fails.
    """
    seen, todo = {id(row)}, [row]
    while todo:
        rows = _consumers(todo.pop(), by_target)
        if not rows:
            return False
        for r in rows:
            if not _matches(r, p):
                return False
            if id(r) not in seen and _beyond_format(r, fmax):
                seen.add(id(r))
                todo.append(r)
    return True


def _fault_is_nonfinite(row: LayerResult) -> bool:
    """The layer alone gives NaN/Inf that matters (new NaN/Inf, or a saturation a consumer feels)."""
    return row.local.get(NEW_NONFINITE, 0) > 0 or bool(row.meta.get("overflow"))


def _contains(outer: LayerResult, inner: LayerResult) -> bool:
    """``outer`` is a module whose call contains ``inner``'s layer (or node: target-only rows name
    the module their node sits in), so its output carries ``inner``'s error."""
    path = outer.meta.get("ref_module_path")
    if not path or outer is inner:
        return False
    sub = inner.meta.get("ref_module_path") or inner.meta.get("module")
    return bool(sub) and (sub == path and inner.meta.get("ref_module_path") is None or sub.startswith(path + "."))


def _consequence(row: LayerResult, earlier: list[LayerResult], by_name: dict[str, LayerResult],
                 producers: list[LayerResult], fmax: float | None, fmt: str | None) -> tuple[LayerResult, str] | None:
    """The earlier candidate whose fault ``row`` only carries on, and how; ``None`` when ``row`` is a cause.

    ``earlier``: the candidates before ``row`` in execution order, causes and consequences alike.
    Mechanisms, each a way the same error reaches a second row: a row naming it (``meta
    consequence_of``, or ``input_cause_row``: the row whose bad output quantizer this row's local run
    reads its input through); the same target tensor; a module that contains it; a layer whose inputs
    already lie beyond the target format (run alone, it is fed the reference values, which the target
    turns into infinities before the layer computes anything).
    """
    ids = {id(c) for c in earlier}
    for key in ("consequence_of", "input_cause_row"):
        named = by_name.get(row.meta.get(key) or "")
        if named is not None and id(named) in ids:
            why = row.meta.get("consequence_reason") or row.meta.get("input_cause") or f"carries {named.name}'s error"
            return named, str(why)
    for c in earlier:
        if row.target_name is not None and c.target_name == row.target_name:
            return c, f"the same {c.target_name} tensor as {c.name}"
        if _contains(row, c):
            return c, f"the module containing {c.name}"
    if not _fault_is_nonfinite(row):
        return None
    for prod in producers:
        if not _beyond_format(prod, fmax):
            continue
        src = prod if id(prod) in ids else next(
            (c for c in earlier if (prod.target_name is not None and c.target_name == prod.target_name)
             or _contains(prod, c)), None)
        if src is not None:
            return src, (f"reads {prod.name}'s values beyond the {fmt or 'target format'} range "
                         f"(infinite in the target) and passes the NaN/Inf on")
    return None


def _quantizer_cause(row: LayerResult) -> str | None:
    """The quantizer of ``row``'s output in words when it destroys the useful values
    (:func:`parity.core.diagnose.quantizer_stats`), else the bad quantizer on one of its inputs."""
    q = row.meta.get("local_quantizer")
    if isinstance(q, dict) and q.get("bad") and q.get("cause"):
        return str(q["cause"])
    return row.meta.get("input_cause")


def _cause_text(row: LayerResult, p: MetricInfo) -> str | None:
    """Why ``row`` is a culprit, in words: its quantizer, its overflow, or a useful part the whole hides."""
    cause = _quantizer_cause(row)
    if cause is not None:
        return cause
    ov = row.meta.get("overflow")
    if ov:
        top, fmax = ov.get("ref_absmax"), ov.get("format_max")
        if fmax is not None and (top is not None and top > fmax or ov.get("saturated")):
            return (f"{row.name} alone: {ov['count']} values exceed the {ov['format']} max {fmax:g}"
                    + (f" (the reference reaches {top:.4g})" if top is not None else "")
                    + " and become infinite; a consumer no longer matches")
        if ov.get("input_from") is not None and fmax is not None:
            return (f"{row.name} alone produces {ov['count']} NaN/Inf values: it reads {ov['input_from']}, whose "
                    f"reference reaches {ov['input_absmax']:.4g} > the {ov['format']} max {fmax:g}, so that value is "
                    f"infinite once cast to {ov['format']} for {row.name} (keep {row.name} in float32, or bring "
                    f"{ov['input_from']}'s values into range)")
        if top is None:  # a target-only node: no reference range of its own to say where the NaN/Inf comes from
            return f"{row.name} alone produces {ov['count']} NaN/Inf values where the reference is finite"
        return (f"{row.name} alone produces {ov['count']} NaN/Inf values although its reference output stays "
                f"within ±{top:.4g}: an intermediate value inside the layer exceeds the {ov['format'] or 'target'} format")
    whole = row.meta.get("local_whole") or {}
    if p.name in whole and p.threshold is not None and not p.fails(whole[p.name], p.threshold) \
            and p.fails(row.local.get(p.name), p.threshold) and row.meta.get("local_useful_bound") is not None:
        return (f"{row.name}'s values below |x| = {row.meta['local_useful_bound']:.4g} are lost while the "
                f"{int(row.local.get(MASKED, 0))} values beyond a {SENTINEL_GAP:g}x magnitude gap (a mask "
                f"constant or outliers) still agree, so the whole tensor's {p.name} hides it")
    return None


def _group_nonfinite_carriers(report: Report, cands: list[LayerResult], by_name: dict[str, LayerResult],
                              by_target: dict[str, list[LayerResult]],
                              readers: dict[str, list[LayerResult]] | None) -> None:
    """Rows that hold new NaN/Inf end to end but compute fine alone go under the cause whose NaN/Inf
    they receive: the same tensor, a module containing it, or a layer reading a row that carries it."""
    carriers = list(cands)
    ids = {id(r) for r in carriers}
    for row in sorted(report.layers, key=lambda r: r.order):
        if id(row) in ids or not (row.status == NONFINITE or row.meta.get("target_new_nonfinite", 0) > 0):
            continue
        src = next((c for c in carriers if row.target_name is not None and c.target_name == row.target_name), None)
        why = f"the same {row.target_name} tensor as {src.name}" if src is not None else ""
        if src is None:
            src = next((c for c in carriers if _contains(row, c)), None)
            why = f"the module containing {src.name}" if src is not None else ""
        if src is None:
            src = next((q for q in _producers(row, by_target, readers) if id(q) in ids), None)
            why = f"receives the NaN/Inf of {src.name} end to end; alone it computes without NaN/Inf" if src else ""
        if src is None:
            continue
        root = by_name[src.caused_by] if src.caused_by is not None else src
        if root.caused_by is not None or not any(root is c for c in cands):
            continue
        row.caused_by = root.name
        row.meta["consequence"] = why
        carriers.append(row)
        ids.add(id(row))


def find_culprits(report: Report, top: int = 5) -> list[LayerResult]:
    """Name the layers that cause the loss, each with the rows that only carry its error, in one order.

    A layer qualifies when its local value fails the primary threshold, or when it fails end to
    end by its values (not by NaN/Inf: a cosine of the finite part explains no infinity) and its
    local error is at least ``CAUSE_SHARE`` of its accumulated error. A layer whose local error is
    negligible (below ``NEGLIGIBLE_SHARE`` of the error the threshold allows) and which produces no
    NaN/Inf alone never qualifies. Saturation (reference beyond the target format, target the
    same-signed infinity) counts only when a consumer no longer matches; it is then an overflow
    (``meta["overflow"]``: count, reference |max|, format max).

    Qualifying layers are then split into *causes* and their *consequences* (see
    :func:`_consequence`; a layer reading its input through a bad quantizer is a cause only when the
    producer of that input is not one): a consequence gets ``caused_by`` (its cause's name) and
    ``meta["consequence"]`` (why), never a rank. Causes are ranked by local error, worst first
    (equal: the earlier first); ``culprit_rank`` 1..``top``. This one ordering is the report's:
    ``summary["culprits"]`` (ranked names), ``summary["culprit_groups"]`` (each cause with its
    consequences and cause in words), and ``summary["first_culprit"]`` (the earliest cause in
    execution order: everything after it reads its error).
    """
    p = report.primary
    if p is None:
        return []
    fmt = report.summary.get("target_format")
    fmax = FORMATS[fmt]["max"] if fmt in FORMATS else None
    by_target: dict[str, list[LayerResult]] = {"\0order": sorted(
        (r for r in report.layers if r.local or r.values), key=lambda r: r.order)}
    for row in report.layers:
        if row.target_name is not None:
            by_target.setdefault(row.target_name, []).append(row)
    readers: dict[str, list[LayerResult]] | None = None
    if any("local_consumers" in r.meta for r in report.layers):
        readers = {}
        for r in report.layers:
            for n in r.meta.get("local_consumers") or []:
                readers.setdefault(n, []).append(r)
    floor = NEGLIGIBLE_SHARE * error_of(p.threshold, p) if p.threshold is not None else 0.0
    if not math.isfinite(floor):
        floor = 0.0
    cands: list[tuple[float, LayerResult]] = []
    for row in report.layers:
        row.culprit_rank = None
        row.caused_by = None
        row.meta.pop("consequence", None)
        row.meta.pop("culprit_cause", None)
        if p.name not in row.local:
            continue
        loc = row.local[p.name]
        acc = row.worst.get(p.name, row.values.get(p.name))
        e_loc = error_of(loc, p)
        new_nf = row.local.get(NEW_NONFINITE, 0) > 0
        sat = int(row.local.get(SATURATED, 0))
        felt = 0  # saturated values a consumer feels
        if sat > 0:
            if _saturation_harmless(row, by_target, p, fmax):
                row.meta["saturation"] = (f"{sat} values beyond the target format "
                                          f"become the same-signed infinity; the consumers still match")
            else:
                felt = sat
                row.meta["saturation"] = (f"{sat} values beyond the target format "
                                          f"become infinite and a consumer no longer matches")
        ref_absmax = (row.range.get("ref") or {}).get("absmax") if row.range else None
        if new_nf or felt:
            row.meta["overflow"] = {"count": int(row.local.get(NEW_NONFINITE, 0)) + felt, "ref_absmax": ref_absmax,
                                    "format": fmt, "format_max": fmax, "saturated": felt}
            new_nf = True
            e_loc = math.inf  # the layer alone overflows: it causes, whatever the finite values say
        else:
            row.meta.pop("overflow", None)
        e_acc = error_of(acc, p)
        fails_local = (p.threshold is not None and p.fails(loc, p.threshold)) or new_nf
        explains = e_loc is not None and e_acc is not None and e_acc > 0 and e_loc >= CAUSE_SHARE * e_acc
        row.meta["local_share"] = (e_loc / e_acc) if (e_loc is not None and e_acc) else None
        negligible = not fails_local and (e_loc is None or e_loc <= floor)
        if fails_local or (row.status == BELOW and explains and not negligible):
            cands.append((e_loc if e_loc is not None else 0.0, row))
    # causes and consequences, in execution order: a consequence's cause always comes first
    by_name = {r.name: r for r in report.layers}
    causes: list[LayerResult] = []
    earlier: list[LayerResult] = []
    for _, row in sorted(cands, key=lambda x: x[1].order):
        earlier.append(row)
        found = _consequence(row, earlier[:-1], by_name, _producers(row, by_target, readers), fmax, fmt)
        if found is None:
            causes.append(row)
            continue
        cause, why = found
        while cause.caused_by is not None and cause.caused_by in by_name:
            cause = by_name[cause.caused_by]
        row.caused_by = cause.name
        row.meta["consequence"] = why
    _group_nonfinite_carriers(report, earlier, by_name, by_target, readers)
    err = {id(r): e for e, r in cands}
    ranked = sorted(causes, key=lambda r: (-err[id(r)], r.order))[:top]
    for k in ("first_culprit", "culprits", "culprit_groups", "first_culprit_cause", "cause"):
        report.summary.pop(k, None)
    if not ranked:
        return []
    groups = []
    for i, r in enumerate(ranked, 1):
        r.culprit_rank = i
        ov = r.meta.get("overflow")
        if ov and not ov.get("saturated"):
            # NaN/Inf from a layer whose own output fits the format: an input beyond the format (a value
            # computed in float32 by a fallback op, cast to the format on its way in) is the usual reason
            src = next((q for q in _producers(r, by_target, readers) if _beyond_format(q, fmax)
                        and (q.range.get("ref") or {}).get("absmax") is not None), None)
            if src is not None:
                ov["input_from"], ov["input_absmax"] = src.name, src.range["ref"]["absmax"]
        cause = _cause_text(r, p)
        if cause:
            r.meta["culprit_cause"] = cause
        groups.append({"culprit": r.name, "rank": i, "cause": cause,
                       "consequences": [c.name for c in report.layers if c.caused_by == r.name]})
    first = min(ranked, key=lambda r: r.order)
    report.summary["first_culprit"] = first.name
    report.summary["culprits"] = [r.name for r in ranked]
    report.summary["culprit_groups"] = groups
    if first.meta.get("culprit_cause"):
        report.summary["first_culprit_cause"] = first.meta["culprit_cause"]
    return ranked

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

import numpy as np
from parity.contract.capability import NumberFormat
from parity.contract.records import LocalResult
from parity.contract.report import NEW_NONFINITE, LayerResult, MetricInfo, Report, diagnosis_lines
from parity.contract.metric import Metric
# the rules culprits.py shares live in parity.core.causes (named here too, where callers find them)
from parity.core.causes import (CAUSE_SHARE, FORMATS, MASKED, NEGLIGIBLE_SHARE, SATURATED,  # noqa: F401
                                SENTINEL_GAP, error_of)
from parity.lib.scoring import score_pair

__all__ = ["FORMATS", "LocalResult", "LocalValues", "OUTLIER_RATIO", "SATURATED", "attach_local", "diagnosis_lines", "error_of", "find_culprits", "number_format_of", "outlier_channels", "quantizer_stats", "score_local",
           "target_format", "trace_ranges"]

#: absmax/rms above which a tensor is outlier-heavy for per-tensor int8 (most values then
#: share a few of the 255 levels)
INT8_CREST_RISK = 20.0


def number_format_of(target: Any) -> NumberFormat | None:
    """The typed number format of ``target``: a source object's ``number_format``, or that of the
    source registered under the name ``target``; None for a name no source is registered under
    (``dump``: a dump made elsewhere says nothing of its format)."""
    if isinstance(target, str):
        from parity.core.registry import all_of

        target = all_of("source").get(target)
    fmt = getattr(target, "number_format", None)
    return NumberFormat(fmt) if fmt is not None else None


def target_format(target: Any, row: LayerResult | None = None) -> str | None:
    """The number format a target computes in, as reports name it (``float16``, ``bfloat16``, ``int8``).

    From the source's typed ``number_format`` (``target`` is a source or its registered name), never
    from the name's spelling; where that has float32's range (fp32, tf32), is mixed or unknown, from
    the row's dtype (a source storing fp16 tensors without saying so).
    """
    fmt = number_format_of(target)
    if fmt is not None and fmt.report_name is not None:
        return fmt.report_name
    if row is not None and row.target_dtype in FORMATS and row.target_dtype != "float32":
        return row.target_dtype
    return None


def _precision_format(precision: str) -> str | None:
    """A local run's ``meta["precision"]`` string (``fp16``, ``fp16-strict``, ``bf16``, ``int8``) as a
    report's format name; None for another spelling. Only for local results without the typed
    ``meta["number_format"]`` (sources and saved results from before it, see :func:`_local_format`)."""
    p = precision.lower()
    if "int8" in p:
        return "int8"
    if "bf16" in p:
        return "bfloat16"
    if "fp16" in p or "half" in p:
        return "float16"
    return None


#: an output quantizer that gives the useful values fewer levels than this destroys them
QUANT_MIN_LEVELS = 8.0
#: an outlier channel: its absmax is at least this many times the median channel's. A per-tensor
#: int8 scale set by it (absmax / 127) leaves the median channel 127 / ratio levels, fewer than
#: ``QUANT_MIN_LEVELS``: derived from the format, not tuned
OUTLIER_RATIO = 127.0 / QUANT_MIN_LEVELS


class LocalValues(dict):
    """A layer's local values by metric name, with what the scoring learned on the way (``meta``)."""

    def __init__(self, values: dict[str, float], meta: dict[str, Any] | None = None) -> None:
        super().__init__(values)
        self.meta: dict[str, Any] = dict(meta or {})


def useful_bound(ref: np.ndarray) -> float | None:
    """Largest magnitude of the tensor's useful part, when huge-magnitude sentinels sit above it.

    A sentinel is a value at least ``SENTINEL_GAP`` times every useful value: a mask constant
    (float32's minimum, -1e9) added to or filled into attention scores. Two cases, both exact:

    - *a minority* of sentinels: the sorted finite magnitudes above the median hold a gap of
      ``SENTINEL_GAP``; what lies above the widest such gap is left out (a padding mask, an
      outlier channel far beyond the rest);
    - *a majority* (a causal mask with padding masks more than half the scores, so the median is
      itself a sentinel): the values at least ``SENTINEL_GAP`` below the largest one are the useful
      part, *provided* everything above them is one constant up to the useful values added to it
      (spread at most twice their bound, plus rounding) -- which is what ``constant + score``
      looks like, and what real data spread over decades never does.

    ``None`` when there is no such gap (the common case costs one partition and one max).
    """
    a = np.abs(np.asarray(ref, dtype=np.float64).ravel())
    a = a[np.isfinite(a)]
    if a.size < 8:
        return None
    mid = a.size // 2
    med = float(np.partition(a, mid)[mid])
    top = float(a.max())
    if top == 0.0:
        return None
    if top >= SENTINEL_GAP * max(med, np.finfo(np.float64).tiny):
        upper = np.sort(a[a >= med])
        upper = upper[upper > 0]
        if upper.size < 2:
            return None
        ratios = upper[1:] / upper[:-1]
        j = int(np.argmax(ratios))
        return float(upper[j]) if ratios[j] >= SENTINEL_GAP else None
    # the median is within SENTINEL_GAP of the top: either no sentinels, or they are the majority. A
    # majority puts the median in the constant top, within 2x the useful bound (<= top / SENTINEL_GAP)
    # of the largest value: anything else (the common case) is decided here, with no further pass
    eps = float(np.finfo(np.asarray(ref).dtype if np.asarray(ref).dtype.kind == "f" else np.float32).eps)
    if med < top * (1.0 - 2.0 / SENTINEL_GAP - 4.0 * eps):
        return None
    lower = a[a * SENTINEL_GAP <= top]
    if lower.size == 0:
        return None
    bound = float(lower.max())
    if bound == 0.0:
        return None
    upper = a[a > bound]
    return bound if float(upper.min()) >= SENTINEL_GAP * bound and _sentinels_constant(upper, bound, eps) else None


def _local_format(lr: LocalResult, source_format: NumberFormat | str | None = None) -> str | None:
    """The float format the local run computed in: a typed ``meta["number_format"]`` the run carries,
    else ``source_format`` (the typed ``Source.number_format`` of the source that ran it, which the
    core passes), else its dtype."""
    meta = lr.meta or {}
    typed = meta.get("number_format") or (source_format.value if isinstance(source_format, NumberFormat)
                                          else source_format)
    if typed:
        try:
            fmt = NumberFormat(typed).report_name
        except ValueError:  # a format this version does not know: its dtype says what it can
            fmt = None
    else:
        # local results from sources older than meta["number_format"] (a third-party source, results saved
        # by an earlier version) only spell their precision: read that string as before, for them only
        fmt = _precision_format(str(meta.get("precision") or meta.get("dtype") or ""))
    if fmt in FORMATS:
        return fmt
    dt = str(lr.target.dtype)
    return dt if dt in FORMATS and dt != "float32" else None


def _saturated(ref: np.ndarray, tgt: np.ndarray, fmt: str | None) -> int:
    """Elements the target saturates: reference finite beyond the format's max, target the same-signed inf."""
    if fmt not in FORMATS or ref.shape != tgt.shape and ref.size != tgt.size:
        return 0
    r = np.asarray(ref).reshape(-1)
    t = np.asarray(tgt).reshape(-1)
    with np.errstate(invalid="ignore"):
        beyond = np.isfinite(r) & (np.abs(r.astype(np.float64)) > FORMATS[fmt]["max"])
        return int(np.count_nonzero(beyond & np.isinf(t) & (np.sign(t) == np.sign(r))))


def _sentinels_constant(a: np.ndarray, bound: float, eps: float = float(np.finfo(np.float32).eps)) -> bool:
    """Whether the magnitudes above ``bound`` are one constant up to the useful values added to it
    (a mask), rather than data spread over decades (an outlier channel); ``eps``: the values' rounding."""
    upper = a[a > bound]
    if upper.size == 0:
        return False
    top = float(upper.max())
    return float(top - upper.min()) <= 2.0 * bound + 4.0 * eps * top


def outlier_channels(ref: np.ndarray, scale: float, skip: np.ndarray | None = None) -> dict[str, Any] | None:
    """Per-channel absmax of ``ref`` against a per-tensor quantizer step ``scale``: the outlier channel.

    The channel axis of an ONNX tensor is not written down: it is axis 1 of an NCHW activation and the
    last axis of a ``[batch, tokens, hidden]`` one, so both are tried and the one where a channel
    dominates most is reported. ``ratio`` is the largest channel absmax over the median channel's; with
    ``ratio >= OUTLIER_RATIO`` the median channel keeps fewer than ``QUANT_MIN_LEVELS`` levels.
    ``dead`` counts channels whose every value rounds to 0 (absmax below half a step), ``coarse``
    those left fewer than ``QUANT_MIN_LEVELS`` levels. ``skip`` marks elements to leave out (sentinels).
    ``None`` when no channel qualifies.
    """
    a = np.abs(np.asarray(ref, dtype=np.float64))
    if a.ndim < 2 or not scale > 0:
        return None
    a = np.where(np.isfinite(a) & (True if skip is None else ~skip.reshape(a.shape)), a, 0.0)
    best: dict[str, Any] | None = None
    for axis in sorted({a.ndim - 1, 1} if a.ndim >= 3 else {a.ndim - 1}):
        if a.shape[axis] < 4:
            continue
        cam = a.max(axis=tuple(i for i in range(a.ndim) if i != axis))
        med = float(np.median(cam))
        if med <= 0.0:
            continue
        c = int(np.argmax(cam))
        ratio = float(cam[c]) / med
        if best is None or ratio > best["ratio"]:
            live = cam > 0
            best = {"axis": axis, "channel": c, "channels": int(cam.size), "ratio": ratio,
                    "channel_absmax": float(cam[c]), "median_absmax": med, "median_levels": med / scale,
                    "outliers": [int(i) for i in np.flatnonzero(cam >= OUTLIER_RATIO * med)[:8]],
                    "dead": int(np.count_nonzero(live & (cam < 0.5 * scale))),
                    "coarse": int(np.count_nonzero(live & (cam < QUANT_MIN_LEVELS * scale)))}
    return best if best is not None and best["ratio"] >= OUTLIER_RATIO else None


def quantizer_stats(ref: np.ndarray, q: dict[str, Any], bound: float | None) -> dict[str, Any]:
    """A per-tensor quantizer (``scale``, ``zero_point``, ``qmin``/``qmax``) against the values it quantizes.

    The *useful* values are the finite ones at or below ``bound`` (:func:`useful_bound`: the mask
    constant left out, however many there are). A step ``s`` represents ``x`` as ``round(x/s)``, so a
    value with ``|x| < s/2`` becomes 0 (``round_to_zero``: share of the nonzero useful values) and one
    more than half a step beyond ``(qmax - zp)·s`` or ``(qmin - zp)·s`` clips (``clipped``). ``needed_scale`` is the step
    a min/max calibration on the useful values alone would choose; ``scale_ratio`` how many times
    larger the real one is; ``levels`` the useful absmax in steps. ``outlier`` is :func:`outlier_channels`.
    ``bad`` when the useful values get fewer than ``QUANT_MIN_LEVELS`` levels, or an outlier channel
    leaves the median channel fewer; ``cause`` says so in words.
    """
    out = dict(q)
    scale = float(q["scale"])
    zp = int(q.get("zero_point") or 0)
    qmin, qmax = int(q.get("qmin", -128)), int(q.get("qmax", 127))
    flat = np.asarray(ref, dtype=np.float64).reshape(-1)
    fin = np.isfinite(flat)
    if not fin.any() or not scale > 0:
        return out
    mag = np.abs(flat)
    keep = fin & (mag <= bound) if bound is not None else fin
    useful = flat[keep]
    if useful.size == 0:
        return out
    lo, hi = float(useful.min()), float(useful.max())
    umax = max(abs(lo), abs(hi))
    need = (max(hi, 0.0) - min(lo, 0.0)) / float(qmax - qmin)
    nonzero = useful[useful != 0]
    zero = float(np.count_nonzero(np.abs(nonzero) < 0.5 * scale) / nonzero.size) if nonzero.size else 0.0
    # beyond the grid by more than half a step: a value within half a step of an end rounds to it
    clipped = float(np.count_nonzero((useful > (qmax - zp + 0.5) * scale) | (useful < (qmin - zp - 0.5) * scale))
                    / useful.size)
    sentinel = bound is not None and _sentinels_constant(mag[fin], bound)
    out.update(useful_min=lo, useful_max=hi, useful_absmax=umax, levels=umax / scale,
               needed_scale=need, scale_ratio=(scale / need) if need > 0 else math.inf,
               round_to_zero=zero, clipped=clipped, ref_min=float(flat[fin].min()), ref_max=float(flat[fin].max()),
               sentinels=int(np.count_nonzero(fin) - useful.size) if sentinel else 0)
    # an outlier channel is data: channels are measured on every finite value unless the values
    # above the gap are a mask constant (then on the useful ones, or the mask would read as channels)
    oc = outlier_channels(ref, scale, skip=(~keep) if sentinel else None)
    if oc is not None:
        out["outlier"] = oc
    out["bad"] = bool(out["levels"] < QUANT_MIN_LEVELS or oc is not None)
    if out["bad"]:
        out["cause"] = _quantizer_words(out)
    return out


def _quantizer_words(q: dict[str, Any]) -> str:
    """Why a quantizer destroys its tensor's information, in one sentence naming node, tensor and producer."""
    who = f"quantizer {q.get('node') or '?'} of {q.get('tensor') or 'the tensor'}"
    if q.get("producer"):
        who += f" (output of {q.get('producer_op') or 'node'} {q['producer']})"
    oc = q.get("outlier")
    if oc is not None and not q.get("sentinels"):
        return (f"{who}: channel {oc['channel']} (axis {oc['axis']}) reaches {oc['channel_absmax']:.4g}, "
                f"{oc['ratio']:.0f}x the median channel's {oc['median_absmax']:.4g}; the per-tensor scale "
                f"{q['scale']:.4g} it sets leaves the median channel {oc['median_levels']:.2g} levels, "
                f"{oc['dead']} of {oc['channels']} channels round entirely to 0 and {oc['coarse']} keep fewer than "
                f"{QUANT_MIN_LEVELS:g} levels; {q['round_to_zero']:.0%} of the values quantize to 0")
    text = (f"{who} has scale {q['scale']:.4g}, {q['scale_ratio']:.3g}x what its useful values need "
            f"(within {q['useful_min']:.4g}..{q['useful_max']:.4g}: scale {q['needed_scale']:.4g}, "
            f"{q['levels']:.3g} steps), so {q['round_to_zero']:.0%} of them quantize to 0"
            f"{' and ' + format(q['clipped'], '.0%') + ' clip' if q.get('clipped') else ''}")
    if q.get("sentinels"):
        text += (f"; calibration saw {q['ref_min']:.4g}..{q['ref_max']:.4g}, including {q['sentinels']} "
                 f"mask-constant values beyond a {SENTINEL_GAP:g}x magnitude gap")
    return text


def score_local(results: Iterable[LocalResult], metrics: list[Metric],
                options: dict[str, Any] | None = None,
                number_format: NumberFormat | str | None = None) -> Iterator[tuple[Any, LocalValues]]:
    """Score each local run with the same metrics as the compare run, one at a time.

    ``number_format``: the typed format of the source that ran them (its ``number_format``), whose
    range a saturation is counted against unless a run carries its own ``meta["number_format"]``.

    Robust local error: when the reference has a huge-magnitude minority (see :func:`useful_bound`),
    every metric is also computed on the useful part alone and the *worse* of the two (by the
    metric's own :meth:`~parity.contract.metric.Metric.error`) is the local value, so a mask
    constant that dominates a cosine or an SQNR cannot hide that every real value was lost.
    Saturations (reference beyond the target format, target the same-signed infinity) are counted
    apart from new NaN/Inf (``SATURATED``); :func:`find_culprits` decides whether they matter.
    The key is the target record's key, or ``(key, module path)`` for a module run as a whole.
    """
    for lr in results:
        if lr.ref.size != lr.target.size:
            continue
        values, ctx = score_pair(lr.ref, lr.target, metrics, options)
        meta = dict(lr.meta or {})
        sat = _saturated(lr.ref, lr.target, _local_format(lr, number_format)) if ctx.tgt_new_nonfinite else 0
        # new NaN/Inf in the local run is local error too, even when the finite part still agrees
        values[NEW_NONFINITE] = float(ctx.tgt_new_nonfinite - sat)
        if sat:
            values[SATURATED] = float(sat)
        bound = useful_bound(lr.ref)
        ref_flat = np.asarray(lr.ref).reshape(-1)
        if bound is not None:
            keep = np.abs(ref_flat) <= bound
            tgt_flat = np.asarray(lr.target).reshape(-1)
            useful, _ = score_pair(ref_flat[keep], tgt_flat[keep], metrics, options)
            meta["local_whole"] = {m.name: values[m.name] for m in metrics}
            meta["local_useful"] = useful
            meta["useful_bound"] = bound
            values[MASKED] = float(ref_flat.size - int(np.count_nonzero(keep)))
            for m in metrics:
                if m.error(useful[m.name]) > m.error(values[m.name]):
                    values[m.name] = useful[m.name]
        q = meta.get("quantizer")
        if isinstance(q, dict) and q.get("scale"):
            q = meta["quantizer"] = quantizer_stats(lr.ref, q, bound)
            oc = q.get("outlier")
            if oc is not None and lr.ref.shape == np.shape(lr.target):
                # the outlier channel dominates a cosine or an SQNR as a mask constant does: score the
                # other channels too, and keep the worse (what the consumers reading them receive)
                sel = [slice(None)] * lr.ref.ndim
                inl = np.ones(lr.ref.shape[oc["axis"]], dtype=bool)
                inl[oc["outliers"]] = False
                sel[oc["axis"]] = inl
                part, _ = score_pair(np.asarray(lr.ref)[tuple(sel)], np.asarray(lr.target)[tuple(sel)], metrics, options)
                meta.setdefault("local_whole", {m.name: values[m.name] for m in metrics})
                meta["local_inliers"] = part
                for m in metrics:
                    if m.error(part[m.name]) > m.error(values[m.name]):
                        values[m.name] = part[m.name]
            if q.get("cause"):
                meta["cause"] = q["cause"]
        key = (lr.key, meta["module_run"]) if meta.get("module_run") else lr.key
        yield key, LocalValues(values, meta)


def attach_local(report: Report, local: dict[Any, dict[str, float]]) -> int:
    """Put local values on the rows whose target record they belong to; returns how many rows got one.

    A module run as a whole (key ``(target key, module path)``) goes to the row pairing that module
    with that target record; any other local run to every row of its target record that has no
    module run of its own.
    """
    n = 0
    by_module = {k: v for k, v in local.items() if isinstance(k, tuple)}
    for row in report.layers:
        if row.target_name is None:
            continue
        mod = row.meta.get("ref_module_path")
        v = by_module.get((row.target_name, mod)) if mod else None
        if v is None:
            v = local.get(row.target_name)
        if v is None:
            continue
        row.local = dict(v)
        meta = getattr(v, "meta", None) or {}
        for k in ("consumers", "quantizer", "useful_bound", "local_whole", "local_useful", "module_run",
                  "local_nodes", "local_inliers", "input_quantizers"):
            if k in meta:
                row.meta[f"local_{k}" if not k.startswith("local_") else k] = meta[k]
        if meta.get("cause"):
            # this row's local error is its quantizer's doing (docs/diagnosis.md); _input_quantizer_causes
            # reads cause_quantizer to tell the rows reading this tensor
            row.meta["cause"] = meta["cause"]
            row.meta["cause_quantizer"] = (meta.get("quantizer") or {}).get("node")
        n += 1
    _input_quantizer_causes(report)
    return n


def _input_quantizer_causes(report: Report) -> None:
    """A layer fed through a bad quantizer (an outlier channel's, a mask constant's) inherits its cause.

    An int8 local run includes the quantizers on its inputs (``local_input_quantizers``: the fp32
    tensors read through one); when the row producing such a tensor carries a bad quantizer, the
    consumer's row says so (``input_cause``): the Linear after an outlier LayerNorm loses precision
    at its input, not in its own arithmetic.
    """
    by_tensor = {r.target_name: r for r in report.layers if r.target_name and r.meta.get("cause_quantizer")}
    for row in report.layers:
        for t in row.meta.get("local_input_quantizers") or []:
            src = by_tensor.get(t)
            if src is not None and src is not row:
                row.meta["input_cause"] = (f"its input {t} is read through quantizer {src.meta['cause_quantizer']}, "
                                           f"which destroys it")
                row.meta.setdefault("input_cause_row", src.name)
                break


def find_culprits(report: Report, top: int = 5) -> list[LayerResult]:
    """Name the layers that cause the loss, each with the rows that only carry its error, in one
    ranked order (:func:`parity.core.culprits.find_culprits`, which documents the rules)."""
    from parity.core.culprits import find_culprits as rank

    return rank(report, top)


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

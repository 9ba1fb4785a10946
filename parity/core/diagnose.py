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
from parity.contract.records import LocalResult
from parity.contract.report import NEW_NONFINITE, LayerResult, MetricInfo, Report, diagnosis_lines
from parity.contract.metric import Metric, score_pair

__all__ = ["FORMATS", "LocalResult", "LocalValues", "SATURATED", "attach_local", "diagnosis_lines", "error_of", "find_culprits", "score_local",
           "target_format", "trace_ranges"]

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
#: a layer whose local error is below this share of the error the threshold allows is never a culprit
#: (the same floor as ``parity fix``'s: keeping such a layer in high precision cannot move the outputs)
NEGLIGIBLE_SHARE = 0.01


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


#: a magnitude gap at least this wide, above the median magnitude, separates a tensor's useful
#: values from a huge-magnitude minority above it (a mask constant such as float32's minimum or -1e9)
SENTINEL_GAP = 1e3
#: local-value key: target elements that are the same-signed infinity where the reference holds a
#: finite value beyond the target format's range (saturation; harmless when the consumers match)
SATURATED = "_saturated"
#: local-value key: reference elements left out of the useful part (above ``useful_bound``)
MASKED = "_masked"
#: an output quantizer that gives the useful values fewer levels than this destroys them
QUANT_MIN_LEVELS = 8.0


class LocalValues(dict):
    """A layer's local values by metric name, with what the scoring learned on the way (``meta``)."""

    def __init__(self, values: dict[str, float], meta: dict[str, Any] | None = None) -> None:
        super().__init__(values)
        self.meta: dict[str, Any] = dict(meta or {})


def useful_bound(ref: np.ndarray) -> float | None:
    """Largest magnitude of the tensor's useful part, when a huge-magnitude minority sits above it.

    Sorted finite magnitudes above the median are searched for a gap of ``SENTINEL_GAP``; what
    lies above the widest such gap is a minority of sentinels (a mask constant added to scores),
    not data. ``None`` when there is no such gap (the common case costs one partition).
    """
    a = np.abs(np.asarray(ref, dtype=np.float64).ravel())
    a = a[np.isfinite(a)]
    if a.size < 8:
        return None
    mid = a.size // 2
    med = float(np.partition(a, mid)[mid])
    top = float(a.max())
    if top == 0.0 or top < SENTINEL_GAP * max(med, np.finfo(np.float64).tiny):
        return None
    upper = np.sort(a[a >= med])
    upper = upper[upper > 0]
    if upper.size < 2:
        return None
    ratios = upper[1:] / upper[:-1]
    j = int(np.argmax(ratios))
    return float(upper[j]) if ratios[j] >= SENTINEL_GAP else None


def _local_format(lr: LocalResult) -> str | None:
    """The float format the local run computed in: from its meta (``precision``/``dtype``) or its dtype."""
    meta = lr.meta or {}
    fmt = target_format(str(meta.get("precision") or meta.get("dtype") or ""))
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


def score_local(results: Iterable[LocalResult], metrics: list[Metric],
                options: dict[str, Any] | None = None) -> Iterator[tuple[Any, LocalValues]]:
    """Score each local run with the same metrics as the compare run, one at a time.

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
        sat = _saturated(lr.ref, lr.target, _local_format(lr)) if ctx.tgt_new_nonfinite else 0
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
            fin = ref_flat[np.isfinite(ref_flat)]
            if fin.size:
                mag = np.abs(fin.astype(np.float64))
                useful_max = float(mag[mag <= bound].max()) if bound is not None else float(mag.max())
                q = dict(q, useful_absmax=useful_max, levels=useful_max / float(q["scale"]),
                         ref_min=float(fin.min()), ref_max=float(fin.max()))
                meta["quantizer"] = q
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
                  "local_nodes"):
            if k in meta:
                row.meta[f"local_{k}" if not k.startswith("local_") else k] = meta[k]
        n += 1
    return n


def error_of(value: float | None, info: MetricInfo) -> float | None:
    """The metric's own error for ``value`` (0 = no loss, ``inf`` for NaN); ``None`` for no value."""
    return None if value is None else info.error(value)


def _quantizer_cause(row: LayerResult) -> str | None:
    """The output quantizer of ``row`` in words, when it leaves the useful values too few levels."""
    q = row.meta.get("local_quantizer")
    if not isinstance(q, dict) or q.get("levels") is None or q["levels"] >= QUANT_MIN_LEVELS:
        return None
    masked = ""
    if row.meta.get("local_useful_bound") is not None:
        masked = (f"; calibration saw {q['ref_min']:.4g}..{q['ref_max']:.4g}, including "
                  f"{int(row.local.get(MASKED, 0))} values beyond a {SENTINEL_GAP:g}x magnitude gap (a mask "
                  f"constant or outliers)")
    return (f"quantizer {q.get('node') or '?'} has scale {q['scale']:.4g}, but {row.name}'s useful values lie "
            f"within ±{q['useful_absmax']:.4g} ({q['levels']:.3g} steps), so they quantize to "
            f"{'0' if q['levels'] < 0.5 else 'a few levels'}{masked}")


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

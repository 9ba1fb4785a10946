"""The engine: pair reference and target activations, score each pair as it arrives.

Memory model: activations arrive from two lazy streams; a pair is scored as soon as both
sides are present and both arrays are released right after. Only unpaired activations
wait (in the exact matcher, a layer one side has produced and the other has not yet).
Results are small objects without arrays.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from parity.contract.errors import ParityError
from parity.contract.matcher import MappingRules, MatchContext, Matcher
from parity.contract.metric import Metric
from parity.contract.records import Activation, Pair
from parity.contract.report import (NEW_NONFINITE, REF_ONLY, SHAPE_MISMATCH, TARGET_ONLY,  # noqa: F401
                                    LayerResult, MetricInfo, Report)
# classify and the error-vs-magnitude summary live in parity.core.rows (shared with parity.core.stats);
# named here too, where callers and tests have always found them
from parity.core.rows import (MAG_BASE, MAG_BIN_HI, MAG_BIN_LO, classify,  # noqa: F401
                              error_vs_magnitude, merge_error_vs_magnitude)
from parity.lib.parking import Parking
from parity.lib.scoring import metric_similarity, score_pair

DEFAULT_METRICS = ("cosine", "rel-diff", "max-abs", "nonfinite")


def resolve_metrics(names: Sequence[str | Metric] | None) -> list[Metric]:
    """Metric objects from names (via the plugin registry) or objects."""
    from parity.core.registry import get_metric

    out: list[Metric] = []
    for n in names or DEFAULT_METRICS:
        m = n if isinstance(n, Metric) else get_metric(n)
        if m.name in {x.name for x in out}:
            continue
        out.append(m)
    if not out:
        raise ParityError("no metric selected. Note: pass --metrics with names from 'parity plugins'.")
    return out


def metric_infos(metrics: list[Metric], thresholds: dict[str, float] | None) -> list[MetricInfo]:
    thresholds = thresholds or {}
    unknown = set(thresholds) - {m.name for m in metrics}
    if unknown:
        raise ParityError(f"threshold given for metric(s) not selected: {', '.join(sorted(unknown))}. "
                          f"Note: selected metrics are {', '.join(m.name for m in metrics)}.")
    return [MetricInfo(m.name, m.higher_is_better, m.percent,
                       thresholds.get(m.name, m.default_threshold), m.description, metric=m) for m in metrics]


def _shape_note(r: Activation, t: Activation) -> tuple[bool, str]:
    """Whether two differently shaped arrays may be compared element-wise, and the note saying so."""
    if r.shape == t.shape:
        return True, ""
    if math.prod(r.shape) == math.prod(t.shape):
        squeezed = tuple(d for d in r.shape if d != 1) == tuple(d for d in t.shape if d != 1)
        why = "same dims but for size-1 axes" if squeezed else "same element count"
        return True, f"shapes differ ({list(r.shape)} vs {list(t.shape)}), compared flat: {why}"
    return False, f"shapes differ ({list(r.shape)} vs {list(t.shape)}) and sizes differ; not compared"


def _as_numeric(a: np.ndarray) -> np.ndarray:
    _as_numeric_name(a.dtype)
    return a


def _score_values(r: Activation, t: Activation, metrics: list[Metric],
                  options: dict[str, Any] | None) -> tuple[dict[str, float], Any]:
    """Values and context of a pair: reduced on the device when both records are tensors on the same
    device (device records, ``--device-scoring``; only scalars cross to the host), else on host arrays."""
    if r.on_device and t.on_device and str(r.array.device) == str(t.array.device):
        from parity.lib.scoring.device import score_pair_device

        _as_numeric_name(r.dtype)
        _as_numeric_name(t.dtype)
        return score_pair_device(r.array, t.array, metrics, options)
    return score_pair(_as_numeric(r.host()), _as_numeric(t.host()), metrics, options)


def _as_numeric_name(dtype: Any) -> None:
    if np.dtype(dtype).kind not in "fiub":
        raise ParityError(f"cannot score an array of dtype {dtype}. Note: parity compares numeric tensors only.")


def score(pair: Pair, metrics: list[Metric], infos: list[MetricInfo], order: float,
          options: dict[str, Any] | None = None) -> LayerResult:
    """Score one pair into a report row; arrays are not kept."""
    r, t = pair.ref, pair.target
    main = r if r is not None else t
    assert main is not None
    row = LayerResult(
        name=main.key, ref_name=r.key if r is not None else None,
        target_name=t.key if t is not None else None, order=order,
        ref_shape=r.shape if r is not None else None, target_shape=t.shape if t is not None else None,
        ref_dtype=r.dtype if r is not None else None, target_dtype=t.dtype if t is not None else None,
        op_type=r.op_type if r is not None else None, target_op_type=t.op_type if t is not None else None,
        match=pair.how, confidence=pair.confidence,
    )
    if pair.note:
        row.notes.append(pair.note)
    for rec, prefix in ((r, "ref"), (t, "target")):
        if rec is not None:
            for k in ("module_path", "onnx_node", "fused", "covers", "is_output", "within", "quantizers"):
                if k in rec.meta:
                    row.meta[f"{prefix}_{k}"] = rec.meta[k]
    if r is None:
        row.status = TARGET_ONLY
        # the module the node sits in (its export namespace), though no module returns this tensor
        within = (t.meta.get("within") or t.meta.get("module_path")) if t is not None else None
        if within:
            row.meta["module"] = within
            row.notes.append(f"inside {within}")
        return row
    if t is None:
        row.status = REF_ONLY
        return row
    ok, note = _shape_note(r, t)
    if note:
        row.notes.append(note)
    if not ok:
        row.status = SHAPE_MISMATCH
        return row
    if r.dtype != t.dtype:
        row.meta["dtype_differs"] = True
    if options and options.get("ranges"):  # the ranges read the values: one host copy serves both
        from parity.lib.scoring import value_stats

        rh, th = _as_numeric(r.host()), _as_numeric(t.host())
        values, ctx = score_pair(rh, th, metrics, options)
        row.range = {"ref": value_stats(rh), "target": value_stats(th),
                     "error_vs_magnitude": error_vs_magnitude(rh, th)}
    else:
        values, ctx = _score_values(r, t, metrics, options)
    row.values = values
    row.ref_nan, row.ref_inf, row.target_nan, row.target_inf = ctx.ref_nan, ctx.ref_inf, ctx.tgt_nan, ctx.tgt_inf
    row.meta["target_new_nonfinite"] = ctx.tgt_new_nonfinite
    row.pair_stats = ctx
    classify(row, infos)
    return row


def run_engine(pairs: Iterable[Pair], metrics: Sequence[str | Metric] | None = None, *,
               thresholds: dict[str, float] | None = None, options: dict[str, Any] | None = None,
               ref_label: str = "reference", target_label: str = "target") -> Report:
    """Score every pair a matcher yields, as it yields them, into a report in execution order."""
    ms = resolve_metrics(metrics)
    infos = metric_infos(ms, thresholds)
    rows: list[LayerResult] = []
    tpos: list[float | None] = []  # each row's position in the target's own order
    onnx: str | None = None  # the ONNX graph the target ran (its records' model_file): parity view shows it
    for i, pair in enumerate(pairs):
        main = pair.ref if pair.ref is not None else pair.target
        order = float(i) if main is None or main.order is None else float(main.order)
        t = pair.target
        if onnx is None and t is not None and t.meta.get("model_file"):
            onnx = os.path.abspath(str(t.meta["model_file"]))
        tpos.append(None if t is None or t.order is None else float(t.order))
        rows.append(score(pair, ms, infos, order, options))
        pair.ref = pair.target = None  # release arrays now, not when the loop variable moves on
    _place_target_only(rows, tpos)
    rows.sort(key=lambda l: (l.order,))
    return Report(rows, infos, ref_label, target_label, summary={"target_onnx": onnx} if onnx else {})


def _place_target_only(rows: list[LayerResult], tpos: list[float | None]) -> None:
    """Give target-only rows a place in the reference's order: right after the (last) matched row of
    the target record before them in the target's order (the two sides number their layers apart)."""
    import bisect

    last_of: dict[float, float] = {}  # target position -> latest reference order matched to it
    for r, tp in zip(rows, tpos):
        if tp is not None and r.status != TARGET_ONLY:
            last_of[tp] = max(r.order, last_of.get(tp, -math.inf))
    anchors = sorted(last_of)
    matched = sorted(r.order for r in rows if r.status != TARGET_ONLY)
    groups: dict[float, list[tuple[float, LayerResult]]] = {}
    for r, tp in zip(rows, tpos):
        if r.status == TARGET_ONLY and tp is not None:
            j = bisect.bisect_left(anchors, tp) - 1
            base = last_of[anchors[j]] if j >= 0 else (matched[0] - 1.0 if matched else 0.0)
            groups.setdefault(base, []).append((tp, r))
    for base, members in groups.items():
        k = bisect.bisect_right(matched, base)
        gap = (matched[k] - base) if k < len(matched) else 1.0
        members.sort(key=lambda m: m[0])
        for n, (_, r) in enumerate(members, 1):
            r.order = base + gap * n / (len(members) + 1)


def match_context(matcher: Any, spill_dir: str | None = None, max_memory: int | None = None,
                  device_memory: int | None = None) -> MatchContext:
    """The context the core hands a matcher: the similarity computed by the registered metric it names."""
    from parity.core.registry import get_metric

    similarity = None
    name = getattr(matcher, "similarity_metric", None)
    if name:
        try:
            similarity = metric_similarity(get_metric(name))
        except ParityError:  # not installed (PARITY_LOAD_PLUGINS): the matcher goes without its value step
            similarity = None
    new_parking: Any = Parking
    if device_memory is not None:  # --device-memory: the parking store's budget for device records
        new_parking = functools.partial(Parking, device_budget=device_memory)
    ctx = MatchContext(similarity=similarity, spill_dir=spill_dir, new_parking=new_parking)
    if max_memory is not None and hasattr(ctx, "max_memory"):
        ctx.max_memory = max_memory
    return ctx


def match_pairs(matcher: Any, ref: Iterable[Activation], target: Iterable[Activation],
                rules: MappingRules | None = None, spill_dir: str | None = None,
                max_memory: int | None = None,
                device_memory: int | None = None) -> tuple[Iterator[Pair], MatchContext]:
    """Pair two streams with a matcher (a registered name or an object), mapping ``rules`` applied around it.

    Returns the lazy pair stream and the context whose ``stats`` the matcher fills as it goes.
    """
    from parity.core.registry import get_matcher

    m = get_matcher(matcher) if isinstance(matcher, str) else matcher
    ctx = match_context(m, spill_dir, max_memory, device_memory)
    return Matcher.match(m, ref, target, rules, ctx), ctx


def compare_streams(ref: Iterable[Activation], target: Iterable[Activation],
                    metrics: Sequence[str | Metric] | None = None, *, matcher: Any = "exact",
                    thresholds: dict[str, float] | None = None, options: dict[str, Any] | None = None,
                    ref_label: str = "reference", target_label: str = "target",
                    rules: MappingRules | None = None) -> Report:
    """Pair two activation streams with ``matcher`` and score them: the core of analyze and compare."""
    pairs, _ctx = match_pairs(matcher, ref, target, rules)
    return run_engine(pairs, metrics, thresholds=thresholds, options=options,
                      ref_label=ref_label, target_label=target_label)


def merge_reports(reports: list[Report]) -> Report:
    """Aggregate per-input reports of the same comparison: mean per layer, worst value and which input,
    quantiles, and pooled values of mergeable metrics (the dataset statistics of :mod:`parity.core.stats`).

    Rows are joined by (reference name, target name); a layer missing from some inputs keeps
    what it has and says so.
    """
    from parity.core.stats import DatasetStats

    if not reports:
        raise ParityError("no input was compared. Note: the input source yielded nothing.")
    if len(reports) == 1:
        return reports[0]
    stats = DatasetStats()
    for idx, rep in enumerate(reports):
        stats.add(idx, f"input {idx}", rep)
    base = reports[0]
    out = stats.report(base.metrics, base.ref_label, base.target_label)
    out.summary = {**base.summary, "inputs": len(reports)}
    return out

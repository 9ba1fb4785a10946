"""`parity fix`: find a small set of layers to keep at higher precision, and verify it.

Candidates come from a diagnosed compare run: layers whose reference values overflow the
target format first, then layers by local error. They are added greedily, re-running the
target after each addition and measuring the model outputs against the reference; then each
kept layer is dropped again if the outputs still pass without it. Every similarity printed
was measured; a set that never reached the goal is reported as such, never as a fix.

Sources support this through ``cfg.options["keep_high_precision"]`` (target record keys to
keep at fp32) and ``cfg.options["outputs_only"]`` (capture only the model outputs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from parity.core.compare import CompareSettings, prepare
from parity.core.diagnose import error_of
from parity.contract.report import NEW_NONFINITE, LayerResult, MetricInfo, Report
from parity.contract.errors import ParityError
from parity.contract.metric import Metric, score_pair
from parity.core.registry import get_metric
from parity.contract.source import RunConfig


@dataclass
class FixStep:
    action: str  # "baseline", "add", "drop", "keep"
    layer: str | None
    kept: list[str]
    value: float
    passed: bool


@dataclass
class FixResult:
    goal_metric: str
    goal: float
    before: float
    after: float
    passed: bool
    kept: list[str]  # target record keys
    rows: list[LayerResult] = field(default_factory=list)  # rows of the kept layers (names for paste forms)
    steps: list[FixStep] = field(default_factory=list)
    total_layers: int = 0

    def forms(self, target: str) -> dict[str, str]:
        """The kept set in the spellings users paste into other tools."""
        onnx_nodes = [r.meta.get("target_onnx_node") for r in self.rows]
        modules = [r.meta.get("ref_module_path") or r.ref_name for r in self.rows if (r.ref_name or "")]
        toml = ["[precision]", f'target = "{target}"', "keep_fp32 = ["]
        toml += [f'  "{k}",' for k in self.kept]
        toml.append("]")
        forms: dict[str, str] = {}
        if all(onnx_nodes):
            # TensorRT's ONNX parser names layers after ONNX nodes, so the node names carry over
            forms["trtexec/polygraphy --layer-precisions"] = (",".join(f"{n}:fp32" for n in onnx_nodes)
                                                              + "  (trtexec also: --precisionConstraints=obey)")
            forms["onnxconverter-common node_block_list"] = repr(onnx_nodes)
        else:
            forms["ONNX / TensorRT names"] = ("unknown for this target (it is not ONNX-based); run parity fix "
                                              "with --target ort-fp16 for node names")
        forms["torch autocast: run these modules in fp32"] = repr(modules)
        forms["parity config (TOML)"] = "\n".join(toml)
        return forms


def _goal_passes(value: float, goal: float, metric: Metric) -> bool:
    return not metric.fails(value, goal)


def fix(settings: CompareSettings, report: Report, goal_metric: str = "cosine", goal: float = 0.999,
        max_steps: int = 24, log: Callable[[str], None] | None = None) -> FixResult:
    """Search and verify a keep-in-fp32 set for ``settings.target``, starting from a diagnosed report."""
    metric = get_metric(goal_metric)
    prep = prepare(settings)
    ref_src, tgt_src, base_cfg = prep.ref, prep.target, prep.cfg
    feeds = [f for _, f in prep.feeds]
    say = log or (lambda _m: None)

    def outputs(src: Any, cfg: RunConfig, feed: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
        out = {}
        for a in src.run(cfg, feed):
            if a.meta.get("is_output"):
                out[int(a.meta.get("output_position", a.output_index))] = np.array(a.array)
        return out

    out_cfg = RunConfig(**{**base_cfg.__dict__, "options": {**base_cfg.options, "outputs_only": True}})
    ref_out = [outputs(ref_src, out_cfg, f) for f in feeds]

    def measure(keep: list[str]) -> float:
        cfg = RunConfig(**{**out_cfg.__dict__, "options": {**out_cfg.options, "keep_high_precision": list(keep)}})
        worst = None
        for f, ro in zip(feeds, ref_out):
            to = outputs(tgt_src, cfg, f)
            if set(to) != set(ro):
                raise ParityError(f"{settings.target}: outputs {sorted(to)} do not match the reference's {sorted(ro)}.")
            for k in ro:
                vals, ctx = score_pair(ro[k], to[k], [metric])
                # NaN/Inf in an output is a failure, however well the finite part agrees
                v = math.nan if ctx.tgt_new_nonfinite else vals[metric.name]
                if worst is None or metric.fails(v, worst):
                    worst = v
        return float("nan") if worst is None else float(worst)

    # candidates: overflow first, then local error (accumulated error when no local run exists)
    # the primary metric's own error ranks layers: for a distance (l2, max-abs) the value, for a
    # similarity its distance from perfect; either way 0 = no loss, larger = more
    pinfo = report.primary or MetricInfo(metric.name, metric.higher_is_better, metric.percent, goal,
                                         metric.description, metric=metric)
    p = pinfo.name
    has_local = any(r.local for r in report.layers)

    def risk(row: LayerResult) -> tuple:
        # causes, not inheritors: with local runs, NaN/Inf and error are the layer's own; every layer
        # after an overflow also shows NaN end to end, so accumulated NaN ranks only without local runs
        local_nf = row.local.get(NEW_NONFINITE, 0) > 0
        overflow = "overflows" in (row.range.get("risk") or "")
        over = 1 if local_nf or overflow or (not has_local and row.meta.get("target_new_nonfinite", 0) > 0) else 0
        e = error_of(row.local.get(p), pinfo) if row.local else None
        if e is None:
            e = error_of(row.worst.get(p, row.values.get(p)), pinfo) or 0.0
        return (bool(row.local) or not has_local, over, e)

    rows = [r for r in report.layers if r.target_name is not None and r.ref_name is not None
            and not r.meta.get("ref_is_output")]  # the model-output record is not a layer to keep
    by_key: dict[str, LayerResult] = {}
    for r in sorted(rows, key=risk, reverse=True):
        by_key.setdefault(r.target_name, r)  # one candidate per target layer, its riskiest row
    cands = [k for k, r in by_key.items() if risk(r)[1:] > (0, 0.0)]

    steps: list[FixStep] = []
    before = measure([])
    passed = _goal_passes(before, goal, metric)
    steps.append(FixStep("baseline", None, [], before, passed))
    say(f"baseline: {goal_metric} {metric.format(before)}")
    kept: list[str] = []
    value = before
    for k in cands[:max_steps]:
        if passed:
            break
        kept.append(k)
        value = measure(kept)
        passed = _goal_passes(value, goal, metric)
        steps.append(FixStep("add", k, list(kept), value, passed))
        say(f"keep {k}: {goal_metric} {metric.format(value)}")
    if passed and kept:
        for k in list(kept):
            trial = [x for x in kept if x != k]
            v = measure(trial)
            if _goal_passes(v, goal, metric):
                kept, value = trial, v
                steps.append(FixStep("drop", k, list(kept), v, True))
                say(f"drop {k}: {goal_metric} {metric.format(v)} still passes")
    return FixResult(goal_metric, goal, before, value, passed, kept, [by_key[k] for k in kept], steps,
                     total_layers=len(by_key))

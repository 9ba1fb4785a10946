"""`parity fix`: find a small set of layers to keep at higher precision, and verify it.

Candidates are every target node of a diagnosed compare run, target-only ones included (a
Transpose or Cast the reference never names can be the node that must stay fp32):

1. out-of-range groups: a node whose reference values exceed the target format, with the nodes
   that pass the value on still out of range and the nodes that consume it (keeping only the
   producer hands an fp32 value to an fp16 consumer, which overflows all the same);
2. bad int8 quantizers (``diagnose.quantizer_stats``): the node producing the tensor with the
   nodes reading it, worst first;
3. nodes producing NaN/Inf alone;
4. nodes by local error (accumulated error where no local run exists), skipping those that add
   less than ``NEGLIGIBLE_SHARE`` of the error the goal allows (``diagnose``: the same floor keeps
   such a layer from being a culprit).

They are added greedily, a group at a time, re-running the target after each addition and
measuring the model outputs against the reference; then each kept node is dropped again if the
outputs still pass without it. Every similarity printed was measured; a set that never reached
the goal is reported as such, never as a fix, with why the search stopped.

Sources support this through ``cfg.keep_high_precision`` (target record keys to keep at fp32;
a target without ``supports_keep_high_precision`` is refused) and ``cfg.outputs_only`` (capture only
the model outputs, asked of sources with ``supports_outputs_only``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from parity.core.compare import CompareSettings, prepare
from parity.core.diagnose import NEGLIGIBLE_SHARE, SATURATED, error_of
from parity.contract.capability import NumberFormat
from parity.contract.report import NEW_NONFINITE, LayerResult, MetricInfo, Report
from parity.contract.errors import ParityError, first_line
from parity.contract.metric import Metric
from parity.lib.scoring import score_pair
from parity.core.registry import check_run_fields, get_metric, get_source
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
    total_layers: int = 0  # target nodes searched over
    #: why the search ended, in words (goal met, --max-steps reached, candidates exhausted)
    stopped: str = ""
    candidates: int = 0  # candidate steps (a group of nodes counts once)
    tried: int = 0
    #: the best value measured on the way, and its set (``after`` is the last set's value)
    best: float = math.nan
    best_kept: list[str] = field(default_factory=list)
    #: what the measured numbers mean (the target source's ``semantics``): a fix verified under a CPU
    #: provider's fp16 is not one verified under strict fp16 storage
    semantics: str | None = None
    #: the target's number format (its source's typed ``number_format``): which tools' recipes apply
    number_format: NumberFormat = NumberFormat.FP16

    def forms(self, target: str) -> dict[str, str]:
        """The kept set in the spellings users paste into other tools, each as that tool takes it."""
        onnx_nodes = [r.meta.get("target_onnx_node") for r in self.rows]
        modules = [r.meta.get("ref_module_path") or r.ref_name for r in self.rows if (r.ref_name or "")]
        toml = ["[precision]", f'target = "{target}"', "keep_fp32 = ["]
        toml += [f'  "{k}",' for k in self.kept]
        toml.append("]")
        forms: dict[str, str] = {}
        int8 = self.number_format is NumberFormat.INT8
        if onnx_nodes and all(onnx_nodes):
            forms.update((int8_tool_forms if int8 else tool_forms)([str(n) for n in onnx_nodes]))
        else:
            forms["ONNX / TensorRT names"] = ("unknown for this target (it is not ONNX-based); run parity fix "
                                              f"with --target {'ort-int8' if int8 else 'ort-fp16'} for node names")
        # a quantized target (int8, fp8, int4, nvfp4, or a ModelOpt config mixing them): the kept modules'
        # quantizers are what to disable, whichever format they quantize to
        if self.number_format.quantized or self.number_format is NumberFormat.MIXED:
            # ModelOpt's torch quantizers sit on modules: a target-only MatMul/Gemm/Conv is its Linear's or
            # Conv's arithmetic (export namespace), a mask Add or Softmax no quantizer's at all
            qmods = [r.meta.get("ref_module_path") or r.ref_name if r.ref_name else
                     (r.meta.get("module") if r.target_op_type in ("MatMul", "Gemm", "Conv", "ConvTranspose") else None)
                     for r in self.rows]
            forms.update(modelopt_disable_forms(list(dict.fromkeys(m for m in qmods if m))))
        else:
            forms["torch autocast: run these modules in fp32"] = repr(modules)
        forms["parity config (TOML)"] = "\n".join(toml)
        return forms


def _tensorrt_args(nodes: list[str], flags: list[str] | None = None) -> tuple[str, str]:
    """trtexec's and Polygraphy's arguments keeping ``nodes`` in fp32 (after ``flags``), shell-quoted."""
    import shlex

    trtexec = " ".join(shlex.quote(a) for a in (
        *(flags or []),
        "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in nodes),
        "--layerOutputTypes=" + ",".join(f"{n}:fp32" for n in nodes),
        "--precisionConstraints=obey"))
    polygraphy = " ".join([*(flags or []), "--layer-precisions", *(shlex.quote(f"{n}:float32") for n in nodes),
                           "--precision-constraints", "obey"])
    return trtexec, polygraphy


def tool_forms(nodes: list[str]) -> dict[str, str]:
    """ONNX node names kept in fp32, spelled for each tool: shell arguments quoted, Python lists as literals.

    TensorRT's ONNX parser names layers after ONNX nodes, so the node names carry over to trtexec and
    Polygraphy; ``--layerOutputTypes`` too, or TensorRT may still hand the layer's result on in fp16, and
    ``obey`` makes the builder fail rather than silently ignore a constraint.
    """
    import re

    trtexec, polygraphy = _tensorrt_args(nodes)
    return {
        "trtexec": trtexec,
        "polygraphy run / convert": polygraphy,
        "ONNX Runtime fp16 (onnxconverter-common)":
            f"float16.convert_float_to_float16(model, keep_io_types=True, node_block_list={nodes!r})",
        # AutoCast reads each entry as a regular expression: escaped and anchored, it names one node
        "ModelOpt AutoCast": f"convert_to_mixed_precision(onnx_path=..., low_precision_type='fp16', "
                             f"nodes_to_exclude={['^' + re.escape(n) + '$' for n in nodes]!r})",
    }


def int8_tool_forms(nodes: list[str]) -> dict[str, str]:
    """ONNX node names left unquantized (fp32), spelled for each int8 tool; never an fp16 recipe.

    ONNX Runtime's ``quantize_static`` and ModelOpt's ONNX PTQ take node names to exclude (ModelOpt
    reads them as regular expressions: escaped and anchored). TensorRT's implicit int8 (``--int8`` on
    a model without Q/DQ nodes, calibrated by TensorRT) takes per-layer precisions as for fp16; a QDQ
    model's precision is its Q/DQ nodes, so for one, quantize again with the exclusions (or take
    ``--write-model``'s file).
    """
    import re

    trtexec, polygraphy = _tensorrt_args(nodes, ["--int8"])
    anchored = ["^" + re.escape(n) + "$" for n in nodes]
    return {
        "ONNX Runtime int8 (quantize_static)":
            f"quantize_static(model_input, model_output, calibration_data_reader, quant_format=QuantFormat.QDQ, "
            f"activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude={nodes!r})",
        "ModelOpt ONNX PTQ": f"modelopt.onnx.quantization.quantize(onnx_path=..., quantize_mode='int8', "
                             f"nodes_to_exclude={anchored!r})",
        "trtexec (implicit int8, a model without Q/DQ)": trtexec,
        "polygraphy run / convert (implicit int8)": polygraphy,
    }


def modelopt_disable_forms(modules: list[str]) -> dict[str, str]:
    """The kept torch modules' ModelOpt quantizers to disable (fake-quant on the torch model).

    ModelOpt names a module's quantizers ``<module>.input_quantizer`` / ``weight_quantizer`` /
    ``output_quantizer`` and matches ``quantizer_name`` with fnmatch, so ``<module>.*`` disables
    exactly that module's. Target-only ONNX nodes (a mask Add, a Softmax) have no module: ModelOpt's
    torch int8 configurations do not quantize them in the first place.
    """
    label = "ModelOpt torch: quantizers to disable"
    if not modules:
        return {label: "none: the kept nodes are ONNX nodes without a torch module (exclude them in the ONNX "
                       "quantizer above)"}
    entries = [{"quantizer_name": f"{m}.*", "enable": False} for m in modules]
    calls = "; ".join(f"mtq.disable_quantizer(model, {f'{m}.*'!r})" for m in modules)
    return {label: f"config['quant_cfg'] += {entries!r}  # or, after mtq.quantize: {calls}"}


def _goal_passes(value: float, goal: float, metric: Metric) -> bool:
    return not metric.fails(value, goal)


def check_fixable(target: str) -> None:
    """Refuse (exit 2) a target that cannot keep layers in high precision before the compare runs:
    ``parity fix`` would otherwise diagnose it, then search keep sets that change nothing. An unknown
    name is left to the compare's own check, which lists the known ones."""
    try:
        src = get_source(target)
    except ParityError:
        return
    check_run_fields(src, RunConfig(model="", keep_high_precision=("?",)))


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
                out[int(a.meta.get("output_position", a.output_index))] = np.array(a.host())
        return out

    # the search keeps layers in the target and re-measures outputs: a target that cannot keep any is
    # refused here (exit 2) rather than searched to no effect; outputs only is asked where honoured
    check_run_fields(tgt_src, replace(base_cfg, keep_high_precision=("?",)))
    ref_out = [outputs(ref_src, replace(base_cfg, outputs_only=ref_src.supports_outputs_only), f) for f in feeds]
    out_cfg = replace(base_cfg, outputs_only=tgt_src.supports_outputs_only)

    def measure(keep: list[str]) -> float:
        cfg = replace(out_cfg, keep_high_precision=tuple(keep))
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

    # ---------------------------------------------------------------- candidates
    # Every target node is a candidate, target-only ones (a Transpose the reference never names)
    # included. The primary metric's own error ranks them (0 = no loss, larger = more).
    pinfo = report.primary or MetricInfo(metric.name, metric.higher_is_better, metric.percent, goal,
                                         metric.description, metric=metric)
    p = pinfo.name
    has_local = any(r.local for r in report.layers)
    nodes: dict[str, LayerResult] = {}
    for r in sorted(report.layers, key=lambda r: r.order):
        if r.target_name is None or r.meta.get("ref_is_output"):
            continue  # the model-output record repeats its producer's row
        nodes.setdefault(r.target_name, r)
        if r.ref_name is not None and nodes[r.target_name].ref_name is None:
            nodes[r.target_name] = r  # a matched row names the layer in the paste forms
    order = list(nodes)

    def error(row: LayerResult) -> float:
        e = error_of(row.local.get(p), pinfo) if row.local else None
        if e is None and not has_local:
            e = error_of(row.worst.get(p, row.values.get(p)), pinfo)
        return 0.0 if e is None else float(e)

    def out_of_range(row: LayerResult) -> bool:
        """Its reference output exceeds the target format (range trace, or saturation when run alone)."""
        return "overflows" in (row.range.get("risk") or "") or row.local.get(SATURATED, 0) > 0

    def nonfinite(row: LayerResult) -> bool:
        """NaN/Inf of its own: alone with local runs, end to end without (every later layer inherits it)."""
        if has_local:
            return row.local.get(NEW_NONFINITE, 0) > 0
        return row.meta.get("target_new_nonfinite", 0) > 0

    def consumers(key: str) -> list[str]:
        """The nodes reading ``key``'s output (the source's graph), else the next node in execution order."""
        names = [c for c in (nodes[key].meta.get("local_consumers") or []) if c in nodes]
        if names or nodes[key].meta.get("local_consumers"):
            return names
        i = order.index(key)
        return order[i + 1:i + 2]

    # 1. an out-of-range value must stay fp32 until a node brings it back into range: the node
    #    producing it, every node passing it on out of range, and the nodes consuming it
    groups: list[list[str]] = []
    grouped: set[str] = set()
    for key in order:
        if key in grouped or not out_of_range(nodes[key]):
            continue
        group, todo = [], [key]
        while todo:
            k = todo.pop(0)
            if k in group:
                continue
            group.append(k)
            if out_of_range(nodes[k]) and len(group) < 32:
                todo += consumers(k)
        groups.append(group)
        grouped.update(group)
    # 2. a bad int8 quantizer (a mask constant in its calibration, an outlier channel; see
    #    diagnose.quantizer_stats): the node producing its tensor and the nodes reading it, one step.
    #    Excluding the producer alone leaves the quantizer in place for its quantized consumers
    #    (ORT quantizes a consumer's inputs), so the mask-add goes with its Softmax and the outlier
    #    LayerNorm with the Linear reading it
    floor = NEGLIGIBLE_SHARE * (metric.error(goal) if math.isfinite(metric.error(goal)) else 0.0)
    qgroups: list[tuple[float, list[str]]] = []
    for key in order:
        q = nodes[key].meta.get("local_quantizer")
        if key in grouped or not (isinstance(q, dict) and q.get("bad")):
            continue
        group = [key] + [c for c in consumers(key) if c not in grouped and c != key]
        weight = max(error(nodes[k]) for k in group)
        if weight > floor:
            qgroups.append((weight, group))
            grouped.update(group)
    qgroups.sort(key=lambda x: -x[0])
    groups += [g for _, g in qgroups]
    # 3. NaN/Inf produced alone, then 4. local error that can matter at the goal: a layer adding
    #    less than 1% of the error the goal allows is never a candidate (keeping it changes nothing)
    singles = [k for k in order if k not in grouped and nonfinite(nodes[k])]
    rest = sorted((k for k in order if k not in grouped and k not in singles and error(nodes[k]) > floor),
                  key=lambda k: -error(nodes[k]))
    cands: list[list[str]] = groups + [[k] for k in singles + rest]
    negligible = len(order) - len(grouped) - len(singles) - len(rest)

    steps: list[FixStep] = []
    before = measure([])
    passed = _goal_passes(before, goal, metric)
    steps.append(FixStep("baseline", None, [], before, passed))
    say(f"baseline: {goal_metric} {metric.format(before)}")
    kept: list[str] = []
    value = before
    best = (before, [])
    tried = 0
    skipped: list[str] = []
    for group in cands:
        if passed or tried >= max_steps:
            break
        tried += 1
        trial = kept + [k for k in group if k not in kept]
        try:
            v = measure(trial)
        except ParityError as e:  # this source cannot keep that node (a torch op outside any module)
            skipped.append(f"{'+'.join(group)} ({first_line(e)})")
            say(f"cannot keep {'+'.join(group)}: {first_line(e)}")
            continue
        kept, value = trial, v
        passed = _goal_passes(value, goal, metric)
        steps.append(FixStep("add", "+".join(group), list(kept), value, passed))
        say(f"keep {'+'.join(group)}: {goal_metric} {metric.format(value)}")
        if metric.fails(best[0], value) and not math.isnan(value):
            best = (value, list(kept))
    if passed and kept:
        for k in list(kept):
            trial = [x for x in kept if x != k]
            v = measure(trial)
            if _goal_passes(v, goal, metric):
                kept, value = trial, v
                steps.append(FixStep("drop", k, list(kept), v, True))
                say(f"drop {k}: {goal_metric} {metric.format(v)} still passes")
    left = len(cands) - tried
    if passed:
        stopped = "the goal was met" if tried else "the outputs already met the goal"
    elif left:
        stopped = (f"--max-steps {max_steps} reached with {left} of {len(cands)} candidates untried "
                   f"(raise --max-steps to try them)")
    elif negligible:
        stopped = (f"every candidate was tried ({len(cands)}: out-of-range groups, NaN/Inf sources, layers by "
                   f"local error); the other {negligible} of {len(order)} target nodes add less than "
                   f"{floor:.3g} {goal_metric} error alone, so keeping them cannot reach the goal")
    else:
        stopped = (f"every candidate was tried, all {len(order)} target nodes, and the outputs still fail: the loss "
                   f"lies where keeping captured nodes cannot reach (a node whose output is not captured, such as "
                   f"a Conv fused with its BatchNormalization, or the inputs' cast)")
    if skipped:
        stopped += f"; {len(skipped)} could not be kept: {'; '.join(skipped[:3])}"
    return FixResult(goal_metric, goal, before, value, passed, kept, [nodes[k] for k in kept], steps,
                     total_layers=len(order), stopped=stopped, candidates=len(cands), tried=tried,
                     best=best[0], best_kept=best[1], semantics=tgt_src.semantics,
                     number_format=getattr(tgt_src, "number_format", NumberFormat.FP32))


def write_fixed_model(settings: CompareSettings, res: FixResult, path: str) -> str:
    """Write the target's model with ``res.kept`` left in fp32 to ``path`` (atomically).

    The target's source writes it (``Capability.WRITE_FIXED_MODEL``: the ONNX Runtime targets run the
    same conversion with the kept nodes block-listed or excluded from quantization), so the file is
    the model the fix measured. A target without it is refused, naming the targets that have it.
    """
    from parity.contract.capability import Capability
    from parity.core.capabilities import require, write_fixed_model as dispatch
    from parity.core.registry import get_source

    what = f"--write-model {path}"
    if not res.kept or not all(r.meta.get("target_onnx_node") for r in res.rows):
        raise ParityError(f"{what}: no ONNX model to write for target {settings.target!r}. "
                          f"Note: {'nothing was kept' if not res.kept else 'its layers are not ONNX nodes'}; "
                          f"the fixed model is written for ONNX targets (ort-fp16, ort-fp16-strict, ort-int8)")
    # refused before anything runs: a target that cannot write one may not even run here (TensorRT)
    require(get_source(settings.target), Capability.WRITE_FIXED_MODEL, settings.target, what)
    prep = prepare(settings)
    fixed = dispatch(prep.target, settings.target, prep.cfg, prep.feeds.first()[1], list(res.kept), path, what)
    return str(fixed.path)

"""Outputs as deployed: every target also runs with nothing captured, and the report says whether
capturing changed its answer.

Why: a capture makes a runtime hand out tensors it would otherwise keep to itself, and that can
change the computation (the observer effect): ONNX Runtime stores a marked tensor in the graph's
type, TensorRT cannot fuse across a marked tensor, a marked output pins a precision. A diagnosis
of a run that is not the deployed run sends an engineer after the wrong layer. So on every feed
the target also runs *outputs only* (no capture, the model as deployed; ``outputs_only`` of the
run configuration, the same run ``parity fix`` measures with), and its outputs are scored against
the reference beside the captured run's.

The captured outputs count as *perturbed* when, on some feed, they differ from the deployed
outputs by more than the target's own run-to-run noise (measured by running the deployed model
twice on the first feed) and more than :data:`PERTURB_RTOL` of the output's largest magnitude, or
when one of the two holds NaN/Inf where the other does not. Why ``2**-13``: reassociating float32
sums (a fused kernel instead of two) moves an output by a few float32 ulps relative to its
magnitude (``2**-23`` each), orders of magnitude below this; one float16 rounding of an
intermediate value (``2**-11`` relative) that reaches the output is above it. Then the report's
pass/fail gate judges the deployed outputs, and every per-layer row carries a note that capture
perturbed it.

Every value kept here merges exactly (maxima, minima with the lowest input index on ties, integer
counts), so ``--workers N`` gives one process's numbers bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from parity.contract.metric import Metric
from parity.lib.scoring import score_pair
from parity.contract.records import Activation
from parity.contract.report import MetricInfo

#: relative difference (to the output's largest magnitude) above which capture changed an output
PERTURB_RTOL = 2.0 ** -13

__all__ = ["DeployedStats", "OutputCheck", "PERTURB_RTOL", "collect_outputs", "relative_diff"]


def collect_outputs(stream: Iterable[Activation]) -> dict[int, Activation]:
    """The model outputs of a run, by output position (arrays are the run's own)."""
    out: dict[int, Activation] = {}
    for a in stream:
        if a.meta.get("is_output"):
            out[int(a.meta.get("output_position", a.output_index or 0))] = a
    return out


def _nonfinite_new(ref: np.ndarray, tgt: np.ndarray) -> int:
    """Target elements that are NaN/Inf where the reference is finite."""
    r = np.asarray(ref).ravel()
    t = np.asarray(tgt).ravel()
    if r.size != t.size or t.dtype.kind != "f":
        return 0
    return int(np.count_nonzero(~np.isfinite(t) & np.isfinite(r)))


def relative_diff(a: np.ndarray, b: np.ndarray) -> float:
    """``max|a - b| / max|b|`` over elements finite in both (0 when ``b`` is all zero and equal)."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.size != y.size:
        return math.inf
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return 0.0
    d = float(np.max(np.abs(x[ok] - y[ok])))
    scale = float(np.max(np.abs(y[ok])))
    if d == 0.0:
        return 0.0
    return d / scale if scale > 0 else math.inf


def _worse(info: MetricInfo, a: float, b: float) -> bool:
    """Whether ``a`` is a worse value of ``info``'s metric than ``b`` (NaN is worst)."""
    if math.isnan(a):
        return not math.isnan(b)
    if math.isnan(b):
        return False
    return info.error(a) > info.error(b)


@dataclass
class OutputCheck:
    """One model output over every feed: the deployed run against the reference and the captured run."""

    name: str
    position: int
    #: per metric: the worst value of deployed vs reference over the inputs, and the input giving it
    values: dict[str, float] = field(default_factory=dict)
    worst_input: dict[str, int] = field(default_factory=dict)
    #: per metric: the worst value of captured vs reference (what the layer rows say of this output)
    captured: dict[str, float] = field(default_factory=dict)
    #: elements NaN/Inf where the reference is finite, summed over inputs
    nonfinite: int = 0
    captured_nonfinite: int = 0
    #: largest ``max|captured - deployed| / max|deployed|`` over inputs, and the input giving it
    capture_diff: float = 0.0
    diff_input: int = -1

    def merge(self, other: "OutputCheck", infos: list[MetricInfo]) -> None:
        by = {i.name: i for i in infos}
        for k, v in other.values.items():
            mine = self.values.get(k)
            i = other.worst_input.get(k, -1)
            if mine is None or _worse(by[k], v, mine) or (not _worse(by[k], mine, v) and i < self.worst_input.get(k, -1)):
                self.values[k], self.worst_input[k] = v, i
        for k, v in other.captured.items():
            mine = self.captured.get(k)
            if mine is None or _worse(by[k], v, mine):
                self.captured[k] = v
        self.nonfinite += other.nonfinite
        self.captured_nonfinite += other.captured_nonfinite
        if other.capture_diff > self.capture_diff or (other.capture_diff == self.capture_diff
                                                      and 0 <= other.diff_input < self.diff_input):
            self.capture_diff, self.diff_input = other.capture_diff, other.diff_input


@dataclass
class DeployedStats:
    """The deployed-outputs check of a whole comparison (mergeable across workers)."""

    outputs: dict[int, OutputCheck] = field(default_factory=dict)
    #: run-to-run noise of the deployed target, relative to the outputs' magnitude (first feed)
    noise: float = 0.0
    #: what the target's numbers mean (``Source.semantics``), when the source says
    semantics: str | None = None
    #: op type -> nodes the target ran in float32 under a reduced-precision model (its records'
    #: ``fp32_fallback_ops`` meta: ONNX Runtime's CPU provider for ops without a float16 kernel)
    fallback: dict[str, int] = field(default_factory=dict)
    #: the file the deployed run executed, when the source names it (``deployed_model_file`` meta)
    model_file: str | None = None

    def add(self, index: int, ref: dict[int, Activation], captured: dict[int, Activation],
            deployed: dict[int, Activation], metrics: list[Metric], infos: list[MetricInfo],
            options: dict[str, Any] | None = None) -> None:
        """Fold one feed in: each output position present in all three runs."""
        part = DeployedStats(noise=self.noise, semantics=self.semantics)
        for pos in sorted(deployed):
            if pos not in ref:
                continue
            r, d = ref[pos].host(), deployed[pos].host()
            if r.size != d.size:
                continue
            oc = OutputCheck(deployed[pos].key, pos)
            values, _ = score_pair(r, d, metrics, options)
            oc.values = {k: float(v) for k, v in values.items() if v is not None}
            oc.worst_input = {k: index for k in oc.values}
            oc.nonfinite = _nonfinite_new(r, d)
            c = captured.get(pos)
            if c is not None and not part.fallback:
                part.fallback = dict(c.meta.get("fp32_fallback_ops") or {})
            part.model_file = part.model_file or deployed[pos].meta.get("deployed_model_file")
            if c is not None and math.prod(c.shape) == d.size:
                ca = c.host()
                cvalues, _ = score_pair(r, ca, metrics, options)
                oc.captured = {k: float(v) for k, v in cvalues.items() if v is not None}
                oc.captured_nonfinite = _nonfinite_new(r, ca)
                oc.capture_diff = relative_diff(ca, d)
                oc.diff_input = index
            part.outputs[pos] = oc
        self.merge(part, infos)

    def merge(self, other: "DeployedStats", infos: list[MetricInfo]) -> "DeployedStats":
        for pos, oc in other.outputs.items():
            mine = self.outputs.get(pos)
            if mine is None:
                self.outputs[pos] = oc
            else:
                mine.merge(oc, infos)
        self.noise = max(self.noise, other.noise)
        self.semantics = self.semantics or other.semantics
        self.fallback = self.fallback or dict(other.fallback)
        self.model_file = self.model_file or other.model_file
        return self

    def tolerance(self) -> float:
        return max(self.noise, PERTURB_RTOL)

    def perturbed(self) -> list[OutputCheck]:
        """Outputs whose captured values are not the deployed ones (see the module docstring)."""
        tol = self.tolerance()
        return [oc for _, oc in sorted(self.outputs.items())
                if oc.capture_diff > tol or oc.nonfinite != oc.captured_nonfinite]

    def summary(self, primary: MetricInfo | None) -> dict[str, Any]:
        """The report's ``summary["deployed"]`` (schema in docs/report-schema.md)."""
        bad = {oc.position for oc in self.perturbed()}
        out: dict[str, Any] = {
            "perturbed": bool(bad),
            "tolerance": self.tolerance(),
            "noise": self.noise,
            "outputs": [{
                "name": oc.name, "position": oc.position, "values": dict(oc.values),
                "worst_input": dict(oc.worst_input), "captured_values": dict(oc.captured),
                "nonfinite": oc.nonfinite, "captured_nonfinite": oc.captured_nonfinite,
                "capture_diff": oc.capture_diff, "perturbed": oc.position in bad,
            } for _, oc in sorted(self.outputs.items())],
        }
        if self.semantics:
            out["semantics"] = self.semantics
        if self.model_file:
            out["model_file"] = self.model_file
        if self.fallback:
            out["fp32_fallback_ops"] = dict(sorted(self.fallback.items()))
        if primary is not None:
            out["primary"] = primary.name
        return out

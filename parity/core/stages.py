"""Staged attribution (``parity compare --stages``): which step of deployment owns the loss.

One model goes through stages, each a target of its own: ``modelopt-int8`` (quantization: ModelOpt's
fake-quantized torch model) → ``onnx-qdq`` (export: its Q/DQ ONNX run literally) → ``ort`` (runtime:
the same file as ONNX Runtime deploys it, int8 kernels) → ``trt`` where TensorRT runs. Every stage is
compared with the same fp32 reference, so a layer's error at stage *k* is the error of everything up
to *k*; what stage *k* **adds** is that error minus the previous stage's. The verdict names the stage
adding the most error at the model outputs; each layer names the stage adding the most to it.

Why differences of errors against one reference, not stage-to-stage comparisons: each figure is then
a plain compare run a user can repeat (``parity compare --target <stage>``), and the per-stage
additions sum to the final error exactly.

Stage names are source names, plus aliases resolved from the stage before them (:func:`resolve`) as
that stage's source declares them (``Source.stage_aliases``); a stage's kind is its source's typed
``Source.stage_kind``, never read from its name. After ``modelopt-int8``: ``onnx-qdq`` →
``modelopt-int8-qdq``, ``ort`` → ``modelopt-int8-ort``, ``trt`` → ``trt-int8``; after ``torch-fp16``: ``onnx-fp16`` → ``ort-fp16-strict`` (every tensor stored in fp16, as exported),
``ort`` → ``ort-fp16`` (the CPU provider as deployed), ``trt`` → ``trt-fp16``. A stage whose source
cannot run here (TensorRT without a GPU) is left out and said so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from parity.contract.capability import StageKind
from parity.contract.errors import ParityError, UsageError
from parity.contract.report import Report
from parity.core.registry import all_of, get_source

def kind_of(source: Any) -> str:
    """What kind of step a stage is: its source's typed ``stage_kind`` (``source`` is a source or the
    name it is registered under); ``stage`` for a name no source answers to."""
    src = _source(source) if isinstance(source, str) else source
    return str(StageKind(getattr(src, "stage_kind", StageKind.STAGE)))


def resolve(stages: list[str]) -> list[str]:
    """Stage names as source names; refuses an alias with no base.

    A short name (``ort``, ``trt``, ``onnx-qdq``, ``onnx-fp16``: any key of a source's typed
    ``stage_aliases``) means what the last quantization or precision stage before it says it means.
    """
    words = {a for src in all_of("source").values() for a in getattr(src, "stage_aliases", {})}
    out: list[str] = []
    base: Any = None
    for raw in stages:
        s = raw.strip()
        if not s:
            continue
        if s in words:
            if base is None:
                raise UsageError(f"--stages {','.join(stages)}: {s!r} needs a precision stage before it "
                                 f"(modelopt-int8, torch-fp16). Note: e.g. --stages modelopt-int8,onnx-qdq,ort")
            aliases = getattr(base, "stage_aliases", {})
            if s not in aliases:
                raise UsageError(f"--stages: {s!r} does not follow {base.name!r}. Note: after {base.name}: "
                                 f"{', '.join(aliases) or 'no short name'}")
            out.append(aliases[s])
        else:
            src = _source(s)
            if src is not None and kind_of(src) in (StageKind.QUANTIZATION, StageKind.PRECISION):
                base = src
            out.append(s)
    if not out:
        raise UsageError("--stages names no stage. Note: e.g. --stages modelopt-int8,onnx-qdq,ort")
    return out


def _source(name: str) -> Any:
    """The source registered as ``name``, or None (an unknown name is refused later, by the compare)."""
    try:
        return get_source(name)
    except ParityError:
        return None


@dataclass
class StagedReport:
    """Every stage's report and what each stage adds, per layer and at the outputs."""

    stages: list[str]
    reports: list[Report]
    metric: str
    #: per stage: the error at the model outputs (the worst output), in the primary metric's error units
    output_error: list[float]
    #: layer name -> error per stage (NaN where the stage has no such layer)
    layers: dict[str, list[float]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def added(self, errors: list[float]) -> list[float]:
        prev = 0.0
        out = []
        for e in errors:
            out.append(e - prev if not (math.isnan(e) or math.isnan(prev)) else math.nan)
            prev = e if not math.isnan(e) else prev
        return out

    @property
    def owner(self) -> int:
        """Index of the stage adding the most error at the outputs."""
        add = self.added(self.output_error)
        return max(range(len(add)), key=lambda i: -math.inf if math.isnan(add[i]) else add[i])

    def verdict(self) -> str:
        i = self.owner
        add = self.added(self.output_error)
        total = self.output_error[-1]
        share = f" ({add[i] / total:.0%} of it)" if total > 0 and not math.isnan(add[i]) else ""
        return (f"the {kind_of(self.stages[i])} stage ({self.stages[i]}) owns the loss: it adds {add[i]:.4g} of the "
                f"outputs' {total:.4g} {self.metric} error{share}")

    def layer_owner(self, name: str) -> int | None:
        add = self.added(self.layers[name])
        ok = [k for k in range(len(add)) if not math.isnan(add[k])]
        return max(ok, key=lambda k: add[k]) if ok else None

    def lines(self) -> list[str]:
        """The staged report as text: one column per stage (the error it adds), the owner per layer."""
        heads = [f"{s} (+{kind_of(s)})" for s in self.stages]
        width = max([len("layer")] + [len(n) for n in self.layers]) + 2
        out = [f"staged attribution, {self.metric} error added by each stage (each stage vs the same reference):",
               "layer".ljust(width) + "".join(h.rjust(max(14, len(h) + 2)) for h in heads) + "  owner"]
        for name, errs in self.layers.items():
            add = self.added(errs)
            who = self.layer_owner(name)
            out.append(name.ljust(width) + "".join(
                ("" if math.isnan(a) else f"{a:+.4g}").rjust(max(14, len(h) + 2)) for a, h in zip(add, heads))
                + "  " + (self.stages[who] if who is not None else "-"))
        for s in self.skipped:
            out.append(f"stage left out: {s}")
        out.append(f"verdict: {self.verdict()}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (a missing figure, NaN, is null)."""
        def clean(v: Any) -> Any:
            if isinstance(v, float) and math.isnan(v):
                return None
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        return {k: clean(v) if not isinstance(v, list) or k != "layers" else v for k, v in self._dict().items()}

    def _dict(self) -> dict[str, Any]:
        return {"stages": self.stages, "kinds": [kind_of(s) for s in self.stages], "metric": self.metric,
                "output_error": self.output_error, "output_added": self.added(self.output_error),
                "owner": self.stages[self.owner], "verdict": self.verdict(), "skipped": self.skipped,
                "layers": [{"name": n, "error": _nulls(e), "added": _nulls(self.added(e)),
                            "owner": (self.stages[w] if (w := self.layer_owner(n)) is not None else None)}
                           for n, e in self.layers.items()]}


def staged_compare(settings: Any, stages: list[str]) -> StagedReport:
    """Compare ``settings``'s model against each stage in turn (same reference, feeds and calibration)."""
    from parity.core.compare import compare

    names = resolve(stages)
    runnable, skipped = [], []
    for n in names:
        why = get_source(n).check()
        if why is not None:
            skipped.append(f"{n}: {why}")
        else:
            runnable.append(n)
    if not runnable:
        raise UsageError(f"--stages: no stage runs here ({'; '.join(skipped)})")
    reports = [compare(replace(settings, target=n)) for n in runnable]
    primary = reports[0].primary
    assert primary is not None
    p = primary.name

    def err(row: Any) -> float:
        v = row.values.get(p)
        return math.nan if v is None else float(primary.error(v))

    out_err = []
    for r in reports:
        outs = [err(row) for row in r.layers if row.meta.get("ref_is_output") or row.name == "output"]
        out_err.append(max(outs) if outs else math.nan)
    layers: dict[str, list[float]] = {}
    for k, r in enumerate(reports):
        for row in r.layers:
            if row.ref_name is None:
                continue
            layers.setdefault(row.ref_name, [math.nan] * len(reports))[k] = err(row)
    return StagedReport(runnable, reports, p, out_err, layers, skipped)


def _nulls(values: list[float]) -> list[float | None]:
    return [None if math.isnan(v) else v for v in values]

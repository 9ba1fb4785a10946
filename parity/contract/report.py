"""The report data model: what a comparison produced, without arrays.

Reporters (table, JSON, CSV, HTML ...) and the core share these types, so they live in the
contract: a reporter plugin reads a :class:`Report` and needs nothing else of parity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from parity.contract.errors import ParityError

# Layer statuses, in report terms.
OK = "ok"
BELOW = "below"                # primary metric worse than its threshold
NONFINITE = "nonfinite"        # target produced NaN/Inf where the reference is finite
SHAPE_MISMATCH = "shape-mismatch"
REF_ONLY = "ref-only"
TARGET_ONLY = "target-only"
FAILING = (BELOW, NONFINITE)

@dataclass
class MetricInfo:
    name: str
    higher_is_better: bool
    percent: bool
    threshold: float | None
    description: str = ""


@dataclass
class LayerResult:
    """One row of the report."""

    name: str
    ref_name: str | None
    target_name: str | None
    order: float
    ref_shape: tuple[int, ...] | None = None
    target_shape: tuple[int, ...] | None = None
    ref_dtype: str | None = None
    target_dtype: str | None = None
    op_type: str | None = None
    target_op_type: str | None = None
    values: dict[str, float] = field(default_factory=dict)
    status: str = OK
    match: str = "exact"
    confidence: float = 1.0
    notes: list[str] = field(default_factory=list)
    ref_nan: int = 0
    ref_inf: int = 0
    target_nan: int = 0
    target_inf: int = 0
    #: per metric, the worst value over inputs and which input gave it (several inputs only)
    worst: dict[str, float] = field(default_factory=dict)
    worst_input: dict[str, int] = field(default_factory=dict)
    spread: dict[str, float] = field(default_factory=dict)
    n_inputs: int = 1
    #: metric values of the layer run alone in the target setting, fed the reference inputs
    local: dict[str, float] = field(default_factory=dict)
    #: reference value range (min, max, absmax, rms) and, for low-precision targets, format facts
    range: dict[str, Any] = field(default_factory=dict)
    #: 1 for the layer that most explains the loss, 2 for the next... (None: not a culprit)
    culprit_rank: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def failing(self) -> bool:
        return self.status in FAILING

    @property
    def shape(self) -> tuple[int, ...] | None:
        return self.ref_shape if self.ref_shape is not None else self.target_shape


@dataclass
class Report:
    """A whole comparison: rows in execution order plus what was asked."""

    layers: list[LayerResult]
    metrics: list[MetricInfo]
    ref_label: str = "reference"
    target_label: str = "target"
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def primary(self) -> MetricInfo | None:
        return self.metrics[0] if self.metrics else None

    @property
    def first_divergent(self) -> LayerResult | None:
        """The first layer in execution order that fails: where to start looking."""
        for layer in self.layers:
            if layer.failing:
                return layer
        return None

    @property
    def matched(self) -> list[LayerResult]:
        return [l for l in self.layers if l.ref_name is not None and l.target_name is not None]

    def __bool__(self) -> bool:
        return self.first_divergent is None

    def worst_value(self, metric: str) -> float | None:
        """The worst value of ``metric`` over matched layers (NaN counts as worst)."""
        info = next((m for m in self.metrics if m.name == metric), None)
        if info is None:
            raise ParityError(f"metric {metric!r} is not in this report. Note: report has "
                              f"{', '.join(m.name for m in self.metrics)}.")
        vals = [l.worst.get(metric, l.values.get(metric)) for l in self.matched if metric in l.values]
        if not vals:
            return None
        if any(v is None or math.isnan(v) for v in vals):
            return math.nan
        return min(vals) if info.higher_is_better else max(vals)

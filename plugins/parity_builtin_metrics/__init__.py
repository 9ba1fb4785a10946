"""Built-in metrics plugin for parity.

Registered through the ``parity`` entry-point group exactly like a third-party plugin,
and written against the public API only (:mod:`parity.contract.metric`).
"""
from __future__ import annotations

from parity import hookimpl

from .metrics import (ALL_METRICS, CosineMetric, KLHistogramMetric, KLSoftmaxMetric, L2Metric,
                      MaxAbsMetric, MeanAbsMetric, NonFiniteMetric, RelDiffMetric, SqnrMetric)

__all__ = ["ALL_METRICS", "CosineMetric", "KLHistogramMetric", "KLSoftmaxMetric",
           "L2Metric", "MaxAbsMetric", "MeanAbsMetric", "NonFiniteMetric", "RelDiffMetric", "SqnrMetric"]


@hookimpl
def register_metrics(register) -> None:
    for cls in ALL_METRICS:
        register(cls())

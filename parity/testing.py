"""parity in a test suite: ``assert_parity(model, inputs, target="ort-fp16", min_cosine=0.999)``.

Registered as a pytest plugin (entry point ``pytest11``), it also offers the ``parity_assert``
fixture (the same function), so a test needs no import. The check is parity's exit rule (a layer
gaining NaN/Inf, a shape mismatch, nothing compared, or a layer's cosine below ``min_cosine``,
as ``parity compare --fail-under``), and a failure lists the worst layers. Importing this module
is cheap: the comparison machinery is loaded on the first call.
"""
from __future__ import annotations

import math
from typing import Any

import pytest

__all__ = ["assert_parity", "failure_message"]


def failure_message(report: Any, reasons: list[str], worst: int = 5) -> str:
    """Why the comparison fails, then the ``worst`` layers by cosine (with local cosine and culprit rank)."""
    from parity.contract.report import NONFINITE, OK

    p = report.primary
    lines = [f"parity: {report.ref_label} vs {report.target_label} on {report.summary.get('model', 'the model')} fails:"]
    lines += [f"  - {why}" for why in reasons]
    rows = [r for r in report.matched if p is not None and p.name in r.values]

    def error(r: Any) -> float:
        if r.status == NONFINITE:
            return math.inf
        v = r.worst.get(p.name, r.values.get(p.name))
        e = p.error(v) if v is not None else math.nan
        return math.inf if math.isnan(e) else e

    rows.sort(key=error, reverse=True)
    if rows:
        lines.append(f"worst layers by {p.name}:")
        for r in rows[:worst]:
            v = r.worst.get(p.name, r.values.get(p.name))
            extra = f", local {p.format(r.local[p.name])}" if p.name in r.local else ""
            mark = f"  <- culprit #{r.culprit_rank}" if r.culprit_rank is not None else ""
            if r.culprit_rank is None and r.caused_by is not None:  # grouped under its culprit, never ranked
                ranked = report.summary.get("culprits") or []
                mark = f"  <- carries {'#%d ' % (ranked.index(r.caused_by) + 1) if r.caused_by in ranked else ''}{r.caused_by}"
            status = "" if r.status == OK else f" [{r.status}]"
            lines.append(f"  {r.name} ({r.op_type or r.target_op_type or 'layer'}): {p.name} {p.format(v)}{extra}"
                         f"{status}{mark}")
    return "\n".join(lines)


def assert_parity(model: Any, inputs: Any = None, *, target: str = "ort-fp16", ref: str | None = None,
                  min_cosine: float = 0.999, worst: int = 5, **compare_args: Any) -> Any:
    """Compare ``model`` on ``inputs`` (see :func:`parity.compare`) and fail the test, listing the worst
    layers, when any compared layer's cosine is below ``min_cosine`` or the target gains NaN/Inf.
    Returns the report when it passes."""
    __tracebackhide__ = True
    from parity.core.api import compare
    from parity.core.compare import gate

    compare_args.setdefault("diagnose", False)
    compare_args.setdefault("quiet", True)
    metrics = list(compare_args.pop("metrics", None) or ["cosine", "rel-diff", "max-abs", "nonfinite"])
    if metrics[0] != "cosine":
        metrics = ["cosine"] + [m for m in metrics if m != "cosine"]
    report = compare(model, inputs, ref=ref, target=target, metrics=metrics, **compare_args)
    reasons = [r.replace("--fail-under", "min_cosine") for r in gate(report, min_cosine)]
    if reasons:
        raise AssertionError(failure_message(report, reasons, worst))
    return report


@pytest.fixture
def parity_assert() -> Any:
    """:func:`assert_parity`, for tests that take it as a fixture instead of importing it."""
    return assert_parity

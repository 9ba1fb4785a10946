"""Diagnosis core on synthetic activations: local vs accumulated error, culprits, range tracing."""
import numpy as np
import pytest

from parity import Activation
from parity.core.diagnose import (FORMATS, LocalResult, attach_local, diagnosis_lines, find_culprits, score_local,
                             target_format, trace_ranges)
from parity.core.engine import compare_streams, resolve_metrics


def _chain(rng):
    """Four layers; error is introduced at 'b' and inherited by 'c' and 'd'."""
    x = {n: rng.standard_normal(4096).astype(np.float32) for n in "abcd"}
    big = x["b"] * 1e5  # b's reference values exceed the fp16 range
    ref = [Activation("a", x["a"], order=0, op_type="Linear"), Activation("b", big, order=1, op_type="Softmax"),
           Activation("c", x["c"], order=2, op_type="Linear"), Activation("d", x["d"], order=3, op_type="Linear")]
    noise = {n: rng.standard_normal(4096).astype(np.float32) for n in "abcd"}
    tgt = [Activation("a", x["a"] + 1e-4 * noise["a"], order=0),
           Activation("b", big + 0.2 * np.abs(big).mean() * noise["b"], order=1),
           Activation("c", x["c"] + 0.2 * noise["c"], order=2),
           Activation("d", x["d"] + 0.25 * noise["d"], order=3)]
    # local runs: only b adds error on its own
    local = [LocalResult("a", x["a"], x["a"] + 1e-4 * noise["a"]),
             LocalResult("b", big, big + 0.2 * np.abs(big).mean() * noise["b"]),
             LocalResult("c", x["c"], x["c"] + 1e-3 * noise["c"]),
             LocalResult("d", x["d"], x["d"] + 1e-3 * noise["d"])]
    return ref, tgt, local


def _cos(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return a @ b / np.sqrt((a @ a) * (b @ b))


def test_local_vs_accumulated_names_the_layer_that_causes_the_loss(rng):
    ref, tgt, local = _chain(rng)
    rep = compare_streams(iter(ref), iter(tgt), ["cosine"], options={"ranges": True})
    scores = dict(score_local(local, resolve_metrics(["cosine"])))
    assert scores["c"]["cosine"] == pytest.approx(_cos(local[2].ref, local[2].target))
    assert attach_local(rep, scores) == 4
    culprits = find_culprits(rep)
    by = {r.name: r for r in rep.layers}
    # c and d fail the threshold in the end-to-end run, but only b is a cause
    assert by["c"].failing and by["d"].failing
    assert [r.name for r in culprits] == ["b"] and by["b"].culprit_rank == 1
    assert by["c"].culprit_rank is None and by["c"].meta["local_share"] < 0.1
    assert rep.summary["first_culprit"] == "b"
    trace_ranges(rep, "float16")
    assert rep.summary["overflow_layers"] == ["b"]
    assert by["b"].range["ref"]["absmax"] == pytest.approx(float(np.abs(ref[1].array).max()), rel=1e-6)
    assert "overflows" in by["b"].range["risk"]
    text = "\n".join(diagnosis_lines(rep))
    assert "Culprit: b (Softmax" in text and "exceed the float16 range in: b (Softmax)" in text


def test_int8_range_risk_flags_outlier_heavy_tensors(rng):
    normal = rng.standard_normal(10000).astype(np.float32)
    outlier = normal.copy()
    outlier[::1000] = 500.0
    ref = [Activation("n", normal, order=0), Activation("o", outlier, order=1)]
    rep = compare_streams(iter(ref), iter([Activation("n", normal), Activation("o", outlier)]), ["cosine"],
                          options={"ranges": True})
    trace_ranges(rep, "int8")
    by = {r.name: r for r in rep.layers}
    crest = 500.0 / np.sqrt(np.mean(outlier.astype(np.float64) ** 2))
    assert by["o"].range["crest"] == pytest.approx(crest, rel=1e-6) and "outlier-heavy" in by["o"].range["risk"]
    assert "risk" not in by["n"].range


@pytest.mark.parametrize("name,fmt", [("ort-fp16", "float16"), ("torch-bf16", "bfloat16"), ("ort-int8", "int8"),
                                      ("trt-fp16", "float16"), ("ort", None)])
def test_target_format_from_name(name, fmt):
    assert target_format(name) == fmt


def test_fp16_range_table():
    assert FORMATS["float16"]["max"] == float(np.finfo(np.float16).max)
    assert FORMATS["float16"]["tiny"] == float(np.finfo(np.float16).tiny)


@pytest.mark.parametrize("metric", ["l2", "max-abs", "sqnr", "rel-diff"])
def test_culprits_with_any_primary_metric(rng, metric):
    """Local-vs-accumulated shares come from the metric's own error, whatever its direction."""
    ref, tgt, local = _chain(rng)
    # distances have no default threshold: one between the local error of c (~0.06 l2, ~0.004 max-abs)
    # and its accumulated error (~13 l2, ~0.8 max-abs)
    bound = {"l2": {"l2": 1.0}, "max-abs": {"max-abs": 0.1}}.get(metric)
    rep = compare_streams(iter(ref), iter(tgt), [metric, "cosine"], thresholds=bound)
    attach_local(rep, dict(score_local(local, resolve_metrics([metric, "cosine"]))))
    culprits = find_culprits(rep)
    assert culprits and culprits[0].name == "b", [(r.name, r.local, r.values) for r in rep.layers]
    by = {r.name: r for r in rep.layers}
    assert by["c"].failing and by["c"].culprit_rank is None and by["c"].meta["local_share"] < 0.5


def test_core_never_switches_on_metric_names():
    """A metric owns its meaning: direction, error and formatting come from the metric object."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "parity" / "core"
    names = ("cosine", "rel-diff", "l2", "kl", "kl-softmax", "sqnr", "max-abs", "mean-abs", "nonfinite")
    for f in ("report.py", "diagnose.py", "fix.py", "engine.py"):
        text = (root / f).read_text()
        for n in names:
            assert not re.search(rf"""==\s*["']{re.escape(n)}["']|["']{re.escape(n)}["']\s*(==|in\b)""", text), (f, n)

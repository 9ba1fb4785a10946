import math

import numpy as np
import pytest

from parity import Activation, ParityError
from parity.core.engine import compare_streams, merge_reports, run_engine
from parity.contract.records import Pair


def _acts(arrays, **meta):
    return [Activation(n, a, order=i, op_type="Op", meta=dict(meta)) for i, (n, a) in enumerate(arrays)]


def _cos(a, b):
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_exact_pairing_scores_each_layer_and_marks_first_divergence(rng):
    a = rng.standard_normal((2, 8, 4, 4)).astype(np.float32)
    b = rng.standard_normal((2, 10)).astype(np.float32)
    c = rng.standard_normal((2, 3)).astype(np.float32)
    ref = _acts([("conv1", a), ("ip1", b), ("prob", c)])
    noisy = b + rng.standard_normal(b.shape).astype(np.float32)  # far from b
    tgt = _acts([("conv1", a.astype(np.float16)), ("ip1", noisy), ("prob", c)])
    rep = compare_streams(iter(ref), iter(tgt), ["cosine", "max-abs"], thresholds={"cosine": 0.999})
    names = [l.name for l in rep.layers]
    assert names == ["conv1", "ip1", "prob"]
    by = {l.name: l for l in rep.layers}
    assert by["conv1"].values["cosine"] == pytest.approx(_cos(a, a.astype(np.float16)), abs=1e-12)
    assert by["ip1"].values["cosine"] == pytest.approx(_cos(b, noisy), abs=1e-12)
    assert by["ip1"].values["max-abs"] == pytest.approx(float(np.abs(noisy.astype(np.float64) - b).max()))
    assert by["conv1"].target_dtype == "float16" and by["conv1"].ref_dtype == "float32"
    assert rep.first_divergent is by["ip1"]
    assert not rep


def test_shape_mismatch_and_flat_comparison_are_reported_not_raised(rng):
    x = rng.standard_normal(10).astype(np.float32)
    ref = [Activation("prob", x.reshape(1, 10, 1, 1)), Activation("bad", np.ones((2, 3), np.float32)),
           Activation("gone", x)]
    tgt = [Activation("prob", x.reshape(1, 10)), Activation("bad", np.ones((4,), np.float32)),
           Activation("new", x)]
    rep = compare_streams(iter(ref), iter(tgt), ["cosine"])
    by = {l.name: l for l in rep.layers}
    assert by["prob"].status == "ok" and by["prob"].values["cosine"] == pytest.approx(1.0)
    assert "compared flat" in by["prob"].notes[0]
    assert by["bad"].status == "shape-mismatch" and by["bad"].values == {}
    assert by["gone"].status == "ref-only" and by["new"].status == "target-only"


def test_fp16_overflow_is_counted_and_fails_the_layer():
    r = np.array([1.0, 70000.0, 3.0, -80000.0], dtype=np.float32)
    t = r.astype(np.float16)  # 70000 and -80000 overflow to +-inf
    rep = compare_streams(iter([Activation("big", r)]), iter([Activation("big", t)]), ["cosine"])
    row = rep.layers[0]
    assert row.status == "nonfinite"
    assert row.target_inf == 2 and row.ref_inf == 0 and row.target_nan == 0
    # the finite positions still get a real score
    assert row.values["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert rep.first_divergent is row


def test_merge_reports_mean_worst_and_which_input(rng):
    reps = []
    base = rng.standard_normal(100).astype(np.float32)
    noise = [0.01, 0.5, 0.05]
    for k, s in enumerate(noise):
        t = base + s * rng.standard_normal(100).astype(np.float32)
        reps.append(run_engine(iter([Pair(Activation("l", base), Activation("l", t))]), ["cosine"]))
    vals = [r.layers[0].values["cosine"] for r in reps]
    m = merge_reports(reps)
    row = m.layers[0]
    assert row.n_inputs == 3
    assert row.values["cosine"] == pytest.approx(np.mean(vals))
    assert row.worst["cosine"] == pytest.approx(min(vals))
    assert row.worst_input["cosine"] == int(np.argmin(vals)) == 1
    assert row.spread["cosine"] == pytest.approx(np.std(vals))


def test_threshold_for_unselected_metric_is_an_error():
    with pytest.raises(ParityError, match="not selected"):
        compare_streams(iter([]), iter([]), ["cosine"], thresholds={"kl": 0.1})


def test_worst_value_direction(rng):
    a = rng.standard_normal(50).astype(np.float32)
    ref = [Activation("x", a), Activation("y", a)]
    tgt = [Activation("x", a + 0.1), Activation("y", a + 1.0)]
    rep = compare_streams(iter(ref), iter(tgt), ["max-abs", "cosine"])
    assert rep.worst_value("max-abs") == pytest.approx(1.0, rel=1e-6)
    assert rep.worst_value("cosine") == min(l.values["cosine"] for l in rep.layers)
    assert not math.isnan(rep.worst_value("cosine"))

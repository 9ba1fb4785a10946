"""Built-in metrics against independent whole-array numpy/scipy computations.

Every streaming metric is scored through ``score_pair`` with several chunk sizes (down to
one element) so that chunk boundaries, the remainder chunk and the non-finite slow path
are all exercised; the expected values are computed here on the whole array in float64.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cosine as scipy_cosine_distance
from scipy.special import log_softmax, rel_entr, softmax
from scipy.stats import entropy

import parity_builtin_metrics as pbm
from parity import ParityError
from parity.core import registry as plugins
from parity.lib.scoring import CHUNK_ELEMENTS, score_pair

M = {cls.name: cls() for cls in pbm.ALL_METRICS}
NAMES = sorted(M)
STREAMING = [n for n in NAMES if M[n].streaming]
KL_EPS = pbm.KLHistogramMetric.eps


# -- independent reference computations (whole array, float64) -------------------------

def _finite_pair(ref: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = ref.astype(np.float64).ravel()
    t = tgt.astype(np.float64).ravel()
    both = np.isfinite(r) & np.isfinite(t)
    return r[both], t[both]


def _hist_kl(r: np.ndarray, t: np.ndarray, ref_all: np.ndarray, tgt_all: np.ndarray, bins: int) -> float:
    rf = ref_all.astype(np.float64).ravel()
    tf = tgt_all.astype(np.float64).ravel()
    lo = min(rf[np.isfinite(rf)].min(), tf[np.isfinite(tf)].min())
    hi = max(rf[np.isfinite(rf)].max(), tf[np.isfinite(tf)].max())
    edges = np.linspace(lo, hi, bins + 1)
    p = np.histogram(r, bins=edges)[0] / r.size
    q = np.histogram(t, bins=edges)[0] / t.size
    p[p == 0] = KL_EPS
    q[q == 0] = KL_EPS
    return float(entropy(p, q))  # normalizes both, natural log


def expected(name: str, ref: np.ndarray, tgt: np.ndarray, options: dict | None = None) -> float:
    options = options or {}
    r, t = _finite_pair(ref, tgt)
    if name == "nonfinite":
        rr = ref.astype(np.float64).ravel()
        tt = tgt.astype(np.float64).ravel()
        return float(np.count_nonzero(np.isfinite(rr) & ~np.isfinite(tt)))
    if name == "kl-softmax":
        cols = ref.shape[-1]
        rr = ref.astype(np.float64).reshape(-1, cols)
        tt = tgt.astype(np.float64).reshape(-1, cols)
        return float(np.mean(rel_entr(softmax(rr, axis=1), softmax(tt, axis=1)).sum(axis=1)))
    if name == "l2":
        return float(np.linalg.norm(t - r))
    if name == "cosine":
        return 1.0 - scipy_cosine_distance(r, t)
    if name == "rel-diff":
        # numpy's own isclose(t, r): |t - r| <= atol + rtol * |r|, atol the floor tied to r's rms
        tol = options.get("rel_tol", 0.1)
        atol = max(options.get("abs_tol", 0.0), options.get("rms_tol", 0.1) * float(np.sqrt(np.mean(r * r))))
        return 100.0 * float(np.mean(np.isclose(t, r, rtol=tol, atol=atol)))
    if name == "max-abs":
        return float(np.max(np.abs(t - r)))
    if name == "mean-abs":
        return float(np.mean(np.abs(t - r)))
    if name == "sqnr":
        return 10.0 * math.log10(float(np.sum(r * r)) / float(np.sum((t - r) ** 2)))
    if name == "kl":
        return _hist_kl(r, t, ref, tgt, options.get("kl_bins", 256))
    raise AssertionError(name)


def assert_close(name: str, got: float, want: float) -> None:
    if name in ("nonfinite",):
        assert got == want, (name, got, want)
    else:
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (name, got, want)


def make_pair(rng, size: int, noise: float = 0.02, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    ref = rng.standard_normal(size).astype(dtype)
    tgt = (ref + noise * rng.standard_normal(size)).astype(dtype)
    return ref, tgt


# -- metric values ------------------------------------------------------------------------

# (elements, chunk_elements): chunk sizes of 1 and 7 exercise many boundaries; 10_000 and the
# default split into BLAS dot blocks with a remainder; sizes are not multiples of the chunks.
CASES = [(1, CHUNK_ELEMENTS), (13, 1), (1000, 7), (1000, CHUNK_ELEMENTS), (20_011, 10_000),
         (70_001, CHUNK_ELEMENTS), (70_001, 4096)]


@pytest.mark.parametrize("size,chunk", CASES)
def test_streaming_metrics_match_whole_array(rng, size, chunk):
    ref, tgt = make_pair(rng, size)
    metrics = [M[n] for n in NAMES if n != "kl-softmax"]
    values, ctx = score_pair(ref, tgt, metrics, chunk_elements=chunk)
    assert ctx.finite_size == size
    for name in values:
        assert_close(name, values[name], expected(name, ref, tgt))


def test_float16_target_against_float32_reference(rng):
    ref = rng.standard_normal(30_001).astype(np.float32) * 3
    tgt = ref.astype(np.float16)  # what an FP16 deployment produces
    values, ctx = score_pair(ref, tgt, [M[n] for n in NAMES if n != "kl-softmax"], chunk_elements=4096)
    assert ctx.tgt_dtype == "float16"
    for name, v in values.items():
        assert_close(name, v, expected(name, ref, tgt))
    # fp16 keeps ~3 decimal digits: every element is within 10%, cosine is ~1
    assert values["rel-diff"] == 100.0
    assert values["cosine"] > 0.99999
    assert values["sqnr"] > 60


def test_float16_both_sides(rng):
    ref, tgt = make_pair(rng, 5000, noise=0.05, dtype=np.float16)
    values, _ = score_pair(ref, tgt, [M[n] for n in NAMES if n != "kl-softmax"], chunk_elements=333)
    for name, v in values.items():
        assert_close(name, v, expected(name, ref, tgt))


@pytest.mark.parametrize("chunk", [5, 1000, CHUNK_ELEMENTS])
def test_nan_inf_are_counted_and_excluded(rng, chunk):
    n = 10_007
    ref, tgt = make_pair(rng, n)
    ref[[3, 500, 9000]] = [np.nan, np.inf, -np.inf]
    tgt[[3, 7, 8, 600, 601, 9000]] = [np.nan, np.nan, np.inf, -np.inf, np.nan, np.inf]
    values, ctx = score_pair(ref, tgt, [M[n] for n in NAMES if n != "kl-softmax"], chunk_elements=chunk)
    assert (ctx.ref_nan, ctx.ref_inf) == (1, 2)
    assert (ctx.tgt_nan, ctx.tgt_inf) == (3, 3)
    # new in the target: 7, 8, 600, 601 (3 and 9000 are non-finite in the reference too)
    assert ctx.tgt_new_nonfinite == 4
    assert values["nonfinite"] == 4.0
    assert ctx.finite_size == n - 7
    for name, v in values.items():
        assert math.isfinite(v), name
        assert_close(name, v, expected(name, ref, tgt))


def test_nonfinite_counts_when_nothing_is_finite():
    ref = np.ones(100, np.float32)
    tgt = np.full(100, np.inf, np.float32)  # every element overflowed
    values, ctx = score_pair(ref, tgt, [M["nonfinite"], M["cosine"], M["max-abs"]])
    assert values["nonfinite"] == 100.0
    assert ctx.finite_size == 0
    assert math.isnan(values["cosine"]) and math.isnan(values["max-abs"])
    assert M["cosine"].worse(values["cosine"], 0.999)  # NaN fails a threshold


def test_nonfinite_alone_counts_once():
    """With no streaming metric the pass still runs, exactly once."""
    ref = np.ones(1000, np.float32)
    tgt = ref.copy()
    tgt[[1, 2, 999]] = [np.nan, np.inf, -np.inf]
    values, ctx = score_pair(ref, tgt, [M["nonfinite"]], chunk_elements=64)
    assert values["nonfinite"] == 3.0
    assert (ctx.tgt_nan, ctx.tgt_inf) == (1, 2)
    assert M["nonfinite"].worse(values["nonfinite"], M["nonfinite"].default_threshold)
    assert not M["nonfinite"].worse(0.0, M["nonfinite"].default_threshold)


def test_identical_arrays(rng):
    ref = rng.standard_normal((4, 33)).astype(np.float32)
    values, _ = score_pair(ref, ref.copy(), [M[n] for n in NAMES], chunk_elements=50)
    assert values["cosine"] == pytest.approx(1.0, abs=1e-15)
    assert values["l2"] == 0.0
    assert values["max-abs"] == 0.0
    assert values["mean-abs"] == 0.0
    assert values["rel-diff"] == 100.0
    assert values["sqnr"] == math.inf
    assert values["kl"] == 0.0
    assert values["kl-softmax"] == pytest.approx(0.0, abs=1e-15)
    assert values["nonfinite"] == 0.0
    for name in NAMES:
        th = M[name].default_threshold
        if th is not None:
            assert not M[name].worse(values[name], th), name


def test_zero_vectors():
    z = np.zeros(100, np.float32)
    x = np.linspace(-1, 1, 100).astype(np.float32)
    both, _ = score_pair(z, z.copy(), [M["cosine"], M["sqnr"], M["rel-diff"], M["l2"], M["kl"]], chunk_elements=7)
    assert both == {"cosine": 1.0, "sqnr": math.inf, "rel-diff": 100.0, "l2": 0.0, "kl": 0.0}
    one, _ = score_pair(z, x, [M["cosine"], M["sqnr"], M["rel-diff"]], chunk_elements=7)
    assert one["cosine"] == 0.0
    assert one["sqnr"] == -math.inf
    # with abs_tol 0, a zero reference is matched only by an exact zero: x has none
    assert one["rel-diff"] == 0.0
    other, _ = score_pair(x, z, [M["cosine"], M["sqnr"]])
    assert other["cosine"] == 0.0
    assert other["sqnr"] == pytest.approx(0.0, abs=1e-12)  # noise energy equals signal energy


def test_cosine_sign_and_scale(rng):
    x = rng.standard_normal(999).astype(np.float32)
    assert score_pair(x, -x, [M["cosine"]])[0]["cosine"] == pytest.approx(-1.0)
    assert score_pair(x, 3 * x, [M["cosine"]])[0]["cosine"] == pytest.approx(1.0)


def test_sqnr_sees_scale_errors_cosine_misses(rng):
    x = rng.standard_normal(5000).astype(np.float64)
    v = score_pair(x, 1.05 * x, [M["sqnr"], M["cosine"]])[0]
    assert v["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert v["sqnr"] == pytest.approx(10 * math.log10(1 / 0.05 ** 2))  # 26.02 dB
    assert M["sqnr"].worse(v["sqnr"], M["sqnr"].default_threshold)


@pytest.mark.parametrize("options", [{"rel_tol": 0.01}, {"rel_tol": 0.0, "abs_tol": 0.05},
                                     {"rel_tol": 0.2, "abs_tol": 1e-3}])
def test_rel_diff_options(rng, options):
    ref, tgt = make_pair(rng, 12_345, noise=0.05)
    values, _ = score_pair(ref, tgt, [M["rel-diff"]], options=options, chunk_elements=1000)
    assert_close("rel-diff", values["rel-diff"], expected("rel-diff", ref, tgt, options))
    default, _ = score_pair(ref, tgt, [M["rel-diff"]])
    assert values["rel-diff"] != default["rel-diff"]  # the option really changed something


def test_rel_diff_options_none_means_default(rng):
    ref, tgt = make_pair(rng, 1000)
    a = score_pair(ref, tgt, [M["rel-diff"]], options={"rel_tol": None, "abs_tol": None})[0]
    b = score_pair(ref, tgt, [M["rel-diff"]])[0]
    assert a == b


def test_rel_diff_boundary_is_inclusive():
    ref = np.array([1.0, 1.0, 2.0, 0.0], np.float64)
    tgt = np.array([1.5, 1.5000001, 1.25, 0.0], np.float64)  # exactly 50%, just over, within, exact zero
    v = score_pair(ref, tgt, [M["rel-diff"]], options={"rel_tol": 0.5, "rms_tol": 0})[0]["rel-diff"]
    assert v == 75.0
    # the floor's boundary too: rms of [3, 4] is sqrt(12.5); an error of exactly 0.1 * rms is within
    ref = np.array([3.0, 4.0, 0.0, 0.0], np.float64)
    floor = 0.1 * math.sqrt(25.0 / 4)
    tgt = np.array([3.0, 4.0, floor, floor * 1.0001], np.float64)
    v = score_pair(ref, tgt, [M["rel-diff"]], options={"rel_tol": 0.0})[0]["rel-diff"]
    assert v == 75.0


@pytest.mark.parametrize("bad", [{"rel_tol": -0.1}, {"abs_tol": "x"}, {"rel_tol": float("nan")},
                                 {"kl_bins": 0}, {"kl_bins": "many"}, {"kl_bins": 10**9}])
def test_bad_options_are_parity_errors(rng, bad):
    ref, tgt = make_pair(rng, 10)
    with pytest.raises(ParityError, match=next(iter(bad))):
        score_pair(ref, tgt, [M["rel-diff"], M["kl"]], options=bad)


@pytest.mark.parametrize("bins", [1, 16, 256, 1000])
def test_kl_bins_option(rng, bins):
    ref = rng.standard_normal(9_999).astype(np.float32)
    tgt = (ref * 1.1 + 0.2).astype(np.float32)  # a distribution shift, not just noise
    v = score_pair(ref, tgt, [M["kl"]], options={"kl_bins": bins}, chunk_elements=777)[0]["kl"]
    assert_close("kl", v, expected("kl", ref, tgt, {"kl_bins": bins}))
    if bins > 1:
        assert v > 0.01


def test_kl_is_position_free(rng):
    ref = rng.standard_normal(4096).astype(np.float32)
    v = score_pair(ref, rng.permutation(ref), [M["kl"], M["cosine"]])[0]
    assert v["kl"] == 0.0  # same values, same histogram
    assert v["cosine"] < 0.2  # positions disagree completely


def test_kl_degenerate_ranges():
    c = np.full(50, 3.0, np.float32)
    assert score_pair(c, c.copy(), [M["kl"]])[0]["kl"] == 0.0
    # two different constants: each side fills a different end bin
    v = score_pair(c, c + 1, [M["kl"]])[0]["kl"]
    p = np.full(256, KL_EPS)
    q = np.full(256, KL_EPS)
    p[0] = q[-1] = 1.0
    assert v == pytest.approx(entropy(p, q), rel=1e-12)
    # float64 extremes: hi - lo overflows, binning must still not produce NaN
    big = np.array([-1.5e308, 0.0, 1.5e308])
    w = score_pair(big, big[::-1].copy(), [M["kl"]])[0]["kl"]
    assert w == pytest.approx(0.0, abs=1e-12)


# -- kl-softmax ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 10), (7, 1000), (2, 3, 257), (64,), (300, 5), (2, 9000)])
def test_kl_softmax_matches_scipy(rng, shape):
    ref = (3 * rng.standard_normal(shape)).astype(np.float32)
    tgt = (ref + 0.3 * rng.standard_normal(shape)).astype(np.float16)
    v = score_pair(ref, tgt, [M["kl-softmax"]])[0]["kl-softmax"]
    assert_close("kl-softmax", v, expected("kl-softmax", ref, tgt))
    assert v > 0


@pytest.mark.parametrize("block", [7, 64, 1 << 16])
def test_kl_softmax_blocks_and_long_rows(rng, monkeypatch, block):
    """Small blocks force many row blocks, and rows longer than a block (read in pieces)."""
    monkeypatch.setattr(pbm.metrics, "BLOCK_ELEMENTS", block)
    ref = (5 * rng.standard_normal((9, 100))).astype(np.float32)
    tgt = (ref + rng.standard_normal((9, 100))).astype(np.float32)
    v = score_pair(ref, tgt, [M["kl-softmax"]])[0]["kl-softmax"]
    assert_close("kl-softmax", v, expected("kl-softmax", ref, tgt))


def test_kl_softmax_row_shift_invariant_and_stable(rng):
    ref = (100 * rng.standard_normal((5, 50))).astype(np.float64)  # exp would overflow naively
    tgt = ref + np.arange(5)[:, None] * 1000.0  # a per-row constant: same softmax
    assert score_pair(ref, tgt, [M["kl-softmax"]])[0]["kl-softmax"] == pytest.approx(0.0, abs=1e-9)
    want = np.mean(np.sum(np.exp(log_softmax(ref, axis=1)) *
                          (log_softmax(ref, axis=1) - log_softmax(ref * 0.9, axis=1)), axis=1))
    got = score_pair(ref, ref * 0.9, [M["kl-softmax"]])[0]["kl-softmax"]
    assert math.isfinite(got) and got == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("block", [8, 1 << 16])
def test_kl_softmax_nonfinite_rows(rng, monkeypatch, block):
    monkeypatch.setattr(pbm.metrics, "BLOCK_ELEMENTS", block)
    ref = rng.standard_normal((6, 20))
    tgt = ref + 0.1 * rng.standard_normal((6, 20))
    ref[0, 3] = np.nan      # row 0 skipped
    tgt[1, 5] = np.inf      # row 1 skipped
    ref[2, :4] = -np.inf    # row 2: masked logits, masked in the target too
    tgt[2, :4] = -np.inf
    got = score_pair(ref, tgt, [M["kl-softmax"]])[0]["kl-softmax"]
    keep = [2, 3, 4, 5]
    r, t = ref[keep], tgt[keep]
    p = softmax(r, axis=1)
    want = np.mean(rel_entr(p, softmax(t, axis=1)).sum(axis=1))  # rel_entr(0, 0) == 0
    assert got == pytest.approx(want, rel=1e-9)
    # the target masks a logit the reference does not: infinitely surprising
    tgt[3, 0] = -np.inf
    assert score_pair(ref, tgt, [M["kl-softmax"]])[0]["kl-softmax"] == math.inf
    # nothing usable
    assert math.isnan(score_pair(ref[:1], tgt[:1], [M["kl-softmax"]])[0]["kl-softmax"])


def test_kl_softmax_needs_same_last_axis(rng):
    with pytest.raises(ParityError, match="last axis"):
        M["kl-softmax"].compute(np.zeros((2, 6)), np.zeros((3, 4)), None)


# -- class attributes and registry -----------------------------------------------------------

SPEC = {  # name: (higher_is_better, default_threshold, percent, streaming)
    "l2": (False, None, False, True),
    "cosine": (True, 0.999, False, True),
    "rel-diff": (True, 99.0, True, True),  # fused moments: (n, within); the rms floor is read first
    "kl": (False, None, False, True),  # no default threshold: a histogram is no judgement of a layer
    "kl-softmax": (False, 0.001, False, False),
    "sqnr": (True, 30.0, False, True),
    "max-abs": (False, None, False, True),
    "mean-abs": (False, None, False, True),
    "nonfinite": (False, 0.0, False, False),
}


def test_metric_attributes():
    assert set(M) == set(SPEC)
    for name, (hib, th, pct, streaming) in SPEC.items():
        m = M[name]
        assert (m.higher_is_better, m.default_threshold, m.percent, m.streaming) == (hib, th, pct, streaming), name
        assert m.description and "\n" not in m.description
    assert M["kl"].needs_range


def test_worse_direction():
    assert M["cosine"].worse(0.99, 0.999) and not M["cosine"].worse(0.9995, 0.999)
    assert M["max-abs"].worse(0.2, 0.1) and not M["max-abs"].worse(0.05, 0.1)


def test_metrics_are_discovered_through_the_registry(monkeypatch):
    monkeypatch.setenv("PARITY_LOAD_PLUGINS", "metrics")  # only this entry point: siblings cannot interfere
    plugins.reset()
    try:
        reg = plugins.registry()["metric"]
        assert set(SPEC) <= set(reg)
        for name in SPEC:
            entry = reg[name]
            assert entry.plugin == "metrics"
            assert entry.package.split()[0] == "parity"
            assert type(entry.obj).__module__.startswith("parity_builtin_metrics")
        assert plugins.get_metric("rel-diff").percent
    finally:
        plugins.reset()


# -- what a metric says about its values: direction, error, formatting ------------------------

def test_error_is_non_negative_zero_when_perfect_and_grows_with_the_loss():
    perfect = {"cosine": 1.0, "rel-diff": 100.0, "sqnr": math.inf, "l2": 0.0, "max-abs": 0.0, "mean-abs": 0.0,
               "kl": 0.0, "kl-softmax": 0.0, "nonfinite": 0.0}
    worse = {"cosine": 0.9, "rel-diff": 90.0, "sqnr": 10.0, "l2": 3.0, "max-abs": 0.5, "mean-abs": 0.1,
             "kl": 0.2, "kl-softmax": 0.1, "nonfinite": 4.0}
    assert set(perfect) == set(SPEC)
    for name in SPEC:
        m = M[name]
        assert m.error(perfect[name]) == 0.0, name
        assert 0.0 < m.error(worse[name]) < math.inf, name
        assert m.error(math.nan) == math.inf, name
    assert M["cosine"].error(0.99) == pytest.approx(0.01)
    assert M["rel-diff"].error(97.0) == pytest.approx(0.03)
    assert M["sqnr"].error(20.0) == pytest.approx(0.01)  # noise power over signal power
    assert M["sqnr"].error(-math.inf) == math.inf
    assert M["l2"].error(2.5) == 2.5


def test_error_and_fails_agree_on_the_direction():
    for name, (hib, *_rest) in SPEC.items():
        m = M[name]
        a, b = (0.5, 0.9) if hib else (0.9, 0.5)  # a is worse than b
        if name == "nonfinite":
            a, b = 3.0, 1.0
        assert m.error(a) >= m.error(b), name
        assert m.fails(a, b) and not m.fails(b, a), name
        assert m.fails(math.nan, b) and m.fails(None, b), name


def test_format_belongs_to_the_metric():
    assert M["cosine"].format(0.99999) == "0.9999900"
    assert M["rel-diff"].format(99.5) == "99.5000%"
    assert M["nonfinite"].format(3.0) == "3"
    assert M["l2"].format(1234.5678) == "1235"
    for name in SPEC:
        assert M[name].format(None) == "" and M[name].format(math.nan) == "nan", name
        assert M[name].format(math.inf) == "inf" and M[name].format(-math.inf) == "-inf", name


def test_third_party_metric_defaults():
    from parity.contract.metric import Metric

    class Dist(Metric):
        name = "dist"
        higher_is_better = False

    class Score(Metric):
        name = "score"
        perfect = 10.0

    class Unbounded(Metric):
        name = "unbounded"

    assert Dist().error(2.0) == 2.0 and Dist().error(-1.0) == 0.0 and Dist().format(2.0) == "2"
    assert Score().error(10.0) == 0.0 and Score().error(9.0) == pytest.approx(0.1)
    u = Unbounded()
    assert u.error(1.0) < u.error(0.0) < u.error(-1.0) and u.error(0.0) > 0


# -- pass/fail defaults on real activations (why rel-diff has a floor, why kl has no threshold) --------

def _gelu_layer(rng, dtype=np.float64):
    """A linear layer and GELU on standard inputs: values cross zero, as every real activation does."""
    from scipy.special import erf

    x = rng.standard_normal((64, 128)).astype(dtype)
    w = (rng.standard_normal((128, 96)) / np.sqrt(128)).astype(dtype)
    h = x @ w
    return 0.5 * h * (1 + erf(h / np.sqrt(2))), x, w


def test_rel_diff_passes_an_fp16_output_at_cosine_0_999999(rng):
    ref, _, _ = _gelu_layer(rng)
    # accumulated fp16 rounding: an absolute error set by the operands, not by each output element
    rms = float(np.sqrt(np.mean(ref * ref)))
    tgt = ref + rng.standard_normal(ref.shape) * 1.4e-3 * rms
    cos = 1.0 - scipy_cosine_distance(ref.ravel(), tgt.ravel())
    assert 0.999998 < cos < 0.9999995
    v = score_pair(ref, tgt, [M["rel-diff"]])[0]["rel-diff"]
    assert_close("rel-diff", v, expected("rel-diff", ref, tgt, {}))
    assert not M["rel-diff"].fails(v, M["rel-diff"].default_threshold)
    # the recipe's pure relative test (rms_tol 0) fails it on the elements near zero
    pure = score_pair(ref, tgt, [M["rel-diff"]], options={"rms_tol": 0})[0]["rel-diff"]
    assert_close("rel-diff", pure, expected("rel-diff", ref, tgt, {"rms_tol": 0}))
    assert M["rel-diff"].fails(pure, M["rel-diff"].default_threshold)


def test_rel_diff_of_an_int8_layer_tracks_cosine_and_fails_a_broken_one(rng):
    ref, _, _ = _gelu_layer(rng)
    scale = np.abs(ref).max() / 127.0
    tgt = np.clip(np.round(ref / scale), -128, 127) * scale  # per-tensor int8, as a QDQ pair does
    cos = 1.0 - scipy_cosine_distance(ref.ravel(), tgt.ravel())
    assert 0.999 < cos < 0.99999
    v = score_pair(ref, tgt, [M["rel-diff"]])[0]["rel-diff"]
    assert_close("rel-diff", v, expected("rel-diff", ref, tgt, {}))
    assert v > 99.0  # the relative test alone read about half of such a tensor as wrong
    assert score_pair(ref, tgt, [M["rel-diff"]], options={"rms_tol": 0})[0]["rel-diff"] < 90.0
    broken = ref + rng.standard_normal(ref.shape) * np.sqrt(np.mean(ref * ref))  # cosine ~0.7
    assert M["rel-diff"].fails(score_pair(ref, broken, [M["rel-diff"]])[0]["rel-diff"], 99.0)


def test_kl_flags_an_exact_embedding_and_misses_a_scrambled_output(rng):
    """Why kl has no default threshold: it judges value histograms, not the layer."""
    table = rng.standard_normal((50, 32)).astype(np.float32)
    ids = rng.integers(0, 50, size=400)
    ref = table[ids]  # token embeddings: a few distinct values, many times each
    tgt = ref.astype(np.float16).astype(np.float32)
    v = score_pair(ref, tgt, [M["kl"], M["cosine"], M["sqnr"]])[0]
    assert v["cosine"] > 0.999999 and v["sqnr"] > 60
    assert_close("kl", v["kl"], expected("kl", ref, tgt, {}))
    scrambled = rng.permutation(ref.ravel()).reshape(ref.shape)
    w = score_pair(ref, scrambled, [M["kl"], M["cosine"]])[0]
    assert w["cosine"] < 0.5 and w["kl"] == 0.0
    assert v["kl"] > w["kl"]  # it ranks an exact layer worse than a destroyed one
    assert M["kl"].default_threshold is None

"""The fused moments pass: compiled (numba) and numpy paths against whole-array numpy references.

The conftest runs each test on both paths; ``test_paths_agree`` also compares the two directly.
Sizes straddle the kernel's block (2048) and conversion piece (65536) so that remainders, a
non-finite value in one block only, and converted dtypes (float16, integers) are all exercised.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import parity_builtin_metrics as pbm
from parity.contract.metric import Metric
from parity.lib.scoring import fused, score_pair

M = {cls.name: cls() for cls in pbm.ALL_METRICS}
PAIRWISE = ["cosine", "l2", "max-abs", "mean-abs", "nonfinite", "rel-diff", "sqnr"]
DEFAULT = ["cosine", "rel-diff", "max-abs", "nonfinite"]


def reference(ref: np.ndarray, tgt: np.ndarray, rel_tol=0.1, abs_tol=0.0, rms_tol=0.1) -> dict[str, float]:
    r0 = ref.astype(np.float64).ravel()
    t0 = tgt.astype(np.float64).ravel()
    ok = np.isfinite(r0) & np.isfinite(t0)
    r, t = r0[ok], t0[ok]
    d = t - r
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        atol = max(abs_tol, rms_tol * float(np.sqrt(np.mean(r * r)))) if r.size else abs_tol
        out = {
            "nonfinite": float(np.count_nonzero(np.isfinite(r0) & ~np.isfinite(t0))),
            "cosine": float(np.clip(np.dot(r, t) / (np.linalg.norm(r) * np.linalg.norm(t)), -1, 1)),
            "l2": float(np.linalg.norm(d)),
            "max-abs": float(np.max(np.abs(d))) if r.size else math.nan,
            "mean-abs": float(np.mean(np.abs(d))) if r.size else math.nan,
            "rel-diff": 100.0 * float(np.mean(np.abs(d) <= np.abs(r) * rel_tol + atol)) if r.size else math.nan,
            "sqnr": 10.0 * math.log10(float(np.sum(r * r)) / float(np.sum(d * d))),
        }
    return out


def check(values: dict[str, float], want: dict[str, float], rel: float = 1e-9) -> None:
    for k, v in values.items():
        w = want[k]
        if k in ("nonfinite", "max-abs"):
            assert v == w or (math.isnan(v) and math.isnan(w)), (k, v, w)
        else:
            assert v == pytest.approx(w, rel=rel, abs=1e-12), (k, v, w)


def _pair(rng, n, tdtype=np.float32, rdtype=np.float32):
    ref = rng.standard_normal(n)
    tgt = ref + 0.05 * rng.standard_normal(n)
    return ref.astype(rdtype), tgt.astype(tdtype)


@pytest.mark.parametrize("n", [1, 5, 2047, 2048, 2049, 65_537, 140_001])
def test_sizes_across_blocks_with_a_nan_in_one_block(rng, n):
    ref, tgt = _pair(rng, n)
    if n > 3000:
        tgt[2050] = np.nan   # second block takes the exact per-element path
        ref[n - 1] = np.inf  # last (partial) block too
        tgt[n // 2] = -np.inf
    values, ctx = score_pair(ref, tgt, [M[x] for x in PAIRWISE])
    check(values, reference(ref, tgt))
    assert ctx.finite_size == int(np.count_nonzero(np.isfinite(ref) & np.isfinite(tgt)))
    assert ctx.tgt_new_nonfinite == (2 if n > 3000 else 0)


@pytest.mark.parametrize("rd,td", [(np.float32, np.float16), (np.float16, np.float16), (np.float64, np.float32),
                                   (np.float32, np.float64), (np.int32, np.int32), (np.int64, np.float32),
                                   (np.uint8, np.int16)])
def test_dtypes(rng, rd, td):
    n = 70_003  # more than one conversion piece, not a multiple of the block
    if np.issubdtype(rd, np.integer):
        ref = rng.integers(0, 200, n).astype(rd)
        tgt = (ref.astype(np.int64) + rng.integers(-2, 3, n)).clip(0, 250).astype(td)
    else:
        ref, tgt = _pair(rng, n, td, rd)
    values, _ = score_pair(ref, tgt, [M[x] for x in PAIRWISE])
    check(values, reference(ref, tgt))


def test_non_contiguous_inputs(rng):
    ref, tgt = _pair(rng, 300 * 257)
    ref2, tgt2 = ref.reshape(300, 257).T, tgt.reshape(300, 257)[:, ::-1]  # views, not contiguous
    values, _ = score_pair(ref2, tgt2, [M[x] for x in PAIRWISE])
    check(values, reference(ref2, tgt2))


def test_float64_square_overflow_is_exact(rng):
    ref = rng.standard_normal(5000)
    ref[100] = 1e200  # finite, but its square overflows: the block takes the per-element path
    tgt = ref * (1 + 1e-3)
    values, ctx = score_pair(ref, tgt, [M[x] for x in PAIRWISE])
    assert ctx.finite_size == 5000 and ctx.tgt_new_nonfinite == 0
    want = reference(ref, tgt)
    assert values["max-abs"] == want["max-abs"]
    assert values["rel-diff"] == want["rel-diff"]
    assert values["l2"] == math.inf and values["mean-abs"] == pytest.approx(want["mean-abs"], rel=1e-9)


def test_rel_diff_floor_excludes_positions_only_the_target_overflowed(rng):
    # rms(r) is over positions finite on both sides: a huge reference value where the target
    # overflowed must not raise the floor (the compiled path recounts with the exact floor).
    ref, tgt = _pair(rng, 20_000, np.float16)
    ref[10] = 60000.0
    tgt[10] = np.inf
    for opts in ({}, {"rms_tol": 0.5}, {"abs_tol": 0.01, "rms_tol": 0.0}):
        values, ctx = score_pair(ref, tgt, [M["rel-diff"], M["nonfinite"]], options=opts)
        assert ctx.tgt_new_nonfinite == 1
        check(values, reference(ref, tgt, rms_tol=opts.get("rms_tol", 0.1), abs_tol=opts.get("abs_tol", 0.0)))


def test_third_party_streaming_metric_still_gets_chunks(rng):
    class SumDiff(Metric):
        name = "sumdiff"

        def start(self, ctx):
            return [0.0]

        def update(self, state, chunk):
            state[0] += float(chunk.diff.sum())
            return state

        def finish(self, state, ctx):
            return state[0]

    ref, tgt = _pair(rng, 100_001)
    tgt[7] = np.nan
    values, ctx = score_pair(ref, tgt, [SumDiff()] + [M[x] for x in DEFAULT])
    r, t = ref.astype(np.float64), tgt.astype(np.float64)
    ok = np.isfinite(t)
    assert values["sumdiff"] == pytest.approx(float(np.sum(t[ok] - r[ok])), rel=1e-9)
    check({k: values[k] for k in DEFAULT}, reference(ref, tgt))
    assert ctx.tgt_new_nonfinite == 1 and ctx.tgt_nan == 1


def test_paths_agree(rng, monkeypatch):
    pytest.importorskip("numba")
    ref, tgt = _pair(rng, 150_001, np.float16)
    tgt[[3, 9000, 150_000]] = [np.nan, np.inf, -np.inf]
    got = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("PARITY_NO_NUMBA", flag)
        got[flag], ctx = score_pair(ref, tgt, [M[x] for x in PAIRWISE])
        got[flag + "ctx"] = (ctx.finite_size, ctx.ref_nan, ctx.ref_inf, ctx.tgt_nan, ctx.tgt_inf, ctx.tgt_new_nonfinite)
    assert got["0ctx"] == got["1ctx"]
    check(got["0"], got["1"], rel=1e-12)


def test_small_pairs_do_not_load_the_kernel(rng, monkeypatch):
    monkeypatch.setattr(fused, "MIN_COMPILED_SIZE", 1 << 20)
    monkeypatch.setattr(fused, "_KERNEL", None)
    ref, tgt = _pair(rng, 1000)
    values, _ = score_pair(ref, tgt, [M[x] for x in PAIRWISE])
    check(values, reference(ref, tgt))
    assert fused._KERNEL is None  # never tried


def test_no_numba_flag_disables_the_kernel(monkeypatch):
    monkeypatch.setenv("PARITY_NO_NUMBA", "1")
    assert fused.kernel() is None


@pytest.mark.parametrize("open_share", [-1.0, 0.2, 1.0])  # always prepass / default / always band
@pytest.mark.parametrize("case", ["clean", "noisy", "outlier_block", "nan_blocks", "fp16", "abs_floor"])
def test_rel_diff_floor_band_is_exact(rng, monkeypatch, case, open_share):
    """The sampled floor band (large pairs) settles most blocks in the one read and recounts
    the rest; whatever the sample guessed, the count equals the numpy reference."""
    monkeypatch.setattr(fused, "SAMPLE_MIN", 0)
    monkeypatch.setattr(fused, "MAX_OPEN_SHARE", open_share)
    n = 300_007
    noise = 0.3 if case == "noisy" else 0.01
    ref = rng.standard_normal(n)
    tgt = ref + noise * rng.standard_normal(n)
    opts = {}
    if case == "outlier_block":  # the sample misses it: rms, hence the floor, is far above the guess
        ref[123_000:123_100] = 300.0
    if case == "nan_blocks":
        tgt[[5, 70_000, 299_999]] = np.nan
        ref[8] = -np.inf
    if case == "abs_floor":
        opts = {"abs_tol": 0.05, "rms_tol": 0.1}
    ref = ref.astype(np.float32)
    tgt = tgt.astype(np.float16 if case == "fp16" else np.float32)
    values, _ = score_pair(ref, tgt, [M["rel-diff"], M["cosine"], M["max-abs"]], options=opts)
    check(values, reference(ref, tgt, abs_tol=opts.get("abs_tol", 0.0)))


def test_tolerance_limit_rounds_like_numpy(rng):
    """|t-r| <= |r|*rel + atol must round |r|*rel before adding (numpy's two roundings): the
    compiled loop may fuse its sums into FMAs, never this limit. Here |t - r| lands within an
    ulp of the limit, so an FMA limit (one rounding) changes the count: compiling ``limit``
    with contract made this test fail (through the recount of the NaN blocks)."""
    n = 400_000
    r = rng.uniform(0.07, 0.08, n)  # limit ~ r: t = r - limit is small, so |t - r| is on the limit's grid
    lim = np.abs(r) * 0.1 + 0.0655
    nudged = np.where(rng.random(n) < 0.5, lim, np.nextafter(lim, np.where(rng.random(n) < 0.5, 0, 1)))
    t = r - nudged
    t[::1000] = np.nan  # every block holds a NaN: the compiled path recounts them all (count_only)
    ok = np.isfinite(t)
    want = int(np.count_nonzero(np.abs(t[ok] - r[ok]) <= np.abs(r[ok]) * 0.1 + 0.0655))
    assert 0.2 * n < want < 0.8 * n  # the data really straddles the boundary
    for tt in (t, np.where(ok, t, r - nudged)):  # with NaNs (recounted blocks), without (settled in the loop)
        values, _ = score_pair(r, tt, [M["rel-diff"]], options={"abs_tol": 0.0655, "rms_tol": 0.0})
        ok2 = np.isfinite(tt)
        want2 = int(np.count_nonzero(np.abs(tt[ok2] - r[ok2]) <= np.abs(r[ok2]) * 0.1 + 0.0655))
        assert values["rel-diff"] == 100.0 * want2 / int(np.count_nonzero(ok2))


def test_numba_missing_falls_back_to_numpy(rng, monkeypatch):
    monkeypatch.delenv("PARITY_NO_NUMBA", raising=False)
    import sys

    import parity.lib.scoring

    monkeypatch.setitem(sys.modules, "parity.lib.scoring.kernels", None)  # the import fails
    monkeypatch.delattr(parity.lib.scoring, "kernels", raising=False)
    monkeypatch.setattr(fused, "_KERNEL", None)
    assert fused.kernel() is None
    ref, tgt = _pair(rng, 5000)
    values, _ = score_pair(ref, tgt, [M[x] for x in PAIRWISE])
    check(values, reference(ref, tgt))

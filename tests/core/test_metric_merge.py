"""Mergeable metric states: the pooled value over several pairs from merged per-pair states.

For every built-in metric with ``mergeable=True``, the value of ``finish(merged states,
merged contexts)`` over 3-5 pairs (different sizes, NaN/Inf, float16 targets) must equal an
independent numpy/scipy computation over the concatenation of the pairs; any merge order
gives the same value; states survive pickling. Runs on the compiled and the numpy path.
"""
from __future__ import annotations

import functools
import math
import pickle

import numpy as np
import pytest
from scipy.special import rel_entr, softmax

import parity_builtin_metrics as pbm
from parity.contract.metric import Metric, PairContext, merge_contexts
from parity.lib.scoring import pooled_value, score_pair
from support import use_metric_path

M = {cls.name: cls() for cls in pbm.ALL_METRICS}
MERGEABLE = sorted(n for n, m in M.items() if m.mergeable)
COLS = 37  # last axis of every pair (kl-softmax rows); sizes below are multiples of it


@pytest.fixture(autouse=True, params=["numba", "numpy"])
def kernel_path(request, monkeypatch):
    use_metric_path(request.param, monkeypatch)


def make_pairs(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Four pairs: float32, one with NaN/Inf on both sides, float16 targets, different scales."""
    rng = np.random.default_rng(seed)
    pairs = []
    for k, rows in enumerate((3, 61, 250, 1111)):
        ref = (rng.standard_normal((rows, COLS)) * (1 + 3 * k)).astype(np.float32)
        tgt = ref + (0.02 * (k + 1)) * rng.standard_normal((rows, COLS)).astype(np.float32)
        if k % 2 == 1:
            tgt = tgt.astype(np.float16)
        if k == 2:
            tgt = tgt.copy()
            ref = ref.copy()
            tgt[5, 3] = np.nan
            tgt[7, 0] = np.inf  # overflow created by the target
            ref[9, 1] = -np.inf
            ref[9, 2] = np.nan
        pairs.append((ref, tgt))
    return pairs


def _finite(ref: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = ref.astype(np.float64).ravel()
    t = tgt.astype(np.float64).ravel()
    ok = np.isfinite(r) & np.isfinite(t)
    return r[ok], t[ok]


def expected_pooled(name: str, pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """The metric over the concatenation of the pairs, computed independently."""
    fin = [_finite(r, t) for r, t in pairs]
    r = np.concatenate([f[0] for f in fin])
    t = np.concatenate([f[1] for f in fin])
    d = t - r
    if name == "l2":
        return float(np.sqrt(np.sum(d * d)))
    if name == "cosine":
        return float(np.dot(r, t) / (np.linalg.norm(r) * np.linalg.norm(t)))
    if name == "max-abs":
        return float(np.max(np.abs(d)))
    if name == "mean-abs":
        return float(np.mean(np.abs(d)))
    if name == "sqnr":
        return 10.0 * math.log10(float(np.sum(r * r)) / float(np.sum(d * d)))
    if name == "rel-diff":
        # each element judged with its own pair's tolerance (its own rms floor)
        within = np.concatenate([np.isclose(ft, fr, rtol=0.1, atol=0.1 * np.sqrt(np.mean(fr * fr)))
                                 for fr, ft in fin])
        return 100.0 * float(np.mean(within))
    if name == "nonfinite":
        return float(sum(np.count_nonzero(np.isfinite(a.astype(np.float64)) & ~np.isfinite(b.astype(np.float64)))
                         for a, b in pairs))
    if name == "kl-softmax":
        rows_r = np.concatenate([a.astype(np.float64).reshape(-1, COLS) for a, _ in pairs])
        rows_t = np.concatenate([b.astype(np.float64).reshape(-1, COLS) for _, b in pairs])
        ok = np.isfinite(rows_r).all(axis=1) & np.isfinite(rows_t).all(axis=1)  # test rows: no -inf masking
        return float(np.mean(rel_entr(softmax(rows_r[ok], axis=1), softmax(rows_t[ok], axis=1)).sum(axis=1)))
    raise AssertionError(name)


def scored(pairs, names=MERGEABLE) -> list[PairContext]:
    return [score_pair(r, t, [M[n] for n in names])[1] for r, t in pairs]


def pooled(name: str, ctxs: list[PairContext], order: list[int] | None = None, tree: str = "left") -> float:
    m = M[name]
    seq = [ctxs[i] for i in (order if order is not None else range(len(ctxs)))]
    if tree == "left":  # ((a+b)+c)+d
        st = functools.reduce(m.merge, [c.states[name] for c in seq])
        cx = functools.reduce(merge_contexts, seq)
    else:  # a+(b+(c+d))
        st = functools.reduce(lambda acc, s: m.merge(s, acc), [c.states[name] for c in reversed(seq)])
        cx = functools.reduce(lambda acc, c: merge_contexts(c, acc), list(reversed(seq)))
    return pooled_value(m, st, cx)


def test_built_in_mergeable_set():
    assert MERGEABLE == sorted(["l2", "cosine", "rel-diff", "max-abs", "mean-abs", "sqnr", "nonfinite",
                                "kl-softmax"])
    assert M["kl"].mergeable is False  # per-pair histogram edges


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", MERGEABLE)
def test_pooled_value_equals_concatenation(seed, name):
    pairs = make_pairs(seed)
    ctxs = scored(pairs)
    got = pooled(name, ctxs)
    want = expected_pooled(name, pairs)
    if name in ("nonfinite", "max-abs"):
        assert got == want
    else:
        assert got == pytest.approx(want, rel=1e-12 if name != "kl-softmax" else 1e-9), (name, got, want)


@pytest.mark.parametrize("name", MERGEABLE)
def test_merge_order_does_not_matter(name):
    ctxs = scored(make_pairs(7) + make_pairs(8)[:1])
    base = pooled(name, ctxs)
    rng = np.random.default_rng(3)
    for _ in range(4):
        order = list(rng.permutation(len(ctxs)))
        for tree in ("left", "right"):
            v = pooled(name, ctxs, order, tree)
            assert v == pytest.approx(base, rel=1e-12, abs=0.0), (name, order, tree)


@pytest.mark.parametrize("name", MERGEABLE)
def test_states_pickle_and_hold_no_arrays_of_the_pair(name):
    pairs = make_pairs(4)
    ctxs = scored(pairs)
    for c in ctxs:
        st = c.states[name]
        blob = pickle.dumps(st)
        assert len(blob) < 1000  # a few numbers, not the activation
        back = pickle.loads(blob)
        assert back == st
    ctxs2 = [pickle.loads(pickle.dumps(c)) for c in ctxs]
    assert pooled(name, ctxs2) == pooled(name, ctxs)


def test_single_pair_merge_is_its_own_value():
    (r, t), = make_pairs(5)[2:3]
    vals, ctx = score_pair(r, t, [M[n] for n in MERGEABLE])
    for n in MERGEABLE:
        assert pooled_value(M[n], ctx.states[n], ctx) == vals[n]


def test_merge_contexts_counts_and_ranges():
    a = PairContext(size=10, ref_dtype="float32", tgt_dtype="float16", ref_range=(-1.0, 2.0), tgt_range=None,
                    ref_nan=1, ref_inf=2, tgt_nan=3, tgt_inf=4, tgt_new_nonfinite=5, finite_size=6,
                    options={"rel_tol": 0.2})
    b = PairContext(size=7, ref_dtype="float32", tgt_dtype="float32", ref_range=(-3.0, 1.0), tgt_range=(0.0, 1.0),
                    ref_nan=10, ref_inf=20, tgt_nan=30, tgt_inf=40, tgt_new_nonfinite=50, finite_size=3,
                    options={"rel_tol": 0.5})
    c = merge_contexts(a, b)
    assert (c.size, c.finite_size, c.ref_nan, c.ref_inf, c.tgt_nan, c.tgt_inf, c.tgt_new_nonfinite) == \
        (17, 9, 11, 22, 33, 44, 55)
    assert c.ref_range == (-3.0, 2.0) and c.tgt_range == (0.0, 1.0)
    assert c.options == {"rel_tol": 0.2}
    assert c.ref_dtype == "float32" and c.tgt_dtype == "mixed"


def test_merge_contexts_with_metrics_merges_states():
    ctxs = scored(make_pairs(6))
    metrics = [M[n] for n in MERGEABLE]
    merged = functools.reduce(lambda x, y: merge_contexts(x, y, metrics), ctxs)
    for n in MERGEABLE:
        assert pooled_value(M[n], merged.states[n], merged) == pytest.approx(pooled(n, ctxs), rel=1e-12)


def test_all_nonfinite_pairs_pool_to_the_empty_value():
    nan = np.full(8, np.nan, np.float32)
    ctxs = [score_pair(nan, nan.copy(), [M[n] for n in MERGEABLE])[1] for _ in range(2)]
    for n in ("cosine", "l2", "rel-diff", "max-abs", "mean-abs", "sqnr"):
        assert math.isnan(pooled(n, ctxs)), n


def test_non_mergeable_metrics_leave_no_state():
    class Peak(Metric):  # a third-party streaming metric that says nothing about merging
        name = "peak"

        def start(self, ctx):
            return 0.0

        def update(self, state, chunk):
            return max(state, float(chunk.absdiff.max()))

        def finish(self, state, ctx):
            return state

    r = np.linspace(-1, 1, 5000, dtype=np.float32)
    t = (r * 1.01).astype(np.float32)
    vals, ctx = score_pair(r, t, [Peak(), M["kl"], M["cosine"]])
    assert vals["peak"] == float(np.max(np.abs(t.astype(np.float64) - r)))
    assert set(ctx.states) == {"cosine"}
    with pytest.raises(NotImplementedError):
        Peak().merge(0.0, 1.0)


def test_third_party_moments_metric_is_fused_and_mergeable():
    class RmsErr(Metric):  # the docs/writing-plugins.md example
        name = "rms-err"
        mergeable = True
        higher_is_better = False
        moments = ("n", "dd")

        def finish(self, state, ctx):
            return math.nan if state["n"] == 0 else math.sqrt(state["dd"] / state["n"])

    m = RmsErr()
    pairs = make_pairs(9)
    ctxs = [score_pair(r, t, [m, M["cosine"]])[1] for r, t in pairs]
    st = functools.reduce(m.merge, [c.states["rms-err"] for c in ctxs])
    got = pooled_value(m, st, functools.reduce(merge_contexts, ctxs))
    d = np.concatenate([np.subtract(*_finite(r, t)[::-1]) for r, t in pairs])
    assert got == pytest.approx(float(np.sqrt(np.mean(d * d))), rel=1e-12)
    bad = type("Bad", (RmsErr,), {"name": "bad", "moments": ("nope",)})()
    with pytest.raises(ValueError, match="unknown moments"):
        score_pair(pairs[0][0], pairs[0][1], [bad])

"""Capture only what pairs (issue 19): the ONNX Runtime target leaves out the tensors no reference
record can pair with, and that changes no paired row, no value and no model output.

The rule (:class:`parity.contract.capture.CaptureWants`) must be a superset of what the matchers pair;
the checks here run the real matcher on real models with and without ``all_tensors`` and compare.
"""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from parity.contract.capture import CaptureWants, learning, squeezed
from parity.contract.records import Activation
from parity.contract.source import RunConfig
from parity.core.compare import CompareSettings, compare

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[3]
ZOO = ROOT / "tests" / "models"


# ------------------------------------------------------------------ the rule itself (no model)

def test_selects_every_way_a_matcher_pairs_and_nothing_else():
    w = CaptureWants()
    assert w.selects("anything", shape=(3, 4))  # before the reference has ended: everything
    w.learn(keys=["fc1", "blk.out"], scopes=["blk.attn"], normalized=["blk.mlp"], shapes=[(1, 8, 32), (2, 5)])
    assert w.ready and w.signature() is not None
    assert w.selects("fc1", shape=(9, 9))                       # same key
    assert w.selects("t", shape=(9, 9), is_output=True)         # a model output
    assert w.selects("t", ["other", "blk.attn"], shape=(9, 9))  # a module the reference recorded
    assert w.selects("t", normalized="blk.mlp", shape=(9, 9))   # same normalized name
    assert w.selects("t", shape=(8, 1, 32))                     # same dims but for size-1 axes
    assert w.selects("t", shape=None)                           # unknown shape: kept
    assert not w.selects("t", ["elsewhere"], "x", shape=(8, 4, 8))  # same size, other dims: no pair
    assert not w.selects("t", shape=(5, 2))
    w.note_skipped(3)
    w.note_skipped(2)
    assert w.skipped == 5
    w.reset()
    assert not w.ready and w.skipped == 0 and w.selects("t", shape=(5, 2))
    assert squeezed((1, 3, 1, 4)) == (3, 4)


def test_loose_dims_are_those_of_records_provenance_may_leave_unpaired():
    w = CaptureWants()
    recs = [("m.a", (1, 8, 32), False), ("m.a", (1, 8, 32), False),  # module m.a called twice
            ("m.b", (1, 8, 64), False),                               # m.b's tensor has other dims
            ("m.drop", (1, 8, 16), False),                            # no tensor of its own (exporter dropped it)
            (None, (3, 3), False),                                    # no scope at all
            ("m.out", (1, 4), True)]                                  # a model output: paired by position
    w.learn(["a", "a2", "b", "d", "n", "o"], ["m.a", "m.b", "m.drop", "m.out"], [], [r[1] for r in recs], recs)
    loose = w.loose_dims({"m.a": [(8, 32)], "m.b": [(8, 65)], "m.out": [(4,)]})
    # m.a's second call has no second tensor; m.b's dims differ; m.drop has none; no scope; output
    assert loose == {(8, 32), (8, 64), (8, 16), (3, 3), (4,)}
    assert w.loose_dims({"m.a": [(8, 32), (1, 8, 32)], "m.b": [(8, 64)], "m.drop": [None],
                         "m.out": [(4,)]}) == {(8, 16), (3, 3), (4,)}
    assert not w.selects("t", ["x"], "x", shape=(8, 32), loose=frozenset({(8, 16)}))
    assert w.selects("t", ["x"], "x", shape=(8, 16), loose=frozenset({(8, 16)}))
    w2 = CaptureWants()
    w2.learn(["a"], ["m.a"], [], [(2, 2)])  # an older caller without records: every reference shape
    assert w2.loose_dims({"m.a": [(2, 2)]}) == {(2, 2)}


def test_learning_passes_the_stream_through_and_learns_when_it_ends():
    w = CaptureWants()
    recs = [Activation("a", np.zeros((1, 4), np.float32), meta={"module_path": "m.a"}),
            Activation("b", np.zeros((2, 3), np.float32), meta={"scopes": ["m.b", "m"]})]
    seen = []
    for r in learning(w, iter(recs), str.upper):
        seen.append(r)
        assert not w.ready  # not before the stream has ended
    assert seen == recs and w.ready
    assert w.keys == {"a", "b"} and w.scopes == {"m.a", "m.b"} and w.normalized == {"A", "B"}
    assert w.dims == {(4,), (2, 3)}
    assert w.records == (("m.a", (1, 4), False), ("m.b", (2, 3), False))


# ------------------------------------------------------------------ real runs

def _rows(rep) -> dict:
    return {(r.ref_name, r.target_name): (r.status, r.match, r.values) for r in rep.layers}


@pytest.mark.parametrize("opt", ["disable", "all"])
@pytest.mark.parametrize("model", [f"{ZOO / 'zoo.py'}:encoder", f"{ZOO / 'real_zoo.py'}:bert"])
def test_default_capture_skips_only_unpairable_tensors(tmp_path, model, opt):
    """Every paired row (names, match method, status) is the same with and without ``all_tensors``;
    only target-only rows go, and the summary counts exactly those. With ONNX Runtime's graph
    optimizations off the metric values are identical too; with them on (the default) they may differ
    in the last bits, because fewer graph outputs let ONNX Runtime fuse more (the leaner capture is the
    one closer to the deployed session)."""
    base = CompareSettings(model=model, ref="torch", target="ort", workdir=str(tmp_path / "wd"),
                           source_options={"ort_graph_optimization": opt})
    lean = compare(base)
    full = compare(replace(base, all_tensors=True))
    lean_rows, full_rows = _rows(lean), _rows(full)
    paired_full = {k: v for k, v in full_rows.items() if k[0] is not None}
    paired_lean = {k: v for k, v in lean_rows.items() if k[0] is not None}
    assert set(paired_lean) == set(paired_full)
    for k, (status, match, values) in paired_lean.items():
        assert (status, match) == paired_full[k][:2], k
        if opt == "disable":
            assert values == paired_full[k][2], k  # exactly: capturing less changed no number
        else:
            for m, v in values.items():  # float32 rounding of a differently fused op: ulps
                assert v == pytest.approx(paired_full[k][2][m], abs=0.01 if m == "rel-diff" else 1e-6), (k, m)
    assert set(lean_rows) <= set(full_rows)
    gone = set(full_rows) - set(lean_rows)
    assert gone, "this model has target tensors no reference layer can pair with"
    assert all(k[0] is None for k in gone)
    assert lean.summary["capture"]["skipped"] == len(gone)
    assert "capture" not in full.summary
    assert lean.summary["matched_by"] == full.summary["matched_by"]


@pytest.mark.parametrize("asked", [{"all_tensors": True}, {"diagnose": True}, {"save_target": "t"},
                                   {"mapping": "m.toml"}, {}])
def test_what_asks_for_every_tensor(asked):
    """--all-tensors, --diagnose (culprit neighbourhoods), --save-target (a whole dump) and a mapping
    file (it may pin any tensor) capture everything; so does a matcher that pairs by other rules."""
    from parity.contract.matcher import Matcher
    from parity.core.compare import capture_wants
    from parity.core.registry import get_matcher

    s = CompareSettings(model="m.py:f", ref="torch", target="ort", **asked)
    got = capture_wants(s, get_matcher("auto"))
    assert (got is None) == bool(asked)
    if not asked:
        assert isinstance(got, CaptureWants) and not got.ready
        assert capture_wants(s, get_matcher("exact")) is not None

        class Mine(Matcher):
            name = "mine"

        assert capture_wants(s, Mine()) is None


def test_captured_outputs_equal_an_outputs_only_run(tmp_path):
    """The lean capture's model output is bit-identical to a plain outputs-only run and to a full capture.

    Graph optimizations are off for all three: with them on, ONNX Runtime fuses differently once an
    intermediate tensor is a graph output (a few ulp apart; what the deployed-outputs check of every
    compare measures). Here any difference would come from the capture itself: which tensors are
    outputs, which are skipped, how the records are built.
    """
    from parity_builtin_onnxruntime.source import OrtSource

    model = f"{ZOO / 'real_zoo.py'}:bert"
    src = OrtSource("fp32")
    feed = {"input_ids": np.random.default_rng(3).integers(0, 100, size=(2, 16), dtype=np.int64)}
    opts = {"ort_graph_optimization": "disable"}
    wants = CaptureWants()
    cfg = RunConfig(model=model, workdir=tmp_path / "wd", options=dict(opts), wants=wants)
    wants.learn(keys=["nothing"], scopes=[], normalized=[], shapes=[(7, 7, 7)])  # pairs with no tensor
    lean_all = list(src.run(cfg, feed))
    everything = list(src.run(RunConfig(model=model, workdir=tmp_path / "wd", options=dict(opts)), feed))
    # left: the outputs, and the few tensors whose shape ONNX inference cannot settle before the run
    assert wants.skipped == len(everything) - len(lean_all) > len(everything) * 0.9
    lean = [a for a in lean_all if a.meta["is_output"]]
    only = list(src.run(RunConfig(model=model, workdir=tmp_path / "wd", options={**opts, "outputs_only": True}),
                        feed))
    full = [a for a in everything if a.meta["is_output"]]
    assert [a.key for a in lean] == [a.key for a in only] == [a.key for a in full] != []
    for a, b, c in zip(lean, only, full):
        np.testing.assert_array_equal(a.array, b.array)
        np.testing.assert_array_equal(a.array, c.array)

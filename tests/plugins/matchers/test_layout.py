"""The auto matcher and exporter layouts: a module's output that the exporter keeps in another axis
order (ONNX LSTM runs sequence-first) is compared element by element in the reference's layout, and
never flat; when shapes cannot tell the axes apart, the pair is refused."""
import numpy as np

from parity import Activation
from parity.contract.matcher import MatchContext
from parity.lib.scoring import metric_similarity
from parity.core.registry import get_metric
from parity_builtin_matchers import AutoMatcher
from parity_builtin_matchers.auto import layout_permutation


def _ctx():
    return MatchContext(similarity=metric_similarity(get_metric("cosine")))


def test_layout_permutation_only_when_unique():
    assert layout_permutation((2, 16, 64), (16, 2, 64)) == (1, 0, 2)
    assert layout_permutation((2, 16, 64), (16, 1, 2, 64)) == (1, 0, 2)  # size-1 axes do not count
    assert layout_permutation((2, 16, 64), (2, 16, 64)) is None  # same layout: nothing to do
    assert layout_permutation((16, 16, 64), (16, 64, 16)) is None  # two 16s: which is which is unknown
    assert layout_permutation((2, 16, 64), (2, 32, 32)) is None  # not a permutation


def test_sequence_first_lstm_output_is_compared_in_batch_first_layout(rng):
    ref_out = rng.standard_normal((2, 16, 8)).astype(np.float32)  # torch batch_first [batch, seq, hidden]
    onnx_y = np.ascontiguousarray(ref_out.transpose(1, 0, 2))  # the exporter's [seq, batch, hidden]
    ref = [Activation("lstm", ref_out, order=0, meta={"module_path": "lstm"})]
    tgt = [Activation("val_145", onnx_y, order=0, meta={"scopes": ["lstm"]})]
    (pair,) = list(AutoMatcher().match(iter(ref), iter(tgt), None, _ctx()))
    assert (pair.ref.key, pair.target.key, pair.how) == ("lstm", "val_145", "provenance")
    assert pair.target.shape == (2, 16, 8)
    np.testing.assert_array_equal(pair.target.array, ref_out)  # element i of one is element i of the other
    assert "layouts differ" in pair.note
    # read flat, the same tensor would be a different one
    assert not np.array_equal(onnx_y.reshape(ref_out.shape), ref_out)


def test_ambiguous_layout_is_left_unmatched(rng):
    ref_out = rng.standard_normal((16, 16, 8)).astype(np.float32)
    tgt_arr = np.ascontiguousarray(ref_out.transpose(0, 2, 1))  # [16, 8, 16]: either 16 could be either
    ref = [Activation("lstm", ref_out, order=0, meta={"module_path": "lstm"})]
    tgt = [Activation("val_1", tgt_arr, order=0, meta={"scopes": ["lstm"]})]
    got = [(p.ref.key if p.ref else None, p.target.key if p.target else None, p.how)
           for p in AutoMatcher().match(iter(ref), iter(tgt), None, _ctx())]
    assert ("lstm", None, "unmatched") in got and (None, "val_1", "unmatched") in got

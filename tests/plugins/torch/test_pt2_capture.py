"""ExportedPrograms (.pt2) and Hugging Face models against ONNX Runtime at fp32: a correct export never
fails, keyword-exported programs run, int64 token ids stay int64, different shapes are never paired."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from parity.contract.matcher import MatchContext
from parity.contract.records import Activation
from parity.core.compare import CompareSettings, compare, gate

transformers = pytest.importorskip("transformers")


class Encoder(nn.Module):
    """A BERT encoder with a padding mask, as Hugging Face builds it (token ids in, hidden states out)."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=32, attn_implementation="eager")
        torch.manual_seed(0)
        self.bert = BertModel(cfg, add_pooling_layer=False).eval()

    def forward(self, input_ids):
        return self.bert(input_ids=input_ids).last_hidden_state


def encoder():
    return Encoder().eval()  # declares no inputs: shapes and dtype come from the feed file


@pytest.fixture(scope="module")
def ids(tmp_path_factory):
    d = tmp_path_factory.mktemp("ids")
    ids = np.random.default_rng(0).integers(0, 100, size=(2, 16)).astype(np.int64)
    np.savez(d / "ids.npz", input_ids=ids)
    return ids, str(d / "ids.npz")


def _check_fp32(rep):
    assert gate(rep) == [], gate(rep)  # an fp32-vs-fp32 comparison of a correct export passes
    for r in rep.matched:
        assert tuple(d for d in r.ref_shape if d != 1) == tuple(d for d in r.target_shape if d != 1), r.name
    assert not rep.summary.get("matched_by", {}).get("value")  # nothing left to guessing by values
    assert "top1_agreement" not in rep.summary  # hidden states are no prediction


def test_module_factory_with_int64_ids_keeps_their_dtype(tmp_path, ids):
    _, path = ids
    rep = compare(CompareSettings(model=f"{__file__}:encoder", ref="torch", target="ort", inputs=path,
                                  workdir=str(tmp_path / "c")))
    _check_fp32(rep)


@pytest.mark.parametrize("keyword", [False, True])
def test_exported_program_matches_by_provenance_and_passes(tmp_path, ids, keyword):
    arr, path = ids
    t = torch.from_numpy(arr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(encoder(), (), {"input_ids": t}) if keyword else torch.export.export(encoder(), (t,))
    model = tmp_path / "enc.pt2"
    torch.export.save(ep, str(model))
    rep = compare(CompareSettings(model=str(model), ref="torch", target="ort", inputs=path,
                                  workdir=str(tmp_path / "c")))
    _check_fp32(rep)
    assert rep.summary["matched_by"]["provenance"] >= 20
    # Dropout in eval returns its input; the exporter drops it: compared with its twin's tensor
    drop = next(r for r in rep.layers if r.ref_name == "bert.embeddings.dropout")
    assert drop.match == "same-values" and drop.values["cosine"] > 0.999999


def test_value_step_never_pairs_tensors_of_different_shapes():
    from parity_builtin_matchers.auto import AutoMatcher

    x = np.random.default_rng(0).standard_normal((2, 32, 384)).astype(np.float32)
    ref = [Activation("a", x.reshape(2, 32, 12, 32), 0, 0, "View", {})]
    tgt = [Activation("b", x.copy(), 0, 0, "Add", {})]  # the same values, flat: cosine 1.0

    def cos(a, b):
        a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    pairs = list(AutoMatcher().pairs(ref, tgt, MatchContext(similarity=cos)))
    assert all(p.ref is None or p.target is None for p in pairs)  # left unmatched, not compared flat

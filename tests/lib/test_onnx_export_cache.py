"""The ONNX export cache must never hand one model's graph to another: two factories of one file,
one workdir, same class and weights, different forward (a plain attribute) -> two different exports."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from parity.contract.source import RunConfig  # noqa: E402
from parity.lib.onnx.models import onnx_input_specs, onnx_model_for  # noqa: E402

MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, negate):
            super().__init__()
            torch.manual_seed(0)
            self.fc = nn.Linear(4, 4)
            self.negate = negate  # neither a weight nor in repr(): only the forward sees it
            self.parity_input_shapes = {"x": (2, 4)}

        def forward(self, x):
            y = self.fc(x)
            return -y if self.negate else torch.relu(y)

    def plain():
        return Net(False).eval()

    def negated():
        return Net(True).eval()
''')


def _ops(path):
    return sorted({n.op_type for n in onnx.load(str(path)).graph.node})


def test_two_factories_of_one_file_get_their_own_export(tmp_path):
    f = tmp_path / "two.py"
    f.write_text(MODEL)
    got = {}
    for name in ("plain", "negated"):
        cfg = RunConfig(model=f"{f}:{name}", workdir=tmp_path / "wd")  # one cache folder for both
        feed = {s.name: np.ones(s.shape, np.float32) for s in onnx_input_specs(cfg)}
        got[name] = onnx_model_for(cfg, feed).path
    assert got["plain"] != got["negated"]
    assert "Relu" in _ops(got["plain"]) and "Relu" not in _ops(got["negated"])
    assert "Neg" in _ops(got["negated"])
    # the same spec again is a cache hit, not a third export
    cfg = RunConfig(model=f"{f}:negated", workdir=tmp_path / "wd")
    assert onnx_model_for(cfg, {"x": np.ones((2, 4), np.float32)}).path == got["negated"]
    assert len(list((tmp_path / "wd" / "onnx").glob("*.onnx"))) == 2

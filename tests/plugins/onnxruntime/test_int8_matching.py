"""ort-int8: every reference layer with a counterpart in the QDQ graph is matched.

ONNX Runtime's quantizer folds an activation (Relu, Clip) into the QuantizeLinear after the node
before it and removes it; that node then writes the activation's output name, so the node's own
output (LeNet's ``ip1``, a Linear's Gemm output) disappeared by name and ``ip1`` was left
reference-only. The fetch map finds it through the fp32 node that produced it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from parity.contract.report import REF_ONLY
from parity.contract.source import RunConfig
from parity.core.compare import CompareSettings, compare
from parity_builtin_onnxruntime import OrtSource

nn = torch.nn
ROOT = Path(__file__).resolve().parents[3]
ZOO = ROOT / "tests" / "models" / "zoo.py"

MODEL = '''
import torch
from torch import nn


class ClipNet(nn.Module):
    """Conv -> ReLU, Conv -> ReLU6 (a Clip), Linear -> ReLU, Linear: every activation folds into a quantizer."""
    parity_input_shapes = {"x": (2, 3, 12, 12)}

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3)
        self.act2 = nn.ReLU6()
        self.fc1 = nn.Linear(8 * 8 * 8, 32)
        self.act3 = nn.ReLU()
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x):
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc2(self.act3(self.fc1(torch.flatten(x, 1))))


def build():
    torch.manual_seed(3)
    return ClipNet().eval()
'''


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def clipnet(tmp_path_factory):
    p = tmp_path_factory.mktemp("m") / "clipnet.py"
    p.write_text(MODEL)
    return f"{p}:build"


def _ref_only(model: str, target: str, cache: str) -> list[str]:
    r = compare(CompareSettings(model=model, target=target, workdir=cache, random_inputs=2))
    assert any(l.target_name for l in r.layers)
    return [l.name for l in r.layers if REF_ONLY in l.notes or (l.ref_name and not l.target_name)]


@pytest.mark.parametrize("which", ["lenet", "clipnet"])
def test_no_reference_layer_is_left_unmatched_under_int8(which, clipnet, cache):
    model = f"{ZOO}:lenet" if which == "lenet" else clipnet
    assert _ref_only(model, "ort-int8", cache) == []


def test_int8_loses_no_layer_the_float_graph_has(cache):
    """ResNet-ish: the exporter folds BatchNorm into the conv (those convs have no counterpart in any
    ONNX target); the QDQ graph, which also folds every ReLU, loses nothing more."""
    assert _ref_only(f"{ZOO}:resnet", "ort-int8", cache) == _ref_only(f"{ZOO}:resnet", "ort", cache)


def test_the_renamed_output_is_the_pre_activation_value_the_folded_quantizer_rounds(cache):
    """Known forward pass: LeNet's ip1 record read from the QDQ graph is the Gemm's own output
    (negative values kept: the ReLU was folded away), and quantizing it with the scale and zero
    point of the QuantizeLinear that replaced the ReLU gives the relu record exactly."""
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    cfg = RunConfig(model=f"{ZOO}:lenet", workdir=Path(cache), options={"ort_threads": 1}, calibration=[{"x": x}])
    recs = {a.meta.get("module_path") or a.name: a for a in OrtSource("int8").run(cfg, {"x": x})}
    ip1, relu = recs["ip1"], recs["relu"]
    assert ip1.array.shape == relu.array.shape == (4, 500)
    assert (ip1.array < 0).any() and (relu.array >= 0).all()
    q = onnx.load(ip1.meta["run_model_file"])
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    qnode = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == relu.name)
    scale = float(inits[qnode.input[1]])
    zp = inits[qnode.input[2]]
    info = np.iinfo(zp.dtype)
    # QuantizeLinear: saturate(round_half_even(x / scale) + zp); DequantizeLinear: (q - zp) * scale
    qv = np.clip(np.rint(ip1.array.astype(np.float32) / np.float32(scale)) + int(zp), info.min, info.max)
    assert np.array_equal(((qv - int(zp)) * np.float32(scale)).astype(np.float32), relu.array)
    # and torch's own ip1 (before its ReLU) is what the record approximates
    import importlib.util

    spec = importlib.util.spec_from_file_location("zoo", ZOO)
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    net = zoo.lenet()
    seen = {}
    net.ip1.register_forward_hook(lambda m, i, o: seen.update(ip1=o.detach().numpy()))  # returns None
    with torch.no_grad():
        net(torch.from_numpy(x))
    a, b = seen["ip1"].astype(np.float64).ravel(), ip1.array.astype(np.float64).ravel()
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.999

"""Tests for the torch sources (torch, torch-fp16, torch-bf16).

Every capture is checked against an independent computation: functional ops on the same
weights, numpy batch-norm arithmetic, or a direct call of the model. Models are tiny and seeded.
"""
from __future__ import annotations

import copy
import itertools
import subprocess
import sys
import threading
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

import torch
nn = torch.nn
F = torch.nn.functional

from parity.contract.errors import ParityError  # noqa: E402
from parity.contract.source import InputSpec, RunConfig  # noqa: E402
from parity.lib.torch_loader import load_torch_model  # noqa: E402
from parity_builtin_torch.source import TorchSource  # noqa: E402

_counter = itertools.count()
# The tests build TorchScript files on purpose; torch 2.13 flags torch.jit as deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


# --------------------------------------------------------------------------- models

class Net(nn.Module):
    """conv -> BN -> inplace ReLU (the classic pitfall) -> block -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def make_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():  # non-trivial running stats so BN is not the identity
        net.bn1.running_mean.uniform_(-0.5, 0.5)
        net.bn1.running_var.uniform_(0.5, 2.0)
        net.bn1.weight.uniform_(0.5, 1.5)
        net.bn1.bias.uniform_(-0.5, 0.5)
    return net.eval()


class Repeat(nn.Module):
    """One block called three times, plus functional ops that hooks cannot see."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        for _ in range(3):
            x = self.block(x)
        x = F.relu(x)
        return torch.softmax(self.head(x), dim=-1)


class Multi(nn.Module):
    """Returns a tuple with None and an int, and a dict holding an integer tensor."""

    def forward(self, x):
        return x * 2, None, {"a": x + 1, "n": 3, "idx": x.argmax(-1), "b": x - 1}


class Silent(nn.Module):
    def forward(self, x):
        return None


class MultiNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.multi = Multi()
        self.silent = Silent()

    def forward(self, x):
        y = self.lin(x)
        self.silent(y)
        a, _, d = self.multi(y)
        return {"logits": a, "extra": (d["a"], d["b"])}


class Tick(nn.Module):
    """Identity that logs when its forward ran, to observe interleaving with the consumer."""

    def __init__(self, name: str, events: list[str]) -> None:
        super().__init__()
        self.tag = name
        self.events = events

    def forward(self, x):
        self.events.append(f"fwd:{self.tag}")
        return x + 1


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def encode(self, x):
        return torch.tanh(self.proj(x))

    def forward(self, x):
        return self.encode(x)


class Helpers(nn.Module):
    """Submodules reached through a helper method and through a submodule's non-forward method."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = Encoder()
        self.fc = nn.Linear(4, 4)

    def helper(self, x):
        return self.fc(x)

    def forward(self, x):
        return self.helper(self.enc.encode(x)) + self.enc(x)


class Boom(nn.Module):
    def forward(self, x):
        raise ValueError("boom in layer")


class Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.emb = nn.Embedding(10, 4)
        self.lin = nn.Linear(4, 3)

    def forward(self, ids):
        return self.lin(self.emb(ids))


# --------------------------------------------------------------------------- helpers

def spec_for(monkeypatch: pytest.MonkeyPatch, model: nn.Module, shapes: dict | None = None,
             fresh: bool = True) -> str:
    """A Python spec 'module:factory' for an in-memory model (a fresh deep copy per load unless not ``fresh``)."""
    name = f"_parity_test_models_{next(_counter)}"
    mod = types.ModuleType(name)

    def factory():
        m = copy.deepcopy(model) if fresh else model
        return (m, shapes) if shapes is not None else m

    mod.factory = factory
    monkeypatch.setitem(sys.modules, name, mod)
    return f"{name}:factory"


def run(model: str, feed: dict, precision: str = "fp32", **options) -> list:
    src = TorchSource(precision)
    return list(src.run(RunConfig(model=model, options=options), feed))


def by_key(records: list) -> dict:
    return {r.key: r for r in records}


def bn_numpy(y: np.ndarray, bn: nn.BatchNorm2d) -> np.ndarray:
    """Inference batch norm written out in numpy."""
    g = lambda t: t.detach().numpy().astype(np.float64).reshape(1, -1, 1, 1)  # noqa: E731
    return ((y - g(bn.running_mean)) / np.sqrt(g(bn.running_var) + bn.eps)) * g(bn.weight) + g(bn.bias)


@pytest.fixture
def x_img() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)


# --------------------------------------------------------------------------- registration

def test_plugin_registers_three_sources_and_import_is_cheap():
    from parity.core.registry import registry

    reg = registry()["source"]
    for name, prec in [("torch", "fp32"), ("torch-fp16", "fp16"), ("torch-bf16", "bf16")]:
        obj = reg[name].obj
        assert isinstance(obj, TorchSource) and obj.precision == prec and obj.name == name
        assert obj.check() is None
    code = "import sys, parity_builtin_torch; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_check_reports_missing_cuda():
    cfg = RunConfig(model="m.pt", device="cuda")
    reason = TorchSource().check(cfg)
    if torch.cuda.is_available():
        assert reason is None
    else:
        assert reason and "CUDA" in reason and "\n" not in reason


# --------------------------------------------------------------------------- values

def test_records_equal_independent_forward(monkeypatch, x_img):
    net = make_net()
    recs = run(spec_for(monkeypatch, net), {"x": x_img})
    names = [r.name for r in recs if not r.meta.get("is_output")]
    # children finish before their container; the root is not a record
    assert names == ["conv1", "bn1", "relu", "layer1.0", "layer1.1", "layer1", "pool", "fc"]
    assert [r.order for r in recs] == list(range(len(recs)))
    r = by_key(recs)
    x = torch.from_numpy(x_img)
    with torch.no_grad():
        conv1 = F.conv2d(x, net.conv1.weight, net.conv1.bias, padding=1).numpy()
    np.testing.assert_allclose(r["conv1"].array, conv1, rtol=1e-5, atol=1e-6)
    assert r["conv1"].op_type == "Conv2d"
    assert r["conv1"].meta["module_type"] == "torch.nn.modules.conv.Conv2d"
    assert r["conv1"].meta["module_path"] == "conv1" and r["conv1"].meta["call_index"] == 0
    # BN record is pre-ReLU although ReLU(inplace=True) overwrote that very tensor afterwards
    bn = bn_numpy(conv1.astype(np.float64), net.bn1)
    assert (r["bn1"].array < 0).any()
    np.testing.assert_allclose(r["bn1"].array, bn, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r["relu"].array, np.maximum(bn, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(r["layer1"].array, r["layer1.1"].array)  # container = last child
    with torch.no_grad():
        expected = net(x.clone()).numpy()
    out = [a for a in recs if a.meta.get("is_output")]
    assert len(out) == 1 and out[0].name == "output" and out[0].output_index == 0
    assert out[0] is recs[-1]
    np.testing.assert_allclose(out[0].array, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r["fc"].array, expected, rtol=1e-5, atol=1e-6)
    assert r["conv1"].dtype == "float32" and r["conv1"].meta["precision"] == "fp32"


def test_repeated_calls_get_their_own_records(monkeypatch):
    torch.manual_seed(1)
    model = Repeat().eval()
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    recs = run(spec_for(monkeypatch, model), {"x": x})
    names = [r.name for r in recs]
    assert names == ["block", "block#1", "block#2", "head", "output"]
    assert [r.meta.get("call_index") for r in recs[:3]] == [0, 1, 2]
    h = torch.from_numpy(x)
    with torch.no_grad():
        for rec in recs[:3]:
            h = F.linear(h, model.block.weight, model.block.bias)
            np.testing.assert_allclose(rec.array, h.numpy(), rtol=1e-5, atol=1e-6)
        expected = torch.softmax(F.linear(F.relu(h), model.head.weight, model.head.bias), -1).numpy()
    np.testing.assert_allclose(recs[-1].array, expected, rtol=1e-5, atol=1e-6)


def test_tuple_dict_and_non_tensor_outputs(monkeypatch):
    torch.manual_seed(2)
    model = MultiNet().eval()
    x = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    spec = spec_for(monkeypatch, model)
    recs = run(spec, {"x": x})
    assert not any(r.name == "silent" for r in recs)  # returned None: nothing to record
    multi = [r for r in recs if r.name == "multi"]
    # leaves in order: x*2 (0), a (1), idx (2, integer: skipped), b (3); None and 3 are not tensors
    assert [(r.output_index, r.meta["output_key"]) for r in multi] == [(0, "0"), (1, "2.a"), (3, "2.b")]
    y = x @ model.lin.weight.detach().numpy().T + model.lin.bias.detach().numpy()
    np.testing.assert_allclose(multi[0].array, y * 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(multi[1].array, y + 1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(multi[2].array, y - 1, rtol=1e-5, atol=1e-6)
    assert [r.key for r in multi] == ["multi", "multi:1", "multi:3"]
    outs = [r for r in recs if r.meta.get("is_output")]
    assert [(r.name, r.output_index, r.meta["output_key"]) for r in outs] == [
        ("output", 0, "logits"), ("output", 1, "extra.0"), ("output", 2, "extra.1")]
    np.testing.assert_allclose(outs[2].array, y - 1, rtol=1e-5, atol=1e-6)
    # integer tensors are captured on request
    with_int = [r for r in run(spec, {"x": x}, torch_include_integer=True) if r.name == "multi"]
    idx = [r for r in with_int if r.output_index == 2]
    assert len(idx) == 1 and idx[0].dtype == "int64"
    np.testing.assert_array_equal(idx[0].array, y.argmax(-1))


@pytest.mark.parametrize("precision,np_dtype,meta_dtype,tol", [
    ("fp16", "float16", "float16", 2e-2),
    ("bf16", "float32", "bfloat16", 8e-2),
])
def test_reduced_precision(monkeypatch, x_img, precision, np_dtype, meta_dtype, tol):
    net = make_net()
    spec = spec_for(monkeypatch, net)
    ref = by_key(run(spec, {"x": x_img}))
    low = run(spec, {"x": x_img}, precision=precision)
    assert [r.key for r in low] == list(ref)
    for rec in low:
        assert rec.dtype == np_dtype and rec.meta["dtype"] == meta_dtype
        assert rec.meta["precision"] == precision
        r = ref[rec.key].array
        err = np.abs(rec.array.astype(np.float32) - r).max()
        assert err <= tol * (1 + np.abs(r).max()), (rec.key, err)
    # the values really are low precision, not fp32 relabelled
    low_conv = by_key(low)["conv1"].array.astype(np.float32)
    assert not np.array_equal(low_conv, ref["conv1"].array)
    if precision == "bf16":  # bf16 keeps 8 mantissa bits: the low 16 bits of each float32 are zero
        assert (low_conv.view(np.uint32) & 0xFFFF == 0).all()


def test_integer_inputs_are_not_cast(monkeypatch):
    model = Embed().eval()
    ids = np.array([[1, 2, 9, 0]], dtype=np.int64)
    spec = spec_for(monkeypatch, model, {"ids": ((1, 4), "int64")})
    assert TorchSource("fp16").input_specs(RunConfig(model=spec)) == [InputSpec("ids", (1, 4), "int64")]
    recs = by_key(run(spec, {"ids": ids}, precision="fp16"))
    assert recs["emb"].dtype == "float16"
    np.testing.assert_allclose(recs["emb"].array, model.emb.weight.detach().numpy()[ids].astype(np.float16))


# --------------------------------------------------------------------------- model forms

def test_torchscript_scripted_and_traced_match_eager(monkeypatch, tmp_path, x_img):
    torch.manual_seed(1)
    rep = Repeat().eval()
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    eager = run(spec_for(monkeypatch, rep), {"x": x})
    scripted, traced = tmp_path / "s.pt", tmp_path / "t.pt"
    torch.jit.save(torch.jit.script(rep), str(scripted))
    torch.jit.save(torch.jit.trace(rep, torch.from_numpy(x)), str(traced))
    for path in (scripted, traced):
        src = TorchSource()
        cfg = RunConfig(model=str(path))
        with pytest.raises(ParityError, match=r"--input-shape x:"):
            src.input_specs(cfg)
        cfg.input_shapes = {"x": (3, 6)}
        # the module declares no dtype: None, so a feed keeps its own (parity.core.inputs.check_feed)
        assert src.input_specs(cfg) == [InputSpec("x", (3, 6), None)]
        for _ in range(3):  # reused module, past the JIT's profiling runs: records neither double nor vanish
            recs = list(src.run(cfg, {"x": x}))
            assert [r.key for r in recs] == [r.key for r in eager], path.name
            for a, b in zip(recs, eager):
                np.testing.assert_allclose(a.array, b.array, rtol=1e-5, atol=1e-6)
        assert recs[0].op_type == "Linear" and recs[0].meta["module_type"].endswith("Linear")
    # a scripted module keeps a declared parity_input_shapes instance attribute
    declared = copy.deepcopy(rep)
    declared.parity_input_shapes = {"x": (3, 6)}
    torch.jit.save(torch.jit.script(declared), str(tmp_path / "d.pt"))
    assert TorchSource().input_specs(RunConfig(model=str(tmp_path / "d.pt"))) == [InputSpec("x", (3, 6))]
    # Inplace pitfall and nested paths through TorchScript too
    net = make_net()
    torch.jit.save(torch.jit.script(net), str(tmp_path / "net.pt"))
    ts = by_key(run(str(tmp_path / "net.pt"), {"x": x_img}))
    ref = by_key(run(spec_for(monkeypatch, net), {"x": x_img}))
    assert list(ts) == list(ref)
    assert (ts["bn1"].array < 0).any()
    np.testing.assert_allclose(ts["bn1"].array, ref["bn1"].array, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ts["output"].array, ref["output"].array, rtol=1e-5, atol=1e-6)
    fp16 = by_key(run(str(tmp_path / "net.pt"), {"x": x_img}, precision="fp16"))
    assert fp16["layer1.0"].dtype == "float16"


def test_torchscript_paths_through_helper_methods(monkeypatch, tmp_path):
    torch.manual_seed(4)
    model = Helpers().eval()
    x = np.random.default_rng(4).standard_normal((2, 4)).astype(np.float32)
    eager = run(spec_for(monkeypatch, model), {"x": x})
    # eager hooks see only __call__: enc.encode() is not a call of enc, but proj inside it is
    assert [r.key for r in eager] == ["enc.proj", "fc", "enc.proj#1", "enc", "output"]
    torch.jit.save(torch.jit.script(model), str(tmp_path / "h.pt"))
    ts = run(str(tmp_path / "h.pt"), {"x": x})
    assert [r.key for r in ts] == [r.key for r in eager]
    for a, b in zip(ts, eager):
        np.testing.assert_allclose(a.array, b.array, rtol=1e-5, atol=1e-6)


def test_exported_program_fx_and_modules(monkeypatch, tmp_path, x_img):
    net = make_net()
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.from_numpy(x_img),)), str(path))
    loaded = load_torch_model(RunConfig(model=str(path)))
    assert loaded.kind == "exported" and loaded.input_names == ["x"]
    assert TorchSource().input_specs(RunConfig(model=str(path))) == [InputSpec("x", (2, 3, 6, 6), "float32")]
    ref = by_key(run(spec_for(monkeypatch, net), {"x": x_img}))
    fx = by_key(run(str(path), {"x": x_img}, torch_capture="fx"))
    assert {"conv1/conv2d", "bn1/batch_norm", "relu/relu_", "layer1.0/conv2d", "fc/linear"} <= set(fx)
    assert fx["conv1/conv2d"].meta["module_type"] == "torch.nn.modules.conv.Conv2d"
    assert fx["conv1/conv2d"].meta["capture"] == "fx"
    np.testing.assert_allclose(fx["conv1/conv2d"].array, ref["conv1"].array, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fx["bn1/batch_norm"].array, ref["bn1"].array, rtol=1e-5, atol=1e-6)
    assert (fx["bn1/batch_norm"].array < 0).any()  # the graph's relu_ came later
    np.testing.assert_allclose(fx["output"].array, ref["output"].array, rtol=1e-5, atol=1e-6)
    mods = by_key(run(str(path), {"x": x_img}, torch_capture="modules"))
    assert list(mods) == list(ref)
    assert list(by_key(run(str(path), {"x": x_img}))) == list(ref)  # the default for .pt2: modules
    assert mods["conv1"].meta["module_type"] == "torch.nn.modules.conv.Conv2d"
    for k in ref:
        np.testing.assert_allclose(mods[k].array, ref[k].array, rtol=1e-5, atol=1e-6)


def test_fx_capture_sees_functional_ops(monkeypatch):
    torch.manual_seed(1)
    model = Repeat().eval()
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    spec = spec_for(monkeypatch, model)
    hooks = by_key(run(spec, {"x": x}))
    fx = by_key(run(spec, {"x": x}, torch_capture="fx"))
    assert "relu" not in hooks and "softmax" not in hooks
    assert ["block/linear", "block#1/linear", "block#2/linear", "relu", "head/linear", "softmax", "output"] == \
        [k for k in fx]
    np.testing.assert_allclose(fx["relu"].array, np.maximum(hooks["block#2"].array, 0), rtol=1e-6)
    np.testing.assert_allclose(fx["softmax"].array, hooks["output"].array, rtol=1e-5, atol=1e-7)
    assert fx["block#2/linear"].meta["module_call_index"] == 2
    np.testing.assert_allclose(fx["block#1/linear"].array, hooks["block#1"].array, rtol=1e-5, atol=1e-6)


def test_python_spec_from_file_with_declared_shapes(tmp_path, monkeypatch):
    (tmp_path / "helper_layers.py").write_text(
        "import torch.nn as nn\n"
        "def body():\n    return nn.Sequential(nn.Linear(3, 4), nn.Tanh())\n")
    (tmp_path / "mymodel.py").write_text(
        "import torch, torch.nn as nn\n"
        "from helper_layers import body\n"  # a sibling import, as when running the file
        "class M(nn.Module):\n"
        "    parity_input_shapes = {'a': (2, 3)}\n"
        "    def __init__(self):\n"
        "        super().__init__(); torch.manual_seed(5); self.body = body()\n"
        "    def forward(self, a, scale: float = 1.0):\n"
        "        return self.body(a) * scale\n"
        "def make():\n    return M()\n"
        "def make_pair():\n    return M(), {'a': (4, 3)}\n"
        "def bad():\n    raise RuntimeError('factory exploded')\n"
        "def not_module():\n    return 42\n")
    spec = f"{tmp_path / 'mymodel.py'}:make"
    src = TorchSource()
    assert src.input_specs(RunConfig(model=spec)) == [InputSpec("a", (2, 3), "float32")]
    assert src.input_specs(RunConfig(model=f"{tmp_path / 'mymodel.py'}:make_pair")) == [InputSpec("a", (4, 3))]
    over = RunConfig(model=spec, input_shapes={"a": (7, 3)})
    assert src.input_specs(over) == [InputSpec("a", (7, 3), "float32")]
    with pytest.raises(ParityError, match=r"'zz' are not inputs .*inputs are a, scale"):
        src.input_specs(RunConfig(model=spec, input_shapes={"zz": (1,)}))
    a = np.random.default_rng(5).standard_normal((2, 3)).astype(np.float32)
    recs = by_key(run(spec, {"a": a}))
    torch.manual_seed(5)
    lin = nn.Linear(3, 4)
    expected = np.tanh(a @ lin.weight.detach().numpy().T + lin.bias.detach().numpy())
    np.testing.assert_allclose(recs["body.1"].array, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(recs["output"].array, expected, rtol=1e-5, atol=1e-6)
    # dotted module spec importable from the working directory
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_torch_model(RunConfig(model="mymodel:make"))
    assert loaded.kind == "python" and loaded.input_names == ["a", "scale"]
    assert loaded.optional_inputs == {"scale"}


def test_state_dict_is_loaded_with_weights_only(monkeypatch, tmp_path, x_img):
    trained = make_net(seed=0)
    sd = tmp_path / "weights.pt"
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, str(sd))  # a typical checkpoint
    spec = spec_for(monkeypatch, make_net(seed=7))  # same architecture, other weights
    plain = by_key(run(spec, {"x": x_img}))
    with_sd = by_key(run(spec, {"x": x_img}, state_dict=str(sd)))
    with torch.no_grad():
        expected = trained(torch.from_numpy(x_img)).numpy()
    np.testing.assert_allclose(with_sd["output"].array, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(plain["output"].array, expected)
    bad = tmp_path / "other.pt"
    torch.save(nn.Linear(2, 2).state_dict(), str(bad))
    with pytest.raises(ParityError, match=r"state dict .*other\.pt does not fit"):
        run(spec, {"x": x_img}, state_dict=str(bad))


def test_trust_gate_for_pickled_modules(tmp_path, x_img):
    net = make_net()
    path = tmp_path / "full.pt"
    torch.save(net, str(path))
    with pytest.raises(ParityError, match=r"full\.pt is not TorchScript and may be a pickled .*--trust-model"):
        run(str(path), {"x": x_img})
    recs = by_key(run(str(path), {"x": x_img}, trust_model=True))
    with torch.no_grad():
        np.testing.assert_allclose(recs["output"].array, net(torch.from_numpy(x_img)).numpy(), rtol=1e-5)
    assert load_torch_model(RunConfig(model=str(path), options={"trust_model": True})).kind == "pickle"


# --------------------------------------------------------------------------- streaming

def _tick_model(events: list[str], n: int = 10) -> nn.Module:
    return nn.Sequential(*[Tick(f"t{i}", events) for i in range(n)])


def test_records_stream_before_forward_finishes(monkeypatch):
    events: list[str] = []
    spec = spec_for(monkeypatch, _tick_model(events), fresh=False)
    got, snapshots = [], {}
    # step_bytes=1: the queue holds one record at a time (a record above the budget is queued alone)
    for rec in TorchSource().run(RunConfig(model=spec, step_bytes=1), {"input": np.zeros((1, 2), np.float32)}):
        got.append(rec.name)
        if rec.name in ("0", "5"):
            time.sleep(0.2)  # a slow consumer: an unbounded producer would finish meanwhile
            snapshots[rec.name] = [e for e in events if e.startswith("fwd:")]
    assert got == [str(i) for i in range(10)] + ["output"]
    # bounded queue: while the consumer holds record k the forward is at most two layers ahead
    assert len(snapshots["0"]) <= 3 and "fwd:t9" not in snapshots["0"]
    assert len(snapshots["5"]) <= 8
    # the default budget (32 MiB) lets the forward run ahead over small records: few hand-overs
    events2: list[str] = []
    spec2 = spec_for(monkeypatch, _tick_model(events2), fresh=False)
    for rec in TorchSource().run(RunConfig(model=spec2), {"input": np.zeros((1, 2), np.float32)}):
        if rec.name == "0":
            time.sleep(0.2)
            ahead = [e for e in events2 if e.startswith("fwd:")]
    assert "fwd:t9" in ahead


def test_closing_the_generator_stops_the_forward(monkeypatch):
    events: list[str] = []
    spec = spec_for(monkeypatch, _tick_model(events, 50), fresh=False)
    # step_bytes=1: the queue holds one record, so the forward is at most two layers ahead when the
    # consumer closes (with the default budget 50 tiny records fit, and a fast forward could finish first)
    gen = TorchSource().run(RunConfig(model=spec, step_bytes=1), {"input": np.zeros((1, 2), np.float32)})
    first = next(gen)
    assert first.name == "0"
    gen.close()
    assert not any(t.name == "parity-torch-forward" and t.is_alive() for t in threading.enumerate())
    assert "fwd:t49" not in events  # the forward was abandoned, not run to the end


def test_forward_errors_reach_the_consumer(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), Boom(), nn.Linear(2, 2))
    gen = TorchSource().run(RunConfig(model=spec_for(monkeypatch, model)), {"input": np.ones((1, 2), np.float32)})
    assert next(gen).name == "0"  # what ran before the failure still arrives
    with pytest.raises(ParityError, match=r"failed\. Note: ValueError: boom in layer") as info:
        next(gen)
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(ParityError, match=r"RuntimeError: mat1 and mat2"):
        run(spec_for(monkeypatch, nn.Linear(2, 2)), {"input": np.ones((1, 5), np.float32)})


# --------------------------------------------------------------------------- bad input

def _write_onnx(path: Path) -> None:
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path.write_bytes(helper.make_model(g).SerializeToString())


@pytest.fixture
def bad_models(tmp_path, monkeypatch):
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(tmp_path / "good.pt"))
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with zipfile.ZipFile(tmp_path / "broken_ts.pt", "w") as z:  # right layout, garbage content
        z.writestr("m/constants.pkl", b"not a pickle")
        z.writestr("m/code/__torch__.py", b"garbage")
    (tmp_path / "noise.bin").write_bytes(bytes(range(7, 200)))
    _write_onnx(tmp_path / "model.onnx")
    _write_onnx(tmp_path / "misnamed.pt")
    torch.save(nn.Linear(2, 2).state_dict(), str(tmp_path / "sd.pt"))
    torch.save([1, 2, 3], str(tmp_path / "list.pt"))
    (tmp_path / "factories.py").write_text(
        "import torch.nn as nn\n"
        "def bad():\n    raise RuntimeError('factory exploded')\n"
        "def not_module():\n    return 42\n"
        "def ok():\n    return nn.Linear(2, 2)\n")
    (tmp_path / "syntax_error.py").write_text("def broken(:\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("model,options,match", [
    ("missing.pt", {}, r"model missing\.pt does not exist"),
    ("truncated.pt", {}, r"truncated\.pt is a truncated or corrupt zip"),
    ("broken_ts.pt", {}, r"cannot load TorchScript model broken_ts\.pt"),
    ("noise.bin", {}, r"noise\.bin is not a PyTorch model file"),
    ("model.onnx", {}, r"model\.onnx looks like an ONNX model"),
    ("misnamed.pt", {}, r"misnamed\.pt looks like an ONNX model"),
    ("sd.pt", {}, r"sd\.pt holds a state dict .*--state-dict"),
    ("list.pt", {}, r"list\.pt holds a list, not a model"),
    (".", {}, r"is a directory"),
    ("factories.py:nope", {}, r"has no attribute 'nope'.*bad, not_module, ok"),
    ("factories.py:bad", {}, r"calling the factory raised RuntimeError: factory exploded"),
    ("factories.py:not_module", {}, r"returned int, not a torch\.nn\.Module"),
    ("syntax_error.py:broken", {}, r"importing syntax_error\.py failed: SyntaxError"),
    ("no_such_pkg_xyz.mod:make", {}, r"no module named 'no_such_pkg_xyz'"),
    ("factories.py:ok", {"state_dict": "nowhere.pt"}, r"state dict nowhere\.pt does not exist"),
    ("factories.py:ok", {"torch_capture": "ops"}, r"torch_capture='ops' is not a capture mode"),
    ("good.pt", {"torch_capture": "fx"}, r"torch_capture=fx cannot run TorchScript model good\.pt"),
])
def test_bad_input_is_one_line_parity_error(bad_models, model, options, match):
    with pytest.raises(ParityError, match=match) as info:
        run(model, {"input": np.ones((1, 2), np.float32)}, **options)
    assert "\n" not in str(info.value)


def test_bad_feeds(bad_models):
    with pytest.raises(ParityError, match=r"feed has inputs 'x' .*its inputs are input"):
        run("factories.py:ok", {"x": np.ones((1, 2), np.float32)})
    with pytest.raises(ParityError, match=r"feed lacks inputs 'input'"):
        run("factories.py:ok", {})


def test_forward_star_args_takes_names_from_user(monkeypatch):
    class StarArgs(nn.Module):
        def forward(self, *xs):
            return xs[0] - xs[1]

    spec = spec_for(monkeypatch, StarArgs())
    src = TorchSource()
    with pytest.raises(ParityError, match=r"input names and shapes are unknown.*--input-shape"):
        src.input_specs(RunConfig(model=spec))
    specs = src.input_specs(RunConfig(model=spec, input_shapes={"a": (2,), "b": (2,)}))
    assert [s.name for s in specs] == ["a", "b"]
    recs = run(spec, {"a": np.array([3, 4], np.float32), "b": np.array([1, 1], np.float32)})
    np.testing.assert_array_equal(recs[-1].array, [2, 3])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("form,precision,capture", [
    ("python", "fp16", "modules"), ("python", "bf16", "fx"), ("torchscript", "fp16", "modules"),
    ("exported", "fp32", "auto"),
])
def test_cuda_matches_cpu(monkeypatch, tmp_path, x_img, form, precision, capture):
    net = make_net()
    spec = spec_for(monkeypatch, net)
    model = spec
    if form == "torchscript":
        model = str(tmp_path / "net.pt")
        torch.jit.save(torch.jit.script(net), model)
    elif form == "exported":
        model = str(tmp_path / "net.pt2")
        torch.export.save(torch.export.export(net, (torch.from_numpy(x_img),)), model)
    cpu = by_key(run(model, {"x": x_img}, torch_capture=capture))
    src = TorchSource(precision)
    cfg = RunConfig(model=model, device="cuda", options={"torch_capture": capture})
    assert src.check(cfg) is None
    gpu = list(src.run(cfg, {"x": x_img}))
    assert [r.key for r in gpu] == list(cpu)
    assert all(r.meta["device"].startswith("cuda") for r in gpu)
    tol = {"fp32": 1e-3, "fp16": 2e-2, "bf16": 8e-2}[precision]
    for r in gpu:
        np.testing.assert_allclose(r.array.astype(np.float32), cpu[r.key].array, rtol=tol, atol=tol)
    assert (by_key(gpu)["bn1" if capture == "modules" else "bn1/batch_norm"].array < 0).any()


class Optional3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.lin = nn.Linear(2, 2)

    def forward(self, a, b=None, c=None):
        y = self.lin(a)
        if c is not None:
            y = y * c
        values, _ = torch.max(y, dim=-1)  # a multi-output op: only the used output is recorded
        return y, values


@pytest.mark.parametrize("capture", ["modules", "fx"])
def test_skipped_optional_input_is_passed_by_keyword(monkeypatch, capture):
    model = Optional3().eval()
    a = np.array([[1.0, -2.0]], np.float32)
    c = np.array([[3.0, 0.5]], np.float32)
    recs = by_key(run(spec_for(monkeypatch, model), {"a": a, "c": c}, torch_capture=capture))
    with torch.no_grad():
        y, v = model(torch.from_numpy(a), c=torch.from_numpy(c))
    np.testing.assert_allclose(recs["output"].array, y.numpy(), rtol=1e-6)
    np.testing.assert_allclose(recs["output:1"].array, v.numpy(), rtol=1e-6)
    if capture == "fx":
        assert [k for k in recs if k.startswith("max")] == ["max"]
        np.testing.assert_allclose(recs["max"].array, v.numpy(), rtol=1e-6)


def test_shared_factory_instance_is_not_cast_under_another_source(monkeypatch, x_img):
    net = make_net()
    spec = spec_for(monkeypatch, net, fresh=False)  # the factory returns one and the same object
    cfg = RunConfig(model=spec)
    ref_gen = TorchSource("fp32").run(cfg, {"x": x_img})
    low_gen = TorchSource("fp16").run(cfg, {"x": x_img})
    pairs = list(zip(ref_gen, low_gen))  # interleaved, as the engine pairs them
    assert pairs and all(r.dtype == "float32" and t.dtype == "float16" for r, t in pairs)
    for r, t in pairs:
        assert r.key == t.key
        np.testing.assert_allclose(t.array.astype(np.float32), r.array, rtol=2e-2, atol=2e-2)

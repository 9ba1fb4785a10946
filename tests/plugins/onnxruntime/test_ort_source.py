"""ONNX Runtime source (ort, ort-fp16, ort-int8), torch->ONNX export and ONNX provenance.

Reference values come from the torch model itself (forward hooks that clone each module's
output per call), never from onnxruntime, so the source is checked against a known forward
pass. Models are tiny and seeded; the exports are shared per module to keep the file fast.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import torch
import onnx
nn = torch.nn

from parity import ParityError  # noqa: E402
from parity.core import registry as plugins  # noqa: E402
from parity.contract.source import RunConfig  # noqa: E402
from parity_builtin_onnxruntime import OrtSource  # noqa: E402
from parity_builtin_onnxruntime import runner as ort_runner  # noqa: E402
from parity.lib.onnx import export as export_mod  # noqa: E402
from parity.lib.onnx.export import cached_export, export_onnx  # noqa: E402
from parity.lib.onnx.provenance import (module_output_calls, module_outputs,  # noqa: E402
                                                   parse_namespace, parse_scope_name)

# ----------------------------------------------------------------------------- models

MODEL_SRC = textwrap.dedent('''
    import math
    import torch
    from torch import nn


    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.conv2(y)
            return self.relu(y + x)          # second call of the same ReLU, residual add


    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.layer1 = nn.Sequential(Block(8), Block(8))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            x = self.layer1(self.stem(x))
            return self.fc(torch.flatten(self.pool(x), 1))


    class Attention(nn.Module):
        def __init__(self, d, heads):
            super().__init__()
            self.heads = heads
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.softmax = nn.Softmax(dim=-1)

        def forward(self, x):
            b, t, d = x.shape
            hd = d // self.heads
            split = lambda z: z.view(b, t, self.heads, hd).transpose(1, 2)
            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            a = self.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd))
            return self.o((a @ v).transpose(1, 2).reshape(b, t, d))


    class EncoderLayer(nn.Module):
        def __init__(self, d=16, heads=2):
            super().__init__()
            self.ln1 = nn.LayerNorm(d)
            self.attn = Attention(d, heads)
            self.ln2 = nn.LayerNorm(d)
            self.fc1 = nn.Linear(d, 32)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(32, d)

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.fc2(self.act(self.fc1(self.ln2(x))))


    def _randomize(m, seed):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for mod in m.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    n = mod.num_features
                    mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                    mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                    mod.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    mod.bias.copy_(torch.randn(n, generator=g) * 0.1)
                if isinstance(mod, nn.LayerNorm):
                    mod.weight.copy_(1 + 0.1 * torch.randn(mod.weight.shape, generator=g))
                    mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
        return m.eval()


    def make_cnn():
        torch.manual_seed(0)
        return _randomize(SmallCNN(), 1), {"x": (2, 3, 8, 8)}


    def make_encoder():
        torch.manual_seed(0)
        return _randomize(EncoderLayer(), 2), {"x": (2, 6, 16)}
''')


@pytest.fixture(scope="module")
def models_py(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("models") / "tiny_models.py"
    p.write_text(MODEL_SRC)
    return p


@pytest.fixture(scope="module")
def models(models_py):
    ns: dict = {}
    exec(compile(MODEL_SRC, str(models_py), "exec"), ns)
    return ns


def _input(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def torch_outputs(module, x: np.ndarray) -> tuple[dict[tuple[str, int], np.ndarray], np.ndarray]:
    """Each module's output per call, cloned at once (an inplace ReLU rewrites its input later)."""
    seen: dict[tuple[str, int], np.ndarray] = {}
    calls: dict[str, int] = {}
    hooks = []
    for name, mod in module.named_modules():
        if not name:
            continue

        def hook(_m, _inp, out, _name=name):
            k = calls.get(_name, 0)
            calls[_name] = k + 1
            if isinstance(out, torch.Tensor):
                seen[(_name, k)] = out.detach().clone().numpy()

        hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        y = module(torch.from_numpy(x)).numpy()
    for h in hooks:
        h.remove()
    return seen, y


@pytest.fixture(scope="module")
def cnn(models, tmp_path_factory):
    module, shapes = models["make_cnn"]()
    x = _input(shapes["x"])
    path = export_onnx(module, {"x": x}, tmp_path_factory.mktemp("cnn") / "cnn.onnx")
    return module, x, path


@pytest.fixture(scope="module")
def encoder(models, tmp_path_factory):
    module, shapes = models["make_encoder"]()
    x = _input(shapes["x"])
    path = export_onnx(module, {"x": x}, tmp_path_factory.mktemp("enc") / "enc.onnx")
    return module, x, path


def run(precision: str, path, feed, workdir, **options):
    options.setdefault("ort_threads", 1)
    cfg = RunConfig(model=str(path), workdir=Path(workdir), options=options,
                    calibration=options.pop("calibration", []))
    return list(OrtSource(precision).run(cfg, feed))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def leaf_modules(module) -> set[str]:
    return {n for n, m in module.named_modules() if n and not list(m.children())}


# ----------------------------------------------------------------------------- registration

def test_sources_are_registered_by_the_onnxruntime_plugin():
    reg = plugins.registry()["source"]
    for name, prec in (("ort", "fp32"), ("ort-fp16", "fp16"), ("ort-fp16-strict", "fp16-strict"), ("ort-int8", "int8")):
        assert reg[name].plugin == "onnxruntime"
        assert isinstance(reg[name].obj, OrtSource) and reg[name].obj.precision == prec
        assert reg[name].obj.check() is None


def test_register_sources_hook_contributes_four_names():
    import parity_builtin_onnxruntime as plugin

    got: dict[str, OrtSource] = {}
    plugin.register_sources(register=lambda obj, name=None: got.setdefault(name or obj.name, obj))
    assert {n: s.precision for n, s in got.items()} == {"ort": "fp32", "ort-fp16": "fp16",
                                                        "ort-fp16-strict": "fp16-strict", "ort-int8": "int8"}
    assert all(s.name == n for n, s in got.items())


def test_import_is_lazy():
    code = ("import sys, parity_builtin_onnxruntime, parity.lib.onnx.provenance, "
            "parity.lib.onnx.export, parity.lib.onnx.convert; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'onnxconverter_common') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- fp32 vs torch

@pytest.mark.parametrize("which", ["cnn", "encoder"])
def test_fp32_module_outputs_equal_torch(which, request, tmp_path):
    module, x, path = request.getfixturevalue(which)
    ref, y = torch_outputs(module, x)
    recs = run("fp32", path, {"x": x}, tmp_path)
    compared = 0
    for r in recs:
        for p, call in r.meta["module_calls"]:
            assert (p, call) in ref, f"{r.name} claims to be output of {p} call {call}, which torch never returned"
            np.testing.assert_allclose(r.array, ref[(p, call)], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{r.name} vs torch {p}#{call}")
            compared += 1
    assert compared >= 10
    outs = [r for r in recs if r.meta["is_output"]]
    assert len(outs) == 1 and outs[0].meta["output_position"] == 0
    np.testing.assert_allclose(outs[0].array, y, rtol=1e-4, atol=1e-5)
    # topological order, every record float, op types from the graph
    orders = [r.order for r in recs]
    assert orders == sorted(orders)
    assert all(r.dtype == "float32" for r in recs)
    graph_ops = {n.name: n.op_type for n in onnx.load(str(path)).graph.node}
    assert all(graph_ops[r.meta["onnx_node"]] == r.op_type == r.meta["onnx_op"] for r in recs)


def test_nested_scopes_innermost_first(cnn, tmp_path):
    module, x, path = cnn
    recs = {r.name: r for r in run("fp32", path, {"x": x}, tmp_path)}
    scopes = {tuple(r.meta["scopes"]) for r in recs.values()}
    # last ReLU of the second block closes the block and the whole Sequential
    assert ("layer1.1.relu", "layer1.1", "layer1") in scopes
    assert ("layer1.0.relu", "layer1.0") in scopes
    last = next(r for r in recs.values() if r.meta["scopes"][:1] == ["layer1.1.relu"]
                and r.meta["module_calls"][0][1] == 1)
    assert last.meta["module_path"] == "layer1.1.relu"


@pytest.mark.parametrize("which,expected_share", [("cnn", 9 / 11), ("encoder", 1.0)])
def test_provenance_covers_leaf_modules(which, expected_share, request):
    """Share of torch leaf modules whose output is an ONNX tensor found through provenance.

    The CNN loses exactly its two bias-free conv1 layers: the exporter folds each into the
    following BatchNorm, whose tensor then carries the bn1 scope (and bn1's values).
    """
    module, _x, path = request.getfixturevalue(which)
    found = {p for paths in module_outputs(onnx.load(str(path))).values() for p in paths}
    leaves = leaf_modules(module)
    share = len(found & leaves) / len(leaves)
    assert share == pytest.approx(expected_share)
    assert found <= {n for n, _ in module.named_modules()}  # torch's dotted names, root stripped
    if which == "cnn":
        assert leaves - found == {"layer1.0.conv1", "layer1.1.conv1"}


def test_unoptimized_export_keeps_every_leaf(models, tmp_path):
    module, shapes = models["make_cnn"]()
    path = export_onnx(module, {"x": _input(shapes["x"])}, tmp_path / "raw.onnx", optimize=False)
    found = {p for paths in module_outputs(onnx.load(str(path))).values() for p in paths}
    assert leaf_modules(module) <= found


def test_torchscript_exporter_scopes(models, tmp_path):
    """Node-name scopes of the TorchScript exporter give the same module paths."""
    module, shapes = models["make_cnn"]()
    x = _input(shapes["x"])
    path = export_onnx(module, {"x": x}, tmp_path / "ts.onnx", dynamo=False)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert "TorchScript" in meta["parity.exporter"]
    ref, _ = torch_outputs(module, x)
    recs = run("fp32", path, {"x": x}, tmp_path)
    assert any(r.name.startswith("/layer1/layer1.0/") for r in recs)
    found = {p for r in recs for p in r.meta["scopes"]}
    assert leaf_modules(module) <= found  # BatchNorm kept as its own node: every leaf is visible
    for r in recs:
        for p, call in r.meta["module_calls"]:
            np.testing.assert_allclose(r.array, ref[(p, call)], rtol=1e-4, atol=1e-5)


class _Repeat(nn.Module):
    """A module called twice back to back, and a container called twice."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
        self.act = nn.Sigmoid()
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        x = self.act(self.act(x * 2))
        x = self.inner(self.inner(x))
        return self.out(x)


def test_repeated_calls_are_told_apart(tmp_path):
    torch.manual_seed(3)
    module = _Repeat().eval()
    x = _input((3, 4), seed=5)
    path = export_onnx(module, {"x": x}, tmp_path / "rep.onnx")
    calls = module_output_calls(onnx.load(str(path)))
    flat = sorted(s for scopes in calls.values() for s in scopes)
    assert ("act", 0) in flat and ("act", 1) in flat
    assert ("inner", 0) in flat and ("inner", 1) in flat
    assert ("inner.0", 1) in flat and ("inner.1", 1) in flat
    ref, _ = torch_outputs(module, x)
    for r in run("fp32", path, {"x": x}, tmp_path):
        for p, c in r.meta["module_calls"]:
            np.testing.assert_allclose(r.array, ref[(p, c)], rtol=1e-5, atol=1e-6)


def test_repeated_calls_in_a_plain_dynamo_export(tmp_path):
    """Without parity's call annotation the namespace cannot tell calls apart: documented limit."""
    torch.manual_seed(3)
    module = _Repeat().eval()
    x = torch.from_numpy(_input((3, 4), seed=5))
    path = tmp_path / "plain.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=True, verbose=False)
    calls = module_output_calls(onnx.load(str(path)))
    flat = [s for scopes in calls.values() for s in scopes]
    assert flat and all(c is None for _p, c in flat)  # call index unknown, never guessed as 0
    # the two back-to-back calls of ``inner`` merge: only the second one's output leaves it
    assert sum(1 for p, _c in flat if p == "inner") == 1


def test_scope_parsers():
    ns = (": __main__.M/layer1: torch.nn.modules.container.Sequential/layer1.0: __main__.Block/"
          "layer1.0.bn1: torch.nn.modules.batchnorm.BatchNorm2d/_native_batch_norm: aten.x.default")
    assert parse_namespace(ns) == ["layer1", "layer1.0", "layer1.0.bn1"]
    assert parse_namespace(": __main__.M/add: aten.add.Tensor") == []
    assert parse_scope_name("/layer1/layer1.0/conv1/Conv") == [("layer1", 0), ("layer1.0", 0),
                                                               ("layer1.0.conv1", 0)]
    assert parse_scope_name("Identity_0") is None
    names = {"", "enc", "enc.d", "enc.d.a", "enc.layers.0", "act"}
    assert parse_scope_name("/enc/a_1/Relu", names) == [("enc", 0), ("enc.d.a", 1)]
    assert parse_scope_name("/act_1/Relu", names) == [("act", 1)]


# ----------------------------------------------------------------------------- fp16

@pytest.mark.parametrize("precision", ["fp16", "fp16-strict"])
@pytest.mark.parametrize("which", ["cnn", "encoder"])
def test_fp16_records_are_half_and_close(which, precision, request, tmp_path):
    """Strict storage: every record but the float32 outputs is float16. As deployed on the CPU
    provider: a record of an op without a float16 kernel there is float32 (held so), never float16."""
    from parity.lib.onnx.asrun import cpu_fp32_only_ops

    _module, x, path = request.getfixturevalue(which)
    r32 = {r.name: r for r in run("fp32", path, {"x": x}, tmp_path)}
    r16 = run(precision, path, {"x": x}, tmp_path)
    assert {r.name for r in r16} == set(r32)  # converter keeps the original tensor names
    fp32_only = set(cpu_fp32_only_ops(tuple({r.op_type for r in r16})))
    for r in r16:
        ref = r32[r.name]
        assert r.meta["scopes"] == ref.meta["scopes"] and r.order == ref.order
        if precision == "fp16-strict" or r.meta["is_output"]:
            assert r.dtype == ("float32" if r.meta["is_output"] else "float16")
        elif r.op_type in fp32_only:
            assert r.dtype == "float32", r.name
        assert cosine(r.array, ref.array) > 0.999
        err = np.abs(r.array.astype(np.float64) - ref.array).max() / (np.abs(ref.array).max() + 1e-6)
        assert err < 2e-2
    # fp16 is not a copy of fp32
    assert any(not np.array_equal(r.array.astype(np.float32), r32[r.name].array) for r in r16)


def test_fp16_keep_ops_and_nodes(encoder, tmp_path):
    _module, x, path = encoder
    recs = run("fp16-strict", path, {"x": x}, tmp_path, keep_fp32_ops=["Softmax"])
    soft = [r for r in recs if r.op_type == "Softmax"]
    assert len(soft) == 1 and soft[0].meta["module_path"] == "attn.softmax"
    assert soft[0].dtype == "float16"  # the value the next (fp16) layer reads, after the cast back
    # as deployed on the CPU provider, the next layer (a MatMul, no fp16 kernel) reads the kept
    # Softmax's float32 output: the session drops the cast back, and the record is that value
    soft = [r for r in run("fp16", path, {"x": x}, tmp_path, keep_fp32_ops=["Softmax"]) if r.op_type == "Softmax"]
    assert len(soft) == 1 and soft[0].dtype == "float32"
    converted = onnx.load(soft[0].meta["deployed_model_file"])  # the converter's model, as deployed
    sm = next(n for n in converted.graph.node if n.op_type == "Softmax")
    producers = {o: n for n in converted.graph.node for o in n.output}
    assert producers[sm.input[0]].op_type == "Cast"  # really ran in fp32
    with pytest.raises(ParityError, match="keep_fp32_nodes .*no_such_node"):
        run("fp16", path, {"x": x}, tmp_path, keep_fp32_nodes=["no_such_node"])


# ----------------------------------------------------------------------------- int8

@pytest.mark.parametrize("which", ["cnn", "encoder"])
def test_int8_worse_than_fp16_but_correlated(which, request, tmp_path):
    _module, x, path = request.getfixturevalue(which)
    calib = [{"x": _input(x.shape, seed=s)} for s in range(10, 18)]
    r32 = {r.name: r for r in run("fp32", path, {"x": x}, tmp_path)}
    r16 = {r.name: r for r in run("fp16", path, {"x": x}, tmp_path)}
    r8 = run("int8", path, {"x": x}, tmp_path, calibration=calib)
    assert len(r8) >= 0.6 * len(r32)
    assert all(r.name in r32 for r in r8)  # records carry the fp32 graph's names
    quantized = [r for r in r8 if r.meta["quantized"]]
    assert len(quantized) >= 0.6 * len(r8)
    assert all(r.meta["onnx_tensor"].endswith("DequantizeLinear_Output") for r in quantized
               if not r.meta["is_output"] and "onnx_tensor" in r.meta)
    assert "calibration" not in r8[0].meta and r8[0].meta["calibration_feeds"] == len(calib)
    c8 = [cosine(r.array, r32[r.name].array) for r in r8]
    c16 = [cosine(r16[r.name].array, r32[r.name].array) for r in r8]
    assert np.mean(c8) < np.mean(c16)
    assert 1 - np.mean(c8) > 5 * (1 - np.mean(c16))  # measurably worse than fp16
    assert min(c8) > 0.8  # still the same computation
    out8 = next(r for r in r8 if r.meta["is_output"])
    assert out8.meta["quantized"] and out8.name == next(n for n, r in r32.items() if r.meta["is_output"])


def test_int8_without_calibration_warns_in_meta(cnn, tmp_path):
    _module, x, path = cnn
    recs = run("int8", path, {"x": x}, tmp_path)
    assert recs and all("calibration" in r.meta and "warning" in r.meta for r in recs)


# ----------------------------------------------------------------------------- batching, caching

def test_output_batches_give_the_same_records(encoder, tmp_path, monkeypatch):
    _module, x, path = encoder
    whole = run("fp32", path, {"x": x}, tmp_path)
    steps_seen = []
    real = ort_runner.run_steps

    def counting(model, batches, *a, **k):
        steps_seen.append(len(batches))
        return real(model, batches, *a, **k)

    monkeypatch.setattr(ort_runner, "run_steps", counting)
    batched = run("fp32", path, {"x": x}, tmp_path, ort_output_batch="4")  # as --option gives it
    assert steps_seen and steps_seen[0] >= 2  # really went in steps
    assert [r.name for r in batched] == [r.name for r in whole]
    for a, b in zip(whole, batched):
        np.testing.assert_allclose(a.array, b.array, rtol=1e-6, atol=1e-6)
        assert a.meta["is_output"] == b.meta["is_output"]


def test_all_dtypes_option_adds_integer_tensors(tmp_path):
    class ArgMax(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            idx = x.argmax(-1, keepdim=True)  # an int64 activation that depends on the input
            return torch.gather(x, -1, idx) + self.lin(x)

    torch.manual_seed(0)
    x = _input((2, 4))
    path = export_onnx(ArgMax().eval(), {"x": x}, tmp_path / "argmax.onnx")
    default = run("fp32", path, {"x": x}, tmp_path)
    everything = run("fp32", path, {"x": x}, tmp_path, ort_all_dtypes=True)
    assert all(r.array.dtype.kind == "f" for r in default)
    extra = [r for r in everything if r.array.dtype.kind != "f"]
    assert [r.op_type for r in extra] == ["ArgMax"]
    np.testing.assert_array_equal(extra[0].array, x.argmax(-1)[:, None])
    assert len(everything) == len(default) + 1
    assert len(run("fp32", path, {"x": x}, tmp_path, ort_all_dtypes="false")) == len(default)


def test_export_cache_is_reused(models, tmp_path, monkeypatch):
    module, shapes = models["make_cnn"]()
    x = _input(shapes["x"])
    calls = []
    real = export_mod.export_onnx

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(export_mod, "export_onnx", spy)
    p1 = cached_export(module, {"x": x}, tmp_path)
    mtime = p1.stat().st_mtime_ns
    p2 = cached_export(module, {"x": x}, tmp_path)
    assert p1 == p2 and len(calls) == 1 and p2.stat().st_mtime_ns == mtime
    assert p1.parent == tmp_path / "onnx" and not [f for f in p1.parent.iterdir() if f.suffix == ".tmp"]
    with torch.no_grad():
        module.fc.bias.add_(1.0)  # different weights: a different export
    p3 = cached_export(module, {"x": x}, tmp_path)
    assert p3 != p1 and len(calls) == 2


def test_fp16_and_int8_conversions_are_cached(cnn, tmp_path):
    _module, x, path = cnn
    a = run("fp16", path, {"x": x}, tmp_path)[0].meta["run_model_file"]
    m1 = Path(a).stat().st_mtime_ns
    b = run("fp16", path, {"x": x}, tmp_path)[0].meta["run_model_file"]
    assert a == b and Path(b).stat().st_mtime_ns == m1
    c = run("fp16", path, {"x": x}, tmp_path, keep_fp32_ops=["Relu"])[0].meta["run_model_file"]
    assert c != a
    q1 = run("int8", path, {"x": x}, tmp_path)[0].meta["run_model_file"]
    q2 = run("int8", path, {"x": x}, tmp_path, calibration=[{"x": _input(x.shape, 9)}])[0].meta["run_model_file"]
    assert q1 != q2  # calibration data is part of the key


# ----------------------------------------------------------------------------- torch models

def test_torch_model_is_exported_and_run(models_py, tmp_path):
    spec = f"{models_py}:make_cnn"
    cfg = RunConfig(model=spec, workdir=tmp_path, options={"ort_threads": 1})
    src = OrtSource("fp32")
    specs = src.input_specs(cfg)
    assert [(s.name, s.shape) for s in specs] == [("x", (2, 3, 8, 8))]
    x = _input(specs[0].shape)
    recs = list(src.run(cfg, {"x": x}))
    exported = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(exported) == 1 and recs[0].meta["model_file"] == str(exported[0])
    assert "dynamo" in recs[0].meta["exporter"]
    ns: dict = {}
    exec(compile(MODEL_SRC, "m", "exec"), ns)
    module, _ = ns["make_cnn"]()
    ref, y = torch_outputs(module, x)
    compared = 0
    for r in recs:
        for p, c in r.meta["module_calls"]:
            np.testing.assert_allclose(r.array, ref[(p, c)], rtol=1e-4, atol=1e-5)
            compared += 1
    assert compared >= 10
    np.testing.assert_allclose(recs[-1].array, y, rtol=1e-4, atol=1e-5)
    mtime = exported[0].stat().st_mtime_ns
    list(src.run(cfg, {"x": x}))  # second run: reuses the export
    assert list((tmp_path / "onnx").glob("*.onnx")) == exported and exported[0].stat().st_mtime_ns == mtime


# ----------------------------------------------------------------------------- inputs and errors

def test_input_specs_dynamic_and_overrides(cnn, tmp_path):
    _module, _x, path = cnn
    src = OrtSource("fp32")
    assert [(s.name, s.shape, s.dtype) for s in src.input_specs(RunConfig(model=str(path)))] == \
        [("x", (None, 3, 8, 8), "float32")]
    cfg = RunConfig(model=str(path), input_shapes={"x": (4, 3, 8, 8)})
    assert src.input_specs(cfg)[0].shape == (4, 3, 8, 8)
    with pytest.raises(ParityError, match="conflicts"):
        src.input_specs(RunConfig(model=str(path), input_shapes={"x": (4, 3, 9, 9)}))
    with pytest.raises(ParityError, match="does not have"):
        src.input_specs(RunConfig(model=str(path), input_shapes={"y": (4, 3, 8, 8)}))
    # a dynamic batch runs at another size
    recs = run("fp32", path, {"x": _input((5, 3, 8, 8))}, tmp_path)
    assert recs[-1].shape == (5, 5)


def _bad_files(tmp: Path) -> dict[str, Path]:
    files = {}
    files["missing"] = tmp / "nope.onnx"
    (p := tmp / "text.onnx").write_text("this is not a model\n")
    files["text"] = p
    (p := tmp / "garbage.onnx").write_bytes(bytes(range(256)) * 8)
    files["garbage"] = p
    p = tmp / "archive.onnx"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("archive/version", "3\n")
    files["zip"] = p
    return files


@pytest.mark.parametrize("kind,pattern", [
    ("missing", "does not exist"),
    ("text", "not an ONNX model.*text file"),
    ("garbage", "not an ONNX model"),
    ("zip", "not an ONNX model.*zip archive"),
])
def test_bad_model_files(kind, pattern, tmp_path):
    path = _bad_files(tmp_path)[kind]
    for call in (lambda: OrtSource("fp32").input_specs(RunConfig(model=str(path))),
                 lambda: run("fp32", path, {"x": _input((1, 3, 8, 8))}, tmp_path)):
        with pytest.raises(ParityError, match=pattern) as e:
            call()
        msg = str(e.value)
        assert path.name in msg and "\n" not in msg


@pytest.mark.parametrize("feed,pattern", [
    ({"input": (2, 3, 8, 8)}, r"expects \['x'\]; missing \['x'\], unexpected \['input'\]"),
    ({"x": (2, 3, 9, 8)}, r"shape \[2, 3, 9, 8\].*expects \[\?, 3, 8, 8\]"),
    ({"x": (2, 3, 8)}, r"shape \[2, 3, 8\].*expects \[\?, 3, 8, 8\]"),
    ({"x": "float64"}, r"dtype float64.*expects float32"),
])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_bad_feeds(cnn, tmp_path, feed, pattern, precision):
    _module, _x, path = cnn
    if feed == {"x": "float64"}:
        feed = {"x": _input((2, 3, 8, 8)).astype(np.float64)}
    else:
        feed = {k: _input(v) for k, v in feed.items()}
    with pytest.raises(ParityError, match=pattern) as e:
        run(precision, path, feed, tmp_path)
    assert path.name in str(e.value) and "\n" not in str(e.value)


def test_bad_options(cnn, tmp_path):
    _module, x, path = cnn
    with pytest.raises(ParityError, match="NoSuchExecutionProvider"):
        run("fp32", path, {"x": x}, tmp_path, ort_providers="NoSuchExecutionProvider")
    with pytest.raises(ParityError, match="ort_graph_optimization"):
        run("fp32", path, {"x": x}, tmp_path, ort_graph_optimization="max")
    with pytest.raises(ParityError, match="ort_all_dtypes='maybe' is not a yes/no value"):
        run("fp32", path, {"x": x}, tmp_path, ort_all_dtypes="maybe")
    with pytest.raises(ParityError, match="ort_output_batch='many' is not an integer"):
        run("fp32", path, {"x": x}, tmp_path, ort_output_batch="many")
    with pytest.raises(ParityError, match="int8_calibrate_method"):
        run("int8", path, {"x": x}, tmp_path, int8_calibrate_method="magic")
    with pytest.raises(ParityError, match="calibration feed #1"):
        run("int8", path, {"x": x}, tmp_path, calibration=[{"x": x}, {"x": x[:, :2]}])


def test_dynamo_failure_falls_back_to_torchscript(tmp_path):
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            y = self.lin(x)
            if float(y.sum()) > 0:  # data-dependent branch: torch.export refuses, the tracer freezes it
                return torch.relu(y)
            return -y

    torch.manual_seed(0)
    module = DataDependent().eval()
    x = _input((2, 3), seed=1)
    path = export_onnx(module, {"x": x}, tmp_path / "dd.onnx")
    exporter = {p.key: p.value for p in onnx.load(str(path)).metadata_props}["parity.exporter"]
    assert "TorchScript" in exporter and "dynamo failed" in exporter and "tracer warnings" in exporter
    recs = run("fp32", path, {"x": x}, tmp_path)
    assert recs[0].meta["exporter"] == exporter and recs[0].meta["module_path"] == "lin"
    with torch.no_grad():
        np.testing.assert_allclose(recs[-1].array, module(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)


def test_export_failure_is_a_parity_error(tmp_path):
    class Unexportable(nn.Module):
        def forward(self, x):
            return torch.from_numpy(np.sort(x.numpy()))  # leaves torch: no exporter can trace it

    with pytest.raises(ParityError, match="cannot export") as e:
        export_onnx(Unexportable(), {"x": _input((2, 3))}, tmp_path / "u.onnx", dynamic_batch=False)
    assert "\n" not in str(e.value) and not (tmp_path / "u.onnx").exists()
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_meta_is_json_serializable(encoder, tmp_path):
    _module, x, path = encoder
    for prec in ("fp32", "int8"):
        for r in run(prec, path, {"x": x}, tmp_path):
            json.dumps(r.meta)
            assert not math.isnan(float(np.asarray(r.array, dtype=np.float64).sum()))

"""Diagnosis support of the torch sources: local runs, keep_high_precision, outputs_only, parity fix.

The planted hazard is a softmax written without subtracting the max: its logits lie in [11, 21],
where exp() is fine in fp32 but overflows fp16 (max 65504), so every fp16 output is NaN while its
inputs and outputs are ordinary numbers. Every value checked is recomputed independently (functional
ops on the model's own weights, cosine in numpy).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import torch
F = torch.nn.functional

from parity.core.compare import CompareSettings, compare  # noqa: E402
from parity.core.diagnose import LocalResult  # noqa: E402
from parity.contract.errors import ParityError  # noqa: E402
from parity.contract.source import RunConfig  # noqa: E402
from parity_builtin_torch.local import module_of_key  # noqa: E402
from parity_builtin_torch.source import TorchSource  # noqa: E402

REPO = Path(__file__).resolve().parents[3]

HAZARD = textwrap.dedent('''
    import torch
    from torch import nn


    class Shift(nn.Module):
        def forward(self, x):
            return x * 2.0 + 16.0


    class NaiveSoftmax(nn.Module):
        """exp(x) / sum(exp(x)) without subtracting the max."""

        def forward(self, x):
            e = torch.exp(x)
            return e / e.sum(-1, keepdim=True)


    class Pair(nn.Module):
        """A leaf with two outputs, to check ':N' keys."""

        def forward(self, x):
            return x * 0.5, x + 1.0


    class Hazard(nn.Module):
        parity_input_shapes = {"x": (4, 16)}

        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(16, 32)
            self.shift = Shift()
            self.attn = NaiveSoftmax()
            self.mlp = nn.Sequential(nn.Linear(32, 32), nn.GELU())
            self.act = nn.Tanh()
            self.pair = Pair()
            self.norm = nn.LayerNorm(32)
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            h = self.attn(self.shift(self.fc1(x)))
            h = self.act(self.act(self.mlp(h) * 4.0))  # act is called twice: act, act#1
            a, b = self.pair(h)
            return self.head(self.norm(a + b))


    def make():
        torch.manual_seed(0)
        return Hazard()


    class Tied(nn.Module):
        parity_input_shapes = {"x": (2, 8)}

        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 8)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))


    def tied():
        torch.manual_seed(0)
        return Tied()
''')

LEAVES = ["fc1", "shift", "attn", "mlp.0", "mlp.1", "act", "act#1", "pair", "pair:1", "norm", "head"]


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("hazard")
    (d / "hazard.py").write_text(HAZARD)
    return str(d / "hazard.py") + ":make"


@pytest.fixture(scope="module")
def feed() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    with np.errstate(invalid="ignore"):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def fresh_model(spec: str):
    """The same model the sources load: the factory run on a fresh import of the file."""
    from parity.lib.torch_loader import load_torch_model

    return load_torch_model(RunConfig(model=spec)).module.eval()


def locals_of(spec: str, feed: dict, precision: str = "fp16", **options) -> tuple[dict[str, LocalResult], TorchSource]:
    src = TorchSource(precision)
    out = {}
    for lr in src.local_errors(RunConfig(model=spec, options=options), feed):
        assert isinstance(lr, LocalResult)
        assert lr.key not in out, f"duplicate local key {lr.key}"
        out[lr.key] = lr
    return out, src


def outputs(src: TorchSource, spec: str, feed: dict, **options) -> np.ndarray:
    recs = [a for a in src.run(RunConfig(model=spec, options=options), feed) if a.meta.get("is_output")]
    assert len(recs) == 1
    return recs[0].array


# --------------------------------------------------------------------------- local runs

def test_local_keys_are_the_leaf_record_keys_of_the_target_run(spec, feed):
    loc, src = locals_of(spec, feed)
    run_keys = [a.key for a in TorchSource("fp16").run(RunConfig(model=spec), feed)]
    assert sorted(loc) == sorted(LEAVES)
    assert set(loc) <= set(run_keys)
    assert "mlp" in run_keys and "mlp" not in loc  # containers: their leaves carry the local runs
    assert src.last_local_skipped == []
    assert loc["pair:1"].meta["module_path"] == "pair" and loc["act#1"].meta["call_index"] == 1
    assert loc["attn"].op_type == "NaiveSoftmax" and loc["mlp.0"].op_type == "Linear"
    assert loc["head"].target.dtype == np.float16 and loc["head"].ref.dtype == np.float32


def test_planted_hazard_is_local_and_later_layers_only_inherit(spec, feed):
    loc, _ = locals_of(spec, feed)
    # the hazard itself: finite reference, non-finite fp16 result on the very same inputs
    assert np.isfinite(loc["attn"].ref).all()
    assert not np.isfinite(loc["attn"].target.astype(np.float32)).all()
    assert not cosine(loc["attn"].ref, loc["attn"].target) > 0.99  # NaN or bad
    # later layers fed fp32 values are fine on their own
    for k in ("mlp.0", "norm", "head"):
        assert np.isfinite(loc[k].target.astype(np.float32)).all()
        assert cosine(loc[k].ref, loc[k].target) > 0.9999, k

    # ...while in the fp16 run end to end the head inherits the NaNs (accumulated error)
    rep = compare(CompareSettings(model=spec, ref="torch", target="torch-fp16", diagnose=True,
                                  workdir=str(Path(spec.rsplit(":", 1)[0]).parent / "cache")))
    rows = {r.name: r for r in rep.layers}
    head = rows["head"]
    assert head.failing
    acc = head.values["cosine"]
    assert np.isnan(acc) or acc < 0.99
    assert head.local["cosine"] > 0.9999
    assert rows["attn"].culprit_rank == 1
    assert rep.summary["first_culprit"] == "attn"
    assert [r.name for r in rep.layers if r.culprit_rank] == ["attn"]


def test_local_linear_equals_functional_fp16_on_the_fp32_inputs(spec, feed):
    loc, _ = locals_of(spec, feed)
    m = fresh_model(spec)
    with torch.no_grad():
        x = torch.from_numpy(feed["x"])
        h = m.attn(m.shift(m.fc1(x)))  # the fp32 input of mlp.0, computed here independently
        lin = m.mlp[0]
        want = F.linear(h.half(), lin.weight.half(), lin.bias.half()).numpy()
        want_fc1 = F.linear(x.half(), m.fc1.weight.half(), m.fc1.bias.half()).numpy()
        ref = lin(h).numpy()
    np.testing.assert_array_equal(loc["mlp.0"].target, want)
    np.testing.assert_array_equal(loc["fc1"].target, want_fc1)
    np.testing.assert_allclose(loc["mlp.0"].ref, ref, rtol=1e-6, atol=1e-6)


def test_bf16_local_runs_are_produced_and_finite(spec, feed):
    loc, _ = locals_of(spec, feed, "bf16")
    assert sorted(loc) == sorted(LEAVES)
    for k, lr in loc.items():
        assert lr.target.dtype == np.float32 and lr.meta["dtype"] == "bfloat16"
        assert np.isfinite(lr.target).all(), k  # bf16 has fp32's range: no overflow here
    assert cosine(loc["attn"].ref, loc["attn"].target) > 0.99
    # bf16 keeps 8 bits of mantissa: the local result is rounded, not a copy of the reference
    assert not np.array_equal(loc["fc1"].ref, loc["fc1"].target)


def test_fp32_source_has_no_local_runs(spec, feed):
    loc, _ = locals_of(spec, feed, "fp32")
    assert loc == {}


def test_fx_mode_local_keys_are_the_op_record_keys(spec, feed):
    loc, _ = locals_of(spec, feed, torch_capture="fx")
    run_keys = {a.key for a in TorchSource("fp16").run(RunConfig(model=spec, options={"torch_capture": "fx"}), feed)}
    assert set(loc) <= run_keys
    assert {"fc1/linear", "attn/exp", "head/linear"} <= set(loc)
    assert not np.isfinite(loc["attn/exp"].target.astype(np.float32)).all()
    assert cosine(loc["head/linear"].ref, loc["head/linear"].target) > 0.9999


def test_torchscript_local_runs_are_refused_in_one_line(tmp_path, feed):
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Linear(16, 4))), str(path))
    with pytest.raises(ParityError, match="TorchScript") as e:
        list(TorchSource("fp16").local_errors(RunConfig(model=str(path)), feed))
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- keep_high_precision

def test_keep_hazard_in_fp32_fixes_the_output(spec, feed):
    ref = outputs(TorchSource("fp32"), spec, feed)
    src = TorchSource("fp16")
    before = cosine(ref, outputs(src, spec, feed))
    assert not before >= 0.999  # NaN: the planted overflow
    after = cosine(ref, outputs(src, spec, feed, keep_high_precision=["attn"]))
    assert after >= 0.999
    # a record key with call / output suffixes names the module too; a container keeps its subtree
    assert cosine(ref, outputs(src, spec, feed, keep_high_precision="attn#0:0")) >= 0.999
    # keeping some other layer does not help
    assert not cosine(ref, outputs(src, spec, feed, keep_high_precision=["mlp", "head"])) >= 0.999


def test_kept_module_uses_the_original_fp32_weights(spec, feed):
    m = fresh_model(spec)
    recs = {a.key: a for a in TorchSource("fp16").run(RunConfig(model=spec, options={"keep_high_precision": ["fc1"]}),
                                                       feed)}
    got = recs["fc1"].array
    assert got.dtype == np.float32  # handed on in fp32, as autocast does: no overflow on the way out
    with torch.no_grad():
        x16 = torch.from_numpy(feed["x"]).half().float()  # the fp16 input, widened on entry
        want = F.linear(x16, m.fc1.weight, m.fc1.bias).numpy()
        rounded = F.linear(x16, m.fc1.weight.half().float(), m.fc1.bias.half().float()).numpy()
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(rounded, want)  # the check above could tell rounded weights apart
    # the layers after it still run in fp16 (they cast the fp32 input down on entry)
    assert recs["head"].array.dtype == np.float16


def test_keep_unknown_names_is_one_line_listing_valid_modules(spec, feed):
    src = TorchSource("fp16")
    with pytest.raises(ParityError) as e:
        list(src.run(RunConfig(model=spec, options={"keep_high_precision": ["attn", "nope.layer"]}), feed))
    msg = str(e.value)
    assert "'nope.layer'" in msg and "fc1" in msg and "mlp.0" in msg and "\n" not in msg
    with pytest.raises(ParityError, match="model's output record"):
        list(src.run(RunConfig(model=spec, options={"keep_high_precision": ["output"]}), feed))


def test_keep_refuses_a_weight_shared_across_the_boundary(spec):
    tied = spec.rsplit(":", 1)[0] + ":tied"
    x = {"x": np.ones((2, 8), np.float32)}
    with pytest.raises(ParityError, match="shares the tensor"):
        list(TorchSource("fp16").run(RunConfig(model=tied, options={"keep_high_precision": ["a"]}), x))
    # both sides kept is fine
    recs = list(TorchSource("fp16").run(RunConfig(model=tied, options={"keep_high_precision": ["a", "b"]}), x))
    assert recs[-1].meta["is_output"]


def test_module_of_key():
    assert module_of_key("block#2:1") == "block"
    assert module_of_key("layer1.0.conv1") == "layer1.0.conv1"
    assert module_of_key("layer1.0#1/linear#2", fx=True) == "layer1.0"
    assert module_of_key("softmax", fx=True) == ""


# --------------------------------------------------------------------------- outputs_only

def test_outputs_only_yields_the_output_records_of_a_full_run(spec, feed):
    for precision in ("fp32", "fp16"):
        full = [a for a in TorchSource(precision).run(RunConfig(model=spec), feed)]
        only = list(TorchSource(precision).run(RunConfig(model=spec, options={"outputs_only": "true"}), feed))
        outs = [a for a in full if a.meta.get("is_output")]
        assert len(full) > len(outs) == len(only) == 1
        assert [a.key for a in only] == [a.key for a in outs]
        assert only[0].meta["is_output"]
        np.testing.assert_array_equal(only[0].array, outs[0].array)
        assert only[0].array.dtype == outs[0].array.dtype


# --------------------------------------------------------------------------- end to end

def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "parity", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_fix_and_diagnose_find_the_planted_module(spec, tmp_path):
    p = _cli("fix", spec, "--ref", "torch", "--target", "torch-fp16", "--workdir", str(tmp_path / "c"), cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "Verified fix" in p.stdout
    toml = p.stdout.split("parity config (TOML):", 1)[1]
    kept = [line.strip().strip('",') for line in toml.splitlines() if line.startswith("  \"")]
    assert "attn" in kept and len(kept) <= 2, kept

    out = tmp_path / "out.json"
    p = _cli("compare", spec, "--ref", "torch", "--target", "torch-fp16", "--diagnose", "--json", str(out),
             "--workdir", str(tmp_path / "c"), cwd=tmp_path)
    assert out.exists(), p.stdout[-2000:] + p.stderr[-2000:]
    rows = {r["name"]: r for r in json.loads(out.read_text())["layers"]}
    assert rows["attn"]["culprit_rank"] == 1
    assert [n for n, r in rows.items() if r.get("culprit_rank")] == ["attn"]


# --------------------------------------------------------------------------- other model forms

def test_exported_program_local_runs_and_keep(spec, feed, tmp_path):
    import warnings

    m = fresh_model(spec)
    path = tmp_path / "hazard.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(m, (torch.from_numpy(feed["x"]),)), str(path))
    model = str(path)
    ref = outputs(TorchSource("fp32"), model, feed)
    # modules mode rebuilds the hierarchy: the same leaf keys as the Python model
    loc, _ = locals_of(model, feed, torch_capture="modules")
    assert sorted(loc) == sorted(LEAVES)
    assert not np.isfinite(loc["attn"].target.astype(np.float32)).all()
    assert loc["attn"].op_type == "NaiveSoftmax"  # the original class, not the stand-in module
    src = TorchSource("fp16")
    assert cosine(ref, outputs(src, model, feed, torch_capture="modules", keep_high_precision=["attn"])) >= 0.999
    # the default for .pt2 is modules mode too: keeping a module works without asking
    assert cosine(ref, outputs(src, model, feed, keep_high_precision=["attn"])) >= 0.999
    # fx mode: op-level local runs; keeping modules needs the hierarchy
    loc_fx, _ = locals_of(model, feed, torch_capture="fx")
    assert "attn/exp" in loc_fx
    with pytest.raises(ParityError, match="--torch-capture modules"):
        outputs(src, model, feed, torch_capture="fx", keep_high_precision=["attn"])


def test_python_model_in_fx_mode_keeps_modules(spec, feed):
    ref = outputs(TorchSource("fp32"), spec, feed)
    got = outputs(TorchSource("fp16"), spec, feed, torch_capture="fx", keep_high_precision=["attn/exp"])
    assert cosine(ref, got) >= 0.999
    with pytest.raises(ParityError, match="own forward"):
        outputs(TorchSource("fp16"), spec, feed, torch_capture="fx", keep_high_precision=["add"])

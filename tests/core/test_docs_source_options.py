"""docs/writing-plugins.md's "A source with options" runs as printed: the code block is extracted,
registered as a plugin, and driven through the real command line; its numbers are checked against an
independent numpy computation of the same perceptron."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from parity.core import registry as plugins

from tests.support import cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "writing-plugins.md"
MARK = "<!-- example: source-with-options -->"


def _example_code() -> str:
    text = DOC.read_text(encoding="utf-8")
    assert MARK in text, f"{DOC} lost its example marker"
    m = re.search(r"```python\n(.*?)```", text[text.index(MARK):], re.S)
    assert m is not None
    return m.group(1)


@pytest.fixture
def mlp(tmp_path, monkeypatch):
    """The documented plugin, imported from the docs' text and registered; a small perceptron file."""
    (tmp_path / "parity_numpy_mlp.py").write_text(_example_code(), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("parity_numpy_mlp", tmp_path / "parity_numpy_mlp.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "parity_numpy_mlp", module)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    model = tmp_path / "mlp.npz"
    np.savez(model, fc1=rng.standard_normal((16, 32)).astype(np.float32) * 3,
             fc2=rng.standard_normal((32, 4)).astype(np.float32))
    plugins.register_plugin(module, name="numpy-mlp-doc")
    try:
        yield model
    finally:
        plugins.unregister_plugin(name="numpy-mlp-doc")
        plugins.reset()


def _cos(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _expected(model, x, clip, accumulate_fp32):
    """The perceptron written out again, independently of the plugin: fp32 and fp16 outputs."""
    w = np.load(model)
    h32 = np.clip(x @ w["fc1"], 0, clip)
    y32 = h32 @ w["fc2"]
    acc = np.float32 if accumulate_fp32 else np.float16
    h16 = (x.astype(np.float16).astype(acc) @ w["fc1"].astype(np.float16).astype(acc)).astype(np.float16)
    h16 = np.clip(h16.astype(np.float32), 0, clip)
    y16 = (h16.astype(np.float16).astype(acc) @ w["fc2"].astype(np.float16).astype(acc)).astype(np.float16)
    return h32, y32, h16, y16.astype(np.float32)


def test_the_documented_source_lists_its_options(capsys, mlp):
    rc, out, err = cli(capsys, "plugins", "--options", "numpy-mlp-fp16", "--json")
    assert rc == 0, err
    opts = {o["name"]: o for o in json.loads(out)["options"]}
    assert opts["mlp_clip"]["flag"] == "--mlp-clip" and opts["mlp_accumulate"]["choices"] == ["same", "float32"]


@pytest.mark.parametrize("accumulate", ["same", "float32"])
def test_the_documented_compare_runs_with_its_flag_and_option(capsys, mlp, tmp_path, accumulate):
    x = np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    rc, _out, err = cli(capsys, "compare", mlp, "--ref", "numpy-mlp", "--target", "numpy-mlp-fp16",
                        "--inputs", tmp_path / "x.npy", "--mlp-clip", "6", "--option", f"mlp_accumulate={accumulate}",
                        "--workdir", tmp_path / "cache", "--json", tmp_path / "r.json", "--exit-zero")
    assert rc == 0, err
    rows = {r["name"]: r["values"]["cosine"] for r in json.loads((tmp_path / "r.json").read_text())["layers"]}
    h32, y32, h16, y16 = _expected(mlp, x, 6.0, accumulate == "float32")
    assert rows["fc1"] == pytest.approx(_cos(h32, h16), abs=1e-6)
    assert rows["fc2"] == pytest.approx(_cos(y32, y16), abs=1e-6)
    assert (x @ np.load(mlp)["fc1"]).max() > 6  # the clip mattered: without it the hidden layer would differ


def test_the_documented_typo_is_refused_as_printed(capsys, mlp, tmp_path):
    rc, _out, err = cli(capsys, "compare", mlp, "--ref", "numpy-mlp", "--target", "numpy-mlp-fp16",
                        "--option", "mlp_acumulate=float32", "--workdir", tmp_path / "cache")
    assert rc == 2
    text = DOC.read_text(encoding="utf-8")
    printed = re.search(r"# parity: error: (.*)\n#\s+(.*)\n", text)
    assert printed is not None
    assert err[0] == f"parity: error: {printed.group(1)} {printed.group(2)}"


def test_keep_high_precision_reaches_the_documented_source(capsys, mlp, tmp_path):
    """A --config keeping both layers makes the fp16 target compute in float32: identical outputs."""
    x = np.random.default_rng(2).standard_normal((1, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    cfg = tmp_path / "keep.toml"
    cfg.write_text('[precision]\nkeep_fp32 = ["fc1", "fc2"]\n')
    rc, _out, err = cli(capsys, "compare", mlp, "--ref", "numpy-mlp", "--target", "numpy-mlp-fp16", "--config", cfg,
                        "--inputs", tmp_path / "x.npy", "--workdir", tmp_path / "cache", "--json", tmp_path / "r.json")
    assert rc == 0, err
    layers = json.loads((tmp_path / "r.json").read_text())["layers"]
    assert {r["name"]: r["values"]["max-abs"] for r in layers} == {"fc1": 0.0, "fc2": 0.0}

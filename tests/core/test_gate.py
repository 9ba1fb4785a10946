"""The exit rule of compare, analyze and fix: a failing comparison exits 1 (with a FAIL line per
reason), unless --exit-zero; a passing one exits 0. Through the real CLI entry point."""
import json
from pathlib import Path

import numpy as np
import pytest

from parity.cli import main

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "models" / "zoo.py"


def dumps(tmp_path, ref, tgt):
    for side, arrays in (("ref", ref), ("tgt", tgt)):
        d = tmp_path / side
        d.mkdir(parents=True)
        for name, a in arrays.items():
            np.save(d / f"{name}.npy", a)
    return str(tmp_path / "ref"), str(tmp_path / "tgt")


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)


def test_analyze_passing_exits_0_and_below_threshold_exits_1(tmp_path, x, capsys):
    good = dumps(tmp_path / "a", {"l1": x}, {"l1": x + 1e-6})
    assert main(["analyze", *good, "-q"]) == 0
    bad = dumps(tmp_path / "b", {"l1": x}, {"l1": -x})
    out = tmp_path / "r.json"
    assert main(["analyze", *bad, "-q", "--json", str(out)]) == 1  # no --fail-under needed
    assert json.loads(out.read_text())["passed"] is False
    assert "FAIL: 1 layers have cosine below the threshold" in capsys.readouterr().err
    assert main(["analyze", *bad, "-q", "--exit-zero"]) == 0


def test_nan_in_a_layer_fails_even_when_the_finite_part_passes_fail_under(tmp_path, x, capsys):
    y = x.copy()
    y[0, 0] = np.nan  # one NaN: the finite part agrees exactly
    d = dumps(tmp_path, {"l1": x}, {"l1": y})
    assert main(["analyze", *d, "-q", "--fail-under", "0.5"]) == 1
    assert "NaN/Inf" in capsys.readouterr().err


def test_same_named_layers_of_different_shapes_fail(tmp_path, x, capsys):
    d = dumps(tmp_path, {"l1": x, "l2": x}, {"l1": x, "l2": np.zeros((3, 5), np.float32)})
    assert main(["analyze", *d, "-q", "--fail-under", "0.5"]) == 1
    assert "differ in shape" in capsys.readouterr().err


def test_fail_under_replaces_the_threshold_as_the_bound(tmp_path, x):
    noisy = x + 0.05 * np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)  # cosine ~0.999
    d = dumps(tmp_path, {"l1": x}, {"l1": noisy})
    cos = float(np.dot(x.ravel(), noisy.ravel()) / np.linalg.norm(x) / np.linalg.norm(noisy))
    assert main(["analyze", *d, "-q", "--threshold", "0.99999"]) == 1
    assert main(["analyze", *d, "-q", "--threshold", "0.99999", "--fail-under", f"{cos - 1e-4}"]) == 0
    assert main(["analyze", *d, "-q", "--fail-under", f"{cos + 1e-4}"]) == 1


def test_exit_zero_and_fail_under_together_are_a_usage_error(tmp_path, x):
    d = dumps(tmp_path, {"l1": x}, {"l1": x})
    assert main(["analyze", *d, "-q", "--exit-zero", "--fail-under", "0.9"]) == 2


def test_compare_with_nan_outputs_exits_1_and_fix_without_a_verified_fix_exits_1(tmp_path, capsys):
    common = [f"{ZOO}:fp16_hazard", "--ref", "torch", "--target", "ort-fp16", "--workdir", str(tmp_path / "c")]
    assert main(["compare", *common, "-q"]) == 1
    assert "NaN/Inf" in capsys.readouterr().err
    assert main(["compare", *common, "-q", "--exit-zero"]) == 0
    # a goal no set can reach within one step: no verified fix, exit 1 (0 with --exit-zero)
    assert main(["fix", *common, "-q", "--goal", "cosine=1.0", "--max-steps", "1"]) == 1
    assert "no verified fix" in capsys.readouterr().err
    assert main(["fix", *common, "-q", "--goal", "cosine=1.0", "--max-steps", "1", "--exit-zero"]) == 0


def test_compare_fp32_against_fp32_exits_0(tmp_path):
    assert main(["compare", f"{ZOO}:resnet", "--ref", "torch", "--target", "ort", "--workdir", str(tmp_path / "c"),
                 "-q"]) == 0

"""Inputs the user gives: each problem is one line naming the file, the input and what is wrong,
or a visible note where parity proceeds (issue 10, part A)."""
from pathlib import Path

import numpy as np
import pytest

from support import cli, load_zoo


ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "models" / "zoo.py"




@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """LeNet as TorchScript (no declared shapes) and as ONNX with a dynamic batch."""
    import torch

    zoo = load_zoo()
    d = tmp_path_factory.mktemp("models")
    m = zoo.lenet()
    torch.jit.save(torch.jit.script(m), str(d / "lenet.pt"))
    torch.onnx.export(m, (torch.zeros(2, 1, 28, 28),), str(d / "lenet.onnx"), input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    return d


def _x(n=2, dtype=np.float32):
    return np.random.default_rng(0).random((n, 1, 28, 28)).astype(dtype)


def run(capsys, models, tmp_path, kind, *args):
    model = models / ("lenet.pt" if kind == "torchscript" else "lenet.onnx")
    ref = ["--ref", "torch", "--target", "torch-fp16"] if kind == "torchscript" else ["--ref", "ort", "--target",
                                                                                       "ort-fp16"]
    return cli(capsys, "compare", model, *ref, "--workdir", tmp_path / "cache", "-q", *args)


def test_missing_inputs_file_is_named_not_an_unknown_shape(capsys, models, tmp_path):
    rc, _out, err = run(capsys, models, tmp_path, "torchscript", "--inputs", tmp_path / "nope.npz")
    assert rc == 1 and len(err) == 1 and "--inputs" in err[0] and "nope.npz" in err[0] and "not found" in err[0]
    assert "shape" not in err[0]


def test_wrong_shape_on_torchscript_names_the_fault_and_the_input(capsys, models, tmp_path):
    rc, _out, err = run(capsys, models, tmp_path, "torchscript", "--input-shape", "x:1x1x20x20")
    assert rc == 1 and len(err) == 1, err
    assert "lenet.pt" in err[0] and "x [1, 1, 20, 20]" in err[0] and "cannot be multiplied" in err[0]
    assert "The following operation failed" not in err[0]


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_inputs_are_refused_naming_file_and_input(capsys, models, tmp_path, kind, value):
    x = _x()
    x[0, 0, 3, 4] = value
    np.savez(tmp_path / "in.npz", x=x)
    rc, _out, err = run(capsys, models, tmp_path, kind, "--inputs", tmp_path / "in.npz")
    assert rc == 1 and len(err) == 1 and "in.npz" in err[0] and "'x'" in err[0] and "1 NaN/Inf" in err[0], err


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_an_empty_batch_is_refused(capsys, models, tmp_path, kind):
    np.savez(tmp_path / "in.npz", x=np.zeros((0, 1, 28, 28), np.float32))
    rc, _out, err = run(capsys, models, tmp_path, kind, "--inputs", tmp_path / "in.npz")
    assert rc == 1 and len(err) == 1 and "in.npz" in err[0] and "'x'" in err[0] and "empty" in err[0], err


@pytest.mark.parametrize("dtype", [np.int64, np.float16, np.bool_])
def test_a_cast_input_is_noted(capsys, models, tmp_path, dtype):
    np.savez(tmp_path / "in.npz", x=(_x() * 4).astype(dtype))
    rc, out, err = run(capsys, models, tmp_path, "onnx", "--inputs", tmp_path / "in.npz")
    name = np.dtype(dtype).name
    assert rc == 0 and "layers compared" in out, err
    assert [ln for ln in err if "note" in ln] == [f"parity: note: {tmp_path / 'in.npz'}: input 'x' is {name}, "
                                                   f"cast to float32 (the dtype the model takes)."]


def test_a_cast_that_changes_values_is_refused(capsys, models, tmp_path):
    x = np.full((2, 1, 28, 28), 2 ** 24 + 1, np.int64)  # not a float32 number
    np.savez(tmp_path / "in.npz", x=x)
    rc, _out, err = run(capsys, models, tmp_path, "onnx", "--inputs", tmp_path / "in.npz")
    assert rc == 1 and "in.npz" in err[0] and "int64" in err[0] and "1568 of 1568" in err[0], err


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_a_lone_array_under_another_name_is_fed_the_same_way_with_a_note(capsys, models, tmp_path, kind):
    np.savez(tmp_path / "in.npz", image=_x())
    rc, out, err = run(capsys, models, tmp_path, kind, "--inputs", tmp_path / "in.npz")
    assert rc == 0 and "layers compared" in out, err
    assert any("'image' is fed to the model's only input 'x'" in ln for ln in err), err


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_nameless_input_shape_names_the_single_input(capsys, models, tmp_path, kind):
    rc, out, err = run(capsys, models, tmp_path, kind, "--input-shape", "3x1x28x28", "--json", tmp_path / "r.json")
    assert rc == 0 and "layers compared" in out, err
    import json

    rep = json.loads((tmp_path / "r.json").read_text())
    assert any(tuple(row.get("ref_shape") or ()) [:1] == (3,) for row in rep["layers"])

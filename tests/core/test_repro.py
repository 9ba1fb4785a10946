"""`parity repro`: the culprit as a standalone folder that ONNX Runtime and Polygraphy run as-is."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support import tool_command

from parity.contract.errors import ParityError
from parity.core.compare import CompareSettings, compare
from parity.core.repro import repro

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "models" / "zoo.py"


def _run_ort(folder: Path) -> tuple[dict, dict]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    ref = dict(np.load(folder / "reference_outputs.npz"))
    got = dict(zip(ref, sess.run(list(ref), dict(np.load(folder / "inputs.npz")))))
    return got, ref


def test_repro_of_the_diagnosed_culprit_reruns_and_polygraphy_loads_it(tmp_path):
    # strict fp16 storage: the culprit stores its out-of-range output in fp16 (on the CPU provider as
    # deployed, that value stays fp32 until the LayerNorm reading it, which is then the culprit)
    s = CompareSettings(model=f"{ZOO}:fp16_hazard", ref="torch", target="ort-fp16-strict", workdir=str(tmp_path / "c"),
                        diagnose=True)
    culprit = compare(s).summary["first_culprit"]  # a torch module path, as the diagnosis names it
    assert culprit == "boost"
    out = tmp_path / "bug"
    res = repro(s, culprit, out)
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "inputs.json", "inputs.npz", "model.onnx",
                                                      "reference_outputs.npz", "repro.json"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left
    got, ref = _run_ort(out)
    assert set(got) == set(res.outputs)
    for k in ref:
        assert ref[k].dtype == np.float32
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-6)
    # the culprit really is out of fp16's range: the reference outputs hold what a bug report shows
    assert max(np.abs(v).max() for v in ref.values()) > 65504
    # the inputs are the fp32 values that reach the layer: fc1's output, not the model input
    x = dict(np.load(out / "inputs.npz"))
    assert set(x) == set(res.inputs) and "x" not in x
    assert json.loads((out / "repro.json").read_text())["layer"] == "boost"
    assert "polygraphy run model.onnx" in (out / "README.txt").read_text()

    saved = tmp_path / "poly_out.json"
    r = subprocess.run(tool_command("polygraphy") + ["run", "model.onnx", "--onnxrt", "--load-inputs", "inputs.json",
                                                     "--save-outputs", str(saved)],
                       capture_output=True, text=True, cwd=out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    from polygraphy.comparator import RunResults

    results = RunResults.load(str(saved))
    (_, iters), = results.items()
    for k in ref:
        np.testing.assert_allclose(np.asarray(iters[0][k]), ref[k], rtol=1e-6, atol=1e-6)


def test_repro_by_onnx_node_name_and_tensor_and_a_whole_module(tmp_path):
    s = CompareSettings(model=f"{ZOO}:fp16_hazard", workdir=str(tmp_path / "c"))
    by_module = repro(s, "norm", tmp_path / "m")
    node = by_module.nodes[0]
    by_node = repro(s, node, tmp_path / "n")
    by_tensor = repro(s, by_module.outputs[0], tmp_path / "t")
    assert by_node.outputs == by_tensor.outputs == by_module.outputs
    for d in ("m", "n", "t"):
        got, ref = _run_ort(tmp_path / d)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-6)


def test_repro_refuses_an_unknown_layer_and_an_existing_folder(tmp_path):
    s = CompareSettings(model=f"{ZOO}:fp16_hazard", workdir=str(tmp_path / "c"))
    with pytest.raises(ParityError, match="'nope' is not an ONNX node, tensor or torch module"):
        repro(s, "nope", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ParityError, match="already exists"):
        repro(s, "norm", tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


def test_repro_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "parity", "repro", f"{ZOO}:fp16_hazard", "fc1", "--out",
                        str(tmp_path / "r"), "--workdir", str(tmp_path / "c"), "--seed", "3"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "Wrote" in r.stdout and (tmp_path / "r" / "model.onnx").is_file()
    x = dict(np.load(tmp_path / "r" / "inputs.npz"))
    assert list(x) == ["x"] and x["x"].shape == (4, 16)  # fc1 reads the model input itself

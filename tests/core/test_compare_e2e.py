"""`parity compare` end to end: torch against ONNX Runtime and low-precision targets on real models."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support import load_zoo


from parity.core.compare import CompareSettings, compare  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "models" / "zoo.py"
NAME_BASED = {"provenance", "output", "exact"}


def run(model, target, tmp_path, **kw):
    return compare(CompareSettings(model=f"{ZOO}:{model}", ref="torch", target=target,
                                   workdir=str(tmp_path / "cache"), **kw))


@pytest.mark.parametrize("model", ["lenet", "resnet", "encoder"])
def test_torch_vs_ort_fp32_agrees_on_every_layer_matched_by_provenance(model, tmp_path):
    rep = run(model, "ort", tmp_path)
    matched = rep.matched
    assert len(matched) >= 8
    for row in matched:
        # an independent check that capture and matching are right: fp32 vs fp32 must agree
        assert row.values["cosine"] >= 0.99999, (row.name, row.target_name, row.values)
        assert row.match in NAME_BASED, (row.name, row.match)
    # every torch module row that found an ONNX counterpart was placed by provenance, not by value
    module_rows = [r for r in matched if r.ref_name != "output" and not r.ref_name.startswith("output:")]
    assert all(r.match in ("provenance", "exact") for r in module_rows)
    assert rep.summary["provenance_share"] >= 0.75
    assert rep.summary["matched_by"].get("value", 0) == 0
    # leaf modules with no counterpart are listed, not dropped
    assert all(r.status in ("ok", "ref-only", "target-only") for r in rep.layers)


def test_low_precision_targets_each_give_a_full_table_and_int8_is_worse(tmp_path):
    worst = {}
    for target in ("ort-fp16", "ort-int8", "torch-fp16", "torch-bf16"):
        rep = run("resnet", target, tmp_path, random_inputs=2)
        assert len(rep.matched) >= 10, target
        assert all("cosine" in r.values for r in rep.matched)
        worst[target] = min(r.worst["cosine"] for r in rep.matched)
    assert worst["ort-int8"] < worst["ort-fp16"] - 1e-4
    assert worst["torch-bf16"] < worst["torch-fp16"]
    assert worst["ort-fp16"] > 0.999


def parity(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "parity", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT)


def test_cli_compare_lenet_json_with_top1_agreement(tmp_path):
    x = np.random.default_rng(0).random((6, 1, 28, 28), dtype=np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    out = tmp_path / "r.json"
    r = parity("compare", f"{ZOO}:lenet", "--ref", "torch", "--target", "ort-fp16", "--inputs", tmp_path / "in.npz",
               "--workdir", tmp_path / "cache", "--json", out)
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    names = [l["name"] for l in rep["layers"] if l["ref_name"]]
    assert names[:8] == ["conv1", "pool1", "conv2", "pool2", "ip1", "relu", "ip2", "prob"]
    assert rep["summary"]["top1_agreement"] == 1.0
    assert "top-1 agreement: 100.00% of 6 samples" in r.stdout


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    import torch

    zoo = load_zoo()
    d = tmp_path_factory.mktemp("bad")
    torch.jit.save(torch.jit.script(zoo.lenet()), str(d / "lenet.pt"))
    return d


@pytest.mark.parametrize("case", ["missing", "garbage-onnx", "torchscript-as-onnx", "bad-input-shape"])
def test_bad_input_is_one_clear_line(case, scripted, tmp_path):
    args = ["--workdir", tmp_path / "cache"]
    if case == "missing":
        r = parity("compare", tmp_path / "nope.onnx", "--ref", "ort", "--target", "ort-fp16", *args)
        want = "nope.onnx"
    elif case == "garbage-onnx":
        (tmp_path / "m.onnx").write_bytes(b"\x08\x07this is not a protobuf model" * 10)
        r = parity("compare", tmp_path / "m.onnx", "--ref", "ort", "--target", "ort-fp16", *args)
        want = "m.onnx"
    elif case == "torchscript-as-onnx":
        (tmp_path / "ts.onnx").write_bytes((scripted / "lenet.pt").read_bytes())
        r = parity("compare", tmp_path / "ts.onnx", "--ref", "ort", "--target", "ort-fp16", *args)
        want = "ts.onnx"
    else:
        np.savez(tmp_path / "x.npz", x=np.zeros((2, 1, 20, 20), np.float32))
        r = parity("compare", f"{ZOO}:lenet", "--ref", "torch", "--target", "ort", "--inputs",
                   tmp_path / "x.npz", *args)
        want = "x.npz"
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if not l.startswith(("W1", "I1"))]
    assert len(lines) == 1 and want in lines[0] and "Traceback" not in r.stderr, r.stderr
    if case == "torchscript-as-onnx":
        assert "TorchScript" in lines[0] or "torch" in lines[0].lower()
    if case == "bad-input-shape":
        assert "[2, 1, 20, 20]" in lines[0] and "28" in lines[0]


def test_torchscript_without_declared_shapes_takes_them_from_the_inputs(scripted, tmp_path):
    x = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    rep = compare(CompareSettings(model=str(scripted / "lenet.pt"), ref="torch", target="torch-fp16",
                                  inputs=str(tmp_path / "in.npz"), workdir=str(tmp_path / "cache")))
    conv1 = next(r for r in rep.layers if r.name == "conv1")
    assert conv1.ref_shape == (3, 20, 24, 24) and conv1.values["cosine"] > 0.9999


def test_saved_dumps_reanalyze_to_the_same_values(tmp_path):
    from parity.core.analyze import analyze

    rep = run("resnet", "ort-fp16", tmp_path, save_ref=str(tmp_path / "d" / "ref"),
              save_target=str(tmp_path / "d" / "tgt"), save_format="trt-text")
    again = analyze(tmp_path / "d" / "ref", tmp_path / "d" / "tgt", matcher="auto")
    a = {(r.ref_name, r.target_name): r.values["cosine"] for r in rep.matched}
    b = {(r.ref_name, r.target_name): r.values["cosine"] for r in again.matched}
    assert a.keys() == b.keys() and len(a) >= 10
    for k in a:  # text dumps hold float32 to 9 digits: the scores agree closely, not bitwise
        assert b[k] == pytest.approx(a[k], abs=1e-6)
    first = (tmp_path / "d" / "ref" / "stem.txt").read_text().splitlines()[0]
    assert first == "[2, 8, 16, 16]"


def test_lone_npy_input_names_the_single_input_of_a_shapeless_torchscript(scripted, tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(2).random((2, 1, 28, 28), dtype=np.float32))
    rep = compare(CompareSettings(model=str(scripted / "lenet.pt"), ref="torch", target="torch-bf16",
                                  inputs=str(tmp_path / "x.npy"), workdir=str(tmp_path / "cache")))
    assert next(r for r in rep.layers if r.name == "ip2").ref_shape == (2, 10)


def test_several_targets_write_one_report_and_one_target_dump_each(tmp_path):
    r = parity("compare", f"{ZOO}:lenet", "--ref", "torch", "--target", "ort", "--target", "torch-fp16",
               "--workdir", tmp_path / "cache", "--json", tmp_path / "r.json", "--save-ref", tmp_path / "ref",
               "--save-target", tmp_path / "tgt", "-q")
    assert r.returncode == 0, r.stderr
    for t in ("ort", "torch-fp16"):
        rep = json.loads((tmp_path / f"r.{t}.json").read_text())
        assert rep["target"] == t and rep["layers"]
        assert (tmp_path / f"tgt.{t}" / "parity-manifest.json").is_file()
    assert (tmp_path / "ref" / "conv1.npy").is_file() and not (tmp_path / "r.json").exists()

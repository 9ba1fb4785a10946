"""Staged attribution (``parity compare --stages``): each stage's figure recomputed independently, with
ModelOpt, torch.onnx.export and ONNX Runtime called directly on the same model and feeds."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings

import numpy as np
import pytest

pytest.importorskip("modelopt", reason="nvidia-modelopt is not installed (pip install 'parity[modelopt]')")

from parity.contract.errors import UsageError
from parity.core.stages import kind_of, resolve

import mo_models as models

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")


def cos_error(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return max(0.0, 1.0 - float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))


def test_stage_aliases_resolve_from_the_stage_before():
    assert resolve(["modelopt-int8", "onnx-qdq", "ort", "trt"]) == [
        "modelopt-int8", "modelopt-int8-qdq", "modelopt-int8-ort", "trt-int8"]
    assert resolve(["torch-fp16", "onnx-fp16", "ort"]) == ["torch-fp16", "ort-fp16-strict", "ort-fp16"]
    assert [kind_of(s) for s in resolve(["modelopt-int8", "onnx-qdq", "ort"])] == ["quantization", "export", "runtime"]
    with pytest.raises(UsageError, match="needs a precision stage before it"):
        resolve(["onnx-qdq", "ort"])
    with pytest.raises(UsageError, match="names no stage"):
        resolve([" "])


@pytest.fixture(scope="module")
def files(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("stages")
    net = models.outlier_cnn()
    torch.save(net.state_dict(), d / "outlier.pt")
    calib = np.concatenate(models.digits_feeds(4, start=1500))
    feed = models.digits_feeds(1)[0]
    np.savez(d / "calib.npz", x=calib)
    np.savez(d / "inputs.npz", x=feed)
    return d, net, calib, feed


def _cli(d, stages, capsys):  # type: ignore[no-untyped-def]
    from parity.cli import main

    rc = main(["compare", f"{models.__file__}:digits_net", "--state-dict", str(d / "outlier.pt"), "--ref", "torch",
               "--stages", stages, "--inputs", str(d / "inputs.npz"), "--calibration", str(d / "calib.npz"),
               "--workdir", str(d / "cache"), "--json", str(d / f"{stages}.json")])
    return rc, capsys.readouterr().out, json.loads((d / f"{stages}.json").read_text())


def test_int8_stages_quantization_export_runtime(files, capsys):
    from parity_builtin_modelopt.quant import import_mtq

    d, net, calib, feed = files
    rc, text, staged = _cli(d, "modelopt-int8,onnx-qdq,ort", capsys)
    assert staged["stages"] == ["modelopt-int8", "modelopt-int8-qdq", "modelopt-int8-ort"]
    mtq = import_mtq()
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        q = mtq.quantize(copy.deepcopy(net), mtq.INT8_DEFAULT_CFG,
                         lambda m: [m(torch.from_numpy(calib[i:i + 16])) for i in range(0, len(calib), 16)]).eval()
    x = torch.from_numpy(feed)
    with torch.no_grad():
        ref, fake = net(x).numpy(), q(x).numpy()
    path = d / "independent.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(q, (x,), str(path), dynamo=False, input_names=["x"])
    outs = []
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        outs.append(ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": feed})[0])
    want = [cos_error(ref, fake), cos_error(ref, outs[0]), cos_error(ref, outs[1])]
    assert staged["output_error"] == pytest.approx(want, abs=1e-6)
    assert sum(staged["output_added"]) == pytest.approx(want[-1], abs=1e-9)
    assert staged["owner"] == "modelopt-int8" and "quantization stage (modelopt-int8) owns the loss" in text
    fc1 = next(r for r in staged["layers"] if r["name"] == "fc1")
    assert fc1["owner"] == "modelopt-int8" and abs(fc1["added"][1]) < 1e-6  # the export is faithful
    assert rc == 1  # the last stage fails the cosine threshold


def test_fp16_stages_precision_export_runtime(files, capsys):
    d, net, calib, feed = files
    rc, text, staged = _cli(d, "torch-fp16,onnx-fp16,ort", capsys)
    assert staged["stages"] == ["torch-fp16", "ort-fp16-strict", "ort-fp16"]
    assert staged["kinds"] == ["precision", "export", "runtime"]
    with torch.no_grad():
        ref = net(torch.from_numpy(feed)).numpy()
        half = copy.deepcopy(net).half()(torch.from_numpy(feed).half()).float().numpy()
    assert staged["output_error"][0] == pytest.approx(cos_error(ref, half), abs=1e-6)
    assert "verdict:" in text and staged["owner"] in staged["stages"]

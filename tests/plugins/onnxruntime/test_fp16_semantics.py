"""fp16 semantics of the ONNX Runtime source (issue 16, part 1): capture never changes the answer.

``ort-fp16`` is ONNX Runtime's CPU provider as deployed (ops without a float16 kernel run in
float32 behind casts it inserts); ``ort-fp16-strict`` stores every float16 node output in float16,
as a GPU kernel does. Each expectation is computed here independently: with numpy from the torch
module's own weights, or with a plain onnxruntime session on the very file parity deploys.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from parity.contract.source import RunConfig  # noqa: E402
from parity.core.registry import get_source  # noqa: E402
from support import cli  # noqa: E402

MODELS = Path(__file__).resolve().parents[2] / "models" / "fp16_storage.py"
SPEC = f"{MODELS}:between_fallback_ops"
TSPEC = f"{MODELS}:through_transpose"


def _module(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location("fp16_storage_models", MODELS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)()


def _feed():
    torch.manual_seed(1)
    return {"x": (torch.randn(8, 16) * 3).numpy()}


def _records(target, spec, feed, workdir, **options):
    cfg = RunConfig(model=spec, workdir=workdir, input_shapes={"x": (8, 16)}, options=options)
    return {a.name: a for a in get_source(target).run(cfg, feed)}, cfg


def _fc1_fp32_on_fp16_weights(m, x):
    """What the CPU provider computes for fc1: float32 arithmetic on the float16-rounded weights."""
    w = m.fc1.weight.detach().numpy().astype(np.float16).astype(np.float32)
    b = m.fc1.bias.detach().numpy().astype(np.float16).astype(np.float32)
    return x @ w.T + b


def test_default_ort_fp16_captures_what_the_deployed_session_computes(tmp_path):
    m, feed = _module("between_fallback_ops"), _feed()
    fc1 = _fc1_fp32_on_fp16_weights(m, feed["x"])
    assert np.abs(fc1).max() > 65504  # the hazard is real: float16 storage would make it inf
    recs, _cfg = _records("ort-fp16", SPEC, feed, tmp_path)
    out = next(a for a in recs.values() if a.meta.get("is_output"))
    # the captured output is bit for bit what a plain session on parity's deployed fp16 file returns
    deployed = out.meta["deployed_model_file"]
    plain = ort.InferenceSession(deployed, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_array_equal(out.array, plain)
    assert np.isfinite(plain).all()
    # fc1's captured tensor is held in float32 (no rounding added by capturing it) and equals numpy's Gemm
    lin = next(a for a in recs.values() if a.meta.get("module_path") == "fc1")
    assert lin.array.dtype == np.float32 and np.isfinite(lin.array).all()
    np.testing.assert_allclose(lin.array, fc1, rtol=1e-5, atol=1e-3)
    assert out.meta["fp32_fallback_ops"].get("Gemm") == 2


def test_default_ort_fp16_passes_and_agrees_with_its_deployed_outputs(tmp_path, capsys):
    rc, out, err = cli(capsys, "compare", SPEC, "--ref", "torch", "--target", "ort-fp16", "--diagnose",
                       "--workdir", tmp_path / "w", "--json", tmp_path / "r.json")
    assert rc == 0, (out, err)
    rep = json.loads((tmp_path / "r.json").read_text())
    dep = rep["summary"]["deployed"]
    assert dep["perturbed"] is False and dep["outputs"][0]["capture_diff"] == 0.0
    assert dep["outputs"][0]["nonfinite"] == 0 and "float32 behind casts" in dep["semantics"]
    assert not any(r.get("local", {}).get("_new_nonfinite") for r in rep["layers"])
    assert not rep["summary"].get("culprits")
    assert "Deployed outputs (no capture) agree" in out


def test_strict_storage_fails_names_the_linear_and_counts_its_overflow(tmp_path, capsys):
    m, feed = _module("between_fallback_ops"), _feed()
    np.savez(tmp_path / "in.npz", **feed)
    # strict: x is stored in fp16, fc1 computes in fp32, its output is stored in fp16
    x16 = feed["x"].astype(np.float16).astype(np.float32)
    with np.errstate(over="ignore"):
        want_inf = int(np.isinf(_fc1_fp32_on_fp16_weights(m, x16).astype(np.float16)).sum())
    assert want_inf > 0
    recs, _ = _records("ort-fp16-strict", SPEC, feed, tmp_path / "w")
    lin = next(a for a in recs.values() if a.meta.get("module_path") == "fc1")
    assert int(np.isinf(lin.array).sum()) == want_inf
    rc, out, err = cli(capsys, "compare", SPEC, "--ref", "torch", "--target", "ort-fp16-strict", "--diagnose",
                       "--inputs", tmp_path / "in.npz", "--workdir", tmp_path / "w", "--json", tmp_path / "r.json")
    assert rc == 1 and any("NaN/Inf" in e for e in err), (out, err)
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["summary"]["first_culprit"] == "fc1"
    assert rep["summary"]["culprits"][0] == "fc1"
    assert "strict fp16 storage" in rep["summary"]["deployed"]["semantics"]
    assert rep["summary"]["deployed"]["perturbed"] is False  # strict capture is the strict run


def test_fix_under_strict_storage_is_verified_under_strict_storage(tmp_path, capsys):
    feed = _feed()
    np.savez(tmp_path / "in.npz", **feed)
    common = ["--ref", "torch", "--inputs", tmp_path / "in.npz", "--workdir", tmp_path / "w"]
    rc, out, err = cli(capsys, "fix", SPEC, "--target", "ort-fp16-strict", *common,
                       "--write-config", tmp_path / "fix.toml")
    assert rc == 0, (out, err)
    assert "Measured under: strict fp16 storage" in out and "Verified fix" in out
    toml = (tmp_path / "fix.toml").read_text()
    assert '"linear"' in toml  # fc1's ONNX output stays fp32
    # the printed set applied by compare under the same semantics passes; and the default semantics
    # needs no fix at all (fix and compare agree there too)
    rc, out, err = cli(capsys, "compare", SPEC, "--target", "ort-fp16-strict", *common, "--config", tmp_path / "fix.toml")
    assert rc == 0, (out, err)
    rc, out, err = cli(capsys, "fix", SPEC, "--target", "ort-fp16", *common)
    assert rc == 0 and "nothing to keep" in out and "Measured under: ONNX Runtime fp16 as deployed" in out


@pytest.mark.parametrize("target", ["ort-fp16", "ort-fp16-strict"])
def test_a_value_carried_by_a_transpose_overflows_under_both_semantics(target, tmp_path, capsys):
    feed = _feed()
    np.savez(tmp_path / "in.npz", **feed)
    rc, out, err = cli(capsys, "compare", TSPEC, "--ref", "torch", "--target", target, "--inputs",
                       tmp_path / "in.npz", "--workdir", tmp_path / "w", "--json", tmp_path / "r.json")
    assert rc == 1 and any("NaN/Inf" in e for e in err), (out, err)
    rep = json.loads((tmp_path / "r.json").read_text())
    dep = rep["summary"]["deployed"]
    assert dep["outputs"][0]["nonfinite"] > 0 and dep["perturbed"] is False
    if target == "ort-fp16":  # the deployed session itself holds the inf: a plain session agrees
        m = _module("through_transpose")
        recs, _ = _records(target, TSPEC, feed, tmp_path / "w")
        out_rec = next(a for a in recs.values() if a.meta.get("is_output"))
        plain = ort.InferenceSession(out_rec.meta["deployed_model_file"],
                                     providers=["CPUExecutionProvider"]).run(None, feed)[0]
        assert int((~np.isfinite(plain)).sum()) == dep["outputs"][0]["nonfinite"] > 0
        del m


def test_cpu_fp32_only_ops_match_the_casts_a_session_inserts(tmp_path):
    """``parity doctor``'s list, checked against what a session really does with a one-op fp16 model."""
    from onnx import TensorProto, helper

    from parity.lib.onnx.asrun import cpu_fp32_only_ops

    listed = set(cpu_fp32_only_ops(("MatMul", "Transpose", "Relu")))

    def inserts_casts(op: str) -> bool:
        ins = [helper.make_tensor_value_info("a", TensorProto.FLOAT16, [4, 4])]
        inputs = ["a", "a"] if op == "MatMul" else ["a"]
        g = helper.make_graph([helper.make_node(op, inputs, ["y"])], "g", ins,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [4, 4])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 9
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / f"{op}.onnx")
        ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return any(n.op_type == "Cast" for n in onnx.load(str(tmp_path / f"{op}.onnx")).graph.node)

    for op in ("MatMul", "Transpose", "Relu"):
        assert (op in listed) == inserts_casts(op), op
    assert "Transpose" not in listed  # a data-movement op keeps its float16 kernel


def test_fix_says_when_layers_fail_but_the_outputs_meet_the_goal(tmp_path, capsys):
    """compare's gate judges every layer against its threshold, fix's goal the outputs: when they part,
    fix says so instead of a bare 'nothing to keep'."""
    feed = _feed()
    np.savez(tmp_path / "in.npz", **feed)
    common = ["--ref", "torch", "--target", "ort-fp16", "--inputs", tmp_path / "in.npz", "--workdir", tmp_path / "w"]
    rc, out, err = cli(capsys, "fix", SPEC, *common, "--threshold", "0.99999999", "--goal", "cosine=0.99")
    assert rc == 0, (out, err)
    assert "nothing to keep" in out and "Note: layers inside the model fail the compare threshold" in out
    rc, out, err = cli(capsys, "fix", SPEC, *common)
    assert "nothing to keep" in out and "Note: layers inside" not in out

"""parity.lib.onnx.asrun: the graph ONNX Runtime runs for an fp16 model, and strict fp16 storage.

A hand-built fp16 graph: MatMul (no fp16 kernel on the CPU provider) feeding a Transpose (fp16
kernel). Checked against plain onnxruntime sessions: the as-run graph computes what the session
computes, names every original tensor, and the strict graph rounds the MatMul's output to fp16.
"""
import json

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from parity.lib.onnx.asrun import FP16_COPY, as_run_model, fallback_summary, strict_storage_model  # noqa: E402
from parity.lib.onnx.graph import with_outputs  # noqa: E402


def _model(path):
    w = (np.random.default_rng(0).standard_normal((8, 8)) * 4e3).astype(np.float16)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
         helper.make_node("Transpose", ["y"], ["z"], name="tr", perm=[1, 0])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT16, [8, 8])],
        initializer=[numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return w


def _run(path, names, feed):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    m = with_outputs(onnx.load(str(path)), names)
    return dict(zip(names, ort.InferenceSession(m.SerializeToString(), so,
                                                 providers=["CPUExecutionProvider"]).run(names, feed)))


def test_as_run_graph_holds_the_matmul_in_float32_and_computes_what_the_session_does(tmp_path):
    src = tmp_path / "m.onnx"
    w = _model(src)
    x = (np.random.default_rng(1).standard_normal((8, 8)) * 4).astype(np.float16)
    plain = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    asrun = as_run_model(src)
    assert as_run_model(src) == asrun  # cached
    got = _run(asrun, ["y", "z"], {"x": x})
    # y is the MatMul's float32 result (numpy: float32 arithmetic on the float16 operands), unrounded
    assert got["y"].dtype == np.float32
    np.testing.assert_allclose(got["y"], x.astype(np.float32) @ w.astype(np.float32), rtol=1e-5)
    assert np.abs(got["y"]).max() > 65504 and np.isfinite(got["y"]).all()
    # the Transpose reads the float16 copy the session makes for it: z is what the plain session returns
    np.testing.assert_array_equal(got["z"], plain)
    assert FP16_COPY in "".join(n for node in onnx.load(str(asrun)).graph.node for n in node.input)
    assert fallback_summary(asrun) == {"MatMul": 1}
    assert json.loads(asrun.with_suffix(".json").read_text())["fp32_held"] == ["y"]


def test_strict_graph_rounds_every_float16_output_before_it_is_read(tmp_path):
    src = tmp_path / "m.onnx"
    w = _model(src)
    x = (np.random.default_rng(1).standard_normal((8, 8)) * 4).astype(np.float16)
    strict = strict_storage_model(as_run_model(src))
    got = _run(strict, ["y", "z"], {"x": x})
    with np.errstate(over="ignore"):
        want = (x.astype(np.float32) @ w.astype(np.float32)).astype(np.float16)
    assert got["y"].dtype == np.float16
    np.testing.assert_allclose(got["y"].astype(np.float32), want.astype(np.float32), rtol=2e-3)
    assert np.array_equal(np.isinf(got["y"]), np.isinf(want)) and np.isinf(want).any()
    np.testing.assert_array_equal(got["z"], got["y"].T)

"""fp16 conversion with kept nodes: a value between two kept nodes stays float32.

onnxconverter-common casts each kept node's result to float16 and back at the next kept node, so a
residual stream beyond fp16's 65504 was inf between two fp32 nodes and `parity fix` could keep the
whole chain without effect (GPT-2 of the real zoo at fp16). Checked with real onnxruntime sessions
against the float32 model's own result.
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxconverter_common")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from parity.lib.onnx.convert import fetch_map, to_fp16  # noqa: E402


def _chain(path):
    """y = ((x * 1000) + 100) - x * 1000 + 1: ``big`` (~1e5, beyond fp16) feeds two nodes, the fan-out
    for which the converter round-trips a kept node's result through float16."""
    c = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
         (("k", 1000.0), ("b", 100.0), ("one", 1.0))]
    nodes = [helper.make_node("Mul", ["x", "k"], ["big"], name="mul"),
             helper.make_node("Add", ["big", "b"], ["shifted"], name="add"),
             helper.make_node("Sub", ["shifted", "big"], ["small"], name="sub"),
             helper.make_node("Add", ["small", "one"], ["y"], name="add_1")]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], c)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _run(path, x, extra=()):
    m = onnx.load(str(path))
    for name in extra:
        m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {"x": x})))


def test_value_between_kept_nodes_stays_float32(tmp_path):
    src = _chain(tmp_path / "chain.onnx")
    x = np.full((2, 3), 100.0, np.float32)
    want = _run(src, x)["y"]
    assert np.isfinite(want).all() and (x * 1000 + 100 > 65504).all()  # the middle is beyond fp16
    kept = to_fp16(src, tmp_path / "wd", keep_tensors=["big", "shifted", "small"])
    np.testing.assert_allclose(_run(kept, x)["y"], want, rtol=1e-3)  # was inf: 1e5 went through fp16
    got = _run(kept, x, extra=["big"])
    # the fanned-out tensor is fetched under its own name, in float32, with its fp32 values
    assert fetch_map(onnx.load(str(kept)), ["big"], quantized=False) == {"big": ("big", False)}
    assert got["big"].dtype == np.float32
    np.testing.assert_allclose(got["big"], x * 1000)
    # no float16 round trip left between the kept nodes
    half = {n.output[0] for n in onnx.load(str(kept)).graph.node
            if n.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in n.attribute)}
    assert "big" not in half

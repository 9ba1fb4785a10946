"""Capture steps are planned on per-tensor byte estimates made before the run (parity.lib.onnx.graph.estimated_bytes).

Where ONNX shape inference leaves dimensions open (a Reshape to a shape computed at run time, as attention
heads are split), a tensor that a size-preserving op makes of a known one has exactly that one's bytes; the
old guess from the feed's largest dimension could be tens of times too large. Checked against the arrays
ONNX Runtime really returns.
"""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from parity.lib.onnx.graph import estimated_bytes, inferred_info


def _model() -> onnx.ModelProto:
    # x (2, 3, 64) -> Reshape to a run-time shape (2, 3, 4, 16) -> Transpose -> * scalar -> Softmax -> + bias
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3]),
        helper.make_node("Mul", ["t", "scale"], ["m"]),
        helper.make_node("Softmax", ["m"], ["s"], axis=-1),
        helper.make_node("Add", ["s", "bias"], ["y"]),  # bias is not a scalar: this one stays a guess
    ]
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 64]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("scale", TensorProto.FLOAT, [1], [0.25]),
         helper.make_tensor("bias", TensorProto.FLOAT, [16], np.zeros(16, np.float32))])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_size_preserving_ops_of_a_known_tensor_get_its_exact_bytes(tmp_path):
    m = _model()
    x = np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32)
    shape = np.array([2, 3, 4, 16], np.int64)
    info = inferred_info(m, {"x": x.shape, "shape": shape.shape})
    assert info["r"].nbytes is None  # inference cannot know a run-time shape: the case this is about
    est = estimated_bytes(m, info, {"x": x.nbytes, "shape": shape.nbytes}, unknown_dim=64, unknown_first=2)
    # what ONNX Runtime returns for every tensor
    for name in ("r", "t", "m", "s"):
        m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    got = dict(zip([o.name for o in m.graph.output],
                   ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x, "shape": shape})))
    for name in ("r", "t", "m", "s"):
        assert est[name] == got[name].nbytes == x.nbytes, name
    assert est["y"] >= got["y"].nbytes  # a guess never under the truth: steps must not overrun their budget

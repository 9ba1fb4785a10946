"""What the core's pre-run checks read of an ONNX file through parity.lib.onnx.models (the core imports no
onnx itself): the activation bound of the memory check and the external-data references, each against
figures computed by hand from the graph built here."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from parity.lib.onnx.models import activation_bound, external_data  # noqa: E402

WIDTH, HIDDEN = 4, 4096


def _wide(path, location=None):
    """x[n, 4] @ W[4, 4096] -> y -> Relu -> z: the layer outputs are 1024x the input."""
    w = numpy_helper.from_array(np.ones((WIDTH, HIDDEN), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Relu", ["y"], ["z"])], "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", HIDDEN])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if location:
        onnx.save(model, str(path), save_as_external_data=True, location=location, size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


def test_activation_bound_is_the_largest_node_and_output_by_shape_inference(tmp_path):
    n = 1000
    model = _wide(tmp_path / "wide.onnx")
    x, y = n * WIDTH * 4, n * HIDDEN * 4  # bytes of the input and of each layer output (float32)
    node_io = max(x + y, y + y)  # MatMul reads x (W is a weight, not an activation); Relu reads y, writes z
    assert activation_bound(model, {"x": (n, WIDTH)}) == (node_io + y) * 3 // 2
    assert activation_bound(tmp_path / "missing.onnx", {"x": (n, WIDTH)}) == 0  # its source says why


def test_external_data_lists_each_reference_and_sees_a_new_version_of_the_file(tmp_path):
    model = _wide(tmp_path / "m.onnx", location="w.bin")
    assert external_data(model) == [("W", "w.bin")]
    _wide(model, location="weights-renamed.bin")  # same path, new content: read again, not from the cache
    assert external_data(model) == [("W", "weights-renamed.bin")]
    assert external_data(_wide(tmp_path / "inline.onnx")) == []
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert external_data(tmp_path / "junk.onnx") == []

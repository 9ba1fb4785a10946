"""parity.lib.onnx.convert: the IR version models are saved at, and the bf16 cast.

The IR version is checked against the installed onnxruntime itself (a model at the probed
maximum loads, one above it is refused); bf16 values are checked against torch's own
float32 -> bfloat16 rounding.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from parity.lib.onnx import convert


def _identity(ir: int) -> onnx.ModelProto:
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("x", "y")]
    m = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [vi[0]], [vi[1]]),
                          opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = ir
    return m


def _loads(m: onnx.ModelProto) -> bool:
    try:
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001
        return False
    return True


def test_max_ir_version_is_what_the_installed_onnxruntime_reads():
    top = convert.max_ir_version()
    assert _loads(_identity(top)) and not _loads(_identity(top + 1))


def test_clamp_lowers_only_versions_above_the_maximum(monkeypatch):
    monkeypatch.setattr(convert, "_MAX_IR", [9])
    high, low = _identity(14), _identity(7)
    assert convert.clamp_ir_version(high) is high and high.ir_version == 9
    assert convert.clamp_ir_version(low).ir_version == 7


def _mlp_model() -> onnx.ModelProto:
    """x -> MatMul(w) -> Add(b) -> Relu -> MatMul(w2) -> y; w holds a value past fp16's 65504."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    w[0, 0] = 1.0e6
    b = rng.standard_normal(6).astype(np.float32)
    w2 = rng.standard_normal((6, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b"], ["add"], name="add"),
             helper.make_node("Relu", ["add"], ["relu"], name="relu"),
             helper.make_node("MatMul", ["relu", "w2"], ["y"], name="head")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                          [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b, "b"), (w2, "w2"))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 14
    return m


def test_cast_models_are_saved_at_the_clamped_ir_version(tmp_path, monkeypatch):
    monkeypatch.setattr(convert, "_MAX_IR", [9])
    src = tmp_path / "mlp.onnx"
    onnx.save(_mlp_model(), str(src))
    for cast in (convert.to_fp16, convert.to_bf16):
        out = onnx.load(str(cast(src, tmp_path)))
        assert out.ir_version == 9


def test_exported_models_are_saved_at_the_clamped_ir_version(tmp_path, monkeypatch):
    from parity.lib.onnx.export import export_onnx

    monkeypatch.setattr(convert, "_MAX_IR", [9])
    feed = {"x": np.ones((2, 4), np.float32)}
    for dynamo in (True, False):
        p = export_onnx(torch.nn.Linear(4, 3).eval(), feed, tmp_path / f"lin-{dynamo}.onnx", dynamo=dynamo)
        m = onnx.load(str(p))
        assert m.ir_version <= 9, dynamo


@pytest.mark.parametrize("values", [
    np.array([0.0, -0.0, 1.0, 1.00390625, 1.01171875, 3.14159, -2.5e-3, 65504.0, 1.0e6, 3.0e38, 1e-40],
             np.float32),
    np.random.default_rng(1).standard_normal(1000).astype(np.float32) * 100,
])
def test_bf16_bits_round_as_torch_does(values):
    want = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(convert.bf16_bits(values), want)
    assert convert.bf16_bits(np.array([np.nan], np.float32))[0] & 0x7F80 == 0x7F80  # still a NaN


def test_to_bf16_casts_weights_from_fp32_without_fp16_clamping_and_keeps_io_fp32(tmp_path):
    src = tmp_path / "mlp.onnx"
    model = _mlp_model()
    onnx.save(model, str(src))
    out = onnx.load(str(convert.to_bf16(src, tmp_path, keep_nodes=["head"])))
    types = {t.name: t.data_type for t in out.graph.initializer}
    assert types["w"] == types["b"] == TensorProto.BFLOAT16 and types["w2"] == TensorProto.FLOAT  # head kept
    w = next(t for t in out.graph.initializer if t.name == "w")
    bits = np.frombuffer(w.raw_data, np.uint16).reshape(4, 6)
    orig = numpy_helper.to_array(model.graph.initializer[0])
    assert np.array_equal(bits, convert.bf16_bits(orig))
    widened = (bits.astype(np.uint32) << 16).view(np.float32)
    assert widened[0, 0] == pytest.approx(1.0e6, rel=1e-2)  # not clamped at fp16's 65504
    assert [i.type.tensor_type.elem_type for i in (*out.graph.input, *out.graph.output)] == [TensorProto.FLOAT] * 2
    assert not any(t.data_type == TensorProto.FLOAT16 for t in out.graph.initializer)
    casts = [a.i for n in out.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"]
    assert TensorProto.BFLOAT16 in casts and TensorProto.FLOAT16 not in casts
    vis = [v.type.tensor_type.elem_type for v in out.graph.value_info]
    assert TensorProto.FLOAT16 not in vis
    # the cast is cached by content: the same request returns the same file
    assert convert.to_bf16(src, tmp_path, keep_nodes=["head"]) == convert.to_bf16(src, tmp_path, keep_nodes=["head"])


@pytest.mark.parametrize("keep", [["head"], ["mm"], []])
def test_fp16_keeps_float32_outputs_when_the_last_layer_is_kept(tmp_path, keep):
    """onnxconverter-common casts a kept last layer's fp32 result to fp16; parity keeps the output fp32."""
    src = tmp_path / "mlp.onnx"
    model = _mlp_model()
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(
        np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32), "w"))
    onnx.save(model, str(src))
    out = onnx.load(str(convert.to_fp16(src, tmp_path, keep_nodes=keep)))
    sess = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    (y,) = sess.run(None, {"x": x})
    assert [o.type for o in sess.get_outputs()] == ["tensor(float)"] and y.dtype == np.float32
    if keep == ["head"]:  # the kept head's own result reaches the output unrounded: not on the fp16 grid
        assert not np.array_equal(y, y.astype(np.float16).astype(np.float32))

"""The TensorRT-RTX targets without TensorRT-RTX: target parsing, the strongly typed config, the cast
of the ONNX model to the target's type, keep-fp32 layers, doctor rows and the install message.

What needs the real bindings (parsing, building, the layer types after the cast) is in
test_gpu_bindings.py, run on a GPU machine (docs/runs/trt-rtx-h200.txt).
"""
from __future__ import annotations

import importlib.util
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from parity import ParityError
from parity.core import registry as plugins

from parity_builtin_tensorrt import config as C
from parity_builtin_tensorrt import loader as LD

HAS_RTX = importlib.util.find_spec("tensorrt_rtx_bindings") is not None


def _model(unnamed_relu: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (4, 8)), ("w2", (8, 3)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="" if unnamed_relu else "act"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_the_three_rtx_targets_are_registered_sources_of_the_one_plugin():
    reg = plugins.registry()["source"]
    for p in ("fp32", "fp16", "bf16"):
        src = reg[f"trt-rtx-{p}"].obj
        assert src.name == f"trt-rtx-{p}" and src.library is C.TENSORRT_RTX and src.precision == p
        assert type(src) is type(reg["trt-fp16"].obj)  # one class, not a copy
    assert C.parse_target("trt-rtx-bf16") == "bf16" and C.TARGET_LIBRARY["trt-rtx-bf16"] is C.TENSORRT_RTX
    assert "trt-rtx-int8" not in C.TARGETS and "trt-rtx-tf32" not in C.TARGETS


def test_rtx_configs_are_strongly_typed_casts_without_precision_flags():
    fp16 = C.config_for_target("trt-rtx-fp16")
    assert (fp16.strongly_typed, fp16.cast, fp16.builder_flags, fp16.cleared_flags) == (True, "fp16", (), ("TF32",))
    assert fp16.library == "tensorrt_rtx_bindings" and fp16.target == "trt-rtx-fp16"
    assert C.config_for_target("trt-rtx-bf16").cast == "bf16" and C.config_for_target("trt-rtx-fp32").cast is None
    # the same capture options mean the same thing
    assert C.config_for_target("trt-rtx-fp16", {"trt_capture": "mark"}).capture == "mark"
    # TensorRT's own targets are unchanged: flags, no cast
    t16 = C.config_for_target("trt-fp16")
    assert (t16.builder_flags, t16.cast, t16.strongly_typed, t16.library) == (("FP16",), None, False, "tensorrt")
    # the library is a build field: trt-fp16 and trt-rtx-fp16 never share a cached engine
    assert C.cache_key("m", t16, "1.0") != C.cache_key("m", fp16, "1.0")


@pytest.mark.parametrize("opts, match", [
    ({"trt_strongly_typed": False}, "always strongly typed"),
    ({"trt_precision_constraints": "obey"}, "trt_precision_constraints does not apply to trt-rtx-fp16"),
    ({"layer_precisions": "fc1:fp16"}, r"only NAME:fp32 entries"),
    ({"trt_capture": "everything"}, "trt_capture 'everything' is not known"),
    ({"trt_queue_size": 0}, "at least 1"),
])
def test_options_that_cannot_apply_to_rtx_are_one_line_errors(opts, match):
    with pytest.raises(ParityError, match=match) as e:
        C.config_for_target("trt-rtx-fp16", opts)
    assert "\n" not in str(e.value)


def test_rtx_has_no_int8_or_tf32():
    for p in ("int8", "tf32"):
        with pytest.raises(ParityError, match=r"unknown TensorRT-RTX precision .*trt-rtx-fp32, trt-rtx-fp16, trt-rtx-bf16"):
            C.engine_config(p, {}, C.TENSORRT_RTX)


def test_keep_high_precision_becomes_fp32_nodes_of_the_cast_without_constraints():
    m = _model()
    ecfg = C.run_engine_config("fp16", {"keep_high_precision": ["r"], "outputs_only": True}, m, "m.onnx",
                               library=C.TENSORRT_RTX)
    assert ecfg.layer_precisions == (C.LayerPrecision("act", "fp32"),) and ecfg.capture == "outputs"
    assert ecfg.builder_flags == () and ecfg.precision_constraints == "none"
    assert C.fp32_nodes(m, ecfg) == (["act"], [])
    with pytest.raises(ParityError, match="keep_high_precision names 'nope'"):
        C.run_engine_config("fp16", {"keep_high_precision": ["nope"]}, m, "m.onnx", library=C.TENSORRT_RTX)


def test_fp32_nodes_resolve_names_wildcards_and_unnamed_nodes():
    m = _model(unnamed_relu=True)
    ecfg = C.config_for_target("trt-rtx-bf16", {"layer_precisions": "fc*:fp32,node_of_r:fp32"})
    assert C.fp32_nodes(m, ecfg) == (["fc1", "fc2"], ["r"])
    with pytest.raises(ParityError, match=r"trt_layer_precisions names 'conv\*', which match no node of m.onnx. "
                                          r"Note: use ONNX node names, e.g. 'fc1'"):
        C.fp32_nodes(m, C.config_for_target("trt-rtx-fp16", {"layer_precisions": "conv*:fp32"}), "m.onnx")


@pytest.mark.parametrize("precision, low", [("fp16", TensorProto.FLOAT16), ("bf16", TensorProto.BFLOAT16)])
def test_typed_model_casts_to_the_target_type_and_leaves_kept_layers_fp32(tmp_path, precision, low):
    src = tmp_path / "m.onnx"
    onnx.save(_model(), str(src))
    ecfg = C.config_for_target(f"trt-rtx-{precision}", {"layer_precisions": "fc2:fp32"})
    out = LD.typed_model(src, ecfg, tmp_path)
    assert out != src
    cast = onnx.load(str(out))
    types_ = {t.name: t.data_type for t in cast.graph.initializer}
    assert types_ == {"w1": low, "w2": TensorProto.FLOAT}
    io = [v.type.tensor_type.elem_type for v in (*cast.graph.input, *cast.graph.output)]
    assert io == [TensorProto.FLOAT, TensorProto.FLOAT]  # fp32 in and out: feeds and reference stay fp32
    assert LD.typed_model(src, C.config_for_target("trt-rtx-fp32"), tmp_path) == src


def test_deserializing_on_an_unsupported_gpu_says_so_in_one_line(monkeypatch):
    monkeypatch.setattr(LD, "_LOGGERS", {})
    said = "TensorRT-RTX does not support this compute capability (9.0); supported: 8.0 8.6 8.9 12.0 12.1"
    log = LD.ErrorLog()
    runtime = types.SimpleNamespace(deserialize_cuda_engine=lambda data: (log.add("at checkMacros.cpp"),
                                                                          log.add(said), log.add("call site"),
                                                                          None)[-1])
    with pytest.raises(ParityError) as e:
        LD.deserialize_engine(runtime, b"plan", "resnet-fp16-ab.onnx", "trt-rtx-fp16", "TensorRT-RTX", log)
    assert str(e.value) == (f"TensorRT-RTX failed deserializing the engine built for trt-rtx-fp16 from "
                            f"resnet-fp16-ab.onnx: {said}. Note: the engine was built; this GPU's compute capability "
                            f"is not supported by TensorRT-RTX: run on a GPU it supports, or use another target")


def test_compute_capabilities_come_from_the_library_enum():
    from parity_builtin_tensorrt.doctor import compute_capabilities, runs_engines_here

    fake = types.SimpleNamespace(ComputeCapability=types.SimpleNamespace(__members__={
        "NONE": 0, "CURRENT": 1, "SM75": 2, "SM80": 3, "SM89": 4, "SM120": 5, "SM121": 6}))
    assert compute_capabilities(fake) == [(7, 5), (8, 0), (8, 9), (12, 0), (12, 1)]
    assert compute_capabilities(types.SimpleNamespace()) == []
    assert runs_engines_here(C.TENSORRT) == (True, "")  # TensorRT 10 runs on what it builds for


@pytest.mark.skipif(HAS_RTX, reason="checks the messages shown where TensorRT-RTX is missing")
def test_without_the_bindings_doctor_check_and_run_say_what_to_install(tmp_path):
    from parity.contract.source import RunConfig
    from parity_builtin_tensorrt.doctor import doctor
    from parity_builtin_tensorrt.source import TrtSource

    rows = {r["check"]: r for r in doctor(C.TENSORRT_RTX)}
    assert not rows["tensorrt_rtx_bindings"]["ok"]
    assert "pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings" in rows["tensorrt_rtx_bindings"]["detail"]
    assert rows["onnxconverter_common"]["ok"] and rows["onnxconverter_common"]["required"]
    assert "INT8 calibration (IInt8EntropyCalibrator2)" not in rows
    src = TrtSource("fp16", C.TENSORRT_RTX)
    why = src.check()
    assert why.startswith("needs TensorRT-RTX 1+ and an NVIDIA GPU: pip install tensorrt-rtx-cu13-libs") and "\n" not in why
    with pytest.raises(ParityError, match=r"the trt-rtx-\* targets need TensorRT-RTX 1\+. Note: import "
                                          r"tensorrt_rtx_bindings failed"):
        list(src.run(RunConfig(model=str(tmp_path / "m.onnx"), workdir=tmp_path), {"x": np.zeros(1)}))

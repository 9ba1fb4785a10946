"""The TensorRT plugin against real bindings: TensorRT 10 (``tensorrt``) and TensorRT for RTX
(``tensorrt_rtx_bindings``), on a CUDA GPU.

Runs wherever either library imports and a CUDA GPU is present (``needs_trt_bindings``); each
library's tests skip with the reason where it is absent. Nothing here is faked: networks are built
and parsed by the library, plans come from ``build_serialized_network``, and failures are the
library's own. Where an engine cannot be deserialized (TensorRT-RTX on a GPU it does not support,
such as an H200, compute capability 9.0) the test stops after the build and skips with the
library's reason: "built; this GPU's compute capability is not supported by TensorRT-RTX".
Run on the lent H200 by ``scripts/gpu_trt_check.sh``; the output is kept in ``docs/runs/``.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from support import needs_trt_bindings

from parity import ParityError

pytestmark = needs_trt_bindings

import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from parity_builtin_tensorrt import config as C  # noqa: E402
from parity_builtin_tensorrt import loader as LD  # noqa: E402

ZOO = ("lenet", "resnet", "encoder", "fp16_hazard", "int8_outlier")
LIBS = {"trt": C.TENSORRT, "trt-rtx": C.TENSORRT_RTX}
#: every target of both libraries, by capture mode
TARGETS = sorted(C.TARGETS)


def _lib_or_skip(prefix: str):
    lib = LIBS[prefix]
    if importlib.util.find_spec(lib.module) is None:
        pytest.skip(f"{lib.label} is not installed here ({lib.module} does not import)")
    return lib, LD.import_tensorrt(lib)


def _not_runnable_reason(lib) -> str | None:
    from parity_builtin_tensorrt.doctor import runs_engines_here

    runs, why = runs_engines_here(lib)
    return None if runs else why


@pytest.fixture(scope="module")
def zoo_models(tmp_path_factory):
    """Each zoo model exported to ONNX by parity (as ``parity compare`` does), with a feed."""
    from parity.lib.onnx.export import export_onnx

    from tests.models import zoo

    out = {}
    d = tmp_path_factory.mktemp("zoo")
    for name in ZOO:
        module = getattr(zoo, name)()
        shape = getattr(type(module), "parity_input_shapes", {"x": (1, 1, 28, 28)})
        inp = next(iter(shape))
        feed = {inp: np.random.default_rng(3).standard_normal(shape[inp]).astype(np.float32)}
        out[name] = (export_onnx(module, feed, d / f"{name}.onnx"), feed)
    return out


# --------------------------------------------------------------------------- network construction, parsing

@pytest.mark.parametrize("prefix", list(LIBS))
def test_network_construction_by_hand_builds_a_plan(prefix):
    """INetworkDefinition built layer by layer (input, ReLU, output) through the library's own API."""
    lib, trt = _lib_or_skip(prefix)
    logger = LD._logger(trt)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if lib.strongly_typed else 0
    net = builder.create_network(flags)
    x = net.add_input("x", trt.DataType.FLOAT, (1, 4))
    relu = net.add_activation(x, trt.ActivationType.RELU)
    relu.name = "relu"
    net.mark_output(relu.get_output(0))
    assert net.num_layers == 1 and net.get_layer(0).name == "relu" and net.num_outputs == 1
    desc = LD.describe_network(trt, net)
    assert [(d.name, d.type) for d in desc] == [("(inputs)", "Input"), ("relu", "ACTIVATION")]
    assert desc[1].outputs[0].dtype == "float32" and desc[1].outputs[0].is_network_output
    plan = LD.check_serialized(builder.build_serialized_network(net, builder.create_builder_config()),
                               "by-hand", f"{lib.prefix}-fp32", lib.label)
    assert len(plan) > 0


@pytest.mark.parametrize("model", ZOO)
@pytest.mark.parametrize("prefix", list(LIBS))
def test_zoo_models_parse_into_layers_named_after_onnx_nodes(prefix, model, zoo_models):
    lib, trt = _lib_or_skip(prefix)
    path, _feed = zoo_models[model]
    logger = LD._logger(trt)
    builder = trt.Builder(logger)
    net = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
                                 if lib.strongly_typed else 0)
    parser = trt.OnnxParser(net, logger)
    LD.check_parsed(parser.parse_from_file(str(path)), parser, path.name, lib.label)
    layers = {d.name for d in LD.describe_network(trt, net)[1:]}
    nodes = {n.name for n in onnx.load(str(path), load_external_data=False).graph.node
             if n.op_type not in ("Constant",)}
    assert layers and len(layers & nodes) >= len(nodes) // 2, sorted(nodes - layers)[:5]


# --------------------------------------------------------------------------- every capture mode and precision

def _build(trt, lib, target: str, capture: str, path: Path, feed, workdir: Path, options=None):
    ecfg = C.config_for_target(target, {"trt_capture": capture, **(options or {})})
    typed = LD.typed_model(path, ecfg, workdir)
    return ecfg, typed, LD.build_plan(trt, typed, ecfg, feed, [], workdir / "trt", has_qdq=False)


@pytest.mark.parametrize("capture", C.CAPTURE_MODES)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("model", ZOO)
def test_every_capture_mode_and_precision_builds_an_engine(model, target, capture, zoo_models, tmp_path):
    lib = C.TARGET_LIBRARY[target]
    lib, trt = _lib_or_skip(lib.prefix)
    path, feed = zoo_models[model]
    calib = {"trt_int8_fallback": "fp16"} if target.endswith("int8") else {}
    ecfg, typed, built = _build(trt, lib, target, capture, path, feed, tmp_path, calib)
    assert len(built.engine) > 0
    notes = built.notes
    assert notes["library"] == lib.label and notes["capture"] == capture
    if lib.strongly_typed:
        assert notes["strongly_typed"] and not ecfg.builder_flags
        if ecfg.cast:
            cast = onnx.load(str(typed), load_external_data=False)
            want = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}[ecfg.cast]
            assert typed != path and any(t.data_type == want for t in cast.graph.initializer)
    if capture == "mark":
        assert notes["marked_outputs"] > 0 and notes["fusion_altered"]
    elif capture == "debug":
        assert notes["debug_strategy"] in ("unfused", "marked")
    else:
        assert notes["debug_strategy"] == "none" and not notes["fusion_altered"]
    # deserialize and inspect where the library runs engines on this GPU
    logger = LD._logger(trt)
    runtime = trt.Runtime(logger)
    why = _not_runnable_reason(lib)
    if why is not None:
        with pytest.raises(ParityError) as e:
            LD.deserialize_engine(runtime, built.engine, typed.name, target, lib.label, logger.errors)
        msg = str(e.value)
        assert "\n" not in msg
        assert msg.startswith(f"{lib.label} failed deserializing the engine built for {target} from {typed.name}")
        assert "compute capability" in msg, msg
        pytest.skip(f"built; this GPU's compute capability is not supported by {lib.label} ({why})")
    engine = LD.deserialize_engine(runtime, built.engine, typed.name, target, lib.label, logger.errors)
    from parity_builtin_tensorrt.layer_info import read_layer_info

    info = read_layer_info(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    assert info.layers and info.detailed


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_rtx_layers_take_the_cast_model_types_and_kept_layers_stay_fp32(precision, zoo_models, tmp_path):
    """Strongly typed: after the cast, layers compute in fp16/bf16; a layer kept stays fp32."""
    lib, trt = _lib_or_skip("trt-rtx")
    path, feed = zoo_models["fp16_hazard"]
    model = onnx.load(str(path), load_external_data=False)
    keep = next(n.name for n in model.graph.node if n.op_type in ("LayerNormalization", "ReduceMean"))
    ecfg = C.config_for_target(f"trt-rtx-{precision}", {"layer_precisions": f"{keep}:fp32"})
    typed = LD.typed_model(path, ecfg, tmp_path)
    logger = LD._logger(trt)
    builder = trt.Builder(logger)
    net = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(net, logger)
    LD.check_parsed(parser.parse_from_file(str(typed)), parser, typed.name, lib.label)
    by_layer = {d.name: [o.dtype for o in d.outputs] for d in LD.describe_network(trt, net)[1:]}
    low = {"fp16": "float16", "bf16": "bfloat16"}[precision]
    gemms = [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    assert gemms and all(by_layer[g] == [low] for g in gemms if g in by_layer), by_layer
    assert by_layer[keep] == ["float32"]
    built = LD.build_plan(trt, typed, ecfg, feed, [], tmp_path / "trt", has_qdq=False)
    assert built.notes["layers_kept_fp32"] == [keep] and len(built.engine) > 0


# --------------------------------------------------------------------------- clear failures from the real library

@pytest.mark.parametrize("prefix", list(LIBS))
def test_a_parser_error_is_one_line_naming_model_step_and_library_message(prefix, tmp_path):
    lib, trt = _lib_or_skip(prefix)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], name="bad", domain="parity.test")],
                          "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("parity.test", 1)])
    p = tmp_path / "unparsable.onnx"
    onnx.save(m, str(p))
    ecfg = C.config_for_target(f"{lib.prefix}-fp32", {"trt_capture": "outputs"})
    with pytest.raises(ParityError) as e:
        LD.build_plan(trt, p, ecfg, {"x": np.zeros((1, 4), np.float32)}, [], tmp_path / "trt", has_qdq=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{lib.label}'s ONNX parser rejected unparsable.onnx: ")
    assert "NoSuchOp" in msg or "bad" in msg


def test_a_builder_flag_the_library_lacks_is_one_line():
    lib, trt = _lib_or_skip("trt-rtx")
    assert not hasattr(trt.BuilderFlag, "FP16")  # the real bindings: strongly typed, no FP16 flag
    with pytest.raises(ParityError) as e:
        LD.builder_flag(trt, "FP16", "trt-fp16")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"TensorRT-RTX {trt.__version__} has no BuilderFlag.FP16")
    assert LD.builder_flag(trt, "TF32", "trt-rtx-fp32") == trt.BuilderFlag.TF32


@pytest.mark.parametrize("prefix", list(LIBS))
def test_an_engine_that_does_not_deserialize_is_one_line(prefix):
    lib, trt = _lib_or_skip(prefix)
    logger = LD._logger(trt)
    with pytest.raises(ParityError) as e:
        LD.deserialize_engine(trt.Runtime(logger), b"not a plan" * 16, "garbage.onnx", f"{lib.prefix}-fp32",
                              lib.label, logger.errors)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{lib.label} failed deserializing the engine built for "
                                              f"{lib.prefix}-fp32 from garbage.onnx")


# --------------------------------------------------------------------------- end to end, where engines run

@pytest.mark.parametrize("capture", C.CAPTURE_MODES)
@pytest.mark.parametrize("target", TARGETS)
def test_source_runs_end_to_end_where_engines_run(target, capture, zoo_models, tmp_path):
    from parity.contract.source import RunConfig
    from parity_builtin_tensorrt.source import TrtSource

    lib = C.TARGET_LIBRARY[target]
    lib, _trt = _lib_or_skip(lib.prefix)
    why = _not_runnable_reason(lib)
    if why is not None:
        pytest.skip(f"built; this GPU's compute capability is not supported by {lib.label} ({why})")
    path, feed = zoo_models["resnet"]
    opts = {"trt_capture": capture, **({"trt_int8_fallback": "fp16"} if target.endswith("int8") else {})}
    src = TrtSource(C.TARGETS[target], lib)
    recs = list(src.run(RunConfig(model=str(path), workdir=tmp_path, options=opts), feed))
    assert recs and recs[-1].meta.get("is_output") and recs[-1].meta["library"] == lib.label
    assert all(np.isfinite(r.array).all() for r in recs if r.meta.get("is_output"))

"""TensorRT diagnosis support: single-node models, keep-in-fp32 overrides, outputs-only runs.

The ONNX side is tested for real: every single-node model cut from exported CNN and
transformer graphs passes the ONNX checker and, run by ONNX Runtime on the full graph's fp32
tensors, reproduces the full graph's tensor bit for bit. That proves the extraction, not
TensorRT's numbers: tests that need TensorRT are skipped where it is missing.
"""
from __future__ import annotations


import numpy as np
import pytest

from support import HAS_TRT, needs_trt

from parity import ParityError

import onnx
import onnxruntime as ort

from onnx import TensorProto, helper  # noqa: E402

from parity.contract.source import RunConfig  # noqa: E402
from parity_builtin_tensorrt import config as C  # noqa: E402
from parity_builtin_tensorrt import local as L  # noqa: E402
from parity_builtin_tensorrt.config import LayerPrecision, cache_key  # noqa: E402
from parity_builtin_tensorrt.marking import SHAPE_INPUTS  # noqa: E402



def _session(model: "onnx.ModelProto") -> "ort.InferenceSession":
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _export_zoo(kind: str, tmp_path_factory):
    from parity.lib.onnx.export import export_onnx
    from parity.lib.onnx.graph import with_outputs

    from tests.models import zoo

    name, _, exporter = kind.partition("-")
    module = getattr(zoo, name)()
    shape = type(module).parity_input_shapes["x"]
    feed = {"x": np.random.default_rng(7).standard_normal(shape).astype(np.float32)}
    path = export_onnx(module, feed, tmp_path_factory.mktemp("onnx") / f"{kind}.onnx",
                       dynamo=exporter != "torchscript")
    model = onnx.load(str(path))
    names = [o for n in model.graph.node for o in n.output if o]
    full = onnx.ModelProto()
    full.CopyFrom(model)
    with_outputs(full, names)
    vals = dict(zip(names, _session(full).run(names, feed)))
    vals.update(feed)
    return kind, model, feed, vals


@pytest.fixture(scope="module", params=["resnet", "encoder", "encoder-torchscript"])
def exported(request, tmp_path_factory):
    """(kind, model, feed, every tensor of one fp32 run) for a CNN and a transformer from the zoo.

    The TorchScript export of the transformer computes its Reshape shapes from the dynamic
    batch (Shape -> Gather -> Concat), which the single-node models must fold.
    """
    return _export_zoo(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def resnet_exported(tmp_path_factory):
    return _export_zoo("resnet", tmp_path_factory)


# --------------------------------------------------------------------------- single-node models

def test_single_node_models_reproduce_the_full_graph_exactly(exported):
    from parity.lib.onnx.graph import tensor_sites

    kind, model, _feed, vals = exported
    ex = L.NodeExtractor(model)
    nodes = model.graph.node
    idx = sorted({s.node_index for s in tensor_sites(model)
                  if str(vals[s.name].dtype) in ("float32", "float16")})
    assert len(idx) >= (15 if kind == "resnet" else 30)
    folded = 0
    for i in idx:
        node = nodes[i]
        m = ex.extract(i, vals)
        onnx.checker.check_model(m, full_check=True)
        assert [n.op_type for n in m.graph.node][-1] == node.op_type and m.graph.node[-1].name == node.name
        shape_pos = {node.input[p] for p in SHAPE_INPUTS.get(node.op_type, ()) if p < len(node.input)}
        ins = [vi.name for vi in m.graph.input]
        assert not (set(ins) & shape_pos), f"{node.name}: shape inputs must be constants for TensorRT"
        folded += sum(1 for t in m.graph.initializer if t.name in shape_pos and t.name not in
                      {x.name for x in model.graph.initializer})
        for vi in m.graph.input:  # typed from the reference values, static shapes
            dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            assert dims == list(vals[vi.name].shape)
        outs = [o.name for o in m.graph.output]
        assert outs == [o for o in node.output if o]
        got = _session(m).run(outs, {n: vals[n] for n in ins})
        for o, g in zip(outs, got):
            assert g.dtype == vals[o].dtype and g.shape == vals[o].shape
            assert np.array_equal(g, vals[o], equal_nan=True), f"{node.name} ({node.op_type}) output {o}"
    if kind == "encoder-torchscript":  # Reshape shapes computed from the batch: folded per input
        assert folded >= 4


def _toy() -> "onnx.ModelProto":
    """x -> Shape -> Concat(shape) ; Relu (unnamed) ; Reshape(relu, concat) ; Add(const chain)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),  # unnamed
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Constant", [], ["minus1"], name="c1",
                         value=helper.make_tensor("v", TensorProto.INT64, [1], [-1])),
        helper.make_node("Slice", ["s", "zero", "one"], ["s0"], name="slice"),
        helper.make_node("Concat", ["s0", "minus1"], ["newshape"], name="concat", axis=0),
        helper.make_node("Reshape", ["r", "newshape"], ["flat"], name="reshape"),
        helper.make_node("Constant", [], ["k"], name="c2",
                         value=helper.make_tensor("kv", TensorProto.FLOAT, [4], [0.5] * 4)),
        helper.make_node("Mul", ["k", "w"], ["kw"], name="kw"),  # constants only
        helper.make_node("Add", ["flat", "kw"], ["y"], name="add"),
        helper.make_node("Mul", ["flat", "c2out"], ["z"], name="mul"),
    ]
    nodes.insert(7, helper.make_node("Identity", ["k"], ["c2out"], name="idk"))
    g = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4]),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", 4])],
                          initializer=[w, helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
                                       helper.make_tensor("one", TensorProto.INT64, [1], [1])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_inputs_become_graph_inputs_constants_or_initializers_as_tensorrt_needs():
    model = _toy()
    onnx.checker.check_model(model)
    idx = {n.name or n.output[0]: i for i, n in enumerate(model.graph.node)}
    x = np.arange(12, dtype=np.float32).reshape(3, 2, 2) - 5
    vals = {"x": x, "r": np.maximum(x, 0), "newshape": np.array([3, -1], np.int64),
            "kw": np.full(4, 0.5, np.float32) * np.array([1, 2, 3, 4], np.float32),
            "c2out": np.full(4, 0.5, np.float32)}
    vals["flat"] = vals["r"].reshape(3, -1)

    relu = L.single_node_model(model, idx["r"], vals)
    assert [vi.name for vi in relu.graph.input] == ["x"] and not relu.graph.initializer
    assert relu.graph.node[0].name == "" and C.layer_name(model.graph.node[idx["r"]]) == "node_of_r"
    dims = [d.dim_value for d in relu.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [3, 2, 2]

    rs = L.single_node_model(model, idx["reshape"], vals)  # live shape -> folded initializer
    assert [vi.name for vi in rs.graph.input] == ["r"]
    (init,) = rs.graph.initializer
    assert init.name == "newshape" and onnx.numpy_helper.to_array(init).tolist() == [3, -1]

    add = L.single_node_model(model, idx["add"], vals)  # constant chain -> its value
    assert [vi.name for vi in add.graph.input] == ["flat"]
    assert {t.name for t in add.graph.initializer} == {"kw"}
    mul = L.single_node_model(model, idx["mul"], vals)  # float computed from constants -> value
    assert {t.name for t in mul.graph.initializer} == {"c2out"}
    idk = L.single_node_model(model, idx["idk"], vals)  # a Constant node input is copied
    assert [n.op_type for n in idk.graph.node] == ["Constant", "Identity"] and not idk.graph.input
    for m in (relu, rs, add, mul, idk):
        onnx.checker.check_model(m, full_check=True)

    # without values, inputs are typed by shape inference (symbolic batch kept), shapes stay unknown to fold
    bare = L.single_node_model(model, idx["r"])
    assert bare.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "b"
    with pytest.raises(ParityError, match="'kw'.*computed from constants"):
        L.single_node_model(model, idx["add"], {})


def test_control_flow_nodes_cannot_run_alone():
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    g = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
                           helper.make_node("Greater", ["s", "zero"], ["c"], name="gt"),
                           helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then, else_branch=other)],
                          "cf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                          initializer=[helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ParityError, match="'branch'.*body graph"):
        L.single_node_model(m, 2)


# --------------------------------------------------------------------------- keep_high_precision

def test_keep_maps_tensors_to_their_layers_and_merges_with_existing_overrides():
    model = _toy()
    got = C.keep_to_layer_precisions(model, ["flat", "r", "flat"], "add:fp16,re*:fp16,reshape:fp16")
    assert got == {"add": "fp16", "re*": "fp16", "reshape": "fp32", "node_of_r": "fp32"}
    assert list(got)[-2:] == ["reshape", "node_of_r"]  # keep entries come last
    assert C.keep_to_layer_precisions(model, ["y"], {"x*": "fp16"}) == {"x*": "fp16", "add": "fp32"}
    assert C.keep_to_layer_precisions(model, ["z"], (LayerPrecision("mul", "fp16"),)) == {"mul": "fp32"}
    assert C.keep_to_layer_precisions(model, [], None) == {}


@pytest.mark.parametrize("keys, match", [
    (["nope", "y"], r"keep_high_precision names 'nope', not a tensor computed by a node of toy.onnx"),
    (["x"], "'x', a graph input or weight"),
    (["w"], "'w', a graph input or weight"),
    (["Reformatted Input Tensor 0 to add"], "records named after engine tensors cannot be kept"),
])
def test_unknown_keep_keys_are_named(keys, match):
    with pytest.raises(ParityError, match=match):
        C.keep_to_layer_precisions(_toy(), keys, None, "toy.onnx")


def test_run_config_applies_keep_and_outputs_only():
    model = _toy()
    base = C.run_engine_config("fp16", {})
    assert base.capture == "debug" and not base.layer_precisions
    assert C.run_engine_config("fp16", {"outputs_only": True}).capture == "outputs"
    assert C.run_engine_config("fp16", {"outputs_only": "false"}).capture == "debug"

    opts = {"keep_high_precision": ["flat"], "layer_precisions": "add:fp16"}
    kept = C.run_engine_config("fp16", opts, model)
    assert kept.layer_precisions == (LayerPrecision("add", "fp16"), LayerPrecision("reshape", "fp32"))
    assert "OBEY_PRECISION_CONSTRAINTS" in kept.builder_flags and "FP16" in kept.builder_flags
    assert kept.builder_flags.count("OBEY_PRECISION_CONSTRAINTS") == 1
    assert kept.precision_constraints == "obey"
    # without the model, the keep set is validated for shape only: nothing applied yet
    assert C.run_engine_config("fp16", opts).layer_precisions == (LayerPrecision("add", "fp16"),)
    # a comma string (as --option gives it) works the same
    assert C.run_engine_config("int8", {"keep_high_precision": "flat,y"}, model).layer_precisions == (
        LayerPrecision("reshape", "fp32"), LayerPrecision("add", "fp32"))
    prefer = C.run_engine_config("fp16", {"keep_high_precision": ["y"], "trt_precision_constraints": "prefer"},
                                 model)
    assert prefer.precision_constraints == "prefer" and "PREFER_PRECISION_CONSTRAINTS" in prefer.builder_flags
    assert "OBEY_PRECISION_CONSTRAINTS" not in prefer.builder_flags

    # the keep set is part of the engine cache key
    keys = {cache_key("m", c, "10.0") for c in (base, kept, C.run_engine_config("fp16", {
        "keep_high_precision": ["y"]}, model), C.run_engine_config("fp16", {"outputs_only": True}))}
    assert len(keys) == 4


@pytest.mark.parametrize("opts, match", [
    ({"keep_high_precision": ["y"], "trt_precision_constraints": "none"}, "no effect with trt_precision_constraints"),
    ({"keep_high_precision": ["y"], "trt_strongly_typed": True}, "trt-fp16 cannot be strongly typed"),
    ({"outputs_only": "maybe"}, "outputs_only='maybe' is not a yes/no value"),
    ({"keep_high_precision": ["nope"]}, "names 'nope'"),
])
def test_bad_fix_options_are_one_line_errors(opts, match):
    with pytest.raises(ParityError, match=match) as e:
        C.run_engine_config("fp16", opts, _toy())
    assert "\n" not in str(e.value)


def test_keep_with_strongly_typed_fp32_is_refused():
    with pytest.raises(ParityError, match="keep_high_precision cannot be used with trt_strongly_typed"):
        C.run_engine_config("fp32", {"keep_high_precision": ["y"], "trt_strongly_typed": True}, _toy())


# --------------------------------------------------------------------------- the source

def test_fp32_has_no_local_runs(tmp_path):
    from parity_builtin_tensorrt.source import TrtSource

    src = TrtSource("fp32")
    assert list(src.local_errors(RunConfig(model=str(tmp_path / "m.onnx"), workdir=tmp_path), {})) == []
    assert src.last_local_skipped == []


@pytest.mark.skipif(HAS_TRT, reason="checks the message shown where TensorRT is missing")
def test_local_errors_say_what_to_install_without_tensorrt(tmp_path):
    from parity_builtin_tensorrt.source import TrtSource

    with pytest.raises(ParityError, match="import tensorrt failed"):
        list(TrtSource("fp16").local_errors(RunConfig(model=str(tmp_path / "m.onnx"), workdir=tmp_path),
                                            {"x": np.zeros(1, np.float32)}))


@needs_trt
def test_local_errors_on_a_gpu_join_the_run_records(tmp_path, exported):
    """Real TensorRT only: keys are run() record names, refs are the fp32 values, targets are close."""
    from parity_builtin_tensorrt.source import TrtSource

    kind, model, feed, vals = exported
    p = tmp_path / f"{kind}.onnx"
    onnx.save(model, str(p))
    cfg = RunConfig(model=str(p), workdir=tmp_path, device="cuda")
    src = TrtSource("fp16")
    run_keys = {r.name for r in src.run(cfg, feed)}
    local = list(src.local_errors(cfg, feed))
    assert local and {lr.key for lr in local} & run_keys
    for lr in local:
        assert np.array_equal(lr.ref, vals[lr.key]) or np.allclose(lr.ref, vals[lr.key], rtol=1e-5, atol=1e-6)
        assert lr.target.shape == lr.ref.shape
        assert np.allclose(lr.target, lr.ref, rtol=2e-2, atol=2e-2), lr.key
    outs = list(TrtSource("fp16").run(RunConfig(model=str(p), workdir=tmp_path, device="cuda",
                                                options={"outputs_only": True}), feed))
    assert {r.name for r in outs} == {o.name for o in model.graph.output}
    kept = list(TrtSource("fp16").run(RunConfig(model=str(p), workdir=tmp_path, device="cuda", options={
        "outputs_only": True, "keep_high_precision": [local[0].key]}), feed))
    assert all(r.meta["engine_cache"] == "miss" for r in kept)


def test_local_cases_feed_each_node_the_reference_values(tmp_path, resnet_exported):
    """The whole pure path of local_errors (reference run, selection, extraction), run with ONNX Runtime."""
    from parity.lib.onnx.graph import tensor_sites

    _kind, model, feed, vals = resnet_exported
    cfg = RunConfig(model="unused.onnx", workdir=tmp_path, options={"ort_threads": 1})
    m = onnx.ModelProto()
    m.CopyFrom(model)
    cases = list(L.local_cases(m, cfg, feed, C.run_engine_config("fp16", cfg.options)))
    floats = [s.name for s in tensor_sites(model) if str(vals[s.name].dtype) == "float32"]
    assert [k for c in cases for k in c.keys] == floats
    for c in cases:
        assert set(c.feed) == {vi.name for vi in c.model.graph.input} and c.keys
        got = _session(c.model).run(c.keys, c.feed)
        for k, g in zip(c.keys, got):
            assert np.array_equal(c.ref[k], vals[k]) and np.array_equal(g, c.ref[k])
    # trt_mark narrows the local runs as it narrows the capture
    conv = next(c for c in cases if c.op_type == "Conv")
    sel = C.run_engine_config("fp16", {"trt_mark": f"^{conv.layer}$"})
    m2 = onnx.ModelProto()
    m2.CopyFrom(model)
    assert [c.layer for c in L.local_cases(m2, cfg, feed, sel)] == [conv.layer]


def test_reference_run_refuses_unknown_providers(tmp_path):
    from parity.lib.onnx.reference import reference_values

    opts = {"ort_providers": "NopeExecutionProvider"}
    with pytest.raises(ParityError, match=r"ort_providers asks for \['NopeExecutionProvider'\]"):
        reference_values(_toy(), ["r"], {"x": np.zeros((1, 2, 2), np.float32)}, opts, tmp_path)
    got = reference_values(_toy(), ["r", "flat"], {"x": -np.ones((1, 2, 2), np.float32)}, {}, tmp_path)
    assert got["r"].tolist() == [[[0, 0], [0, 0]]] and got["flat"].shape == (1, 4)

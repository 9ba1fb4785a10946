"""The TensorRT plugin: engine config, tensor selection, fused-name mapping, doctor, CUDA helpers.

TensorRT cannot be installed on the machines these tests were written on, so everything
that needs it is skipped with the reason; everything else runs on real ONNX graphs
exported here from a small CNN and a small transformer (dynamo and TorchScript exporters).
Layer-information documents below are built in TensorRT's documented JSON layout from those
graphs' real node names: they are fixtures for the mapping code, not TensorRT results.
"""
from __future__ import annotations

import ctypes
import json
import warnings

import numpy as np
import pytest

from support import HAS_CUDA, HAS_TRT, needs_cuda, needs_trt

from parity import Activation, ParityError
from parity.core import registry as plugins

import torch
import onnx

from parity_builtin_tensorrt import config as C  # noqa: E402
from parity_builtin_tensorrt import marking as M  # noqa: E402
from parity_builtin_tensorrt import names as N  # noqa: E402
from parity_builtin_tensorrt.layer_info import engine_info_from_json, parse_metadata, read_layer_info  # noqa: E402



# --------------------------------------------------------------------------- models

class CNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.relu = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.act = torch.nn.SiLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.act(self.conv2(y)) + y
        return self.fc(torch.flatten(self.pool(y), 1))


class Block(torch.nn.Module):
    def __init__(self, d: int = 16, h: int = 2) -> None:
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(d)
        self.attn = torch.nn.MultiheadAttention(d, h, batch_first=True)
        self.ln2 = torch.nn.LayerNorm(d)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 32), torch.nn.GELU(), torch.nn.Linear(32, d))

    def forward(self, x):
        a = self.ln1(x)
        x = x + self.attn(a, a, a, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Linear(8, 16)
        self.layers = torch.nn.ModuleList([Block(), Block()])
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        x = self.emb(x)
        for b in self.layers:
            x = b(x)
        return self.head(x)


def _export(module: torch.nn.Module, x: torch.Tensor, dynamo: bool, tmp_path_factory) -> "onnx.ModelProto":
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            return torch.onnx.export(module, (x,), None, dynamo=True, verbose=False, report=False).model_proto
        p = tmp_path_factory.mktemp("onnx") / f"{type(module).__name__}.onnx"
        torch.onnx.export(module, (x,), str(p), dynamo=False, opset_version=17, input_names=["x"])
        return onnx.load(str(p))


@pytest.fixture(scope="module", params=["dynamo", "torchscript"])
def cnn(request, tmp_path_factory):
    torch.manual_seed(0)
    return _export(CNN(), torch.randn(1, 3, 8, 8), request.param == "dynamo", tmp_path_factory)


@pytest.fixture(scope="module", params=["dynamo", "torchscript"])
def tiny(request, tmp_path_factory):
    torch.manual_seed(0)
    return _export(Tiny(), torch.randn(1, 5, 8), request.param == "dynamo", tmp_path_factory)


# --------------------------------------------------------------------------- config

def test_targets_set_the_builder_flags_tensorrt_needs():
    fp32 = C.config_for_target("trt-fp32")
    assert fp32.builder_flags == () and fp32.cleared_flags == ("TF32",)  # TF32 is on by default in TensorRT
    assert C.config_for_target("trt-tf32").builder_flags == ("TF32",)
    assert C.config_for_target("trt-fp16").builder_flags == ("FP16",)
    assert C.config_for_target("trt-bf16").builder_flags == ("BF16",)
    assert C.config_for_target("trt-int8").builder_flags == ("INT8",)
    assert C.config_for_target("trt-int8", {"trt_int8_fallback": "fp16"}).builder_flags == ("INT8", "FP16")
    with pytest.raises(ParityError, match="trt-fp64"):
        C.config_for_target("trt-fp64")


def test_layer_precisions_use_the_trtexec_spelling():
    lp = C.parse_layer_precisions("/conv1/Conv:fp32, /layer1/*:fp16,'a:b':bf16,node_x:int8")
    assert [(x.pattern, x.precision) for x in lp] == [
        ("/conv1/Conv", "fp32"), ("/layer1/*", "fp16"), ("a:b", "bf16"), ("node_x", "int8")]
    # later specs override earlier ones; an exact name beats any wildcard
    lp2 = C.parse_layer_precisions("*:fp16,/a/*:fp32,/a/Conv:bf16")
    assert C.resolve_layer_precision(lp2, "/a/Conv") == "bf16"
    assert C.resolve_layer_precision(lp2, "/a/Relu") == "fp32"
    assert C.resolve_layer_precision(lp2, "/b/Relu") == "fp16"
    assert C.resolve_layer_precision(C.parse_layer_precisions("x:fp16"), "y") is None
    assert C.engine_config("fp16", {"layer_precisions": "/conv1/Conv:fp32"}).layer_precisions == \
        (C.LayerPrecision("/conv1/Conv", "fp32"),)  # the CLI's --layer-precisions key
    cfg = C.engine_config("fp16", {"trt_layer_precisions": "/conv1/Conv:fp32"})
    assert cfg.precision_constraints == "obey" and "OBEY_PRECISION_CONSTRAINTS" in cfg.builder_flags
    prefer = C.engine_config("fp16", {"trt_layer_precisions": "x:fp32", "trt_precision_constraints": "prefer"})
    assert "PREFER_PRECISION_CONSTRAINTS" in prefer.builder_flags


@pytest.mark.parametrize("spec, match", [
    ("conv1", "has no precision"),
    ("conv1:fp64", "fp64"),
    ("a*b*:fp16", "more than one"),
    (":fp16", "empty layer name"),
    ("'a:fp16", "unbalanced"),
])
def test_bad_layer_precisions_are_one_line_errors(spec, match):
    with pytest.raises(ParityError, match=match):
        C.parse_layer_precisions(spec)


def test_options_are_validated_with_actionable_messages():
    with pytest.raises(ParityError, match="trt_capture"):
        C.engine_config("fp16", {"trt_capture": "everything"})
    with pytest.raises(ParityError, match="regular expression"):
        C.engine_config("fp16", {"trt_mark": "conv("})
    with pytest.raises(ParityError, match="strongly typed"):
        C.engine_config("fp16", {"trt_strongly_typed": True})
    with pytest.raises(ParityError, match="strongly_typed"):
        C.engine_config("fp32", {"trt_strongly_typed": "yes", "trt_layer_precisions": "a:fp16"})
    with pytest.raises(ParityError, match="no effect"):
        C.engine_config("fp16", {"trt_layer_precisions": "a:fp32", "trt_precision_constraints": "none"})
    strong = C.engine_config("fp32", {"trt_strongly_typed": "true"})
    assert strong.strongly_typed and strong.builder_flags == () and strong.cleared_flags == ()


@pytest.mark.parametrize("value, expected", [
    (4096, 4096 << 20), ("4096", 4096 << 20), ("2G", 2 << 30), ("512MiB", 512 << 20), ("1.5GiB", 3 << 29),
    ("64k", 64 << 10)])
def test_workspace_sizes(value, expected):
    assert C.parse_size(value) == expected
    assert C.engine_config("fp32", {"trt_workspace": value}).workspace_bytes == expected


@pytest.mark.parametrize("value", ["lots", "-1G", 0, True])
def test_bad_workspace_sizes(value):
    with pytest.raises(ParityError, match="trt_workspace"):
        C.parse_size(value)


def test_cache_key_changes_with_model_config_and_version(tmp_path, cnn):
    p = tmp_path / "m.onnx"
    onnx.save(cnn, str(p))
    d = C.onnx_digest(p)
    assert d == C.onnx_digest(p.read_bytes())
    fp16 = C.config_for_target("trt-fp16")
    base = C.cache_key(d, fp16, "10.16.0", {"inputs": {"x": [1, 3, 8, 8]}})
    assert base == C.cache_key(d, C.config_for_target("trt-fp16"), "10.16.0", {"inputs": {"x": [1, 3, 8, 8]}})
    others = {
        C.cache_key(d, C.config_for_target("trt-fp32"), "10.16.0", {"inputs": {"x": [1, 3, 8, 8]}}),
        C.cache_key(d, fp16, "10.15.0", {"inputs": {"x": [1, 3, 8, 8]}}),
        C.cache_key(d, fp16, "10.16.0", {"inputs": {"x": [2, 3, 8, 8]}}),
        C.cache_key(d, C.engine_config("fp16", {"trt_capture": "mark"}), "10.16.0", {"inputs": {"x": [1, 3, 8, 8]}}),
        C.cache_key(d, C.engine_config("fp16", {"trt_layer_precisions": "a:fp32"}), "10.16.0",
                    {"inputs": {"x": [1, 3, 8, 8]}}),
    }
    assert base not in others and len(others) == 5
    # options that do not change the engine do not change the key
    assert base == C.cache_key(d, C.engine_config("fp16", {"trt_queue_size": 9, "trt_engine_cache": False}),
                               "10.16.0", {"inputs": {"x": [1, 3, 8, 8]}})
    cnn2 = onnx.ModelProto()
    cnn2.CopyFrom(cnn)
    cnn2.graph.initializer[0].raw_data = b"\0" * len(cnn2.graph.initializer[0].raw_data)
    onnx.save(cnn2, str(tmp_path / "m2.onnx"))
    assert C.onnx_digest(tmp_path / "m2.onnx") != d


def test_cache_key_covers_external_weights(tmp_path, cnn):
    p = tmp_path / "ext.onnx"
    m = onnx.ModelProto()
    m.CopyFrom(cnn)  # saving with external data rewrites the proto it is given
    onnx.save(m, str(p), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
              size_threshold=0)
    d1 = C.onnx_digest(p)
    data = bytearray((tmp_path / "ext.data").read_bytes())
    data[0] ^= 0xFF
    (tmp_path / "ext.data").write_bytes(bytes(data))
    assert C.onnx_digest(p) != d1
    (tmp_path / "ext.data").unlink()
    with pytest.raises(ParityError, match="ext.data"):
        C.onnx_digest(p)


def test_selects_by_regex_or_names():
    cfg = C.engine_config("fp16", {"trt_mark": "conv", "trt_mark_names": "relu_out"})
    assert cfg.selects("/conv1/Conv_output_0")
    assert cfg.selects("x", "relu_out")
    assert not cfg.selects("/fc/Gemm_output_0", None)
    assert C.engine_config("fp16").selects("anything")


# --------------------------------------------------------------------------- marking

def test_onnx_description_skips_what_tensorrt_cannot_or_need_not_capture(tiny):
    layers = M.describe_onnx(tiny)
    sel = M.select_tensors(layers)
    by_name = {t.name: (lay, t) for lay in layers for t in lay.outputs}
    graph_out = tiny.graph.output[0].name
    assert sel.tensors[-1] == graph_out
    # every captured tensor is a float activation computed from the input
    for name in sel.tensors:
        lay, t = by_name[name]
        assert t.dtype in M.FLOAT_DTYPES and not t.is_constant and not t.is_shape_tensor, (name, t)
    # and every left-out tensor has a stated reason that is true of it
    for name, why in sel.skipped.items():
        lay, t = by_name[name]
        if why == "constant":
            assert t.is_constant
        elif why == "shape tensor":
            assert t.is_shape_tensor
        elif why.endswith("tensor"):
            assert t.dtype not in M.FLOAT_DTYPES
    # the layer norms, matmuls and the attention output are captured
    ops = {by_name[n][0].type for n in sel.tensors}
    assert {"LayerNormalization", "MatMul", "Softmax"} <= ops
    ts_shape_ops = [lay for lay in layers if lay.type in ("Shape", "Gather", "Concat", "Unsqueeze")]
    for lay in ts_shape_ops:  # shape arithmetic (TorchScript export) is never captured
        for t in lay.outputs:
            if t.dtype != "float32":
                assert t.name not in sel.tensors


def test_constants_and_network_inputs_are_not_captured(cnn):
    layers = M.describe_onnx(cnn)
    sel = M.select_tensors(layers)
    x = cnn.graph.input[0].name
    assert sel.skipped[x] == "network input"
    const_nodes = [t.name for lay in layers if lay.type == "Constant" for t in lay.outputs]
    for c in const_nodes:
        assert sel.skipped[c] == "constant"
    computed = [o for n in cnn.graph.node if n.op_type in ("Conv", "Relu", "Add", "Mul", "Gemm") for o in n.output]
    assert set(computed) <= set(sel.tensors)


def test_mark_regex_and_names_filter_but_keep_outputs(cnn):
    layers = M.describe_onnx(cnn)
    conv_nodes = [n for n in cnn.graph.node if n.op_type == "Conv"]
    sel = M.select_tensors(layers, regex="Conv|conv")
    out = cnn.graph.output[0].name
    assert out in sel.tensors  # outputs are always compared
    conv_outs = [n.output[0] for n in conv_nodes]
    assert set(conv_outs) <= set(sel.tensors)
    assert all(sel.layer_of[t] for t in sel.tensors)
    relu = next(n for n in cnn.graph.node if n.op_type == "Relu")
    sel2 = M.select_tensors(layers, names=[relu.name])
    assert sel2.tensors == [relu.output[0], out]
    assert sel2.skipped[conv_outs[-1]].startswith("not selected")


def _if_model() -> "onnx.ModelProto":
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    then_out = helper.make_tensor_value_info("then_y", TensorProto.FLOAT, [2])
    else_out = helper.make_tensor_value_info("else_y", TensorProto.FLOAT, [2])
    then_g = helper.make_graph([helper.make_node("Relu", ["h"], ["then_y"], name="then_relu")], "then", [], [then_out])
    else_g = helper.make_graph([helper.make_node("Neg", ["h"], ["else_y"], name="else_neg")], "else", [], [else_out])
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["h"], name="sig"),
        helper.make_node("ReduceSum", ["h"], ["s"], name="sum", keepdims=0),
        helper.make_node("Constant", [], ["zero"], name="zero",
                         value=helper.make_tensor("z", TensorProto.FLOAT, [], [1.0])),
        helper.make_node("Greater", ["s", "zero"], ["c"], name="gt"),
        helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_g, else_branch=else_g),
    ]
    g = helper.make_graph(nodes, "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_tensors_inside_conditionals_are_skipped():
    m = _if_model()
    onnx.checker.check_model(m)
    import onnxruntime as ort

    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.array([1.0, 2.0], np.float32)})[0]
    assert np.allclose(got, 1 / (1 + np.exp(-np.array([1.0, 2.0]))))  # a real, runnable graph
    sel = M.select_tensors(M.describe_onnx(m))
    assert sel.skipped["then_y"] == "inside a loop or conditional"
    assert sel.skipped["else_y"] == "inside a loop or conditional"
    assert sel.skipped["c"] == "bool tensor"
    assert sel.skipped["zero"] == "constant"
    assert sel.tensors == ["h", "s", "y"]


def test_tensorrt_loop_bodies_are_found_from_boundary_layers():
    T = M.TensorDesc
    layers = [
        M.LayerDesc("(inputs)", "Input", (), (T("x", "float32", is_network_input=True),)),
        M.LayerDesc("trip", "TRIP_LIMIT", ("n",), ()),
        M.LayerDesc("rec", "RECURRENCE", ("x", "body_out"), (T("state", "float32"),)),
        M.LayerDesc("body_mm", "MATRIX_MULTIPLY", ("state",), (T("mm", "float32"),)),
        M.LayerDesc("body_act", "ACTIVATION", ("mm",), (T("body_out", "float32"),)),
        M.LayerDesc("out", "LOOP_OUTPUT", ("body_out",), (T("loop_y", "float32"),)),
        M.LayerDesc("after", "ACTIVATION", ("loop_y",), (T("y", "float32", is_network_output=True),)),
    ]
    flagged = {lay.name: lay.in_control_flow for lay in M.mark_control_flow(layers)}
    assert flagged == {"(inputs)": False, "trip": True, "rec": True, "body_mm": True, "body_act": True,
                       "out": False, "after": False}
    sel = M.select_tensors(M.mark_control_flow(layers))
    assert sel.tensors == ["loop_y", "y"]
    assert sel.skipped["mm"] == "inside a loop or conditional"


def test_layer_precision_plan_follows_trtexec_rules(tiny):
    layers = M.describe_onnx(tiny)
    lp = C.parse_layer_precisions("*:fp16")
    applied, skipped = M.plan_layer_precisions(layers, lp)
    shape_layers = [lay.name for lay in layers if lay.type == "Shape"]
    for n in shape_layers:
        assert n not in applied and skipped[n] == "produces no floating-point output"
    assert "(inputs)" not in applied
    ln = next(lay.name for lay in layers if lay.type == "LayerNormalization")
    assert applied[ln] == "fp16"
    exact = C.parse_layer_precisions(f"*:fp16,{ln}:fp32")
    assert M.plan_layer_precisions(layers, exact)[0][ln] == "fp32"
    assert M.unknown_override_names(layers, C.parse_layer_precisions(f"no_such_layer:fp32,{ln[:-2]}*:fp32")) \
        == ["no_such_layer"]


# --------------------------------------------------------------------------- layer names

@pytest.mark.parametrize("name, atoms, ranges, kind", [
    # names as they appear in trtexec --dumpLayerInfo output and TensorRT issues
    ("Conv_0 + Relu_1", ["Conv_0", "Relu_1"], [], "layer"),
    ("features.0.0.weight + QuantizeLinear_8 + Conv_12 + PWN(Clip_16)",
     ["features.0.0.weight", "QuantizeLinear_8", "Conv_12", "Clip_16"], [], "layer"),
    ("PWN(PWN(PWN(/model.9/cv2/act/Sigmoid), PWN(/model.9/cv2/act/Mul)), PWN(/model.9/Add))",
     ["/model.9/cv2/act/Sigmoid", "/model.9/cv2/act/Mul", "/model.9/Add"], [], "layer"),
    ("/model.13/m.0/cv2/conv/Conv || /model.13/m.0/cv1/conv/Conv",
     ["/model.13/m.0/cv2/conv/Conv", "/model.13/m.0/cv1/conv/Conv"], [], "layer"),
    ("{ForeignNode[transformer.h.0.attn.bias.../Cast]}", [], [("transformer.h.0.attn.bias", "/Cast")], "foreign"),
    ("{ForeignNode[(Unnamed Layer* 0) [ElementWise]]}", ["(Unnamed Layer* 0) [ElementWise]"], [], "foreign"),
    ("fc.weight + QuantizeLinear_309 + Gemm_311 + fc.bias + (Unnamed Layer* 360) [Shuffle] + "
     "unsqueeze_node_after_fc.bias + (Unnamed Layer* 360) [Shuffle]_(Unnamed Layer* 360) [Shuffle]_output + "
     "(Unnamed Layer* 361) [ElementWise]",
     ["fc.weight", "QuantizeLinear_309", "Gemm_311", "fc.bias", "(Unnamed Layer* 360) [Shuffle]",
      "unsqueeze_node_after_fc.bias", "(Unnamed Layer* 360) [Shuffle]_(Unnamed Layer* 360) [Shuffle]_output",
      "(Unnamed Layer* 361) [ElementWise]"], [], "layer"),
    ("/model.8/Split_output_0 copy", ["/model.8/Split_output_0"], [], "copy"),
])
def test_layer_name_grammar(name, atoms, ranges, kind):
    p = N.parse_layer_name(name)
    assert p.atoms == atoms and p.ranges == ranges and p.kind == kind
    assert p.parallel == (" || " in name)


def test_reformat_names_point_at_the_layer_they_serve():
    p = N.parse_layer_name("Reformatting CopyNode for Output Tensor 0 to "
                           "{ForeignNode[/model.10/m/m.0/attn/Split_16.../model.10/m/m.0/attn/Add]}")
    assert (p.kind, p.io, p.index) == ("reformat", "output", 0)
    assert p.target.ranges == [("/model.10/m/m.0/attn/Split_16", "/model.10/m/m.0/attn/Add")]
    q = N.parse_layer_name("Reformatting CopyNode for Input Tensor 1 to PWN(PWN(/a/Sigmoid), PWN(/a/Mul))")
    assert (q.io, q.index, q.target.atoms) == ("input", 1, ["/a/Sigmoid", "/a/Mul"])


def test_metadata_lists_onnx_nodes():
    assert parse_metadata("[ONNX Layer: /conv1/Conv]\x1f[ONNX Layer: /relu/Relu]") == ["/conv1/Conv", "/relu/Relu"]
    assert parse_metadata("[ONNX Layer: a]\x1e[ONNX Layer: b]\x1f[ONNX Layer: a]") == ["a", "b"]
    assert parse_metadata("[ONNX Layer: q][ONNX Layer: k][ONNX Layer: v]") == ["q", "k", "v"]
    assert parse_metadata("[ONNX Layer: x[0]]") == ["x[0]"]
    assert parse_metadata(None) == [] and parse_metadata("") == []


# -- engines made of fused layers, in TensorRT's layer-information layout -----------------

def _layer(name, typ, ins, outs, metadata=None):
    d = {"Name": name, "LayerType": typ,
         "Inputs": [{"Name": i, "Location": "Device", "Dimensions": [1], "Format/Datatype": "Row major linear FP32"}
                    for i in ins],
         "Outputs": [{"Name": o, "Location": "Device", "Dimensions": [1], "Format/Datatype": "Row major linear FP16"}
                     for o in outs],
         "TacticValue": "0x0000000000000000"}
    if metadata:
        d["Metadata"] = "\x1f".join(f"[ONNX Layer: {n}]" for n in metadata)
    return d


_POINTWISE = {"Relu", "Sigmoid", "Mul", "Add", "Gelu", "Div", "Sub", "Erf", "Tanh", "Clip"}
_FOLDED = {"Constant", "Shape", "Gather", "Unsqueeze", "Concat", "Identity", "Cast", "Mod", "Slice", "Squeeze",
           "Equal", "Where", "ConstantOfShape", "Expand", "Range", "Reshape", "Transpose", "Flatten"}


def _fuse(model, *, metadata: bool = False, internal_outputs: bool = False, ranges=()):
    """Group a real graph's nodes the way TensorRT names fusions; return (layer info doc, groups).

    Conv/MatMul/Gemm absorb a following pointwise chain ("A + B"), pointwise chains become
    nested PWN(...), each ``ranges`` entry (start, end) becomes one {ForeignNode[A...B]}.
    Data-movement and shape nodes are left out, as if TensorRT had folded or fused them away.
    ``metadata`` names layers like Myelin kernels and lists their nodes in Metadata instead.
    """
    nodes = list(model.graph.node)
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            consumers.setdefault(t, []).append(i)
    in_range = {}
    for a, b in ranges:
        for i in range(a, b + 1):
            in_range[i] = (a, b)
    groups: list[tuple[str, list[int]]] = []
    used: set[int] = set()
    for i, n in enumerate(nodes):
        if i in used:
            continue
        if i in in_range:
            a, b = in_range[i]
            groups.append(("foreign", list(range(a, b + 1))))
            used.update(range(a, b + 1))
            continue
        if n.op_type in _FOLDED:
            continue
        chain = [i]
        while True:
            last = nodes[chain[-1]]
            users = consumers.get(last.output[0], [])
            if len(users) != 1 or users[0] in used or users[0] in in_range:
                break
            nxt = nodes[users[0]]
            if nxt.op_type not in _POINTWISE or users[0] != chain[-1] + 1:
                break
            chain.append(users[0])
        used.update(chain)
        groups.append(("fused" if len(chain) > 1 else "single", chain))
    layers = []
    for k, (kind, idx) in enumerate(groups):
        names = [nodes[i].name for i in idx]
        if kind == "foreign":
            name = f"{{ForeignNode[{names[0]}...{names[-1]}]}}"
        elif nodes[idx[0]].op_type in _POINTWISE and len(idx) > 1:
            name = "PWN(" + ", ".join(f"PWN({x})" for x in names) + ")"
        else:
            name = " + ".join(names)
        if metadata:
            name = f"__myl_Kernel{k}_myl0_{k}"
        last = nodes[idx[-1]]
        outs = [f"{name} out_region" if internal_outputs else last.output[0]]
        ins = [x for x in nodes[idx[0]].input if x][:1]
        layers.append(_layer(name, "gemm" if metadata else "CaskConvolution", ins, outs,
                             names if metadata else None))
    return {"Layers": layers, "Bindings": [i.name for i in model.graph.input] + [o.name for o in model.graph.output]}, groups


def _check_groups(model, mp, groups):
    nodes = list(model.graph.node)
    claimed_exact = {i for kind, idx in groups if kind != "foreign" for i in idx}
    for m, (kind, idx) in zip(mp.layers, groups):
        want = [nodes[i].name for i in idx if kind != "foreign" or i not in claimed_exact]
        assert m.onnx_nodes == want, m.layer
        assert m.fused == (len(want) > 1)
        assert m.unmapped == []
    covered = {n for m in mp.layers for n in m.onnx_nodes}
    assert covered == {nodes[i].name for _, idx in groups for i in idx}


def test_fused_cnn_layers_map_back_to_every_onnx_node(cnn):
    doc, groups = _fuse(cnn)
    assert any(kind == "fused" for kind, _ in groups)  # the fixture really fuses something
    mp = N.build_map(cnn, engine_info_from_json(doc))
    _check_groups(cnn, mp, groups)
    nodes = list(cnn.graph.node)
    for m, (_, idx) in zip(mp.layers, groups):
        assert m.output_onnx == [nodes[idx[-1]].output[0]]  # the output of the last covered node
    assert mp.unmappable == []


def test_internal_output_names_map_through_the_covered_nodes(cnn):
    doc, groups = _fuse(cnn, internal_outputs=True)
    mp = N.build_map(cnn, engine_info_from_json(doc))
    nodes = list(cnn.graph.node)
    for m, (_, idx) in zip(mp.layers, groups):
        assert m.outputs[0].endswith("out_region")
        assert m.output_onnx == [nodes[idx[-1]].output[0]]
        assert mp.onnx_tensor_for(m.outputs[0]) == nodes[idx[-1]].output[0]


def _attention_ranges(model):
    from parity.lib.onnx.provenance import scope_of_nodes

    scopes = scope_of_nodes(model)
    out = []
    for blk in ("layers.0.attn", "layers.1.attn"):
        idx = [i for i, n in enumerate(model.graph.node) if scopes[n.name].startswith(blk)]
        assert idx == list(range(idx[0], idx[-1] + 1))
        out.append((idx[0], idx[-1]))
    return out


def _attn_output(model, blk):
    from parity.lib.onnx.provenance import module_outputs

    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    outs = [t for t, paths in module_outputs(model).items() if blk in paths and t not in consts]
    assert len(outs) == 1
    return outs[0]


def test_foreign_node_ranges_expand_to_the_attention_block(tiny):
    ranges = _attention_ranges(tiny)
    doc, groups = _fuse(tiny, ranges=ranges, internal_outputs=True)
    mp = N.build_map(tiny, engine_info_from_json(doc))
    _check_groups(tiny, mp, groups)
    foreign = [m for m in mp.layers if m.kind == "foreign"]
    assert len(foreign) == 2
    for m, blk in zip(foreign, ("layers.0.attn", "layers.1.attn")):
        # the region's one output is what provenance says the attention module returned
        assert m.output_onnx == [_attn_output(tiny, blk)]
    assert mp.unmappable == []


def test_metadata_wins_over_opaque_myelin_kernel_names(tiny):
    ranges = _attention_ranges(tiny)
    doc, groups = _fuse(tiny, ranges=ranges, metadata=True)
    mp = N.build_map(tiny, engine_info_from_json(doc))
    assert all(m.source == "metadata" for m in mp.layers)
    nodes = list(tiny.graph.node)
    for m, (_, idx) in zip(mp.layers, groups):
        assert m.onnx_nodes == [nodes[i].name for i in idx]
        assert m.output_onnx == [nodes[idx[-1]].output[0]]
    # the same kernel names without Metadata cannot be mapped, and are reported, not dropped
    for layer in doc["Layers"]:
        del layer["Metadata"]
    bare = N.build_map(tiny, engine_info_from_json(doc))
    assert len(bare.unmappable) == len(doc["Layers"])
    assert bare.report()["unmappable"][0].startswith("__myl_Kernel0")


def test_myelin_kernel_names_with_mangled_dots_resolve(tiny):
    matmuls = [n for n in tiny.graph.node if n.op_type == "MatMul" and "." in n.name]
    if not matmuls:
        pytest.skip("this exporter names nodes without dots")
    n = matmuls[0]
    kernel = n.name.replace(".", "_") + "_myl3_7"
    a = N.resolve_atom(kernel, N.OnnxGraph.from_model(tiny))
    assert (a.kind, a.approximate) == ("node", True)
    assert N.OnnxGraph.from_model(tiny).nodes[a.node] == n.name


def test_exact_layer_claims_win_over_a_spanning_range(cnn):
    nodes = list(cnn.graph.node)
    first, last = nodes[0].name, nodes[-1].name
    doc = {"Layers": [_layer(f"{{ForeignNode[{first}...{last}]}}", "Myelin", ["x"], ["r"]),
                      _layer(nodes[2].name, "CaskConvolution", [], [nodes[2].output[0]])]}
    mp = N.build_map(cnn, engine_info_from_json(doc))
    assert nodes[2].name not in mp.layers[0].onnx_nodes
    assert mp.layers[1].onnx_nodes == [nodes[2].name]
    assert len(mp.layers[0].onnx_nodes) == len(nodes) - 1


def test_unknown_names_are_reported_and_the_rest_still_maps(cnn):
    nodes = list(cnn.graph.node)
    doc = {"Layers": [_layer(f"no_such_node + {nodes[1].name}", "CaskConvolution", [], [nodes[1].output[0]]),
                      _layer("{ForeignNode[ghost_a...ghost_b]}", "Myelin", [], ["t9"])]}
    mp = N.build_map(cnn, engine_info_from_json(doc))
    assert mp.layers[0].onnx_nodes == [nodes[1].name] and mp.layers[0].unmapped == ["no_such_node"]
    assert mp.layers[1].onnx_nodes == [] and mp.layers[1].unmapped == ["ghost_a", "ghost_b"]
    assert ("(unknown)", "x") not in mp.unmappable
    assert set(mp.unmappable) == {(mp.layers[0].layer, "no_such_node"), (mp.layers[1].layer, "ghost_a"),
                                  (mp.layers[1].layer, "ghost_b")}
    rep = mp.report()
    assert rep["layers"] == 2 and len(rep["unmappable"]) == 3
    assert set(rep["uncovered_onnx_nodes"]) == {n.name for n in nodes} - {nodes[1].name}


def test_reformats_copies_and_helpers_map_to_the_tensor_they_carry(cnn):
    nodes = list(cnn.graph.node)
    x = cnn.graph.input[0].name
    conv, relu = nodes[0], nodes[1]
    fused = f"{conv.name} + {relu.name}"
    out = cnn.graph.output[0].name
    gemm = nodes[-1]
    doc = {"Layers": [
        _layer(f"Reformatting CopyNode for Input Tensor 0 to {fused}", "Reformat", [x],
               [f"Reformatted Input Tensor 0 to {fused}"]),
        _layer(fused, "CaskConvolution", [f"Reformatted Input Tensor 0 to {fused}"],
               [f"Reformatted Output Tensor 0 to {fused}"]),
        _layer(f"Reformatting CopyNode for Output Tensor 0 to {fused}", "Reformat",
               [f"Reformatted Output Tensor 0 to {fused}"], [relu.output[0]]),
        _layer(f"{relu.output[0]} copy", "Reformat", [relu.output[0]], [f"{relu.output[0]} copy out"]),
        _layer(gemm.name, "CaskGemmConvolution", [], [f"{gemm.name}_out_region"]),
        _layer(f"reshape_after_{gemm.name}", "NoOp", [f"{gemm.name}_out_region"], [out]),
    ]}
    mp = N.build_map(cnn, engine_info_from_json(doc))
    kinds = [m.kind for m in mp.layers]
    assert kinds == ["reformat", "layer", "reformat", "copy", "layer", "helper"]
    assert mp.onnx_tensor_for(f"Reformatted Input Tensor 0 to {fused}") == x
    assert mp.onnx_tensor_for(f"Reformatted Output Tensor 0 to {fused}") == relu.output[0]
    assert mp.onnx_tensor_for(relu.output[0]) == relu.output[0]
    assert mp.onnx_tensor_for(f"{relu.output[0]} copy out") == relu.output[0]
    assert mp.onnx_tensor_for(f"{gemm.name}_out_region") == out
    assert mp.onnx_tensor_for(out) == out
    # the engine tensor that holds each ONNX tensor as ONNX lays it out is the one named like it
    assert mp.representative[relu.output[0]] == relu.output[0]
    assert mp.representative[out] == out
    assert x not in mp.representative  # an input-side copy never stands for the tensor


def test_engine_records_are_named_after_the_onnx_tensor_they_hold(cnn):
    nodes = list(cnn.graph.node)
    x, out = cnn.graph.input[0].name, cnn.graph.output[0].name
    conv, relu, gemm = nodes[0], nodes[1], nodes[-1]
    fused = f"{conv.name} + {relu.name}"
    doc = {"Layers": [
        _layer(f"Reformatting CopyNode for Input Tensor 0 to {fused}", "Reformat", [x],
               [f"Reformatted Input Tensor 0 to {fused}"]),
        _layer(fused, "CaskConvolution", [], [f"{fused} out"]),
        _layer(gemm.name, "CaskGemmConvolution", [], [f"{gemm.name}_out_region"]),
        _layer(f"reshape_after_{gemm.name}", "NoOp", [f"{gemm.name}_out_region"], [out])]}
    mp = N.build_map(cnn, engine_info_from_json(doc))
    engine_tensors = [lay["Outputs"][0]["Name"] for lay in doc["Layers"]]
    recs = [Activation(t, np.full(2, k, np.float32), order=k) for k, t in enumerate(engine_tensors)]
    named = list(N.onnx_named(recs, mp))
    assert [r.name for r in named] == [f"Reformatted Input Tensor 0 to {fused}", relu.output[0],
                                       f"{gemm.name}_out_region", out]
    assert [r.meta["trt_tensor"] for r in named] == engine_tensors
    assert [r.meta["onnx_tensor"] for r in named] == [x, relu.output[0], out, out]
    assert [r.op_type for r in named] == ["Reformat", "CaskConvolution", "CaskGemmConvolution", "NoOp"]
    assert all(np.array_equal(r.array, q.array) for r, q in zip(named, recs))
    # two engine tensors claiming one name never produce duplicate keys
    twice = list(N.onnx_named([Activation(relu.output[0], np.zeros(1), order=0),
                               Activation(relu.output[0], np.zeros(1), order=1)], mp))
    assert len({r.name for r in twice}) == 2


def test_annotate_adds_onnx_and_module_provenance(cnn):
    from parity.lib.onnx.provenance import module_outputs

    doc, groups = _fuse(cnn, internal_outputs=False)
    mp = N.build_map(cnn, engine_info_from_json(doc))
    mods = module_outputs(cnn)
    nodes = list(cnn.graph.node)
    seen_fused = False
    for m, (_, idx) in zip(mp.layers, groups):
        t = m.outputs[0]
        rec = mp.annotate(Activation(t, np.zeros(1, np.float32), meta={"trt_tensor": t}))
        assert rec.meta["onnx_tensor"] == nodes[idx[-1]].output[0]
        assert rec.meta["onnx_nodes"] == rec.meta["covers"] == [nodes[i].name for i in idx]
        assert rec.meta["fused"] == (len(idx) > 1)
        assert rec.meta["trt_layer"] == m.layer and rec.meta["onnx_tensor_exact"] is True
        seen_fused |= rec.meta["fused"]
        if t in mods:
            assert rec.meta["scopes"] == mods[t] and rec.meta["module_path"] == mods[t][0]
    assert seen_fused
    # the final Linear's output carries the module path "fc" under both exporters
    out = cnn.graph.output[0].name
    rec = mp.annotate(Activation(out, np.zeros(1, np.float32), meta={"trt_tensor": out}))
    assert rec.meta["module_path"] == "fc"
    # an engine tensor missing from the layer information but named like an ONNX tensor is that tensor
    conv2 = [n for n in nodes if n.op_type == "Conv"][1]
    partial = N.build_map(cnn, engine_info_from_json({"Layers": doc["Layers"][:1]}))
    lone = partial.annotate(Activation("t", np.zeros(1), meta={"trt_tensor": conv2.output[0]}))
    assert lone.meta["mapping"] == "tensor-name" and lone.meta["onnx_nodes"] == [conv2.name]
    assert lone.meta["onnx_tensor"] == conv2.output[0] and lone.meta["onnx_tensor_exact"]
    assert lone.meta["module_path"] == mods[conv2.output[0]][0] == "conv2"
    # records nothing maps are marked as such, never silently passed through
    lost = mp.annotate(Activation("nowhere", np.zeros(1), meta={}))
    assert lost.meta["mapping"] == "none" and lost.meta["onnx_tensor"] is None and lost.meta["unmapped"]
    # annotate returns a new record and leaves the input alone
    orig = Activation(out, np.zeros(1), meta={"trt_tensor": out})
    mp.annotate(orig)
    assert orig.meta == {"trt_tensor": out}


def test_layer_names_only_engines_map_by_name(cnn):
    doc, groups = _fuse(cnn)
    names_only = {"Layers": [layer["Name"] for layer in doc["Layers"]], "Bindings": doc["Bindings"]}
    info = engine_info_from_json(names_only)
    assert not info.detailed and info.layers[0].outputs == ()
    mp = N.build_map(cnn, info)
    nodes = list(cnn.graph.node)
    for m, (_, idx) in zip(mp.layers, groups):
        assert m.onnx_nodes == [nodes[i].name for i in idx]
        assert m.output_onnx == [nodes[idx[-1]].output[0]]
    rec = mp.annotate(Activation(mp.layers[0].layer, np.zeros(1), meta={}))
    assert rec.meta["onnx_tensor"] == nodes[groups[0][1][-1]].output[0] and rec.meta["onnx_tensor_exact"]


def test_unnamed_nodes_use_the_parsers_node_of_name(cnn):
    m = onnx.ModelProto()
    m.CopyFrom(cnn)
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    relu.name = ""
    g = N.OnnxGraph.from_model(m)
    a = N.resolve_atom(f"node_of_{relu.output[0]}", g)
    assert a.kind == "node" and g.node_outputs[a.node] == [relu.output[0]]


def test_real_world_layer_info_layout_is_read(tmp_path):
    # field layout of an engine graph published with TensorRT's trt-engine-explorer examples
    doc = {"Layers": [
        {"Name": "Reformatting CopyNode for Input Tensor 0 to Conv_0 + Relu_1", "LayerType": "Reformat",
         "Inputs": [{"Name": "input.1", "Location": "Device", "Dimensions": [32, 3, 224, 224],
                     "Format/Datatype": "Row major linear FP32"}],
         "Outputs": [{"Name": "Reformatted Input Tensor 0 to Conv_0 + Relu_1", "Location": "Device",
                      "Dimensions": [32, 3, 224, 224],
                      "Format/Datatype": "Channel major FP16 format where channel % 4 == 0"}],
         "ParameterType": "Reformat", "Origin": "REFORMAT", "TacticValue": "0x0000000000000000"},
        {"Name": "Conv_0 + Relu_1", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "Reformatted Input Tensor 0 to Conv_0 + Relu_1", "Dimensions": [32, 3, 224, 224]}],
         "Outputs": [{"Name": "onnx::MaxPool_125", "Dimensions": [32, 64, 112, 112]}],
         "Metadata": "[ONNX Layer: Conv_0]\x1f[ONNX Layer: Relu_1]", "TacticName": "sm80_xmma_fprop"}],
        "Bindings": ["input.1", "191"]}
    p = tmp_path / "resnet.graph.json"
    p.write_text(json.dumps(doc))
    info = read_layer_info(p)
    assert info.detailed and info.bindings == ["input.1", "191"] and info.source == str(p)
    assert [lay.layer_type for lay in info.layers] == ["Reformat", "CaskConvolution"]
    assert info.layers[1].onnx_nodes == ["Conv_0", "Relu_1"]
    assert info.layers[0].outputs[0].dims == (32, 3, 224, 224)
    assert info.layers[0].outputs[0].format.startswith("Channel major FP16")
    assert read_layer_info(json.dumps(doc)).layers[1].tactic == "sm80_xmma_fprop"
    names_only = read_layer_info('{"Layers": ["Conv__25 + Relu", "MaxPool2d"], "Bindings": ["x:0"]}')
    assert [lay.name for lay in names_only.layers] == ["Conv__25 + Relu", "MaxPool2d"] and not names_only.detailed


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ('{"Layers": 3}', "not a list"),
    ('{"Engine": {}}', "not TensorRT layer information"),
    ('{"Layers": [{"LayerType": "x"}]}', "neither a name"),
])
def test_bad_layer_info_is_a_one_line_error(tmp_path, text, match):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(ParityError, match=match) as e:
        read_layer_info(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


# --------------------------------------------------------------------------- plugin, doctor

def test_plugin_registers_the_five_targets_and_three_formats():
    reg = plugins.registry()
    for name in C.TARGETS:
        src = reg["source"][name]
        assert src.package.startswith("parity") and src.obj.name == name
    for name in ("polygraphy-json", "trtexec-json", "trtexec-debug"):
        assert reg["dump-format"][name].obj.multi


@pytest.mark.skipif(HAS_TRT, reason="checks the message shown where TensorRT is missing")
def test_check_and_run_say_what_to_install_without_tensorrt(tmp_path):
    from parity.contract.source import RunConfig
    from parity_builtin_tensorrt.source import TrtSource

    src = TrtSource("fp16")
    why = src.check()
    assert why and "TensorRT" in why and "pip install tensorrt" in why and "\n" not in why
    with pytest.raises(ParityError, match="import tensorrt failed"):
        list(src.run(RunConfig(model=str(tmp_path / "m.onnx"), workdir=tmp_path), {"x": np.zeros(1)}))


def test_doctor_reports_each_piece_with_a_reason():
    from parity_builtin_tensorrt.doctor import doctor

    rows = doctor()
    by = {r["check"]: r for r in rows}
    assert set(by["tensorrt"]) == {"check", "ok", "detail", "required"}
    assert by["tensorrt"]["ok"] == HAS_TRT or "too old" in by["tensorrt"]["detail"]
    if not HAS_TRT:
        assert "pip install tensorrt" in by["tensorrt"]["detail"]
    assert by["CUDA device (torch)"]["ok"] == HAS_CUDA
    assert by["onnx"]["ok"] is True
    assert all(isinstance(r["detail"], str) and r["detail"] for r in rows)


def test_input_specs_come_from_the_onnx_model(tmp_path, cnn):
    from parity.contract.source import RunConfig
    from parity_builtin_tensorrt.source import TrtSource

    p = tmp_path / "cnn.onnx"
    onnx.save(cnn, str(p))
    specs = TrtSource("fp16").input_specs(RunConfig(model=str(p), workdir=tmp_path))
    assert [(s.name, s.dtype) for s in specs] == [(cnn.graph.input[0].name, "float32")]


# --------------------------------------------------------------------------- CUDA helpers

def test_pointer_of_reads_ints_and_capsules():
    from parity_builtin_tensorrt._cuda import pointer_of

    buf = np.arange(4, dtype=np.float32)
    addr = buf.ctypes.data
    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    cap = new(addr, None, None)
    assert type(cap).__name__ == "PyCapsule"
    assert pointer_of(addr) == addr and pointer_of(cap) == addr


@pytest.mark.parametrize("dtype_name, make", [
    ("FLOAT", lambda: np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)),
    ("HALF", lambda: np.linspace(-3, 3, 12).astype(np.float16).reshape(2, 6)),
    ("INT32", lambda: np.arange(-5, 7, dtype=np.int32).reshape(3, 4)),
])
def test_host_resident_debug_tensors_are_copied(dtype_name, make):
    from parity_builtin_tensorrt._cuda import host_to_host_copy

    a = make()
    want = a.copy()
    got = host_to_host_copy(a.ctypes.data, a.shape, dtype_name)
    assert got.dtype == a.dtype and np.array_equal(got, a)
    a.fill(0)  # the copy must not alias TensorRT's memory
    assert np.array_equal(got, want)


def test_bf16_bits_widen_to_float32():
    from parity_builtin_tensorrt._cuda import host_to_host_copy

    ref = torch.tensor([1.5, -2.25, 3e-3, 65504.0]).to(torch.bfloat16)
    bits = ref.view(torch.int16).numpy().copy()
    got = host_to_host_copy(bits.ctypes.data, (4,), "BF16")
    assert got.dtype == np.float32 and np.array_equal(got, ref.float().numpy())


@needs_cuda
@pytest.mark.parametrize("dtype_name, tdtype", [("FLOAT", "float32"), ("HALF", "float16"), ("BF16", "bfloat16"),
                                                ("INT8", "int8"), ("INT32", "int32"), ("BOOL", "bool")])
def test_device_tensors_are_copied_on_the_given_stream(dtype_name, tdtype):
    from parity_builtin_tensorrt._cuda import device_to_host

    g = torch.Generator().manual_seed(0)
    ref = (torch.randn(3, 5, generator=g) * 10)
    ref = ref > 0 if tdtype == "bool" else ref.to(getattr(torch, tdtype))
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        dev = ref.to("cuda").clone()
    got = device_to_host(dev.data_ptr(), tuple(dev.shape), dtype_name, s.cuda_stream)
    want = ref.float().numpy() if tdtype == "bfloat16" else ref.numpy()
    assert got.shape == (3, 5) and np.array_equal(got, want)


# --------------------------------------------------------------------------- with TensorRT

def _ort_outputs(path, feed, names):
    import onnxruntime as ort

    from parity.lib.onnx.graph import with_outputs

    m = with_outputs(onnx.load(str(path)), names)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, feed)))


@needs_trt
@pytest.mark.parametrize("capture", ["debug", "mark", "outputs"])
def test_tensorrt_fp32_matches_onnxruntime_layer_by_layer(tmp_path, cnn, capture):
    from parity.contract.source import RunConfig
    from parity_builtin_tensorrt.source import TrtSource

    p = tmp_path / "cnn.onnx"
    onnx.save(cnn, str(p))
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    cfg = RunConfig(model=str(p), workdir=tmp_path, options={"trt_capture": capture})
    recs = list(TrtSource("fp32").run(cfg, {cnn.graph.input[0].name: x}))
    assert recs and recs[-1].meta.get("is_output")
    named = [r for r in recs if r.meta.get("onnx_tensor_exact")]
    ref = _ort_outputs(p, {cnn.graph.input[0].name: x}, [r.meta["onnx_tensor"] for r in named])
    for r in named:
        np.testing.assert_allclose(r.array.reshape(ref[r.name].shape), ref[r.name], rtol=1e-4, atol=1e-4)
    assert all(r.meta["fusion_altered"] == (capture == "mark" or r.meta["debug_strategy"] == "marked")
               for r in recs)
    if capture != "outputs":
        assert len(named) > 1


@needs_trt
def test_tensorrt_engine_cache_is_reused(tmp_path, cnn):
    from parity.contract.source import RunConfig
    from parity_builtin_tensorrt.source import TrtSource

    p = tmp_path / "cnn.onnx"
    onnx.save(cnn, str(p))
    feed = {cnn.graph.input[0].name: np.ones((1, 3, 8, 8), np.float32)}
    cfg = RunConfig(model=str(p), workdir=tmp_path, options={"trt_capture": "outputs"})
    first = list(TrtSource("fp16").run(cfg, feed))
    second = list(TrtSource("fp16").run(cfg, feed))
    assert first[0].meta["engine_cache"] == "miss" and second[0].meta["engine_cache"] == "hit"
    assert np.array_equal(first[-1].array, second[-1].array)

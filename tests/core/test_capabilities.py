"""Typed number formats and source capabilities: the core asks a source, never parses its name.

Checked: every built-in target's ``number_format``; a third-party source's format is its attribute
whatever its name says; ``offers`` for every built-in; the dispatch refuses a target lacking a
capability before anything runs, naming those that have it; the fixed model written through the
ONNX Runtime source's capability is the model the direct conversion makes (same nodes kept in fp32,
same exclusions from quantization); the repro is cut by a source that offers it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from parity import hookimpl
from support import plugged
from parity.contract.capability import Capability, NumberFormat
from parity.contract.errors import ParityError
from parity.contract.report import LayerResult
from parity.contract.source import RunConfig, Source
from parity.core import registry as plugins
from parity.core.diagnose import number_format_of, target_format

BUILTIN_FORMATS = {
    "torch": NumberFormat.FP32, "torch-fp16": NumberFormat.FP16, "torch-bf16": NumberFormat.BF16,
    "ort": NumberFormat.FP32, "ort-fp16": NumberFormat.FP16, "ort-fp16-strict": NumberFormat.FP16,
    "ort-int8": NumberFormat.INT8,
    "trt-fp32": NumberFormat.FP32, "trt-tf32": NumberFormat.TF32, "trt-fp16": NumberFormat.FP16,
    "trt-bf16": NumberFormat.BF16, "trt-int8": NumberFormat.INT8,
    "trt-rtx-fp32": NumberFormat.FP32, "trt-rtx-fp16": NumberFormat.FP16, "trt-rtx-bf16": NumberFormat.BF16,
}
#: what reports call each format (summary["target_format"], unchanged JSON schema)
REPORT_NAMES = {NumberFormat.FP32: None, NumberFormat.TF32: None, NumberFormat.FP16: "float16",
                NumberFormat.BF16: "bfloat16", NumberFormat.INT8: "int8"}
FIXED_MODEL = {"ort-fp16", "ort-fp16-strict", "ort-int8"}
REPRO = {"ort", "ort-fp16", "ort-fp16-strict", "ort-int8"}


@pytest.mark.parametrize("name", sorted(BUILTIN_FORMATS))
def test_every_builtin_target_declares_its_number_format(name):
    src = plugins.get_source(name)
    assert src.number_format is BUILTIN_FORMATS[name]
    assert number_format_of(name) is BUILTIN_FORMATS[name]
    assert target_format(name) == REPORT_NAMES[BUILTIN_FORMATS[name]]


def test_every_registered_source_has_a_typed_number_format():
    for name, src in plugins.all_of("source").items():
        assert isinstance(src.number_format, NumberFormat), name


@pytest.mark.parametrize("name", sorted(BUILTIN_FORMATS))
def test_builtin_capabilities(name):
    src = plugins.get_source(name)
    assert src.offers(Capability.RUN_LAYER_ALONE)  # every built-in runs layers alone (--diagnose)
    assert src.offers(Capability.WRITE_FIXED_MODEL) == (name in FIXED_MODEL)
    assert src.offers(Capability.WRITE_REPRO) == (name in REPRO)


class _Named(Source):
    """A third-party source whose name says one format and whose attribute says another (or nothing)."""

    def __init__(self, name: str, fmt: NumberFormat | None) -> None:
        self.name = name  # type: ignore[misc]
        if fmt is not None:
            self.number_format = fmt


class _Plugin:
    @hookimpl
    def register_sources(self, register):
        register(_Named("acme-fp16", NumberFormat.INT8), name="acme-fp16")
        register(_Named("acme-int8-half", None), name="acme-int8-half")


@pytest.fixture
def acme():
    yield from plugged(_Plugin(), "acme-test")


def test_the_format_is_the_attribute_never_the_name(acme):
    assert target_format("acme-fp16") == "int8"  # the name says fp16, the source says int8
    undeclared = plugins.get_source("acme-int8-half")
    assert undeclared.number_format is NumberFormat.FP32  # a source that says nothing is fp32
    assert target_format("acme-int8-half") is None
    # where the format has fp32's range, the rows' dtype still speaks (a source storing fp16 unannounced)
    row = LayerResult(name="x", ref_name="x", target_name="x", order=0, target_dtype="float16")
    assert target_format("acme-int8-half", row) == "float16"
    assert not undeclared.offers(Capability.RUN_LAYER_ALONE)
    assert not any(undeclared.offers(c) for c in Capability)


def test_number_format_report_names_and_quantized():
    assert {f: f.report_name for f in REPORT_NAMES} == REPORT_NAMES
    assert NumberFormat.MIXED.report_name is None
    assert [f.value for f in NumberFormat if f.quantized] == ["fp8", "int8", "int4", "nvfp4"]
    assert NumberFormat("bf16") is NumberFormat.BF16 and str(NumberFormat.BF16) == "bf16"


# ----------------------------------------------------------------------------- dispatch


def _model(path: Path) -> Path:
    """x[N,4] -> MatMul(mm) -> h -> Mul by 1e3 (scale) -> s -> Add b (add) -> a -> Relu (relu) -> y."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "W"),
             numpy_helper.from_array(np.full((1,), 1e3, np.float32), "k"),
             numpy_helper.from_array(rng.standard_normal((8,)).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Mul", ["h", "k"], ["s"], name="scale"),
             helper.make_node("Add", ["s", "b"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "caps", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _fix_result(kept: list[str]):
    from parity.core.fix import FixResult

    rows = [LayerResult(name=k, ref_name=k, target_name=k, order=i, meta={"target_onnx_node": k})
            for i, k in enumerate(kept)]
    return FixResult("cosine", 0.999, 0.5, 1.0, True, kept, rows)


def _graph_bytes(path) -> bytes:
    import onnx

    return onnx.load(str(path)).graph.SerializeToString()


def test_fixed_fp16_model_through_the_capability_is_the_direct_conversion(tmp_path):
    pytest.importorskip("onnxconverter_common")
    import onnx

    from parity.core.compare import CompareSettings
    from parity.core.fix import write_fixed_model
    from parity.lib.onnx.convert import to_fp16

    model = _model(tmp_path / "m.onnx")
    s = CompareSettings(model=str(model), ref="ort", target="ort-fp16", workdir=str(tmp_path / "c"),
                        input_shapes={"x": (2, 4)})
    out = write_fixed_model(s, _fix_result(["h", "s"]), str(tmp_path / "out" / "fixed.onnx"))
    assert Path(out) == tmp_path / "out" / "fixed.onnx"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["fixed.onnx"]  # no temporary left
    # the conversion the core once called itself, in another cache folder
    direct = to_fp16(model, tmp_path / "direct", keep_tensors=["h", "s"])
    assert _graph_bytes(out) == _graph_bytes(direct)
    # and what that means: mm and scale still compute in fp32 (their weights stay fp32), add is fp16
    g = onnx.load(out).graph
    dtypes = {t.name: t.data_type for t in g.initializer}
    assert dtypes["W"] == dtypes["k"] == onnx.TensorProto.FLOAT
    assert onnx.TensorProto.FLOAT16 in {t.data_type for t in g.initializer if t.name not in ("W", "k")}


def test_fixed_int8_model_through_the_source_is_the_direct_quantization(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from parity.lib.onnx.convert import to_int8

    model = _model(tmp_path / "m.onnx")
    rng = np.random.default_rng(3)
    calib = [{"x": rng.standard_normal((2, 4)).astype(np.float32)} for _ in range(4)]
    src = plugins.get_source("ort-int8")
    cfg = RunConfig(model=str(model), workdir=tmp_path / "c", calibration=calib)
    dest = tmp_path / "fixed.onnx"
    fixed = src.write_fixed_model(cfg, calib[0], ["a"], dest)
    assert fixed.path == dest and fixed.kept == ("a",) and fixed.number_format is NumberFormat.INT8
    direct = to_int8(model, tmp_path / "direct", calib, {"keep_high_precision": ["a"]})
    assert _graph_bytes(dest) == _graph_bytes(direct)
    g = onnx.load(str(dest)).graph
    quantized = {n.input[0] for n in g.node if n.op_type == "QuantizeLinear"}
    assert {"x", "h", "s"} <= quantized and "a" not in quantized  # the rest quantized, add's output not
    add = next(n for n in g.node if n.name == "add")
    assert list(add.input)[1] == "b" and list(add.output) == ["a"]  # add reads its fp32 bias as it is
    plain = onnx.load(str(to_int8(model, tmp_path / "plain", calib, {}))).graph
    assert next(n for n in plain.node if n.name == "add").input[1] == "b_DequantizeLinear_Output"  # unkept: int8


def test_a_target_without_the_capability_is_refused_before_anything_runs(tmp_path):
    from parity.core.compare import CompareSettings
    from parity.core.fix import write_fixed_model

    model = _model(tmp_path / "m.onnx")
    s = CompareSettings(model=str(model), ref="ort", target="trt-fp16", workdir=str(tmp_path / "c"))
    with pytest.raises(ParityError, match=r"^--write-model \S+: trt-fp16 cannot write a fixed model\. "
                                          r"Note: sources that can: ort-fp16, ort-fp16-strict \(other formats: .*ort-int8"):
        write_fixed_model(s, _fix_result(["h"]), str(tmp_path / "x.onnx"))
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "c").exists()  # nothing ran, nothing cached
    # an fp32 target has nothing to keep out of a lower precision
    s = CompareSettings(model=str(model), ref="ort", target="ort", workdir=str(tmp_path / "c"))
    with pytest.raises(ParityError, match=r"ort cannot write a fixed model\. Note: sources that can: ort-fp16"):
        write_fixed_model(s, _fix_result(["h"]), str(tmp_path / "x.onnx"))


def test_repro_is_cut_by_a_source_that_offers_it(tmp_path):
    pytest.importorskip("onnxruntime")
    from parity.core.capabilities import repro_source
    from parity.core.compare import CompareSettings
    from parity.core.repro import repro

    assert repro_source("ort-int8") == "ort-int8"  # the target itself when it can
    assert repro_source("trt-fp16") == "ort" == repro_source("torch-fp16")  # else the first that can
    model = _model(tmp_path / "m.onnx")
    s = CompareSettings(model=str(model), ref="ort", target="trt-fp16", workdir=str(tmp_path / "c"),
                        input_shapes={"x": (2, 4)})
    res = repro(s, "add", tmp_path / "bug")
    assert res.folder == tmp_path / "bug" and res.nodes == ["add"] and res.inputs == ["s"] and res.outputs == ["a"]
    ins, outs = dict(np.load(res.folder / "inputs.npz")), dict(np.load(res.folder / "reference_outputs.npz"))
    b = next(t for t in __import__("onnx").load(str(model)).graph.initializer if t.name == "b")
    from onnx import numpy_helper

    np.testing.assert_allclose(outs["a"], ins["s"] + numpy_helper.to_array(b), rtol=1e-6)  # Add, by numpy
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_repro_without_any_source_offering_it_is_refused(monkeypatch):
    from parity.core.capabilities import repro_source

    monkeypatch.setenv("PARITY_LOAD_PLUGINS", "torch")
    plugins.reset()
    with pytest.raises(ParityError, match="no loaded source can cut a layer into a standalone repro"):
        repro_source("torch")


# ----------------------------------------------------------------------------- run a layer alone

class _Affine(Source):
    """h = 2x, y = h + 1; the target scales h by ``1 + eps`` and says so in its local run."""

    runs_deployed = False

    def __init__(self, name: str, eps: float, local: bool) -> None:
        self.name = name  # type: ignore[misc]
        self.eps = eps
        if local:  # declared only through the capability, not the older supports_local flag
            self.capabilities = frozenset({Capability.RUN_LAYER_ALONE})  # type: ignore[misc]

    def input_specs(self, cfg):
        from parity.contract.source import InputSpec

        return [InputSpec("x", (3, 4))]

    def run(self, cfg, feed):
        from parity.contract.records import Activation

        h = (2.0 * feed["x"] * (1.0 + self.eps)).astype(np.float32)
        yield Activation("h", h, order=0, op_type="Mul")
        yield Activation("y", h + 1.0, order=1, op_type="Add", meta={"is_output": True, "output_position": 0})

    def local_errors(self, cfg, feed):
        from parity.contract.records import LocalResult

        ref = (2.0 * feed["x"]).astype(np.float32)
        yield LocalResult("h", ref, (ref * (1.0 + self.eps)).astype(np.float32), "Mul")


class _AffinePlugin:
    @hookimpl
    def register_sources(self, register):
        register(_Affine("affine", 0.0, False), name="affine")
        register(_Affine("affine-local", 0.01, True), name="affine-local")
        register(_Affine("affine-mute", 0.01, False), name="affine-mute")


@pytest.fixture
def affine():
    plugin = _AffinePlugin()
    plugins.register_plugin(plugin, name="affine-test")
    try:
        yield
    finally:
        plugins.unregister_plugin(plugin)
        plugins.reset()


def test_local_runs_are_dispatched_by_the_capability(affine, tmp_path):
    from parity.core.compare import CompareSettings, compare

    rep = compare(CompareSettings(model="affine:net", ref="affine", target="affine-local", diagnose=True,
                                  metrics=["l2"], workdir=str(tmp_path), random_inputs=1))
    h = next(r for r in rep.layers if r.name == "h")
    assert "local_unavailable" not in rep.summary
    # alone, h is 2x(1+eps) against 2x, as in the whole run: the local distance is the accumulated one
    assert h.local["l2"] > 0 and h.local["l2"] == pytest.approx(h.values["l2"], rel=1e-5)
    rep = compare(CompareSettings(model="affine:net", ref="affine", target="affine-mute", diagnose=True,
                                  metrics=["l2"], workdir=str(tmp_path), random_inputs=1))
    assert rep.summary["local_unavailable"] == "source 'affine-mute' offers no local runs"
    assert not next(r for r in rep.layers if r.name == "h").local

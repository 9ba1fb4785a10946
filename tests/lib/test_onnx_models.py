"""parity.lib.onnx.models and parity.lib.onnx.session: the ONNX model and the ONNX Runtime
session every ONNX consumer uses.

Real exports of a zoo model and real onnxruntime sessions; nothing is mocked except, in one
test, protobuf's refusal to serialize a model over 2 GB (building one would take 2 GB).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")
from onnx import TensorProto, helper  # noqa: E402

from parity.contract.errors import ParityError  # noqa: E402
from parity.contract.source import InputSpec, RunConfig  # noqa: E402
from parity.lib.onnx.graph import model_inputs, value_dims  # noqa: E402
from parity.lib.onnx.models import OnnxModel, export_options, is_onnx_file, onnx_input_specs, onnx_model_for  # noqa: E402
from parity.lib.onnx.provenance import CALLS_KEY, module_output_calls  # noqa: E402
from parity.lib.onnx.session import (GRAPH_OPTIMIZATION_LEVELS, make_session, ort_message,  # noqa: E402
                                     run_session, session_options)

ZOO = Path(__file__).resolve().parents[1] / "models" / "zoo.py"
SPEC = f"{ZOO}:fp16_hazard"  # Linear -> scale -> LayerNorm -> ReLU ..., input x: (4, 16)


def _feed(cfg: RunConfig) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in onnx_input_specs(cfg)}


def _small_onnx(path: Path, batch: int | str = "batch") -> Path:
    """y = Relu(x + 1), x: [batch, 3] float32."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    g = helper.make_graph([helper.make_node("Add", ["x", "one"], ["s"], name="add"),
                           helper.make_node("Relu", ["s"], ["y"], name="relu")], "small",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])], [one])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(path))
    return path


# ----------------------------------------------------------------------------- onnx_model_for

def test_an_onnx_file_passes_through_unexported(tmp_path):
    path = _small_onnx(tmp_path / "small.onnx")
    cfg = RunConfig(model=str(path), workdir=tmp_path / "wd")
    got = onnx_model_for(cfg, {"x": np.zeros((2, 3), np.float32)})
    assert isinstance(got, OnnxModel)
    assert got.path == path and got.module_names is None
    p, names = got  # unpacks as (path, module_names)
    assert p == path and names is None
    assert not (tmp_path / "wd").exists()  # nothing exported, nothing cached
    assert is_onnx_file(path) and is_onnx_file("A.ONNX") and not is_onnx_file(f"{ZOO}:lenet")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The zoo model exported with the string options exactly as ``--option`` gives them."""
    wd = tmp_path_factory.mktemp("export")
    out = {}
    for flag in ("false", "true"):
        cfg = RunConfig(model=SPEC, workdir=wd, options={"export_dynamic_batch": flag})
        got = onnx_model_for(cfg, _feed(cfg))
        out[flag] = (got, onnx.load(str(got.path)))
    return out


def test_a_torch_model_is_exported_with_provenance(exported):
    got, m = exported["true"]
    assert got.path.suffix == ".onnx" and got.path.is_file()
    assert {"fc1", "norm", "head"} <= set(got.module_names or [])
    meta = {p.key: p.value for p in m.metadata_props}
    assert "parity.exporter" in meta
    # every computing node says which torch module call produced it
    with_calls = [n for n in m.graph.node if any(p.key == CALLS_KEY for p in n.metadata_props)]
    assert len(with_calls) >= len(m.graph.node) // 2
    # and the module outputs are found as ONNX tensors
    found = {path for scopes in module_output_calls(m, got.module_names).values() for path, _ in scopes}
    assert {"fc1", "norm", "head"} <= found


def test_export_dynamic_batch_false_as_text_gives_a_fixed_batch(exported):
    """``--option export_dynamic_batch=false`` arrives as the string "false"; ``bool("false")`` is
    True, which is how a duplicated copy of this logic once exported a dynamic batch anyway."""
    (fixed, m_fixed), (dyn, m_dyn) = exported["false"], exported["true"]
    assert fixed.path != dyn.path  # distinct cache entries
    assert [value_dims(vi) for vi in model_inputs(m_fixed)] == [(4, 16)]
    dims = [value_dims(vi) for vi in model_inputs(m_dyn)]
    assert len(dims) == 1 and dims[0][0] is None and dims[0][1:] == (16,)
    assert model_inputs(m_dyn)[0].type.tensor_type.shape.dim[0].dim_param  # symbolic, named
    assert "static batch" in {p.key: p.value for p in m_fixed.metadata_props}["parity.exporter"]


def test_export_options_read_text_like_values():
    assert export_options({"export_dynamic_batch": "false", "export_optimize": "no", "export_dynamo": "0",
                           "opset": "17"}) == {"opset": 17, "dynamic_batch": False, "optimize": False,
                                               "dynamo": False}
    assert export_options({}) == {"opset": None, "dynamic_batch": True, "optimize": True, "dynamo": True}
    with pytest.raises(ParityError, match="export_dynamic_batch"):
        export_options({"export_dynamic_batch": "maybe"})


# ----------------------------------------------------------------------------- onnx_input_specs

def test_input_specs_of_an_onnx_file_take_input_shapes(tmp_path):
    path = _small_onnx(tmp_path / "dyn.onnx")
    assert onnx_input_specs(RunConfig(model=str(path))) == [InputSpec("x", (None, 3), "float32")]
    got = onnx_input_specs(RunConfig(model=str(path), input_shapes={"x": (5, 3)}))
    assert got == [InputSpec("x", (5, 3), "float32")]
    with pytest.raises(ParityError, match="conflicts with the fixed shape"):
        onnx_input_specs(RunConfig(model=str(path), input_shapes={"x": (5, 4)}))
    with pytest.raises(ParityError, match="rank"):
        onnx_input_specs(RunConfig(model=str(path), input_shapes={"x": (5,)}))
    with pytest.raises(ParityError, match=r"names \['nope'\]"):
        onnx_input_specs(RunConfig(model=str(path), input_shapes={"nope": (1, 3)}))


def test_input_specs_of_a_torch_model_take_input_shapes():
    assert onnx_input_specs(RunConfig(model=SPEC)) == [InputSpec("x", (4, 16), "float32")]
    assert onnx_input_specs(RunConfig(model=SPEC, input_shapes={"x": (7, 16)})) == [
        InputSpec("x", (7, 16), "float32")]
    with pytest.raises(ParityError, match="nope"):
        onnx_input_specs(RunConfig(model=SPEC, input_shapes={"nope": (1,)}))


# ----------------------------------------------------------------------------- session helpers

def test_session_options_read_the_ort_options():
    so, providers = session_options({"ort_threads": "2", "ort_graph_optimization": "Basic"})
    assert providers == ["CPUExecutionProvider"]
    assert so.intra_op_num_threads == 2
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so, providers = session_options({"ort_providers": "CPUExecutionProvider", "ort_graph_optimization": "disable"},
                                    device="cuda:0")
    assert providers == ["CPUExecutionProvider"]
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert set(GRAPH_OPTIMIZATION_LEVELS) == {"disable", "basic", "extended", "all"}
    # capture sessions run without the CPU arena unless asked (peak memory, see session_options)
    assert session_options({})[0].enable_cpu_mem_arena is False
    assert session_options({"ort_mem_arena": "true"})[0].enable_cpu_mem_arena is True


def test_a_bad_provider_is_one_line_naming_it():
    with pytest.raises(ParityError) as e:
        session_options({"ort_providers": ["CPUExecutionProvider", "NoSuchExecutionProvider"]})
    msg = str(e.value)
    assert "\n" not in msg and "NoSuchExecutionProvider" in msg and "CPUExecutionProvider" in msg


@pytest.mark.parametrize("options, needle", [({"ort_threads": "x"}, "ort_threads"),
                                             ({"ort_threads": "1.5"}, "ort_threads"),
                                             ({"ort_threads": -2}, "ort_threads"),
                                             ({"ort_graph_optimization": "max"}, "ort_graph_optimization")])
def test_bad_session_options_are_parity_errors(options, needle):
    with pytest.raises(ParityError, match=needle) as e:
        session_options(options)
    assert "\n" not in str(e.value)


def test_make_session_and_run_session(tmp_path):
    path = _small_onnx(tmp_path / "small.onnx")
    so, providers = session_options({})
    x = np.array([[-2.0, 0.0, 3.0]], np.float32)
    for model in (path, onnx.load(str(path))):  # a file, or a proto in memory
        sess = make_session(model, so, providers, tmp_path, "small.onnx")
        (y,) = run_session(sess, ["y"], {"x": x}, "small.onnx")
        np.testing.assert_array_equal(y, np.maximum(x + 1, 0))
    with pytest.raises(ParityError, match="onnxruntime failed running small.onnx") as e:
        run_session(sess, ["y"], {"x": np.zeros((1, 4), np.float32)}, "small.onnx")
    assert "\n" not in str(e.value)


def test_make_session_failure_is_one_line_naming_the_model(tmp_path):
    bad = helper.make_model(helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "bad",
                                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
                            opset_imports=[helper.make_opsetid("", 17)])
    so, providers = session_options({})
    with pytest.raises(ParityError, match="onnxruntime cannot load broken.onnx") as e:
        make_session(bad, so, providers, tmp_path, "broken.onnx")
    assert "\n" not in str(e.value) and "NoSuchOp" in str(e.value)


class _TooLargeForProtobuf:
    """A ModelProto whose first serialization fails as protobuf's does past 2 GB."""

    def __init__(self, model):
        self._model, self._refused = model, False

    def SerializeToString(self):  # noqa: N802 - protobuf's name
        if not self._refused:
            self._refused = True
            raise ValueError("Message onnx.ModelProto exceeds maximum protobuf size of 2GB")
        return self._model.SerializeToString()

    def __getattr__(self, name):
        return getattr(self._model, name)


def test_make_session_goes_through_external_data_past_2gb(tmp_path, monkeypatch):
    path = _small_onnx(tmp_path / "small.onnx")
    model = onnx.load(str(path))
    seen = []
    real_save = onnx.save

    def spy(proto, f, *a, **k):
        seen.append(k)
        return real_save(proto._model if isinstance(proto, _TooLargeForProtobuf) else proto, f, *a, **k)

    monkeypatch.setattr(onnx, "save", spy)
    so, providers = session_options({})
    work = tmp_path / "work"
    sess = make_session(_TooLargeForProtobuf(model), so, providers, work, "big.onnx")
    assert seen and seen[0].get("save_as_external_data") is True
    (y,) = run_session(sess, ["y"], {"x": np.ones((2, 3), np.float32)}, "big.onnx")
    np.testing.assert_array_equal(y, np.full((2, 3), 2.0, np.float32))
    assert work.is_dir() and list(work.iterdir()) == []  # the temporary copy is gone


def test_ort_message_is_the_first_line():
    assert ort_message(RuntimeError("\n  first line\nsecond")) == "first line"
    assert ort_message(RuntimeError()) == "RuntimeError"

"""Importers for dumps made elsewhere: Polygraphy JSON, trtexec --exportOutput, trtexec debug tensors.

Polygraphy files are REAL: ``polygraphy run`` is executed here on a tiny ONNX model and its
imported arrays are checked against an independent ONNX Runtime run on the inputs Polygraphy
saved. trtexec cannot run here (no TensorRT), so its files are FORMAT FIXTURES written by
this test in the layout trtexec's own source writes (samples/common/sampleReporting.cpp
``exportJSONOutput`` and samples/common/debugTensorWriter.cpp, TensorRT 10.12+): they test
the readers, they are not TensorRT results.
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from support import tool_command

from parity import Activation, ParityError
from parity.core import registry as plugins
from parity.core.dumps import read_dump

import onnx
import onnxruntime as ort

from parity_builtin_tensorrt.importers import (PolygraphyJsonFormat, TrtexecDebugFormat,  # noqa: E402
                                               TrtexecJsonFormat, load_polygraphy_inputs,
                                               load_polygraphy_outputs, runner_tags, save_polygraphy_inputs,
                                               tolerant_json)



def _tiny_model() -> "onnx.ModelProto":
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w = numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b"], ["biased"], name="bias"),
             helper.make_node("Relu", ["biased"], ["act"], name="relu"),
             helper.make_node("Sigmoid", ["act"], ["gate"], name="sig"),
             helper.make_node("Mul", ["act", "gate"], ["y"], name="mul")]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _polygraphy(*args: str, cwd: Path) -> None:
    cmd = tool_command("polygraphy")
    r = subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


@pytest.fixture(scope="module")
def poly_run(tmp_path_factory):
    """One real ``polygraphy run`` with every tensor marked, two iterations, inputs saved."""
    d = tmp_path_factory.mktemp("poly")
    onnx.save(_tiny_model(), str(d / "model.onnx"))
    _polygraphy("run", "model.onnx", "--onnxrt", "--onnx-outputs", "mark", "all", "--iterations", "2",
                "--save-outputs", "out.json", "--save-inputs", "in.json", cwd=d)
    return d


@pytest.fixture(scope="module")
def poly_two_runners(tmp_path_factory):
    d = tmp_path_factory.mktemp("poly2")
    onnx.save(_tiny_model(), str(d / "model.onnx"))
    _polygraphy("run", "model.onnx", "--onnxrt", "--onnxrt", "--onnx-outputs", "mark", "all",
                "--save-outputs", "out.json", "--save-inputs", "in.json", cwd=d)
    return d


def _ort_all(model_path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    m = onnx.load(str(model_path))
    names = [o for n in m.graph.node for o in n.output]
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, feed)))


@pytest.fixture(autouse=True)
def _no_runner_env(monkeypatch):
    monkeypatch.delenv("PARITY_POLYGRAPHY_RUNNER", raising=False)
    monkeypatch.delenv("PARITY_POLYGRAPHY_ITERATION", raising=False)


# --------------------------------------------------------------------------- Polygraphy

def test_polygraphy_outputs_equal_an_independent_run_on_the_saved_inputs(poly_run):
    feeds = load_polygraphy_inputs(poly_run / "in.json")
    assert len(feeds) == 2 and set(feeds[0]) == {"x"} and feeds[0]["x"].shape == (2, 4)
    assert not np.array_equal(feeds[0]["x"], feeds[1]["x"])  # two iterations, two inputs
    for it in (0, 1):
        recs = load_polygraphy_outputs(poly_run / "out.json", iteration=it)
        ref = _ort_all(poly_run / "model.onnx", feeds[it])
        assert {r.name for r in recs} == set(ref) == {"mm", "biased", "act", "gate", "y"}
        for r in recs:
            assert r.array.dtype == np.float32
            np.testing.assert_allclose(r.array, ref[r.name], rtol=1e-6, atol=1e-6)
            assert r.meta["iteration"] == it and r.meta["iterations"] == 2 and r.meta["runner_tag"] == "onnxrt"
        assert [r.order for r in recs] == list(range(len(recs)))


def test_polygraphy_files_are_recognised_by_content(poly_run):
    out, inp = poly_run / "out.json", poly_run / "in.json"
    assert PolygraphyJsonFormat().can_read(out) and not PolygraphyJsonFormat().can_read(inp)
    assert not TrtexecJsonFormat().can_read(out) and not TrtexecDebugFormat().can_read(out)
    recs = list(read_dump(out))  # format picked from the file, default iteration 0
    feeds = load_polygraphy_inputs(inp)
    ref = _ort_all(poly_run / "model.onnx", feeds[0])
    assert {r.name: r.array.shape for r in recs} == {k: v.shape for k, v in ref.items()}
    with pytest.raises(ParityError):  # the inputs file is not an activation dump
        list(read_dump(inp))


def test_polygraphy_iteration_selection(poly_run, monkeypatch):
    last = load_polygraphy_outputs(poly_run / "out.json", iteration=-1)
    assert last[0].meta["iteration"] == 1
    monkeypatch.setenv("PARITY_POLYGRAPHY_ITERATION", "1")
    via_env = list(PolygraphyJsonFormat().read(poly_run / "out.json"))
    assert all(np.array_equal(a.array, b.array) for a, b in zip(last, via_env))
    with pytest.raises(ParityError, match="iteration 5 does not exist"):
        load_polygraphy_outputs(poly_run / "out.json", iteration=5)


def test_two_runners_are_told_apart_by_run_tag(poly_two_runners):
    out = poly_two_runners / "out.json"
    raw = json.loads(out.read_text())
    assert len(raw["lst"]) == 2
    assert runner_tags([r[0] for r in raw["lst"]]) == ["onnxrt0", "onnxrt1"]
    both = list(read_dump(out))
    assert {r.name for r in both} == {f"{t}_{tag}" for t in ("mm", "biased", "act", "gate", "y")
                                      for tag in ("onnxrt0", "onnxrt1")}
    second = {r.name: r for r in read_dump(out, tag="onnxrt1")}
    assert set(second) == {"mm", "biased", "act", "gate", "y"}
    ref = _ort_all(poly_two_runners / "model.onnx", load_polygraphy_inputs(poly_two_runners / "in.json")[0])
    for name, r in second.items():
        np.testing.assert_allclose(r.array, ref[name], rtol=1e-6, atol=1e-6)
        assert r.meta["runner"] == raw["lst"][1][0]
    first = load_polygraphy_outputs(out, runner="onnxrt0")
    assert {r.name for r in first} == set(second) and first[0].meta["runner"] == raw["lst"][0][0]
    assert load_polygraphy_outputs(out, runner=1)[0].meta["runner"] == raw["lst"][1][0]
    with pytest.raises(ParityError, match="onnxrt0 .*onnxrt1"):
        load_polygraphy_outputs(out, runner="trt")
    with pytest.raises(ParityError, match="out of range"):
        load_polygraphy_outputs(out, runner=7)


def test_written_polygraphy_json_is_read_by_polygraphy_itself(tmp_path):
    from polygraphy.comparator import RunResults

    rng = np.random.default_rng(3)
    recs = [Activation("conv/out", rng.standard_normal((2, 3)).astype(np.float32)),
            Activation("half", rng.standard_normal(4).astype(np.float16)),
            Activation("idx", np.arange(5, dtype=np.int64)),
            Activation("scalar", np.array(2.5, dtype=np.float64))]
    path = tmp_path / "parity.json"
    written = PolygraphyJsonFormat().write_many(iter(recs), path)
    assert [w.name for w in written] == [r.name for r in recs] and [w.shape for w in written] == [r.shape for r in recs]
    loaded = RunResults.load(str(path))
    (runner, iters), = loaded.items()
    assert runner == "parity-runner" and len(iters) == 1
    for r in recs:
        got = iters[0][r.name]
        assert got.dtype == r.array.dtype and np.array_equal(got, r.array)
    back = list(PolygraphyJsonFormat().read(path))
    assert [(b.name, b.array.dtype) for b in back] == [(r.name, r.array.dtype) for r in recs]
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed into place


def test_inputs_written_by_parity_are_replayed_by_polygraphy(tmp_path):
    onnx.save(_tiny_model(), str(tmp_path / "model.onnx"))
    rng = np.random.default_rng(9)
    feeds = [{"x": rng.standard_normal((2, 4)).astype(np.float32)} for _ in range(2)]
    save_polygraphy_inputs(feeds, tmp_path / "mine.json")
    assert all(np.array_equal(a["x"], b["x"]) for a, b in zip(load_polygraphy_inputs(tmp_path / "mine.json"), feeds))
    _polygraphy("run", "model.onnx", "--onnxrt", "--onnx-outputs", "mark", "all", "--load-inputs", "mine.json",
                "--save-outputs", "out.json", cwd=tmp_path)
    for it, feed in enumerate(feeds):
        ref = _ort_all(tmp_path / "model.onnx", feed)
        for r in load_polygraphy_outputs(tmp_path / "out.json", iteration=it):
            np.testing.assert_allclose(r.array, ref[r.name], rtol=1e-6, atol=1e-6)
    with pytest.raises(ParityError, match="no feeds"):
        save_polygraphy_inputs([], tmp_path / "none.json")


def _enc(arr: np.ndarray, allow_pickle: bool = False) -> str:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return base64.b64encode(buf.getvalue()).decode()


class _Payload:
    """Unpickling this creates a directory: proof that a file was (or was not) unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_polygraphy_json_is_never_unpickled(tmp_path):
    marker = tmp_path / "was_unpickled"
    evil = np.array([_Payload(marker)], dtype=object)
    doc = {"lst": [["trt-runner-N0", [{"outputs": {"t": {"array": _enc(evil, allow_pickle=True),
                                                        "polygraphy_class": "ndarray"}},
                                       "runtime": 0.1, "runner_name": "trt-runner-N0",
                                       "polygraphy_class": "IterationResult"}]]],
           "polygraphy_class": "RunResults"}
    p = tmp_path / "evil.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(ParityError, match="unpickling"):
        list(PolygraphyJsonFormat().read(p))
    assert not marker.exists()


def test_polygraphy_legacy_and_plain_encodings(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    npz = io.BytesIO()
    np.savez(npz, a)
    latin = io.BytesIO()
    np.save(latin, a)
    doc = {"lst": [["onnxrt-runner-N0", [{"outputs": {
        "legacy": {"array": _enc(a), "__polygraphy_encoded_ndarray": "polygraphy_serialized_json_type"},
        "npz": {"array": base64.b64encode(npz.getvalue()).decode(), "polygraphy_class": "ndarray"},
        "latin1": {"array": latin.getvalue().decode("latin-1"), "polygraphy_class": "ndarray"},
        "lazy": {"values": {"array": _enc(a * 2), "polygraphy_class": "ndarray"},
                 "polygraphy_class": "LazyNumpyArray"},
    }}]]], "polygraphy_class": "RunResults"}
    p = tmp_path / "legacy.json"
    p.write_text(json.dumps(doc))
    got = {r.name: r.array for r in PolygraphyJsonFormat().read(p)}
    for k in ("legacy", "npz", "latin1"):
        assert np.array_equal(got[k], a), k
    assert np.array_equal(got["lazy"], a * 2)


@pytest.mark.parametrize("doc, match", [
    ({"lst": [["r", "not a list"]]}, "runner entry"),
    ({"lst": [["r", []]]}, "no iterations"),
    ({"lst": [["r", [{"runtime": 1}]]]}, "no outputs"),
    ({"lst": [["r", [{"outputs": {"t": {"polygraphy_class": "ndarray"}}}]]]}, "payload is missing"),
    ({"lst": [["r", [{"outputs": {"t": {"polygraphy_class": "Mystery"}}}]]]}, "Mystery"),
])
def test_malformed_polygraphy_files_are_one_line_errors(tmp_path, doc, match):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(ParityError, match=match) as e:
        list(PolygraphyJsonFormat().read(p))
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_polygraphy_inputs_file_errors(tmp_path):
    p = tmp_path / "in.json"
    p.write_text('{"lst": []}')
    with pytest.raises(ParityError, match="not Polygraphy input data"):
        load_polygraphy_inputs(p)
    p.write_text("[]")
    with pytest.raises(ParityError, match="no input data"):
        load_polygraphy_inputs(p)
    p.write_text("[{not json")
    with pytest.raises(ParityError, match="not valid JSON"):
        load_polygraphy_inputs(p)


# --------------------------------------------------------------------------- trtexec --exportOutput

def _cpp(v: float) -> str:
    """A float as a C++ ostream prints it by default (6 significant digits, nan/inf bare)."""
    if math.isnan(v):
        return "-nan" if math.copysign(1, v) < 0 else "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, "g")


def _export_output(entries: list[tuple[str, tuple[int, ...], list[str]]], final_shapes: dict[str, str] = {}) -> str:
    """The text trtexec's exportJSONOutput writes (format fixture, not a TensorRT result)."""
    out = ["[\n"]
    sep = "  "
    for name, dims, values in entries:
        out.append(f'{sep}{{ "name" : "{name}"\n')
        sep = ", "
        out.append(f'  {sep}"dimensions" : "{"x".join(map(str, dims))}"\n')
        final = (f"Final shape is {final_shapes[name]} reported by the output allocator.\n"
                 if name in final_shapes else "")
        out.append(f'  {sep}"values" : [ {final}{sep.join(values)} ]\n  }}\n')
    out.append("]\n")
    return "".join(out)


def test_trtexec_export_output_reads_what_trtexec_prints(tmp_path):
    rng = np.random.default_rng(11)
    probs = (rng.standard_normal((1, 10)) * 1e3).astype(np.float32)
    probs[0, 3], probs[0, 4], probs[0, 5] = np.nan, np.inf, -np.inf
    idx = np.array([[3, 1], [0, 7]], dtype=np.int32)
    text = _export_output([("prob:0", (1, 10), [_cpp(float(v)) for v in probs.ravel()]),
                           ("indices", (2, 2), [str(int(v)) for v in idx.ravel()])])
    p = tmp_path / "out.json"
    p.write_text(text)
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)  # bare nan/inf: not JSON, which is why the reader is tolerant
    fmt = TrtexecJsonFormat()
    assert fmt.can_read(p) and not PolygraphyJsonFormat().can_read(p) and not TrtexecDebugFormat().can_read(p)
    recs = {r.name: r for r in read_dump(p)}
    assert set(recs) == {"prob:0", "indices"}
    got = recs["prob:0"].array
    assert got.shape == (1, 10) and got.dtype == np.float32
    printed = np.array([float(_cpp(float(v))) for v in probs.ravel()], dtype=np.float32).reshape(1, 10)
    assert np.array_equal(got, printed, equal_nan=True)  # exactly what was printed
    finite = np.isfinite(probs)
    np.testing.assert_allclose(got[finite], probs[finite], rtol=5e-6)  # 6 digits of what TensorRT computed
    assert np.isnan(got[0, 3]) and got[0, 4] == np.inf and got[0, 5] == -np.inf
    assert recs["indices"].array.dtype == np.int64 and np.array_equal(recs["indices"].array, idx)
    assert recs["prob:0"].meta["is_output"] and recs["indices"].meta["output_position"] == 1
    assert recs["prob:0"].meta["printed_digits"] == 6


def test_trtexec_data_dependent_output_shape(tmp_path):
    p = tmp_path / "dds.json"
    p.write_text(_export_output([("boxes", (-1, 4), [str(v) for v in range(8)])], {"boxes": "2x4"}))
    (rec,) = list(TrtexecJsonFormat().read(p))
    assert rec.array.shape == (2, 4) and np.array_equal(rec.array.ravel(), np.arange(8))


@pytest.mark.parametrize("text, match", [
    ('[ { "name" : "y"\n  , "dimensions" : "2x2"\n  , "values" : [ 1, 2, 3 ]\n  }\n]\n', "3 values"),
    ('[ { "name" : "y"\n  , "dimensions" : "2xq"\n  , "values" : [ 1 ]\n  }\n]\n', "dimensions"),
    ('[ { "name" : "y", "values" : [ 1, ', "not the JSON"),
    ('{"name": "y"}', "not a list"),
])
def test_bad_trtexec_output_is_a_one_line_error(tmp_path, text, match):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(ParityError, match=match) as e:
        list(TrtexecJsonFormat().read(p))
    assert "\n" not in str(e.value)


def test_tolerant_json_leaves_strings_alone():
    doc = tolerant_json('{"name": "nan inf", "v": [nan, -inf, inf, -nan, 1e-05]}')
    assert doc["name"] == "nan inf"
    assert math.isnan(doc["v"][0]) and doc["v"][1] == -math.inf and doc["v"][2] == math.inf
    assert math.isnan(doc["v"][3]) and doc["v"][4] == 1e-5


# --------------------------------------------------------------------------- trtexec debug tensors

def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-," else "_" for c in name)


def _debug_dump(d: Path, tensors: list[tuple[str, np.ndarray, str]], formats=("numpy",)) -> Path:
    """Files as trtexec --saveAllDebugTensors=summary,<formats> writes them (format fixture)."""
    entries = []
    for k, (name, arr, ttype) in enumerate(tensors):
        files = {}
        if "numpy" in formats:
            data = arr.astype(np.float32) if ttype == "BF16" else arr
            suffix = "_to_float" if ttype == "BF16" else ""
            fname = _safe(f"{k:04d}_{name}{suffix}.npy")
            np.save(d / fname, data)
            files["numpy"] = fname
        if "raw" in formats:
            fname = _safe(f"{k:04d}_{name}.raw")
            if ttype == "BF16":
                import torch

                raw = torch.from_numpy(arr.astype(np.float32)).to(torch.bfloat16).view(torch.int16).numpy().tobytes()
            else:
                raw = arr.tobytes()
            (d / fname).write_bytes(raw)
            files["raw"] = fname
        stats = (f'{{\n        "min": {_cpp(float(np.min(arr)))},\n        "max": {_cpp(float(np.max(arr)))},\n'
                 f'        "avg": {_cpp(float(np.mean(arr)))},\n        "elements": "..."\n    }}')
        file_lines = ",\n".join(f'      "{k2}": "{v}"' for k2, v in files.items())
        entries.append(f'  {{\n    "name": "{name}",\n    "shape": [{", ".join(map(str, arr.shape))}],\n'
                       f'    "type": "{ttype}",\n    "statistics": {stats}'
                       + (f',\n    "files": {{\n{file_lines}\n    }}' if files else "") + "\n  }")
    text = ('{\n  "metadata": {\n    "title": "Tensor Summary Report",\n    "time_generated": "2026-11-24T10:00:00+0000",\n'
            '    "engine_name": "model.engine",\n    "command_line": "trtexec --onnx=model.onnx --saveAllDebugTensors=summary,numpy"\n'
            '  },\n  "tensors": [\n' + ",\n".join(entries) + "\n  ]\n}\n")
    p = d / "tensor_summary.json"
    p.write_text(text)
    return p


def test_trtexec_debug_summary_gives_tensors_in_engine_order(tmp_path):
    rng = np.random.default_rng(5)
    tensors = [("/conv1/Conv_output_0", rng.standard_normal((1, 4, 3, 3)).astype(np.float16), "HALF"),
               ("Reformatted Output Tensor 0 to /conv1/Conv + /relu/Relu",
                rng.standard_normal((1, 4, 3, 3)).astype(np.float32), "FLOAT"),
               ("ids", np.array([1, 2, 3], dtype=np.int32), "INT32"),
               ("bf", rng.standard_normal(5).astype(np.float32), "BF16")]
    p = _debug_dump(tmp_path, tensors, formats=("numpy",))
    fmt = TrtexecDebugFormat()
    assert fmt.can_read(p) and not PolygraphyJsonFormat().can_read(p) and not TrtexecJsonFormat().can_read(p)
    recs = list(read_dump(p))
    assert [r.name for r in recs] == [t[0] for t in tensors]  # real names, not the file-safe ones
    assert [r.order for r in recs] == [0, 1, 2, 3]
    for r, (_, arr, ttype) in zip(recs, tensors):
        assert r.meta["trt_tensor"] == r.name and r.meta["trt_dtype"] == ttype
        assert np.array_equal(r.array, arr.astype(np.float32) if ttype == "BF16" else arr)
    assert recs[3].meta["converted_from"] == "BF16"


def test_trtexec_debug_raw_files_are_decoded_from_the_summary_type(tmp_path):
    import torch

    rng = np.random.default_rng(6)
    bf = rng.standard_normal(6).astype(np.float32)
    tensors = [("a", rng.standard_normal((2, 3)).astype(np.float32), "FLOAT"),
               ("h", rng.standard_normal((3, 2)).astype(np.float16), "HALF"),
               ("b", bf.reshape(2, 3), "BF16")]
    p = _debug_dump(tmp_path, tensors, formats=("raw",))
    recs = {r.name: r.array for r in TrtexecDebugFormat().read(p)}
    assert np.array_equal(recs["a"], tensors[0][1]) and np.array_equal(recs["h"], tensors[1][1])
    want_bf = torch.from_numpy(bf).to(torch.bfloat16).float().numpy().reshape(2, 3)
    assert recs["b"].dtype == np.float32 and np.array_equal(recs["b"], want_bf)


def test_trtexec_debug_missing_data_is_explained(tmp_path):
    p = _debug_dump(tmp_path, [("t", np.zeros(3, np.float32), "FLOAT")], formats=("numpy",))
    next(tmp_path.glob("*.npy")).unlink()
    with pytest.raises(ParityError, match="missing next to tensor_summary.json"):
        list(TrtexecDebugFormat().read(p))
    p2 = _debug_dump(tmp_path, [("t", np.zeros(3, np.float32), "FLOAT")], formats=())
    with pytest.raises(ParityError, match="summary,numpy"):
        list(TrtexecDebugFormat().read(p2))


def test_formats_are_registered_read_only_where_they_should_be():
    reg = plugins.registry()["dump-format"]
    assert reg["polygraphy-json"].obj.writable
    assert not reg["trtexec-json"].obj.writable and not reg["trtexec-debug"].obj.writable


def test_layer_info_json_is_not_taken_for_a_dump(tmp_path):
    p = tmp_path / "layers.json"
    p.write_text(json.dumps({"Layers": [{"Name": "a", "LayerType": "Reformat"}], "Bindings": []}))
    for f in (PolygraphyJsonFormat(), TrtexecJsonFormat(), TrtexecDebugFormat()):
        assert not f.can_read(p)


@pytest.mark.parametrize("values", [[1, "a", 2], [[1, 2], [3]], [{"x": 1}], ["1.5"]])
def test_a_json_list_that_is_not_a_numeric_array_is_one_line(tmp_path, values):
    """Found by the fuzz suite: a mutated Polygraphy list decoded as an object/str array."""
    from parity_builtin_tensorrt.importers import decode_polygraphy_array

    with pytest.raises(ParityError, match="not a numeric array"):
        decode_polygraphy_array(values, "out.json [x]")
    np.testing.assert_array_equal(decode_polygraphy_array([[1, 2], [3, 4]], "w"), np.array([[1, 2], [3, 4]]))

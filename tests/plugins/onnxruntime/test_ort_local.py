"""Diagnosis support of the ONNX Runtime source: local runs, keep_high_precision, outputs_only.

Two tiny seeded models with a planted problem each:

* fp16: ``fc1 -> scale -> ln -> relu -> head`` where fc1 outputs 10 +- 0.5 and ``scale`` multiplies
  by ~8e3, so every value of ``scale``'s output is beyond float16's 65504 while the fp32 model is
  fine (LayerNorm brings the values back down);
* int8: three Gemm layers where layer 2's weights have one column 100x the others (and layer 1
  makes the matching channel 100x smaller, so the fp32 function is ordinary): a per-tensor int8
  weight scale then leaves the other columns a handful of levels.

Expectations are computed independently: overflow from the reference range, a Gemm's fp16 output
from numpy on fp16-rounded operands, an int8 layer's output from the QuantizeLinear /
DequantizeLinear formulas with the scales stored in the quantized model.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from parity import ParityError  # noqa: E402
from parity.core.diagnose import LocalResult  # noqa: E402
from parity.lib.scoring import score_pair  # noqa: E402
from parity.core.registry import get_metric  # noqa: E402
from parity.contract.source import RunConfig  # noqa: E402
from parity_builtin_onnxruntime import OrtSource  # noqa: E402
from parity_builtin_onnxruntime import runner as ort_runner  # noqa: E402

FP16_MAX = 65504.0

HAZARD_SRC = textwrap.dedent('''
    import torch
    from torch import nn


    class Scale(nn.Module):
        """Per-channel gain of ~8e3: the planted fp16 hazard."""

        def __init__(self, c):
            super().__init__()
            self.register_buffer("c", torch.full((16,), c) * torch.linspace(0.9, 1.1, 16))

        def forward(self, x):
            return x * self.c


    class Hazard(nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.fc1 = nn.Linear(16, 16)
            self.scale = Scale(8.0e3)
            self.ln = nn.LayerNorm(16)
            self.head = nn.Linear(16, 8)
            with torch.no_grad():
                for m in (self.fc1, self.head):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) / 4)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                self.fc1.weight.div_(10.0)
                self.fc1.bias.add_(10.0)  # fc1 outputs 10 +- 0.5: times 8e3 is beyond fp16 everywhere

        def forward(self, x):
            return self.head(torch.relu(self.ln(self.scale(self.fc1(x)))))


    def factory():
        m = Hazard().eval()
        m.parity_input_shapes = {"x": (2, 16)}
        return m
''')


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Independent cosine: NaN when either side holds a non-finite value."""
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.nan
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def parity_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return score_pair(a, b, [get_metric("cosine")])[0]["cosine"]


def cfg_for(model, workdir, calibration=(), **options) -> RunConfig:
    options.setdefault("ort_threads", 1)
    return RunConfig(model=str(model), workdir=Path(workdir), options=options, calibration=list(calibration))


def outputs(precision: str, cfg: RunConfig, feed) -> list[np.ndarray]:
    return [a.array for a in OrtSource(precision).run(cfg, feed) if a.meta["is_output"]]


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def hazard(tmp_path_factory):
    """The fp16 hazard model: spec, its parity export (.onnx), a feed, and module -> tensor names."""
    d = tmp_path_factory.mktemp("hazard")
    py = d / "hazard_model.py"
    py.write_text(HAZARD_SRC)
    spec = f"{py}:factory"
    workdir = d / "wd"
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    recs = list(OrtSource("fp32").run(cfg_for(spec, workdir), {"x": x}))  # exports into workdir
    onnx_path = Path(recs[0].meta["model_file"])
    key = {r.meta["module_path"]: r.name for r in recs if r.meta["module_path"]}
    ref = {r.name: r.array for r in recs}
    return {"spec": spec, "onnx": onnx_path, "workdir": workdir, "feed": {"x": x}, "key": key, "ref": ref,
            "relu": next(r.name for r in recs if r.op_type == "Relu")}


def _int8_model(path: Path) -> dict:
    rng = np.random.default_rng(1)
    d, j0 = 16, 3
    w1 = rng.standard_normal((d, d)).astype(np.float32) / 4
    b1 = rng.standard_normal(d).astype(np.float32) * 0.1
    w2 = rng.standard_normal((d, d)).astype(np.float32) / 4
    b2 = rng.standard_normal(d).astype(np.float32) * 0.1
    w3 = rng.standard_normal((8, d)).astype(np.float32) / 4
    b3 = rng.standard_normal(8).astype(np.float32) * 0.1
    w1[j0] *= 0.01
    b1[j0] *= 0.01
    w2[:, j0] *= 100.0  # the outlier column: 100x the rest of layer 2's weights
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(w1, "W1"), (b1, "b1"), (w2, "W2"), (b2, "b2"), (w3, "W3"), (b3, "b3")]]
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["g1"], name="fc1", transB=1),
             helper.make_node("Tanh", ["g1"], ["a1"], name="act1"),
             helper.make_node("Gemm", ["a1", "W2", "b2"], ["g2"], name="fc2", transB=1),
             helper.make_node("Tanh", ["g2"], ["a2"], name="act2"),
             helper.make_node("Gemm", ["a2", "W3", "b3"], ["y"], name="fc3", transB=1),
             helper.make_node("Neg", ["a2"], ["z"], name="neg")]  # a second graph output
    graph = helper.make_graph(nodes, "outlier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", d])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    feeds = [{"x": np.random.default_rng(10 + s).standard_normal((32, d)).astype(np.float32)} for s in range(4)]
    return {"path": path, "calibration": feeds[:3], "feed": feeds[3], "W2": w2, "b2": b2}


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    return _int8_model(tmp_path_factory.mktemp("int8") / "outlier.onnx")


# ----------------------------------------------------------------------------- fp16 local runs

def test_fp16_local_finds_the_overflowing_layer_not_those_that_inherit(hazard, tmp_path):
    """Strict fp16 storage: the Mul's output is stored in float16 where it is written."""
    cfg = cfg_for(hazard["onnx"], tmp_path)
    src = OrtSource("fp16-strict")
    acc = {a.name: a.array for a in src.run(cfg, hazard["feed"])}
    local = {lr.key: lr for lr in src.local_errors(cfg, hazard["feed"])}
    assert src.last_local_skipped == []
    # one local run per fp16 record, in the same keys; ref is the fp32 run's value, bit for bit
    assert set(local) == set(acc)
    for k, lr in local.items():
        assert isinstance(lr, LocalResult) and lr.meta["onnx_node"]
        np.testing.assert_array_equal(lr.ref, hazard["ref"][k])
        assert lr.target.shape == lr.ref.shape
    k = hazard["key"]
    scale, ln, head, fc1 = local[k["scale"]], local[k["ln"]], local[k["head"]], local[k["fc1"]]
    assert scale.op_type == "Mul" and head.op_type == "Gemm"
    # independently: the reference values of scale's output are all beyond float16, so a
    # float16 layer cannot produce a finite one
    assert np.abs(scale.ref).min() > FP16_MAX and np.isfinite(scale.ref).all()
    assert not np.isfinite(scale.target).any()
    assert math.isnan(parity_cosine(scale.ref, scale.target))  # no finite element left to compare
    # LayerNorm reads that tensor as float16 too (inf): it shares the blame, see the docs
    assert not np.isfinite(ln.target).all()
    # the head inherits: accumulated error is total, local error is fp16 rounding only
    assert not np.isfinite(acc[k["head"]]).all()
    assert cosine(head.ref, head.target) > 0.9999
    assert parity_cosine(head.ref, head.target) > 0.9999
    assert cosine(fc1.ref, fc1.target) > 0.9999 and cosine(fc1.ref, acc[k["fc1"]]) > 0.9999


def test_fp16_local_gemm_equals_numpy_on_fp16_operands(hazard, tmp_path):
    """head under strict fp16 storage, fed the fp32 relu output rounded to float16, recomputed in numpy.

    (fc1 reads the model input through the converter's Cast, which onnxruntime on CPU drops
    before an op without a float16 kernel, in the full run and the local run alike.)
    """
    w = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(hazard["onnx"])).graph.initializer}
    local = {lr.key: lr for lr in OrtSource("fp16-strict").local_errors(cfg_for(hazard["onnx"], tmp_path),
                                                                        hazard["feed"])}
    h16 = lambda a: a.astype(np.float16).astype(np.float32)  # noqa: E731
    inp = hazard["ref"][hazard["relu"]]
    expect = (h16(inp) @ h16(w["head.weight"]).T + h16(w["head.bias"])).astype(np.float16)
    got = local[hazard["key"]["head"]].target
    assert got.dtype == np.float32  # the graph output: float32 cast of the float16 result
    # float16 result: equal up to one float16 step where float32 summation order differs
    np.testing.assert_allclose(got, expect.astype(np.float32), rtol=1e-3, atol=1e-4)
    assert np.mean(got.astype(np.float16) == expect) > 0.9
    assert not np.array_equal(got, local[hazard["key"]["head"]].ref)  # the rounding is really there


def test_fp16_rounding_of_fed_inputs_is_numpy_exact(tmp_path):
    """The fast float16 rounding used for fed inputs is bit-identical to numpy's (ties, subnormals, inf, NaN)."""
    from parity_builtin_onnxruntime.local import _Caster

    rng = np.random.default_rng(3)
    a = np.concatenate([rng.standard_normal(4000).astype(np.float32) * 10.0 ** rng.integers(-9, 6, 4000),
                        np.array([65504, 65519.99, 65520, 1e6, -1e6, np.inf, -np.inf, np.nan, 0.0, -0.0,
                                  2 ** -25, 3 * 2 ** -25, 2 ** -24, 1 + 2 ** -11, 1 + 3 * 2 ** -11], np.float32)])
    a = a.astype(np.float32).reshape(5, -1)
    got = _Caster(cfg_for("unused.onnx", tmp_path))(a, np.dtype(np.float16))
    with np.errstate(over="ignore"):
        want = a.astype(np.float16)
    assert got.dtype == np.float16 and got.shape == a.shape
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


def test_fp32_source_has_no_local_runs(hazard, tmp_path):
    src = OrtSource("fp32")
    assert list(src.local_errors(cfg_for(hazard["onnx"], tmp_path), hazard["feed"])) == []


def test_local_runs_in_output_batches_agree(hazard, tmp_path):
    cfg = cfg_for(hazard["onnx"], tmp_path)
    whole = {lr.key: lr.target for lr in OrtSource("fp16").local_errors(cfg, hazard["feed"])}
    cfg.options["ort_output_batch"] = 2
    batched = {lr.key: lr.target for lr in OrtSource("fp16").local_errors(cfg, hazard["feed"])}
    assert set(batched) == set(whole)
    for k in whole:
        np.testing.assert_array_equal(batched[k], whole[k])


@pytest.mark.parametrize("steps", [{"ort_output_batch": 2}, {"step_bytes": 300}])
@pytest.mark.parametrize("model", ["hazard", "outlier"])
def test_stepped_local_runs_equal_the_single_run(model, steps, hazard, outlier, tmp_path, monkeypatch):
    """ort_output_batch=2, or a step_bytes of a few tensors, captures the reference in steps and runs
    each step's layers as it goes: same keys, order, skips, and bit-identical ref and target arrays
    as one session."""
    if model == "hazard":
        src, feed, calib, precision = hazard["onnx"], hazard["feed"], (), "fp16"
    else:
        src, feed, calib, precision = outlier["path"], outlier["feed"], outlier["calibration"], "int8"
    one = OrtSource(precision)
    whole = list(one.local_errors(cfg_for(src, tmp_path, calib, ort_output_batch=0), feed))
    steps_seen = []
    real = ort_runner.run_steps

    def counting(model, batches, *a, **k):
        steps_seen.append(len(batches))
        return real(model, batches, *a, **k)

    monkeypatch.setattr(ort_runner, "run_steps", counting)
    stepped_src = OrtSource(precision)
    stepped = list(stepped_src.local_errors(cfg_for(src, tmp_path, calib, **steps), feed))
    assert steps_seen and steps_seen[0] >= 3  # really went in steps
    assert len(whole) >= 5
    assert [lr.key for lr in stepped] == [lr.key for lr in whole]
    assert stepped_src.last_local_skipped == one.last_local_skipped
    for a, b in zip(whole, stepped):
        assert a.op_type == b.op_type and a.meta == b.meta
        np.testing.assert_array_equal(b.ref, a.ref)
        np.testing.assert_array_equal(b.target, a.target)
        assert b.target.dtype == a.target.dtype


def test_control_flow_node_is_skipped_and_listed(tmp_path):
    """An If node cannot run alone: it is skipped (and named), the others still run."""
    then_g = helper.make_graph([helper.make_node("Neg", ["a"], ["t_out"])], "then", [],
                               [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Abs", ["a"], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("ReduceSum", ["a"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
             helper.make_node("If", ["cond"], ["b"], name="branch", then_branch=then_g, else_branch=else_g),
             helper.make_node("Mul", ["b", "two"], ["y"], name="mul")]
    g = helper.make_graph(nodes, "cf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                          [numpy_helper.from_array(np.array(0, np.float32), "zero"),
                           numpy_helper.from_array(np.array(2, np.float32), "two")])
    p = tmp_path / "cf.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(p))
    src = OrtSource("fp16")
    x = {"x": np.array([1.0, -2.0, 3.0, 0.5], np.float32)}
    keys = [lr.key for lr in src.local_errors(cfg_for(p, tmp_path), x)]
    assert "b" not in keys and {"a", "s", "y"} <= set(keys)
    assert [(s["key"], s["onnx_node"]) for s in src.last_local_skipped] == [("b", "branch")]
    assert "control flow" in src.last_local_skipped[0]["reason"]


# ----------------------------------------------------------------------------- int8 local runs

def test_int8_outlier_layer_has_the_worst_local_error(outlier, tmp_path):
    cfg = cfg_for(outlier["path"], tmp_path, outlier["calibration"])
    src = OrtSource("int8")
    fp32 = {a.name: a.array for a in OrtSource("fp32").run(cfg, outlier["feed"])}
    local = {lr.key: lr for lr in src.local_errors(cfg, outlier["feed"])}
    assert set(local) == {"g1", "a1", "g2", "a2", "y", "z"} and src.last_local_skipped == []
    for k, lr in local.items():
        np.testing.assert_array_equal(lr.ref, fp32[k])
    err = {k: 1.0 - cosine(lr.ref, lr.target) for k, lr in local.items()}
    others = max(v for k, v in err.items() if k != "g2")
    assert err["g2"] > 0.01 and err["g2"] > 20 * others, err

    # independent recomputation of fc2 alone: Q/DQ of its input with the calibrated scale,
    # dequantized int8 weights and int32 bias, then Q/DQ of its output
    q = onnx.load(next(a.meta["run_model_file"] for a in src.run(cfg, outlier["feed"])))
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    producer = {o: n for n in q.graph.node for o in n.output}
    fc2 = next(n for n in q.graph.node if n.name == "fc2")

    def dq_params(tensor):
        n = producer[tensor]
        assert n.op_type == "DequantizeLinear"
        return n.input[0], inits[n.input[1]].astype(np.float64), inits[n.input[2]].astype(np.float64)

    def qdq(v, s, zp):
        return (np.clip(np.round(v / s) + zp, -128, 127) - zp) * s  # np.round: half to even, as ONNX

    _, s_a, zp_a = dq_params(fc2.input[0])
    wq, s_w, zp_w = dq_params(fc2.input[1])
    bq, s_b, zp_b = dq_params(fc2.input[2])
    a1 = qdq(fp32["a1"].astype(np.float64), s_a, zp_a)
    w2 = (inits[wq].astype(np.float64) - zp_w) * s_w
    b2 = (inits[bq].astype(np.float64) - zp_b) * s_b
    assert np.abs(w2 - outlier["W2"]).max() <= s_w / 2 + 1e-9  # the stored weights are W2 on the int8 grid
    g2_q = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "g2")
    s_o, zp_o = inits[g2_q.input[1]].astype(np.float64), inits[g2_q.input[2]].astype(np.float64)
    expect = qdq(a1 @ w2.T + b2, s_o, zp_o)
    got = local["g2"].target.astype(np.float64)
    assert np.abs(got - expect).max() <= s_o * 1.001  # at most one output level apart (float sums)
    assert np.mean(np.abs(got - expect) < s_o * 1e-3) > 0.95


# ----------------------------------------------------------------------------- keep_high_precision

def test_fp16_keep_high_precision_fixes_the_output(hazard, tmp_path):
    k = hazard["key"]
    ref = outputs("fp32", cfg_for(hazard["onnx"], tmp_path, outputs_only=True), hazard["feed"])[0]

    def out_cos(keep):
        cfg = cfg_for(hazard["onnx"], tmp_path, outputs_only=True, keep_high_precision=keep)
        return cosine(ref, outputs("fp16", cfg, hazard["feed"])[0])

    before = out_cos([])
    assert math.isnan(before) or before < 0.999
    # the Mul alone in fp32 still hands float16 (inf) on: its output is stored as float16
    producer_only = out_cos([k["scale"]])
    assert math.isnan(producer_only) or producer_only < 0.999
    # with its consumer kept too, the tensor between them stays float32
    assert out_cos([k["scale"], k["ln"]]) >= 0.999
    converted = [p for p in (tmp_path / "ort").glob("*fp16*.onnx") if ".asrun-" not in p.name and ".strict-" not in p.name]
    newest = max(converted, key=lambda p: p.stat().st_mtime_ns)
    m = onnx.load(str(newest))
    producer = {o: n for n in m.graph.node for o in n.output}
    ln_node = next(n for n in m.graph.node if n.op_type == "LayerNormalization")
    # kept: LayerNorm reads the Mul's float32 output directly, and float32 casts of its weights
    assert producer[ln_node.input[0]].op_type == "Mul"
    assert all(producer[t].op_type == "Cast" and producer[t].attribute[0].i == TensorProto.FLOAT
               for t in ln_node.input[1:])
    # three keep sets, three cached conversions
    assert len(converted) == 3


def test_int8_keep_high_precision_improves_the_output(outlier, tmp_path):
    ref = outputs("fp32", cfg_for(outlier["path"], tmp_path, outputs_only=True), outlier["feed"])[0]

    def run(keep):
        cfg = cfg_for(outlier["path"], tmp_path, outlier["calibration"], outputs_only=True, keep_high_precision=keep)
        recs = list(OrtSource("int8").run(cfg, outlier["feed"]))
        return cosine(ref, recs[0].array), onnx.load(recs[0].meta["run_model_file"])

    before, _ = run([])
    after, model = run(["g2"])
    assert after > before + 0.05 and after > 0.95, (before, after)
    fc2 = next(n for n in model.graph.node if n.name == "fc2")
    assert "W2" in fc2.input  # float weights: fc2 was left out of quantization


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_keep_high_precision_unknown_names_are_errors(outlier, tmp_path, precision):
    cfg = cfg_for(outlier["path"], tmp_path, outlier["calibration"], keep_high_precision=["g2", "nope", "gone"])
    with pytest.raises(ParityError, match=r"keep_high_precision names \['nope', 'gone'\].*outlier\.onnx"):
        list(OrtSource(precision).run(cfg, outlier["feed"]))
    cfg.keep_high_precision = ("x",)  # a typed field of the run configuration
    with pytest.raises(ParityError, match="model inputs"):
        list(OrtSource(precision).run(cfg, outlier["feed"]))
    assert not (tmp_path / "ort").exists() or not list((tmp_path / "ort").glob("*.onnx"))


# ----------------------------------------------------------------------------- outputs_only

@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_outputs_only_yields_the_graph_outputs_with_full_run_values(outlier, tmp_path, precision):
    path, calib, feed = outlier["path"], outlier["calibration"], outlier["feed"]
    full = list(OrtSource(precision).run(cfg_for(path, tmp_path, calib), feed))
    only = list(OrtSource(precision).run(cfg_for(path, tmp_path, calib, outputs_only="true"), feed))
    assert len(full) == 6
    assert [(a.name, a.meta["is_output"], a.meta["output_position"]) for a in only] == [("y", True, 0), ("z", True, 1)]
    by = {a.name: a.array for a in full}
    for a in only:
        np.testing.assert_array_equal(a.array, by[a.name])


# ----------------------------------------------------------------------------- end to end

def test_cli_compare_diagnose_names_the_planted_layer(hazard, tmp_path):
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, "-m", "parity", "compare", hazard["spec"], "--ref", "torch",
                        "--target", "ort-fp16-strict", "--diagnose", "--json", str(out), "--workdir",
                        str(hazard["workdir"])],
                       capture_output=True, text=True, timeout=300)
    assert out.exists(), r.stderr[-2000:]
    rep = json.loads(out.read_text())
    rows = {row["name"]: row for row in rep["layers"]}
    assert {"fc1", "scale", "ln", "head"} <= set(rows)
    assert all("cosine" in rows[n]["local"] for n in ("fc1", "scale", "ln", "head"))
    assert rows["scale"]["culprit_rank"] == 1
    assert rep["summary"]["first_culprit"] == "scale"
    assert rows["head"]["culprit_rank"] is None
    assert rows["head"]["local"]["cosine"] > 0.9999  # inherits: accumulated is NaN, local is fine
    assert rows["head"]["values"]["cosine"] in ("nan", None) or math.isnan(float(rows["head"]["values"]["cosine"]))

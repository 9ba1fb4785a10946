"""Culprit ordering (issue 16): one cause, one culprit, its consequences grouped under it, in one order
that the verdict, the table, the HTML page, JUnit and the API all show.

In process on synthetic activations (the rules, checked against numpy), then end to end from the CLI on
tests/models/overflow.py, an MLP whose Linear passes float16's 65504 inside a block (not a zoo model).
"""
import importlib.util
import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from pathlib import Path

from parity import Activation
from parity.contract.report import culprit_groups, diagnosis_lines
from parity.core.diagnose import LocalResult, attach_local, find_culprits, score_local, trace_ranges
from parity.core.engine import compare_streams, resolve_metrics
from support import cli

FP16_MAX = 65504.0


def _fp16(a):
    with np.errstate(over="ignore"):
        return a.astype(np.float16).astype(np.float32)


def _overflow_chain(rng):
    """lin writes values beyond fp16 (a real overflow: consumers break); relu (target-only) passes them
    on; head reads them and makes NaN; out is the same tensor as head; later, an independent cause
    'noisy' (poor local cosine) and 'tail' that inherits it."""
    x = rng.standard_normal(2048).astype(np.float32)
    big = (x * 2e5).astype(np.float32)                      # about 2/3 of the values beyond 65504
    relu = np.maximum(big, 0)
    head = rng.standard_normal(2048).astype(np.float32)
    head_t = head.copy()
    head_t[::3] = np.nan                                     # what the inf does to the next Linear
    noisy = rng.standard_normal(2048).astype(np.float32)
    noisy_t = noisy + 0.5 * rng.standard_normal(2048).astype(np.float32)
    tail = rng.standard_normal(2048).astype(np.float32)
    ref = [Activation("lin", big, order=0, op_type="Linear"), Activation("head", head, order=2, op_type="Linear"),
           Activation("noisy", noisy, order=3, op_type="Linear"), Activation("tail", tail, order=4, op_type="Linear")]
    tgt = [Activation("lin", _fp16(big), order=0), Activation("relu", _fp16(relu), order=1),
           Activation("head", head_t, order=2), Activation("noisy", noisy_t, order=3),
           Activation("tail", tail + 0.5 * rng.standard_normal(2048).astype(np.float32), order=4)]
    fp = {"precision": "fp16"}
    local = [LocalResult("lin", big, _fp16(big), meta=dict(fp, consumers=["relu"])),
             LocalResult("relu", relu, _fp16(relu), meta=dict(fp, consumers=["head"])),
             LocalResult("head", head, head_t, meta=dict(fp, consumers=["noisy"])),  # fed inf: NaN alone too
             LocalResult("noisy", noisy, noisy_t, meta=dict(fp, consumers=["tail"])),
             LocalResult("tail", tail, tail + 1e-6 * rng.standard_normal(2048).astype(np.float32),
                         meta=dict(fp, consumers=[]))]
    rep = compare_streams(iter(ref), iter(tgt), ["cosine"], options={"ranges": True})
    trace_ranges(rep, "float16")
    attach_local(rep, dict(score_local(local, resolve_metrics(["cosine"]))))
    return rep, big


def test_one_cause_one_culprit_consequences_grouped_under_it(rng):
    rep, big = _overflow_chain(rng)
    ranked = find_culprits(rep)
    by = {r.name: r for r in rep.layers}
    # the Linear that overflows is culprit #1, the independent later cause #2; nothing else is ranked
    assert [r.name for r in ranked] == ["lin", "noisy"] == rep.summary["culprits"]
    assert [r.culprit_rank for r in ranked] == [1, 2] and rep.summary["first_culprit"] == "lin"
    # the target-only ReLU (local cosine ~1 on its finite part) and the head it feeds NaN only carry lin's inf
    assert by["relu"].status == "target-only" and by["relu"].local["cosine"] > 0.9999999
    assert by["relu"].culprit_rank is None and by["relu"].caused_by == "lin"
    assert by["head"].culprit_rank is None and by["head"].caused_by == "lin"
    assert "beyond the float16 range" in by["relu"].meta["consequence"]
    assert by["tail"].caused_by is None and by["tail"].culprit_rank is None  # inherits by value: not grouped
    groups = rep.summary["culprit_groups"]
    assert [(g["culprit"], g["rank"], g["consequences"]) for g in groups] == [("lin", 1, ["relu", "head"]),
                                                                               ("noisy", 2, [])]
    assert [(r.name, [c.name for c in cs]) for r, cs in culprit_groups(rep)] == [("lin", ["relu", "head"]),
                                                                                ("noisy", [])]
    # the overflow in numbers, checked against numpy: how many values pass 65504, and the largest one
    n = int(np.count_nonzero(np.abs(big.astype(np.float64)) > FP16_MAX))
    ov = by["lin"].meta["overflow"]
    assert ov["count"] == n and ov["ref_absmax"] == pytest.approx(float(np.abs(big).max()), rel=1e-6)
    text = "\n".join(diagnosis_lines(rep))
    assert (f"Culprit: lin (Linear; lin) — run alone in the target, {n} of its values exceed the float16 max "
            f"65504 (the reference reaches {float(np.abs(big).max()):.4g}) and become Inf") in text
    assert "reaches cosine" not in text
    assert "Grouped under lin" in text and "Other culprits by local error: #2 noisy" in text


def test_a_perfect_local_error_is_never_a_culprit(rng):
    """A layer whose output holds NaN end to end but computes perfectly alone inherits the NaN: its
    finite-part cosine (1 - 1e-7) 'explaining' the finite-part accumulated cosine is no cause."""
    a = rng.standard_normal(4096).astype(np.float32)
    t = a + 1e-4 * rng.standard_normal(4096).astype(np.float32)
    t_nan = t.copy()
    t_nan[:16] = np.inf
    rep = compare_streams(iter([Activation("x", a, order=0, op_type="Linear")]),
                          iter([Activation("x", t_nan, order=0)]), ["cosine"], options={"ranges": True})
    trace_ranges(rep, "float16")
    attach_local(rep, dict(score_local([LocalResult("x", a, t)], resolve_metrics(["cosine"]))))
    row = rep.layers[0]
    assert row.status == "nonfinite" and row.local["cosine"] > 0.9999
    assert find_culprits(rep) == [] and row.culprit_rank is None and "culprits" not in rep.summary


def test_saturation_passed_on_is_judged_where_it_comes_back_in_range(rng):
    """A mask-like saturation whose consumer brings the value back into range (softmax: exp(-inf) = 0,
    as in the reference) is harmless even through a pass-through node in between."""
    s = rng.standard_normal(1024).astype(np.float32)
    masked = s.copy()
    masked[:256] = -3.4e38
    e = np.exp(masked.astype(np.float64) - masked.max()).astype(np.float32)
    soft = e / e.sum()
    ref = [Activation("add", masked, order=0, op_type="Add"), Activation("soft", soft, order=2, op_type="Softmax")]
    tgt = [Activation("add", _fp16(masked), order=0), Activation("reshape", _fp16(masked), order=1),
           Activation("soft", soft, order=2)]
    fp = {"precision": "fp16"}
    local = [LocalResult("add", masked, _fp16(masked), meta=dict(fp, consumers=["reshape"])),
             LocalResult("reshape", masked, _fp16(masked), meta=dict(fp, consumers=["soft"])),
             LocalResult("soft", soft, soft, meta=dict(fp, consumers=[]))]
    rep = compare_streams(iter(ref), iter(tgt), ["cosine"], options={"ranges": True})
    trace_ranges(rep, "float16")
    attach_local(rep, dict(score_local(local, resolve_metrics(["cosine"]))))
    assert find_culprits(rep) == []
    by = {r.name: r for r in rep.layers}
    assert by["add"].local["_saturated"] == 256 and "still match" in by["add"].meta["saturation"]


# -- end to end: the CLI on an MLP whose Linear overflows fp16 inside a block -----------------------------

MODEL = Path(__file__).resolve().parents[1] / "models" / "overflow.py"


def _fc_output(x):
    """block.fc's fp32 output, from torch alone (independent of parity's capture)."""
    import torch

    spec = importlib.util.spec_from_file_location("overflow_model", MODEL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m = mod.overflow_mlp()
    got = {}
    m.block.fc.register_forward_hook(lambda _m, _i, o: got.update(fc=o.detach().numpy()))  # returns None
    with torch.no_grad():
        m(torch.from_numpy(x))
    return got["fc"]


@pytest.mark.parametrize("target", ["torch-fp16", "ort-fp16-strict"])
def test_cli_overflowing_linear_is_culprit_one_everywhere(target, tmp_path, capsys):
    if target.startswith("ort"):
        pytest.importorskip("onnxruntime")
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    fc = _fc_output(x)
    n = int(np.count_nonzero(np.abs(fc.astype(np.float64)) > FP16_MAX))
    top = float(np.abs(fc).max())
    assert n > 0 and top > FP16_MAX  # the model really overflows fp16
    out = {k: tmp_path / f"r.{k}" for k in ("json", "html", "xml", "csv")}
    rc, text, _ = cli(capsys, "compare", f"{MODEL}:overflow_mlp", "--target", target, "--inputs", tmp_path / "in.npz",
                      "--diagnose", "--workdir", tmp_path / "w", "--json", out["json"], "--html", out["html"],
                      "--report", f"junit={out['xml']}", "--csv", out["csv"], "--exit-zero")
    assert rc == 0
    rep = json.loads(out["json"].read_text())
    rows = {r["name"]: r for r in rep["layers"]}
    # culprit #1 is the Linear that overflowed; nothing that only carries its inf is ranked
    assert rep["summary"]["culprits"][0] == "block.fc" == rep["summary"]["first_culprit"]
    assert rows["block.fc"]["culprit_rank"] == 1
    ranked = [r["name"] for r in sorted((r for r in rep["layers"] if r["culprit_rank"]), key=lambda r: r["culprit_rank"])]
    assert ranked == rep["summary"]["culprits"] == ["block.fc"]
    grouped = [r["name"] for r in rep["layers"] if r["caused_by"] == "block.fc"]
    assert {"block", "head", "output"} <= set(grouped)  # the containing block, the head it feeds, the output
    assert rep["summary"]["culprit_groups"] == [{"culprit": "block.fc", "rank": 1, "cause": rows["block.fc"]["meta"]["culprit_cause"],
                                                 "consequences": grouped}]
    # a row whose local error is perfect is never a culprit: here every target-only node and the ReLUs
    for r in rep["layers"]:
        if r["local"].get("cosine") not in (None, "nan") and r["local"]["cosine"] > 0.9999 and not r["local"].get("_saturated"):
            assert r["culprit_rank"] is None, r["name"]
    # the verdict states the overflow: how many values, the largest reference value against 65504
    ov = rows["block.fc"]["meta"]["overflow"]
    assert ov["count"] == n and ov["ref_absmax"] == pytest.approx(top, rel=1e-6) and ov["format_max"] == FP16_MAX
    line = next(ln for ln in re.sub(r"\s+", " ", text).split("Culprit: ")[1:])
    assert line.startswith(f"block.fc (Linear; block.fc) — run alone in the target, {n} of its values exceed the "
                           f"float16 max 65504 (the reference reaches {top:.4g}) and become Inf")
    assert "reaches cosine" not in text
    # the table marks the culprit and each consequence under it
    assert "CULPRIT #1" in text and "↳ of #1 block.fc" in text
    # the HTML page: the same order, the magnitude plot opens on culprit #1, the NaN/Inf layer fails on the depth plot
    data = json.loads(re.search(r'id="parity-data">(.*?)</script>', out["html"].read_text(), re.S).group(1))
    assert data["culprits"] == rep["summary"]["culprits"]
    assert next(iter(data["hist"])) == "block.fc"
    page = {r["name"]: r for r in data["rows"]}
    assert page["block.fc"]["acc"] == "inf" and page["block.fc"]["culprit"] == 1
    assert all(page[n]["cb"] == "block.fc" for n in grouped)
    # JUnit: the culprit's failure says culprit #1; each consequence says whose it is
    cases = {c.get("name"): c for c in ET.parse(out["xml"]).getroot().iter("testcase")}
    props = {p.get("name"): p.get("value") for p in ET.parse(out["xml"]).getroot().iter("property")}
    assert props["culprits"] == ",".join(rep["summary"]["culprits"])
    assert "culprit #1:" in cases["block.fc"].find("failure").get("message")
    for n in grouped:
        fail = cases[n].find("failure")
        if fail is not None:
            assert "grouped under culprit #1 block.fc" in fail.get("message")
        else:  # target-only rows are skipped, not judged; their message still names the culprit
            assert "grouped under culprit #1 block.fc" in cases[n].find("skipped").get("message")
    # CSV: caused_by per row
    import csv

    with open(out["csv"], newline="") as f:
        csv_rows = {r["name"]: r for r in csv.DictReader(f)}
    assert csv_rows["block.fc"]["culprit_rank"] == "1" and csv_rows["head"]["caused_by"] == "block.fc"


def test_api_culprits_follow_the_same_order(tmp_path):
    import parity

    spec = importlib.util.spec_from_file_location("overflow_model_api", MODEL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    rep = parity.compare(mod.overflow_mlp(), x, ref="torch", target="torch-fp16", workdir=tmp_path / "c")
    assert [r.name for r in rep.culprits] == rep.summary["culprits"] == ["block.fc"]
    assert {r.name for r in rep.layers if r.caused_by == "block.fc"} >= {"block", "head"}
    from parity.testing import failure_message

    msg = failure_message(rep, ["why"], worst=10)
    assert "block.fc (Linear)" in msg and "<- culprit #1" in msg and "head (Linear)" in msg
    assert re.search(r"head \(Linear\).*<- carries #1 block\.fc", msg)


def test_nan_from_an_input_beyond_the_format_names_that_input(rng):
    """ONNX Runtime's CPU provider runs a Mul in float32 behind casts: its value past 65504 is finite in
    the target, and becomes Inf only when cast to float16 for the LayerNorm that reads it. The LayerNorm
    is the culprit (its own output stays small); the verdict names the input that is beyond the format."""
    x = rng.standard_normal(1024).astype(np.float32)
    boost = (x * 2e5).astype(np.float32)
    norm = ((boost - boost.mean()) / boost.std()).astype(np.float32)
    norm_t = np.full_like(norm, np.nan)
    ref = [Activation("boost", boost, order=0, op_type="Mul"), Activation("norm", norm, order=1, op_type="LayerNorm")]
    tgt = [Activation("boost", boost, order=0), Activation("norm", norm_t, order=1)]
    local = [LocalResult("boost", boost, boost, meta={"precision": "fp16", "consumers": ["norm"]}),
             LocalResult("norm", norm, norm_t, meta={"precision": "fp16", "consumers": []})]
    rep = compare_streams(iter(ref), iter(tgt), ["cosine"], options={"ranges": True})
    trace_ranges(rep, "float16")
    attach_local(rep, dict(score_local(local, resolve_metrics(["cosine"]))))
    assert [r.name for r in find_culprits(rep)] == ["norm"]
    ov = {r.name: r for r in rep.layers}["norm"].meta["overflow"]
    top = float(np.abs(boost).max())
    assert ov["count"] == norm.size and ov["input_from"] == "boost" and ov["input_absmax"] == pytest.approx(top, rel=1e-6)
    text = " ".join(diagnosis_lines(rep))
    assert f"its input boost reaches {top:.4g} (reference) > the float16 max 65504" in text
    assert "reads boost" in rep.summary["first_culprit_cause"]


def test_int8_softmax_reading_a_destroyed_quantizer_is_grouped_under_the_mask_add(tmp_path):
    """tests/models/heldout.py's causal decoder vs ort-int8: the mask-add's quantizer (scale ~1e36) destroys
    every real score; the Softmax reading them through that quantizer is the same loss, not a culprit."""
    pytest.importorskip("onnxruntime")
    from parity.core.compare import CompareSettings, compare

    model = Path(__file__).resolve().parents[1] / "models" / "heldout.py"
    rep = compare(CompareSettings(model=f"{model}:causal_decoder", ref="torch", target="ort-int8",
                                  workdir=str(tmp_path / "c"), diagnose=True))
    by = {r.name: r for r in rep.layers}
    first = by[rep.summary["culprits"][0]]
    assert first.target_op_type == "Add" and first.culprit_rank == 1 and rep.summary["first_culprit"] == first.name
    soft = [r for r in rep.layers if r.target_op_type == "Softmax" and r.meta.get("input_cause_row") == first.name]
    assert soft and all(r.caused_by == first.name and r.culprit_rank is None for r in soft)
    assert all(s.name in rep.summary["culprit_groups"][0]["consequences"] for s in soft)

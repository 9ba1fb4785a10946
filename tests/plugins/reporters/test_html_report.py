"""The HTML reporter without a browser: a self-contained page whose embedded data is the report's.

The browser test (test_html_browser.py) checks that the page renders; this one checks what it carries.
"""
import json
import re

import numpy as np

from parity import Activation
from parity.cli import main
from parity.core.engine import compare_streams
from parity_builtin_reporters.html_report import html_text, page_data

HOSTILE = "</script><script>alert(1)</script>&<!--"


def _report(rng, ranges=True):
    a = rng.standard_normal((4, 64)).astype(np.float32)
    big = (a * 3e4).astype(np.float32)
    ref = [Activation("conv1", a, order=0, op_type="Conv2d"), Activation(HOSTILE, a * 2, order=1),
           Activation("big", big, order=2, op_type="Mul"), Activation("only_ref", a, order=3)]
    with np.errstate(over="ignore"):
        tgt = [Activation("conv1", a + 0.01, order=0), Activation(HOSTILE, a * 2, order=1),
               Activation("big", big.astype(np.float16).astype(np.float32), order=2)]
    rep = compare_streams(iter(ref), iter(tgt), ["cosine", "rel-diff"], thresholds={"cosine": 0.9999},
                          options={"ranges": ranges}, ref_label="fp32", target_label="fp16")
    rep.layers[0].culprit_rank = 1
    rep.summary.update(culprits=["conv1"], first_culprit="conv1", target_format="float16")
    return rep


def _embedded(text):
    m = re.search(r'<script type="application/json" id="parity-data">(.*?)</script>', text, re.S)
    return json.loads(m.group(1))


def test_page_is_self_contained_and_opens_offline(rng):
    text = html_text(_report(rng))
    assert text.startswith("<!DOCTYPE html>")
    # nothing is fetched: no src/href attributes, no CSS url() or @import, and a CSP that forbids it
    assert not re.search(r"\b(src|href)\s*=", text, re.I)
    assert "url(" not in text.replace("url(#", "") and "@import" not in text
    assert "default-src 'none'" in text
    urls = set(re.findall(r"https?://[^\s\"'<>]+", text))
    assert urls == {"http://www.w3.org/2000/svg"}  # the SVG namespace name, never fetched
    assert text.count("<script") == 2  # the data block and the renderer, both inline


def test_embedded_data_is_the_report_and_names_cannot_break_out(rng):
    rep = _report(rng)
    text = html_text(rep)
    assert HOSTILE not in text and "<script>alert" not in text  # '<' is escaped inside the JSON block
    data = _embedded(text)
    assert data == json.loads(json.dumps(page_data(rep)))
    assert [r["name"] for r in data["rows"]] == [l.name for l in rep.layers]
    p = rep.primary
    for row, layer in zip(data["rows"], rep.layers):
        if "cosine" in layer.values:
            assert row["v"][0] == [float(f"{layer.values['cosine']:.9g}"), p.format(layer.values["cosine"])]
            if layer.status == "nonfinite":
                # new NaN/Inf: the depth plot marks the layer failing, not its finite-only cosine error
                assert row["acc"] == "inf" and p.error(layer.values["cosine"]) < 1e-6
            else:
                assert row["acc"] == float(f"{p.error(layer.values['cosine']):.9g}")  # the metric's own error
    assert data["first"] == rep.first_divergent.name and data["culprits"] == ["conv1"]
    assert data["rows"][2]["status"] == "nonfinite" and data["rows"][2]["nf"] > 0
    # the culprit's error-vs-magnitude picture travels with the page; the overflow is in it
    assert "conv1" in data["hist"] and data["hist"]["big"]["nonfinite"]
    assert rep.first_divergent.name == "big" and data["verdict"][1].startswith("First divergence: big produces")
    assert data["rounding"] == 2.0 ** -11


def test_without_diagnosis_the_page_says_what_is_missing(rng):
    data = page_data(_report(rng, ranges=False))
    assert data["hist"] == {} and all(r["absmax"] is None for r in data["rows"])
    assert not data["diagnosed"]


def test_html_shorthand_writes_the_page(tmp_path, rng, capsys):
    a = rng.standard_normal(256).astype(np.float32)
    np.savez(tmp_path / "ref.npz", x=a)
    np.savez(tmp_path / "tgt.npz", x=a * 1.0001)
    out = tmp_path / "r.html"
    assert main(["analyze", str(tmp_path / "ref.npz"), str(tmp_path / "tgt.npz"), "--html", str(out)]) == 0
    assert f"html report written to {out}" in capsys.readouterr().out
    assert [r["name"] for r in _embedded(out.read_text())["rows"]] == ["x"]


def test_a_fix_with_a_nan_baseline_is_carried(rng):
    """`parity fix` records its result in the summary; a baseline of NaN (an overflowing target) must not break the page."""
    rep = _report(rng)
    rep.summary["fix"] = {"goal_metric": "cosine", "goal": 0.999, "before": float("nan"), "after": 0.9999,
                          "before_text": "nan", "after_text": "0.9999000", "passed": True, "kept": ["big"],
                          "total_layers": 3, "forms": {}}
    fix = _embedded(html_text(rep))["fix"]
    assert fix["before"] == "nan" and fix["after"] == 0.9999 and fix["kept"] == ["big"]


def test_the_number_column_is_the_terminal_tables(rng):
    """The page's # is what the terminal table prints in its # column, row for row (it was the row's
    index, so a row only one side has shifted every number after it)."""
    from parity_builtin_reporters.table import columns

    rep = _report(rng)
    rep.layers[-1].order = 1.5  # a row between two others, as a target-only node gets
    rep.layers.sort(key=lambda l: l.order)
    terminal = next(c for c in columns(rep, rep.layers) if c.key == "#").cells
    assert [r["num"] for r in page_data(rep)["rows"]] == terminal == ["0", "1", "", "2"]

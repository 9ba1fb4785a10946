import csv
import io
import json

import numpy as np

from parity import Activation
from parity.core.engine import compare_streams
from parity.core.report import write_report
from parity_builtin_reporters.csv_report import csv_text
from parity_builtin_reporters.json_report import SCHEMA_VERSION, to_dict
from parity_builtin_reporters.table import render_table


def _report(rng):
    a = rng.standard_normal((1, 20, 6, 6)).astype(np.float32)
    b = rng.standard_normal((1, 10)).astype(np.float32)
    ref = [Activation("conv1", a, order=0, op_type="Conv2d"), Activation("prob", b, order=1, op_type="Softmax"),
           Activation("only_ref", b, order=2)]
    big = np.array([1.0, 7e4], np.float32)
    ref.append(Activation("big", big, order=3))
    tgt = [Activation("conv1", a + 0.5, order=0), Activation("prob", b, order=1),
           Activation("big", big.astype(np.float16), order=3)]
    return compare_streams(iter(ref), iter(tgt), ["cosine", "rel-diff", "sqnr"],
                           thresholds={"cosine": 0.99}, ref_label="fp32", target_label="fp16")


def test_json_schema_is_stable_and_strict(rng, tmp_path):
    rep = _report(rng)
    p = tmp_path / "r.json"
    assert write_report(rep, "json", str(p)) == str(p)
    d = json.loads(p.read_text())  # strict JSON: NaN/Inf are strings, not bare tokens
    assert d["schema"] == "parity.report" and d["schema_version"] == SCHEMA_VERSION
    assert d["passed"] is False and d["first_divergent"] == "conv1"
    assert [m["name"] for m in d["metrics"]] == ["cosine", "rel-diff", "sqnr"]
    layers = {l["name"]: l for l in d["layers"]}
    assert layers["prob"]["values"]["sqnr"] == "inf"  # identical arrays
    assert layers["big"]["nonfinite"]["target_inf"] == 1 and layers["big"]["status"] == "nonfinite"
    assert layers["only_ref"]["status"] == "ref-only" and layers["only_ref"]["target_name"] is None
    assert layers["conv1"]["ref_shape"] == [1, 20, 6, 6]
    assert to_dict(rep) == d


def test_csv_has_one_row_per_layer_with_metric_columns(rng):
    rep = _report(rng)
    rows = list(csv.DictReader(io.StringIO(csv_text(rep))))
    assert [r["name"] for r in rows] == ["conv1", "prob", "only_ref", "big"]
    assert float(rows[0]["cosine"]) == rep.layers[0].values["cosine"]
    assert rows[1]["sqnr"] == "inf" and rows[3]["target_inf"] == "1"


def test_table_marks_first_divergence_and_sorts_worst(rng):
    rep = _report(rng)
    out = io.StringIO()
    render_table(rep, file=out, width=200)
    text = out.getvalue()
    line = next(l for l in text.splitlines() if "conv1" in l)
    assert "first divergence" in line and "1x20x6x6" in line
    assert "First divergence: conv1" in text
    out = io.StringIO()
    render_table(rep, sort="worst", file=out, width=200)
    body = [l for l in out.getvalue().splitlines() if any(n in l for n in ("conv1", "prob", "big"))]
    assert "big" in body[0]  # overflow ranks worst


def test_reporters_register_through_the_entry_point(monkeypatch):
    from parity.core import registry as plugins

    monkeypatch.setenv("PARITY_LOAD_PLUGINS", "reporters")  # only this entry point
    plugins.reset()
    reg = plugins.registry()["reporter"]
    assert set(reg) == {"table", "json", "csv", "html", "junit"}
    for entry in reg.values():
        assert entry.plugin == "reporters" and entry.package.split()[0] == "parity"
        assert type(entry.obj).__module__.startswith("parity_builtin_reporters")
        assert entry.obj.extension.startswith(".") and entry.obj.description


def test_each_reporter_writes_the_same_text_to_a_file_and_to_a_stream(rng, tmp_path):
    rep = _report(rng)
    for name in ("json", "csv", "table"):
        out = io.StringIO()
        assert write_report(rep, name, "-", {"width": 200}, stdout=out) is None
        p = tmp_path / f"r.{name}"
        write_report(rep, name, str(p), {"width": 200})
        assert p.read_text() == out.getvalue() and out.getvalue(), name


def test_table_quiet_prints_only_the_verdict(rng):
    rep = _report(rng)
    out = io.StringIO()
    write_report(rep, "table", "-", {"quiet": True}, stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("3 layers compared") and "First divergence: conv1" in lines[1]
    assert not any("│" in l or "LayerName" in l for l in lines)


def test_table_prints_values_the_way_their_metric_formats_them(rng):
    rep = _report(rng)
    text = io.StringIO()
    render_table(rep, file=text, width=200)
    conv = next(l for l in text.getvalue().splitlines() if "conv1" in l and "first divergence" in l)
    cos = rep.layers[0].values["cosine"]
    assert f"{cos:.7f}" in conv  # cosine keeps its nines
    assert f"{rep.layers[0].values['rel-diff']:.4f}%" in conv  # a percentage gets its sign

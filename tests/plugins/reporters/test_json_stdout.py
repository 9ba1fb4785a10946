"""`--json -` with several targets: standard output holds one valid JSON document (a list, one report
per target in the order given), never two documents one after the other."""
import io
import json
from pathlib import Path

import numpy as np

from parity import Activation
from parity.core.engine import compare_streams
from parity.core.report import write_stdout_many
from parity_builtin_reporters.json_report import to_dict
from support import cli

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo.py"


def test_several_reports_on_stdout_are_one_json_list():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 8)).astype(np.float32)
    reps = [compare_streams(iter([Activation("x", a, order=0)]), iter([Activation("x", a + d, order=0)]),
                            ["cosine"], target_label=t) for t, d in (("fp16", 1e-3), ("int8", 0.5))]
    out = io.StringIO()
    write_stdout_many(reps, "json", stdout=out)
    doc = json.loads(out.getvalue())  # one document: json.loads refuses two concatenated ones
    assert doc == [to_dict(r) for r in reps]
    assert [d["target"] for d in doc] == ["fp16", "int8"]


def test_cli_json_to_stdout_with_two_targets_is_one_document(tmp_path, capsys):
    rc, out, _ = cli(capsys, "compare", f"{ZOO}:lenet", "--ref", "torch", "--target", "ort", "--target",
                     "torch-fp16", "--json", "-", "--csv", tmp_path / "r.csv", "--workdir", tmp_path / "cache")
    assert rc == 0
    doc = json.loads(out)  # the written-file lines and blank lines went to standard error
    assert isinstance(doc, list) and [d["target"] for d in doc] == ["ort", "torch-fp16"]
    for d, t in zip(doc, ("ort", "torch-fp16")):
        assert d["schema"] == "parity.report" and d["layers"]
        assert (tmp_path / f"r.{t}.csv").is_file()  # the file reports are still one per target
    rc, out, _ = cli(capsys, "compare", f"{ZOO}:lenet", "--ref", "torch", "--target", "ort", "--json", "-",
                     "--workdir", tmp_path / "cache")
    assert rc == 0 and json.loads(out)["target"] == "ort"  # one target: one report object, as before


def test_csv_and_junit_on_stdout_with_several_targets_are_one_document_each():
    import csv
    import xml.etree.ElementTree as ET

    from parity_builtin_reporters.csv_report import csv_text

    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 8)).astype(np.float32)
    ref = [Activation("x", a, order=0), Activation("y", a * 2, order=1)]
    reps = [compare_streams(iter(ref), iter([Activation("x", a + d, order=0), Activation("y", a * 2 + d, order=1)]),
                            ["cosine"], thresholds={"cosine": 0.9999}, target_label=t)
            for t, d in (("fp16", 1e-4), ("int8", 0.5))]
    out = io.StringIO()
    write_stdout_many(reps, "csv", stdout=out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert out.getvalue().count("target,order,name") == 1  # one header
    assert [(r["target"], r["name"]) for r in rows] == [("fp16", "x"), ("fp16", "y"), ("int8", "x"), ("int8", "y")]
    for rep in reps:  # each target's rows are its own CSV rows, value for value
        own = list(csv.DictReader(io.StringIO(csv_text(rep))))
        assert [{k: r[k] for k in own[0]} for r in rows if r["target"] == rep.target_label] == own
    out = io.StringIO()
    write_stdout_many(reps, "junit", stdout=out)
    root = ET.fromstring(out.getvalue().split("?>", 1)[1])  # one XML document
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["parity reference vs fp16", "parity reference vs int8"]
    fails = sum(len(s.findall("testcase/failure")) for s in suites)
    assert root.get("tests") == "4" and root.get("failures") == str(fails) and fails >= 2  # int8's both fail

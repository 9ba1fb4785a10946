"""The JUnit reporter, through the CLI: one testsuite, one testcase per layer, failures = failing layers.

Checked against the JSON report of the same run (parsed with xml.etree, as a CI system would).
"""
import json
import xml.etree.ElementTree as ET

import numpy as np

from parity.cli import main


def _dumps(tmp_path, rng):
    a = rng.standard_normal(512).astype(np.float32)
    ref = {"l0_good": a, "l1_noisy": a * 2, "l2_worse": a * 3, "l3_only_ref": a}
    tgt = {"l0_good": a, "l1_noisy": a * 2 + 0.3 * rng.standard_normal(512).astype(np.float32),
           "l2_worse": a * 3 + 3 * rng.standard_normal(512).astype(np.float32)}
    np.savez(tmp_path / "ref.npz", **ref)
    np.savez(tmp_path / "tgt.npz", **tgt)
    return str(tmp_path / "ref.npz"), str(tmp_path / "tgt.npz")


def test_junit_has_a_testcase_per_layer_and_failures_with_metric_values(tmp_path, rng, capsys):
    ref, tgt = _dumps(tmp_path, rng)
    xml_path, js = tmp_path / "out.xml", tmp_path / "r.json"
    rc = main(["analyze", ref, tgt, "--metrics", "cosine,rel-diff", "--threshold", "cosine=0.999,rel-diff=90",
               "--report", f"junit={xml_path}", "--json", str(js)])
    # layers fail the threshold (exit 1 under the exit rule); the reports are written all the same
    assert rc in (0, 1) and f"junit report written to {xml_path}" in capsys.readouterr().out
    rep = json.loads(js.read_text())
    root = ET.parse(xml_path).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1 and suites[0].get("name") == f"parity {rep['reference']} vs {rep['target']}"
    cases = suites[0].findall("testcase")
    assert [c.get("name") for c in cases] == [l["name"] for l in rep["layers"]]
    failing = [l["name"] for l in rep["layers"] if l["status"] in ("below", "nonfinite")]
    assert failing == ["l1_noisy", "l2_worse"]
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == failing
    assert suites[0].get("failures") == "2" and suites[0].get("tests") == str(len(cases))
    assert suites[0].get("skipped") == "1"
    by = {l["name"]: l for l in rep["layers"]}
    for c in cases:
        f = c.find("failure")
        if f is None:
            continue
        cos = by[c.get("name")]["values"]["cosine"]
        rd = by[c.get("name")]["values"]["rel-diff"]
        assert f"cosine {cos:.7f} < threshold 0.9990000" in f.get("message")
        assert f"cosine = {cos:.7f} (threshold >= 0.9990000: FAIL)" in f.text
        assert f"rel-diff = {rd:.4f}% (threshold >= 90.0000%: {'FAIL' if rd < 90 else 'ok'})" in f.text
    assert cases[1].find("failure").get("message").startswith("first divergence: ")
    skip = next(c for c in cases if c.get("name") == "l3_only_ref").find("skipped")
    assert skip is not None and skip.get("message").startswith("ref-only")
    props = {p.get("name"): p.get("value") for p in suites[0].find("properties")}
    assert props["first_divergent"] == rep["first_divergent"] == "l1_noisy"
    assert props["threshold.cosine"] == "0.9990000"

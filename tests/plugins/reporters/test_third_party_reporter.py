"""Adding a reporter is one new file: a class and a register_reporters(register) hook, nothing in the core."""
import json
from typing import Any, Mapping, TextIO

import numpy as np

from parity import hookimpl
from parity.cli import main
from parity.contract.report import Report
from parity.contract.reporter import Reporter
from parity.core import registry as plugins


class MarkdownReporter(Reporter):
    """What a third party would write: the failing layers as a Markdown table, values as the metric prints them."""

    name = "markdown"
    description = "failing layers as a Markdown table"
    extension = ".md"

    def write(self, report: Report, out: TextIO, options: Mapping[str, Any]) -> None:
        p = report.primary
        out.write(f"# {report.ref_label} vs {report.target_label}: {'PASS' if report else 'FAIL'}\n\n")
        out.write(f"| layer | {p.name} |\n|---|---|\n")
        for layer in report.layers:
            if layer.failing:
                out.write(f"| {layer.name} | {p.format(layer.values.get(p.name))} |\n")


class Plugin:
    @hookimpl
    def register_reporters(self, register):
        register(MarkdownReporter())


def _dumps(tmp_path, rng):
    a, b = rng.standard_normal(256).astype(np.float32), rng.standard_normal(256).astype(np.float32)
    np.savez(tmp_path / "ref.npz", good=a, bad=b)
    np.savez(tmp_path / "tgt.npz", good=a, bad=b + rng.standard_normal(256).astype(np.float32))
    return str(tmp_path / "ref.npz"), str(tmp_path / "tgt.npz")


def test_third_party_reporter_through_the_cli(tmp_path, rng, capsys):
    ref, tgt = _dumps(tmp_path, rng)
    plugin = Plugin()
    plugins.register_plugin(plugin, name="markdown-test")
    try:
        out, js = tmp_path / "out.md", tmp_path / "r.json"
        rc = main(["analyze", ref, tgt, "--metrics", "cosine", "--report", f"markdown={out}", "--json", str(js)])
        printed = capsys.readouterr().out
        assert rc == 1  # the layer "bad" fails the threshold: a failing comparison exits 1, reports still written
        assert plugins.registry()["reporter"]["markdown"].plugin == "markdown-test"
        text = out.read_text()
        assert text.startswith(f"# {ref} vs {tgt}: FAIL")
        bad = json.loads(js.read_text())["layers"]
        cos = next(l for l in bad if l["name"] == "bad")["values"]["cosine"]
        assert f"| bad | {cos:.7f} |" in text and "| good |" not in text
        # the table still goes to stdout, and every written report is named
        assert "first divergence" in printed
        assert f"markdown report written to {out}" in printed and f"json report written to {js}" in printed

        # NAME alone: to standard output, instead of the table
        rc = main(["analyze", ref, tgt, "--metrics", "cosine", "--report", "markdown"])
        printed = capsys.readouterr().out
        assert rc == 1 and printed == text
    finally:
        plugins.unregister_plugin(plugin)


def test_json_to_stdout_is_pure_json_and_paths_go_to_stderr(tmp_path, rng, capsys):
    ref, tgt = _dumps(tmp_path, rng)
    csv_path = tmp_path / "r.csv"
    rc = main(["analyze", ref, tgt, "--report", "json=-", "--csv", str(csv_path)])
    cap = capsys.readouterr()
    assert rc == 1  # "bad" fails
    assert json.loads(cap.out)["first_divergent"] == "bad"
    assert f"csv report written to {csv_path}" in cap.err and csv_path.read_text().startswith("order,name")

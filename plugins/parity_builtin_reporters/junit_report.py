"""The JUnit XML reporter: a testsuite per target, a testcase per layer, so CI shows failing layers.

Why JUnit: every CI system (GitHub Actions, GitLab, Jenkins, Azure) renders JUnit XML as a list of
passed and failed tests without a plugin. One report is one comparison (one target; with several
``--target`` the CLI writes one file per target, suffixed by the target's name), so the file holds one
``<testsuite>``. A layer that fails the primary threshold, or produces new NaN/Inf, is a
``<failure>`` carrying every metric's value and threshold; a layer present on one side only, or whose
shapes could not be compared, is ``<skipped>`` with the reason: it was not judged.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, Mapping, Sequence, TextIO

from parity.contract.report import FAILING, NONFINITE, OK, LayerResult, Report
from parity.contract.reporter import Reporter


def _value(layer: LayerResult, name: str) -> float | None:
    """The value the status is judged by: the worst over inputs when there were several."""
    return layer.worst.get(name, layer.values.get(name))


def _metric_lines(report: Report, layer: LayerResult) -> list[str]:
    out = []
    for m in report.metrics:
        v = _value(layer, m.name)
        if v is None:
            continue
        line = f"{m.name} = {m.format(v)}"
        if m.threshold is not None:
            bad = m.fails(v, m.threshold)
            line += f" (threshold {'>=' if m.higher_is_better else '<='} {m.format(m.threshold)}: {'FAIL' if bad else 'ok'})"
        if layer.n_inputs > 1:
            line += f", worst of {layer.n_inputs} inputs (input {layer.worst_input.get(m.name)})"
        out.append(line)
    if report.primary is not None and report.primary.name in layer.local:
        out.append(f"local {report.primary.name} (layer alone) = {report.primary.format(layer.local[report.primary.name])}")
    if layer.culprit_rank is not None:
        out.append(f"culprit #{layer.culprit_rank}" + (f": {layer.meta['culprit_cause']}"
                                                       if layer.meta.get("culprit_cause") else ""))
    elif layer.caused_by is not None:
        out.append(f"not a culprit: grouped under {_culprit_label(report, layer.caused_by)}"
                   + (f" ({layer.meta['consequence']})" if layer.meta.get("consequence") else ""))
    if layer.range.get("risk"):
        out.append(f"range: {layer.range['risk']}")
    out += layer.notes
    return out


def _culprit_label(report: Report, name: str) -> str:
    """``culprit #2 fc2``: a culprit by its place in the report's one ranking."""
    ranked = report.summary.get("culprits") or []
    return f"culprit #{ranked.index(name) + 1} {name}" if name in ranked else f"culprit {name}"


def _failure_message(report: Report, layer: LayerResult) -> str:
    p = report.primary
    if layer.status == NONFINITE:
        return (f"{layer.meta.get('target_new_nonfinite', 0)} NaN/Inf values in {report.target_label} "
                f"where {report.ref_label} is finite")
    v = _value(layer, p.name)
    return f"{p.name} {p.format(v)} {'<' if p.higher_is_better else '>'} threshold {p.format(p.threshold)}"


def junit_tree(report: Report) -> ET.ElementTree:
    first = report.first_divergent
    suite_name = f"parity {report.ref_label} vs {report.target_label}"
    cls = f"parity.{report.target_label}"
    suites = ET.Element("testsuites", name="parity")
    suite = ET.SubElement(suites, "testsuite", name=suite_name)
    props = ET.SubElement(suite, "properties")
    for k, v in (("reference", report.ref_label), ("target", report.target_label),
                 ("first_divergent", first.name if first else ""),
                 ("culprits", ",".join(report.summary.get("culprits") or [])),
                 *[(f"threshold.{m.name}", m.format(m.threshold)) for m in report.metrics if m.threshold is not None]):
        ET.SubElement(props, "property", name=k, value=str(v))
    failures = skipped = 0
    for layer in report.layers:
        case = ET.SubElement(suite, "testcase", name=layer.name, classname=cls, time="0")
        lines = _metric_lines(report, layer)
        if layer.status in FAILING:
            failures += 1
            tag = "first divergence: " if layer is first else ""
            if layer.culprit_rank is not None:
                tag += f"culprit #{layer.culprit_rank}: "
            elif layer.caused_by is not None:
                tag += f"(grouped under {_culprit_label(report, layer.caused_by)}) "
            f = ET.SubElement(case, "failure", message=tag + _failure_message(report, layer), type=layer.status)
            f.text = "\n".join(lines)
        elif layer.status != OK:
            skipped += 1
            why = {"ref-only": f"only in {report.ref_label}", "target-only": f"only in {report.target_label}"}
            ET.SubElement(case, "skipped", message=f"{layer.status}: " + why.get(layer.status, "not compared")
                          + ("; " + "; ".join(layer.notes) if layer.notes else "")
                          + (f"; grouped under {_culprit_label(report, layer.caused_by)}" if layer.caused_by else "")
                          + (f"; {_culprit_label(report, layer.name)}" if layer.culprit_rank is not None else ""))
        elif lines:
            ET.SubElement(case, "system-out").text = "\n".join(lines)
    for el in (suites, suite):
        el.set("tests", str(len(report.layers)))
        el.set("failures", str(failures))
        el.set("errors", "0")
    suite.set("skipped", str(skipped))
    ET.indent(suites)
    return ET.ElementTree(suites)


def _xml_text(root: ET.Element) -> str:
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def junit_text(report: Report) -> str:
    return _xml_text(junit_tree(report).getroot())


class JunitReporter(Reporter):
    name = "junit"
    description = "JUnit XML for CI: a testsuite per target, a testcase per layer, failures with metric values"
    extension = ".xml"

    def write(self, report: Report, out: TextIO, options: Mapping[str, Any]) -> None:
        out.write(junit_text(report))

    def write_many(self, reports: Sequence[Report], out: TextIO, options: Mapping[str, Any]) -> None:
        """Several targets on standard output: one ``<testsuites>`` document, a testsuite per target
        (two XML documents one after the other would not parse)."""
        suites = [s for r in reports for s in junit_tree(r).getroot()]
        root = ET.Element("testsuites", name="parity")
        for key in ("tests", "failures", "errors"):
            root.set(key, str(sum(int(s.get(key, "0")) for s in suites)))
        root.extend(suites)
        ET.indent(root)
        out.write(_xml_text(root))

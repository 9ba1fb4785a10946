"""Report dispatch in the core: --report parsing, stdout, atomic files with ordinary permissions."""
import io
import os
import stat

import numpy as np
import pytest

from parity import Activation, ParityError, hookimpl
from parity.contract.errors import UsageError
from parity.contract.reporter import Reporter
from parity.core import registry as plugins
from parity.core.engine import compare_streams
from parity.core.report import ReportRequest, get_reporters, parse_report_arg, write_report, write_reports


def _report(rng):
    a = rng.standard_normal(64).astype(np.float32)
    return compare_streams(iter([Activation("x", a, order=0)]), iter([Activation("x", a + 0.1, order=0)]),
                           ["cosine"])


@pytest.mark.parametrize("text,expected", [
    ("json=out.json", ReportRequest("json", "out.json")),
    ("json", ReportRequest("json", "-")),
    ("table=-", ReportRequest("table", "-")),
    ("csv=dir/a=b.csv", ReportRequest("csv", "dir/a=b.csv")),
])
def test_parse_report_arg(text, expected):
    assert parse_report_arg(text) == expected


@pytest.mark.parametrize("text", ["=x.json", "json="])
def test_parse_report_arg_refuses_empty_parts(text):
    with pytest.raises(UsageError):
        parse_report_arg(text)


def test_unknown_reporter_lists_known_ones_and_one_stdout_only():
    with pytest.raises(ParityError, match=r"unknown reporter 'nope'.*csv, html, json, junit, table"):
        get_reporters([ReportRequest("nope", "x")])
    with pytest.raises(UsageError, match="only one report can go to standard output"):
        get_reporters([ReportRequest("table"), ReportRequest("json")])


def test_file_report_honours_umask_and_leaves_no_temp_file(rng, tmp_path):
    old = os.umask(0o022)
    try:
        p = tmp_path / "sub" / "r.json"
        written = write_reports(_report(rng), [ReportRequest("json", str(p)), ReportRequest("csv", "-")],
                                stdout=io.StringIO())
        assert written == [("json", str(p))]
        assert stat.S_IMODE(p.stat().st_mode) == 0o644  # like open(p, "w"), not mkstemp's 0600
        os.chmod(p, 0o640)
        write_report(_report(rng), "json", str(p))
        assert stat.S_IMODE(p.stat().st_mode) == 0o640  # a replaced file keeps its mode
    finally:
        os.umask(old)
    assert os.listdir(p.parent) == ["r.json"]


class _Broken(Reporter):
    name = "broken-test"
    extension = ".txt"

    def write(self, report, out, options):
        out.write("half a report")
        raise RuntimeError("reporter bug")


class _BrokenPlugin:
    @hookimpl
    def register_reporters(self, register):
        register(_Broken())


def test_a_failing_reporter_never_replaces_a_good_file(rng, tmp_path):
    p = tmp_path / "r.txt"
    p.write_text("good")
    plugin = _BrokenPlugin()
    plugins.register_plugin(plugin, name="broken-reporter-test")
    try:
        with pytest.raises(RuntimeError, match="reporter bug"):
            write_report(_report(rng), "broken-test", str(p))
    finally:
        plugins.unregister_plugin(plugin)
    assert p.read_text() == "good" and os.listdir(tmp_path) == ["r.txt"]

"""Report dispatch: hand a :class:`~parity.contract.report.Report` to the selected reporters.

The reporters themselves (table, JSON, CSV, and any a plugin adds through
``register_reporters(register)``) live in plugins; the core only looks them up by name and
decides where each one writes: standard output for ``-``, otherwise a temporary file beside the
destination that is renamed into place when the reporter returns (a failed reporter never leaves a
half-written file, and never replaces a good one).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence, TextIO

from parity.contract.atomic import atomic_text, write_failure
from parity.contract.errors import UsageError
from parity.contract.report import Report, summary_lines
from parity.contract.reporter import Reporter

__all__ = ["STDOUT", "ReportRequest", "get_reporters", "parse_report_arg", "summary_lines", "write_report",
           "write_reports", "write_stdout_many", "check_report_options"]

#: the path that means standard output
STDOUT = "-"


@dataclass(frozen=True)
class ReportRequest:
    """One ``--report NAME=PATH``: which reporter, and where (``-``: standard output)."""

    name: str
    path: str = STDOUT

    @property
    def to_stdout(self) -> bool:
        return self.path == STDOUT


def parse_report_arg(text: str) -> ReportRequest:
    """``json=out.json`` -> (json, out.json); ``table`` and ``table=-`` -> (table, stdout)."""
    name, sep, path = text.partition("=")
    name = name.strip()
    if not name:
        raise UsageError(f"--report {text!r}: expected NAME=PATH, NAME=- or NAME (see 'parity plugins' for names)")
    if sep and not path:
        raise UsageError(f"--report {text!r}: empty path. Note: use {name}=- (or just {name}) for standard output.")
    return ReportRequest(name, path if sep else STDOUT)


def get_reporters(requests: Iterable[ReportRequest]) -> list[Reporter]:
    """Look every requested reporter up before anything runs (a typo should not cost a comparison)."""
    from parity.core.registry import get_reporter

    reqs = list(requests)
    to_stdout = [r.name for r in reqs if r.to_stdout]
    if len(to_stdout) > 1:
        raise UsageError(f"only one report can go to standard output; asked for {', '.join(to_stdout)}. "
                         f"Note: give the others a path, NAME=PATH.")
    return [get_reporter(r.name) for r in reqs]


def check_report_options(requests: Iterable[ReportRequest], options: Mapping[str, Any],
                         metrics: Sequence[str]) -> None:
    """Each requested reporter's own check of its options (the table's ``--columns`` names), before
    anything runs: :meth:`~parity.contract.reporter.Reporter.check_options`."""
    for rep in get_reporters(requests):
        rep.check_options(options, metrics)


def write_report(report: Report, name: str | Reporter, path: str = STDOUT,
                 options: Mapping[str, Any] | None = None, stdout: TextIO | None = None) -> str | None:
    """Write ``report`` with one reporter (a name or an object) to ``path``; returns the path, or None for stdout."""
    from parity.core.registry import get_reporter

    reporter = get_reporter(name) if isinstance(name, str) else name
    opts = dict(options or {})
    if path == STDOUT:
        out = stdout or sys.stdout
        reporter.write(report, out, opts)
        out.flush()
        return None
    try:
        with atomic_text(path) as f:
            reporter.write(report, f, opts)
    except OSError as e:  # disk full, quota, I/O error: one line naming the file, not an internal error
        raise write_failure(f"{reporter.name} report", path, e) from None
    return str(path)


def write_reports(report: Report, requests: Iterable[ReportRequest], options: Mapping[str, Any] | None = None,
                  stdout: TextIO | None = None) -> list[tuple[str, str]]:
    """Write every requested report; returns (reporter name, path) of each file written."""
    reqs = list(requests)
    reporters = get_reporters(reqs)
    written = []
    for req, rep in zip(reqs, reporters):
        p = write_report(report, rep, req.path, options, stdout)
        if p is not None:
            written.append((req.name, p))
    return written


def write_stdout_many(reports: Sequence[Report], name: str | Reporter, options: Mapping[str, Any] | None = None,
                      stdout: TextIO | None = None) -> None:
    """Several reports (one per target) to standard output as the reporter's one document
    (:meth:`~parity.contract.reporter.Reporter.write_many`: JSON writes a list), not one document each."""
    from parity.core.registry import get_reporter

    reporter = get_reporter(name) if isinstance(name, str) else name
    out = stdout or sys.stdout
    reporter.write_many(list(reports), out, dict(options or {}))
    out.flush()

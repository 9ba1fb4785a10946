"""The reporter contract: one way to show or save a :class:`~parity.contract.report.Report`.

Why a hook: an HTML page, a JUnit file for CI or a team's own dashboard format should each be
one new file in a plugin, not an edit of parity's CLI. The built-in table, JSON and CSV outputs
are reporters registered exactly like a third-party one.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence, TextIO

from parity.contract.report import Report


class Reporter:
    """Base class for a reporter plugin.

    ``write`` renders ``report`` onto ``out``, a text stream: the terminal, or a temporary file
    that parity renames into place only when ``write`` returns (a failed report never leaves a
    half-written file). ``options`` carries the CLI's report settings (``sort``, ``quiet``,
    ``width``, ``console`` ...); a reporter ignores what it does not know.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: file suffix a path for this reporter usually has (``.json``), for help texts and checks
    extension: ClassVar[str] = ""

    def write(self, report: Report, out: TextIO, options: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def check_options(self, options: Mapping[str, Any], metrics: Sequence[str]) -> None:
        """Refuse options this reporter cannot honour (a :class:`~parity.contract.errors.UsageError`),
        called before anything runs, so a typo does not cost a comparison. ``metrics``: the metric
        names the report will have. The default accepts everything."""

    def write_many(self, reports: Sequence[Report], out: TextIO, options: Mapping[str, Any]) -> None:
        """Several reports (one per target of one ``parity compare``) on one stream, standard output.

        The default writes them one after another with a blank line between, which suits text for
        people; a machine-readable format overrides it so that the stream stays one valid document
        (the JSON reporter writes one list).
        """
        for k, report in enumerate(reports):
            if k:
                out.write("\n")
            self.write(report, out, options)

    def __repr__(self) -> str:
        return f"<reporter {self.name}>"

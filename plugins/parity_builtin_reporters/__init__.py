"""Built-in reporters plugin for parity: the terminal table, JSON, CSV, HTML and JUnit XML.

Registered through the ``parity`` entry-point group exactly like a third-party plugin and written
against the contract only (:mod:`parity.contract.reporter`, :mod:`parity.contract.report`): one
file per reporter. Selected with ``--report NAME=PATH`` (``--json``/``--csv``/``--html`` are shorthands).
"""
from __future__ import annotations

from parity import hookimpl

from .csv_report import CsvReporter
from .html_report import HtmlReporter
from .json_report import JsonReporter
from .junit_report import JunitReporter
from .table import TableReporter

__all__ = ["CsvReporter", "HtmlReporter", "JsonReporter", "JunitReporter", "TableReporter", "register_reporters"]


@hookimpl
def register_reporters(register) -> None:
    register(TableReporter())
    register(JsonReporter())
    register(CsvReporter())
    register(HtmlReporter())
    register(JunitReporter())

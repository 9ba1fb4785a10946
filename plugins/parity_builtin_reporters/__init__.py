"""Built-in reporters plugin for parity: the terminal table, JSON and CSV.

Registered through the ``parity`` entry-point group exactly like a third-party plugin and written
against the contract only (:mod:`parity.contract.reporter`, :mod:`parity.contract.report`): one
file per reporter. Selected with ``--report NAME=PATH`` (``--json``/``--csv`` are shorthands).
"""
from __future__ import annotations

from parity import hookimpl

from .csv_report import CsvReporter
from .json_report import JsonReporter
from .table import TableReporter

__all__ = ["CsvReporter", "JsonReporter", "TableReporter", "register_reporters"]


@hookimpl
def register_reporters(register) -> None:
    register(TableReporter())
    register(JsonReporter())
    register(CsvReporter())

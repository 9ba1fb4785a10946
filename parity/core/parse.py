"""Parsing of what a user writes for a comparison: thresholds, goals, byte sizes, layer selections, input shapes.

Why one module: the command line (``--threshold cosine=0.999``) and the Python API
(``threshold={"cosine": 0.999}``) say the same things in different spellings. Each value is parsed
here, once, by the same rules, and a refusal names what the user wrote in the front end they used
(:mod:`parity.contract.frontend`: ``--goal`` on the command line, ``goal`` in Python). Every refusal
is a :class:`~parity.contract.errors.UsageError` (exit 2): a wrong value, not a bad file.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from parity.contract import frontend
from parity.contract.errors import ParityError, UsageError, first_line
from parity.contract.source import LayerSelection

__all__ = ["known", "parse_bytes", "parse_goal", "parse_layers", "parse_shapes", "parse_thresholds",
           "split_layers"]

_THRESHOLD_HINT = "Note: use 0.999 or cosine=0.999,rel-diff=99."


def known(kind: str, name: str, option: str) -> Any:
    """A registered plugin object; an unknown name the user wrote is a usage error naming ``option``."""
    from parity.core import registry as r

    get = {"metric": r.get_metric, "reporter": r.get_reporter, "source": r.get_source, "matcher": r.get_matcher,
           "dump-format": r.get_dump_format}[kind]
    try:
        return get(name)
    except UsageError:
        raise
    except ParityError as e:
        raise UsageError(f"{option}: {e}") from None


def _selected(metrics: Sequence[str] | None) -> list[str]:
    from parity.core.engine import DEFAULT_METRICS

    return list(metrics or DEFAULT_METRICS)


def parse_thresholds(value: str | float | Mapping[str, Any] | None,
                     metrics: Sequence[str] | None) -> dict[str, float]:
    """Pass thresholds by metric name.

    ``0.999`` (a number or its text) applies to the first, primary, metric; ``"cosine=0.999,rel-diff=99"``
    or ``{"cosine": 0.999}`` name them. Each must name a selected metric and lie in the values that
    metric takes.
    """
    from parity.core.preflight import check_metric_value

    if value is None:
        return {}
    opt = frontend.option("threshold")
    selected = _selected(metrics)
    if isinstance(value, Mapping):
        parts = [(str(k).strip(), v, f"{k}={v}") for k, v in value.items()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        parts = [("", value, f"{value}")]
    else:
        text = str(value)
        items = [p for p in text.split(",") if p.strip()]
        if not items:
            raise UsageError(f"{opt} {text!r} gives no value. {_THRESHOLD_HINT}")
        parts = [(p.rpartition("=")[0].strip(), p.rpartition("=")[2], p) for p in items]
    out: dict[str, float] = {}
    for name, raw, part in parts:
        name = name or selected[0]
        try:
            number = float(raw)
        except (TypeError, ValueError):
            raise UsageError(f"{opt}: {part!r} is not a number. {_THRESHOLD_HINT}") from None
        if name not in selected:
            raise UsageError(f"{opt} {part!r}: metric {name!r} is not selected. "
                             f"Note: selected metrics are {', '.join(selected)} ({frontend.option('metrics')}).")
        out[name] = check_metric_value(known("metric", name, opt), number, f"{opt} {part.strip()}")
    return out


def parse_goal(goal: str | float, primary: str) -> tuple[str, float]:
    """``"cosine=0.999"``, or ``0.999`` / ``"0.999"`` for the primary metric, as (metric, value), checked
    against the values the metric takes (what ``parity fix --goal`` and ``report.fix(goal)`` reach for)."""
    from parity.core.preflight import check_metric_value

    opt = frontend.option("goal")
    if isinstance(goal, (int, float)) and not isinstance(goal, bool):
        name, value = primary, float(goal)
    else:
        name, sep, val = str(goal).rpartition("=")
        name = name.strip() if sep else primary
        try:
            value = float(val)
        except ValueError:
            raise UsageError(f"{opt} {goal!r}: expected METRIC=VALUE, e.g. cosine=0.999") from None
    check_metric_value(known("metric", name, opt), value, f"{opt} {goal}")
    return name, value


def parse_bytes(value: str | int | float | None, key: str) -> int | None:
    """``2G``, ``512M``, ``1.5GiB``, ``1000000`` (or an int) as bytes; ``None`` stays ``None``.

    ``key`` is the setting (``max_memory``, ``step_bytes``), named as the front end spells it.
    """
    from parity.contract.options import parse_bytes as size

    if value is None:
        return None
    try:
        return size(value, frontend.option(key))
    except UsageError:
        raise
    except ParityError as e:
        raise UsageError(str(e)) from None


DEVICE_SCORING = ("auto", "on", "off")


def parse_device_scoring(value: str | bool | None) -> str:
    """``--device-scoring`` / ``device_scoring=``: auto, on or off (True/False read on/off)."""
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "on" if value else "off"
    v = str(value).strip().lower()
    if v not in DEVICE_SCORING:
        raise UsageError(f"{frontend.option('device_scoring')} {value!r}: expected auto, on or off.")
    return v


def device_records(mode: str, device: str) -> bool:
    """Whether a run takes device records: ``on``, or ``auto`` with a CUDA device."""
    return mode == "on" or (mode == "auto" and device.startswith("cuda"))


def split_layers(layers: str | Sequence[str] | None) -> tuple[str | None, tuple[str, ...]]:
    """``--layers REGEX|@FILE`` (a string) or a list of layer names as (pattern, names)."""
    if layers is None or isinstance(layers, str):
        return layers or None, ()
    return None, tuple(str(n) for n in layers)


def parse_layers(pattern: str | None, names: Sequence[str] = ()) -> LayerSelection | None:
    """The contract's layer selection: a regex, ``@FILE`` (names one a line, ``#`` comments), or names.

    Checked before any model runs: an unreadable file, a file naming no layer, or a bad regex is
    refused here with what the user wrote.
    """
    if not pattern and not names:
        return None
    chosen = set(names)
    if pattern and pattern.startswith("@"):
        path = Path(pattern[1:])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ParityError(f"{frontend.given('layers', pattern)}: cannot read {path} ({first_line(e)}).") from None
        chosen |= {ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")}
        if not chosen:
            raise ParityError(f"{frontend.given('layers', pattern)}: {path} names no layer.")
        pattern = None
    if pattern:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ParityError(f"{frontend.option('layers')} {pattern!r}: not a regular expression ({e}).") from None
    return LayerSelection(pattern or None, frozenset(chosen))


def parse_shapes(shapes: Sequence[str] | Mapping[str, Any] | None, dtypes: Mapping[str, Any] | None = None,
                 ) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Input shapes and dtypes: ``["x:1x3x224x224", "ids:1x16:int64"]`` (``--input-shape``, repeated)
    or ``{"x": (1, 3, 224, 224), "ids": ((1, 16), "int64")}`` with ``dtypes={"ids": torch.int64}``
    (``input_shapes=``/``input_dtypes=``), as (name -> dims, name -> numpy dtype name)."""
    from parity.core.inputs import input_dtype, parse_input_dtypes, parse_input_shapes

    if shapes is None or not isinstance(shapes, Mapping):
        items = list(shapes or [])
        out_shapes, out_dtypes = parse_input_shapes(items), parse_input_dtypes(items)
    else:
        out_shapes, out_dtypes = {}, {}
        for name, value in shapes.items():
            name = str(name)
            if (isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], (tuple, list))
                    and not isinstance(value[1], (int, np.integer))):
                value, out_dtypes[name] = value[0], input_dtype(value[1], name)
            try:
                dims = tuple(int(d) for d in value)
            except (TypeError, ValueError):
                raise UsageError(f"input_shapes[{name!r}] = {value!r} is not a shape. Note: give a tuple of sizes "
                                 f"such as (1, 3, 224, 224), or (shape, dtype) such as ((1, 16), 'int64')") from None
            if not dims or min(dims) < 1:
                raise UsageError(f"input_shapes[{name!r}] = {value!r}: every size must be at least 1 (an empty "
                                 f"input compares nothing). Note: e.g. (1, 3, 224, 224)")
            out_shapes[name] = dims
    for name, value in (dtypes or {}).items():
        out_dtypes[str(name)] = input_dtype(value, str(name))
    return out_shapes, out_dtypes

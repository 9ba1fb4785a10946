"""The classic TensorRT sample text dump: a shape line, then the values.

::

    [1, 10, 1, 1]
    0.0123 -1.5 nan
    inf, -inf, 3e-05

Values are float32 (the text stores no dtype); a folder manifest restores the original
dtype on reading. Parsing goes through numpy's C text parser in one call; the slow
token-by-token scan only runs to locate an error.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from parity import Activation, ParityError
from parity.contract.dumpformat import DumpFormat, atomic_write_path

_BRACKETS = {"[": "]", "(": ")"}
_X_FORM = re.compile(r"^\d+(?:\s*[xX]\s*\d+)+$")
_NUMBER = re.compile(
    rb"^[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|nan(?:\(\w*\))?|inf(?:inity)?)$", re.IGNORECASE)
_SPLIT = re.compile(rb"[\s,]+")
VALUES_PER_LINE = 8
_CHUNK = VALUES_PER_LINE * 16384


def parse_shape(line: str) -> tuple[int, ...] | None:
    """``[1, 10, 1, 1]``, ``(1, 10)``, ``[1 10]``, ``[]`` (a scalar) or ``1x10``; None if not a shape."""
    s = line.strip()
    if not s:
        return None
    if s[0] in _BRACKETS:
        if s[-1] != _BRACKETS[s[0]]:
            return None
        inner = s[1:-1].strip()
        if inner.endswith(","):
            inner = inner[:-1].rstrip()
        if not inner:
            return ()
        tokens = re.split(r"\s*,\s*|\s+", inner)
        if not all(t.isdigit() and t.isascii() for t in tokens):
            return None
        return tuple(int(t) for t in tokens)
    if _X_FORM.match(s):
        return tuple(int(t) for t in re.split(r"\s*[xX]\s*", s))
    return None


def format_shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def _locate_bad_token(body: bytes, first_line: int) -> tuple[int, bytes] | None:
    for n, line in enumerate(body.split(b"\n"), start=first_line):
        for tok in _SPLIT.split(line.strip()):
            if tok and not _NUMBER.match(tok):
                return n, tok
    return None


def read_text_dump(path: Path) -> np.ndarray:
    """Parse one text dump into a float32 array of the declared shape."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ParityError(f"{path}: cannot read: {e.strerror or e}") from e
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        raise ParityError(f"{path}: file is empty. Note: a text dump starts with the shape line, "
                          f"e.g. [1, 10, 1, 1], followed by the values.")
    nl = data.find(b"\n")
    head, body = (data, b"") if nl < 0 else (data[:nl], data[nl + 1:])
    head_text = head.decode("utf-8", errors="replace").strip()
    shape = parse_shape(head_text)
    if shape is None:
        shown = head_text if len(head_text) <= 60 else head_text[:57] + "..."
        raise ParityError(f"{path}: line 1 is not a shape line: {shown!r}. Note: the first line must be "
                          f"the shape, e.g. [1, 10, 1, 1], (1, 10) or 1x10; the values follow on later lines.")
    expected = math.prod(shape)
    if b"," in body:
        body = body.replace(b",", b" ")
    if not body.strip():
        values = np.empty(0, dtype=np.float32)  # np.fromstring gives [-1.] for blank input
    else:
        try:
            values = np.fromstring(body, dtype=np.float32, sep=" ")
        except ValueError:
            bad = _locate_bad_token(body, 2)
            if bad is None:
                raise ParityError(f"{path}: the values could not be parsed as numbers. Note: values are "
                                  f"decimal numbers, nan, inf or -inf, separated by spaces, commas or newlines.")
            line_no, tok = bad
            shown = tok.decode("utf-8", errors="replace")
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise ParityError(f"{path}: line {line_no} holds {shown!r}, which is not a number. Note: values are "
                              f"decimal numbers, nan, inf or -inf, separated by spaces, commas or newlines.") from None
    if values.size != expected:
        hint = " (file truncated?)" if values.size < expected else ""
        raise ParityError(f"{path}: holds {values.size} values but shape {format_shape(shape)} needs "
                          f"{expected}{hint}. Note: the value count must equal the product of the shape.")
    return values.reshape(shape)


class TrtTextFormat(DumpFormat):
    """The TensorRT sample dump: shape line ``[1, 10, 1, 1]`` then float values, one file per layer."""

    name = "trt-text"
    description = "TensorRT sample text dump: shape line like [1, 10, 1, 1], then float32 values (.txt)"
    extensions = (".txt",)
    multi = False

    def read(self, path: Path) -> Iterator[Activation]:
        path = Path(path)
        yield Activation(name=path.stem, array=read_text_dump(path))

    def write_one(self, record: Activation, path: Path) -> None:
        arr = np.asarray(record.array)
        if arr.dtype.kind not in "biuf":
            raise ParityError(f"layer {record.name!r}: dtype {arr.dtype} cannot be written as trt-text. "
                              f"Note: the text dump holds real numbers; use the npy format.")
        flat = arr.reshape(-1)
        line = " ".join(["%.9g"] * VALUES_PER_LINE) + "\n"
        with atomic_write_path(path) as tmp, open(tmp, "w", encoding="ascii", newline="\n") as fh:
            fh.write(format_shape(arr.shape) + "\n")
            for start in range(0, flat.size, _CHUNK):
                vals = flat[start:start + _CHUNK].astype(np.float32).tolist()
                full = len(vals) // VALUES_PER_LINE * VALUES_PER_LINE
                if full:
                    fh.write((line * (full // VALUES_PER_LINE)) % tuple(vals[:full]))
                if full < len(vals):
                    fh.write(" ".join("%.9g" % v for v in vals[full:]) + "\n")

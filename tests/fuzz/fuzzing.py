"""What every fuzz test shares: byte and JSON mutations, and the one check of a reader's outcome.

The check: a reader given any bytes either returns valid records (numeric arrays, every byte
readable) or raises a ParityError whose message is one line and names the file; never another
exception, never a hang (a watchdog bounds each call), and it writes nothing.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from parity.contract.errors import ParityError

#: seconds one reader call may take before the fuzz test calls it a hang (the files are small)
HANG_S = 20

DTYPES = [np.float32, np.float16, np.float64, np.int8, np.int32, np.int64, np.uint8, np.bool_, np.complex64]

#: names as other tools write them: unicode, punctuation, spaces; no path separators or NUL (no file system takes those)
NAME_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\x00")
names = st.text(NAME_CHARS, min_size=1, max_size=12)
file_stems = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\x00"),
                     min_size=1, max_size=12).filter(lambda s: not s.startswith(".") and s.strip() == s and s)


def arrays(dtypes: list[Any] = DTYPES, max_dims: int = 4, max_side: int = 5) -> st.SearchStrategy[np.ndarray]:
    """Small arrays of any numeric dtype and rank (0-d included), NaN/Inf allowed."""
    return st.sampled_from(dtypes).flatmap(
        lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0,
                                                             max_side=max_side)))


# --------------------------------------------------------------------------- mutations

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(NAME_CHARS, max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(NAME_CHARS, max_size=8), inner, max_size=4),
    max_leaves=8)


@st.composite
def byte_mutations(draw: Any, data: bytes) -> bytes:
    """``data`` with a few random edits: truncation, bit flips, inserted or deleted runs, a repeated block."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "repeat", "overwrite"]))
        pos = draw(st.integers(0, max(len(out), 1) - 1)) if out else 0
        if kind == "truncate":
            del out[pos:]
        elif kind == "flip" and out:
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=16) | st.sampled_from(
                [b"nan", b"-inf", b"\n", b",", b"\xff\xfe", b"1e999", b"[", b"99999999999999999999", b"\x00"]))
        elif kind == "delete":
            del out[pos:pos + draw(st.integers(1, 16))]
        elif kind == "repeat":
            out[pos:pos] = out[pos:pos + draw(st.integers(1, 64))] * draw(st.integers(1, 8))
        elif kind == "overwrite" and out:
            chunk = draw(st.binary(min_size=1, max_size=8))
            out[pos:pos + len(chunk)] = chunk
    return bytes(out)


def _paths(doc: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


@st.composite
def json_mutations(draw: Any, doc: Any) -> Any:
    """``doc`` (JSON data) with one to three nodes replaced, removed or duplicated."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["replace", "remove", "duplicate"]))
        if not path:
            if kind == "replace":
                doc = draw(json_values)
            continue
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        if kind == "replace":
            parent[key] = draw(json_values)
        elif kind == "remove":
            del parent[key]
        elif kind == "duplicate" and isinstance(parent, list):
            parent.insert(key, json.loads(json.dumps(parent[key])))
    return doc


def npy_bytes(arr: np.ndarray, *, fortran: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asfortranarray(arr) if fortran and arr.ndim >= 2 else arr, allow_pickle=False)
    return buf.getvalue()


@st.composite
def npy_header_surgery(draw: Any, arr: np.ndarray) -> bytes:
    """An .npy whose header lies: a shape, dtype or order of the fuzzer's choosing, or a huge header length."""
    data = npy_bytes(arr)
    kind = draw(st.sampled_from(["shape", "descr", "order", "hlen", "version"]))
    hlen = int.from_bytes(data[8:10], "little")
    body = data[10 + hlen:]
    header = {"descr": np.lib.format.dtype_to_descr(arr.dtype), "fortran_order": False, "shape": arr.shape}
    if kind == "shape":
        header["shape"] = tuple(draw(st.lists(st.integers(-3, 2**62) | st.integers(0, 8), max_size=5)))
    elif kind == "descr":
        header["descr"] = draw(st.sampled_from(["<f4", ">f8", "|O", "<U3", "|V8", "|b1", "<c16", "<M8[s]",
                                                "[('a', '<f4')]", "float32", "<f3", "|S0"]))
        if header["descr"].startswith("["):
            header["descr"] = [("a", "<f4"), ("b", "|O")]
    elif kind == "order":
        header["fortran_order"] = draw(st.sampled_from([True, 1, "yes", None]))
    text = repr(header).encode("latin-1") + b" " * 16 + b"\n"
    if kind == "hlen":
        return data[:8] + draw(st.sampled_from([b"\xff\xff", b"\x00\x00", b"\x10\x27"])) + data[10:]
    if kind == "version":
        return data[:6] + bytes([draw(st.integers(0, 255)), draw(st.integers(0, 255))]) + data[8:]
    return data[:8] + len(text).to_bytes(2, "little") + text + body


# --------------------------------------------------------------------------- the check


class Hang(Exception):
    """A reader call ran past HANG_S."""


@contextlib.contextmanager
def watchdog(seconds: float = HANG_S) -> Iterator[None]:
    def fire(*_: Any) -> None:
        raise Hang(f"reader ran for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per example (hypothesis reuses a test's fixtures), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="parity-fuzz-") as d:
        yield Path(d)


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def touch(arr: Any) -> None:
    """Read every byte of an array (a memory map of a short file would fault here)."""
    a = np.asarray(arr)
    assert a.dtype.kind in "biufc", a.dtype
    assert a.nbytes <= 1 << 28, f"a small file gave an array of {a.nbytes} bytes"
    a.tobytes()


def check(call: Callable[[], Any], root: Path, *, names_any: tuple[str, ...]) -> str:
    """Run ``call`` (which reads and touches everything); 'ok' or 'error'. Anything else fails the test.

    An error must be a ParityError of one line naming the file (one of ``names_any``), and
    nothing may be left in ``root`` that was not there before.
    """
    before = listing(root)
    try:
        with watchdog():
            call()
        outcome = "ok"
    except ParityError as e:
        msg = str(e)
        assert msg.strip(), "empty error message"
        assert "\n" not in msg and "\r" not in msg, f"message is not one line: {msg!r}"
        assert any(n in msg for n in names_any), f"message names none of {names_any}: {msg!r}"
        outcome = "error"
    assert listing(root) == before, f"the reader left files behind: {listing(root) - before}"
    return outcome


def read_all(path: Path, **kw: Any) -> list[Any]:
    """Every record of a dump through read_dump, each array touched."""
    from parity.core.dumps import read_dump

    out = []
    for a in read_dump(path, **kw):
        assert isinstance(a.name, str) and a.name
        touch(a.array)
        out.append(a)
    return out


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def finite_prod(shape: tuple[int, ...]) -> int:
    return math.prod(shape) if shape else 1


__all__ = ["arrays", "byte_mutations", "json_mutations", "json_values", "npy_bytes", "npy_header_surgery", "check",
           "read_all", "scratch", "write", "names", "file_stems", "touch", "finite_prod", "os"]

"""The dump-format contract: readers and writers of activation files.

A format either holds one activation per file (the TensorRT sample text dump, ``.npy``)
or many per file (``.npz``, Polygraphy JSON). Folder handling and run tags live in
:mod:`parity.core.dumps`, so every format gets them for free; the manifest (the file that keeps
names, order and metadata exact) and safe file names are here, because format plugins write them.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator

import numpy as np

from parity.contract.atomic import atomic_path
from parity.contract.errors import ParityError

from parity.contract.records import Activation


class DumpFormat:
    """Base class for a format plugin.

    ``extensions`` (lower case, with the dot) route files to the format when no format is
    named; ``multi`` says whether one file holds several activations. ``read`` yields
    activations lazily; a single-activation format names its record after the file stem,
    and :mod:`parity.core.dumps` may rename it (manifest, run tags).
    Errors are :class:`parity.ParityError` naming the file and what is wrong.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    extensions: ClassVar[tuple[str, ...]] = ()
    multi: ClassVar[bool] = False
    writable: ClassVar[bool] = True

    def can_read(self, path: Path) -> bool:
        """Whether this format claims ``path``; the default looks at the extension only."""
        name = path.name.lower()
        return any(name.endswith(ext) for ext in self.extensions)

    def read(self, path: Path) -> Iterator[Activation]:
        raise NotImplementedError

    def write_one(self, record: Activation, path: Path) -> None:
        """Write one activation to ``path`` (single-activation formats)."""
        raise NotImplementedError

    def write_many(self, records: Iterable[Activation], path: Path) -> list[Activation]:
        """Write activations to one file at ``path`` (multi formats); return what was written (arrays may be dropped)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<format {self.name}>"


@dataclass
class AnnotationContext:
    """What is known about a dump made elsewhere: the ONNX model it came from, TensorRT layer info."""

    onnx_path: str | None = None
    layer_info: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


class DumpAnnotator:
    """Gives records of a dump made elsewhere what parity's own sources attach (ONNX names, module
    provenance, order, output positions), so the matcher can line them up with a live reference.

    Why a hook: knowing ONNX provenance or TensorRT's fused layer names is a plugin's business;
    the core only applies, in ``order``, every annotator whose :meth:`wants` says yes.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: lower runs first: a name mapping (fused TensorRT layer -> ONNX tensor) before provenance
    order: ClassVar[int] = 100

    def wants(self, ctx: AnnotationContext) -> bool:
        raise NotImplementedError

    def prepare(self, ctx: AnnotationContext) -> Callable[[Activation], Activation]:
        """Load what is needed once; return the per-record function."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<annotator {self.name}>"


MANIFEST_NAME = "parity-manifest.json"
MANIFEST_SCHEMA_VERSION = 1


def atomic_write_path(path: str | os.PathLike[str]) -> Any:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one step.

    Format plugins use this for their writers (the project's one write-then-rename, parity.contract.atomic).
    """
    return atomic_path(path)


#: dtype kinds a dump may hold: bool, int, uint, float, complex
NUMERIC_KINDS = "biufc"


def check_npy_dtype(dtype: np.dtype, where: str) -> None:
    """Refuse object arrays (numpy stores them as pickles) and non-numeric dtypes, naming ``where``."""
    if dtype.hasobject:
        raise ParityError(f"{where}: holds a Python object array, which numpy stores as a pickle; parity never "
                          f"unpickles files (unpickling can run code). Note: save a numeric array (e.g. arr.astype(np.float32)).")
    if dtype.kind not in NUMERIC_KINDS:
        raise ParityError(f"{where}: holds dtype {dtype}, not numbers. Note: parity compares numeric arrays "
                          f"(bool, int, float, complex).")


def check_npy_header(fh: Any, size: int, where: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype of the .npy stream ``fh`` (``size`` bytes in all), checked before numpy reads the data.

    Why: ``numpy.load`` allocates what the header announces before reading, so a damaged or
    hostile header costs gigabytes or a MemoryError; and an object dtype means a pickle.
    Returns None for header versions numpy itself parses (numpy then raises a ValueError).
    """
    import numpy.lib.format as npformat

    try:
        version = npformat.read_magic(fh)
        if version == (1, 0):
            shape, _fortran, dtype = npformat.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, _fortran, dtype = npformat.read_array_header_2_0(fh)
        else:
            return None
    except Exception as e:  # noqa: BLE001 - numpy's header parser raises ValueError, SyntaxError, tokenize errors...
        raise ParityError(f"{where}: not a valid .npy array ({type(e).__name__}: {e}). "
                          f"Note: write it with numpy.save.") from e
    check_npy_dtype(dtype, where)
    need, have = math.prod(shape) * dtype.itemsize, size - fh.tell()
    if any(d < 0 for d in shape):
        raise ParityError(f"{where}: header gives a negative dimension {list(shape)}. Note: rewrite the file.")
    if have < need:
        raise ParityError(f"{where}: data is truncated: header says shape {list(shape)} of {dtype} ({need} bytes) "
                          f"but only {have} bytes follow. Note: rewrite the file.")
    return tuple(shape), dtype


def read_npy(src: bytes | str | os.PathLike[str], where: str, *, mmap: bool = False) -> np.ndarray:
    """A numeric array from .npy bytes or a .npy file, header checked first (:func:`check_npy_header`), never unpickled."""
    import numpy.lib.format as npformat

    try:
        if isinstance(src, (bytes, bytearray)):
            check_npy_header(io.BytesIO(src), len(src), where)
            arr = npformat.read_array(io.BytesIO(src), allow_pickle=False)
        else:
            with open(src, "rb") as fh:
                check_npy_header(fh, os.fstat(fh.fileno()).st_size, where)
            arr = np.load(src, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ParityError:
        raise
    except OSError as e:
        raise ParityError(f"{where}: cannot read: {e.strerror or e}") from e
    except (ValueError, EOFError) as e:
        raise ParityError(f"{where}: not a valid .npy array ({e}). Note: write it with numpy.save.") from e
    check_npy_dtype(arr.dtype, where)
    return arr


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}
_MAX_STEM = 100


def safe_filename(name: str) -> str:
    """A file stem that every filesystem accepts, derived from a layer name.

    Not unique by itself (``a/b`` and ``a b`` both give ``a_b``): :func:`write_dump` adds a
    counter on collisions, and the manifest keeps the real name.
    """
    stem = _UNSAFE.sub("_", name)
    stem = re.sub(r"_{2,}", "_", stem).strip("._-")
    if not stem:
        stem = "layer"
    if len(stem) > _MAX_STEM:
        digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        stem = f"{stem[:_MAX_STEM - 9]}-{digest}"
    if stem.split(".")[0].upper() in _WINDOWS_RESERVED:
        stem = f"{stem}_"
    return stem


def _jsonable_meta(meta: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The part of ``meta`` that survives JSON unchanged, and the keys that were dropped."""
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for k, v in meta.items():
        if isinstance(v, np.generic):
            v = v.item()
        try:
            kept[str(k)] = json.loads(json.dumps(v))
        except (TypeError, ValueError):
            dropped.append(str(k))
    return kept, dropped


def manifest_entry(record: Activation, file: str) -> dict[str, Any]:
    """The manifest entry describing ``record`` stored as ``file`` (a name, no folders)."""
    meta, dropped = _jsonable_meta(record.meta or {})
    entry: dict[str, Any] = {
        "file": file,
        "name": record.name,
        "output_index": int(record.output_index),
        "order": None if record.order is None else int(record.order),
        "op_type": record.op_type,
        "shape": list(record.shape),
        "dtype": record.dtype,
        "meta": meta,
    }
    if dropped:
        entry["meta_dropped"] = dropped
    return entry


def make_manifest(entries: list[dict[str, Any]], dump_format: str, complete: bool = True) -> dict[str, Any]:
    """The manifest document. ``complete`` is true only in the manifest written after the last record."""
    from parity.contract.version import __version__

    return {"kind": "parity-dump", "schema_version": MANIFEST_SCHEMA_VERSION,
            "parity_version": __version__, "dump_format": dump_format, "complete": bool(complete),
            "entries": entries}


def manifest_json(entries: list[dict[str, Any]], dump_format: str, complete: bool = True) -> str:
    """The manifest as text: one entry per line, so it stays readable and diffable.

    Writers put a ``complete=False`` manifest down before the first record and replace it with
    the ``complete=True`` one after the last, so a dump cut short says so (see :func:`parse_manifest`).
    """
    doc = make_manifest([], dump_format, complete)
    head = json.dumps(doc)[:-len('[]}')]
    lines = ",\n ".join(json.dumps(e) for e in entries)
    return f"{head}[\n {lines}\n]}}\n" if entries else f"{head}[]}}\n"


def parse_manifest(data: bytes | str, where: str) -> list[dict[str, Any]]:
    """Validate a manifest and return its entries, in order. ``where`` names it in errors."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ParityError(f"{where}: manifest is not valid JSON ({e}). "
                          f"Note: delete it to read the files by their names.") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise ParityError(f"{where}: manifest has no 'entries' list. Note: delete it to read the files by their names.")
    version = doc.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise ParityError(f"{where}: manifest has no valid schema_version (saw {version!r}).")
    if version > MANIFEST_SCHEMA_VERSION:
        raise ParityError(f"{where}: manifest schema_version {version} is newer than this parity understands "
                          f"({MANIFEST_SCHEMA_VERSION}). Note: upgrade parity.")
    complete = doc.get("complete", True)  # absent: written before completeness was recorded
    if complete is not True:
        raise ParityError(f"{where}: the dump is incomplete (manifest says complete={json.dumps(complete)[:40]}): "
                          f"its writer was interrupted or failed before the last layer. Note: an incomplete "
                          f"dump is never compared; write it again.")
    entries = doc["entries"]
    for i, e in enumerate(entries):
        problem = _entry_problem(e)
        if problem:
            raise ParityError(f"{where}: manifest entry {i} is invalid: {problem}.")
    return entries


def _entry_problem(e: Any) -> str | None:
    if not isinstance(e, dict):
        return "not an object"
    f = e.get("file")
    if not isinstance(f, str) or not f or f in (".", "..") or "/" in f or "\\" in f:
        return f"'file' must be a plain file name, saw {f!r}"
    if not isinstance(e.get("name"), str) or not e["name"]:
        return "'name' must be a non-empty string"
    oi = e.get("output_index", 0)
    if not isinstance(oi, int) or isinstance(oi, bool) or oi < 0:
        return f"'output_index' must be an integer >= 0, saw {oi!r}"
    order = e.get("order")
    if order is not None and (not isinstance(order, int) or isinstance(order, bool)):
        return f"'order' must be an integer or null, saw {order!r}"
    if e.get("op_type") is not None and not isinstance(e["op_type"], str):
        return "'op_type' must be a string or null"
    if not isinstance(e.get("meta", {}), dict):
        return "'meta' must be an object"
    shape = e.get("shape")
    if shape is not None and (not isinstance(shape, list) or
                              not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        return f"'shape' must be a list of integers >= 0, saw {shape!r}"
    if e.get("dtype") is not None:
        try:
            np.dtype(e["dtype"])
        except TypeError:
            return f"'dtype' is not a numpy dtype: {e['dtype']!r}"
    return None


def apply_manifest_entry(record: Activation, entry: dict[str, Any], where: str) -> Activation:
    """``record`` as the manifest describes it: names, order, metadata, original dtype.

    A format that stores less than numpy can (the float32 text dump) gets its dtype back
    here; a shape that disagrees with the manifest means the file was swapped or damaged.
    """
    arr = record.array
    shape = entry.get("shape")
    if shape is not None and tuple(shape) != tuple(arr.shape):
        raise ParityError(f"{where}: holds shape {list(arr.shape)} but the manifest says {shape}. "
                          f"Note: the file was replaced or damaged; rewrite the dump or delete the manifest.")
    dtype = entry.get("dtype")
    if dtype is not None and np.dtype(dtype) != arr.dtype:
        arr = arr.astype(np.dtype(dtype))
    return Activation(name=entry["name"], array=arr, output_index=int(entry.get("output_index", 0)),
                      order=entry.get("order"), op_type=entry.get("op_type"),
                      meta=dict(entry.get("meta") or {}))

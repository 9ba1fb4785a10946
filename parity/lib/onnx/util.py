"""Small helpers shared by the export, conversion and source modules (no heavy imports)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

# the ONNX Runtime session helpers live in .session; importable from here too for older callers
from parity.lib.onnx.session import ort_message, run_session  # noqa: F401

#: bump when the layout of cached artifacts changes, so old cache entries are not reused
CACHE_VERSION = "1"


def file_digest(path: str | os.PathLike, h: "hashlib._Hash | None" = None) -> str:
    """sha256 of a file's bytes, read in blocks so a large model does not sit in memory twice."""
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: resolved path -> (its stat, [(external file, its stat)], digest): the fp16/int8 cache key is
#: asked for on every run() and local_errors() call; a file whose stats are unchanged is not re-read
_DIGESTS: dict[str, tuple[tuple[int, int], list[tuple[Path, tuple[int, int]]], str]] = {}


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def model_digest(path: str | os.PathLike) -> str:
    """sha256 of an ONNX file plus any external-data files it references (weights kept beside it)."""
    key = str(Path(path).resolve())
    hit = _DIGESTS.get(key)
    try:
        if hit is not None and hit[0] == _stat(Path(path)) and all(
                f.is_file() and _stat(f) == st for f, st in hit[1]):
            return hit[2]
    except OSError:
        pass
    stat = _stat(Path(path))
    digest, used = _model_digest(path)
    _DIGESTS[key] = (stat, [(f, _stat(f)) for f in used], digest)
    return digest


def _model_digest(path: str | os.PathLike) -> tuple[str, list[Path]]:
    h = hashlib.sha256()
    file_digest(path, h)
    try:
        import onnx

        m = onnx.load(str(path), load_external_data=False)
        locations = sorted({e.value for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                            for e in t.external_data if e.key == "location"})
    except Exception:  # not loadable here: the caller reports that with a proper message
        locations = []
    used: list[Path] = []
    for loc in locations:
        f = Path(path).parent / loc
        if f.is_file():
            h.update(loc.encode())
            file_digest(f, h)
            used.append(f)
    return h.hexdigest(), used


def feeds_digest(feeds: list[dict[str, np.ndarray]]) -> str:
    """sha256 over names, dtypes, shapes and values of a list of feeds (calibration data)."""
    h = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            a = np.ascontiguousarray(feed[name])
            h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
        h.update(b"\x00")
    return h.hexdigest()


def key_of(*parts: Any) -> str:
    """A short stable key over the ``repr`` of the parts (options, versions, digests)."""
    h = hashlib.sha256(CACHE_VERSION.encode())
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\x1f")
    return h.hexdigest()[:20]


def sniff(path: Path) -> str:
    """A few words on what a file that is not ONNX looks like, for error messages."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return "unreadable"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a TorchScript model or a torch.save checkpoint), not an ONNX protobuf"
    if head.startswith(b"\x80") and len(head) > 1 and head[1] in (2, 3, 4, 5):
        return "a Python pickle (a torch.save checkpoint?), not an ONNX protobuf"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy array, not a model"
    if not head:
        return "an empty file"
    try:
        head.decode("utf-8")
        return "a text file, not an ONNX protobuf"
    except UnicodeDecodeError:
        return "binary data that does not parse as an ONNX protobuf"

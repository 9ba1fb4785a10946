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
_DIGESTS: dict[str, tuple[tuple[int, ...], list[tuple[Path, tuple[int, ...]]], str]] = {}
#: file in a workdir remembering digests across processes (see :func:`model_digest`)
DIGEST_STORE = "model-digests.json"


def _stat(path: Path) -> tuple[int, ...]:
    """What says a file is unchanged: size, mtime, ctime (a write always moves it) and inode."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _fresh(hit: tuple[Any, list[tuple[Path, Any]], str], path: Path) -> bool:
    try:
        return tuple(hit[0]) == _stat(path) and all(Path(f).is_file() and _stat(Path(f)) == tuple(st)
                                                   for f, st in hit[1])
    except OSError:
        return False


def _read_store(store: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(store.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def model_digest(path: str | os.PathLike, store_dir: str | os.PathLike | None = None) -> str:
    """sha256 of an ONNX file plus any external-data files it references (weights kept beside it).

    Why remembered: the digest keys the fp16/int8 caches, and computing it reads every byte and
    parses the model (to find external data). A file whose stat (size, mtime, ctime, inode) and
    whose external files' stats are unchanged is not re-read: within a process (always) and
    across processes through ``store_dir/model-digests.json`` when ``store_dir`` (a workdir) is
    given. Any write to the file moves its ctime, so a changed file is hashed again.
    """
    p = Path(path)
    key = str(p.resolve())
    hit = _DIGESTS.get(key)
    if hit is not None and _fresh(hit, p):
        return hit[2]
    store = Path(store_dir) / DIGEST_STORE if store_dir is not None else None
    if store is not None:
        entry = _read_store(store).get(key)
        if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
            cand = (tuple(entry.get("stat", ())), [(Path(f), tuple(st)) for f, st in entry.get("external", [])],
                    entry["digest"])
            if _fresh(cand, p):
                _DIGESTS[key] = cand
                return cand[2]
    stat = _stat(p)
    digest, used = _model_digest(path)
    if _stat(p) != stat:  # written while being read: do not remember a digest of torn bytes
        return digest
    _DIGESTS[key] = (stat, [(f, _stat(f)) for f in used], digest)
    if store is not None:
        _remember(store, key, _DIGESTS[key])
    return digest


def _remember(store: Path, key: str, hit: tuple[Any, list[tuple[Path, Any]], str]) -> None:
    """Add one entry to the digest store (atomically; a failure only costs a re-hash next time)."""
    import json

    from parity.contract.atomic import write_text

    data = _read_store(store)
    data[key] = {"stat": list(hit[0]), "external": [[str(f), list(st)] for f, st in hit[1]], "digest": hit[2]}
    if len(data) > 256:  # a bounded store: keep the newest entries
        data = dict(list(data.items())[-256:])
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        write_text(store, json.dumps(data, indent=0))
    except OSError:
        pass


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

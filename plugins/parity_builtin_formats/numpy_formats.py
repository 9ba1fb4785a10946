"""NumPy formats: ``.npy`` (one activation per file) and ``.npz`` (many per archive).

Neither ever unpickles: the header's dtype is checked before any data is touched, and
object arrays (the only ones that carry pickles) are refused with a clear message.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import numpy.lib.format as npformat

from parity import Activation, ParityError
from parity.contract.errors import ARCHIVE_ERRORS
from parity.contract.dumpformat import (MANIFEST_NAME, DumpFormat, apply_manifest_entry, atomic_write_path,
                                        check_npy_dtype, check_npy_header, manifest_entry, manifest_json,
                                        parse_manifest, read_npy, safe_filename)

_check_dtype = check_npy_dtype


def _pickle_refusal(e: Exception, where: str) -> ParityError | None:
    msg = str(e)
    if "allow_pickle" in msg or "Python objects" in msg or "Object arrays" in msg:
        return ParityError(f"{where}: holds a Python object array, which numpy stores as a pickle; parity never "
                           f"unpickles files (unpickling can run code). Note: save a numeric array (e.g. arr.astype(np.float32)).")
    return None


def load_npy(path: Path) -> np.ndarray:
    """Memory-map a .npy file read-only after checking its header (no pickles, not truncated)."""
    return read_npy(path, str(path), mmap=True)


def save_npy(arr: np.ndarray, path: Path, where: str) -> None:
    arr = np.asanyarray(arr)
    _check_dtype(arr.dtype, where)
    with atomic_write_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


class NpyFormat(DumpFormat):
    """One ``.npy`` per activation, memory-mapped so big arrays are paged in only when scored."""

    name = "npy"
    description = "NumPy .npy, one activation per file (memory-mapped on reading; pickles refused)"
    extensions = (".npy",)
    multi = False

    def read(self, path: Path) -> Iterator[Activation]:
        path = Path(path)
        yield Activation(name=path.stem, array=load_npy(path))

    def write_one(self, record: Activation, path: Path) -> None:
        save_npy(record.array, Path(path), f"layer {record.name!r}")


def _broadcast_stub(arr: np.ndarray) -> np.ndarray:
    """A read-only array of the same shape and dtype that takes no memory."""
    return np.broadcast_to(np.zeros((), dtype=arr.dtype), arr.shape)


class NpzFormat(DumpFormat):
    """Many activations in one ``.npz`` (a zip of ``.npy`` members, as ``numpy.savez`` writes).

    Member ``KEY.npy`` is the layer named ``KEY``. Archives written by parity also hold a
    ``parity-manifest.json`` member with exact names, order and metadata; ``numpy.load``
    still opens them (it shows the manifest as raw bytes).
    """

    name = "npz"
    description = "NumPy .npz archive of many activations (read one at a time; pickles refused)"
    extensions = (".npz",)
    multi = True

    def read(self, path: Path) -> Iterator[Activation]:
        path = Path(path)
        try:
            zf = zipfile.ZipFile(path)
        except ARCHIVE_ERRORS as e:
            raise ParityError(f"{path}: not a valid .npz archive ({e}). Note: write it with numpy.savez.") from e
        with zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            entries = None
            manifest_info = next((i for i in infos if i.filename == MANIFEST_NAME), None)
            if manifest_info is not None:
                entries = parse_manifest(self._read_member(zf, manifest_info, path), f"{path} [{MANIFEST_NAME}]")
            members = {i.filename: i for i in infos if i.filename.endswith(".npy")}
            plan: list[tuple[zipfile.ZipInfo, dict[str, Any] | None]] = []
            listed: set[str] = set()
            for e in entries or []:
                info = members.get(e["file"])
                if info is None:
                    raise ParityError(f"{path}: the manifest lists member {e['file']!r}, which the archive lacks. "
                                      f"Note: the archive is damaged; rewrite it.")
                plan.append((info, e))
                listed.add(e["file"])
            plan.extend((i, None) for n, i in members.items() if n not in listed)
            seen: set[str] = set()
            for info, entry in plan:
                where = f"{path} [{info.filename}]"
                arr = self._load_member(zf, info, where)
                rec = Activation(name=info.filename[:-4], array=arr)
                if entry is not None:
                    rec = apply_manifest_entry(rec, entry, where)
                if rec.key in seen:
                    raise ParityError(f"{path}: layer {rec.key!r} appears twice in the archive. Note: rewrite it.")
                seen.add(rec.key)
                yield rec

    @staticmethod
    def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
        try:
            return zf.read(info)
        except ARCHIVE_ERRORS as e:
            raise ParityError(f"{path} [{info.filename}]: damaged archive member ({e}). Note: rewrite it.") from e

    @staticmethod
    def _load_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> np.ndarray:
        try:
            with zf.open(info) as fh:  # before numpy allocates what the header announces
                check_npy_header(fh, info.file_size, where)
            with zf.open(info) as fh:
                arr = npformat.read_array(fh, allow_pickle=False)
        except ParityError:
            raise
        except ARCHIVE_ERRORS as e:
            refusal = _pickle_refusal(e, where)
            raise (refusal or ParityError(f"{where}: damaged array member ({e}). Note: rewrite the archive.")) from e
        _check_dtype(arr.dtype, where)
        return arr

    def write_many(self, records: Iterable[Activation], path: Path) -> list[Activation]:
        """Stream records into the archive one by one; the manifest member goes last."""
        path = Path(path)
        written: list[Activation] = []
        entries: list[dict[str, Any]] = []
        used: set[str] = set()
        with atomic_write_path(path) as tmp:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                for rec in records:
                    arr = np.asanyarray(rec.array)
                    _check_dtype(arr.dtype, f"layer {rec.name!r}")
                    stem = safe_filename(rec.key)
                    unique, n = stem, 1
                    while unique.lower() in used:
                        n += 1
                        unique = f"{stem}-{n}"
                    used.add(unique.lower())
                    member = unique + ".npy"
                    with zf.open(member, "w", force_zip64=arr.nbytes > 2**31) as fh:
                        npformat.write_array(fh, arr, allow_pickle=False)
                    entries.append(manifest_entry(rec, member))
                    written.append(Activation(name=rec.name, array=_broadcast_stub(arr),
                                              output_index=rec.output_index, order=rec.order,
                                              op_type=rec.op_type, meta=rec.meta))
                zf.writestr(MANIFEST_NAME, manifest_json(entries, self.name))
        return written

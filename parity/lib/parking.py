"""Parking activations while a matcher waits for their partners: in memory up to a byte budget,
beyond it in a few large spill files read back through memory maps.

Why: a matcher that cannot pair a record yet (the auto matcher holds the whole reference stream
until the target runs) must keep it somewhere. Memory is fastest but a large model's activations
may not fit; one ``.npy`` file per tensor fits any size but creating a file costs about a
millisecond, the largest step of a warm run on transformer models. :class:`Parking` keeps what
fits the budget in memory as is, and appends the rest to segment files of at least
:data:`SEGMENT_BYTES`, so a run creates a handful of files whatever its number of tensors.

Ownership rule (what lets :meth:`Parking.park` keep an array without copying it): an array a
source or dump reader yields belongs to the consumer; the producer never writes into it
afterwards. The built-in producers keep it: the torch source copies every tensor off the model
at capture time (``tensor_to_numpy``), ONNX Runtime returns new arrays on every session run and
the source drops its own reference, dump readers hand over read-only memory maps or freshly
decoded arrays. So the store copies only when keeping the array would hold more memory than it
accounts for: a non-contiguous view, or a view of a larger array (a slice would pin its whole
base). An array already backed by a file (a memory-mapped dump) is kept as is and counts
nothing against the budget: its pages are the operating system's to drop and read again.

Device records (``Activation.on_device``: tensors where the model ran, ``--device-scoring``) stay
where they are while the parked device bytes fit a budget of their own (``--device-memory``;
default :func:`default_device_budget`): the pair is then scored there and nothing crosses to the
host. Beyond it a record is copied to the host (:meth:`Activation.host`) and parked as above.
"""
from __future__ import annotations

import mmap
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from parity.contract.errors import ParityError
from parity.contract.matcher import ParkingStats, set_default_parking
from parity.contract.records import Activation

#: smallest spill file: arrays are appended to one segment until it is full (a larger array gets
#: a segment of its own size), so files created ~ spilled bytes / SEGMENT_BYTES, never per tensor
SEGMENT_BYTES = 64 << 20
#: bounds of the default budget (see :func:`default_budget`)
MIN_DEFAULT_BUDGET = 256 << 20
MAX_DEFAULT_BUDGET = 1 << 30
_ALIGN = 64  # every spilled array starts on a 64-byte boundary (SIMD loads, any dtype's alignment)


def default_budget() -> int:
    """Bytes of parked activations held in memory when the user gives no ``--max-memory``.

    A quarter of the memory available now: the rest is left to the target that runs while the
    reference waits (a session capturing every tensor, or a second model) and to scoring's
    temporaries. At least :data:`MIN_DEFAULT_BUDGET`, so a busy machine does not spill small
    models; at most :data:`MAX_DEFAULT_BUDGET` (1 GiB), because spilled pages stay in the page
    cache while memory is free (appending them is a copy, reading them back costs little), whereas
    anonymous memory held past that raises the run's peak far above a bare forward's (measured:
    the whole reference stream of a batch-32 encoder, 5.6 GiB against a 0.4 GiB bare run) and
    risks the out-of-memory killer when other processes grow. ``--max-memory`` sets it. Where the system does
    not say what is available, an eighth of physical memory (or 2 GiB when unknown).
    """
    avail = None
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):
        try:
            avail = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 8
        except (ValueError, OSError, AttributeError):
            avail = 2 << 30
    return int(min(max(avail, MIN_DEFAULT_BUDGET), MAX_DEFAULT_BUDGET))


#: share of the device memory free at the first parked device record that the default budget takes
DEVICE_BUDGET_SHARE = 0.25


def default_device_budget(tensor: Any, host_budget: int) -> int:
    """Bytes of device records kept on their device when ``--device-memory`` is not given.

    A CUDA tensor: a quarter of the device memory free now (the rest is left to the target's
    forward, which runs while the reference waits, and to scoring's float64 temporaries). A tensor
    in host memory (a torch CPU tensor: device scoring forced on a CPU run) shares the host budget.
    """
    dev = getattr(tensor, "device", None)
    if getattr(dev, "type", "cpu") == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(dev)
        return int(free * DEVICE_BUDGET_SHARE)
    return host_budget


def _file_backed(arr: np.ndarray) -> bool:
    """Whether ``arr``'s memory is a file mapping (np.memmap, np.load(mmap_mode=...), a spill view)."""
    b: Any = arr
    while isinstance(b, np.ndarray):
        if isinstance(b, np.memmap):
            return True
        b = b.base
    if isinstance(b, memoryview):  # np.frombuffer on a map
        b = b.obj
    return isinstance(b, mmap.mmap)


def _pins_more(arr: np.ndarray) -> bool:
    """Whether keeping ``arr`` would keep a larger buffer alive (a view of a bigger array)."""
    root = arr
    while isinstance(root.base, np.ndarray):
        root = root.base
    return root.nbytes > arr.nbytes


def _cleanup(folder: Path, files: list) -> None:
    """Close the spill files and remove the folder; run by close(), garbage collection or at exit."""
    for f in files:
        try:
            os.close(f)
        except OSError:
            pass
    files.clear()
    shutil.rmtree(folder, ignore_errors=True)


class _Segment:
    """One pre-sized (sparse) spill file, mapped read-only once; arrays are written with pwrite."""

    def __init__(self, path: Path, size: int, fds: list[int]) -> None:
        self.size = size
        self.used = 0
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        fds.append(self.fd)
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size, access=mmap.ACCESS_READ)

    def fits(self, nbytes: int) -> bool:
        return -(-self.used // _ALIGN) * _ALIGN + nbytes <= self.size

    def append(self, arr: np.ndarray) -> np.ndarray:
        """Write ``arr`` (C-contiguous) at the next aligned offset; a read-only view of the bytes on file."""
        off = -(-self.used // _ALIGN) * _ALIGN
        data = memoryview(arr.reshape(-1).view(np.uint8))
        done = 0
        while done < len(data):  # pwrite may write less than asked (2 GiB cap on Linux)
            done += os.pwrite(self.fd, data[done:], off + done)
        self.used = off + arr.nbytes
        view = np.frombuffer(self.map, dtype=arr.dtype, count=arr.size, offset=off)
        return view.reshape(arr.shape)


class Parking:
    """Holds activations in memory up to ``budget`` bytes and spills the rest to a few large files.

    :meth:`park` returns an :class:`Activation` to keep in place of the one given (same fields,
    the array in memory or a read-only view of a spill file). :meth:`release` gives a record's
    memory share back once it is no longer waiting (a paired reference); a parked array that is
    garbage-collected gives it back too, so the budget is about what is held now. Spill files
    live in a temporary folder under ``spill_dir`` (None: the system's), created at the first
    spill and removed by :meth:`close`, by garbage collection, or at interpreter exit (Ctrl-C
    included). On POSIX, views handed out stay readable after close: the files are unlinked, their
    pages live until the last view goes. Use as a context manager.
    """

    def __init__(self, budget: int | None = None, spill_dir: str | os.PathLike | None = None,
                 segment_bytes: int = SEGMENT_BYTES, device_budget: int | None = None) -> None:
        self.budget = default_budget() if budget is None else int(budget)
        if self.budget < 0:
            raise ParityError(f"parking budget must be >= 0 bytes, not {budget}")
        if device_budget is not None and int(device_budget) < 0:
            raise ParityError(f"device parking budget must be >= 0 bytes, not {device_budget}")
        #: bytes of device records kept on their device; None: decided at the first one
        self.device_budget = None if device_budget is None else int(device_budget)
        self.spill_dir = spill_dir
        self.segment_bytes = int(segment_bytes)
        self.stats = ParkingStats()
        self.dir: Path | None = None
        self._current: _Segment | None = None
        self._fds: list[int] = []
        self._held: dict[int, tuple[int, weakref.finalize]] = {}  # id(array) -> (bytes, finalizer)
        self._cleanup: weakref.finalize | None = None
        self.closed = False

    # ------------------------------------------------------------------ parking

    def park(self, a: Activation) -> Activation:
        """``a`` with its array kept: in memory while the budget allows, else appended to a spill file."""
        if self.closed:
            raise ParityError("this parking store is closed. Note: a matcher parks only while its pairs stream")
        if a.on_device:
            kept_on_device = self._park_device(a)
            if kept_on_device is not None:
                return kept_on_device
            a = Activation(a.name, a.host(), a.output_index, a.order, a.op_type, a.meta)
        arr = a.array if isinstance(a.array, np.ndarray) else np.asarray(a.array)
        self.stats.parked_arrays += 1
        if _file_backed(arr) or arr.nbytes == 0:
            kept = arr
        elif self.stats.held_bytes + arr.nbytes <= self.budget:
            if not arr.flags.c_contiguous or _pins_more(arr):
                arr = np.array(arr, order="C", copy=True)
                self.stats.copied_arrays += 1
            kept = arr
            self._hold(arr)
        else:
            kept = self._spill(arr)
        if kept is a.array:
            return a
        return Activation(a.name, kept, a.output_index, a.order, a.op_type, a.meta)

    def _park_device(self, a: Activation) -> Activation | None:
        """``a`` as it is while the device budget allows (its bytes held until it is released or
        collected), else None: the caller moves it to the host."""
        if self.device_budget is None:
            self.device_budget = default_device_budget(a.array, self.budget)
        n = a.nbytes
        if self.stats.device_held_bytes + n > self.device_budget:
            self.stats.device_moved_arrays += 1
            return None
        self.stats.parked_arrays += 1
        key = id(a.array)
        if key not in self._held:
            fin = weakref.finalize(a.array, self._free_device, key, n)
            fin.atexit = False
            self._held[key] = (n, fin)
            self.stats.device_held_bytes += n
            self.stats.device_peak_bytes = max(self.stats.device_peak_bytes, self.stats.device_held_bytes)
        return a

    def _free_device(self, key: int, nbytes: int) -> None:
        if self._held.pop(key, None) is not None:
            self.stats.device_held_bytes -= nbytes

    def release(self, a: Activation | np.ndarray) -> None:
        """Give back the memory share of a parked record (no-op for spilled or unknown records)."""
        arr = a.array if isinstance(a, Activation) else a
        entry = self._held.get(id(arr))
        if entry is not None:
            entry[1]()  # the finalizer frees the share exactly once

    def _hold(self, arr: np.ndarray) -> None:
        key = id(arr)
        if key in self._held:  # the same array parked twice counts once
            return
        fin = weakref.finalize(arr, self._free, key, arr.nbytes)
        fin.atexit = False
        self._held[key] = (arr.nbytes, fin)
        self.stats.held_bytes += arr.nbytes
        self.stats.peak_held_bytes = max(self.stats.peak_held_bytes, self.stats.held_bytes)

    def _free(self, key: int, nbytes: int) -> None:
        if self._held.pop(key, None) is not None:
            self.stats.held_bytes -= nbytes

    def _spill(self, arr: np.ndarray) -> np.ndarray:
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        cur = self._current
        try:
            if cur is not None and cur.fits(arr.nbytes):
                view = cur.append(arr)
            else:
                seg = self._new_segment(arr.nbytes)
                view = seg.append(arr)
                if seg.size > self.segment_bytes and cur is not None and cur.size - cur.used >= cur.size // 4:
                    self._retire(seg)  # an oversized array's own file: the roomy current one stays open
                else:
                    if cur is not None:
                        self._retire(cur)
                    self._current = seg
        except OSError as e:
            where = self.dir or self.spill_dir or tempfile.gettempdir()
            raise ParityError(f"cannot spill parked activations to {where}: {e.strerror or e}. Note: give "
                              f"--max-memory more bytes, or free room there (TMPDIR moves the default folder)") from e
        self.stats.spilled_bytes += arr.nbytes
        self.stats.spilled_arrays += 1
        return view

    def _new_segment(self, nbytes: int) -> _Segment:
        if self.dir is None:
            if self.spill_dir is not None:
                os.makedirs(self.spill_dir, exist_ok=True)
            self.dir = Path(tempfile.mkdtemp(prefix="parity-park-", dir=self.spill_dir))
            self._cleanup = weakref.finalize(self, _cleanup, self.dir, self._fds)
        size = max(self.segment_bytes, -(-nbytes // mmap.ALLOCATIONGRANULARITY) * mmap.ALLOCATIONGRANULARITY)
        seg = _Segment(self.dir / f"{self.stats.files_created}.bin", size, self._fds)
        self.stats.files_created += 1
        return seg

    def _retire(self, seg: _Segment) -> None:
        """No more writes to ``seg``: close its descriptor (its map stays while views use it)."""
        if seg.fd in self._fds:
            self._fds.remove(seg.fd)
            os.close(seg.fd)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Remove the spill files and forget what is held; statistics stay readable."""
        self.closed = True
        for _, fin in list(self._held.values()):
            fin.detach()
        self._held.clear()
        self.stats.held_bytes = 0
        self.stats.device_held_bytes = 0
        self._current = None  # the maps close when their last view goes
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> "Parking":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.stats
        return (f"<Parking budget={self.budget} held={s.held_bytes} spilled={s.spilled_bytes} "
                f"files={s.files_created}{' closed' if self.closed else ''}>")


# a MatchContext made without ``new_parking`` (a matcher called directly, a third-party test) parks here
set_default_parking(Parking)

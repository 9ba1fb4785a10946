"""A dataset of feeds, streamed: random feeds, a file, a folder of thousands of files, or a Python iterable.

Why a class and not a list: engineers sign off a deployment on thousands of inputs, which must
never be in memory at once. A :class:`FeedSet` is a small, picklable *description* of the feeds
(a path, a ``module:function`` spec, a seed): every consumer — the one-process loop, or each Ray
worker for its shard — iterates it lazily, and every feed carries a stable index (its position
in the dataset), so a sharded run and a one-process run name the same inputs the same way.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from parity.contract.errors import ParityError, first_line
from parity.contract.source import InputSpec
from parity.core.inputs import check_feed, input_files, load_feeds, random_feed, _load_file, _reader_for
from parity.core.preflight import notice

#: ``module:function`` or ``path/to/file.py:function`` (a dataset given as Python code)
_PY_SPEC = re.compile(r"^(?P<mod>[^:]+):(?P<attr>[A-Za-z_][A-Za-z0-9_.]*)$")


@dataclass
class Feed:
    """One input of the dataset: its stable index, a label people recognise (a file name), the arrays."""

    index: int
    label: str
    arrays: dict[str, np.ndarray]


def is_python_dataset(inputs: str | None) -> bool:
    """``--inputs pkg.module:fn`` / ``data.py:fn`` (not an existing path, not a Windows drive)."""
    if not inputs or Path(inputs).exists() or re.match(r"^[A-Za-z]:[\\/]", inputs):
        return False
    return bool(_PY_SPEC.match(inputs))


def python_spec_file(spec: str | None) -> str | None:
    """The source file a ``module:function`` or ``file.py:function`` spec names, found without importing it.

    Why: an output written over the model's or dataset's own ``.py`` file destroys the user's code;
    the check runs before anything is imported, so packages are searched, not executed.
    """
    import importlib.machinery
    import os
    import sys

    mod = (spec or "").rpartition(":")[0]
    if not mod:
        return None
    if mod.endswith(".py") or "/" in mod or os.sep in mod:
        return mod if Path(mod).is_file() else None
    path: list[str] | None = [os.getcwd(), *sys.path]
    found = None
    for part in mod.split("."):
        try:
            found = importlib.machinery.PathFinder.find_spec(part, path)
        except (ImportError, ValueError, OSError):
            return None
        if found is None:
            return None
        path = list(found.submodule_search_locations or [])
    origin = getattr(found, "origin", None)
    return origin if origin and Path(origin).is_file() else None


@dataclass
class FeedSet:
    """The feeds of one comparison, described, not loaded.

    ``kind`` is ``random`` (``count`` feeds from ``seed``, ``seed+1``...), ``files`` (a file or a
    folder of ``.npy``/``.npz``, or a file an input-reader plugin claims) or ``python`` (``spec``
    names a function returning an iterable of feeds: dicts by input name, tuples/lists in input
    order — extra items such as labels are ignored —, single arrays, torch tensors, or a
    ``torch.utils.data.DataLoader``). ``specs`` validate every feed (batch dimension free for files).
    """

    kind: str
    specs: list[InputSpec]
    path: str | None = None
    seed: int = 0
    count: int = 1
    spec: str | None = None
    limit: int | None = None
    _files: list[str] | None = field(default=None, repr=False)
    #: notes already printed (a cast input ...): once per run, however often the feeds are read
    _seen: set = field(default_factory=set, repr=False)

    # -- size and order -------------------------------------------------------------------
    def files(self) -> list[Path]:
        if self._files is None:
            self._files = [str(f) for f in input_files(Path(str(self.path)))]
        return [Path(f) for f in self._files]

    def __len__(self) -> int:
        n = self.known_length()
        if n is None:
            raise TypeError("this dataset's length is known only by iterating it")
        return n

    def known_length(self) -> int | None:
        """The number of feeds when it is known without reading them (random feeds, a folder of files)."""
        n: int | None = None
        if self.kind == "random":
            n = self.count
        elif self.kind == "files" and _reader_for(Path(str(self.path))) is None:
            n = len(self.files())
        elif self.kind == "python":
            obj = self._iterable()
            try:
                n = len(obj)  # a DataLoader or a list knows; a generator does not
            except TypeError:
                n = None
        if n is not None and self.limit is not None:
            n = min(n, self.limit)
        return n

    # -- iteration ---------------------------------------------------------------------------
    def iter(self, start: int = 0, stop: int | None = None, step: int = 1) -> Iterator[Feed]:
        """Feeds ``start, start+step, ...`` below ``stop`` (the shard of one worker), loaded one at a time."""
        if self.limit is not None:
            stop = self.limit if stop is None else min(stop, self.limit)
        if self.kind == "random":
            end = self.count if stop is None else min(stop, self.count)
            for k in range(start, end, step):
                yield Feed(k, f"random seed {self.seed + k}",
                           check_feed(random_feed(self.specs, self.seed + k), self.specs, "random"))
            return
        if self.kind == "files" and _reader_for(Path(str(self.path))) is None and Path(str(self.path)).is_dir():
            files = self.files()
            if not files:
                raise ParityError(f"{self.path}: no .npy or .npz input files in this folder.")
            seen = self._seen
            for k in range(start, len(files) if stop is None else min(stop, len(files)), step):
                f = files[k]
                yield Feed(k, f.name, check_feed(_load_file(f, self.specs, seen), self.specs, str(f), seen))
            return
        if self.kind == "files":
            stream: Iterator[tuple[str, dict[str, np.ndarray]]] = load_feeds(str(self.path), self.specs, self._seen)
        else:
            stream = self._python_feeds()
        for k, (label, arrays) in enumerate(itertools.islice(stream, start, stop, step)):
            yield Feed(start + k * step, label, arrays)

    def __iter__(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        for f in self.iter():
            yield f.label, f.arrays

    def first(self) -> tuple[str, dict[str, np.ndarray]]:
        for f in self.iter(0, 1):
            return f.label, f.arrays
        raise ParityError(f"{self.describe()}: yielded no feed.")

    def head(self, n: int, max_bytes: int | None = None) -> list[dict[str, np.ndarray]]:
        """The first ``n`` feeds (and no more than ``max_bytes`` of them, at least one): calibration data."""
        out: list[dict[str, np.ndarray]] = []
        total = 0
        for f in self.iter(0, n):
            size = sum(a.nbytes for a in f.arrays.values())
            if out and max_bytes is not None and total + size > max_bytes:
                break
            out.append(f.arrays)
            total += size
        return out

    def describe(self) -> str:
        if self.kind == "random":
            return f"{self.count} random feed(s) from seed {self.seed}"
        return str(self.path if self.kind == "files" else self.spec)

    # -- Python datasets -------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_obj", None)  # a DataLoader/generator is made again where the set is used
        return state

    def _iterable(self) -> Any:
        obj = self.__dict__.get("_obj")
        if obj is None:
            from parity.lib.torch_loader import import_spec

            fn = import_spec(str(self.spec), what="dataset spec")
            try:
                obj = fn() if callable(fn) and not hasattr(fn, "__iter__") else fn
            except Exception as e:  # the user's code: one line naming it
                raise ParityError(f"dataset {self.spec}: calling it failed: {first_line(e, typed=True)}") from e
            if not hasattr(obj, "__iter__"):
                raise ParityError(f"dataset {self.spec}: returned {type(obj).__name__}, not an iterable of feeds. "
                                  f"Note: return a list, a generator or a torch DataLoader.")
            if iter(obj) is obj:  # a generator: one pass only; the next iteration calls the function again
                self.__dict__["_obj"] = None
                return obj
            self.__dict__["_obj"] = obj
        return obj

    def _python_feeds(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        names = [s.name for s in self.specs]
        warned = False
        for k, item in enumerate(_guarded(self._iterable(), str(self.spec))):
            where = f"dataset {self.spec} item {k}"
            if isinstance(item, dict):
                missing = [n for n in names if n not in item]
                if missing:
                    raise ParityError(f"{where}: lacks input(s) {', '.join(missing)}. Note: it has "
                                      f"{', '.join(map(str, item))}.")
                arrays = {n: _as_array(item[n], where) for n in names}
            elif isinstance(item, (tuple, list)):
                if len(item) < len(names):
                    raise ParityError(f"{where}: {len(item)} values for {len(names)} inputs ({', '.join(names)}).")
                if len(item) > len(names) and not warned:
                    warned = True
                    notice(f"dataset {self.spec}: items hold {len(item)} values; the first {len(names)} feed "
                           f"{', '.join(names)} and the rest (labels?) are ignored.")
                arrays = {n: _as_array(v, where) for n, v in zip(names, item)}
            else:
                if len(names) != 1:
                    raise ParityError(f"{where}: one array given but the model has inputs {', '.join(names)}. "
                                      f"Note: yield a dict by input name or a tuple in input order.")
                arrays = {names[0]: _as_array(item, where)}
            yield f"item {k}", check_feed(arrays, self.specs, where, self._seen)


class LazyFeeds(Sequence):
    """The first feeds of a dataset, read on first use: calibration data that only an int8 target reads.

    Why lazy: reading 64 feeds (up to 256 MiB) at start-up costs every run, and almost no target
    calibrates; a worker that never calibrates never reads them.
    """

    def __init__(self, feeds: FeedSet, n: int, max_bytes: int | None) -> None:
        self._args = (feeds, n, max_bytes)
        self._items: list[dict[str, np.ndarray]] | None = None

    def _get(self) -> list[dict[str, np.ndarray]]:
        if self._items is None:
            fs, n, max_bytes = self._args
            self._items = fs.head(n, max_bytes)
        return self._items

    def __len__(self) -> int:
        return len(self._get())

    def __getitem__(self, i: Any) -> Any:
        return self._get()[i]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self._get())

    def __bool__(self) -> bool:
        return bool(self._get())


def _guarded(items: Any, spec: str) -> Iterator[Any]:
    """The dataset's items; an exception raised by the user's code while iterating becomes one line naming the spec."""
    it = iter(items)
    k = 0
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except ParityError:
            raise
        except Exception as e:  # the user's generator or DataLoader failed
            raise ParityError(f"dataset {spec}: item {k} failed: {first_line(e, typed=True)}. "
                              f"Note: the error is in the dataset's code, not in parity.") from e
        yield item
        k += 1


def _as_array(v: Any, where: str) -> np.ndarray:
    if hasattr(v, "detach") and hasattr(v, "cpu"):  # a torch tensor, without importing torch here
        v = v.detach().cpu().numpy()
    try:
        a = np.asarray(v)
    except Exception as e:
        raise ParityError(f"{where}: not an array ({type(v).__name__}): {first_line(e)}") from None
    if a.dtype == object:
        raise ParityError(f"{where}: not a numeric array ({type(v).__name__}).")
    return a

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
from typing import Any, Callable, Iterator, Mapping, Sequence

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
    """The feeds of one comparison, described, not loaded: the one interface of every kind of feeds.

    Subclasses say where feeds come from: :class:`RandomFeeds` (``count`` feeds from ``seed``,
    ``seed+1``...), :class:`FileFeeds` (a file or a folder of ``.npy``/``.npz``, or a file an
    input-reader plugin claims), :class:`PythonFeeds` (``spec`` names a function returning an
    iterable of feeds) and :class:`MemoryFeeds` (arrays the caller of ``parity.compare`` handed
    over, fed as they are). Every consumer uses the same methods: :meth:`iter` (a shard of labelled
    feeds by stable index), :meth:`known_length`, :meth:`first`, :meth:`head`, :meth:`describe`.
    ``specs`` validate every feed (batch dimension free for files and arrays).
    """

    specs: list[InputSpec] = field(default_factory=list)
    limit: int | None = None
    #: notes already printed (a cast input ...): once per run, however often the feeds are read
    _seen: set = field(default_factory=set, repr=False)

    kind = "?"

    # -- size and order -------------------------------------------------------------------
    def __len__(self) -> int:
        n = self.known_length()
        if n is None:
            raise TypeError("this dataset's length is known only by iterating it")
        return n

    def known_length(self) -> int | None:
        """The number of feeds when it is known without reading them (random feeds, a folder of files)."""
        n = self._length()
        if n is not None and self.limit is not None:
            n = min(n, self.limit)
        return n

    def _length(self) -> int | None:
        return None

    # -- iteration ---------------------------------------------------------------------------
    def iter(self, start: int = 0, stop: int | None = None, step: int = 1) -> Iterator[Feed]:
        """Feeds ``start, start+step, ...`` below ``stop`` (the shard of one worker), loaded one at a time."""
        if self.limit is not None:
            stop = self.limit if stop is None else min(stop, self.limit)
        return self._iter(start, stop, step)

    def _iter(self, start: int, stop: int | None, step: int) -> Iterator[Feed]:
        for k, (label, arrays) in enumerate(itertools.islice(self._stream(), start, stop, step)):
            yield Feed(start + k * step, label, arrays)

    def _stream(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        raise NotImplementedError

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
        raise NotImplementedError


@dataclass
class RandomFeeds(FeedSet):
    """``count`` random feeds of the (fully known) ``specs``, feed ``k`` from seed ``seed + k``."""

    seed: int = 0
    count: int = 1
    kind = "random"

    def _length(self) -> int | None:
        return self.count

    def _iter(self, start: int, stop: int | None, step: int) -> Iterator[Feed]:
        end = self.count if stop is None else min(stop, self.count)
        for k in range(start, end, step):
            yield Feed(k, f"random seed {self.seed + k}",
                       check_feed(random_feed(self.specs, self.seed + k), self.specs, "random"))

    def describe(self) -> str:
        return f"{self.count} random feed(s) from seed {self.seed}"


@dataclass
class FileFeeds(FeedSet):
    """A ``.npy``/``.npz`` file, a folder of them (one feed per file, by name), or a file an
    input-reader plugin claims (Polygraphy ``--save-inputs`` JSON ...)."""

    path: str = ""
    _files: list[str] | None = field(default=None, repr=False)
    kind = "files"

    def files(self) -> list[Path]:
        if self._files is None:
            self._files = [str(f) for f in input_files(Path(str(self.path)))]
        return [Path(f) for f in self._files]

    def _plain(self) -> bool:
        return _reader_for(Path(str(self.path))) is None

    def _length(self) -> int | None:
        return len(self.files()) if self._plain() else None

    def _iter(self, start: int, stop: int | None, step: int) -> Iterator[Feed]:
        if not (self._plain() and Path(str(self.path)).is_dir()):
            yield from super()._iter(start, stop, step)
            return
        files = self.files()
        if not files:
            raise ParityError(f"{self.path}: no .npy or .npz input files in this folder.")
        seen = self._seen
        for k in range(start, len(files) if stop is None else min(stop, len(files)), step):
            f = files[k]
            yield Feed(k, f.name, check_feed(_load_file(f, self.specs, seen), self.specs, str(f), seen))

    def _stream(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        return load_feeds(str(self.path), self.specs, self._seen)

    def describe(self) -> str:
        return str(self.path)


@dataclass
class PythonFeeds(FeedSet):
    """``spec`` (``module:function`` or ``data.py:function``) returns an iterable of feeds: dicts by
    input name, tuples/lists in input order (extra items such as labels are ignored), single arrays,
    torch tensors, or a ``torch.utils.data.DataLoader``. Made again wherever the set is used (a Ray
    worker calls the function itself): only the spec travels."""

    spec: str = ""
    kind = "python"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_obj", None)  # a DataLoader/generator is made again where the set is used
        return state

    def _length(self) -> int | None:
        obj = self._iterable()
        try:
            return len(obj)  # a DataLoader or a list knows; a generator does not
        except TypeError:
            return None

    def describe(self) -> str:
        return str(self.spec)

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

    def _stream(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
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


def _tensor_like(x: Any) -> bool:
    return hasattr(x, "shape") or hasattr(x, "__array__")


def positional(feed: Any) -> bool:
    """A tuple of tensors is one call's positional inputs, ``model(*feed)`` (as ``torch.onnx.export``
    takes its args); a list is several feeds."""
    return isinstance(feed, tuple) and bool(feed) and all(_tensor_like(v) for v in feed)


def memory_array(x: Any, where: str) -> np.ndarray:
    """A tensor or array as a numpy array (a torch tensor detached and moved to the CPU)."""
    if type(x).__module__.startswith("torch"):
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":  # numpy has no bfloat16: the model casts it back
            t = t.float()
        x = t.numpy()
    a = np.asarray(x)
    if a.dtype == object:
        raise ParityError(f"inputs: {where} is not numeric (a {type(x).__name__} holding objects). Note: give "
                          f"tensors or numeric arrays")
    return a


def _user_feeds(inputs: Any) -> Iterator[Any]:
    """One feed per element: a lone tensor/array, a dict of them, a tuple of positional tensors, or a
    list/iterable of those (read as it yields)."""
    if isinstance(inputs, Mapping) or _tensor_like(inputs) or positional(inputs):
        yield inputs
        return
    if isinstance(inputs, (str, bytes)):
        raise ParityError("inputs: a string is not inputs here. Note: pass a path or a dataset spec "
                          "'module:function' as inputs_path=..., or tensors/arrays/dicts")
    try:
        it = iter(inputs)
    except TypeError:
        raise ParityError(f"inputs: a {type(inputs).__name__} is not inputs. Note: give a tensor, an array, a dict "
                          f"name -> tensor, or a list of those (one feed each)") from None
    n = 0
    for feed in it:
        n += 1
        yield feed
    if not n:
        raise ParityError("inputs: the iterable gave no feed. Note: give at least one tensor, array or dict")


class _Kept:
    """What a :class:`MemoryFeeds` has read of a one-pass iterable, shared by every binding of it."""

    def __init__(self) -> None:
        self.arrays: list[dict[str, np.ndarray]] | None = None
        self.pending: Iterator[tuple[int, Any]] | None = None
        self.input_names: list[str] | None = None


@dataclass(eq=False)
class MemoryFeeds(FeedSet):
    """Feeds the caller of ``parity.compare`` handed over as objects: a tensor or array, a dict input
    name -> tensor, a tuple of tensors (one call's positional inputs), or a list (any iterable) of those.

    Why a class of its own: the arrays are already in memory, so they are fed as they are, never
    written to disk and read back. A list (or anything iterable more than once) is read afresh at
    every pass; a one-pass iterable (a generator) is kept as it is read, since the fix search and
    calibration read the feeds again (for more feeds than memory holds, give ``inputs_path=`` a
    folder or a dataset spec ``module:function``). Sent to Ray workers, the converted arrays travel.

    Labels: ``feed 0``, ``feed 1``... (the ``feed k`` the errors about them name; no file exists).
    ``names()`` gives the model's input names in call order, to name a tuple of positional inputs.
    """

    obj: Any = None
    names: Callable[[], list[str] | None] | None = field(default=None, repr=False)
    _kept: _Kept = field(default_factory=_Kept, repr=False)
    kind = "memory"

    def bound(self, specs: list[InputSpec], limit: int | None = None) -> "MemoryFeeds":
        """These feeds checked against the model's ``specs`` (what :func:`parity.core.compare.prepare` runs)."""
        return MemoryFeeds(specs=specs, limit=limit, obj=self.obj, names=self.names, _kept=self._kept)

    def _one(self) -> bool:
        return isinstance(self.obj, Mapping) or _tensor_like(self.obj) or positional(self.obj)

    def _reiterable(self) -> bool:
        if self._one():
            return True
        try:
            return iter(self.obj) is not self.obj
        except TypeError:
            return True  # not iterable at all: _user_feeds says so

    def _length(self) -> int | None:
        kept = self._kept
        if kept.arrays is not None and kept.pending is None:
            return len(kept.arrays)
        if self._one():
            return 1
        try:
            return len(self.obj)
        except TypeError:
            return None

    def raw(self) -> Iterator[dict[str, np.ndarray]]:
        """Every feed as name -> numpy array (names as given; a lone array under ``""``), unchecked."""
        kept = self._kept
        if kept.arrays is None and self._reiterable():
            for k, feed in enumerate(_user_feeds(self.obj)):
                yield self._arrays(k, feed)
            return
        if kept.arrays is None:
            kept.arrays, kept.pending = [], enumerate(_user_feeds(self.obj))
        i = 0
        while True:
            if i < len(kept.arrays):
                yield kept.arrays[i]
                i += 1
                continue
            if kept.pending is None:
                return
            try:
                k, feed = next(kept.pending)
            except StopIteration:
                kept.pending = None
                return
            kept.arrays.append(self._arrays(k, feed))

    def _arrays(self, k: int, feed: Any) -> dict[str, np.ndarray]:
        if positional(feed):
            kept = self._kept
            if kept.input_names is None:
                kept.input_names = (self.names() if self.names is not None else None) or \
                    [s.name for s in self.specs]
            known = kept.input_names
            if not known:
                raise ParityError(f"inputs: feed {k} is a tuple of {len(feed)} positional inputs, but the model's "
                                  f"input names are unknown. Note: pass a dict input name -> tensor")
            if len(feed) > len(known):
                raise ParityError(f"inputs: feed {k} is a tuple of {len(feed)} positional inputs (one call, "
                                  f"model(*inputs)), but the model takes {len(known)}: {', '.join(known)}. Note: "
                                  f"pass a list [x1, x2, ...] for several feeds")
            feed = dict(zip(known, feed))
        if isinstance(feed, Mapping):
            arrays = {str(n): memory_array(v, f"feed {k} input {n!r}") for n, v in feed.items()}
            if not arrays:
                raise ParityError(f"inputs: feed {k} is an empty dict. Note: map input names to tensors")
            return arrays
        return {"": memory_array(feed, f"feed {k}")}

    def _stream(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        names = [s.name for s in self.specs]
        for k, arrays in enumerate(self.raw()):
            where = f"inputs: feed {k}"
            if "" in arrays:  # a lone array: the model's only input (as a lone .npy file)
                if len(names) != 1:
                    raise ParityError(f"{where}: one array given but the model has inputs {', '.join(names)}. "
                                      f"Note: pass a dict input name -> tensor.")
                arrays = {names[0]: arrays[""]}
            else:
                missing = [n for n in names if n not in arrays]
                if missing:
                    raise ParityError(f"{where}: arrays {', '.join(arrays)} do not name the model inputs "
                                      f"{', '.join(names)}. Note: map every input name to a tensor.")
                arrays = {n: arrays[n] for n in names}
            yield f"feed {k}", check_feed(arrays, self.specs, where, self._seen)

    def peek_shapes(self) -> dict[str, tuple[int, ...]]:
        """The first feed's shapes by name ("" for a lone array): the shapes of a model that declares none."""
        for arrays in self.raw():
            return {n: tuple(a.shape) for n, a in arrays.items()}
        return {}

    def describe(self) -> str:
        return "the inputs given in memory"

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for a Ray worker: the converted arrays travel, not the caller's objects (a
        generator or a closure cannot be pickled; a worker must see the very same feeds)."""
        kept = _Kept()
        kept.arrays, kept.input_names = list(self.raw()), self._kept.input_names
        return {**self.__dict__, "obj": None, "names": None, "_kept": kept}


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

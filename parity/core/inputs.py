"""Inputs for a comparison: random feeds from declared shapes, or files (``.npy``, ``.npz``, a folder).

Reference and target always receive the very same feed; a folder of feed files is a small
dataset over which per-layer metrics are aggregated (mean and worst).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from parity.contract.dumpformat import check_npy_header, read_npy
from parity.contract.errors import ARCHIVE_ERRORS, ParityError, UsageError, one_line
from parity.contract.frontend import option, shape_hint
from parity.contract.source import InputSpec
from parity.core.preflight import notice

_SHAPE_RE = re.compile(r"^\s*(?:(?P<name>[^:]+):)?(?P<dims>\d+(?:[x,]\d+)*)(?::(?P<dtype>[A-Za-z][A-Za-z0-9_]*))?\s*$")

#: dtypes random inputs can be made of (floats: standard normal; integers: small indices; bool: ones)
FEEDABLE_KINDS = "fiub"


def input_dtype(value: Any, name: str) -> str:
    """A dtype as given (``"int64"``, ``np.int64``, ``torch.int64``) as the numpy name feeds use.

    Why here: the command line (``--input-shape ids:1x16:int64``) and the API (``input_dtypes=``)
    give dtypes in different spellings; both mean one numpy dtype.
    """
    text = str(value).replace("torch.", "") if type(value).__module__.startswith("torch") else value
    if text == "long":
        text = "int64"
    try:
        dt = np.dtype(text)
    except TypeError:
        dt = None
    if dt is None or dt.kind not in FEEDABLE_KINDS:
        raise UsageError(f"{option('input_dtype')}: {value!r} for input {name!r} is not a dtype parity can feed. "
                         f"Note: use float32, float16, int64, int32, uint8 or bool")
    return dt.name


def parse_input_shapes(items: Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``--input-shape name:1x3x224x224[:dtype]`` (name optional for a single-input model); usage
    errors exit 2. The dtypes are read by :func:`parse_input_dtypes`."""
    return {name: dims for name, (dims, _dtype) in _parse_shape_items(items).items()}


def parse_input_dtypes(items: Sequence[str] | None) -> dict[str, str]:
    """The dtypes ``--input-shape input_ids:1x16:int64`` gives (name -> numpy dtype name)."""
    return {name: dtype for name, (_dims, dtype) in _parse_shape_items(items).items() if dtype}


def _parse_shape_items(items: Sequence[str] | None) -> dict[str, tuple[tuple[int, ...], str | None]]:
    out: dict[str, tuple[tuple[int, ...], str | None]] = {}
    for item in items or []:
        m = _SHAPE_RE.match(item)
        if not m:
            raise UsageError(f"--input-shape {item!r} is not understood. Note: use NAME:1x3x224x224 "
                             f"(or 1x3x224x224 for a model with one input), optionally with a dtype: "
                             f"input_ids:1x16:int64.")
        dims = tuple(int(d) for d in re.split(r"[x,]", m.group("dims")))
        if 0 in dims:
            raise UsageError(f"--input-shape {item!r} has a dimension of 0, an empty input. "
                             f"Note: every size must be at least 1.")
        name = (m.group("name") or "").strip()
        if name in out:
            raise UsageError(f"--input-shape gives input {name or '(unnamed)'!r} twice. Note: give each input once.")
        out[name] = (dims, input_dtype(m.group("dtype"), name or "(unnamed)") if m.group("dtype") else None)
    return out


def resolve_specs(specs: list[InputSpec], shapes: dict[str, tuple[int, ...]], model: str,
                  dtypes: dict[str, str] | None = None) -> list[InputSpec]:
    """Apply shape (and dtype) overrides; every dimension must be known afterwards.

    Errors name the front end's parameter (``--input-shape`` or ``input_shapes=``, see
    :mod:`parity.contract.frontend`)."""
    names = ", ".join(s.name for s in specs)
    if "" in shapes:
        if len(specs) != 1:
            raise ParityError(f"{model}: {option('input_shape')} without a name needs a single-input model. "
                              f"Note: inputs are {names}.")
        shapes = {specs[0].name: shapes[""]}
    dtypes = dict(dtypes or {})
    if "" in dtypes and len(specs) == 1:  # --input-shape 1x16:int64 on a single-input model
        dtypes[specs[0].name] = dtypes.pop("")
    for what, given in (("input_shape", shapes), ("input_dtype", dtypes)):
        unknown = set(given) - {s.name for s in specs}
        if unknown:
            raise ParityError(f"{model}: {option(what)} names unknown input(s) {', '.join(sorted(unknown))}. "
                              f"Note: inputs are {names}.")
    out = []
    for s in specs:
        shape = shapes.get(s.name, s.shape)
        if shape is None or any(d is None for d in shape):
            raise ParityError(f"{model}: input {s.name!r} has unknown dimensions {list(shape or [])}. "
                              f"Note: pass {shape_hint(s.name, shape or (1, 3, 224, 224))} with the sizes to use.")
        dtype = dtypes.get(s.name, s.dtype)
        # an index's bound (an embedding's rows) holds whatever integer type the user picks for it
        out.append(InputSpec(s.name, tuple(int(d) for d in shape), dtype,
                             s.high if dtype is not None and np.dtype(dtype).kind in "iu" else None))
    return out


def random_feed(specs: list[InputSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """A reproducible feed: standard normal floats, small non-negative integers for index inputs
    (below the spec's ``high`` where the model tells it, e.g. an embedding's row count)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for s in specs:
        dt = np.dtype(s.dtype or "float32")  # undeclared dtype (None): float32
        if dt.kind == "f":
            feed[s.name] = rng.standard_normal(s.shape).astype(dt)
        elif dt.kind in "iu":
            high = 100 if s.high is None else max(1, min(100, int(s.high)))
            feed[s.name] = rng.integers(0, high, size=s.shape).astype(dt)
        elif dt.kind == "b":
            feed[s.name] = np.ones(s.shape, dtype=dt)
        else:
            raise ParityError(f"input {s.name!r}: cannot make random values of dtype {s.dtype}. "
                              f"Note: pass {option('inputs')} with a .npz file.")
    return feed


#: arrays of an ``.npz`` that are labels, not model inputs
LABEL_KEYS = ("labels", "label", "y")


def data_arrays(keys: Sequence[str]) -> list[str]:
    """The keys of an ``.npz`` that may be model inputs (labels left out)."""
    return [k for k in keys if k not in LABEL_KEYS]


def _npz_header(z: Any, key: str, path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """A member's shape and dtype from its header, read before numpy decompresses (and allocates) the data."""
    zf = z.zip
    info = zf.getinfo(key + ".npy") if key + ".npy" in zf.namelist() else zf.getinfo(key)
    with zf.open(info) as fh:
        return check_npy_header(fh, info.file_size, f"{path} [{key}]")


def _npz_shape(z: Any, key: str, path: Path) -> tuple[int, ...]:
    """A member's shape from its header, checked before numpy allocates what a damaged header announces."""
    header = _npz_header(z, key, path)
    return header[0] if header else ()


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    with open(path, "rb") as fh:
        return check_npy_header(fh, path.stat().st_size, str(path))


def declared_arrays(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Every array of a ``.npy``/``.npz`` file as its header declares it (shape, dtype), no data read.

    Why: a 14 MB ``.npz`` can decompress to gigabytes; its headers say so before a byte of data is read.
    """
    if path.suffix == ".npy":
        header = _npy_header(path)
        return {"": header} if header else {}
    with np.load(path, allow_pickle=False) as z:
        return {k: h for k in z.keys() if (h := _npz_header(z, k, path))}


def _check_declared(where: str, name: str, header: tuple[tuple[int, ...], np.dtype] | None,
                    specs: list[InputSpec]) -> None:
    """The header's shape and dtype against the model's input ``name``, before any data is read."""
    if header is None:
        return
    shape, dtype = header
    if dtype.kind == "c":
        raise ParityError(f"{where}: input {name!r} holds complex values ({dtype}); models take real inputs and "
                          f"casting would drop the imaginary part. Note: save the real (or imaginary) part, "
                          f"e.g. a.real.astype(np.float32).")
    decl = next((s.shape for s in specs if s.name == name), None)
    if decl is not None and (len(decl) != len(shape) or any(d is not None and d != n for d, n in zip(decl, shape))):
        raise ParityError(f"{where}: input {name!r} has shape {list(shape)} but the model expects "
                          f"{['?' if d is None else d for d in decl]} (read from its header; no data was read).")


def _npz_read(z: Any, keys: dict[str, str], path: Path, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (input name -> member) of an open ``.npz``, every header checked before any is read."""
    for name, key in keys.items():
        _check_declared(str(path), name, _npz_header(z, key, path), specs)
    return {name: z[key] for name, key in keys.items()}


def _load_file(path: Path, specs: list[InputSpec], seen: set | None = None) -> dict[str, np.ndarray]:
    names = [s.name for s in specs]
    try:
        if path.suffix == ".npy":
            if len(names) != 1:
                raise ParityError(f"{path}: one array given but the model has inputs {', '.join(names)}. "
                                  f"Note: use a .npz with one array per input name.")
            _check_declared(str(path), names[0], _npy_header(path), specs)
            return {names[0]: read_npy(path, str(path))}
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if all(n in keys for n in names):
                    return _npz_read(z, {n: n for n in names}, path, specs)
                if len(names) == 1 and len(keys) >= 1 and names[0] not in keys:
                    data_keys = data_arrays(keys)
                    if len(data_keys) == 1:
                        if seen is not None and ("key", data_keys[0]) not in seen:
                            seen.add(("key", data_keys[0]))
                            notice(f"{path}: array {data_keys[0]!r} is fed to the model's only input {names[0]!r} "
                                   f"(the names differ).")
                        return _npz_read(z, {names[0]: data_keys[0]}, path, specs)
                raise ParityError(f"{path}: arrays {', '.join(keys)} do not name the model inputs "
                                  f"{', '.join(names)}. Note: save one array per input name.")
    except ParityError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise ParityError(f"{path}: holds pickled objects, which parity never loads. "
                              f"Note: save plain numeric arrays.") from None
        raise ParityError(f"{path}: not a readable numpy file ({e}).") from None
    except ARCHIVE_ERRORS as e:
        raise ParityError(f"{path}: not a readable numpy file ({e}).") from None
    raise ParityError(f"{path}: unsupported input file. Note: use .npy, .npz or a folder of them.")


def _nonfinite(a: np.ndarray) -> int:
    """NaN/Inf elements of a float array, counted in blocks (no full-size mask)."""
    if a.dtype.kind not in "fc":
        return 0
    flat = a.reshape(-1)
    step = 1 << 20
    return sum(int(flat[i:i + step].size - np.count_nonzero(np.isfinite(flat[i:i + step])))
               for i in range(0, flat.size, step))


def _cast(a: np.ndarray, dtype: np.dtype, name: str, where: str, seen: set | None) -> np.ndarray:
    """``a`` as the model's dtype. Float to float is cast (float64 to float32 silently, as numpy
    saves float64 by default); any other cast only when every value survives it, with a note."""
    out = a.astype(dtype)
    if not (a.dtype.kind == "f" and dtype.kind == "f"):
        back = out.astype(a.dtype)
        changed = int(a.size - np.count_nonzero((back == a) | (np.isnan(a) if a.dtype.kind == "f" else False)))
        if changed:
            raise ParityError(f"{where}: input {name!r} is {a.dtype} but the model takes {dtype}; the cast would "
                              f"change {changed} of {a.size} values. Note: save the array as {dtype}.")
    if (a.dtype, dtype) != (np.dtype(np.float64), np.dtype(np.float32)):
        key = ("cast", name, str(a.dtype), str(dtype))
        if seen is None or key not in seen:
            if seen is not None:
                seen.add(key)
            notice(f"{where}: input {name!r} is {a.dtype}, cast to {dtype} (the dtype the model takes).")
    return out


def check_feed(feed: dict[str, np.ndarray], specs: list[InputSpec], where: str,
               seen: set | None = None) -> dict[str, np.ndarray]:
    """Shapes must fit the declared ones (dynamic dims free) and be non-empty, values finite;
    other dtypes are cast to the declared ones (see :func:`_cast`), and kept where the model declares
    none (``dtype`` None: int64 token ids stay int64). ``seen`` keeps notes to once per run."""
    out = {}
    for s in specs:
        a = feed[s.name]
        if a.dtype.kind == "c":  # numpy's cast would drop the imaginary part with a bare ComplexWarning
            _check_declared(where, s.name, (a.shape, a.dtype), specs)
        decl = s.shape
        if decl is not None and (len(decl) != a.ndim or any(d is not None and d != n for d, n in zip(decl, a.shape))):
            raise ParityError(f"{where}: input {s.name!r} has shape {list(a.shape)} but the model expects "
                              f"{['?' if d is None else d for d in decl]}.")
        if a.size == 0:
            raise ParityError(f"{where}: input {s.name!r} is empty (shape {list(a.shape)}). "
                              f"Note: every dimension, the batch included, must be at least 1.")
        bad = _nonfinite(a)
        if bad:
            raise ParityError(f"{where}: input {s.name!r} holds {bad} NaN/Inf of {a.size} values. Note: both runs "
                              f"would carry them through every layer and blame the first; feed finite values.")
        if s.dtype is None:  # the model declares no dtype: the file's is kept, floats as float32
            out[s.name] = a.astype(np.float32) if a.dtype.kind == "f" and a.dtype != np.float32 else a
            continue
        out[s.name] = _cast(a, np.dtype(s.dtype), s.name, where, seen) if a.dtype != np.dtype(s.dtype) else a
    return out


def input_files(p: Path) -> list[Path]:
    """A folder's .npy/.npz files by name, or the file itself."""
    return sorted(f for f in p.iterdir() if f.suffix in (".npy", ".npz")) if p.is_dir() else [p]


def _reader_for(p: Path) -> Any:
    """The input-reader plugin that claims ``p``, if any (``.npy``/``.npz`` are read here)."""
    if p.is_dir() or p.suffix in (".npy", ".npz"):
        return None
    from parity.core.registry import all_of

    for reader in all_of("input-reader").values():
        if reader.can_read(p):
            return reader
    return None


def load_feeds(path: str | Path, specs: list[InputSpec],
               seen: set | None = None) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Feeds from a file or a folder of files (sorted by name), each validated against ``specs``.

    ``seen`` remembers the notes already printed (a cast, a renamed array), across several reads.
    An error is one line whatever the file holds: names read from it (a JSON key, an archive member)
    may contain line breaks, which the message shows escaped.
    """
    try:
        yield from _load_feeds(path, specs, seen)
    except ParityError as e:
        e.args = (one_line(str(e)),)
        raise


def _load_feeds(path: str | Path, specs: list[InputSpec],
                seen: set | None) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    p = Path(path)
    if not p.exists():
        raise ParityError(f"{p}: input file or folder not found.")
    reader = _reader_for(p)
    seen = set() if seen is None else seen
    if reader is not None:  # a plugin's format (Polygraphy --save-inputs ...): replay what ran elsewhere
        for k, feed in enumerate(reader.read(p)):
            missing = [s.name for s in specs if s.name not in feed]
            if missing:
                raise ParityError(f"{p}: input set {k} lacks {', '.join(missing)}. Note: it has {', '.join(feed)}.")
            yield f"{p.name}[{k}]", check_feed(feed, specs, f"{p}[{k}]", seen)
        return
    files = input_files(p)
    if not files:
        raise ParityError(f"{p}: no .npy or .npz input files in this folder.")
    for f in files:
        yield f.name, check_feed(_load_file(f, specs, seen), specs, str(f), seen)


def peek_shapes(path: str | Path, names: Sequence[str] | None = None) -> dict[str, tuple[int, ...]]:
    """Array shapes of the first input file, by name ("" for a lone ``.npy`` array), without loading data.

    Lets a model that declares no input shapes (a TorchScript module) run on the given inputs. Label
    arrays (``y``, ``labels``) are left out, unless the model's input ``names`` include them.
    """
    p = Path(path)
    files = input_files(p)
    if not files or not files[0].exists():
        return {}
    f = files[0]
    try:
        if f.suffix == ".npy":
            return {"": tuple(np.load(f, mmap_mode="r", allow_pickle=False).shape)}
        with np.load(f, allow_pickle=False) as z:
            keys = list(z.keys())
            wanted = [k for k in keys if k in names] if names and all(n in keys for n in names) else data_arrays(keys)
            return {k: _npz_shape(z, k, f) for k in wanted}
    except (ParityError, *ARCHIVE_ERRORS):
        return {}  # load_feeds reports the problem with the file's name

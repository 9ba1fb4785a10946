"""Dump formats for activations captured by Polygraphy and trtexec on another machine.

``polygraphy-json``  ``polygraphy run ... --save-outputs out.json``: Polygraphy's ``RunResults``
                     JSON, ``{"lst": [[runner_name, [IterationResult, ...]], ...]}``; each array
                     is base64 of an ``.npy`` file (``{"array": ..., "polygraphy_class": "ndarray"}``,
                     usually wrapped in a ``LazyArray``). Decoded with ``np.load(...,
                     allow_pickle=False)``: nothing is unpickled. Also written, so Polygraphy
                     can load parity's captures (``polygraphy run --load-outputs``).
``trtexec-json``     ``trtexec --exportOutput=out.json``: ``[{"name": ..., "dimensions": "1x1000",
                     "values": [ ... ]}, ...]``, values printed with C++ stream defaults
                     (6 significant digits; ``nan``/``inf`` bare, which is not JSON).
``trtexec-debug``    ``trtexec --saveAllDebugTensors=summary,numpy`` (TensorRT >= 10.12):
                     ``tensor_summary.json`` listing every debug tensor in the order TensorRT
                     produced it, with its shape, type and the ``.npy``/``.raw`` file holding it.

:func:`load_polygraphy_inputs` reads ``--save-inputs in.json`` so a comparison can replay the
exact inputs; :func:`save_polygraphy_inputs` writes feeds for ``polygraphy run --load-inputs``. Formats are chosen by content, not only by the ``.json`` extension, so the
three never claim each other's files (nor a layer-information JSON).
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from parity.contract.atomic import atomic_path
from parity.contract.errors import ARCHIVE_ERRORS, ParityError, first_line
from parity.contract.dumpformat import DumpFormat, check_npy_dtype, read_npy
from parity.contract.records import Activation
from parity.lib.polygraphy_json import TYPE_KEY as _TYPE_KEY, save_polygraphy_inputs  # noqa: F401 - re-exported

_SNIFF_BYTES = 1 << 16
_LEGACY_PREFIX = "__polygraphy_encoded_"


def _head(path: Path, n: int = _SNIFF_BYTES) -> str:
    try:
        with path.open("rb") as f:
            return f.read(n).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _load_json(path: Path, what: str) -> Any:
    try:
        with path.open("rb") as f:
            return json.load(f)
    except OSError as e:
        raise ParityError(f"cannot read {what} {path}: {e.strerror or e}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ParityError(f"{path}: not valid JSON ({e}). Note: expected {what}") from None


# --------------------------------------------------------------------------- Polygraphy

def _type_of(obj: dict[str, Any]) -> str | None:
    t = obj.get(_TYPE_KEY)
    if t is not None:
        return str(t)
    for k in obj:
        if k.startswith(_LEGACY_PREFIX):  # Polygraphy before 0.3x: {"__polygraphy_encoded_ndarray": ...}
            return k[len(_LEGACY_PREFIX):]
    return None


def decode_polygraphy_array(obj: Any, where: str) -> np.ndarray:
    """An array from Polygraphy's JSON encoding, without unpickling anything."""
    if isinstance(obj, dict):
        kind = _type_of(obj)
        if kind in ("LazyArray", "LazyNumpyArray"):
            return decode_polygraphy_array(obj.get("values"), where)
        if kind == "ndarray" or (kind is None and "array" in obj):
            raw = obj.get("array")
            if not isinstance(raw, str):
                raise ParityError(f"{where}: array payload is missing. Note: expected "
                                  f'{{"array": "<base64 .npy>", "polygraphy_class": "ndarray"}}')
            try:
                data = base64.b64decode(raw.encode(), validate=True)
            except (binascii.Error, ValueError):
                data = raw.encode("latin-1")  # Polygraphy's older latin-1 encoding
            if not data.startswith(b"PK"):
                return read_npy(data, where)  # header checked first: never unpickled, never over-allocated
            try:  # Polygraphy's oldest encoding: an .npz
                with np.load(io.BytesIO(data), allow_pickle=False) as z:
                    names = list(z.files)
                    if not names:
                        raise ParityError(f"{where}: the encoded .npz archive holds no array")
                    arr = z[names[0]]
            except ParityError:
                raise
            except ARCHIVE_ERRORS as e:
                raise ParityError(f"{where}: the encoded .npz archive cannot be read ({first_line(e, 200)}). "
                                  f"Note: parity never unpickles dump files; save numeric arrays") from None
            check_npy_dtype(arr.dtype, where)
            return arr
        if kind == "Tensor":
            return _decode_torch(obj, where)
        raise ParityError(f"{where}: value of type {kind or 'unknown'} is not an array. Note: expected a "
                          f"Polygraphy-encoded ndarray (polygraphy_class ndarray or LazyArray)")
    if isinstance(obj, list):  # a plain JSON list of numbers
        try:
            arr = np.asarray(obj)
        except (ValueError, TypeError):  # ragged nesting
            arr = None
        if arr is None or arr.dtype.kind not in "biuf":
            raise ParityError(f"{where}: the JSON list is not a numeric array (ragged, or holds non-numbers). "
                              f"Note: expected nested lists of numbers of one shape")
        return arr
    raise ParityError(f"{where}: value is not an encoded array (saw {type(obj).__name__})")


def _decode_torch(obj: dict[str, Any], where: str) -> np.ndarray:
    try:
        import torch
    except ImportError:
        raise ParityError(f"{where}: the array was saved as a torch tensor and torch is not installed. "
                          f"Note: pip install torch, or save outputs as numpy arrays") from None
    try:
        data = base64.b64decode(str(obj.get("tensor", "")).encode(), validate=True)
        t = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - weights_only refuses anything but tensors; say so
        raise ParityError(f"{where}: the torch tensor cannot be loaded safely "
                          f"({first_line(e, 200, typed=True)})") from None
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy()


def runner_tags(runner_names: list[str]) -> list[str]:
    """Short run tags for runners: ``trt-runner-N0-...`` -> ``trt``; repeated kinds get an index."""
    kinds = [re.split(r"-runner", n, maxsplit=1)[0] or f"runner{i}" for i, n in enumerate(runner_names)]
    kinds = [re.sub(r"[^A-Za-z0-9]+", "", k) or f"runner{i}" for i, k in enumerate(kinds)]
    out = []
    for i, k in enumerate(kinds):
        out.append(f"{k}{kinds[:i + 1].count(k) - 1}" if kinds.count(k) > 1 else k)
    return out


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise ParityError(f"{name}={v!r} is not a whole number. Note: e.g. {name}=0") from None


class PolygraphyJsonFormat(DumpFormat):
    """Polygraphy ``--save-outputs`` JSON (``RunResults``).

    One runner in the file: records are named by tensor. Several runners: each record is
    named ``TENSOR_TAG`` with the runner's tag (``onnxrt``, ``trt``; see :func:`runner_tags`),
    so ``parity analyze out.json out.json --ref-tag onnxrt --target-tag trt`` compares them.
    ``runner`` (index or tag or full name; env ``PARITY_POLYGRAPHY_RUNNER``) picks one runner
    and names records by tensor. ``iteration`` (env ``PARITY_POLYGRAPHY_ITERATION``, default
    0, negative counts from the end) picks the iteration.
    """

    name = "polygraphy-json"
    description = "Polygraphy RunResults JSON (polygraphy run --save-outputs)"
    extensions = (".json",)
    multi = True
    writable = True

    def __init__(self, runner: int | str | None = None, iteration: int | None = None) -> None:
        self.runner = runner
        self.iteration = iteration

    def can_read(self, path: Path) -> bool:
        if not path.name.lower().endswith(".json"):
            return False
        head = _head(path, 4096).lstrip()
        return re.match(r'^\{\s*"lst"\s*:\s*\[', head) is not None

    def _select(self, lst: list[Any], path: Path) -> list[tuple[str, str, list[Any]]]:
        names = []
        for i, entry in enumerate(lst):
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list)):
                raise ParityError(f"{path}: runner entry #{i} is not [runner_name, [iterations...]]. "
                                  f"Note: expected the JSON written by polygraphy run --save-outputs")
            names.append(str(entry[0]))
        tags = runner_tags(names)
        choice = self.runner if self.runner is not None else os.environ.get("PARITY_POLYGRAPHY_RUNNER") or None
        rows = [(names[i], tags[i], lst[i][1]) for i in range(len(lst))]
        if choice is None:
            return rows
        if isinstance(choice, int) or (isinstance(choice, str) and re.fullmatch(r"-?\d+", choice)):
            k = int(choice)
            if not -len(rows) <= k < len(rows):
                raise ParityError(f"{path}: runner index {k} is out of range. Note: the file holds "
                                  f"{len(rows)} runner(s): {', '.join(tags)}")
            return [rows[k]]
        hits = [r for r in rows if choice in (r[0], r[1])]
        if not hits:
            raise ParityError(f"{path}: no runner {choice!r}. Note: runners here: "
                              f"{', '.join(f'{t} ({n})' for n, t, _ in rows)}")
        return hits[:1]

    def read(self, path: Path) -> Iterator[Activation]:
        path = Path(path)
        doc = _load_json(path, "Polygraphy RunResults JSON (polygraphy run --save-outputs)")
        if not isinstance(doc, dict) or not isinstance(doc.get("lst"), list):
            raise ParityError(f"{path}: not a Polygraphy RunResults file. Note: expected "
                              f'{{"lst": [[runner, [iterations]]], "polygraphy_class": "RunResults"}}')
        rows = self._select(doc["lst"], path)
        it = self.iteration if self.iteration is not None else _env_int("PARITY_POLYGRAPHY_ITERATION", 0)
        several = len(rows) > 1
        for runner, tag, iters in rows:
            if not iters:
                raise ParityError(f"{path}: runner {runner!r} has no iterations")
            if not -len(iters) <= it < len(iters):
                raise ParityError(f"{path}: iteration {it} does not exist for runner {runner!r}. "
                                  f"Note: it ran {len(iters)} iteration(s); use 0..{len(iters) - 1}")
            res = iters[it]
            if not isinstance(res, dict) or not isinstance(res.get("outputs"), dict):
                raise ParityError(f"{path}: iteration {it} of runner {runner!r} has no outputs mapping. "
                                  f"Note: expected an IterationResult with \"outputs\"")
            for order, (tname, enc) in enumerate(res["outputs"].items()):
                arr = decode_polygraphy_array(enc, f"{path} [{runner}: {tname}]")
                meta = {"runner": runner, "runner_tag": tag, "iteration": it % len(iters),
                        "iterations": len(iters), "format": self.name}
                if res.get("runtime") is not None:
                    meta["runtime_s"] = res["runtime"]
                yield Activation(name=f"{tname}_{tag}" if several else str(tname), array=arr, order=order,
                                 meta=meta)

    def write_many(self, records: Iterable[Activation], path: Path) -> list[Activation]:
        """Write one runner, one iteration (runner name ``parity``), streamed array by array."""
        path = Path(path)
        runner = "parity-runner"
        written: list[Activation] = []
        with atomic_path(path) as tmp:
            with tmp.open("w", encoding="utf-8") as f:
                f.write('{"lst": [[' + json.dumps(runner) + ', [{"outputs": {')
                first = True
                seen: set[str] = set()
                for rec in records:
                    arr = np.asarray(rec.array)
                    if arr.dtype.hasobject:
                        raise ParityError(f"layer {rec.name!r} holds Python objects; Polygraphy JSON stores "
                                          f"numeric arrays only")
                    key = rec.key
                    if key in seen:
                        raise ParityError(f"layer {key!r} appears twice; Polygraphy JSON maps each name once")
                    seen.add(key)
                    buf = io.BytesIO()
                    np.save(buf, arr, allow_pickle=False)
                    payload = base64.b64encode(buf.getvalue()).decode()
                    f.write(("" if first else ", ") + json.dumps(key) + ': {"values": {"array": "' + payload
                            + '", "polygraphy_class": "ndarray"}, "polygraphy_class": "LazyArray"}')
                    first = False
                    written.append(Activation(rec.name, np.broadcast_to(np.zeros((), arr.dtype), arr.shape),
                                              rec.output_index, rec.order, rec.op_type, dict(rec.meta)))
                f.write('}, "runtime": 0.0, "runner_name": ' + json.dumps(runner)
                        + ', "polygraphy_class": "IterationResult"}]]], "polygraphy_class": "RunResults"}')
        return written


def load_polygraphy_inputs(path: str | os.PathLike[str]) -> list[dict[str, np.ndarray]]:
    """The feeds of ``polygraphy run --save-inputs in.json``: one ``{input name: array}`` per iteration."""
    p = Path(path)
    doc = _load_json(p, "Polygraphy input data (polygraphy run --save-inputs)")
    if isinstance(doc, dict) and _type_of(doc) is None and all(isinstance(v, dict) for v in doc.values()):
        doc = [doc]  # a single feed dict
    if not isinstance(doc, list) or not all(isinstance(d, dict) for d in doc):
        raise ParityError(f"{p}: not Polygraphy input data. Note: expected a JSON list of "
                          f"{{input name: encoded array}}, as written by polygraphy run --save-inputs")
    feeds: list[dict[str, np.ndarray]] = []
    for k, d in enumerate(doc):
        feeds.append({str(n): decode_polygraphy_array(v, f"{p} [iteration {k}: {n}]") for n, v in d.items()})
    if not feeds:
        raise ParityError(f"{p}: holds no input data. Note: run polygraphy with --save-inputs and at least one iteration")
    return feeds


def load_polygraphy_outputs(path: str | os.PathLike[str], runner: int | str | None = None,
                            iteration: int = 0) -> list[Activation]:
    """All records of one Polygraphy results file (convenience for scripts and tests)."""
    return list(PolygraphyJsonFormat(runner, iteration).read(Path(path)))


# --------------------------------------------------------------------------- trtexec

_STR = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BARE = re.compile(r"(?<![A-Za-z0-9_.])(-?)(nan|inf|infinity)(?![A-Za-z0-9_])", re.I)
_FINAL_SHAPE = re.compile(r"Final shape is ([0-9x]*) reported by the output allocator\.")


def tolerant_json(text: str) -> Any:
    """Parse JSON that C++ streams wrote: bare ``nan``/``inf`` outside strings become NaN/Infinity."""
    parts: list[str] = []
    last = 0
    for m in _STR.finditer(text):
        parts.append(_fix_bare(text[last:m.start()]))
        parts.append(m.group(0))
        last = m.end()
    parts.append(_fix_bare(text[last:]))
    return json.loads("".join(parts))


def _fix_bare(seg: str) -> str:
    def sub(m: re.Match[str]) -> str:
        word = m.group(2).lower()
        return "NaN" if word == "nan" else ("-Infinity" if m.group(1) else "Infinity")
    return _BARE.sub(sub, seg)


def _read_tolerant_json(path: Path, what: str, problem: str, note: str,
                        rewrite: Callable[[str], str] | None = None) -> Any:
    """A JSON file trtexec wrote (bare nan/inf allowed), optionally ``rewrite``-n first; one-line errors."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ParityError(f"cannot read {what} {path}: {e.strerror or e}") from e
    if rewrite is not None:
        text = rewrite(text)
    try:
        return tolerant_json(text)
    except json.JSONDecodeError as e:
        raise ParityError(f"{path}: {problem} ({e.msg} at line {e.lineno}). Note: {note}") from None


def _final_shapes(text: str) -> str:
    """Outputs with data-dependent shapes: trtexec prints the real shape inside the values list."""
    if "Final shape is" not in text:
        return text
    return _FINAL_SHAPE.sub(lambda m: f'"__final_shape__:{m.group(1)}",', text)


class _TrtexecFormat(DumpFormat):
    """What the two trtexec formats share: read-only JSON, several records per file."""

    extensions = (".json",)
    multi = True
    writable = False

    @staticmethod
    def _json_head(path: Path) -> str | None:
        """The file's first 4 KiB when it is named ``*.json``, for sniffing; else None."""
        return _head(path, 4096) if path.name.lower().endswith(".json") else None


def _dims(text: Any, where: str) -> tuple[int, ...]:
    s = str(text).strip()
    if s == "":
        return ()
    try:
        return tuple(int(d) for d in s.split("x"))
    except ValueError:
        raise ParityError(f"{where}: dimensions {s!r} are not like 1x3x224x224") from None


class TrtexecJsonFormat(_TrtexecFormat):
    """``trtexec --exportOutput=out.json``: the engine's outputs, one entry per output tensor.

    Values are printed by trtexec with 6 significant digits, so an imported fp32 output
    carries a relative rounding of up to 5e-6 on top of what TensorRT computed; records say
    so in ``meta["printed_digits"]``. Read as float32 (integers stay integers).
    """

    name = "trtexec-json"
    description = "trtexec --exportOutput JSON (engine outputs, values printed as text)"

    def can_read(self, path: Path) -> bool:
        head = self._json_head(path)
        if head is None:
            return False
        head = head.lstrip()
        return re.match(r'^\[\s*\{\s*"name"\s*:', head) is not None and '"dimensions"' in head

    def read(self, path: Path) -> Iterator[Activation]:
        path = Path(path)
        doc = _read_tolerant_json(path, "trtexec output", "not the JSON trtexec --exportOutput writes",
                                  'expected [{"name": ..., "dimensions": "1x1000", "values": [...]}]',
                                  rewrite=_final_shapes)
        if not isinstance(doc, list):
            raise ParityError(f"{path}: top level is not a list. Note: expected the trtexec --exportOutput format")
        for order, entry in enumerate(doc):
            if not isinstance(entry, dict) or not {"name", "values"} <= set(entry):
                raise ParityError(f"{path}: entry #{order} lacks name/values. Note: expected "
                                  f'{{"name": ..., "dimensions": "1x1000", "values": [...]}}')
            tname = str(entry["name"])
            where = f"{path} [{tname}]"
            vals = list(entry["values"])
            dims = _dims(entry.get("dimensions", ""), where)
            if vals and isinstance(vals[0], str) and vals[0].startswith("__final_shape__:"):
                dims = _dims(vals.pop(0).split(":", 1)[1], where)
            if any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in vals):
                raise ParityError(f"{where}: values are not all numbers")
            is_int = all(isinstance(v, int) for v in vals) and bool(vals)
            arr = np.asarray(vals, dtype=np.int64 if is_int else np.float32)
            n = int(np.prod(dims)) if dims else 1
            if arr.size != n:
                raise ParityError(f"{where}: {arr.size} values for dimensions {'x'.join(map(str, dims))} "
                                  f"({n} expected). Note: the file is truncated or was edited")
            yield Activation(name=tname, array=arr.reshape(dims), order=order,
                             meta={"is_output": True, "output_position": order, "format": self.name,
                                   "printed_digits": 6})


#: TensorRT DataType names used by trtexec's debug tensor writer -> numpy dtype of a .raw file
_RAW_DTYPES = {"FLOAT": "<f4", "HALF": "<f2", "INT8": "i1", "INT32": "<i4", "INT64": "<i8", "UINT8": "u1",
               "BOOL": "?", "BF16": "bf16"}


class TrtexecDebugFormat(_TrtexecFormat):
    """``trtexec --saveAllDebugTensors=summary,numpy`` (or ``summary,raw``): ``tensor_summary.json``.

    Point parity at the summary file; the arrays are read from the ``.npy`` (preferred) or
    ``.raw`` files it lists, next to it, in the order TensorRT produced them. Names are the
    engine's tensor names (map them to ONNX with the layer information, see docs/tensorrt.md).
    """

    name = "trtexec-debug"
    description = "trtexec --saveAllDebugTensors summary (tensor_summary.json + .npy/.raw files)"

    def can_read(self, path: Path) -> bool:
        head = self._json_head(path)
        if head is None:
            return False
        return '"Tensor Summary Report"' in head or (re.match(r'^\s*\{\s*"metadata"', head) is not None
                                                     and '"tensors"' in _head(path))

    def read(self, path: Path) -> Iterator[Activation]:
        path = Path(path)
        doc = _read_tolerant_json(path, "trtexec debug tensor summary", "not valid JSON",
                                  "expected the tensor_summary.json of trtexec --saveAllDebugTensors")
        tensors = doc.get("tensors") if isinstance(doc, dict) else None
        if not isinstance(tensors, list):
            raise ParityError(f"{path}: no \"tensors\" list. Note: expected the tensor_summary.json of "
                              f"trtexec --saveAllDebugTensors=summary,numpy")
        missing_files: list[str] = []
        for order, t in enumerate(tensors):
            if not isinstance(t, dict) or "name" not in t:
                raise ParityError(f"{path}: tensor entry #{order} has no name")
            tname = str(t["name"])
            where = f"{path} [{tname}]"
            files = t.get("files") or {}
            shape = tuple(int(d) for d in t.get("shape") or [])
            ttype = str(t.get("type", ""))
            arr = None
            npy = files.get("numpy")
            raw = files.get("raw") or files.get("assigned")
            if npy:
                f = path.parent / str(npy)
                if f.is_file():
                    arr = read_npy(f, f"{where} ({f.name})")
                else:
                    missing_files.append(str(npy))
            if arr is None and raw:
                f = path.parent / str(raw)
                if f.is_file():
                    arr = _read_raw(f, ttype, shape, where)
                else:
                    missing_files.append(str(raw))
            if arr is None:
                if missing_files:
                    raise ParityError(f"{where}: data file {missing_files[-1]} is missing next to {path.name}. "
                                      f"Note: copy the .npy/.raw files trtexec wrote together with the summary")
                raise ParityError(f"{where}: the summary lists no data file. Note: run trtexec with "
                                  f"--saveAllDebugTensors=summary,numpy (summary alone holds statistics only)")
            if shape and tuple(arr.shape) != shape:
                if arr.size != int(np.prod(shape)):
                    raise ParityError(f"{where}: data file holds {arr.size} values, the summary says shape "
                                      f"{list(shape)}")
                arr = arr.reshape(shape)
            meta = {"trt_tensor": tname, "trt_dtype": ttype, "format": self.name}
            if npy and str(npy).endswith("_to_float.npy"):
                meta["converted_from"] = ttype
            yield Activation(name=tname, array=arr, order=order, meta=meta)


def _read_raw(f: Path, ttype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    dt = _RAW_DTYPES.get(ttype.upper())
    if dt is None:
        raise ParityError(f"{where}: raw data of type {ttype} (packed or 8-bit float) cannot be decoded by "
                          f"parity. Note: dump it with --saveAllDebugTensors=summary,numpy, which converts it")
    data = f.read_bytes()
    if dt == "bf16":
        u = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
        arr = u.view(np.float32)
    else:
        arr = np.frombuffer(data, dtype=dt).copy()
    n = int(np.prod(shape)) if shape else 1
    if arr.size != n:
        raise ParityError(f"{where}: {f.name} holds {arr.size} {ttype} values, shape {list(shape)} needs {n}")
    return arr.reshape(shape)

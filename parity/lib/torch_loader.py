"""Load a PyTorch model from any of the forms people actually ship, without unpickling by surprise.

Forms: a TorchScript archive (``torch.jit.save``), an ExportedProgram archive (``torch.export.save``,
usually ``.pt2``), a Python spec ``package.module:factory`` or ``path/to/file.py:factory``, and a
whole pickled ``nn.Module`` (``torch.save(model)``), which is only unpickled when the user said they
trust the file. The kind of a file is read from its content, not its suffix, so a misnamed file
still gets a useful message. torch is imported inside functions only.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import itertools
import os
import re
import sys
import warnings
import weakref
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.contract.errors import ParityError, first_line
from parity.contract.frontend import option, shape_hint
from parity.contract.options import read_options
from parity.lib.options import LOADING
from parity.contract.source import InputSpec, RunConfig

KINDS = ("torchscript", "exported", "python", "pickle")

#: module attribute a Python model may carry to declare its input shapes: ``{"x": (1, 1, 28, 28)}``
SHAPES_ATTR = "parity_input_shapes"
#: optional companion attribute for non-float inputs: ``{"ids": "int64"}``
DTYPES_ATTR = "parity_input_dtypes"

_SPEC_RE = re.compile(r"^(?P<mod>.+):(?P<attr>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)$")

#: models handed over in memory by the Python API (``parity.compare(module, ...)``), by reference.
#: Why a table: sources get ``cfg.model`` as text, and an ``nn.Module`` must reach them without
#: pickling; the reference lives as long as the caller holds the module (weak values).
MEMORY_SCHEME = "memory://"
_MEMORY: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()
_MEMORY_IDS = itertools.count(1)


def register_memory_model(obj: Any, label: str) -> str:
    """A ``memory://LABEL-N`` reference to ``obj`` that :func:`load_torch_model` resolves in this process."""
    ref = f"{MEMORY_SCHEME}{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)[:60] or 'model'}-{next(_MEMORY_IDS)}"
    _MEMORY[ref] = obj
    return ref


def memory_model(ref: Any) -> Any:
    """The object behind a ``memory://`` reference, or None for anything else (a path, a spec)."""
    return _MEMORY.get(ref) if isinstance(ref, str) and ref.startswith(MEMORY_SCHEME) else None


def _load_memory(ref: str) -> LoadedModel:
    """A module given in memory, as a copy: a source casts and hooks what it loads, and the caller's
    module must stay as it was (torch-fp16 would otherwise halve the caller's weights)."""
    import copy

    import torch

    obj = memory_model(ref)
    if obj is None:
        raise ParityError(f"model {ref}: the in-memory model is gone (it was collected). Note: keep a reference "
                          f"to the module while its report is used")
    if not isinstance(obj, torch.nn.Module):
        raise ParityError(f"model {ref} is a {type(obj).__name__}, not a torch.nn.Module, so torch sources cannot "
                          f"run it. Note: use an ONNX Runtime source (ort, ort-fp16, ...) for ONNX models")
    try:
        module = copy.deepcopy(obj)
    except Exception as e:
        raise ParityError(f"model {ref}: cannot copy the {type(obj).__name__} ({first_line(e, typed=True)}), and "
                          f"parity never changes the caller's module. Note: pass a Python spec "
                          f"package.module:factory instead") from None
    kind = "torchscript" if isinstance(module, torch.jit.ScriptModule) else "python"
    return _module_loaded(module, kind, ref, f"model {ref}")


def _module_loaded(module: Any, kind: str, source: str, where: str, declared: Any = None) -> LoadedModel:
    """A module in hand as a :class:`LoadedModel`: input names from its signature (TorchScript: its
    schema) and the shapes it declares. A scripted module's declaration is best effort (a typed
    instance attribute ``parity_input_shapes``), so a bad one there is no error."""
    if kind == "torchscript":
        names, optional = _torchscript_inputs(module)
        try:
            specs = _declared_specs(module, declared, where)
        except ParityError:
            specs = None
    else:
        names, optional = _python_inputs(module)
        specs = _declared_specs(module, declared, where)
    return LoadedModel(module, kind, specs, source, names, optional)


@dataclass
class LoadedModel:
    """A model ready to call, with what is known about its inputs.

    ``input_specs`` is what the model itself declares (ExportedProgram example inputs, or a
    Python factory's declaration); ``None`` when it declares nothing. ``input_names`` is the
    forward's parameter names in call order where the signature tells them, and
    ``optional_inputs`` those that have defaults.
    """

    module: Any
    kind: str
    input_specs: list[InputSpec] | None
    path: str
    input_names: list[str] | None = None
    optional_inputs: frozenset[str] = field(default_factory=frozenset)
    #: the ``torch.export.ExportedProgram`` for kind "exported", else None
    exported: Any = None
    #: inputs the model takes by keyword only (an ExportedProgram exported with kwargs, as Hugging
    #: Face models usually are: its call spec wants them by name, not by position)
    keyword_inputs: frozenset[str] = field(default_factory=frozenset)


# --------------------------------------------------------------------------- file kinds

def detect_file_kind(path: Path) -> str:
    """Classify a file by content: torchscript, exported, torch-save, onnx, zip-truncated or unknown.

    ``torch-save`` is anything ``torch.save`` wrote (a state dict, a checkpoint dict or a
    pickled module); which one it is can only be told by loading it.
    """
    with open(path, "rb") as f:
        head = f.read(64)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "zip-truncated"
        bases = {n.split("/", 1)[1] if "/" in n else n for n in names}
        if "archive_format" in bases or any(b.startswith("models/") and b.endswith(".json") for b in bases):
            return "exported"
        if "constants.pkl" in bases or any(b.startswith("code/") for b in bases):
            return "torchscript"
        if "data.pkl" in bases:
            return "torch-save"
        return "unknown-zip"
    if head.startswith(b"PK\x03\x04"):
        return "zip-truncated"
    # Legacy (pre-1.6) torch.save files are a bare pickle stream: protocol opcode then version.
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "torch-save"
    if path.suffix.lower() == ".onnx" or (len(head) > 2 and head[0] == 0x08 and head[2] in (0x12, 0x1A, 0x22, 0x3A, 0x42)):
        return "onnx"
    return "unknown"


# --------------------------------------------------------------------------- loaders

def _load_torchscript(path: Path) -> LoadedModel:
    import torch

    try:
        with warnings.catch_warnings():  # torch.jit is deprecated upstream; the user's file still is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise ParityError(f"cannot load TorchScript model {path}: it looks like a torch.jit.save archive "
                          f"but loading failed. Note: {first_line(e, typed=True)}; the file may be corrupt or saved "
                          f"by a newer torch") from None
    return _module_loaded(module, "torchscript", str(path), str(path))


def _torchscript_inputs(module: Any) -> tuple[list[str] | None, frozenset[str]]:
    try:
        args = list(module.forward.schema.arguments)[1:]
    except Exception:
        return None, frozenset()
    names = [a.name for a in args]
    optional = frozenset(a.name for a in args if a.default_value is not None)
    return names, optional


def _np_dtype_name(dtype: Any) -> str:
    """numpy dtype name for a torch dtype; types numpy lacks (bfloat16) are fed as float32."""
    name = str(dtype).replace("torch.", "")
    return name if name in {"float16", "float32", "float64", "int8", "int16", "int32", "int64",
                            "uint8", "bool", "complex64", "complex128"} else "float32"


def _load_exported(path: Path) -> LoadedModel:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            ep = torch.export.load(str(path))
    except Exception as e:
        raise ParityError(f"cannot load ExportedProgram {path}: it looks like a torch.export.save archive "
                          f"but loading failed. Note: {first_line(e, typed=True)}; the file may be corrupt or saved "
                          f"by a different torch version") from None
    specs: list[InputSpec] = []
    names: list[str] = []
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    for spec in ep.graph_signature.input_specs:
        if spec.kind.name != "USER_INPUT":
            continue
        arg_name = getattr(spec.arg, "name", None)
        if arg_name is None:  # a constant (non-tensor) user input: nothing to feed
            continue
        names.append(arg_name)
        val = placeholders[arg_name].meta.get("val") if arg_name in placeholders else None
        if val is not None and hasattr(val, "shape"):
            shape = tuple(int(d) if isinstance(d, int) or str(d).isdigit() else None for d in val.shape)
            specs.append(InputSpec(arg_name, shape, _np_dtype_name(val.dtype)))
    names, specs, keyword = _exported_keywords(ep, names, specs)
    module = ep.module()
    if keyword:
        _call_positionally(module, len(names))
    return LoadedModel(module, "exported", specs if len(specs) == len(names) else None, str(path),
                       names, frozenset(), exported=ep, keyword_inputs=keyword)


def _call_positionally(gm: Any, n: int) -> None:
    """Let ``ep.module()`` of a keyword-exported program take its inputs by position, in ``input_names``
    order, as every other model kind does (the ONNX export and the fx capture call it so). The
    unflattened module of ``torch_capture=modules`` keeps the keyword call (``keyword_inputs``)."""
    import torch.utils._pytree as pytree

    try:
        info = gm.graph._codegen.pytree_info
        gm.graph._codegen.pytree_info = info._replace(in_spec=pytree.tree_structure((tuple(range(n)), {})))
        gm.recompile()
    except Exception as e:
        raise ParityError(f"cannot call ExportedProgram {getattr(gm, '__name__', 'module')} with positional "
                          f"inputs: {first_line(e, typed=True)}. Note: export it with positional inputs "
                          f"(torch.export.export(model, (x,)))") from None


def _exported_keywords(ep: Any, names: list[str], specs: list[InputSpec],
                       ) -> tuple[list[str], list[InputSpec], frozenset[str]]:
    """Names of the inputs an ExportedProgram takes by keyword, from its call spec (args, kwargs).

    The user inputs follow the flattened (args, kwargs) order, so the last ones belong to the
    keyword arguments; each keeps the keyword's own name (what a feed file calls it).
    """
    try:
        in_spec = ep.call_spec.in_spec
        pos_spec, kw_spec = in_spec.children()
        n_pos = pos_spec.num_leaves
        keys = [str(k) for k in kw_spec.context]
        leaves = [c.num_leaves for c in kw_spec.children()]
    except Exception:  # an older or unusual call spec: positional, as before
        return names, specs, frozenset()
    if not keys or any(n != 1 for n in leaves) or n_pos + len(keys) != len(names):
        return names, specs, frozenset()
    rename = dict(zip(names[n_pos:], keys))
    names = [rename.get(n, n) for n in names]
    specs = [InputSpec(rename.get(s.name, s.name), s.shape, s.dtype) for s in specs]
    return names, specs, frozenset(keys)


def _load_saved(path: Path, trust: bool) -> LoadedModel:
    """A torch.save file: refuse to unpickle code unless trusted, and explain state dicts."""
    import pickle

    import torch

    if trust:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as e:
            raise ParityError(f"cannot load {path} with torch.load: {first_line(e, typed=True)}. Note: the file may be "
                              f"corrupt, or its classes may not be importable here (their module must be on "
                              f"the Python path)") from None
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ParityError(f"{path} is not TorchScript and may be a pickled nn.Module, which parity does "
                              f"not unpickle by default (unpickling runs arbitrary code). Note: pass "
                              f"{option('trust_model')} if you trust this file, or re-save it with torch.jit.save / "
                              f"torch.export.save") from None
        except Exception as e:
            raise ParityError(f"cannot read {path} as a torch.save file: {first_line(e, typed=True)}. Note: the file "
                              f"may be truncated or corrupt") from None
    if isinstance(obj, torch.nn.Module):
        return _module_loaded(obj, "pickle", str(path), str(path))
    if isinstance(obj, dict):
        raise ParityError(f"{path} holds a state dict or checkpoint (a dict of weights), not a model. "
                          f"Note: give the architecture as a Python spec (package.module:factory or "
                          f"file.py:factory) and pass this file with --state-dict")
    raise ParityError(f"{path} holds a {type(obj).__name__}, not a model. Note: expected TorchScript "
                      f"(torch.jit.save), an ExportedProgram (torch.export.save) or a pickled nn.Module")


def import_spec(spec: str, what: str = "model spec") -> Any:
    """Import ``package.module`` or ``path/to/file.py`` and return the named attribute.

    Why shared: a model factory and a dataset function are named the same way (``--inputs data.py:fn``).
    """
    m = _SPEC_RE.match(spec)
    if m is None:
        raise ParityError(f"{what} {spec!r}: not module:function or path/to/file.py:function.")
    mod_part, attr = m.group("mod"), m.group("attr")
    added: list[str] = []
    try:
        if mod_part.endswith(".py") or os.sep in mod_part or "/" in mod_part:
            file = Path(mod_part)
            if not file.is_file():
                raise ParityError(f"{what} {spec!r}: file {file} does not exist. Note: a Python spec is "
                                  f"path/to/file.py:factory or package.module:factory")
            # Sibling imports of the model file should work as they do when running it as a script.
            parent = str(file.resolve().parent)
            if parent not in sys.path:
                sys.path.insert(0, parent)
                added.append(parent)
            mod_name = f"_parity_model_{abs(hash(str(file.resolve())))}"
            ispec = importlib.util.spec_from_file_location(mod_name, file)
            if ispec is None or ispec.loader is None:
                raise ParityError(f"{what} {spec!r}: cannot import {file} as Python")
            module = importlib.util.module_from_spec(ispec)
            sys.modules[mod_name] = module
            try:
                ispec.loader.exec_module(module)
            except Exception as e:
                sys.modules.pop(mod_name, None)
                raise ParityError(f"{what} {spec!r}: importing {file} failed: {first_line(e, typed=True)}") from e
        else:
            cwd = os.getcwd()
            if cwd not in sys.path:  # the console script does not put the working directory on the path
                sys.path.insert(0, cwd)
                added.append(cwd)
            try:
                module = importlib.import_module(mod_part)
            except ModuleNotFoundError as e:
                raise ParityError(f"{what} {spec!r}: no module named {e.name!r}. Note: the module must be "
                                  f"importable from the working directory or installed; a file path also "
                                  f"works (path/to/file.py:factory)") from None
            except Exception as e:
                raise ParityError(f"{what} {spec!r}: importing {mod_part} failed: {first_line(e, typed=True)}") from e
    finally:
        for p in added:
            try:
                sys.path.remove(p)
            except ValueError:
                pass
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise ParityError(f"{what} {spec!r}: {mod_part} has no attribute {attr!r}. Note: callables "
                              f"there: {', '.join(public[:12]) or 'none'}")
        obj = getattr(obj, part)
    return obj


def _python_inputs(module: Any) -> tuple[list[str] | None, frozenset[str]]:
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return None, frozenset()
    names: list[str] = []
    optional: set[str] = set()
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            if p.kind == p.VAR_POSITIONAL and not names:
                return None, frozenset()  # forward(*args): names come from the user
            continue
        names.append(p.name)
        if p.default is not p.empty:
            optional.add(p.name)
    return names, frozenset(optional)


def module_input_names(module: Any) -> list[str] | None:
    """A module's input names in call order (its ``forward`` signature, a scripted module's schema);
    None where it takes ``*args``. The API names a tuple of positional inputs with them."""
    import torch

    if isinstance(module, torch.jit.ScriptModule):
        return _torchscript_inputs(module)[0]
    return _python_inputs(module)[0]


def _as_spec(name: str, value: Any, dtypes: dict[str, str], where: str) -> InputSpec:
    if isinstance(value, InputSpec):
        return value
    dtype = dtypes.get(name, "float32")
    if (isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], (tuple, list))
            and isinstance(value[1], str)):
        value, dtype = value
    try:
        shape = tuple(None if d is None else int(d) for d in value)
    except (TypeError, ValueError):
        raise ParityError(f"{where}: input {name!r} is declared with shape {value!r}. Note: expected a tuple "
                          f"of ints such as (1, 3, 224, 224), or (shape, dtype)") from None
    return InputSpec(name, shape, str(dtype))


def _declared_specs(module: Any, declared: Any, where: str) -> list[InputSpec] | None:
    """Input specs a Python model declares: returned by its factory, or as module attributes."""
    if declared is None:
        declared = getattr(module, SHAPES_ATTR, None)
    if declared is None:
        return None
    dtypes = dict(getattr(module, DTYPES_ATTR, None) or {})
    if isinstance(declared, dict):
        return [_as_spec(str(k), v, dtypes, where) for k, v in declared.items()]
    if isinstance(declared, (list, tuple)) and all(isinstance(s, InputSpec) for s in declared):
        return list(declared)
    raise ParityError(f"{where}: input declaration {declared!r} is not understood. Note: expected a dict "
                      f"{{'x': (1, 3, 224, 224)}} or a list of parity.contract.source.InputSpec")


def _load_python(spec: str) -> LoadedModel:
    import torch

    factory = import_spec(spec)
    if isinstance(factory, torch.nn.Module):
        result: Any = factory
    elif callable(factory):
        try:
            result = factory()
        except ParityError:
            raise
        except Exception as e:
            raise ParityError(f"model spec {spec!r}: calling the factory raised {first_line(e, typed=True)}") from e
    else:
        raise ParityError(f"model spec {spec!r}: {type(factory).__name__} is not callable. Note: the spec must "
                          f"name a function or class returning a torch.nn.Module")
    declared = None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module):
        result, declared = result
    if not isinstance(result, torch.nn.Module):
        raise ParityError(f"model spec {spec!r}: the factory returned {type(result).__name__}, not a "
                          f"torch.nn.Module. Note: return a module, or (module, {{'x': (1, 3, 224, 224)}})")
    return _module_loaded(result, "python", spec, f"model spec {spec!r}", declared)


def _load_state_dict(loaded: LoadedModel, sd_path: str) -> None:
    import torch

    p = Path(sd_path)
    if not p.is_file():
        raise ParityError(f"state dict {p} does not exist")
    try:
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ParityError(f"cannot read state dict {p} with torch.load(weights_only=True): {first_line(e, typed=True)}. "
                          f"Note: a state dict is a dict of tensors saved with torch.save(model.state_dict())"
                          ) from None
    if isinstance(sd, dict):
        # Training checkpoints often nest the weights one level down.
        for key in ("state_dict", "model_state_dict", "model"):
            inner = sd.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                sd = inner
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ParityError(f"state dict {p} holds a {type(sd).__name__} that is not a dict of tensors. Note: "
                          f"save one with torch.save(model.state_dict(), path)")
    try:
        loaded.module.load_state_dict(sd, strict=True)
    except Exception as e:
        msg = " ".join(str(e).split())
        raise ParityError(f"state dict {p} does not fit model {loaded.path}: {msg[:400]}") from None


def load_torch_model(cfg: RunConfig) -> LoadedModel:
    """Load ``cfg.model`` on CPU in fp32 as saved; errors are one-line ParityErrors naming the file.

    Options used: ``trust_model`` (allow unpickling a whole module), ``state_dict`` (weights file
    applied with ``load_state_dict(strict=True)``, read with ``weights_only=True``).
    """
    try:
        importlib.import_module("torch")  # only to fail early with a clear line
    except ImportError:
        raise ParityError(f"cannot load {cfg.model}: torch is not installed. Note: pip install torch") from None
    model = str(cfg.model)
    loading = read_options(LOADING, cfg.options)  # typed: text "false" must not mean yes, it gates unpickling
    trust = loading["trust_model"]
    path = Path(model)
    if model.startswith(MEMORY_SCHEME):
        loaded = _load_memory(model)
    elif path.is_file():
        kind = detect_file_kind(path)
        if kind == "torchscript":
            loaded = _load_torchscript(path)
        elif kind == "exported":
            loaded = _load_exported(path)
        elif kind == "torch-save":
            loaded = _load_saved(path, trust)
        elif kind == "onnx":
            raise ParityError(f"{path} looks like an ONNX model, not a PyTorch one. Note: the torch sources "
                              f"read TorchScript, ExportedProgram (.pt2) or a Python spec; use an ONNX "
                              f"Runtime source (ort, ort-fp16, ...) for .onnx files")
        elif kind == "zip-truncated":
            raise ParityError(f"{path} is a truncated or corrupt zip archive, so it cannot be a readable torch "
                              f"file. Note: re-save or re-download it")
        else:
            raise ParityError(f"{path} is not a PyTorch model file. Note: expected TorchScript "
                              f"(torch.jit.save), an ExportedProgram (torch.export.save, .pt2), a torch.save "
                              f"file, or a Python spec package.module:factory")
    elif path.is_dir():
        raise ParityError(f"{path} is a directory, not a model file. Note: give a .pt/.pt2 file or a Python "
                          f"spec package.module:factory")
    elif _SPEC_RE.match(model) and not re.match(r"^[A-Za-z]:[\\/]", model):
        loaded = _load_python(model)
    else:
        raise ParityError(f"model {model} does not exist. Note: give a TorchScript .pt, an ExportedProgram "
                          f".pt2, or a Python spec package.module:factory / path/to/file.py:factory")
    sd = loading["state_dict"]
    if sd:
        _load_state_dict(loaded, str(sd))
    return loaded


# --------------------------------------------------------------------------- input specs

def _index_uses() -> dict[Any, Any]:
    """What an index input is: per function, the tensor argument it takes as indices and the bound
    the indices must stay under (an embedding's row count, one_hot's class count, the indexed size)."""
    import torch
    import torch.nn.functional as F

    def arg(args: tuple, kwargs: dict, pos: int, key: str) -> Any:
        return args[pos] if len(args) > pos else kwargs.get(key)

    def rows(w: Any) -> int | None:
        return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.dim() else None

    def classes(n: Any) -> int | None:
        return int(n) if isinstance(n, int) and n > 0 else None

    def dim_size(t: Any, d: Any) -> int | None:
        return int(t.shape[d]) if isinstance(t, torch.Tensor) and isinstance(d, int) else None

    return {
        F.embedding: lambda a, k: (arg(a, k, 0, "input"), rows(arg(a, k, 1, "weight"))),
        torch.embedding: lambda a, k: (arg(a, k, 1, "indices"), rows(arg(a, k, 0, "weight"))),
        F.embedding_bag: lambda a, k: (arg(a, k, 0, "input"), rows(arg(a, k, 1, "weight"))),
        F.one_hot: lambda a, k: (arg(a, k, 0, "tensor"), classes(arg(a, k, 1, "num_classes"))),
        torch.index_select: lambda a, k: (arg(a, k, 2, "index"), dim_size(arg(a, k, 0, "input"), arg(a, k, 1, "dim"))),
    }


#: functions whose output is the same values as their first argument, rearranged (a reshaped or
#: sliced index is still an index)
_SAME_VALUES = frozenset({"view", "reshape", "flatten", "squeeze", "unsqueeze", "contiguous", "clone", "__getitem__",
                          "transpose", "permute", "expand", "narrow", "select", "to", "long", "int", "t", "detach"})


def infer_index_inputs(loaded: LoadedModel, specs: list[InputSpec]) -> list[InputSpec]:
    """Undeclared inputs (dtype None) that the model uses as indices become int64, with the bound the
    index must stay under; the others stay undeclared (random inputs: float32).

    The mechanism: an input that reaches ``F.embedding`` (``nn.Embedding``, ``nn.EmbeddingBag``),
    ``F.one_hot`` or ``torch.index_select`` as the index argument, directly or through a reshape or a
    slice, is an index: those functions refuse floats. One forward runs under a
    ``TorchFunctionMode`` with zero floats for the undeclared inputs; when an index use receives one,
    the input is recorded and zeros of int64 are passed on instead, so the forward goes on to find the
    next. It stops as soon as every embedding module has run (the usual case: the embeddings come
    first). Only for modules that hold an ``nn.Embedding``/``nn.EmbeddingBag``; nothing is learnt from
    a forward that fails before any index use, and the caller's declarations always win. The result
    is kept per shapes on ``loaded``, so the probe runs once per model and shapes.
    """
    import torch

    module = loaded.module
    try:
        embeddings = [m for m in module.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))]
    except Exception:
        return specs
    if not embeddings:
        return specs
    key = tuple((s.name, s.shape, s.dtype) for s in specs)
    cache = loaded.__dict__.setdefault("_index_inputs", {})
    if key not in cache:
        cache[key] = _probe_index_inputs(loaded, specs, embeddings)
    found = cache[key]
    return [InputSpec(s.name, s.shape, "int64", found[s.name]) if s.dtype is None and s.name in found else s
            for s in specs]


def _probe_index_inputs(loaded: LoadedModel, specs: list[InputSpec], embeddings: list[Any]) -> dict[str, int | None]:
    import torch
    from torch.overrides import TorchFunctionMode

    module = loaded.module
    params = [p for p in module.parameters() if p.is_floating_point()]
    device = params[0].device if params else torch.device("cpu")
    fdtype = params[0].dtype if params else torch.float32
    probes: dict[str, Any] = {}
    for s in specs:
        if s.shape is None or any(d is None for d in s.shape):
            return {}
        dt = fdtype if s.dtype is None else getattr(torch, str(s.dtype), None)
        if dt is None:
            return {}
        probes[s.name] = torch.zeros(tuple(int(d) for d in s.shape), dtype=dt, device=device)
    tainted: dict[int, tuple[str, Any]] = {id(probes[s.name]): (s.name, probes[s.name])
                                           for s in specs if s.dtype is None}
    found: dict[str, int | None] = {}
    uses = _index_uses()
    reached: set[int] = set()

    class _Done(Exception):
        pass

    def ran(m: Any, _args: Any, _out: Any) -> None:
        reached.add(id(m))
        if len(reached) == len(embeddings):
            raise _Done

    class _Probe(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
            kwargs = dict(kwargs or {})
            use = uses.get(func)
            if use is not None:
                index, bound = use(args, kwargs)
                hit = tainted.get(id(index)) if isinstance(index, torch.Tensor) else None
                if hit is not None and hit[1] is index and index.is_floating_point():
                    found[hit[0]] = bound
                    swap = torch.zeros_like(index, dtype=torch.int64)
                    args = tuple(swap if a is index else a for a in args)
                    kwargs = {k: swap if v is index else v for k, v in kwargs.items()}
            out = func(*args, **kwargs)
            name = getattr(func, "__name__", "")
            first = args[0] if args else None
            if name in _SAME_VALUES and isinstance(first, torch.Tensor) and isinstance(out, torch.Tensor):
                hit = tainted.get(id(first))
                if hit is not None and hit[1] is first:
                    tainted[id(out)] = (hit[0], out)
            return out

    call_args, call_kwargs = _probe_call(loaded, probes)
    modes = [(m, m.training) for m in module.modules()]
    hooks = [m.register_forward_hook(ran) for m in embeddings]
    try:
        module.eval()  # a probe must not update batch-norm statistics
        with torch.no_grad(), _Probe():
            module(*call_args, **call_kwargs)
    except Exception:  # _Done (every embedding ran), or a model that cannot run on zeros: keep what was found
        pass
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes:
            m.training = training
    return found


def _probe_call(loaded: LoadedModel, feed: dict[str, Any]) -> tuple[tuple, dict]:
    """``feed`` as the model's call: by position in ``input_names`` order, by keyword after a gap."""
    names = loaded.input_names or list(feed)
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for n in names:
        if n not in feed:
            continue
        if kwargs or len(args) < names.index(n):
            kwargs[n] = feed[n]
        else:
            args.append(feed[n])
    return tuple(args), kwargs


def resolve_input_specs(loaded: LoadedModel, input_shapes: dict[str, tuple[int, ...]] | None,
                        ) -> list[InputSpec]:
    """The model's inputs with the user's ``--input-shape`` overrides applied.

    Shapes the user gives win over what the model declares (dtype is kept). An input whose
    shape is known from nowhere is an error telling the user how to give it.
    """
    overrides = dict(input_shapes or {})
    declared = {s.name: s for s in (loaded.input_specs or [])}
    names = loaded.input_names
    if names is None:
        names = list(declared) + [n for n in overrides if n not in declared]
        if not names:
            raise ParityError(f"model {loaded.path}: its input names and shapes are unknown. Note: pass "
                              f"{shape_hint('name')} for each input")
    known = set(names)
    unknown = [n for n in overrides if n not in known]
    if unknown:
        raise ParityError(f"{option('input_shape')} names {', '.join(map(repr, unknown))} are not inputs of model "
                          f"{loaded.path}. Note: its inputs are {', '.join(names)}")
    specs: list[InputSpec] = []
    missing: list[str] = []
    for n in names:
        base = declared.get(n)
        if n in overrides:
            # an input the model does not declare has no dtype to impose: None keeps the feed file's
            # (int64 token ids stay int64) and random inputs are float32 (parity.core.inputs)
            specs.append(InputSpec(n, tuple(int(d) for d in overrides[n]), base.dtype if base else None))
        elif base is not None:
            specs.append(base)
        elif n not in loaded.optional_inputs:
            missing.append(n)
    if not missing and loaded.kind in ("python", "pickle") and any(s.dtype is None for s in specs):
        specs = infer_index_inputs(loaded, specs)
    if missing:
        example = shape_hint(missing)
        hint = {"python": f", or declare {SHAPES_ATTR} on the module / return (module, shapes) from the factory",
                "pickle": f", or declare {SHAPES_ATTR} on the module",
                "torchscript": f", or give the module a {SHAPES_ATTR} attribute before torch.jit.script",
                }.get(loaded.kind, "")
        raise ParityError(f"model {loaded.path}: the shape of input {', '.join(map(repr, missing))} is unknown. "
                          f"Note: pass {example} (use the real shape){hint}")
    return specs

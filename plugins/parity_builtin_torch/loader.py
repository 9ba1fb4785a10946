"""Load, convert, cache: the module each torch precision runs, prepared once and reused.

:func:`prepare` loads the model through :mod:`parity.lib.torch_loader` (file kinds, trust gate,
specs, state dict), picks the capture mode, instruments TorchScript or rebuilds an
ExportedProgram's module hierarchy for hooks, and moves the module to the device in the
precision's dtype, keeping ``keep_high_precision`` modules in fp32 (:func:`resolve_keep`,
:func:`cast_keeping`). :class:`PreparedCache` keeps one prepared model per source and hands it
to one run at a time. :func:`true_fp32` turns TF32 off around an fp32 reference on CUDA.
Nothing here runs a forward (see :mod:`.runner`).

``keep_high_precision`` is the torch-autocast-style fix that ``parity fix`` searches: the named
modules keep their fp32 weights (cast from the loaded model, never from the rounded fp16 ones)
and cast their float inputs to fp32 on entry; they pass fp32 outputs on, and the next
low-precision module with weights casts them down on entry (as autocast does).
"""
from __future__ import annotations

import contextlib
import copy
import re
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from parity.contract.errors import ParityError, first_line
from parity.contract.options import option_bool
from parity.contract.source import RunConfig
from parity.lib.torch_loader import LoadedModel, load_torch_model

from . import capture

#: torch dtype name per precision
PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
CAPTURE_MODES = ("auto", "modules", "fx")

#: Python-spec modules already owned by a prepared source (see prepare)
_CLAIMED: "weakref.WeakSet[Any]" = weakref.WeakSet()
_CLAIMED_LOCK = threading.Lock()

_INDEX_RE = re.compile(r":\d+$")
_CALL_RE = re.compile(r"#\d+$")


def torch_dtype(precision: str) -> Any:
    import torch

    return getattr(torch, PRECISIONS[precision])


def unavailable(cfg: RunConfig | None = None) -> str | None:
    """Why torch cannot run ``cfg`` here (not installed, no CUDA for a cuda device), or None."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install torch)"
    if cfg is not None and str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        return (f"device {cfg.device!r} requested but CUDA is not available to torch {torch.__version__} "
                f"(no GPU, or a CPU-only build)")
    return None


# --------------------------------------------------------------------------- options

def capture_mode(options: dict[str, Any]) -> str:
    """``torch_capture`` as given (auto | modules | fx); :func:`prepare` resolves ``auto``."""
    mode = str(options.get("torch_capture") or "auto")
    if mode not in CAPTURE_MODES:
        raise ParityError(f"torch_capture={mode!r} is not a capture mode. Note: valid are "
                          f"{', '.join(CAPTURE_MODES)}")
    return mode


def keep_names(precision: str, cfg: RunConfig) -> tuple[str, ...]:
    """``cfg.keep_high_precision`` for a reduced precision; the fp32 reference keeps nothing (all fp32 already)."""
    if precision == "fp32":
        return ()
    return tuple(cfg.keep_high_precision)


def file_key(p: str | None) -> tuple:
    """What identifies a file's version for the cache: resolved path, mtime and size."""
    if not p:
        return (None,)
    try:
        st = Path(p).stat()
        return (str(Path(p).resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        return (p,)


def cache_key(precision: str, cfg: RunConfig) -> tuple:
    # trust_model is read as torch_loader reads it, so the key matches what was loaded
    return (str(cfg.model), file_key(str(cfg.model)), file_key(cfg.options.get("state_dict")),
            option_bool(cfg.options, "trust_model", False), str(cfg.device), capture_mode(cfg.options),
            tuple(sorted(set(keep_names(precision, cfg)))))


@contextlib.contextmanager
def true_fp32(precision: str, cfg: RunConfig) -> Iterator[None]:
    """An fp32 reference on CUDA must be fp32: torch lets convolutions (and, by setting, matmuls) use
    TF32, which keeps 10 mantissa bits and would blur the reference. ``torch_allow_tf32`` opts back in."""
    import torch

    if precision != "fp32" or not str(cfg.device).startswith("cuda") or \
            option_bool(cfg.options, "torch_allow_tf32", False):
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# --------------------------------------------------------------------------- the prepared model

@dataclass
class Prepared:
    """A loaded model cast to the source's precision and moved to its device, reusable across runs."""

    key: tuple
    loaded: LoadedModel
    module: Any
    mode: str
    ts_types: dict[str, str] = field(default_factory=dict)
    type_names: dict[str, str] = field(default_factory=dict)
    exported: dict[tuple, Any] = field(default_factory=dict)
    #: module paths kept in fp32 (keep_high_precision), outermost only
    keep: list[str] = field(default_factory=list)
    busy: bool = False


class PreparedCache:
    """One prepared model per source, lent to one run at a time; a busy one is not shared (a
    concurrent run prepares its own)."""

    def __init__(self, precision: str, name: str) -> None:
        self.precision = precision
        self.name = name
        self._lock = threading.Lock()
        self._cache: Prepared | None = None

    def acquire(self, cfg: RunConfig) -> Prepared:
        key = cache_key(self.precision, cfg)
        with self._lock:
            c = self._cache
            if c is not None and c.key == key and not c.busy:
                c.busy = True
                return c
        prepared = prepare(self.precision, self.name, cfg, key)
        prepared.busy = True
        with self._lock:
            if self._cache is None or not self._cache.busy:
                self._cache = prepared
        return prepared

    def release(self, prepared: Prepared) -> None:
        with self._lock:
            prepared.busy = False

    @contextlib.contextmanager
    def hold(self, cfg: RunConfig) -> Iterator[Prepared]:
        prepared = self.acquire(cfg)
        try:
            yield prepared
        finally:
            self.release(prepared)


def prepare(precision: str, name: str, cfg: RunConfig, key: tuple) -> Prepared:
    """Load ``cfg.model`` and make it ready to run as source ``name`` in ``precision``."""
    import torch

    reason = unavailable(cfg)
    if reason:
        raise ParityError(f"source {name} cannot run: {reason}")
    try:
        device = torch.device(cfg.device)
    except (RuntimeError, TypeError):
        raise ParityError(f"device {cfg.device!r} is not a torch device. Note: use cpu or cuda") from None
    loaded = load_torch_model(cfg)
    mode = capture_mode(cfg.options)
    asked = mode
    if mode == "auto":
        # modules for every kind, .pt2 included (its hierarchy rebuilt by torch.export.unflatten): module
        # outputs are what an exporter's provenance names, so they pair with ONNX tensors by provenance;
        # fx records (one per op) pair mostly by value, and wrongly (an add with the LayerNorm after it)
        mode = "modules"
    if mode == "fx" and loaded.kind == "torchscript":
        raise ParityError(f"torch_capture=fx cannot run TorchScript model {loaded.path}: fx capture needs "
                          f"a Python model or an ExportedProgram. Note: use torch_capture=modules (the "
                          f"default for TorchScript), or save the model with torch.export.save")
    module = loaded.module
    if loaded.kind == "python":
        # A factory may hand every caller the same instance; casting it in place for one source
        # would silently change another's (torch and torch-fp16 run side by side).
        with _CLAIMED_LOCK:
            if module in _CLAIMED:
                module = copy.deepcopy(module)
                capture.strip_capture_hooks(module)
                loaded.module = module
            _CLAIMED.add(module)
    prepared = Prepared(key, loaded, module, mode)
    if loaded.kind == "torchscript":
        prepared.ts_types = capture.instrument_torchscript(module)
    elif loaded.kind == "exported" and mode == "modules":
        # Hooks need submodules; an ExportedProgram's module is flat, so rebuild the hierarchy.
        try:
            with warnings.catch_warnings():  # torch-internal pytree deprecation noise
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.export.unflatten(loaded.exported)
        except Exception as e:
            if asked == "auto":  # a program unflatten cannot rebuild still runs op by op
                prepared.mode = mode = "fx"
                module = loaded.module
            else:
                raise ParityError(f"cannot rebuild the module hierarchy of {loaded.path} for "
                                  f"torch_capture=modules: {first_line(e, typed=True)}. Note: use torch_capture=fx "
                                  f"(op by op)") from None
        if mode == "modules":
            prepared.type_names = exported_type_names(loaded.exported)
    dtype = torch_dtype(precision)
    names = keep_names(precision, cfg)
    keep: list[str] = []
    if names:
        if loaded.kind == "torchscript":
            raise ParityError(f"keep_high_precision needs forward hooks, which TorchScript model {loaded.path} "
                              f"does not run. Note: give the model as a Python spec (file.py:factory) or an "
                              f"ExportedProgram (.pt2)")
        if loaded.kind == "exported" and mode == "fx":
            raise ParityError(f"keep_high_precision cannot keep modules of ExportedProgram {loaded.path} in "
                              f"torch_capture=fx (its graph has no modules). Note: use --torch-capture modules, "
                              f"which rebuilds them")
        keep = resolve_keep(module, names, f"model {loaded.path}", fx=(mode == "fx"))
    try:
        if keep:
            cast_keeping(module, device, dtype, keep, f"model {loaded.path}")
        else:
            module = module.to(device=device, dtype=dtype)
    except ParityError:
        raise
    except Exception as e:
        raise ParityError(f"cannot move model {loaded.path} to {device} as {precision}: "
                          f"{first_line(e, typed=True)}") from None
    try:
        module.eval()
    except Exception:
        pass  # exported modules refuse train/eval switches; they were traced in one mode already
    prepared.module = module
    prepared.keep = keep
    return prepared


def exported_type_names(ep: Any) -> dict[str, str]:
    """Module path -> original class, from the nn_module_stack metadata export keeps."""
    out: dict[str, str] = {}
    for n in ep.graph.nodes:
        for _key, (path, typ) in (n.meta.get("nn_module_stack") or {}).items():
            if path and path not in out:
                out[str(path)] = typ if isinstance(typ, str) else capture.qualified_type(typ)
    return out


# --------------------------------------------------------------------------- keep_high_precision

def cast_tree(value: Any, to: Any, only: tuple = ()) -> Any:
    """``value`` with its floating tensors cast to ``to`` (those of dtype in ``only`` when given).

    Tuples, named tuples, lists and dicts are rebuilt; other objects pass through as they are.
    """
    import torch

    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and (not only or value.dtype in only):
            return value.to(to)
        return value
    if isinstance(value, tuple):
        items = [cast_tree(v, to, only) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        return [cast_tree(v, to, only) for v in value]
    if isinstance(value, dict):
        items = {k: cast_tree(v, to, only) for k, v in value.items()}
        try:
            return type(value)(items)
        except Exception:
            return items
    return value


def module_of_key(key: str, fx: bool = False) -> str:
    """The module path a record key names: ``block#1:2`` -> ``block``; fx ``a.b#1/linear#2`` -> ``a.b``."""
    k = _INDEX_RE.sub("", key.strip())
    if fx:
        if "/" not in k:
            return ""
        k = k.split("/", 1)[0]
    return _CALL_RE.sub("", k)


def resolve_keep(module: Any, names: Iterable[str], where: str, fx: bool = False) -> list[str]:
    """Module paths to keep in fp32 for record keys / module paths; the outermost of nested ones."""
    paths = {p for p, _ in module.named_modules() if p}
    wanted: list[str] = []
    unknown: list[str] = []
    for n in names:
        p = n if n in paths else module_of_key(n, fx)
        if p in paths:
            if p not in wanted:
                wanted.append(p)
        else:
            unknown.append(n)
    if unknown:
        valid = sorted(paths, key=lambda s: (s.count("."), s))
        more = f", … ({len(valid)} in all)" if len(valid) > 12 else ""
        why = (" 'output' is the model's output record, not a layer;" if "output" in unknown else "")
        if fx and any("/" not in _INDEX_RE.sub("", u) and u != "output" for u in unknown):
            why += " ops in the model's own forward (no submodule) cannot be kept;"
        raise ParityError(f"keep_high_precision names {', '.join(map(repr, unknown))}, which are not modules of "
                          f"{where}.{why} Note: give module paths or record keys (a '#k' call suffix and ':N' "
                          f"output index are accepted); modules there: {', '.join(valid[:12]) or 'none'}{more}")
    wanted.sort(key=lambda s: s.count("."))
    outer: list[str] = []
    for p in wanted:
        if not any(p.startswith(o + ".") for o in outer):
            outer.append(p)
    return outer


def cast_keeping(module: Any, device: Any, dtype: Any, keep: list[str], where: str) -> None:
    """Move ``module`` to ``device`` and cast it to ``dtype``, except the ``keep`` subtrees (fp32).

    Each module's own tensors are cast once from their loaded values, so kept weights are the
    original fp32 ones. A parameter shared across the boundary cannot be both: refused.
    """
    import torch

    kept = {id(m) for p in keep for m in module.get_submodule(p).modules()}
    side: dict[int, tuple[bool, str]] = {}
    for path, sub in module.named_modules(remove_duplicate=False):
        k = id(sub) in kept
        for tname, t in list(sub._parameters.items()) + list(sub._buffers.items()):
            if t is None or not t.is_floating_point():
                continue
            prev = side.setdefault(id(t), (k, f"{path}.{tname}" if path else tname))
            if prev[0] != k:
                raise ParityError(f"keep_high_precision: {where} shares the tensor {prev[1]} with "
                                  f"{path + '.' + tname if path else tname}, one inside a kept module and one "
                                  f"outside. Note: keep both modules in fp32, or neither")
    module.to(device=device)
    for sub in module.modules():
        want = torch.float32 if id(sub) in kept else dtype
        sub._apply(lambda t, w=want: t.to(w) if t.is_floating_point() else t, recurse=False)
    low = (torch.float16, torch.bfloat16)
    for p in keep:
        top = module.get_submodule(p)
        for sub in top.modules():  # inner ones too, in case something outside calls them directly
            def enter(_m: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
                return cast_tree(args, torch.float32, low), cast_tree(kwargs, torch.float32, low)
            enter._parity_hook = True  # type: ignore[attr-defined]
            sub.register_forward_pre_hook(enter, with_kwargs=True)
    # Kept modules hand their outputs on in fp32, as autocast does: casting them back on exit would
    # re-create the very overflow they are kept for (an output beyond 65504 becomes inf in fp16).
    # Each low-precision module with weights instead casts fp32 inputs to its own dtype on entry.
    if keep:
        for sub in module.modules():
            if id(sub) in kept:
                continue
            own = [t for t in list(sub._parameters.values()) + list(sub._buffers.values())
                   if t is not None and t.is_floating_point()]
            if not own:
                continue

            def to_low(_m: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
                return cast_tree(args, dtype, (torch.float32,)), cast_tree(kwargs, dtype, (torch.float32,))
            to_low._parity_hook = True  # type: ignore[attr-defined]
            sub.register_forward_pre_hook(to_low, with_kwargs=True)

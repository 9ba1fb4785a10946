"""The ``torch``, ``torch-fp16`` and ``torch-bf16`` sources: one class, three precisions."""
from __future__ import annotations

import contextlib

import copy
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from parity.contract.errors import ParityError, first_line
from parity.contract.options import as_bool, as_list
from parity.contract.records import Activation
from parity.contract.source import InputSpec, RunConfig, Source

from . import capture, local
from parity.lib.torch_loader import LoadedModel, load_torch_model, resolve_input_specs

PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
SOURCE_NAMES = {"fp32": "torch", "fp16": "torch-fp16", "bf16": "torch-bf16"}
CAPTURE_MODES = ("auto", "modules", "fx")

#: Python-spec modules already owned by a prepared source (see _prepare)
_CLAIMED: "weakref.WeakSet[Any]" = weakref.WeakSet()
_CLAIMED_LOCK = threading.Lock()


@dataclass
class _Prepared:
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


def _file_key(p: str | None) -> tuple:
    if not p:
        return (None,)
    try:
        st = Path(p).stat()
        return (str(Path(p).resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        return (p,)


@contextlib.contextmanager
def _true_fp32(precision: str, cfg: RunConfig) -> Iterator[None]:
    """An fp32 reference on CUDA must be fp32: torch lets convolutions (and, by setting, matmuls) use
    TF32, which keeps 10 mantissa bits and would blur the reference. ``torch_allow_tf32`` opts back in."""
    import torch

    if precision != "fp32" or not str(cfg.device).startswith("cuda") or \
            as_bool(cfg.options.get("torch_allow_tf32"), "torch_allow_tf32"):
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class TorchSource(Source):
    """Runs a PyTorch model eagerly and yields every submodule's output (or every op's, in fx mode).

    Options read from ``cfg.options``: ``torch_capture`` (auto | modules | fx), ``trust_model``,
    ``state_dict``, ``torch_include_integer`` (also capture integer/bool tensors), and for
    ``parity fix``: ``keep_high_precision`` (record keys / module paths run in fp32 inside the
    fp16/bf16 model) and ``outputs_only`` (no hooks, only the model outputs). ``local_errors``
    gives each leaf module's (or fx node's) local run for ``--diagnose``.
    """

    description = "PyTorch (TorchScript, ExportedProgram .pt2, Python module spec); per-module activations"

    def __init__(self, precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.precision = precision
        self.name = SOURCE_NAMES[precision]
        self.description = (f"PyTorch {precision} (TorchScript, ExportedProgram .pt2, Python spec "
                            f"pkg.module:factory); every submodule's output")
        self._lock = threading.Lock()
        self._cache: _Prepared | None = None
        self._reference: TorchSource | None = None
        #: layers the last ``local_errors`` could not run alone: {"key", "why"}
        self.last_local_skipped: list[dict[str, str]] = []

    # ------------------------------------------------------------------ contract

    def check(self, cfg: RunConfig | None = None) -> str | None:
        try:
            import torch
        except ImportError:
            return "torch is not installed (pip install torch)"
        if cfg is not None and str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
            return (f"device {cfg.device!r} requested but CUDA is not available to torch {torch.__version__} "
                    f"(no GPU, or a CPU-only build)")
        return None

    def input_specs(self, cfg: RunConfig) -> list[InputSpec]:
        prepared = self._acquire(cfg)
        try:
            return resolve_input_specs(prepared.loaded, cfg.input_shapes)
        finally:
            self._release(prepared)

    def input_names(self, cfg: RunConfig) -> list[str] | None:
        """The forward's input names, when known even though shapes are not (a TorchScript module)."""
        prepared = self._acquire(cfg)
        try:
            return prepared.loaded.input_names
        finally:
            self._release(prepared)

    def run(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Activation]:
        prepared = self._acquire(cfg)
        try:
            args, kwargs = self._inputs(prepared, cfg, feed)
            rec_meta = {"source": self.name, "precision": self.precision, "capture": prepared.mode}
            include_int = bool(cfg.options.get("torch_include_integer"))
            only = as_bool(cfg.options.get("outputs_only"), "outputs_only")
            work = self._work(prepared, args, kwargs, rec_meta, include_int, only)
            with _true_fp32(self.precision, cfg):
                yield from capture.stream(work, f"running {cfg.model} with source {self.name}")
        finally:
            self._release(prepared)

    supports_local = True

    def local_errors(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Any]:
        """Each layer alone in this source's precision on the fp32 inputs (``parity.contract.records.LocalResult``).

        Modules mode: every leaf module call; fx mode: every ``call_function`` node. Keys are
        the keys ``run()`` gives that layer's records. ``torch`` (fp32) yields nothing: it is the
        reference. Layers that fail alone are listed in ``last_local_skipped``.
        """
        import torch

        if self.precision == "fp32":
            return
        self.last_local_skipped = skipped = []
        tgt = self._acquire(cfg)
        try:
            if tgt.loaded.kind == "torchscript":
                raise ParityError(f"local runs (--diagnose) of {self.name} need forward hooks, which TorchScript "
                                  f"model {tgt.loaded.path} does not run. Note: give the model as a Python spec "
                                  f"(file.py:factory) or an ExportedProgram (.pt2)")
            if self._reference is None:
                self._reference = TorchSource("fp32")
            ref_src = self._reference
            opts = {k: v for k, v in cfg.options.items() if k not in ("keep_high_precision", "outputs_only")}
            ref_cfg = RunConfig(**{**cfg.__dict__, "options": opts})
            ref = ref_src._acquire(ref_cfg)
            try:
                args, kwargs = ref_src._inputs(ref, ref_cfg, feed)
                dtype = getattr(torch, PRECISIONS[self.precision])

                def skip(key: str, why: str) -> None:
                    skipped.append({"key": key, "why": why})

                def work(emit: capture.Emit) -> None:
                    with torch.no_grad():
                        if ref.mode == "modules":
                            local.run_local_modules(ref.module, tgt.module, args, kwargs, dtype, emit, skip,
                                                    ref.type_names)
                        else:
                            gm = ref_src._graph_module(ref, args, kwargs)
                            local.run_local_fx(gm, args, kwargs, dtype, emit, skip, tgt.keep)

                yield from capture.stream(work, f"local runs of {cfg.model} with source {self.name}",
                                          thread_name="parity-torch-local")
            finally:
                ref_src._release(ref)
        finally:
            self._release(tgt)

    # ------------------------------------------------------------------ preparation

    def _mode(self, cfg: RunConfig) -> str:
        mode = str(cfg.options.get("torch_capture") or "auto")
        if mode not in CAPTURE_MODES:
            raise ParityError(f"torch_capture={mode!r} is not a capture mode. Note: valid are "
                              f"{', '.join(CAPTURE_MODES)}")
        return mode

    def _keep(self, cfg: RunConfig) -> tuple[str, ...]:
        if self.precision == "fp32":
            return ()  # the reference is all fp32 already
        return tuple(as_list(cfg.options.get("keep_high_precision")))

    def _key(self, cfg: RunConfig) -> tuple:
        return (str(cfg.model), _file_key(str(cfg.model)), _file_key(cfg.options.get("state_dict")),
                bool(cfg.options.get("trust_model")), str(cfg.device), self._mode(cfg),
                tuple(sorted(set(self._keep(cfg)))))

    def _acquire(self, cfg: RunConfig) -> _Prepared:
        key = self._key(cfg)
        with self._lock:
            c = self._cache
            if c is not None and c.key == key and not c.busy:
                c.busy = True
                return c
        prepared = self._prepare(cfg, key)
        prepared.busy = True
        with self._lock:
            if self._cache is None or not self._cache.busy:
                self._cache = prepared
        return prepared

    def _release(self, prepared: _Prepared) -> None:
        with self._lock:
            prepared.busy = False

    def _prepare(self, cfg: RunConfig, key: tuple) -> _Prepared:
        import torch

        reason = self.check(cfg)
        if reason:
            raise ParityError(f"source {self.name} cannot run: {reason}")
        try:
            device = torch.device(cfg.device)
        except (RuntimeError, TypeError):
            raise ParityError(f"device {cfg.device!r} is not a torch device. Note: use cpu or cuda") from None
        loaded = load_torch_model(cfg)
        mode = self._mode(cfg)
        if mode == "auto":
            mode = "fx" if loaded.kind == "exported" else "modules"
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
        prepared = _Prepared(key, loaded, module, mode)
        if loaded.kind == "torchscript":
            prepared.ts_types = capture.instrument_torchscript(module)
        elif loaded.kind == "exported" and mode == "modules":
            # Hooks need submodules; an ExportedProgram's module is flat, so rebuild the hierarchy.
            try:
                with warnings.catch_warnings():  # torch-internal pytree deprecation noise
                    warnings.simplefilter("ignore", FutureWarning)
                    module = torch.export.unflatten(loaded.exported)
            except Exception as e:
                raise ParityError(f"cannot rebuild the module hierarchy of {loaded.path} for "
                                  f"torch_capture=modules: {first_line(e, typed=True)}. Note: use torch_capture=fx "
                                  f"(the default for .pt2)") from None
            prepared.type_names = _exported_type_names(loaded.exported)
        dtype = getattr(torch, PRECISIONS[self.precision])
        keep_names = self._keep(cfg)
        keep: list[str] = []
        if keep_names:
            if loaded.kind == "torchscript":
                raise ParityError(f"keep_high_precision needs forward hooks, which TorchScript model {loaded.path} "
                                  f"does not run. Note: give the model as a Python spec (file.py:factory) or an "
                                  f"ExportedProgram (.pt2)")
            if loaded.kind == "exported" and mode == "fx":
                raise ParityError(f"keep_high_precision cannot keep modules of ExportedProgram {loaded.path} in "
                                  f"torch_capture=fx (its graph has no modules). Note: use --torch-capture modules, "
                                  f"which rebuilds them")
            keep = local.resolve_keep(module, keep_names, f"model {loaded.path}", fx=(mode == "fx"))
        try:
            if keep:
                local.cast_keeping(module, device, dtype, keep, f"model {loaded.path}")
            else:
                module = module.to(device=device, dtype=dtype)
        except ParityError:
            raise
        except Exception as e:
            raise ParityError(f"cannot move model {loaded.path} to {device} as {self.precision}: "
                              f"{first_line(e, typed=True)}") from None
        try:
            module.eval()
        except Exception:
            pass  # exported modules refuse train/eval switches; they were traced in one mode already
        prepared.module = module
        prepared.keep = keep
        return prepared

    def _inputs(self, prepared: _Prepared, cfg: RunConfig, feed: dict[str, Any]) -> tuple[tuple, dict]:
        """Feed arrays as tensors in call order: float inputs cast to the precision, others untouched."""
        import torch

        loaded = prepared.loaded
        device = torch.device(cfg.device)
        fdtype = getattr(torch, PRECISIONS[self.precision])

        def convert(name: str, value: Any) -> Any:
            if isinstance(value, (np.ndarray, np.generic)):
                arr = np.array(value, copy=True)  # the model may write into its input
                if arr.dtype.kind in "OUSV":
                    raise ParityError(f"input {name!r} has dtype {arr.dtype}, which torch cannot take. Note: "
                                      f"feed numeric arrays")
                t = torch.from_numpy(arr)
            elif isinstance(value, torch.Tensor):
                t = value.detach().clone()
            else:
                return value
            if t.is_floating_point():
                t = t.to(fdtype)
            return t.to(device)

        names = loaded.input_names
        if names is None:
            return tuple(convert(k, v) for k, v in feed.items()), {}
        extra = [k for k in feed if k not in names]
        if extra:
            raise ParityError(f"feed has inputs {', '.join(map(repr, extra))} that model {loaded.path} does "
                              f"not take. Note: its inputs are {', '.join(names)}")
        missing = [n for n in names if n not in feed and n not in loaded.optional_inputs]
        if missing:
            raise ParityError(f"feed lacks inputs {', '.join(map(repr, missing))} of model {loaded.path}. "
                              f"Note: its inputs are {', '.join(names)}")
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for n in names:
            if n not in feed:
                continue
            if kwargs or len(args) < names.index(n):  # after a skipped optional input: by keyword
                kwargs[n] = convert(n, feed[n])
            else:
                args.append(convert(n, feed[n]))
        return tuple(args), kwargs

    # ------------------------------------------------------------------ the forward

    def _work(self, prepared: _Prepared, args: tuple, kwargs: dict, base_meta: dict[str, Any],
              include_int: bool, outputs_only: bool = False):
        def work(emit: capture.Emit) -> None:
            import torch

            rec = capture.Recorder(emit, base_meta, include_int)
            with torch.no_grad():
                if outputs_only:  # no hooks, no interpreter: the plain forward
                    if prepared.mode == "fx" and prepared.loaded.kind != "torchscript":
                        out = self._graph_module(prepared, args, kwargs)(*args, **kwargs)
                    else:
                        out = prepared.module(*args, **kwargs)
                elif prepared.loaded.kind == "torchscript":
                    out = capture.run_torchscript(prepared.module, args, kwargs, rec, prepared.ts_types)
                elif prepared.mode == "modules":
                    out = capture.run_with_hooks(prepared.module, args, kwargs, rec, prepared.type_names)
                else:
                    gm = self._graph_module(prepared, args, kwargs)
                    out = capture.run_fx(gm, args, kwargs, rec)
            rec.record_outputs(out)
        return work

    def _graph_module(self, prepared: _Prepared, args: tuple, kwargs: dict) -> Any:
        """The FX graph to interpret: the ExportedProgram's own, or one exported for these inputs."""
        import torch

        if prepared.loaded.kind == "exported":
            return prepared.module
        sig = tuple((k, tuple(v.shape), str(v.dtype)) if isinstance(v, torch.Tensor) else (k, repr(v))
                    for k, v in list(enumerate(args)) + sorted(kwargs.items()))
        gm = prepared.exported.get(sig)
        if gm is None:
            try:
                ep = torch.export.export(prepared.module, tuple(args), dict(kwargs))
            except Exception as e:
                raise ParityError(f"torch.export could not capture {prepared.loaded.path} for "
                                  f"torch_capture=fx: {first_line(e, typed=True)}. Note: use torch_capture=modules "
                                  f"(forward hooks) for models torch.export cannot trace") from None
            gm = ep.module()
            prepared.exported = {sig: gm}  # one entry: shapes rarely change between runs
        return gm



def _exported_type_names(ep: Any) -> dict[str, str]:
    """Module path -> original class, from the nn_module_stack metadata export keeps."""
    out: dict[str, str] = {}
    for n in ep.graph.nodes:
        for _key, (path, typ) in (n.meta.get("nn_module_stack") or {}).items():
            if path and path not in out:
                out[str(path)] = typ if isinstance(typ, str) else capture.qualified_type(typ)
    return out

"""The ONNX model any ONNX consumer runs: the user's ``.onnx`` file, or parity's export of a torch model.

Why one place: ONNX Runtime, TensorRT and any future ONNX-consuming source (OpenVINO, say) must
run the *same* graph with the same provenance, exported with the same options read the same
way; two copies of this once disagreed on ``export_dynamic_batch=false``.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from parity.contract.atomic import atomic_path
from parity.contract.errors import ParityError
from parity.contract.frontend import option, shape_hint
from parity.contract.options import option_bool, option_int
from parity.contract.source import InputSpec, RunConfig


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX file to run, and the torch module names when parity exported it (for provenance)."""

    path: Path
    module_names: list[str] | None = None

    def __iter__(self):  # type: ignore[no-untyped-def]
        """Unpacks as ``path, module_names``."""
        return iter((self.path, self.module_names))


def is_onnx_file(model: Any) -> bool:
    return Path(str(model)).suffix.lower() == ".onnx"


def export_options(options: dict[str, Any]) -> dict[str, Any]:
    """The exporter settings from ``--option``: ``opset``, ``export_dynamic_batch``, ``export_optimize``, ``export_dynamo``."""
    return {"opset": option_int(options, "opset", None),
            "dynamic_batch": option_bool(options, "export_dynamic_batch", True),
            "optimize": option_bool(options, "export_optimize", True),
            "dynamo": option_bool(options, "export_dynamo", True)}


def _load_torch(cfg: RunConfig) -> Any:
    try:
        from parity.lib.torch_loader import load_torch_model
    except ImportError as e:  # torch missing: say what the model needs
        raise ParityError(f"model {cfg.model} is not an .onnx file, so it must be exported from torch, "
                          f"which needs torch (pip install 'parity[torch]'). Note: {e}") from e
    return load_torch_model(cfg)


#: exports resolved in the current run (:func:`one_export_per_run`); None: outside a run, resolve each time
_RUN_EXPORTS: contextvars.ContextVar[dict[Any, OnnxModel] | None] = contextvars.ContextVar("parity_run_exports",
                                                                                          default=None)
#: options that do not change the fp32 model a torch spec exports to (they select what a run captures
#: or keeps in high precision downstream)
_NOT_EXPORT_OPTIONS = frozenset({"outputs_only", "keep_high_precision"})


@contextlib.contextmanager
def one_export_per_run() -> Iterator[None]:
    """Within one comparison, resolve a torch model's export once, however many ONNX sessions need it.

    Why: the export cache key is a hash of the torch module's weights, so finding the cached export
    means building the module (a MiniLM from its weights file: about a second and ~100 MB). The
    ONNX Runtime source resolves it for the capture and again for the deployed-outputs check of the
    same feed. Scoped to a run, never to the process: between two runs in one interpreter the
    weights may change on disk without the spec file changing.
    """
    token = _RUN_EXPORTS.set({})
    try:
        yield
    finally:
        _RUN_EXPORTS.reset(token)


def _export_key(cfg: RunConfig, feed: dict[str, np.ndarray]) -> Any:
    opts = sorted((str(k), repr(v)) for k, v in cfg.options.items() if k not in _NOT_EXPORT_OPTIONS)
    sig = sorted((k, str(np.asarray(v).dtype), tuple(np.shape(v))) for k, v in feed.items())
    return (str(cfg.model), str(cfg.workdir), str(cfg.device), tuple(opts), tuple(sig))


def onnx_model_for(cfg: RunConfig, feed: dict[str, np.ndarray]) -> OnnxModel:
    """The fp32 ONNX model for ``cfg``: the file itself, or a cached export (with provenance) of the torch model."""
    if is_onnx_file(cfg.model):
        return OnnxModel(runnable_onnx(Path(str(cfg.model)), Path(cfg.workdir)))
    from parity.lib.torch_loader import memory_model

    memo = _RUN_EXPORTS.get() if memory_model(cfg.model) is None else None  # a module in memory may change
    key = _export_key(cfg, feed) if memo is not None else None
    if memo is not None and key in memo and memo[key].path.exists():
        return memo[key]
    found = _export(cfg, feed)
    if memo is not None:
        memo[key] = found
    return found


def _export(cfg: RunConfig, feed: dict[str, np.ndarray]) -> OnnxModel:
    from parity.lib.onnx.export import cached_export

    loaded = _load_torch(cfg)
    module = loaded.module
    try:
        module = module.to("cpu")
    except Exception:  # noqa: BLE001 - a TorchScript or exported module may not move; export as it is
        pass
    o = export_options(cfg.options)
    # a module given in memory has no file: its export is cached by weights and structure alone
    from parity.lib.torch_loader import memory_model

    file = None if memory_model(cfg.model) is not None else getattr(loaded, "path", None) or cfg.model
    path = cached_export(module, feed, Path(cfg.workdir), file,
                         o["opset"], dynamic_batch=o["dynamic_batch"], optimize=o["optimize"], dynamo=o["dynamo"],
                         input_order=getattr(loaded, "input_names", None))
    names = [n for n, _ in module.named_modules()] if hasattr(module, "named_modules") else None
    return OnnxModel(Path(path), names)


def _ir_version(path: Path) -> int | None:
    """The IR version of an ONNX file from its first bytes (field 1, written first), else from the proto."""
    with open(path, "rb") as f:
        head = f.read(11)
    if head[:1] == b"\x08":  # field 1 (ir_version), varint
        value = shift = 0
        for b in head[1:]:
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value
    import onnx

    try:
        return int(onnx.load(str(path), load_external_data=False).ir_version)
    except Exception:  # noqa: BLE001 - not a model: the loaders that follow say so, naming the file
        return None


#: user models already announced as run from a lowered copy (one note per model and process)
_NOTED: set[Path] = set()


def runnable_onnx(path: Path, workdir: Path) -> Path:
    """The user's ``.onnx`` as the installed onnxruntime reads it: the file itself, or a copy at a lower IR version.

    Why: a model saved by a newer ``onnx`` carries an IR version the runtime refuses ("Unsupported
    model IR version: 14, max supported IR version: 13") although its operators are ones the runtime
    implements. The IR version is lowered only as far as the model's opsets allow
    (``onnx.helper.find_min_ir_version_for``); the copy lives in ``workdir/onnx``, never beside
    the user's file, and a note says so.
    """
    try:
        ir = _ir_version(path)
    except OSError:
        return path  # missing or unreadable: the loaders that follow name the problem
    if ir is None:
        return path
    from parity.lib.onnx.convert import max_ir_version

    top = max_ir_version()
    if ir <= top:
        return path
    import onnx
    from onnx import helper

    from parity.lib.onnx.util import model_digest

    m = onnx.load(str(path), load_external_data=False)
    ops = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in m.opset_import)
    need = helper.find_min_ir_version_for(list(m.opset_import), ignore_unknown=True)
    if need > top:
        raise ParityError(f"model {path} is at ONNX IR version {ir} and its opsets ({ops}) need IR {need}, but the "
                          f"installed onnxruntime reads up to IR {top}. Note: upgrade onnxruntime, or export the "
                          f"model at a lower opset.")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer):
        raise ParityError(f"model {path} is at ONNX IR version {ir}; the installed onnxruntime reads up to IR {top} "
                          f"and parity cannot copy a model with external data to lower it. Note: lower it yourself: "
                          f"m = onnx.load(path); m.ir_version = {top}; onnx.save(m, ...).")
    out = Path(workdir) / "onnx" / f"{path.stem[:60]}-ir{top}-{model_digest(path, workdir)[:16]}.onnx"
    if not out.is_file():
        m.ir_version = top
        with atomic_path(out) as tmp:
            onnx.save(m, str(tmp))
    if path not in _NOTED:
        _NOTED.add(path)
        sys.stderr.write(f"parity: note: model {path} is at ONNX IR version {ir}, newer than the IR {top} the installed "
                         f"onnxruntime reads; its opsets ({ops}) allow IR {top}, so parity runs a copy at IR {top}: "
                         f"{out}\n")
    return out


def fmt_dims(dims: Sequence[int | None]) -> str:
    """``[1, ?, 224]``: a declared shape with dynamic dimensions shown as ``?``."""
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def onnx_input_specs(cfg: RunConfig) -> list[InputSpec]:
    """The inputs of ``cfg``'s model as an ONNX consumer sees them, with ``--input-shape`` applied."""
    if is_onnx_file(cfg.model):
        from parity.lib.onnx.graph import elem_dtype, load_model, model_inputs, value_dims

        m = load_model(cfg.model, what="model")
        specs = []
        for vi in model_inputs(m):
            dims = value_dims(vi)
            specs.append(InputSpec(vi.name, tuple(dims) if dims is not None else (),
                                   elem_dtype(vi.type.tensor_type.elem_type) or "float32"))
        return _apply_shapes(cfg, specs)
    from parity.lib.torch_loader import resolve_input_specs

    return list(resolve_input_specs(_load_torch(cfg), cfg.input_shapes))


def _apply_shapes(cfg: RunConfig, specs: list[InputSpec]) -> list[InputSpec]:
    if not cfg.input_shapes:
        return specs
    by = {s.name: s for s in specs}
    unknown = [n for n in cfg.input_shapes if n not in by]
    if unknown:
        raise ParityError(f"{option('input_shape')} names {unknown}, which model {cfg.model} does not have. "
                          f"Note: its inputs are {list(by)}")
    out = []
    for s in specs:
        if s.name not in cfg.input_shapes:
            out.append(s)
            continue
        want = tuple(int(d) for d in cfg.input_shapes[s.name])
        if s.shape and len(s.shape) != len(want):
            raise ParityError(f"{shape_hint(s.name, want)} has rank {len(want)}; "
                              f"model {cfg.model} declares {fmt_dims(s.shape)}")
        for have, w in zip(s.shape, want):
            if have is not None and have != w:
                raise ParityError(f"{shape_hint(s.name, want)} conflicts with the "
                                  f"fixed shape {fmt_dims(s.shape)} of model {cfg.model}")
        out.append(InputSpec(s.name, want, s.dtype))
    return out


# --------------------------------------------------------------------------- facts read before a run

def activation_bound(model: str | Path, shapes: dict[str, tuple[int, ...]]) -> int:
    """A lower bound of the activation bytes of the ONNX file ``model`` on inputs of ``shapes`` (shape
    inference, no run; weights not loaded): the largest node's inputs and outputs alive at once plus that
    layer's output held for scoring, times 1.5 (the reference in fp32, the target at least half of it).

    Why here: the core's memory check before a run needs it and imports no framework; 0 when the file
    cannot be read or inferred (its source reports that, with the file's name, once it runs).
    """
    try:
        import onnx

        from parity.lib.onnx.graph import inferred_info

        m = onnx.load(str(model), load_external_data=False)
        info = inferred_info(m, shapes)
    except Exception:  # noqa: BLE001 - an unreadable model is reported by its source
        return 0
    weights = {t.name for t in m.graph.initializer}

    def size(name: str) -> int:
        t = info.get(name)
        return (t.nbytes or 0) if t is not None and name not in weights else 0

    node_io = max((sum(size(n) for n in (*node.input, *node.output) if n) for node in m.graph.node), default=0)
    largest = max((size(n) for node in m.graph.node for n in node.output if n), default=0)
    return (node_io + largest) * 3 // 2


def external_data(model: str | Path) -> list[tuple[str, str]]:
    """(tensor, location) of each external-data reference of the ONNX file ``model`` (weights not loaded);
    empty when it cannot be read (its source reports that with its own message).

    Asked several times before a run (the external-data check, every target's output-over-input
    check): the file is parsed once per version of it (path, mtime, size).
    """
    st = os.stat(model)
    return list(_external_data_of(str(Path(model).resolve()), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=8)
def _external_data_of(model: str, _mtime: int, _size: int) -> tuple[tuple[str, str], ...]:
    try:
        import onnx

        m = onnx.load(model, load_external_data=False)
    except Exception:  # noqa: BLE001 - not loadable: the source reports that with its own message
        return ()
    return tuple((t.name, e.value) for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                 for e in t.external_data if e.key == "location")

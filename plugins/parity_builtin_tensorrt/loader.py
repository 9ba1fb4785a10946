"""TensorRT engines from ONNX: network, builder config, build, engine cache, deserialization.

The loading half of the TensorRT source (Polygraphy's ``backend/trt/loader.py`` split):
:func:`build_engine` parses an ONNX file into a network, configures the builder from an
:class:`~.config.EngineConfig`, marks the tensors to capture, builds, and caches the engine
under ``workdir/trt`` keyed on the model digest, the build fields, the library and its
version, the input shapes, the calibration data and the GPU. :func:`load_engine`
deserializes it. Running it is :mod:`.runner`.

Every TensorRT return value that signals a failure (a parser that returns False, a builder
that returns None, a runtime that cannot deserialize, a ``BuilderFlag`` the library lacks)
goes through a plain function here that takes the TensorRT module or object as a
parameter and raises one ``ParityError`` line naming the model, the step and the library's
own message (recorded by :class:`ErrorLog` from the logger TensorRT reports through); those
functions are tested without TensorRT on small fakes of the library's API surface.

The same code builds TensorRT-RTX engines (module ``tensorrt_rtx_bindings``); what differs is
named in :class:`~.config.Library` and shows here in three places: the model is cast to the
target's type first (:func:`typed_model`: its networks are always strongly typed, it has no
FP16/BF16/INT8 builder flag and no ``ILayer.precision``), no int8 calibrator, and the library's
name in messages and the cache key. Its 1.7 bindings were exercised on an H200 (docs/runs/):
parsing, marking and ``build_serialized_network`` run; deserializing refuses that GPU.

TensorRT 10 cannot be installed on the machines parity is developed on, so its calls were
written against the TensorRT 10 Python API reference and checked call by call against it;
each call cites its page. References:

[PY]   TensorRT Python API: https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/index.html
       (Core/Logger, Core/Builder, Core/BuilderConfig, Core/Runtime, Core/Engine, Core/ExecutionContext,
       Core/DebugListener, Core/EngineInspector, Graph/Network, Graph/Layers, Int8/EntropyCalibrator2,
       Parsers/Onnx/pyOnnx), e.g. https://docs.nvidia.com/deeplearning/tensorrt/api/python_api/infer/Core/Logger.html
[BIND] the binding source those pages are generated from, TensorRT OSS release/10.x:
       https://github.com/NVIDIA/TensorRT/blob/release/10.16/python/src/infer/pyCore.cpp (and pyGraph.cpp,
       pyInt8.cpp, parsers/pyOnnx.cpp).
[HDR]  https://github.com/NVIDIA/TensorRT/blob/release/10.16/include/NvInfer.h, ``markDebug`` and
       ``markUnfusedTensorsAsDebugTensors``: "Tensors marked this way will not prevent fusion like
       markDebug() does ... DebugListener can only get internal tensor names ... the names correspond
       to the names obtained by IEngineInspector."
"""
from __future__ import annotations

import collections
import json
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from parity.contract.atomic import atomic_path, write_text
from parity.contract.errors import ParityError, first_line
from parity.contract.progress import step
from parity.lib.onnx.util import feeds_digest

from ._cuda import dtype_name
from .config import LIBRARIES, TENSORRT, EngineConfig, Library, cache_key, fp32_nodes, onnx_digest
from .marking import (LayerDesc, TensorDesc, mark_control_flow, plan_layer_precisions, propagate_constants,
                      select_tensors, unknown_override_names)

#: tensorrt.DataType member name -> dtype name used in network descriptions
_DT_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
             "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "fp8", "INT4": "int4", "FP4": "fp4",
             "E8M0": "e8m0"}
#: --layerPrecisions spelling -> tensorrt.DataType member name
_PREC_DT = {"fp32": "FLOAT", "fp16": "HALF", "bf16": "BF16", "int8": "INT8", "int32": "INT32"}
#: Python module name -> the library's name in messages and in the engine cache key
_LIBRARIES = {"tensorrt_rtx": "TensorRT-RTX", **{m: lib.label for m, lib in LIBRARIES.items()}}
MIN_MAJOR = TENSORRT.min_major


# --------------------------------------------------------------------------- the library

def import_tensorrt(library: Library = TENSORRT) -> Any:
    """``import tensorrt`` (or the library's module) or a one-line ParityError saying what to install."""
    import importlib

    try:
        trt = importlib.import_module(library.module)
    except Exception as e:  # noqa: BLE001 - ImportError, or OSError when libnvinfer is missing or broken
        first = first_line(e, 200)
        raise ParityError(f"the {library.prefix}-* targets need {library.label} {library.min_major}+. Note: import "
                          f"{library.module} failed ({first}); {library.install}, or capture on a GPU machine with "
                          f"trtexec/Polygraphy and import the files (docs/tensorrt.md)") from None
    head = re.match(r"\d+", str(getattr(trt, "__version__", "")))
    major = int(head.group(0)) if head else 0
    if major < library.min_major:
        raise ParityError(f"{library.label} {trt.__version__} is too old. Note: parity needs {library.label} "
                          f"{library.min_major}+ (execute_async_v3, debug tensors, engine inspector metadata)")
    return trt


def tensorrt_with_cuda(what: str, library: Library = TENSORRT) -> Any:
    """The library's module, after checking a CUDA device is visible; one-line errors otherwise."""
    trt = import_tensorrt(library)
    from ._cuda import cuda_status

    ok, why = cuda_status()
    if not ok:
        raise ParityError(f"{what}: {library.label} needs a CUDA device. Note: {why}")
    return trt


def library_name(trt: Any) -> str:
    """``TensorRT`` or ``TensorRT-RTX`` (from the module's name), for messages and the cache key."""
    mod = str(getattr(trt, "__name__", "tensorrt")).split(".")[0]
    return _LIBRARIES.get(mod, mod)


def library_of(trt: Any) -> Library:
    """The :class:`~.config.Library` a module is (TensorRT when unknown)."""
    mod = str(getattr(trt, "__name__", "tensorrt")).split(".")[0]
    return LIBRARIES.get(mod, TENSORRT)


def library_label(trt: Any) -> str:
    """The library and its version, e.g. ``TensorRT 10.16.0``."""
    return f"{library_name(trt)} {getattr(trt, '__version__', '?')}"


class ErrorLog:
    """The last error messages a library logged, numbered so a step can ask for its own.

    TensorRT reports why a call failed through its logger and returns None or False; this keeps
    those messages so the ``ParityError`` can quote them. Thread-safe (TensorRT may log from its
    own threads).
    """

    def __init__(self, keep: int = 32) -> None:
        self._msgs: collections.deque[tuple[int, str]] = collections.deque(maxlen=keep)
        self._n = 0
        self._lock = threading.Lock()

    def add(self, msg: str) -> None:
        with self._lock:
            self._n += 1
            self._msgs.append((self._n, str(msg)))

    def mark(self) -> int:
        """A position; :meth:`since` returns what was logged after it."""
        with self._lock:
            return self._n

    def since(self, mark: int) -> list[str]:
        with self._lock:
            return [m for k, m in self._msgs if k > mark]


_LOGGERS: dict[str, Any] = {}


def _logger(trt: Any) -> Any:
    """One process-wide ``ILogger`` per library (warnings and errors to stderr), alive as long as anything uses it.

    A subclass of ``trt.ILogger`` ([PY Core/Logger]: "ensure that you explicitly instantiate the
    base class in __init__()"; ``log(self, severity, msg)``) that also records errors in an
    :class:`ErrorLog` (its ``errors`` attribute).
    """
    key = library_name(trt)
    if key not in _LOGGERS:
        sev = trt.ILogger.Severity
        errors = {sev.INTERNAL_ERROR, sev.ERROR}
        shown = {sev.INTERNAL_ERROR: "E", sev.ERROR: "E", sev.WARNING: "W"}

        class _Logger(trt.ILogger):  # type: ignore[misc,name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors = ErrorLog()

            def log(self, severity: Any, msg: str) -> None:
                if severity in errors:
                    self.errors.add(msg)
                tag = shown.get(severity)
                if tag is not None:
                    print(f"[{key}] [{tag}] {msg}", file=sys.stderr, flush=True)

        _LOGGERS[key] = _Logger()
    return _LOGGERS[key]


def _said(errors: Iterable[str]) -> str:
    """The library's own error message for a step, as a clause (empty when it logged none).

    The last one the step logged (TensorRT ends a failed build with its summary), except that a
    message naming the GPU's compute capability wins wherever it comes.
    """
    msgs = [str(m) for m in errors if str(m).strip()]
    if not msgs:
        return ""
    pick = next((m for m in msgs if "compute capability" in m), msgs[-1])
    return f": {first_line(pick, 300)}"


# --------------------------------------------------------------------------- failure checks (plain, tested with fakes)

def builder_flag(trt: Any, name: str, target: str) -> Any:
    """``trt.BuilderFlag.<name>``, or a one-line ParityError when this library has no such flag.

    TensorRT-RTX, for one, has no ``BuilderFlag.FP16`` (it picks precisions itself).
    """
    flag = getattr(getattr(trt, "BuilderFlag", None), name, None)
    if flag is None:
        raise ParityError(f"{library_label(trt)} has no BuilderFlag.{name}, which {target} needs. Note: this "
                          f"library cannot build a {target} engine; use a target it supports or TensorRT {MIN_MAJOR}+")
    return flag


def check_parsed(ok: bool, parser: Any, model: str, library: str = "TensorRT") -> None:
    """Raise when ``OnnxParser.parse_from_file`` returned False: the model and the parser's first error.

    [PY Parsers/Onnx]: ``num_errors`` and ``get_error(i)`` list what the parser rejected.
    """
    if ok:
        return
    try:
        n = int(parser.num_errors)
        errs = [str(parser.get_error(i)) for i in range(n)]
    except Exception as e:  # noqa: BLE001 - the message matters more than the listing
        n, errs = 0, [f"(its errors could not be read: {first_line(e, 100, typed=True)})"]
    first = first_line(errs[0], 400) if errs else "it gave no reason"
    more = f" ({n - 1} more)" if n > 1 else ""
    raise ParityError(f"{library}'s ONNX parser rejected {model}: {first}{more}. Note: export with another "
                      f"opset, or check the model with onnx.checker")


def check_serialized(serialized: Any, model: str, target: str, library: str = "TensorRT",
                     errors: Iterable[str] = ()) -> bytes:
    """The engine bytes, or a ParityError when ``build_serialized_network`` returned None ([PY Core/Builder])."""
    if serialized is None:
        raise ParityError(f"{library} could not build the {target} engine for {model}{_said(errors)}. "
                          f"Note: try trt_workspace, fewer trt_layer_precisions, or trt_capture outputs")
    return bytes(serialized)


def deserialize_engine(runtime: Any, data: bytes, model: str, target: str, library: str = "TensorRT",
                       log: ErrorLog | None = None, cache_dir: Path | None = None) -> Any:
    """``runtime.deserialize_cuda_engine(data)``, or one ParityError when it returns None or raises.

    [PY Core/Runtime]: ``deserialize_cuda_engine`` returns None when the plan cannot be loaded
    (another library version, a GPU it was not built for; TensorRT-RTX logs e.g. "does not
    support this compute capability"); the reason goes to the logger, recorded in ``log``.
    """
    mark = log.mark() if log is not None else 0
    try:
        engine = runtime.deserialize_cuda_engine(data)
    except Exception as e:  # noqa: BLE001 - some bindings raise instead of returning None
        engine, said = None, f": {first_line(e, 300, typed=True)}"
    else:
        said = _said(log.since(mark)) if log is not None else ""
    if engine is None:
        hint = f"delete {cache_dir} and run again" if cache_dir is not None else "see the library's log above"
        if "compute capability" in said:
            hint = (f"the engine was built; this GPU's compute capability is not supported by {library}: run "
                    f"on a GPU it supports, or use another target")
        raise ParityError(f"{library} failed deserializing the engine built for {target} from {model}{said}. "
                          f"Note: {hint}")
    return engine


def check_context(context: Any, label: str, library: str = "TensorRT") -> Any:
    """The execution context, or a ParityError when ``create_execution_context`` returned None ([PY Core/Engine])."""
    if context is None:
        raise ParityError(f"{library} could not create an execution context for {label}. Note: usually out of "
                          f"GPU memory; see its log above")
    return context


# --------------------------------------------------------------------------- network description

def describe_network(trt: Any, network: Any) -> list[LayerDesc]:
    """The network as plain :class:`LayerDesc` (before fusion), for :mod:`.marking`.

    [PY Graph/Network]: ``num_inputs``/``get_input``, ``num_outputs``/``get_output``,
    ``num_layers``/``get_layer``; [PY Graph/Layers] ``ILayer.name/type/num_inputs/get_input/
    num_outputs/get_output``, ``ITensor.name/dtype/shape/is_shape_tensor``.
    """
    outputs = {network.get_output(i).name for i in range(network.num_outputs)}
    ins = []
    for i in range(network.num_inputs):
        t = network.get_input(i)
        ins.append(TensorDesc(t.name, _DT_NAMES.get(dtype_name(t.dtype)), tuple(t.shape),
                              is_shape_tensor=bool(t.is_shape_tensor), is_network_input=True))
    layers = [LayerDesc("(inputs)", "Input", (), tuple(ins))]
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        lin = []
        for j in range(layer.num_inputs):
            t = layer.get_input(j)  # optional inputs are None
            if t is not None:
                lin.append(t.name)
        louts = []
        for k in range(layer.num_outputs):
            t = layer.get_output(k)
            if t is None:
                continue
            louts.append(TensorDesc(t.name, _DT_NAMES.get(dtype_name(t.dtype)), tuple(t.shape),
                                    is_shape_tensor=bool(t.is_shape_tensor), is_network_output=t.name in outputs))
        layers.append(LayerDesc(layer.name, layer.type.name, tuple(lin), tuple(louts)))
    return propagate_constants(mark_control_flow(layers))


def _tensors_by_name(network: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        found[t.name] = t
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for k in range(layer.num_outputs):
            t = layer.get_output(k)
            if t is not None:
                found.setdefault(t.name, t)
    return found


# --------------------------------------------------------------------------- calibration

def _calibrator(trt: Any, feeds: list[dict[str, np.ndarray]], dtypes: dict[str, Any], cache: Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` fed from ``cfg.calibration`` ([PY Int8/EntropyCalibrator2]).

    ``get_batch(names)`` returns one device pointer per name, in ``names`` order, or None when
    the data is used up ([BIND] pyInt8.cpp copies the list into the bindings array).
    """
    from ._cuda import to_device

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.k = 0
            self.keep: list[Any] = []  # device buffers must outlive the call that returned them

        def get_batch_size(self) -> int:
            return 1  # explicit-batch networks: the batch is part of each tensor's shape

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.k >= len(feeds):
                return None
            feed = feeds[self.k]
            self.k += 1
            self.keep = [to_device(feed[n], dtypes[n]) for n in names]
            return [int(t.data_ptr()) for t in self.keep]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            with atomic_path(cache) as tmp:
                tmp.write_bytes(bytes(data))

    return _Calibrator()


# --------------------------------------------------------------------------- building

@dataclass
class BuiltEngine:
    """A serialized engine, its layer information JSON, and what the build decided."""

    engine: bytes
    layer_info: str
    notes: dict[str, Any] = field(default_factory=dict)
    runtime: Any = None        # kept with ``loaded`` (a runtime must outlive its engines)
    loaded: Any = None         # the deserialized ICudaEngine, when the build just made one
    model: str = "the model"   # the ONNX file's name, for messages
    target: str = "trt"        # e.g. trt-fp16, for messages
    cache_dir: Path | None = None


def _gpu_identity() -> str:
    import torch

    if not torch.cuda.is_available():  # a plan built without a GPU (TensorRT-RTX builds ahead of time)
        return "no CUDA device"
    p = torch.cuda.get_device_properties(0)
    return f"{p.name} sm{p.major}{p.minor}"


def typed_model(onnx_path: Path, ecfg: EngineConfig, workdir: Path) -> Path:
    """The ONNX model a strongly typed build parses: ``onnx_path`` cast to ``ecfg.cast``, fp32 I/O kept.

    TensorRT-RTX takes each layer's precision from the ONNX types, so ``trt-rtx-fp16`` builds
    from the model cast by :func:`parity.lib.onnx.convert.to_fp16` (``-bf16``: ``to_bf16``), the
    nodes that layer precision overrides or ``keep_high_precision`` keep (:func:`.config.fp32_nodes`)
    left in fp32. Without a cast the model is returned as it is.
    """
    if ecfg.cast is None:
        return onnx_path
    import onnx

    from parity.lib.onnx.convert import to_bf16, to_fp16

    model = onnx.load(str(onnx_path), load_external_data=False)
    nodes, tensors = fp32_nodes(model, ecfg, onnx_path.name)
    del model
    cast = {"fp16": to_fp16, "bf16": to_bf16}[ecfg.cast]
    return cast(onnx_path, Path(workdir), keep_nodes=nodes, keep_tensors=tensors)


def build_engine(trt: Any, onnx_path: Path, ecfg: EngineConfig, feed: dict[str, np.ndarray],
                 calibration: list[dict[str, np.ndarray]], workdir: Path, has_qdq: bool) -> BuiltEngine:
    """Parse ONNX, configure, mark tensors, build, deserialize; reuse ``workdir/trt/<key>`` when cached.

    ``onnx_path`` is what the network is parsed from: for a strongly typed library, the cast
    model (:func:`typed_model`). The build itself is :func:`build_plan`.
    """
    library = library_name(trt)
    target = ecfg.target
    model = onnx_path.name
    shapes = {k: (tuple(int(d) for d in np.shape(v)), str(np.asarray(v).dtype)) for k, v in feed.items()}
    calib_digest = feeds_digest(calibration) if ("INT8" in ecfg.builder_flags and not has_qdq) else None
    key = cache_key(onnx_digest(onnx_path), ecfg, trt.__version__,
                    {"library": library, "inputs": shapes, "calibration": calib_digest, "gpu": _gpu_identity()})
    cdir = Path(workdir) / "trt"
    eng_p, info_p, notes_p = cdir / f"{key}.engine", cdir / f"{key}.layers.json", cdir / f"{key}.build.json"
    if ecfg.use_cache and eng_p.is_file() and info_p.is_file() and notes_p.is_file():
        notes = json.loads(notes_p.read_text(encoding="utf-8"))
        notes["engine_cache"] = "hit"
        return BuiltEngine(eng_p.read_bytes(), info_p.read_text(encoding="utf-8"), notes, model=model,
                           target=target, cache_dir=cdir)
    built = build_plan(trt, onnx_path, ecfg, feed, calibration, cdir, has_qdq, key)
    logger = _logger(trt)
    built.runtime = trt.Runtime(logger)                          # [PY Core/Runtime]
    engine = deserialize_engine(built.runtime, built.engine, model, target, library, logger.errors)
    built.loaded = engine
    inspector = engine.create_engine_inspector()                 # [PY Core/EngineInspector]
    built.layer_info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    cdir.mkdir(parents=True, exist_ok=True)
    if ecfg.use_cache:
        with atomic_path(eng_p) as tmp:
            tmp.write_bytes(built.engine)
        write_text(info_p, built.layer_info)
        write_text(notes_p, json.dumps(built.notes, indent=1, default=str))
    return built


def build_plan(trt: Any, onnx_path: Path, ecfg: EngineConfig, feed: dict[str, np.ndarray],
               calibration: list[dict[str, np.ndarray]], cdir: Path, has_qdq: bool, key: str = "plan"
               ) -> BuiltEngine:
    """Parse ``onnx_path``, configure the builder from ``ecfg``, mark the tensors to capture, build.

    Returns the serialized engine (no layer information: that needs a deserialized engine);
    every failing step is one ParityError naming the model, the step and the library's message.
    """
    library = library_name(trt)
    target = ecfg.target
    model = onnx_path.name
    shapes = {k: (tuple(int(d) for d in np.shape(v)), str(np.asarray(v).dtype)) for k, v in feed.items()}
    logger = _logger(trt)
    mark = logger.errors.mark()
    builder = trt.Builder(logger)                                # [PY Core/Builder] Builder(logger)
    flags = 0
    if ecfg.strongly_typed:                                      # [PY Core/Builder] NetworkDefinitionCreationFlag
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)                      # explicit batch is the only mode in TRT 10
    parser = trt.OnnxParser(network, logger)                     # [PY Parsers/Onnx] OnnxParser(network, logger)
    check_parsed(parser.parse_from_file(str(onnx_path)), parser, model, library)  # reads external weights beside it

    config = builder.create_builder_config()                     # [PY Core/IBuilderConfig]
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer info with Metadata, tensors, formats
    if ecfg.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(ecfg.workspace_bytes))
    for f in ecfg.builder_flags:
        config.set_flag(builder_flag(trt, f, target))
    absent = [f for f in ecfg.cleared_flags if getattr(trt.BuilderFlag, f, None) is None]
    for f in ecfg.cleared_flags:
        if f not in absent:                                      # a flag the library lacks is never set
            config.clear_flag(getattr(trt.BuilderFlag, f))

    # one optimization profile pinned to the run's shapes: the engine is built for this input
    profile = None
    for i in range(network.num_inputs):
        t = network.get_input(i)
        if t.name not in shapes:
            raise ParityError(f"the feed has no input {t.name!r}, which {model} needs. "
                              f"Note: feed inputs are {', '.join(shapes)}")
        want = shapes[t.name][0]
        if t.is_shape_tensor:
            raise ParityError(f"input {t.name!r} of {model} is a shape tensor; parity does not feed "
                              f"shape-tensor inputs. Note: fold it into the model (fixed shapes) before export")
        if any(int(d) < 0 for d in t.shape):
            if profile is None:
                profile = builder.create_optimization_profile()   # [PY Core/IOptimizationProfile]
            profile.set_shape(t.name, want, want, want)
    if profile is not None:
        config.add_optimization_profile(profile)

    desc = describe_network(trt, network)
    notes: dict[str, Any] = {"engine_cache": "miss", "tensorrt": trt.__version__, "library": library,
                             "capture": ecfg.capture, "strongly_typed": bool(ecfg.strongly_typed)}
    if ecfg.cast:
        notes["onnx_cast"] = ecfg.cast
    if ecfg.strongly_typed and ecfg.layer_precisions:   # applied by the cast (typed_model), not per layer
        notes["layers_kept_fp32"] = [lp.pattern for lp in ecfg.layer_precisions]
    if absent:
        notes["warning"] = (f"{library_label(trt)} has no BuilderFlag {', '.join(absent)}; parity could not "
                            f"clear it, so the library decides")
    if ecfg.layer_precisions and not ecfg.strongly_typed:
        applied, skipped = plan_layer_precisions(desc, ecfg.layer_precisions)
        unknown = unknown_override_names(desc, ecfg.layer_precisions)
        if unknown:
            raise ParityError(f"trt_layer_precisions names {', '.join(map(repr, unknown[:5]))}, which match no "
                              f"layer of the TensorRT network. Note: use network layer names (the ONNX node "
                              f"names, e.g. {', '.join(repr(d.name) for d in desc[1:4])}), not fused engine names")
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.name in applied:                            # [PY Graph/Layers] ILayer.precision
                layer.precision = getattr(trt.DataType, _PREC_DT[applied[layer.name]])
        notes["layer_precisions_applied"] = applied
        notes["layer_precisions_skipped"] = skipped

    if "INT8" in ecfg.builder_flags and not has_qdq:            # TensorRT only: TensorRT-RTX has no int8 target
        feeds = calibration or [feed]
        for k, c in enumerate(feeds):
            bad = {n: np.shape(c.get(n)) for n in shapes if np.shape(c.get(n)) != shapes[n][0]}
            if bad:
                raise ParityError(f"calibration feed #{k} has shapes {bad}; the engine is built for "
                                  f"{ {n: s for n, (s, _) in shapes.items()} }. Note: give calibration data "
                                  f"with the run's input shapes")
        dtypes = {network.get_input(i).name: network.get_input(i).dtype for i in range(network.num_inputs)}
        cdir.mkdir(parents=True, exist_ok=True)
        config.int8_calibrator = _calibrator(trt, feeds, dtypes, cdir / f"{key}.calib")  # deprecated in 10.1
        if profile is not None:
            config.set_calibration_profile(profile)
        notes["calibration_feeds"] = len(feeds)
        if not calibration:
            said = ("int8 calibrated on the compared input itself: scales fit this input and the "
                    "error is optimistic; pass calibration data")
            notes["warning"] = f"{notes['warning']}; {said}" if notes.get("warning") else said

    sel = select_tensors(desc, ecfg, selection=ecfg.selection(), aliases=ecfg.aliases)
    notes["skipped_tensors"] = sel.reasons()
    tensors = _tensors_by_name(network)
    strategy = "none"
    if ecfg.capture == "mark":
        marked = 0
        for name in sel.tensors:
            t = tensors[name]
            if not t.is_network_output:
                network.mark_output(t)                           # [PY Graph/Network] mark_output
                marked += 1
        notes["marked_outputs"] = marked
        strategy = "mark"
    elif ecfg.capture == "debug":
        can_unfused = hasattr(network, "mark_unfused_tensors_as_debug_tensors")
        if ecfg.debug_strategy == "unfused" and not can_unfused:
            raise ParityError(f"trt_debug_strategy unfused needs TensorRT 10.12+ (this is {library_label(trt)}). "
                              f"Note: use trt_debug_strategy marked, or trt_capture mark")
        if can_unfused and ecfg.debug_strategy in ("auto", "unfused"):
            network.mark_unfused_tensors_as_debug_tensors()       # [HDR] keeps fusion as it is
            strategy = "unfused"
        else:
            for name in sel.tensors:
                t = tensors[name]
                if not t.is_network_output:
                    network.mark_debug(t)                        # [PY Graph/Network] mark_debug
            strategy = "marked"
    notes["debug_strategy"] = strategy
    notes["fusion_altered"] = strategy in ("mark", "marked")

    # [PY Core/Builder] build_serialized_network -> IHostMemory, or None on failure
    with step(f"build {target} engine for {model}"):  # minutes on a large model: show it
        plan = builder.build_serialized_network(network, config)
    engine_bytes = check_serialized(plan, model, target, library, logger.errors.since(mark))
    return BuiltEngine(engine_bytes, "", notes, model=model, target=target, cache_dir=cdir)


def load_engine(trt: Any, built: BuiltEngine) -> Any:
    """The built engine deserialized (once; kept on ``built``); a ParityError when the library cannot load it."""
    engine = built.loaded
    if engine is None:
        logger = _logger(trt)
        built.runtime = trt.Runtime(logger)                       # [PY Core/Runtime]
        engine = deserialize_engine(built.runtime, built.engine, built.model, built.target, library_name(trt),
                                    logger.errors, built.cache_dir)
        built.loaded = engine
    return engine

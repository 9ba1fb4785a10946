"""The TensorRT source: build an engine from ONNX and capture its layers while it runs.

This is the only module that touches TensorRT; it is kept thin. Everything it decides
on (flags, which tensors, precision overrides, cache key, name mapping) lives in plain
modules tested without TensorRT. TensorRT cannot be installed on the machines parity is
developed on, so this file was written against the TensorRT 10 Python API reference and
checked call by call against it; each call cites its page. References:

[PY]   TensorRT Python API: https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/index.html
       (Core/Builder, Core/BuilderConfig, Core/Runtime, Core/Engine, Core/ExecutionContext,
       Core/DebugListener, Core/EngineInspector, Graph/Network, Graph/Layers, Int8/EntropyCalibrator2,
       Parsers/Onnx/pyOnnx), e.g. https://docs.nvidia.com/deeplearning/tensorrt/api/python_api/infer/Core/DebugListener.html
[BIND] the binding source those pages are generated from, TensorRT OSS release/10.x:
       https://github.com/NVIDIA/TensorRT/blob/release/10.16/python/src/infer/pyCore.cpp (and pyGraph.cpp,
       pyInt8.cpp, parsers/pyOnnx.cpp): ``process_debug_tensor`` receives ``addr`` and ``stream`` as
       ``int`` (``reinterpret_cast<size_t>``), ``execute_async_v3`` releases the GIL,
       ``unfused_tensors_debug_state`` is a property (TensorRT >= 10.12).
[HDR]  https://github.com/NVIDIA/TensorRT/blob/release/10.16/include/NvInfer.h, ``markDebug`` and
       ``markUnfusedTensorsAsDebugTensors``: "Tensors marked this way will not prevent fusion like
       markDebug() does ... DebugListener can only get internal tensor names ... the names correspond
       to the names obtained by IEngineInspector."

Capture modes (``trt_capture``):

``debug``    the engine reports tensors to an ``IDebugListener`` during ``execute_async_v3``;
             each is copied to host in the callback and handed to the scorer through a bounded
             queue, so it is scored while TensorRT runs. Strategy ``unfused`` (TensorRT >= 10.12,
             the default when available) marks every tensor that survives fusion and leaves the
             fusion decisions alone; ``marked`` calls ``mark_debug`` per tensor, which keeps those
             tensors from being fused away (``fusion_altered``).
``mark``     the classic recipe: chosen tensors become network outputs (``fusion_altered``).
``outputs``  the network outputs only.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import queue
import re
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from parity.contract.atomic import atomic_path, write_text
from parity.contract.errors import ParityError, first_line
from parity.contract.records import Activation
from parity.contract.source import InputSpec, RunConfig, Source

from parity.lib.onnx.models import onnx_input_specs, onnx_model_for

from ._cuda import dtype_name
from .config import EngineConfig, cache_key, onnx_digest
from .marking import (LayerDesc, TensorDesc, mark_control_flow, plan_layer_precisions, propagate_constants,
                      select_tensors, unknown_override_names)

#: tensorrt.DataType member name -> dtype name used in network descriptions
_DT_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
             "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "fp8", "INT4": "int4", "FP4": "fp4",
             "E8M0": "e8m0"}
#: --layerPrecisions spelling -> tensorrt.DataType member name
_PREC_DT = {"fp32": "FLOAT", "fp16": "HALF", "bf16": "BF16", "int8": "INT8", "int32": "INT32"}
#: tensorrt.DataType member name -> numpy dtype for host-resident (shape) inputs
_NP_DT = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
          "BOOL": np.bool_, "UINT8": np.uint8}
_MIN_MAJOR = 10
_DONE = object()


def import_tensorrt() -> Any:
    """``import tensorrt`` or a one-line ParityError saying what to install."""
    try:
        import tensorrt as trt
    except Exception as e:  # noqa: BLE001 - ImportError, or OSError when libnvinfer is missing or broken
        first = first_line(e, 200)
        raise ParityError(f"the TensorRT targets need TensorRT {_MIN_MAJOR}+. Note: import tensorrt failed ({first}); "
                          f"on a machine with an NVIDIA GPU run pip install tensorrt (or use NVIDIA's TensorRT "
                          f"container), or capture there with trtexec/Polygraphy and import the files "
                          f"(docs/tensorrt.md)") from None
    head = re.match(r"\d+", str(getattr(trt, "__version__", "")))
    major = int(head.group(0)) if head else 0
    if major < _MIN_MAJOR:
        raise ParityError(f"TensorRT {trt.__version__} is too old. Note: parity needs TensorRT {_MIN_MAJOR}+ "
                          f"(execute_async_v3, debug tensors, engine inspector metadata)")
    return trt


_LOGGER: Any = None


def _logger(trt: Any) -> Any:
    """One process-wide ``trt.Logger`` (warnings and errors), alive as long as anything uses it."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)                # [PY Core/Logger]
    return _LOGGER


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


def _feeds_digest(feeds: list[dict[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for f in feeds:
        for k in sorted(f):
            a = np.ascontiguousarray(f[k])
            h.update(f"{k}{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- building

@dataclass
class BuiltEngine:
    """A serialized engine, its layer information JSON, and what the build decided."""

    engine: bytes
    layer_info: str
    notes: dict[str, Any] = field(default_factory=dict)
    runtime: Any = None        # kept with ``loaded`` (a runtime must outlive its engines)
    loaded: Any = None         # the deserialized ICudaEngine, when the build just made one


def _gpu_identity() -> str:
    import torch

    p = torch.cuda.get_device_properties(0)
    return f"{p.name} sm{p.major}{p.minor}"


def build_engine(trt: Any, onnx_path: Path, ecfg: EngineConfig, feed: dict[str, np.ndarray],
                 calibration: list[dict[str, np.ndarray]], workdir: Path, has_qdq: bool) -> BuiltEngine:
    """Parse ONNX, configure, mark tensors, build; reuse ``workdir/trt/<key>`` when cached."""
    shapes = {k: (tuple(int(d) for d in np.shape(v)), str(np.asarray(v).dtype)) for k, v in feed.items()}
    calib_digest = _feeds_digest(calibration) if ("INT8" in ecfg.builder_flags and not has_qdq) else None
    key = cache_key(onnx_digest(onnx_path), ecfg, trt.__version__,
                    {"inputs": shapes, "calibration": calib_digest, "gpu": _gpu_identity()})
    cdir = Path(workdir) / "trt"
    eng_p, info_p, notes_p = cdir / f"{key}.engine", cdir / f"{key}.layers.json", cdir / f"{key}.build.json"
    if ecfg.use_cache and eng_p.is_file() and info_p.is_file() and notes_p.is_file():
        notes = json.loads(notes_p.read_text(encoding="utf-8"))
        notes["engine_cache"] = "hit"
        return BuiltEngine(eng_p.read_bytes(), info_p.read_text(encoding="utf-8"), notes)

    logger = _logger(trt)
    builder = trt.Builder(logger)                                # [PY Core/Builder] Builder(logger)
    flags = 0
    if ecfg.strongly_typed:                                      # [PY Core/Builder] NetworkDefinitionCreationFlag
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)                      # explicit batch is the only mode in TRT 10
    parser = trt.OnnxParser(network, logger)                     # [PY Parsers/Onnx] OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):               # reads external weights next to the file
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ParityError(f"TensorRT's ONNX parser rejected {onnx_path.name}. Note: {errs[:600]}")

    config = builder.create_builder_config()                     # [PY Core/IBuilderConfig]
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer info with Metadata, tensors, formats
    if ecfg.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(ecfg.workspace_bytes))
    for f in ecfg.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, f))
    for f in ecfg.cleared_flags:
        config.clear_flag(getattr(trt.BuilderFlag, f))

    # one optimization profile pinned to the run's shapes: the engine is built for this input
    profile = None
    for i in range(network.num_inputs):
        t = network.get_input(i)
        if t.name not in shapes:
            raise ParityError(f"the feed has no input {t.name!r}, which {onnx_path.name} needs. "
                              f"Note: feed inputs are {', '.join(shapes)}")
        want = shapes[t.name][0]
        if t.is_shape_tensor:
            raise ParityError(f"input {t.name!r} of {onnx_path.name} is a shape tensor; parity does not feed "
                              f"shape-tensor inputs. Note: fold it into the model (fixed shapes) before export")
        if any(int(d) < 0 for d in t.shape):
            if profile is None:
                profile = builder.create_optimization_profile()   # [PY Core/IOptimizationProfile]
            profile.set_shape(t.name, want, want, want)
    if profile is not None:
        config.add_optimization_profile(profile)

    desc = describe_network(trt, network)
    notes: dict[str, Any] = {"engine_cache": "miss", "tensorrt": trt.__version__, "capture": ecfg.capture}
    if ecfg.layer_precisions:
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

    if "INT8" in ecfg.builder_flags and not has_qdq:
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
            notes["warning"] = ("int8 calibrated on the compared input itself: scales fit this input and the "
                                "error is optimistic; pass calibration data")

    sel = select_tensors(desc, ecfg)
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
            raise ParityError(f"trt_debug_strategy unfused needs TensorRT 10.12+ (this is {trt.__version__}). "
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

    serialized = builder.build_serialized_network(network, config)  # [PY Core/Builder] -> IHostMemory or None
    if serialized is None:
        raise ParityError(f"TensorRT could not build an engine for {onnx_path.name} ({ecfg.precision}). "
                          f"Note: its log above says why; try trt_workspace, fewer trt_layer_precisions, "
                          f"or trt_capture outputs")
    engine_bytes = bytes(serialized)
    runtime = trt.Runtime(logger)                                # [PY Core/Runtime]
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    inspector = engine.create_engine_inspector()                 # [PY Core/EngineInspector]
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    cdir.mkdir(parents=True, exist_ok=True)
    if ecfg.use_cache:
        with atomic_path(eng_p) as tmp:
            tmp.write_bytes(engine_bytes)
        write_text(info_p, info)
        write_text(notes_p, json.dumps(notes, indent=1, default=str))
    return BuiltEngine(engine_bytes, info, notes, runtime, engine)


# --------------------------------------------------------------------------- running

class _Capture:
    """Debug tensors from TensorRT's callback to the consumer, one bounded queue in between.

    The callback runs on the thread inside ``execute_async_v3``; a full queue makes it wait,
    so at most ``queue_size`` copies are on the host beyond the one being scored.
    """

    def __init__(self, size: int, want: Callable[[str], bool]) -> None:
        self.q: queue.Queue[Any] = queue.Queue(maxsize=size)
        self.want = want
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.skipped = 0

    def put(self, item: Any) -> None:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def on_tensor(self, trt: Any, addr: Any, location: Any, dtype: Any, shape: Any, name: str, stream: int) -> None:
        from ._cuda import device_to_host, host_to_host_copy

        if self.stop.is_set():
            return
        try:
            if not self.want(name):
                self.skipped += 1
                return
            dims = tuple(int(d) for d in shape)
            if location == trt.TensorLocation.HOST:
                arr = host_to_host_copy(addr, dims, dtype)
            else:
                arr = device_to_host(addr, dims, dtype, int(stream))
            self.put((name, arr, dtype_name(dtype)))
        except BaseException as e:  # noqa: BLE001 - TensorRT swallows callback errors; keep them for the consumer
            self.errors.append(e)
            self.stop.set()


def _listener(trt: Any, cap: _Capture) -> Any:
    class _Listener(trt.IDebugListener):  # type: ignore[misc,name-defined]  [PY Core/DebugListener]
        def __init__(self) -> None:
            trt.IDebugListener.__init__(self)

        def process_debug_tensor(self, addr: Any, location: Any, type: Any, shape: Any, name: str,  # noqa: A002
                                 stream: int) -> None:
            cap.on_tensor(trt, addr, location, type, shape, name, stream)

    return _Listener()


def bind_inputs(trt: Any, engine: Any, context: Any, feed: dict[str, np.ndarray], keep: list[Any],
                label: str) -> None:
    """Set each engine input's shape and buffer from ``feed`` (TensorRT 10 tensor API).

    Buffers are appended to ``keep``: they must outlive the run. Host-located inputs (shape
    tensors) get a host array, the others a device copy.
    """
    from ._cuda import to_device

    for i in range(engine.num_io_tensors):                      # [PY Core/ICudaEngine]
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
            continue
        if name not in feed:
            raise ParityError(f"{label}: the feed has no input {name!r}. Note: the engine's inputs are "
                              f"{[engine.get_tensor_name(k) for k in range(engine.num_io_tensors)]}")
        arr = np.asarray(feed[name])
        if not context.set_input_shape(name, tuple(arr.shape)):  # [PY Core/IExecutionContext]
            raise ParityError(f"{label}: TensorRT refused shape {list(arr.shape)} for input {name!r}. Note: the "
                              f"engine was built for {list(engine.get_tensor_shape(name))}")
        if engine.get_tensor_location(name) == trt.TensorLocation.HOST:  # [PY Core/ICudaEngine]
            host = np.ascontiguousarray(arr, dtype=_NP_DT[dtype_name(engine.get_tensor_dtype(name))])
            keep.append(host)
            ptr = int(host.ctypes.data)
        else:
            dev = to_device(arr, engine.get_tensor_dtype(name))
            keep.append(dev)
            ptr = int(dev.data_ptr())
        if not context.set_tensor_address(name, ptr):
            raise ParityError(f"{label}: TensorRT refused the buffer of input {name!r}. Note: see its log above")


def load_engine(trt: Any, built: BuiltEngine) -> Any:
    """The built engine deserialized (once; kept on ``built``), or None when TensorRT cannot load it."""
    engine = built.loaded
    if engine is None:
        built.runtime = trt.Runtime(_logger(trt))                 # [PY Core/Runtime]
        engine = built.runtime.deserialize_cuda_engine(built.engine)  # [PY Core/Runtime] deserialize_cuda_engine
        built.loaded = engine
    return engine


def bind_outputs(trt: Any, engine: Any, context: Any, label: str) -> dict[str, Any]:
    """A device buffer for each engine output, bound to ``context``; call after :func:`bind_inputs`."""
    from ._cuda import empty_device

    outputs: dict[str, Any] = {}
    for i in range(engine.num_io_tensors):                      # [PY Core/ICudaEngine]
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) != trt.TensorIOMode.OUTPUT:
            continue
        shape = tuple(int(d) for d in context.get_tensor_shape(name))  # [PY Core/IExecutionContext]
        if any(d < 0 for d in shape):
            raise ParityError(f"output {name!r} of {label} has a data-dependent shape {list(shape)}; parity's "
                              f"TensorRT source binds fixed buffers. Note: use trtexec --exportOutput and import it")
        outputs[name] = empty_device(shape, engine.get_tensor_dtype(name))
        if not context.set_tensor_address(name, int(outputs[name].data_ptr())):
            raise ParityError(f"TensorRT refused the buffer of output {name!r} of {label}. Note: see its log above")
    return outputs


class TrtSource(Source):
    """One class for ``trt-fp32``, ``trt-fp16``, ``trt-bf16``, ``trt-int8`` and ``trt-tf32``."""

    description = "TensorRT engine; captures every layer during the run (debug tensors, fusion kept)"

    def __init__(self, precision: str = "fp32") -> None:
        self.precision = precision
        self.name = f"trt-{precision}"  # type: ignore[misc]
        #: layers the last ``local_errors`` call could not run alone: ``{key, onnx_node, reason}``
        self.last_local_skipped: list[dict[str, str]] = []

    # -- capability ---------------------------------------------------------------------
    def check(self) -> str | None:
        if importlib.util.find_spec("tensorrt") is None:
            return (f"needs TensorRT {_MIN_MAJOR}+ and an NVIDIA GPU: pip install tensorrt on a GPU machine "
                    f"(or capture there with trtexec/Polygraphy and import the files, docs/tensorrt.md)")
        try:
            import_tensorrt()
        except ParityError as e:
            return str(e)
        from ._cuda import cuda_status

        ok, why = cuda_status()
        if not ok:
            return f"needs a CUDA device visible to torch: {why}"
        for mod, what in (("onnx", "onnx"),):
            if importlib.util.find_spec(mod) is None:
                return f"needs {what} (pip install 'parity[onnx]')"
        return None

    def details(self) -> list[dict[str, Any]]:
        from .doctor import doctor

        return doctor()

    # -- model: the shared ONNX library resolves and exports it, as for every ONNX consumer
    def input_specs(self, cfg: RunConfig) -> list[InputSpec]:
        return onnx_input_specs(cfg)

    # -- run ----------------------------------------------------------------------------
    def run(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Activation]:
        trt = import_tensorrt()
        from ._cuda import cuda_status

        ok, why = cuda_status()
        if not ok:
            raise ParityError(f"{self.name} needs a CUDA device. Note: {why}")
        import onnx
        import torch

        from ._cuda import to_host
        from .layer_info import read_layer_info
        from .names import build_map, onnx_named

        from .local import run_engine_config

        # outputs_only / keep_high_precision (parity fix) are applied here; see .local
        ecfg = run_engine_config(self.precision, cfg.options)
        onnx_path, module_names = onnx_model_for(cfg, feed)
        graph = onnx.load(str(onnx_path), load_external_data=False)
        if cfg.options.get("keep_high_precision"):
            ecfg = run_engine_config(self.precision, cfg.options, graph, onnx_path.name)
        has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.graph.node)
        feed = {k: np.asarray(v) for k, v in feed.items()}
        built = build_engine(trt, onnx_path, ecfg, feed, list(cfg.calibration), Path(cfg.workdir), has_qdq)
        mapping = build_map(graph, read_layer_info(built.layer_info), module_names=module_names)
        out_pos = {o.name: i for i, o in enumerate(graph.graph.output)}
        del graph

        engine = load_engine(trt, built)
        if engine is None:
            raise ParityError(f"TensorRT could not load the engine built for {onnx_path.name}. Note: delete "
                              f"{Path(cfg.workdir) / 'trt'} and run again")
        context = engine.create_execution_context()              # [PY Core/ICudaEngine]
        stream = torch.cuda.Stream()
        keep: list[Any] = []                                     # buffers stay alive until the run ends
        bind_inputs(trt, engine, context, feed, keep, onnx_path.name)   # [PY Core/ICudaEngine] TRT 10 tensor API
        outputs = bind_outputs(trt, engine, context, onnx_path.name)

        common = {"precision": self.precision, "tensorrt": trt.__version__, "capture": ecfg.capture,
                  "debug_strategy": built.notes.get("debug_strategy"),
                  "fusion_altered": bool(built.notes.get("fusion_altered")),
                  "engine_cache": built.notes.get("engine_cache"), "model_file": str(onnx_path)}
        if built.notes.get("warning"):
            common["warning"] = built.notes["warning"]

        def layer_order(t: str) -> int:
            hit = mapping.by_tensor.get(t)
            return hit[0].order if hit else len(mapping.layers)

        def raw(engine_tensor: str, arr: np.ndarray, order: int, **extra: Any) -> Activation:
            return Activation(name=engine_tensor, array=arr, order=order,
                              meta={"trt_tensor": engine_tensor, **common, **extra})

        def captured() -> Iterator[Activation]:
            """Engine tensors in execution order, named by engine tensor; outputs last."""
            if ecfg.capture != "debug":
                if not context.execute_async_v3(stream.cuda_stream):   # [PY Core/IExecutionContext]
                    raise ParityError(f"TensorRT failed running the {self.name} engine. Note: see its log above")
                stream.synchronize()
                for t in sorted(outputs, key=layer_order):
                    yield raw(t, to_host(outputs[t]), layer_order(t))
                return
            yield from self._debug_run(trt, context, stream, ecfg, built, mapping, outputs, raw, layer_order,
                                       onnx_path.name)

        with closing(captured()) as stream_of_records:
            for rec in onnx_named(stream_of_records, mapping):
                onnx_t = rec.meta.get("onnx_tensor")
                engine_t = rec.meta["trt_tensor"]
                if engine_t in out_pos or (onnx_t in out_pos and rec.meta.get("onnx_tensor_exact")):
                    rec.meta["is_output"] = True
                    rec.meta["output_position"] = out_pos.get(engine_t, out_pos.get(onnx_t or "", 0))
                yield rec

    # -- diagnosis ------------------------------------------------------------------------
    supports_local = True

    def local_errors(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Any]:
        """Each ONNX node alone as an engine at this precision, fed fp32 reference values (see :mod:`.local`).

        Yields ``parity.contract.records.LocalResult`` keyed by ONNX tensor name, as ``run()`` names the
        records it maps exactly. ``trt-fp32`` yields nothing: its layer alone on fp32 inputs is the
        reference. Layers that cannot run alone are listed afterwards in ``self.last_local_skipped``.
        """
        self.last_local_skipped = []
        if self.precision == "fp32":
            return
        from .local import local_results

        yield from local_results(self, cfg, feed)

    def _debug_run(self, trt: Any, context: Any, stream: Any, ecfg: EngineConfig, built: BuiltEngine, mapping: Any,
                   outputs: dict[str, Any], raw: Callable[..., Activation], layer_order: Callable[[str], int],
                   model_name: str) -> Iterator[Activation]:
        """Run with the debug listener on; yield each tensor as TensorRT reports it, then the outputs."""
        from ._cuda import to_host

        graph_outputs = set(outputs)

        def want(n: str) -> bool:
            """Outputs come from their buffers; trt_mark / trt_mark_names filter the rest."""
            if n in graph_outputs:
                return False
            hit = mapping.by_tensor.get(n)
            return ecfg.selects(n, mapping.onnx_tensor_for(n), hit[0].layer if hit else None)

        cap = _Capture(ecfg.queue_size, want)
        listener = _listener(trt, cap)
        if not context.set_debug_listener(listener):               # [PY Core/IExecutionContext]
            raise ParityError("TensorRT refused the debug listener. Note: use trt_capture mark")
        if built.notes.get("debug_strategy") == "unfused":
            context.unfused_tensors_debug_state = True            # [BIND] property, TensorRT >= 10.12
        else:
            context.set_all_tensors_debug_state(True)

        status: dict[str, Any] = {}

        def work() -> None:
            try:
                status["ok"] = bool(context.execute_async_v3(stream.cuda_stream))
                stream.synchronize()
            except BaseException as e:  # noqa: BLE001 - reported by the consumer
                status["error"] = e
            finally:
                cap.put(_DONE)

        th = threading.Thread(target=work, name="parity-trt-enqueue", daemon=True)
        t0 = time.perf_counter()
        th.start()
        k = 0
        try:
            while True:
                item = cap.q.get()
                if item is _DONE:
                    break
                name, arr, dt = item
                k += 1
                yield raw(name, arr, k - 1, trt_dtype=dt)
        finally:
            cap.stop.set()
            while th.is_alive():
                try:
                    cap.q.get(timeout=0.1)
                except queue.Empty:
                    pass
            th.join()
        if cap.errors:
            e = cap.errors[0]
            raise ParityError(f"copying a debug tensor failed: {type(e).__name__}: {e}") from e
        if "error" in status:
            e = status["error"]
            raise ParityError(f"TensorRT failed running the {self.name} engine: {type(e).__name__}: {e}") from e
        if not status.get("ok"):
            raise ParityError(f"TensorRT failed running the {self.name} engine. Note: see its log above")
        if k == 0:
            raise ParityError(f"TensorRT reported no debug tensors for {model_name} "
                              f"(strategy {built.notes.get('debug_strategy')}, {time.perf_counter() - t0:.1f}s). "
                              f"Note: try trt_debug_strategy marked or trt_capture mark")
        for t in sorted(outputs, key=layer_order):
            yield raw(t, to_host(outputs[t]), k + layer_order(t))

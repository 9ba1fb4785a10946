"""Running TensorRT engines: bind inputs and outputs, execute, capture, yield Activations.

The running half of the TensorRT source (Polygraphy's ``backend/trt/runner.py`` split); the
engine comes from :mod:`.loader`. TensorRT calls cite the pages listed in :mod:`.loader`
([PY], [BIND], [HDR]); [BIND] pyCore.cpp: ``process_debug_tensor`` receives ``addr`` and
``stream`` as ``int`` (``reinterpret_cast<size_t>``), ``execute_async_v3`` releases the GIL,
``unfused_tensors_debug_state`` is a property (TensorRT >= 10.12).

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

from dataclasses import replace

import queue
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from parity.contract.errors import ParityError
from parity.contract.records import Activation
from parity.contract.source import RunConfig
from parity.lib.onnx.models import onnx_model_for

from ._cuda import dtype_name
from .config import EngineConfig, run_engine_config, run_options
from .loader import BuiltEngine, build_engine, check_context, library_name, library_of, load_engine, typed_model

#: tensorrt.DataType member name -> numpy dtype for host-resident (shape) inputs
_NP_DT = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
          "BOOL": np.bool_, "UINT8": np.uint8}
_DONE = object()


# --------------------------------------------------------------------------- binding

def bind_inputs(trt: Any, engine: Any, context: Any, feed: Mapping[str, np.ndarray], keep: list[Any],
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


def _context(trt: Any, built: BuiltEngine, label: str) -> tuple[Any, Any]:
    """The loaded engine and a fresh execution context for it ([PY Core/ICudaEngine] create_execution_context)."""
    engine = load_engine(trt, built)
    return engine, check_context(engine.create_execution_context(), label, library_name(trt))


def run_built(trt: Any, built: BuiltEngine, feed: Mapping[str, np.ndarray], label: str) -> dict[str, np.ndarray]:
    """Run a built engine once on ``feed``; every output as a host array."""
    import torch

    from ._cuda import to_host

    engine, context = _context(trt, built, label)
    stream = torch.cuda.Stream()
    keep: list[Any] = []
    bind_inputs(trt, engine, context, feed, keep, label)
    outputs = bind_outputs(trt, engine, context, label)
    if not context.execute_async_v3(stream.cuda_stream):        # [PY Core/IExecutionContext]
        raise ParityError(f"TensorRT failed running {label}. Note: see its log above")
    stream.synchronize()
    return {n: to_host(t) for n, t in outputs.items()}


# --------------------------------------------------------------------------- debug capture

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


def _debug_run(trt: Any, target: str, context: Any, stream: Any, ecfg: EngineConfig, built: BuiltEngine,
               mapping: Any, outputs: dict[str, Any], raw: Callable[..., Activation],
               layer_order: Callable[[str], int], model_name: str) -> Iterator[Activation]:
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
        raise ParityError(f"TensorRT failed running the {target} engine: {type(e).__name__}: {e}") from e
    if not status.get("ok"):
        raise ParityError(f"TensorRT failed running the {target} engine. Note: see its log above")
    if k == 0:
        raise ParityError(f"TensorRT reported no debug tensors for {model_name} "
                          f"(strategy {built.notes.get('debug_strategy')}, {time.perf_counter() - t0:.1f}s). "
                          f"Note: try trt_debug_strategy marked or trt_capture mark")
    for t in sorted(outputs, key=layer_order):
        yield raw(t, to_host(outputs[t]), k + layer_order(t))


# --------------------------------------------------------------------------- a whole run

def capture(trt: Any, target: str, precision: str, cfg: RunConfig, feed: dict[str, np.ndarray]
            ) -> Iterator[Activation]:
    """Build (or reuse) the ``target`` engine for ``cfg``'s model, run it on ``feed``, yield its tensors.

    Records are named by engine tensor, then renamed to ONNX tensors where the engine's layer
    information maps them exactly (:func:`.names.onnx_named`); graph outputs carry ``is_output``.
    """
    import onnx
    import torch

    from ._cuda import to_host
    from .layer_info import read_layer_info
    from .names import build_map, onnx_named

    # outputs_only / keep_high_precision (parity fix) are applied here; see .config.run_engine_config
    lib = library_of(trt)
    ecfg = run_engine_config(precision, run_options(cfg), library=lib)
    onnx_path, module_names = onnx_model_for(cfg, feed)
    graph = onnx.load(str(onnx_path), load_external_data=False)
    if cfg.keep_high_precision:
        ecfg = run_engine_config(precision, run_options(cfg), graph, onnx_path.name, library=lib)
    typed = typed_model(onnx_path, ecfg, Path(cfg.workdir))     # TensorRT-RTX: cast to the target's type first
    if typed != onnx_path:
        onnx_path = typed
        graph = onnx.load(str(onnx_path), load_external_data=False)
    if cfg.layers is not None:  # --layers: mark only the selected tensors (the engine key includes them)
        from parity.lib.onnx.provenance import layer_aliases, module_provenance

        ecfg = replace(ecfg, layers_pattern=cfg.layers.pattern, layers_names=tuple(sorted(cfg.layers.names)),
                       aliases=layer_aliases(graph, *module_provenance(graph, module_names)))
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.graph.node)
    feed = {k: np.asarray(v) for k, v in feed.items()}
    built = build_engine(trt, onnx_path, ecfg, feed, list(cfg.calibration), Path(cfg.workdir), has_qdq)
    mapping = build_map(graph, read_layer_info(built.layer_info), module_names=module_names)
    out_pos = {o.name: i for i, o in enumerate(graph.graph.output)}
    del graph

    engine, context = _context(trt, built, f"the {target} engine of {onnx_path.name}")
    stream = torch.cuda.Stream()
    keep: list[Any] = []                                     # buffers stay alive until the run ends
    bind_inputs(trt, engine, context, feed, keep, onnx_path.name)   # [PY Core/ICudaEngine] TRT 10 tensor API
    outputs = bind_outputs(trt, engine, context, onnx_path.name)

    common = {"precision": precision, "tensorrt": trt.__version__, "library": library_name(trt),
              "capture": ecfg.capture,
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
                raise ParityError(f"TensorRT failed running the {target} engine. Note: see its log above")
            stream.synchronize()
            for t in sorted(outputs, key=layer_order):
                yield raw(t, to_host(outputs[t]), layer_order(t))
            return
        yield from _debug_run(trt, target, context, stream, ecfg, built, mapping, outputs, raw, layer_order,
                              onnx_path.name)

    with closing(captured()) as stream_of_records:
        for rec in onnx_named(stream_of_records, mapping):
            onnx_t = rec.meta.get("onnx_tensor")
            engine_t = rec.meta["trt_tensor"]
            if engine_t in out_pos or (onnx_t in out_pos and rec.meta.get("onnx_tensor_exact")):
                rec.meta["is_output"] = True
                rec.meta["output_position"] = out_pos.get(engine_t, out_pos.get(onnx_t or "", 0))
            yield rec

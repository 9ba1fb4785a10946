"""ONNX Runtime sessions for any source: options, loading (also > 2 GB), running, one-line errors.

Every source that runs an ONNX graph in ONNX Runtime (the ``ort*`` sources, the fp32 reference
of TensorRT's local runs, ...) goes through these functions, so the ``ort_*`` options mean the
same everywhere and a failure reads the same way:

* :func:`session_options` reads ``ort_providers``, ``ort_threads`` and
  ``ort_graph_optimization`` with :mod:`parity.contract.options`;
* :func:`make_session` builds an ``InferenceSession`` from an in-memory ``ModelProto``,
  through a temporary file with external data when protobuf cannot serialize it (> 2 GB);
* :func:`run_session` runs it, turning onnxruntime's failure into one ``ParityError`` line.

onnxruntime is imported only inside the functions, so importing this module is cheap.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

from parity.contract.errors import ParityError, first_line
from parity.contract.options import read_options
from parity.lib.options import ORT_SESSION

#: values of ``ort_graph_optimization``, weakest first
GRAPH_OPTIMIZATION_LEVELS: tuple[str, ...] = next(o.choices for o in ORT_SESSION if o.name == "ort_graph_optimization")

__all__ = ["GRAPH_OPTIMIZATION_LEVELS", "default_providers", "session_options", "make_session",
           "run_session", "ort_message"]


def ort_message(e: BaseException) -> str:
    """The first line of an onnxruntime error (its type when it has no text), for a one-line note."""
    return first_line(e, 400)


def quiet_runtime_logs() -> None:
    """ONNX Runtime's own log lines (coloured ``[W:onnxruntime:...]`` warnings from sessions that
    parity or its quantizer makes) reach the terminal only with ``-v``.

    Why global: ``SessionOptions.log_severity_level`` covers only the sessions parity builds; the
    quantizer and the environment log through ORT's default logger.
    """
    import logging

    import onnxruntime as ort

    ort.set_default_logger_severity(2 if logging.getLogger("parity").isEnabledFor(logging.INFO) else 3)


def default_providers(device: str = "cpu") -> list[str]:
    """CUDA then CPU when ``device`` is ``cuda*`` and this onnxruntime has CUDA, else CPU only."""
    import onnxruntime as ort

    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(options: Mapping[str, Any], device: str = "cpu") -> tuple[Any, list[str]]:
    """``(onnxruntime.SessionOptions, providers)`` from a source's options.

    ``ort_providers`` (list or comma string; default :func:`default_providers` for ``device``),
    ``ort_threads`` (intra-op threads; unset or 0 leaves onnxruntime's default) and
    ``ort_graph_optimization`` (``disable|basic|extended|all``, default ``all``) and
    ``ort_mem_arena`` (default false: capture sessions run once or a few times, and the CPU arena
    grows in power-of-two chunks it keeps until the session dies, which cost a MiniLM-size capture
    at batch 8 about 270 MiB of peak RSS and no time; true turns it back on). Log severity
    is set to errors only. An unknown provider, level or a non-integer thread count is a
    one-line ``ParityError`` naming it.
    """
    import onnxruntime as ort

    o = read_options(ORT_SESSION, options)  # typed, defaults filled: the group's one declaration
    providers = list(o["ort_providers"])
    available = ort.get_available_providers()
    if not providers:
        providers = default_providers(device)
    bad = [p for p in providers if p not in available]
    if bad:
        raise ParityError(f"ort_providers asks for {bad}, which this onnxruntime does not have. "
                          f"Note: available providers are {available}")
    quiet_runtime_logs()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    level = o["ort_graph_optimization"]  # one of GRAPH_OPTIMIZATION_LEVELS: the schema checked it
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    so.enable_cpu_mem_arena = o["ort_mem_arena"]
    threads = o["ort_threads"]  # >= 0: the schema checked it
    if threads:
        so.intra_op_num_threads = threads
    return so, providers


def make_session(model: Any, so: Any, providers: list[str], workdir: str | Path, label: str) -> Any:
    """An ``InferenceSession`` over ``model`` (an ``onnx.ModelProto``, or a path to an ``.onnx`` file).

    A proto is handed to onnxruntime as bytes; one too large for protobuf (> 2 GB) is saved with
    external data into a temporary directory under ``workdir`` (removed once loaded). Any load
    failure is one ``ParityError`` line naming ``label``.
    """
    import onnxruntime as ort

    try:
        if isinstance(model, (str, Path)):
            return ort.InferenceSession(str(model), so, providers=providers)
        import onnx
        from google.protobuf.message import EncodeError

        try:  # ByteSize() costs as much as serializing; let protobuf refuse > 2 GB instead
            data: bytes | None = model.SerializeToString()
        except (EncodeError, ValueError):
            data = None
        if data is not None:
            return ort.InferenceSession(data, so, providers=providers)
        # protobuf cannot serialize >2 GB: go through a file with external weights
        Path(workdir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=workdir) as d:
            p = Path(d) / "instrumented.onnx"
            onnx.save(model, str(p), save_as_external_data=True, location="instrumented.onnx.data")
            return ort.InferenceSession(str(p), so, providers=providers)
    except ParityError:
        raise
    except Exception as e:
        raise ParityError(f"onnxruntime cannot load {label}. Note: {ort_message(e)}") from e


def run_session(sess: Any, outputs: list[str], feed: Mapping[str, Any], label: str) -> list[Any]:
    """``sess.run(outputs, feed)`` with onnxruntime's failure turned into one ``ParityError`` line naming ``label``."""
    try:
        return sess.run(outputs, dict(feed))
    except Exception as e:
        raise ParityError(f"onnxruntime failed running {label}. Note: {ort_message(e)}") from e

"""What of the TensorRT plugin works on this machine, and why not (``parity doctor``)."""
from __future__ import annotations

from parity.contract.errors import first_line

import importlib
import importlib.util
from typing import Any

from ._cuda import cuda_status


def _row(check: str, ok: bool, detail: str, required: bool = True) -> dict[str, Any]:
    return {"check": check, "ok": bool(ok), "detail": detail, "required": required}


def doctor() -> list[dict[str, Any]]:
    """One row per piece: ``{"check", "ok", "detail", "required"}``; ``detail`` says why when not ok.

    Capability checks are ``hasattr`` on the installed ``tensorrt`` module, so they tell what
    this TensorRT build offers without building anything.
    """
    rows: list[dict[str, Any]] = []
    trt: Any = None
    if importlib.util.find_spec("tensorrt") is None:
        rows.append(_row("tensorrt", False, "not installed: pip install tensorrt on a machine with an NVIDIA GPU "
                                            "(or use NVIDIA's TensorRT container)"))
    else:
        try:
            trt = importlib.import_module("tensorrt")
            version = str(getattr(trt, "__version__", "?"))
            major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
            rows.append(_row("tensorrt", major >= 10, version if major >= 10 else
                             f"{version} is too old: parity needs TensorRT 10+"))
        except Exception as e:  # noqa: BLE001 - an installed but broken TensorRT (missing libnvinfer) is common
            rows.append(_row("tensorrt", False, f"import failed: {first_line(e, 200, typed=True)}"))
            trt = None
    if trt is not None:
        net = getattr(trt, "INetworkDefinition", None)
        ctx = getattr(trt, "IExecutionContext", None)
        rows.append(_row("debug tensors (mark_debug + IDebugListener)",
                         hasattr(trt, "IDebugListener") and hasattr(net, "mark_debug")
                         and hasattr(ctx, "set_debug_listener") and hasattr(ctx, "set_all_tensors_debug_state"),
                         "trt_capture debug, strategy marked (TensorRT 10.0+)"))
        rows.append(_row("debug tensors without breaking fusion (mark_unfused_tensors_as_debug_tensors)",
                         hasattr(net, "mark_unfused_tensors_as_debug_tensors")
                         and hasattr(ctx, "unfused_tensors_debug_state"),
                         "trt_capture debug, strategy unfused (TensorRT 10.12+); otherwise marked is used",
                         required=False))
        rows.append(_row("engine inspector JSON (layer names, ONNX metadata)",
                         hasattr(trt, "LayerInformationFormat") and hasattr(trt, "ProfilingVerbosity"),
                         "fused-layer -> ONNX mapping"))
        rows.append(_row("ONNX parser", hasattr(trt, "OnnxParser"), "builds engines from ONNX"))
        rows.append(_row("INT8 calibration (IInt8EntropyCalibrator2)", hasattr(trt, "IInt8EntropyCalibrator2"),
                         "trt-int8 on models without Q/DQ nodes (deprecated since TensorRT 10.1, removed in 11)",
                         required=False))
        rows.append(_row("TensorRT 10 tensor API (set_tensor_address, execute_async_v3)",
                         hasattr(ctx, "set_tensor_address") and hasattr(ctx, "execute_async_v3"), "running engines"))
    ok, why = cuda_status()
    rows.append(_row("CUDA device (torch)", ok, why))
    if importlib.util.find_spec("pycuda") is None:
        rows.append(_row("pycuda", False, "not installed; not needed (parity moves device memory with torch)",
                         required=False))
    else:
        try:
            importlib.import_module("pycuda.driver")
            rows.append(_row("pycuda", True, "installed (not needed: parity uses torch)", required=False))
        except Exception as e:  # noqa: BLE001
            rows.append(_row("pycuda", False, f"import failed: {type(e).__name__}", required=False))
    for mod, what in (("onnx", "reading ONNX graphs for the name mapping"),
                      ("polygraphy", "cross-checks with polygraphy run (optional)")):
        present = importlib.util.find_spec(mod) is not None
        rows.append(_row(mod, present, what if present else f"not installed: pip install {mod} ({what})",
                         required=mod == "onnx"))
    return rows

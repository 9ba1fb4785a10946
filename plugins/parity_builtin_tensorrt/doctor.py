"""What of the TensorRT plugin works on this machine, and why not (``parity doctor``)."""
from __future__ import annotations

from parity.contract.errors import first_line

import importlib
import importlib.util
from typing import Any

from ._cuda import cuda_status
from .config import TENSORRT, Library


def _row(check: str, ok: bool, detail: str, required: bool = True) -> dict[str, Any]:
    return {"check": check, "ok": bool(ok), "detail": detail, "required": required}


def compute_capabilities(trt: Any) -> list[tuple[int, int]]:
    """The GPU architectures a library names in its ``ComputeCapability`` enum (``SM89`` -> (8, 9)).

    TensorRT-RTX builds for these (and runs only on them); TensorRT 10 has no such enum (empty).
    """
    enum = getattr(trt, "ComputeCapability", None)
    out = []
    for name in getattr(enum, "__members__", {}) or {}:
        if name.startswith("SM") and name[2:].isdigit() and len(name) >= 4:
            out.append((int(name[2:-1]), int(name[-1])))
    return sorted(out)


def runs_engines_here(library: Library) -> tuple[bool, str]:
    """(whether this GPU can run the library's engines, why not): for TensorRT-RTX, whose engines run
    only on the architectures it lists (on an H200, compute capability 9.0, it builds but cannot run)."""
    if not library.strongly_typed:
        return True, ""
    try:
        trt = importlib.import_module(library.module)
    except Exception as e:  # noqa: BLE001
        return False, f"import {library.module} failed: {first_line(e, 200, typed=True)}"
    ok, why = cuda_status()
    if not ok:
        return False, why
    import torch

    cc = tuple(torch.cuda.get_device_capability(0))
    known = compute_capabilities(trt)
    if cc in known:
        return True, ""
    listed = " ".join(f"{a}.{b}" for a, b in known) or "none"
    return False, (f"this GPU's compute capability {cc[0]}.{cc[1]} is not supported by {library.label} "
                   f"{getattr(trt, '__version__', '?')} (it builds for {listed})")


def doctor(library: Library = TENSORRT) -> list[dict[str, Any]]:
    """One row per piece: ``{"check", "ok", "detail", "required"}``; ``detail`` says why when not ok.

    Capability checks are ``hasattr`` on the installed module (``tensorrt``, or
    ``tensorrt_rtx_bindings`` for TensorRT-RTX), so they tell what this build offers without
    building anything.
    """
    rows: list[dict[str, Any]] = []
    trt: Any = None
    mod = library.module
    if importlib.util.find_spec(mod) is None:
        rows.append(_row(mod, False, f"not installed: {library.install}"))
    else:
        try:
            trt = importlib.import_module(mod)
            version = str(getattr(trt, "__version__", "?"))
            major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
            new_enough = major >= library.min_major
            rows.append(_row(mod, new_enough, f"{library.label} {version}" if new_enough else
                             f"{version} is too old: parity needs {library.label} {library.min_major}+"))
        except Exception as e:  # noqa: BLE001 - an installed but broken TensorRT (missing libnvinfer) is common
            rows.append(_row(mod, False, f"import failed: {first_line(e, 200, typed=True)}"))
            trt = None
    if trt is not None and library.strongly_typed:
        flag = getattr(trt, "NetworkDefinitionCreationFlag", None)
        rows.append(_row("strongly typed networks (precision from the ONNX types)",
                         hasattr(flag, "STRONGLY_TYPED"),
                         f"{library.prefix}-fp16/-bf16 build from the model cast to fp16/bf16 "
                         f"(onnxconverter-common); layers kept in fp32 are nodes the cast leaves in fp32"))
        runs, why = runs_engines_here(library)
        rows.append(_row("engines run on this GPU", runs, why or "deserialize and run: every capture mode"))
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
        if not library.strongly_typed:
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
    needed = [("onnx", "reading ONNX graphs for the name mapping", True)]
    if library.strongly_typed:
        needed.append(("onnxconverter_common", "casting the model to fp16/bf16", True))
    needed.append(("polygraphy", "cross-checks with polygraphy run (optional)", False))
    for name, what, required in needed:
        present = importlib.util.find_spec(name) is not None
        rows.append(_row(name, present, what if present else f"not installed: pip install {name} ({what})",
                         required=required))
    return rows

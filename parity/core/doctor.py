"""`parity doctor`: which sources and targets work on this machine, and why not."""
from __future__ import annotations

from parity.contract.errors import first_line

import importlib
import platform
from typing import Any


def _version(mod: str) -> str:
    try:
        m = importlib.import_module(mod)
    except Exception as e:  # noqa: BLE001 - any import failure is a "no" with its reason
        return f"not available ({first_line(e, typed=True)})"
    return str(getattr(m, "__version__", "installed"))


def environment() -> dict[str, str]:
    """Framework versions and devices, each probed on its own so one failure hides nothing else."""
    env = {"python": platform.python_version(), "platform": platform.platform()}
    for mod in ("numpy", "scipy", "torch", "onnx", "onnxruntime", "tensorrt", "pycuda"):
        env[mod] = _version(mod)
    try:
        import torch

        env["torch cuda"] = (f"yes: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
                             if torch.cuda.is_available() else "no CUDA device visible to torch")
    except Exception:  # noqa: BLE001
        pass
    try:
        import onnxruntime

        env["onnxruntime providers"] = ", ".join(onnxruntime.get_available_providers())
    except Exception:  # noqa: BLE001
        pass
    return env


def sources() -> list[dict[str, Any]]:
    """Every registered source with whether it can run here; sources may add ``details()``."""
    from parity.core.registry import broken, registry

    out: list[dict[str, Any]] = []
    reg = registry()
    for name, why in broken.items():
        out.append({"source": f"(plugin {name})", "package": "", "works": False, "why": f"failed to import: {why}"})
    for name, r in sorted(reg["source"].items()):
        src = r.obj
        try:
            why = src.check()
        except Exception as e:  # noqa: BLE001 - a broken check is itself the answer
            why = f"check failed: {type(e).__name__}: {e}"
        row: dict[str, Any] = {"source": name, "package": r.package, "works": why is None, "why": why or ""}
        try:
            details = src.details()
        except Exception as e:  # noqa: BLE001 - a broken plugin's details are reported, not raised
            details = {"error": str(e)}
        if details is not None:
            row["details"] = details
        out.append(row)
    return out

"""parity: find where a neural network loses accuracy when deployed.

Import is cheap: no framework (torch, onnxruntime, TensorRT) is imported here; the Python API
(``parity.compare``) is loaded on first use.
"""
from __future__ import annotations

from typing import Any

from parity.contract.errors import ParityError, UsageError
from parity.contract.hookspecs import hookimpl
from parity.contract.records import Activation
from parity.contract.version import __version__


__all__ = ["Activation", "ComparisonReport", "ParityError", "UsageError", "compare", "hookimpl", "__version__"]

#: names served lazily by parity.core.api (it imports numpy and the core; ``import parity`` stays light)
_API = ("compare", "ComparisonReport")


def __getattr__(name: str) -> Any:
    """``parity.compare`` loads the core on first use. Plugins import ``parity`` for ``hookimpl`` and must
    not depend on the core, so the import is made by name, when asked, not at module level."""
    if name in _API:
        import importlib

        return getattr(importlib.import_module("parity.core.api"), name)
    raise AttributeError(f"module 'parity' has no attribute {name!r}")

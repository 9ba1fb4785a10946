"""parity: find where a neural network loses accuracy when deployed.

Import is cheap: no framework (torch, onnxruntime, TensorRT) is imported here.
"""
from __future__ import annotations

from parity.contract.errors import ParityError, UsageError
from parity.contract.hookspecs import hookimpl
from parity.contract.records import Activation
from parity.contract.version import __version__


__all__ = ["Activation", "ParityError", "UsageError", "hookimpl", "__version__"]

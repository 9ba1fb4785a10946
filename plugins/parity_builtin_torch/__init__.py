"""Built-in torch plugin for parity: the ``torch``, ``torch-fp16`` and ``torch-bf16`` sources
and the decoders of the same names (``parity generate``).

Registered through the ``parity`` entry-point group like any third-party plugin. Importing this
package does not import torch; the sources import it when they load a model.
"""
from __future__ import annotations

from parity import hookimpl

from .decoder import TorchDecoder
from .source import TorchSource

__all__ = ["TorchDecoder", "TorchSource", "register_decoders", "register_sources"]


@hookimpl
def register_sources(register) -> None:  # type: ignore[no-untyped-def]
    register(TorchSource("fp32"), name="torch")
    register(TorchSource("fp16"), name="torch-fp16")
    register(TorchSource("bf16"), name="torch-bf16")


@hookimpl
def register_decoders(register) -> None:  # type: ignore[no-untyped-def]
    register(TorchDecoder("fp32"), name="torch")
    register(TorchDecoder("fp16"), name="torch-fp16")
    register(TorchDecoder("bf16"), name="torch-bf16")

"""Built-in formats plugin for parity (registered through the parity entry-point group like any third-party plugin).

Formats: ``trt-text`` (the TensorRT sample text dump), ``npy`` (one array per file) and
``npz`` (many arrays in one archive). Layouts are documented in ``docs/formats.md``.
"""
from __future__ import annotations

from parity import hookimpl

from .numpy_formats import NpyFormat, NpzFormat
from .text import TrtTextFormat

__all__ = ["NpyFormat", "NpzFormat", "TrtTextFormat", "register_dump_formats"]


@hookimpl
def register_dump_formats(register) -> None:
    register(TrtTextFormat())
    register(NpyFormat())
    register(NpzFormat())

"""Built-in ONNX Runtime plugin for parity: sources ``ort``, ``ort-fp16`` and ``ort-int8``.

Registered through the ``parity`` entry-point group like any third-party plugin. Importing
this package is cheap: onnx, onnxruntime and torch are imported only when a source runs.
Reusable pieces: :func:`.provenance.module_outputs` (torch module path of each ONNX tensor)
and :func:`.export.export_onnx` (torch -> ONNX with provenance).
"""
from __future__ import annotations

from parity import hookimpl

from .source import OrtSource

__all__ = ["OrtSource"]


@hookimpl
def register_sources(register):  # type: ignore[no-untyped-def]
    register(OrtSource("fp32"), name="ort")
    register(OrtSource("fp16"), name="ort-fp16")
    register(OrtSource("int8"), name="ort-int8")

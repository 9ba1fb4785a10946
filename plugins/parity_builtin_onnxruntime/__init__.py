"""Built-in ONNX Runtime plugin for parity: sources ``ort``, ``ort-fp16``, ``ort-fp16-strict`` and ``ort-int8``.

Registered through the ``parity`` entry-point group like any third-party plugin. Importing
this package is cheap: onnx, onnxruntime and torch are imported only when a source runs.
Decoders ``ort``, ``ort-fp16``, ``ort-int8`` for ``parity generate``.
Dump annotator ``onnx``: ONNX provenance for dumps made elsewhere (``--target-onnx``).
"""
from __future__ import annotations

from parity import hookimpl

from .annotate import OnnxGraphAnnotator
from .decoder import OrtDecoder
from .source import OrtSource

__all__ = ["OnnxGraphAnnotator", "OrtDecoder", "OrtSource"]


@hookimpl
def register_sources(register):  # type: ignore[no-untyped-def]
    register(OrtSource("fp32"), name="ort")
    register(OrtSource("fp16"), name="ort-fp16")
    register(OrtSource("fp16-strict"), name="ort-fp16-strict")
    register(OrtSource("int8"), name="ort-int8")


@hookimpl
def register_dump_annotators(register):  # type: ignore[no-untyped-def]
    register(OnnxGraphAnnotator())


@hookimpl
def register_decoders(register):  # type: ignore[no-untyped-def]
    register(OrtDecoder("fp32"), name="ort")
    register(OrtDecoder("fp16"), name="ort-fp16")
    register(OrtDecoder("int8"), name="ort-int8")

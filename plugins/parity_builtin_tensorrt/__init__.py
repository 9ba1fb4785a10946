"""Built-in TensorRT plugin for parity: sources ``trt-fp32/-fp16/-bf16/-int8/-tf32``, ``trt-rtx-fp32/-fp16/-bf16``
(TensorRT for RTX) and importers.

Registered through the ``parity`` entry-point group like any third-party plugin. Importing
it is cheap and works without TensorRT: TensorRT, torch and onnx are imported only when an
engine is built or a dump is read. Formats: ``polygraphy-json`` (polygraphy run
--save-outputs), ``trtexec-json`` (trtexec --exportOutput), ``trtexec-debug`` (trtexec
--saveAllDebugTensors summary). Layer information (trtexec --exportLayerInfo) is read by
:func:`.layer_info.read_layer_info` and mapped to ONNX by :func:`.names.build_map`.
See docs/tensorrt.md.
"""
from __future__ import annotations

from parity import hookimpl

from .annotate import LayerInfoAnnotator, PolygraphyInputReader
from .config import TARGET_LIBRARY, TARGETS
from .importers import (PolygraphyJsonFormat, TrtexecDebugFormat, TrtexecJsonFormat, load_polygraphy_inputs,
                        save_polygraphy_inputs)
from .source import TrtSource

__all__ = ["PolygraphyJsonFormat", "TrtSource", "TrtexecDebugFormat", "TrtexecJsonFormat",
           "load_polygraphy_inputs", "save_polygraphy_inputs"]


@hookimpl
def register_sources(register):  # type: ignore[no-untyped-def]
    for name, precision in TARGETS.items():
        register(TrtSource(precision, TARGET_LIBRARY[name]), name=name)


@hookimpl
def register_dump_formats(register):  # type: ignore[no-untyped-def]
    register(PolygraphyJsonFormat())
    register(TrtexecJsonFormat())
    register(TrtexecDebugFormat())


@hookimpl
def register_input_readers(register):  # type: ignore[no-untyped-def]
    register(PolygraphyInputReader())


@hookimpl
def register_dump_annotators(register):  # type: ignore[no-untyped-def]
    register(LayerInfoAnnotator())

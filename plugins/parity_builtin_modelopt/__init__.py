"""Built-in NVIDIA ModelOpt plugin for parity: sources ``modelopt-int8``, ``modelopt-fp8``,
``modelopt-int4-awq``, ``modelopt-w4a8-awq``, ``modelopt-nvfp4`` (CUDA) and ``modelopt`` (any config,
``--option quant_cfg=...``); ``modelopt-int8-qdq`` / ``modelopt-int8-ort``: its Q/DQ ONNX export in
ONNX Runtime, literally / as deployed (the export and runtime stages of ``--stages``); and the decoders
``modelopt-int8`` ... ``modelopt-nvfp4`` of ``parity generate`` (a transformers causal LM, :mod:`.decoder`).

Registered through the ``parity`` entry-point group like any third-party plugin. Importing this
package imports neither torch nor modelopt (``pip install 'parity[modelopt]'``); docs/modelopt.md.
"""
from __future__ import annotations

from parity import hookimpl

from .decoder import ModelOptDecoder
from .onnx_stage import ONNX_PRESETS, ModelOptOnnxSource
from .quant import PRESETS
from .source import ModelOptSource

__all__ = ["ModelOptDecoder", "ModelOptOnnxSource", "ModelOptSource", "register_decoders", "register_sources"]


@hookimpl
def register_sources(register) -> None:  # type: ignore[no-untyped-def]
    for preset in PRESETS:
        register(ModelOptSource(preset), name=f"modelopt-{preset}")
    register(ModelOptSource(None), name="modelopt")
    for preset in ONNX_PRESETS:  # the export and runtime stages of parity compare --stages
        register(ModelOptOnnxSource(preset, optimized=False), name=f"modelopt-{preset}-qdq")
        register(ModelOptOnnxSource(preset, optimized=True), name=f"modelopt-{preset}-ort")


@hookimpl
def register_decoders(register) -> None:  # type: ignore[no-untyped-def]
    for preset in PRESETS:
        register(ModelOptDecoder(preset), name=f"modelopt-{preset}")

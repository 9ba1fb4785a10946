"""Hooks that let the core use TensorRT and Polygraphy files without importing this plugin.

``tensorrt-layer-info``: maps fused engine layer names (``trtexec --exportLayerInfo``) to the ONNX
tensors they hold, before the ``onnx`` annotator adds provenance. ``polygraphy-inputs``: reads
``polygraphy run --save-inputs`` JSON so ``--inputs in.json`` replays what ran on another box.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from parity.contract.dumpformat import AnnotationContext, DumpAnnotator
from parity.contract.errors import ParityError, UsageError
from parity.contract.records import Activation
from parity.contract.source import InputReader


class LayerInfoAnnotator(DumpAnnotator):
    name = "tensorrt-layer-info"
    description = "TensorRT fused layer names -> ONNX tensors, from trtexec --exportLayerInfo (--layer-info)"
    order = 100

    def wants(self, ctx: AnnotationContext) -> bool:
        return bool(ctx.layer_info)

    def prepare(self, ctx: AnnotationContext) -> Callable[[Activation], Activation]:
        if not ctx.onnx_path:
            raise UsageError("--layer-info needs --target-onnx (the ONNX model the engine was built from).")
        try:
            import onnx
        except ImportError as e:
            raise ParityError(f"--layer-info needs the onnx package. Note: {e}") from None
        from .layer_info import read_layer_info
        from .names import build_map

        try:
            model = onnx.load(ctx.onnx_path, load_external_data=False)
        except FileNotFoundError:
            raise ParityError(f"{ctx.onnx_path}: ONNX model not found.") from None
        except Exception as e:  # noqa: BLE001 - protobuf raises several types for a bad file
            raise ParityError(f"{ctx.onnx_path}: not an ONNX model ({type(e).__name__}).") from None
        return build_map(model, read_layer_info(ctx.layer_info)).annotate


class PolygraphyInputReader(InputReader):
    name = "polygraphy-inputs"
    description = "polygraphy run --save-inputs JSON: one feed per iteration"

    def can_read(self, path: Path) -> bool:
        return path.suffix.lower() == ".json"

    def read(self, path: Path) -> Iterator[dict[str, np.ndarray]]:
        from .importers import load_polygraphy_inputs

        yield from load_polygraphy_inputs(path)

"""The TensorRT source: a thin adapter from parity's :class:`~parity.contract.source.Source` to TensorRT.

``trt-fp32/-fp16/-bf16/-int8/-tf32`` (TensorRT 10) and ``trt-rtx-fp32/-fp16/-bf16`` (TensorRT for
RTX, strongly typed: the model is cast first) build an engine from the model's ONNX export and
capture its layers while it runs; one class, the library's differences named in
:class:`.config.Library`. The work is elsewhere, Polygraphy-style:

* :mod:`.loader`  network from ONNX, builder config, engine build and cache, deserialization;
* :mod:`.runner`  binding, execution, the capture modes (debug / mark / outputs), Activations;
* :mod:`.local`   each layer alone on fp32 inputs (``local_errors``);
* :mod:`.config`, :mod:`.marking`, :mod:`.names`, :mod:`.layer_info`: plain decisions, no TensorRT.

The model is resolved and exported by :mod:`parity.lib.onnx.models`, as for every ONNX consumer.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Iterator

import numpy as np

from parity.contract.capability import NumberFormat, StageKind
from parity.contract.errors import ParityError
from parity.contract.records import Activation, LocalResult
from parity.contract.source import InputSpec, RunConfig, Source
from parity.lib.onnx.models import onnx_input_specs

from .config import TENSORRT, Library
from .loader import import_tensorrt, tensorrt_with_cuda
from .options import OPTIONS

#: the number format each precision computes in (tf32: fp32's range, a 10-bit mantissa in matrix products)
NUMBER_FORMATS = {"fp32": NumberFormat.FP32, "tf32": NumberFormat.TF32, "fp16": NumberFormat.FP16,
                  "bf16": NumberFormat.BF16, "int8": NumberFormat.INT8}


class TrtSource(Source):
    """One class for ``trt-fp32/-fp16/-bf16/-int8/-tf32`` and ``trt-rtx-fp32/-fp16/-bf16``."""

    description = "TensorRT engine; captures every layer during the run (debug tensors, fusion kept)"
    supports_local = True
    option_schema = OPTIONS
    supports_outputs_only = True
    supports_keep_high_precision = True
    stage_kind = StageKind.RUNTIME

    def __init__(self, precision: str = "fp32", library: Library = TENSORRT) -> None:
        self.precision = precision
        self.library = library
        self.name = f"{library.prefix}-{precision}"  # type: ignore[misc]
        self.number_format = NUMBER_FORMATS[precision]
        if library.strongly_typed:
            self.description = (f"{library.label} engine, strongly typed (the ONNX model cast to {precision} "  # type: ignore[misc]
                                f"first); captures every layer during the run")
        #: layers the last ``local_errors`` call could not run alone: ``{key, onnx_node, reason}``
        self.last_local_skipped: list[dict[str, str]] = []

    # -- capability ---------------------------------------------------------------------
    def check(self) -> str | None:
        lib = self.library
        if importlib.util.find_spec(lib.module) is None:
            return (f"needs {lib.label} {lib.min_major}+ and an NVIDIA GPU: {lib.install} "
                    f"(or capture there with trtexec/Polygraphy and import the files, docs/tensorrt.md)")
        try:
            import_tensorrt(lib)
        except ParityError as e:
            return str(e)
        from ._cuda import cuda_status

        ok, why = cuda_status()
        if not ok:
            return f"needs a CUDA device visible to torch: {why}"
        if importlib.util.find_spec("onnx") is None:
            return "needs onnx (pip install 'parity[onnx]')"
        if lib.strongly_typed:
            from .doctor import runs_engines_here

            runs, why = runs_engines_here(lib)
            if not runs:
                return f"builds engines here but cannot run them: {why}"
            if self.precision != "fp32" and importlib.util.find_spec("onnxconverter_common") is None:
                return f"needs onnxconverter-common to cast the model to {self.precision} (pip install 'parity[onnx]')"
        return None

    def details(self) -> list[dict[str, Any]]:
        from .doctor import doctor

        return doctor(self.library)

    # -- model: the shared ONNX library resolves and exports it, as for every ONNX consumer
    def input_specs(self, cfg: RunConfig) -> list[InputSpec]:
        return onnx_input_specs(cfg)

    # -- run ----------------------------------------------------------------------------
    def run(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Activation]:
        trt = tensorrt_with_cuda(self.name, self.library)
        from .runner import capture

        yield from capture(trt, self.name, self.precision, cfg, feed)

    # -- diagnosis ------------------------------------------------------------------------
    def local_errors(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[LocalResult]:
        """Each ONNX node alone as an engine at this precision, fed fp32 reference values (see :mod:`.local`).

        Yields ``LocalResult`` keyed by ONNX tensor name, as ``run()`` names the records it maps
        exactly. ``trt-fp32`` and ``trt-rtx-fp32`` yield nothing: a layer alone on fp32 inputs is the reference.
        Layers that cannot run alone are listed afterwards in ``self.last_local_skipped``.
        """
        self.last_local_skipped = []
        if self.precision == "fp32":
            return
        from .local import local_results

        yield from local_results(self.name, self.precision, cfg, feed, self.last_local_skipped)

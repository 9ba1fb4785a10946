"""The TensorRT source: a thin adapter from parity's :class:`~parity.contract.source.Source` to TensorRT.

``trt-fp32/-fp16/-bf16/-int8/-tf32`` build an engine from the model's ONNX export and capture
its layers while it runs. The work is elsewhere, Polygraphy-style:

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

from parity.contract.errors import ParityError
from parity.contract.records import Activation, LocalResult
from parity.contract.source import InputSpec, RunConfig, Source
from parity.lib.onnx.models import onnx_input_specs

from .loader import MIN_MAJOR, import_tensorrt, tensorrt_with_cuda


class TrtSource(Source):
    """One class for ``trt-fp32``, ``trt-fp16``, ``trt-bf16``, ``trt-int8`` and ``trt-tf32``."""

    description = "TensorRT engine; captures every layer during the run (debug tensors, fusion kept)"
    supports_local = True

    def __init__(self, precision: str = "fp32") -> None:
        self.precision = precision
        self.name = f"trt-{precision}"  # type: ignore[misc]
        #: layers the last ``local_errors`` call could not run alone: ``{key, onnx_node, reason}``
        self.last_local_skipped: list[dict[str, str]] = []

    # -- capability ---------------------------------------------------------------------
    def check(self) -> str | None:
        if importlib.util.find_spec("tensorrt") is None:
            return (f"needs TensorRT {MIN_MAJOR}+ and an NVIDIA GPU: pip install tensorrt on a GPU machine "
                    f"(or capture there with trtexec/Polygraphy and import the files, docs/tensorrt.md)")
        try:
            import_tensorrt()
        except ParityError as e:
            return str(e)
        from ._cuda import cuda_status

        ok, why = cuda_status()
        if not ok:
            return f"needs a CUDA device visible to torch: {why}"
        if importlib.util.find_spec("onnx") is None:
            return "needs onnx (pip install 'parity[onnx]')"
        return None

    def details(self) -> list[dict[str, Any]]:
        from .doctor import doctor

        return doctor()

    # -- model: the shared ONNX library resolves and exports it, as for every ONNX consumer
    def input_specs(self, cfg: RunConfig) -> list[InputSpec]:
        return onnx_input_specs(cfg)

    # -- run ----------------------------------------------------------------------------
    def run(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Activation]:
        trt = tensorrt_with_cuda(self.name)
        from .runner import capture

        yield from capture(trt, self.name, self.precision, cfg, feed)

    # -- diagnosis ------------------------------------------------------------------------
    def local_errors(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[LocalResult]:
        """Each ONNX node alone as an engine at this precision, fed fp32 reference values (see :mod:`.local`).

        Yields ``LocalResult`` keyed by ONNX tensor name, as ``run()`` names the records it maps
        exactly. ``trt-fp32`` yields nothing: its layer alone on fp32 inputs is the reference.
        Layers that cannot run alone are listed afterwards in ``self.last_local_skipped``.
        """
        self.last_local_skipped = []
        if self.precision == "fp32":
            return
        from .local import local_results

        yield from local_results(self.name, self.precision, cfg, feed, self.last_local_skipped)

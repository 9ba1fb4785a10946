"""The ONNX Runtime source: every intermediate tensor of one session run, fp32, fp16 or int8.

A thin adapter over the plugin's parts and the shared ONNX library:

* inputs: :func:`parity.lib.onnx.models.onnx_input_specs` (an ``.onnx`` file, or a torch model
  exported to ONNX with provenance);
* the model each precision runs (fp16 / int8 conversion, cache): :mod:`.loader`;
* run and capture: :mod:`.runner`;
* each layer alone for ``--diagnose``: :mod:`.local`;
* capabilities: the fixed model ``parity fix --write-model`` writes (:func:`.loader.write_fixed`) and a
  layer cut into a standalone repro for ``parity repro`` (:mod:`.repro`);
* sessions: :mod:`parity.lib.onnx.session`.

Records carry the tensor names of the fp32 graph for every precision, so ``ort``, ``ort-fp16``
and ``ort-int8`` records of one model pair by name.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from parity.contract.capability import Capability, FixedModel, NumberFormat, ReproResult, StageKind
from parity.contract.records import Activation
from parity.contract.source import InputSpec, RunConfig, Source
from parity.lib.onnx.models import onnx_input_specs

from .loader import HALF, PRECISIONS, SEMANTICS
from .options import OPTIONS
from .runner import DEFAULT_STEP_BYTES, PlanCache, capture

__all__ = ["DEFAULT_STEP_BYTES", "NUMBER_FORMATS", "PRECISIONS", "OrtSource"]

#: the number format each precision computes in (``fp16-strict`` is fp16 with every output stored in fp16)
NUMBER_FORMATS = {"fp32": NumberFormat.FP32, "fp16": NumberFormat.FP16, "fp16-strict": NumberFormat.FP16,
                  "int8": NumberFormat.INT8}


class OrtSource(Source):
    """One class for ``ort`` (fp32), ``ort-fp16`` and ``ort-int8``.

    Options read from ``cfg.options``: ``ort_providers`` (list or comma string),
    ``ort_threads``, ``ort_graph_optimization`` (disable|basic|extended|all),
    ``ort_mem_arena``, ``ort_all_dtypes`` (also capture integer/bool tensors), ``step_bytes``
    (bytes of captured tensors per session run; ``cfg.step_bytes`` first), ``ort_output_batch``
    (at most N tensors per session run), ``opset``, ``export_dynamo``,
    ``export_dynamic_batch``, ``export_optimize``, ``keep_fp32_ops``, ``keep_fp32_nodes``
    and the ``int8_*`` options of :func:`parity.lib.onnx.convert.to_int8`.
    ``cfg.layers`` (``--layers``) marks only the selected tensors as outputs (model outputs kept).
    For ``parity fix``: ``keep_high_precision`` (fp32 tensor names whose producing nodes stay
    fp32 / unquantized) and ``outputs_only`` (capture only the model outputs).
    """

    description = "ONNX Runtime session capturing every intermediate tensor (fp32 / fp16 / int8 QDQ)"
    option_schema = OPTIONS
    supports_outputs_only = True
    supports_keep_high_precision = True  # fp32 keeps everything already

    def __init__(self, precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
        self.precision = precision
        self.name = PRECISIONS[precision]  # type: ignore[misc]
        self.semantics = SEMANTICS[precision]  # type: ignore[misc]
        self.number_format = NUMBER_FORMATS[precision]
        # fp16-strict stores every tensor in fp16 as the export wrote it (the export stage of --stages);
        # the others are ONNX Runtime as deployed
        self.stage_kind = StageKind.EXPORT if precision == "fp16-strict" else StageKind.RUNTIME
        # every precision cuts fp32 repros; a fixed model exists only below fp32
        caps = {Capability.WRITE_REPRO} | ({Capability.WRITE_FIXED_MODEL} if precision != "fp32" else set())
        self.capabilities = frozenset(caps)  # type: ignore[misc]
        #: layers the last ``local_errors`` call could not run alone: ``{key, onnx_node, reason}``
        self.last_local_skipped: list[dict[str, str]] = []
        #: models, fetch map and session reused across the feeds of one run (one entry, see ``PlanCache``)
        self._plans = PlanCache()

    def check(self) -> str | None:
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if self.precision in HALF and importlib.util.find_spec("onnxconverter_common") is None:
            missing.append("onnxconverter-common")
        if missing:
            return f"needs {', '.join(missing)} (pip install 'parity[onnx]')"
        return None

    def input_specs(self, cfg: RunConfig) -> list[InputSpec]:
        return onnx_input_specs(cfg)

    def details(self) -> dict[str, Any] | None:
        """For fp16: which common ops this onnxruntime's CPU provider runs in fp32 under an fp16 model."""
        if self.precision not in HALF or self.check() is not None:
            return None
        import onnxruntime

        from parity.lib.onnx.asrun import cpu_fp32_only_ops

        return {"onnxruntime": onnxruntime.__version__, "semantics": self.semantics,
                "cpu_fp32_only_ops": ", ".join(cpu_fp32_only_ops()) or "none of the common ops"}

    def run(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Activation]:
        return capture(self.precision, cfg, feed, cache=self._plans)

    supports_local = True

    def local_errors(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Any]:
        """Each captured layer run alone in this precision on the fp32 activations (see :mod:`.local`).

        Yields ``parity.contract.records.LocalResult`` one at a time, keyed like ``run()``'s records.
        ``ort`` (fp32) yields nothing: its layer alone on fp32 inputs is the reference itself.
        Layers that cannot run alone are listed afterwards in ``self.last_local_skipped``.
        """
        self.last_local_skipped = []
        if self.precision == "fp32":
            return
        from .local import local_results

        yield from local_results(self.precision, cfg, feed, skipped=self.last_local_skipped)

    def write_fixed_model(self, cfg: RunConfig, feed: dict[str, np.ndarray], keep: list[str],
                          dest: Path) -> FixedModel:
        """This precision's model with the fp32 tensors ``keep`` left in fp32 (see :func:`.loader.write_fixed`)."""
        from .loader import write_fixed

        write_fixed(self.precision, cfg, feed, keep, dest)
        return FixedModel(dest, tuple(keep), self.number_format)

    def write_repro(self, cfg: RunConfig, feed: dict[str, np.ndarray], layer: str, folder: Path,
                    model_label: str) -> ReproResult:
        """LAYER cut out of the fp32 ONNX model, whatever this target's precision (see :mod:`.repro`)."""
        from .repro import write_repro

        return write_repro(cfg, feed, layer, folder, model_label)

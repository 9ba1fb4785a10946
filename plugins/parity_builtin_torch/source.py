"""The ``torch``, ``torch-fp16`` and ``torch-bf16`` sources: one class, three precisions.

A thin adapter over the plugin's parts and the shared torch library:

* model loading (file kinds, trust gate, input specs, state dict): :mod:`parity.lib.torch_loader`;
* the model each precision runs (dtype, device, keep_high_precision, TF32, cache): :mod:`.loader`;
* feed, forward and streaming: :mod:`.runner` (capture paths in :mod:`.capture`);
* each layer alone for ``--diagnose``: :mod:`.local`.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from parity.contract.capability import NumberFormat, StageKind
from parity.contract.records import Activation
from parity.contract.source import InputSpec, RunConfig, Source
from parity.lib.torch_loader import resolve_input_specs

from . import local, runner
from .loader import CAPTURE_MODES, PRECISIONS, PreparedCache, unavailable
from .options import OPTIONS

__all__ = ["CAPTURE_MODES", "NUMBER_FORMATS", "PRECISIONS", "SOURCE_NAMES", "TorchSource"]

#: source name per precision
SOURCE_NAMES = {"fp32": "torch", "fp16": "torch-fp16", "bf16": "torch-bf16"}
#: the number format each precision computes in
NUMBER_FORMATS = {"fp32": NumberFormat.FP32, "fp16": NumberFormat.FP16, "bf16": NumberFormat.BF16}
#: ``--stages`` after torch-fp16 / torch-bf16: ``onnx-fp16`` is the exported fp16 model with every tensor
#: stored in fp16 (as exported), ``ort`` the CPU provider as deployed, ``trt`` TensorRT in that precision
STAGE_ALIASES = {"fp16": {"onnx-fp16": "ort-fp16-strict", "ort": "ort-fp16", "trt": "trt-fp16"},
                 "bf16": {"trt": "trt-bf16"}}


class TorchSource(Source):
    """Runs a PyTorch model eagerly and yields every submodule's output (or every op's, in fx mode).

    Options read from ``cfg.options``: ``torch_capture`` (auto | modules | fx), ``trust_model``,
    ``state_dict``, ``torch_include_integer`` (also capture integer/bool tensors),
    ``torch_allow_tf32`` (let an fp32 reference on CUDA use TF32), and for ``parity fix``:
    ``keep_high_precision`` (record keys / module paths run in fp32 inside the fp16/bf16 model)
    and ``outputs_only`` (no hooks, only the model outputs). ``cfg.layers`` (``--layers``): only
    the selected modules are hooked and copied, model outputs always. ``local_errors`` gives each
    leaf module's (or fx node's) local run for ``--diagnose``.
    """

    description = "PyTorch (TorchScript, ExportedProgram .pt2, Python module spec); per-module activations"
    option_schema = OPTIONS
    supports_outputs_only = True
    supports_keep_high_precision = True  # fp32 keeps everything already

    def __init__(self, precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.precision = precision
        self.name = SOURCE_NAMES[precision]
        self.number_format = NUMBER_FORMATS[precision]
        if precision != "fp32":  # a precision stage of --stages, followed by its export and runtimes
            self.stage_kind = StageKind.PRECISION
            self.stage_aliases = STAGE_ALIASES[precision]
        self.description = (f"PyTorch {precision} (TorchScript, ExportedProgram .pt2, Python spec "
                            f"pkg.module:factory); every submodule's output")
        self._cache = PreparedCache(precision, self.name)
        #: the fp32 model local runs compare against, prepared on the first ``local_errors``
        self._reference: PreparedCache | None = None
        #: layers the last ``local_errors`` could not run alone: {"key", "why"}
        self.last_local_skipped: list[dict[str, str]] = []

    def check(self, cfg: RunConfig | None = None) -> str | None:
        return unavailable(cfg)

    def input_specs(self, cfg: RunConfig) -> list[InputSpec]:
        with self._cache.hold(cfg) as prepared:
            return resolve_input_specs(prepared.loaded, cfg.input_shapes)

    def input_names(self, cfg: RunConfig) -> list[str] | None:
        """The forward's input names, when known even though shapes are not (a TorchScript module)."""
        with self._cache.hold(cfg) as prepared:
            return prepared.loaded.input_names

    def run(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Activation]:
        yield from runner.capture(self._cache, cfg, feed)

    supports_local = True

    def local_errors(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Any]:
        """Each layer alone in this source's precision on the fp32 inputs (``parity.contract.records.LocalResult``).

        Modules mode: every leaf module call; fx mode: every ``call_function`` node. Keys are
        the keys ``run()`` gives that layer's records. ``torch`` (fp32) yields nothing: it is the
        reference. Layers that fail alone are listed in ``last_local_skipped``.
        """
        if self.precision == "fp32":
            return
        self.last_local_skipped = []
        if self._reference is None:
            self._reference = PreparedCache("fp32", SOURCE_NAMES["fp32"])
        yield from local.local_results(self._cache, self._reference, cfg, feed, self.last_local_skipped)

"""The ModelOpt sources: ``modelopt-int8`` ... ``modelopt-nvfp4`` and ``modelopt`` (any config).

A thin adapter: the quantized model and its cache are :mod:`.quant`, capture :mod:`.runner`, each
module alone :mod:`.local`. ModelOpt is imported only when a source runs or ``check`` is asked.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from parity.contract.capability import NumberFormat, StageKind
from parity.contract.errors import ParityError
from parity.contract.options import Option
from parity.contract.records import Activation
from parity.contract.source import InputSpec, RunConfig, Source
from parity.lib.options import LOADING
from parity.lib.torch_loader import resolve_input_specs

from . import local, runner
from .quant import CUDA_ONLY, ONNX_PRESETS, PRESETS, Quantized, loaded_model, quantize, resolve_config


#: the number format each preset computes in (W4A8: int4 weights, fp8 activations)
NUMBER_FORMATS = {"int8": NumberFormat.INT8, "fp8": NumberFormat.FP8, "int4-awq": NumberFormat.INT4,
                  "w4a8-awq": NumberFormat.MIXED, "nvfp4": NumberFormat.NVFP4}

QUANT_CFG = Option("quant_cfg", "str", None, "the ModelOpt config of target modelopt: a config name "
                   "(INT8_SMOOTHQUANT_CFG), path.py:NAME, or a .json/.toml file", flag="--quant-cfg")


def modelopt_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("nvidia-modelopt")
    except Exception:
        return None


class ModelOptSource(Source):
    """A torch model fake-quantized by NVIDIA ModelOpt (``mtq.quantize``), captured module by module.

    ``preset`` is a key of :data:`.quant.PRESETS`, or None for ``modelopt``, which reads the config
    from the ``quant_cfg`` option (a ModelOpt config name, ``path.py:NAME``, or a .json/.toml file).
    Options: ``quant_cfg``, ``keep_high_precision`` (module paths or quantizer names whose quantizers
    are disabled: what ``parity fix`` searches), ``outputs_only``, ``trust_model``, ``state_dict``.
    """

    runs_deployed = True
    supports_local = True
    supports_outputs_only = True
    supports_keep_high_precision = True  # the kept modules' quantizers are disabled
    stage_kind = StageKind.QUANTIZATION

    def __init__(self, preset: str | None) -> None:
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, not {preset!r}")
        self.preset = preset
        self.name = f"modelopt-{preset}" if preset else "modelopt"
        self.number_format = NUMBER_FORMATS[preset] if preset else NumberFormat.MIXED
        if preset in ONNX_PRESETS:  # --stages: its Q/DQ export run literally, as deployed, and in TensorRT
            self.stage_aliases = {"onnx-qdq": f"modelopt-{preset}-qdq", "ort": f"modelopt-{preset}-ort",
                                  "trt": "trt-int8"}
        self.option_schema = (*LOADING, QUANT_CFG) if preset is None else LOADING
        cfg_name = PRESETS[preset] if preset else "the quant_cfg option's config"
        self.description = (f"NVIDIA ModelOpt fake quantization ({cfg_name}) of a torch model, calibrated on "
                            f"--calibration; every module's output and each quantizer's amax/clipping"
                            + (" (CUDA only)" if preset in CUDA_ONLY else ""))
        self.semantics = (f"ModelOpt fake quantization ({cfg_name}) in torch (quantize-dequantize in fp32), "
                          f"as ModelOpt evaluates it before export")

    # -- capability

    def check(self, cfg: RunConfig | None = None) -> str | None:
        if modelopt_version() is None:
            return "nvidia-modelopt is not installed (pip install 'parity[modelopt]')"
        try:
            import torch
        except ImportError:
            return "torch is not installed"
        if self.preset in CUDA_ONLY and not torch.cuda.is_available():
            return "NVFP4 fake quantization needs a CUDA GPU (ModelOpt: 'amax must be a CUDA tensor')"
        return None

    def details(self) -> dict[str, Any] | None:
        """For ``parity doctor``, once (on ``modelopt``): ModelOpt's version and which formats run here."""
        v = modelopt_version()
        if v is None or self.preset is not None:
            return None
        runs = {p: ModelOptSource(p).check() for p in PRESETS}
        out: dict[str, Any] = {"modelopt": v, "formats that run here": ", ".join(p for p, w in runs.items() if w is None)
                               or "none"}
        if any(runs.values()):
            out["not here"] = "; ".join(f"{p}: {w}" for p, w in runs.items() if w)
        return out

    def variant(self, spec: str) -> "ModelOptSource":
        """``modelopt:SPEC``: the config named in the target itself (a ModelOpt config name, path.py:NAME,
        or a .json/.toml file), so several configs compare in one command (``--target modelopt:A --target
        modelopt:B``). Only ``modelopt`` has variants."""
        from parity.contract.errors import UsageError

        if self.preset is not None:
            raise UsageError(f"target {self.name}:{spec}: only modelopt takes a config. Note: modelopt:{spec}")
        v = ModelOptSource(None)
        v.name = f"modelopt:{spec}"
        v.fixed_config = spec
        v.option_schema = LOADING
        v.semantics = (f"ModelOpt fake quantization ({spec}) in torch (quantize-dequantize in fp32), as ModelOpt "
                       f"evaluates it before export")
        return v

    #: the config a ``modelopt:SPEC`` variant names
    fixed_config: str | None = None

    # -- model

    def config(self, cfg: RunConfig) -> dict[str, Any]:
        if self.fixed_config is not None:
            return resolve_config(self.fixed_config)
        spec = cfg.options.get("quant_cfg")
        if self.preset is not None:
            if spec:
                raise ParityError(f"--option quant_cfg={spec}: target {self.name} has its own config "
                                  f"({PRESETS[self.preset]}). Note: use --target modelopt with quant_cfg")
            return resolve_config(PRESETS[self.preset])
        if not spec:
            raise ParityError("target modelopt needs a config. Note: --option quant_cfg=NAME (a ModelOpt config "
                              "such as INT8_SMOOTHQUANT_CFG), path.py:NAME, or a .json/.toml file")
        return resolve_config(str(spec))

    def prepared(self, cfg: RunConfig) -> Quantized:
        return quantize(cfg, self.config(cfg), cuda_only=self.preset in CUDA_ONLY)

    def input_specs(self, cfg: RunConfig) -> list[InputSpec]:
        return resolve_input_specs(loaded_model(cfg), cfg.input_shapes)

    def input_names(self, cfg: RunConfig) -> list[str] | None:
        return loaded_model(cfg).input_names

    def run(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Activation]:
        yield from runner.capture(self.prepared(cfg), cfg, feed, self.name)

    def local_errors(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Any]:
        """Each module with an enabled quantizer alone on the fp32 inputs (:mod:`.local`)."""
        yield from local.local_results(self.prepared(cfg), cfg, feed)

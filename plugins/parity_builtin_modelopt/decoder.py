"""Decoders ``modelopt-int8``, ``modelopt-fp8``, ``modelopt-int4-awq``, ``modelopt-w4a8-awq`` and
``modelopt-nvfp4`` (CUDA) for ``parity generate``: a transformers causal LM fake-quantized by ModelOpt,
stepped with its own KV cache.

Why decoders beside the sources: ``compare`` runs a source once per feed, ``generate`` steps a session
token by token with a cache. The quantized model is the same either way, ModelOpt's own
``mtq.quantize(model, CFG, forward_loop)``; here ``forward_loop`` runs each calibration sequence (the
token ids ``parity generate`` passes: its first prompts) through the model in one pass, without a cache.
It is deterministic (seed fixed) and cached like the sources' (:func:`.quant.quantize_or_restore`):
the digest of the model, the config, the calibration token ids and the device names
``<workdir>/modelopt/<digest>.npz``. The session is the torch decoders'
(:class:`parity.lib.causal_lm.CausalLMSession`), so the cache, trace and layer-alone runs are the same
code on the quantized model, whose decoder layers keep their names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from parity.contract.decoder import Decoder, DecoderSession
from parity.contract.errors import ParityError

from .quant import CUDA_ONLY, PRESETS

#: the short precision label of each preset (W4A8: int4 weights, fp8 activations)
PRECISIONS = {"int8": "int8", "fp8": "fp8", "int4-awq": "int4", "w4a8-awq": "w4a8", "nvfp4": "nvfp4"}


class ModelOptDecoder(Decoder):
    """A transformers causal LM fake-quantized by ModelOpt with the preset's config (:data:`.quant.PRESETS`)."""

    uses_calibration = True

    def __init__(self, preset: str) -> None:
        from .source import NUMBER_FORMATS

        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, not {preset!r}")
        self.preset = preset
        self.precision = PRECISIONS[preset]
        self.number_format = NUMBER_FORMATS[preset]
        self.description = (f"transformers causal LM fake-quantized by NVIDIA ModelOpt ({PRESETS[preset]}), "
                            f"calibrated on the first prompts" + (" (CUDA only)" if preset in CUDA_ONLY else ""))

    def available(self, device: str = "cpu") -> str | None:
        from .source import modelopt_version

        if modelopt_version() is None:
            return "nvidia-modelopt is not installed (pip install 'parity[modelopt]')"
        try:
            import torch
        except ImportError:
            return "torch is not installed (pip install 'parity[torch]')"
        if device.startswith("cuda") and not torch.cuda.is_available():
            return f"device {device} asked for but torch sees no CUDA GPU"
        if self.preset in CUDA_ONLY and not device.startswith("cuda"):
            return ("NVFP4 fake quantization runs on CUDA tensors only (ModelOpt: 'amax must be a CUDA tensor'); "
                    "run with --device cuda on a GPU")
        return None

    def load(self, model: str, *, device: str = "cpu", calibration: list[list[int]] | None = None,
             workdir: str | None = None) -> DecoderSession:
        import torch

        from parity.lib.causal_lm import CausalLMSession, load_causal_lm

        from .quant import calibration_digest, quantize_or_restore, resolve_config

        self.require(device)
        calib = [[int(t) for t in seq] for seq in (calibration or []) if len(seq)]
        if not calib:
            raise ParityError(f"decoder {self.name}: ModelOpt calibrates on token sequences and none were given. "
                              f"Note: parity generate calibrates on its first 16 prompts")
        m = load_causal_lm(model).to(device=device).eval()
        config = resolve_config(PRESETS[self.preset])
        digest = calibration_digest(m, model, config, [{"input_ids": np.asarray(seq, np.int64)} for seq in calib],
                                    device)
        path = Path(workdir) / "modelopt" / f"lm-{digest}.npz" if workdir else None

        def forward_loop(net: Any) -> None:
            with torch.no_grad():
                for seq in calib:
                    net(input_ids=torch.tensor([seq], dtype=torch.long, device=device), use_cache=False)

        q, restored = quantize_or_restore(m, config, forward_loop, path, model)
        sess = CausalLMSession(q, device, torch.float32, self.name)
        sess.meta.update({"quant_cfg": PRESETS[self.preset], "calibration_sequences": len(calib), "digest": digest,
                          "restored": restored})
        return sess

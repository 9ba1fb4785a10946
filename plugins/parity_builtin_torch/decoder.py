"""Decoders ``torch``, ``torch-fp16``, ``torch-bf16`` for ``parity generate``: a transformers causal LM
stepped with its own KV cache.

The session (:class:`parity.lib.causal_lm.CausalLMSession`: forward with the cache, trace, one layer
alone) is shared with the ModelOpt decoders, which run the same model with quantizers inserted; this
plugin only casts the model to the decoder's precision.
"""
from __future__ import annotations

from parity.contract.decoder import Decoder, DecoderSession
from parity.lib.causal_lm import CausalLMSession

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

class TorchDecoder(Decoder):
    """A transformers causal LM in torch at ``precision`` (weights and compute cast as a deployment would)."""

    def __init__(self, precision: str = "fp32") -> None:
        self.precision = precision
        self.description = f"transformers causal LM in torch, {precision}"

    def available(self, device: str = "cpu") -> str | None:
        try:
            import torch
        except ImportError:
            return "torch is not installed (pip install 'parity[torch]')"
        if device.startswith("cuda") and not torch.cuda.is_available():
            return f"device {device} asked for but torch sees no CUDA GPU"
        if self.precision == "fp16" and not device.startswith("cuda"):
            return "torch fp16 decoding runs on a GPU (--device cuda); on the CPU use torch-bf16"
        return None

    def load(self, model: str, *, device: str = "cpu", calibration: list[list[int]] | None = None,
             workdir: str | None = None) -> DecoderSession:
        import torch

        from parity.lib.causal_lm import load_causal_lm

        self.require(device)
        dtype = getattr(torch, _DTYPES[self.precision])
        m = load_causal_lm(model).to(device=device, dtype=dtype)
        return CausalLMSession(m, device, dtype, self.name)

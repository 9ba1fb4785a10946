"""Decoders ``torch``, ``torch-fp16``, ``torch-bf16`` for ``parity generate``: a transformers causal LM
stepped with its own KV cache.

Why hooks on the decoder layers and not the activation capture of :mod:`.capture`: generation
needs only each layer's hidden state (what the next layer reads), and only at the step that
diverged; a hook pair per layer costs nothing while generating (installed only for :meth:`trace`
and :meth:`run_layer`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from parity.contract.decoder import Decoder, DecoderSession, LayerTrace, Step
from parity.contract.errors import ParityError

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the one layer asked for has run."""


def _hidden(args: tuple, kwargs: dict) -> Any:
    return args[0] if args else kwargs["hidden_states"]


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) else out


def _np(t: Any) -> np.ndarray:
    return t.detach().float().cpu().numpy()


class TorchDecoderSession(DecoderSession):
    def __init__(self, model: Any, device: str, dtype: Any, name: str) -> None:
        from parity.lib.causal_lm import cache_keyword, decoder_layers

        self.kw = cache_keyword(model)
        names, mods = decoder_layers(model)
        super().__init__(name=name, layers=names, vocab_size=int(model.config.vocab_size))
        self.model, self.device, self.dtype, self.mods = model, device, dtype, mods

    def _ids(self, tokens: Any) -> Any:
        import torch

        return torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=self.device)[None]

    def forward(self, tokens: Any, cache: Any = None) -> Step:
        import torch

        from parity.lib.causal_lm import cache_of

        with torch.inference_mode():
            out = self.model(input_ids=self._ids(tokens), use_cache=True, **{self.kw: cache})
        return Step(logits=_np(out.logits[0]), cache=cache_of(out))

    def cache_arrays(self, cache: Any) -> list[tuple[Any, Any]]:
        layers = getattr(cache, "layers", None)
        if layers is not None:
            return [(_np(c.keys[0]), _np(c.values[0])) for c in layers]
        return [(_np(k[0]), _np(v[0])) for k, v in cache]

    def trace(self, tokens: Any) -> list[LayerTrace]:
        import torch

        seen: dict[int, list[Any]] = {}
        handles = []
        for i, m in enumerate(self.mods):
            handles.append(m.register_forward_hook(
                lambda mod, a, k, o, i=i: seen.__setitem__(i, [_np(_hidden(a, k)[0]), _np(_first(o)[0])]),
                with_kwargs=True))
        try:
            with torch.inference_mode():
                self.model(input_ids=self._ids(tokens), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        return [LayerTrace(self.layers[i], *seen[i]) for i in range(len(self.mods))]

    def run_layer(self, tokens: Any, index: int, hidden: Any) -> Any:
        import torch

        h = torch.as_tensor(np.asarray(hidden, dtype=np.float32), device=self.device).to(self.dtype)[None]
        got: list[Any] = []

        def pre(mod: Any, args: tuple, kwargs: dict) -> Any:
            if args:
                return (h, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": h}

        def post(mod: Any, args: tuple, kwargs: dict, out: Any) -> None:
            got.append(_np(_first(out)[0]))
            raise _Stop

        m = self.mods[index]
        handles = [m.register_forward_pre_hook(pre, with_kwargs=True),
                   m.register_forward_hook(post, with_kwargs=True)]
        try:
            with torch.inference_mode():
                self.model(input_ids=self._ids(tokens), use_cache=False)
        except _Stop:
            pass
        finally:
            for hd in handles:
                hd.remove()
        return got[0]

    def close(self) -> None:
        self.model = None


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

        why = self.available(device)
        if why:
            raise ParityError(f"decoder {self.name}: {why}")
        dtype = getattr(torch, _DTYPES[self.precision])
        m = load_causal_lm(model).to(device=device, dtype=dtype)
        return TorchDecoderSession(m, device, dtype, self.name)

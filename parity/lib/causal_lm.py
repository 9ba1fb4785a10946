"""Causal language models for ``parity generate``: loading one without the network, finding its layers,
stepping it with its own KV cache.

Why shared: the torch decoders run the model and the ONNX Runtime decoders export it (a target
``ort-fp16`` of a transformers folder), so both plugins load it the same way, and both must refuse
the hub: a run that silently downloads weights compares something the user never named. The ModelOpt
decoders run the same transformers model with quantizers inserted, so the torch decoders' session
(:class:`CausalLMSession`) lives here too: one stepping, tracing and layer-alone code for both plugins.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from parity.contract.decoder import DecoderSession, LayerTrace, Step
from parity.contract.errors import ParityError, first_line
from parity.lib.torch_loader import import_spec

__all__ = ["CausalLMSession", "cache_of", "cache_keyword", "decoder_layers", "is_causal_lm_folder", "load_causal_lm",
           "load_tokenizer"]


def cache_keyword(model: Any) -> str:
    """The forward keyword that takes the KV cache: ``cache`` from transformers 5.x, ``past_key_values`` before
    (still accepted there, with a deprecation warning on every step)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def cache_of(out: Any) -> Any:
    """The KV cache a forward pass returned, under either name."""
    c = getattr(out, "cache", None)
    return c if c is not None else getattr(out, "past_key_values", None)


def is_causal_lm_folder(model: str) -> bool:
    return Path(model).is_dir() and (Path(model) / "config.json").is_file()


def load_causal_lm(model: str) -> Any:
    """A transformers causal LM from a local folder (``config.json`` + weights) or ``file.py:factory`` /
    ``package.module:factory`` returning one, in fp32 on the CPU and in eval mode.

    The hub is never asked: a folder is read with ``local_files_only``, and a name that is not a
    folder or a Python spec is refused naming both forms.
    """
    try:
        import torch
    except ImportError:
        raise ParityError("parity generate with a transformers model needs torch. Note: pip install "
                          "'parity[torch]'") from None
    if is_causal_lm_folder(model):
        try:
            from transformers import AutoModelForCausalLM
        except ImportError:
            raise ParityError(f"model folder {model}: loading it needs transformers. Note: pip install "
                              f"transformers") from None
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # one line per error is parity's rule; no bars on stderr
        except ImportError:
            pass
        try:
            m = AutoModelForCausalLM.from_pretrained(model, local_files_only=True, dtype=torch.float32)
        except Exception as e:
            raise ParityError(f"model folder {model}: transformers cannot load it as a causal LM: "
                              f"{first_line(e, typed=True)}") from None
    elif ":" in model and not Path(model).exists():
        factory = import_spec(model, "decoder model spec")
        try:
            m = factory()
        except Exception as e:
            raise ParityError(f"decoder model spec {model!r}: the factory raised {first_line(e, typed=True)}") from None
        if not isinstance(m, torch.nn.Module):
            raise ParityError(f"decoder model spec {model!r}: the factory returned {type(m).__name__}, "
                              f"not a torch.nn.Module causal LM")
        m = m.float()
    else:
        raise ParityError(f"decoder model {model!r}: not a transformers model folder (a folder with "
                          f"config.json) nor a Python spec file.py:factory. Note: models are never "
                          f"downloaded; save one with save_pretrained(FOLDER) first")
    return m.eval()


def decoder_layers(model: Any) -> tuple[list[str], list[Any]]:
    """The names and modules of a causal LM's decoder layers, in order.

    Why found by shape rather than by attribute name: Llama keeps them in ``model.layers``, GPT-2 in
    ``transformer.h``, others elsewhere; every one is the ``ModuleList`` as long as
    ``config.num_hidden_layers``.
    """
    import torch

    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    best: tuple[str, Any] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n):
            if best is None or len(name) < len(best[0]):
                best = (name, mod)
    if best is None:
        return [], []
    prefix, mods = best
    return [f"{prefix}.{i}" for i in range(len(mods))], list(mods)


def load_tokenizer(path: str) -> Any:
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json`` or a folder holding one (a transformers tokenizer
    folder saves one); no download, no transformers needed."""
    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise ParityError(f"tokenizer {path}: no tokenizer.json there. Note: give a tokenizer.json file or a "
                          f"folder holding one (tokenizer.save_pretrained(FOLDER) writes it), or token id files "
                          f"instead of text prompts")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ParityError("text prompts need the tokenizers package. Note: pip install tokenizers, or give "
                          "token id files") from None
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:
        raise ParityError(f"tokenizer {file}: cannot be read: {first_line(e, typed=True)}") from None


# ---------------------------------------------------------------- a torch causal LM as a decoder session

class _Stop(Exception):
    """Raised by a hook to end a forward pass once the one layer asked for has run."""


def _hidden(args: tuple, kwargs: dict) -> Any:
    return args[0] if args else kwargs["hidden_states"]


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) else out


def _np(t: Any) -> np.ndarray:
    return t.detach().float().cpu().numpy()


class CausalLMSession(DecoderSession):
    """A transformers causal LM in torch stepped with its own KV cache (the torch and ModelOpt decoders).

    Why hooks on the decoder layers and not the activation capture of a source: generation needs only
    each layer's hidden state (what the next layer reads), and only at the step that diverged; a hook
    pair per layer costs nothing while generating (installed only for :meth:`trace` and :meth:`run_layer`).
    ``dtype``: the compute dtype a layer's substituted input is cast to in :meth:`run_layer`.
    """

    def __init__(self, model: Any, device: str, dtype: Any, name: str) -> None:
        self.kw = cache_keyword(model)
        names, mods = decoder_layers(model)
        super().__init__(name=name, layers=names, vocab_size=int(model.config.vocab_size))
        self.model, self.device, self.dtype, self.mods = model, device, dtype, mods

    def _ids(self, tokens: Any) -> Any:
        import torch

        return torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=self.device)[None]

    def forward(self, tokens: Any, cache: Any = None) -> Step:
        import torch

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

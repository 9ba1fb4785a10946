"""Causal language models for ``parity generate``: loading one without the network, finding its layers.

Why shared: the torch decoders run the model and the ONNX Runtime decoders export it (a target
``ort-fp16`` of a transformers folder), so both plugins load it the same way, and both must refuse
the hub: a run that silently downloads weights compares something the user never named.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from parity.contract.errors import ParityError, first_line
from parity.lib.torch_loader import import_spec

__all__ = ["cache_of", "cache_keyword", "decoder_layers", "is_causal_lm_folder", "load_causal_lm", "load_tokenizer"]


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

"""Small models the ModelOpt tests train themselves (no downloads).

``digits_cnn``: a CNN trained on scikit-learn's bundled digits (8x8), with an outlier option that
makes one input channel of ``fc1`` dominate its per-tensor input amax. ``tiny_decoder``: a decoder-only
transformer trained briefly on the docstrings of Python's own ``textwrap`` module (characters);
``tiny_llama``: a transformers Llama trained on the same characters (``parity generate``).
"""
from __future__ import annotations

import functools

import numpy as np

from support import train_causal_lm


@functools.lru_cache(maxsize=None)
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # [N, 1, 8, 8] in [0, 1]
    return x, d.target.astype(np.int64)


def digits_cnn(outlier: float = 0.0):  # type: ignore[no-untyped-def]
    """A trained conv net; ``outlier`` > 0 scales one channel of conv2's output (fc1's input) by that much
    and fc1's matching weights down by as much, so the float model is unchanged while fc1's input has
    one channel far above the rest."""
    return _trained(outlier)


@functools.lru_cache(maxsize=None)
def _state(seed: int = 0) -> dict:
    import torch

    torch.manual_seed(seed)
    net = _net()
    x, y = digits()
    xt, yt = torch.from_numpy(x[:1200]), torch.from_numpy(y[:1200])
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(12):
        for i in range(0, len(xt), 200):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[i:i + 200]), yt[i:i + 200]).backward()
            opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _net():  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    class DigitsNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.relu1 = nn.ReLU()
            self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
            self.relu2 = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(2)
            self.flat = nn.Flatten()
            self.fc1 = nn.Linear(64, 32)
            self.relu3 = nn.ReLU()
            self.fc2 = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
            return self.fc2(self.relu3(self.fc1(self.flat(self.pool(x)))))

    return DigitsNet()


def _trained(outlier: float):  # type: ignore[no-untyped-def]
    import torch

    net = _net()
    net.load_state_dict(_state())
    if outlier:
        with torch.no_grad():
            # conv2's busiest channel c becomes fc1's input features 4c..4c+3 (pool 2x2, flatten): scale
            # it up and fc1's weights on it down by as much: same float function, one dominant channel
            x, _ = digits()
            c = int(net.relu2(net.conv2(net.relu1(net.conv1(torch.from_numpy(x[:200]))))).mean((0, 2, 3)).argmax())
            net.conv2.weight[c] *= outlier
            net.conv2.bias[c] *= outlier
            net.fc1.weight[:, 4 * c: 4 * c + 4] /= outlier
            net.outlier_channel = c
    return net.eval()


def digits_feeds(n: int, start: int = 1400, batch: int = 16) -> list[np.ndarray]:
    x, _ = digits()
    return [x[start + i * batch: start + (i + 1) * batch] for i in range(n)]


@functools.lru_cache(maxsize=None)
def _text() -> tuple[str, list[str]]:
    """Characters of the docstrings of Python's own ``textwrap`` module: text that ships with Python."""
    import inspect
    import textwrap

    text = "\n".join(inspect.getdoc(o) or "" for _, o in inspect.getmembers(textwrap)
                     if inspect.isfunction(o) or inspect.isclass(o))
    text = (inspect.getdoc(textwrap) or "") + "\n" + text
    vocab = sorted(set(text))
    return text, vocab


def tiny_decoder():  # type: ignore[no-untyped-def]
    """A one-block decoder-only transformer (causal self-attention + MLP), briefly trained on ``_text``."""
    import torch

    net = _decoder()
    net.load_state_dict(_decoder_state())
    return net.eval()


def decoder_feeds(n: int, start: int = 0, length: int = 24, batch: int = 4) -> list[np.ndarray]:
    text, vocab = _text()
    ids = np.array([vocab.index(c) for c in text], dtype=np.int64)
    out = []
    for i in range(n):
        rows = [ids[(start + (i * batch + b) * 37) % (len(ids) - length):][:length] for b in range(batch)]
        out.append(np.stack(rows))
    return out


def _decoder():  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    vocab = len(_text()[1])

    class Block(nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(d)
            self.q_proj = nn.Linear(d, d)
            self.k_proj = nn.Linear(d, d)
            self.v_proj = nn.Linear(d, d)
            self.o_proj = nn.Linear(d, d)
            self.ln2 = nn.LayerNorm(d)
            self.up_proj = nn.Linear(d, 4 * d)
            self.act = nn.GELU()
            self.down_proj = nn.Linear(4 * d, d)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.ln1(x)
            q, k, v = self.q_proj(h), self.k_proj(h), self.v_proj(h)
            t = x.shape[1]
            att = (q @ k.transpose(1, 2)) / (q.shape[-1] ** 0.5)
            att = att.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf")).softmax(-1)
            x = x + self.o_proj(att @ v)
            return x + self.down_proj(self.act(self.up_proj(self.ln2(x))))

    class Decoder(nn.Module):
        def __init__(self, d: int = 32) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, d)
            self.pos = nn.Parameter(torch.zeros(1, 64, d))
            self.layers = nn.ModuleList([Block(d)])
            self.norm = nn.LayerNorm(d)
            self.head = nn.Linear(d, vocab)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            x = self.embed(input_ids) + self.pos[:, : input_ids.shape[1]]
            for layer in self.layers:
                x = layer(x)
            return self.head(self.norm(x))

    return Decoder()


@functools.lru_cache(maxsize=None)
def _decoder_state() -> dict:
    import torch

    torch.manual_seed(0)
    net = _decoder()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for step in range(25):
        ids = torch.from_numpy(decoder_feeds(1, start=step * 97, length=25, batch=8)[0])
        opt.zero_grad()
        logits = net(ids[:, :-1])
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def outlier_cnn():  # type: ignore[no-untyped-def]
    """``digits_cnn(outlier=200)`` as a zero-argument factory (a model spec for the CLI)."""
    return digits_cnn(outlier=200.0)


def digits_net():  # type: ignore[no-untyped-def]
    """The untrained network (a model spec taking ``--state-dict``: no training in the CLI's process)."""
    return _net().eval()


def text_ids(s: str) -> list[int]:
    """``s`` as the token ids of :func:`tiny_llama` (one per character of ``_text``'s alphabet)."""
    vocab = _text()[1]
    return [vocab.index(c) for c in s]


def tiny_llama():  # type: ignore[no-untyped-def]
    """A transformers ``LlamaForCausalLM`` (2 layers, hidden 32, one token per character of ``_text``),
    briefly trained on ``_text``: a real causal LM with a KV cache for ``parity generate``, small enough
    that quantizing and generating take a second."""
    from transformers import LlamaForCausalLM

    net = LlamaForCausalLM(_llama_config())
    net.load_state_dict(_llama_state())
    return net.eval()


def _llama_config():  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(_text()[1]), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


@functools.lru_cache(maxsize=None)
def _llama_state() -> dict:
    import torch
    from transformers import LlamaForCausalLM

    text, vocab = _text()
    ids = torch.tensor([vocab.index(c) for c in text])
    torch.manual_seed(0)
    net = LlamaForCausalLM(_llama_config())
    train_causal_lm(net, ids, steps=40, seq=48, lr=1e-2)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}

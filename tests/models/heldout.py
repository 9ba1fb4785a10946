"""Held-out architectures for the int8 diagnosis: plain torch modules written here, not in the dev zoo.

Each factory loads as ``tests/models/heldout.py:NAME`` with ``parity_input_shapes``; weights are
seeded. Masks are built the way Hugging Face builds them: ``torch.finfo(float32).min`` where a key
may not be attended (above the diagonal for a causal decoder, at padded keys), added to the
attention scores. The tiny sizes keep each run well under a second.
"""
import math

import torch
from torch import nn

SEQ = 16
HIDDEN = 32
HEADS = 2
NEG = torch.finfo(torch.float32).min


def _wrap(module: nn.Module, shapes: dict, dtypes: dict | None = None) -> nn.Module:
    module.parity_input_shapes = shapes
    if dtypes:
        module.parity_input_dtypes = dtypes
    return module.eval()


class SelfAttention(nn.Module):
    """Eager multi-head attention: softmax(q k^T / sqrt(d) + mask) v, the mask added to the scores."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads, self.d = heads, hidden // heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.o = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, self.d).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d)
        scores = scores + mask  # [b, 1, t, t] of 0 / float32 min
        attn = scores.softmax(-1)
        return self.o((attn @ v).transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, pre_ln: bool) -> None:
        super().__init__()
        self.pre_ln = pre_ln
        self.ln1 = nn.LayerNorm(hidden)
        self.attn = SelfAttention(hidden, heads)
        self.ln2 = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pre_ln:
            x = x + self.attn(self.ln1(x), mask)
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + self.attn(x, mask))
        return self.ln2(x + self.mlp(x))


def _sharpen(blocks: nn.ModuleList, factor: float) -> None:
    """Scale query/key weights so attention is as peaked as in a trained model (a random init gives
    near-uniform attention, which hides any error in the scores)."""
    with torch.no_grad():
        for blk in blocks:
            blk.attn.q.weight.mul_(factor)
            blk.attn.k.weight.mul_(factor)


class CausalDecoder(nn.Module):
    """A pre-LN decoder with the mask Hugging Face builds for a right-padded batch: float32's minimum
    above the diagonal (``torch.full((t, t), min).triu(1)``), and at the padded keys
    (``masked_fill``), so the sentinels are the *majority* of the scores (54% here)."""

    def __init__(self, real: tuple[int, ...] = (SEQ, 8)) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.emb = nn.Embedding(128, HIDDEN)  # random ids are drawn in [0, 100)
        self.pos = nn.Parameter(torch.randn(SEQ, HIDDEN) * 0.5)
        self.blocks = nn.ModuleList(Block(HIDDEN, HEADS, pre_ln=True) for _ in range(2))
        self.ln_f = nn.LayerNorm(HIDDEN)
        _sharpen(self.blocks, 4.0)
        pad = torch.ones(len(real), SEQ, dtype=torch.long)
        for i, n in enumerate(real):
            pad[i, n:] = 0
        self.register_buffer("attention_mask", pad)

    def causal_mask(self) -> torch.Tensor:
        t = self.attention_mask.shape[1]
        causal = torch.full((t, t), NEG).triu(1)[None, None]  # [1, 1, t, t]
        causal = causal.expand(self.attention_mask.shape[0], 1, t, t).clone()
        padded = self.attention_mask[:, None, None, :] == 0
        return causal.masked_fill(padded, NEG)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = self.causal_mask()
        x = self.emb(input_ids) + self.pos
        for blk in self.blocks:
            x = blk(x, mask)
        return self.ln_f(x)


class PaddedEncoder(nn.Module):
    """A post-LN encoder on float features with a heavily padded batch: 5 and 3 real positions of
    16, the padding mask ``(1 - mask) * float32 min`` (BERT's extended mask), so 75% of the scores
    are the mask constant."""

    def __init__(self, real: tuple[int, ...] = (5, 3)) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.inp = nn.Linear(12, HIDDEN)
        self.blocks = nn.ModuleList(Block(HIDDEN, HEADS, pre_ln=False) for _ in range(2))
        self.head = nn.Linear(HIDDEN, 4)
        _sharpen(self.blocks, 4.0)
        pad = torch.ones(len(real), SEQ)
        for i, n in enumerate(real):
            pad[i, n:] = 0
        self.register_buffer("attention_mask", pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = (1.0 - self.attention_mask)[:, None, None, :] * NEG
        h = self.inp(x)
        for blk in self.blocks:
            h = blk(h, mask)
        return self.head(h)


#: the planted outlier channel of ``outlier_ln`` and its scale over the others
OUTLIER_CHANNEL = 11
OUTLIER_GAIN = 60.0
#: channels with a small gain, whose values fall within half a per-tensor step of 0
QUIET_CHANNELS = (0, 1, 2)


class OutlierLinear(nn.Module):
    """A LayerNorm whose gain makes one hidden channel ~60x the others (as LLM.int8() and SmoothQuant
    find in large transformers), feeding a Linear: a per-tensor int8 scale set by that channel
    leaves the other channels a couple of levels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.inp = nn.Linear(HIDDEN, HIDDEN)
        self.ln = nn.LayerNorm(HIDDEN)
        self.fc = nn.Linear(HIDDEN, HIDDEN)
        self.out = nn.Linear(HIDDEN, 8)
        with torch.no_grad():
            self.ln.weight.fill_(1.0)
            self.ln.weight[OUTLIER_CHANNEL] = OUTLIER_GAIN
            self.ln.weight[list(QUIET_CHANNELS)] = 0.1  # gains vary in a trained LayerNorm
            # the consumer reads the outlier channel with a small weight (as a trained model would),
            # so the output depends on all the other channels
            self.fc.weight[:, OUTLIER_CHANNEL] /= OUTLIER_GAIN

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(self.inp(x))
        return self.out(torch.relu(self.fc(h)))


def causal_decoder():
    """Hazard: the HF causal + padding mask; its constant is the majority of the mask-added scores."""
    return _wrap(CausalDecoder(), {"input_ids": (2, SEQ)}, {"input_ids": "int64"})


def padded_encoder():
    """Hazard: heavy padding; 75% of the mask-added scores are float32's minimum."""
    return _wrap(PaddedEncoder(), {"x": (2, SEQ, 12)})


def outlier_ln():
    """Hazard: one LayerNorm channel 60x the others, quantized per tensor before a Linear."""
    return _wrap(OutlierLinear(), {"x": (4, SEQ, HIDDEN)})

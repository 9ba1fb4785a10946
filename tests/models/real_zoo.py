"""Real architectures, small: Hugging Face model classes built from public configurations with
seeded random weights (nothing is downloaded), plus a hand-made LSTM/GRU tagger.

Each factory loads as ``tests/models/real_zoo.py:NAME`` and declares ``parity_input_shapes``
(and ``parity_input_dtypes`` for token ids). Configurations are the public ones shrunk to
hidden 64, 2 layers, short sequences, so each model runs in well under a second. Masks are the
ones the libraries build: the BERT padding mask and the GPT-2 causal mask are float32's minimum
added to the attention scores (``attn_implementation="eager"``, as in the reference code).

Hazards planted where training would put them (the docstring of each factory says which), so the
diagnosis tests can assert what an expert would name.
"""
import logging

import torch
from torch import nn

SEQ = 16
VOCAB = 128  # random ids are drawn in [0, 100)


def _quiet() -> None:
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _wrap(module: nn.Module, shapes: dict, dtypes: dict | None = None) -> nn.Module:
    module.parity_input_shapes = shapes
    if dtypes:
        module.parity_input_dtypes = dtypes
    return module.eval()


class BertEncoder(nn.Module):
    """BERT-base's layout (post-LN, GELU, learned positions) with a padded batch: row 1 holds 10
    real tokens and 6 padding positions, masked the way ``BertModel`` masks them."""

    def __init__(self) -> None:
        super().__init__()
        _quiet()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=32, attn_implementation="eager")
        torch.manual_seed(0)
        self.bert = BertModel(cfg, add_pooling_layer=False)
        mask = torch.ones(2, SEQ, dtype=torch.long)
        mask[1, 10:] = 0
        self.register_buffer("attention_mask", mask)

    def forward(self, input_ids):
        return self.bert(input_ids=input_ids, attention_mask=self.attention_mask).last_hidden_state


def bert():
    """Hazard: the padding mask. Scores + float32-min are -3.4e38: -inf in fp16 (harmless, softmax
    gives the reference's exact 0) but a per-tensor int8 scale of ~1e36 for the masked scores, so
    every real score quantizes to 0. Query/key weights are scaled up so attention is as sharp as in
    a trained model (random BERT init gives near-uniform attention, which hides any score error)."""
    m = BertEncoder()
    with torch.no_grad():
        for layer in m.bert.encoder.layer:
            layer.attention.self.query.weight.mul_(12.0)
            layer.attention.self.key.weight.mul_(12.0)
    return _wrap(m, {"input_ids": (2, SEQ)}, {"input_ids": "int64"})


class Gpt2Decoder(nn.Module):
    """GPT-2's layout (pre-LN, Conv1D projections, tied positions) with its causal mask."""

    def __init__(self) -> None:
        super().__init__()
        _quiet()
        from transformers import GPT2Config, GPT2Model

        cfg = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                         bos_token_id=0, eos_token_id=0, attn_implementation="eager")
        torch.manual_seed(1)
        self.gpt2 = GPT2Model(cfg)

    def forward(self, input_ids):
        return self.gpt2(input_ids=input_ids).last_hidden_state


def gpt2():
    """Hazard: fp16 overflow in the residual stream. Block 0's MLP output projection writes values
    near 1e5 into the residual (the "massive activations" of trained decoders); the next LayerNorm
    brings them back in fp32, but in fp16 they are inf before it."""
    m = Gpt2Decoder()
    with torch.no_grad():
        m.gpt2.h[0].mlp.c_proj.weight[:, 3].mul_(4000.0)
        m.gpt2.h[0].mlp.c_proj.bias[3] = 9.0e4
    return _wrap(m, {"input_ids": (2, SEQ)}, {"input_ids": "int64"})


class Vit(nn.Module):
    """ViT-base's layout (patch embedding, CLS token, pre-LN encoder) on 32x32 images, 8x8 patches."""

    def __init__(self) -> None:
        super().__init__()
        _quiet()
        from transformers import ViTConfig, ViTModel

        cfg = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128, attn_implementation="eager")
        torch.manual_seed(2)
        self.vit = ViTModel(cfg, add_pooling_layer=False)

    def forward(self, pixel_values):
        return self.vit(pixel_values=pixel_values).last_hidden_state


def vit():
    """Hazard: a tiny-variance LayerNorm input. The patch embedding is scaled down 1e-4 times, so
    layernorm_before of block 0 normalizes values around 1e-5, below float16's smallest normal."""
    m = Vit()
    with torch.no_grad():
        m.vit.embeddings.patch_embeddings.projection.weight.mul_(1e-4)
        m.vit.embeddings.patch_embeddings.projection.bias.mul_(1e-4)
        m.vit.embeddings.cls_token.mul_(1e-4)
        m.vit.embeddings.position_embeddings.mul_(1e-4)
    return _wrap(m, {"pixel_values": (2, 3, 32, 32)})


class ConvNext(nn.Module):
    """ConvNeXt-T's layout (patchify stem, channels-first LayerNorm, depthwise 7x7, inverted MLP,
    layer scale), two stages."""

    def __init__(self) -> None:
        super().__init__()
        _quiet()
        from transformers import ConvNextConfig, ConvNextModel

        cfg = ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1],
                             layer_scale_init_value=1.0, image_size=32, patch_size=4)
        torch.manual_seed(3)
        self.convnext = ConvNextModel(cfg)

    def forward(self, pixel_values):
        return self.convnext(pixel_values=pixel_values).last_hidden_state


def convnext():
    """Hazard: an outlier channel. Channel 5 of stage 0's depthwise conv is ~2000x the others, so a
    per-tensor int8 scale leaves the other 15 channels a few levels each."""
    m = ConvNext()
    with torch.no_grad():
        dw = m.convnext.encoder.stages[0].layers[0].dwconv
        dw.weight[5].mul_(2000.0)
        dw.bias[5] = 2000.0
    return _wrap(m, {"pixel_values": (2, 3, 32, 32)})


class ResNet(nn.Module):
    """ResNet's layout (7x7 stem, max pool, basic blocks with batch norm and shortcuts), two stages."""

    def __init__(self) -> None:
        super().__init__()
        _quiet()
        from transformers import ResNetConfig, ResNetModel

        cfg = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                           layer_type="basic")
        torch.manual_seed(4)
        self.resnet = ResNetModel(cfg)
        g = torch.Generator().manual_seed(4)
        with torch.no_grad():  # trained-looking batch norm statistics, not the identity
            for bn in self.resnet.modules():
                if isinstance(bn, nn.BatchNorm2d):
                    bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
                    bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)

    def forward(self, pixel_values):
        return self.resnet(pixel_values=pixel_values).last_hidden_state


def resnet():
    """Hazard: fp16 overflow. The stem's batch norm has a near-zero running variance and a large gain
    on channel 0 (a dead channel in training), so its output reaches ~1e5 before the ReLU and max pool."""
    m = ResNet()
    with torch.no_grad():
        bn = m.resnet.embedder.embedder.normalization
        bn.running_var[0] = 1e-9
        bn.weight[0] = 400.0
    return _wrap(m, {"pixel_values": (2, 3, 32, 32)})


class RnnTagger(nn.Module):
    """A sequence tagger: input projection, a 2-layer LSTM, a GRU, a per-step classifier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.proj = nn.Linear(16, 64)
        self.lstm = nn.LSTM(64, 64, num_layers=2, batch_first=True)
        self.gru = nn.GRU(64, 64, batch_first=True)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        h, _ = self.lstm(self.proj(x))
        h, _ = self.gru(h)
        return self.head(self.norm(h))


def rnn():
    """Hazard: an outlier feature. Input projection feature 0 is 300x the others, so the per-tensor
    int8 step of the LSTM input crushes the other 63 features."""
    m = RnnTagger()
    with torch.no_grad():
        m.proj.weight[0].mul_(300.0)
    return _wrap(m, {"x": (2, SEQ, 16)})

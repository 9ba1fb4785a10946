"""Tiny models for end-to-end tests, built with fixed seeds; each loads as ``tests/models/zoo.py:NAME``.

Listed in one place so every end-to-end test uses the same models (and a reviewer can read them).
"""
import torch
from torch import nn


def _init(m: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / max(1, p[0].numel()) ** 0.5 if p.dim() > 1 else 0.1))
        for b in m.modules():
            if isinstance(b, nn.BatchNorm2d):
                b.running_mean.copy_(torch.randn(b.num_features, generator=g) * 0.1)
                b.running_var.copy_(torch.rand(b.num_features, generator=g) + 0.5)
                b.weight.copy_(torch.rand(b.num_features, generator=g) + 0.5)
    return m.eval()


class Basic(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class ResNetish(nn.Module):
    parity_input_shapes = {"x": (2, 3, 16, 16)}

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(Basic(8), Basic(8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.layer1(self.act(self.bn(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class Attention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.softmax = nn.Softmax(dim=-1)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = self.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.gelu = nn.GELU()
        self.fc2 = nn.Linear(2 * d, d)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(self.gelu(self.fc1(self.ln2(x))))


class Encoder(nn.Module):
    parity_input_shapes = {"x": (2, 8, 32)}

    def __init__(self, depth: int = 2, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 5)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


class Fp16Hazard(nn.Module):
    """A planted fp16 hazard: ``boost`` drives activations past fp16's 65504 into a LayerNorm."""

    parity_input_shapes = {"x": (4, 16)}

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.boost = Scale(8e3)
        self.norm = nn.LayerNorm(32)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(32, 32)
        self.head = nn.Linear(32, 8)

    def forward(self, x):
        return self.head(self.fc2(self.act(self.norm(self.boost(self.fc1(x))))))


class Int8Outlier(nn.Module):
    """A planted int8 hazard: ``spiky`` has one output channel 300x larger than the rest."""

    parity_input_shapes = {"x": (16, 32)}

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.act1 = nn.ReLU()
        self.spiky = nn.Linear(64, 64)
        self.act2 = nn.ReLU()
        self.fc3 = nn.Linear(64, 64)
        self.act3 = nn.ReLU()
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = self.act1(self.fc1(x))
        x = self.act2(self.spiky(x))
        return self.head(self.act3(self.fc3(x)))


def lenet():
    from parity.examples.lenet import build

    torch.manual_seed(0)
    return _init(build(), 0)


def resnet():
    return _init(ResNetish(), 1)


def encoder():
    return _init(Encoder(), 2)


def fp16_hazard():
    m = _init(Fp16Hazard(), 3)
    with torch.no_grad():
        m.fc1.weight.mul_(8.0)  # fc1 outputs of ~10, times 8e3: well past 65504
    return m


def int8_outlier():
    m = _init(Int8Outlier(), 4)
    with torch.no_grad():
        m.spiky.weight[0].mul_(300.0)
        m.spiky.bias[0] = 50.0
    return m

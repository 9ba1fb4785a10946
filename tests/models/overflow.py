"""A small MLP whose hidden values pass float16's 65504 inside a Linear (issue 16: culprit order).

``block.fc`` (a Linear with weights scaled up) writes values beyond the fp16 range; the ReLU inside
the same block, a functional ReLU after it (a target-only node in ONNX) and the head only carry the
infinities on. Built here with plain torch modules and seeded weights, not taken from the zoo.
"""
import torch
from torch import nn

#: the Linear's weights are scaled by this, so its outputs reach ~2e5 (fp16 max: 65504)
SCALE = 3e5


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 64)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


class OverflowMLP(nn.Module):
    parity_input_shapes = {"x": (8, 16)}

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(16, 64)
        self.block = Block()
        self.head = nn.Linear(64, 4)
        with torch.no_grad():
            self.block.fc.weight.mul_(SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.block(torch.relu(self.fc1(x)))))


def overflow_mlp() -> nn.Module:
    return OverflowMLP().eval()

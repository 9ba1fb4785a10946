"""Two MLPs whose hidden values pass float16's 65504, for the fp16 storage semantics (issue 16).

* :class:`BetweenFallbackOps`: the value passes from a Linear to a ReLU to a Linear. ONNX Runtime's
  CPU provider has no float16 kernel for Gemm or Relu, so it runs all three in float32 behind casts
  and never stores the value in float16: deployed on that provider nothing overflows; stored in
  float16 as a GPU kernel stores it, the first Linear's output is inf.
* :class:`ThroughTranspose`: the same value is carried by a Reshape/Transpose, which the CPU provider
  runs in float16: the deployed session itself stores it as inf.

Seeded, built here (not the zoo), so a test knows the values without running the model.
"""
import torch
from torch import nn

#: the first Linear's weights are scaled by this: its outputs reach ~1e5 on N(0, 9) inputs
SCALE = 6e4


class BetweenFallbackOps(nn.Module):
    parity_input_shapes = {"x": (8, 16)}

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(16, 32)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(32, 10)
        with torch.no_grad():
            self.fc1.weight.mul_(SCALE)
            self.fc2.weight.div_(SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ThroughTranspose(BetweenFallbackOps):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = h.reshape(h.shape[0], 4, 8).transpose(1, 2).reshape(h.shape[0], 32)
        return self.fc2(self.act(h))


def between_fallback_ops() -> nn.Module:
    return BetweenFallbackOps().eval()


def through_transpose() -> nn.Module:
    return ThroughTranspose().eval()

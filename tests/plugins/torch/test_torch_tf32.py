"""An fp32 reference on CUDA runs without TF32, so it is a true fp32 reference."""
import numpy as np
import pytest

import torch
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available())")


def test_fp32_reference_disables_tf32_while_running_and_restores_it(tmp_path):
    from parity.core.registry import get_source
    from parity.contract.source import RunConfig

    (tmp_path / "m.py").write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    parity_input_shapes = {'x': (64, 256)}\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(256, 256)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x)\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return M()\n")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg = RunConfig(model=f"{tmp_path / 'm.py'}:build", device="cuda", workdir=tmp_path / "c")
    x = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    seen = []
    recs = {}
    for a in get_source("torch").run(cfg, {"x": x}):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        recs[a.key] = a.array
    assert all(flags == (False, False) for flags in seen)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    # the values are fp32-exact against a float64 computation, far tighter than TF32's 10-bit mantissa
    import sys

    sys.path.insert(0, str(tmp_path))
    import m

    ref = m.build()
    w, b = ref.fc.weight.detach().double().numpy(), ref.fc.bias.detach().double().numpy()
    exact = x.astype(np.float64) @ w.T + b
    assert np.max(np.abs(recs["fc"] - exact)) / np.max(np.abs(exact)) < 1e-5

"""LeNet in the shape of TensorRT's classic sampleMNIST network, trained on scikit-learn's digits.

Layer names follow the sample (conv1, pool1, conv2, pool2, ip1, relu, ip2, prob) so the
report reads like the original FP32-vs-FP16 table. The 8x8 digits are scaled to the sample's
28x28 input (each pixel repeated 3x3, then 2 pixels of padding), which needs no download.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from parity.contract.atomic import atomic_path
from parity.contract.errors import ParityError

INPUT_SHAPE = (1, 1, 28, 28)


def _torch():
    try:
        import torch
    except ImportError:
        raise ParityError("the LeNet example needs torch. Note: pip install 'parity[torch]'.") from None
    return torch


def build():
    """The untrained network (python spec ``parity.examples.lenet:build``)."""
    torch = _torch()
    nn = torch.nn

    class LeNet(nn.Module):
        parity_input_shapes = {"x": INPUT_SHAPE}

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 20, 5)
            self.pool1 = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(20, 50, 5)
            self.pool2 = nn.MaxPool2d(2)
            self.ip1 = nn.Linear(800, 500)
            self.relu = nn.ReLU()
            self.ip2 = nn.Linear(500, 10)
            self.prob = nn.Softmax(dim=1)

        def forward(self, x):
            x = self.pool1(self.conv1(x))
            x = self.pool2(self.conv2(x))
            x = self.relu(self.ip1(torch.flatten(x, 1)))
            return self.prob(self.ip2(x))

    return LeNet()


def digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/test split of sklearn's digits as float32 NCHW 28x28 in [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ParityError("the LeNet example needs scikit-learn for its data. Note: pip install scikit-learn.") from None
    d = load_digits()
    x = d.images.astype(np.float32) / 16.0
    x = np.kron(x, np.ones((1, 3, 3), dtype=np.float32))
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)))[:, None]
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(x))
    n_test = len(x) // 5
    test, train = idx[:n_test], idx[n_test:]
    return x[train], y[train], x[test], y[test]


def train(epochs: int = 12, seed: int = 0):
    """A trained LeNet (a few seconds on one CPU core) and its test accuracy."""
    torch = _torch()
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = digits(seed)
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            b = perm[i:i + 64]
            logits = model.ip2(model.relu(model.ip1(torch.flatten(
                model.pool2(model.conv2(model.pool1(model.conv1(xt[b])))), 1))))
            loss = torch.nn.functional.cross_entropy(logits, yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
    return model, acc


def write_example(out: str | Path, epochs: int = 12, seed: int = 0) -> dict[str, Path]:
    """Write ``lenet.pt2`` (ExportedProgram), ``lenet_state.pt`` and ``digits_test.npz`` into ``out``.

    Reuses files already there, so the example is built once.
    """
    torch = _torch()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"model": out / "lenet.pt2", "state_dict": out / "lenet_state.pt", "inputs": out / "digits_test.npz"}
    if all(p.exists() for p in paths.values()):
        return paths
    model, acc = train(epochs, seed)
    _, _, xte, yte = digits(seed)
    with atomic_path(paths["state_dict"]) as tmp:
        torch.save(model.state_dict(), tmp)
    ep = torch.export.export(model, (torch.from_numpy(xte[:2]),),
                             dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    with atomic_path(paths["model"]) as tmp:
        torch.export.save(ep, str(tmp))
    with atomic_path(paths["inputs"]) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, x=xte, labels=yte)
    (out / "README.txt").write_text(f"LeNet (sampleMNIST layout) trained on sklearn digits; test accuracy {acc:.4f}\n")
    return paths

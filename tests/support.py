"""What several test modules share beyond fixtures: the GPU/TensorRT skip markers and tool lookup.

A module of its own (not ``conftest``): a nested ``conftest.py`` (tests/fuzz has one) would
shadow ``from conftest import ...``. Test modules do ``from support import needs_trt``; pytest puts
this folder on ``sys.path`` because it holds the root ``conftest.py``.
"""
import importlib.util
import sys
from pathlib import Path

import pytest


def tool_command(name: str) -> list[str]:
    """The console script ``name`` of the interpreter running the tests, never one found on PATH.

    Why: a tool installed globally on a developer machine once hid a broken fresh-clone setup.
    A tool the README's setup installs must come from the same environment as the tests.
    """
    exe = Path(sys.executable).parent / name
    if not exe.is_file():
        raise AssertionError(f"{name} is not installed beside {sys.executable}: run scripts/setup.sh")
    return [str(exe)]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # torch is installed by setup; a bare environment just has no GPU path
        return False
    return bool(torch.cuda.is_available())


HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA = _cuda_available()
#: the one skip marker for tests that need a real TensorRT run; the reason says why it cannot run here
needs_trt = pytest.mark.skipif(not (HAS_TRT and HAS_CUDA),
                               reason="needs TensorRT 10+ and a CUDA GPU (TensorRT is not installable on this "
                                      "project's machines: its PyPI libs download from an unreachable host)")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU visible to torch")
HAS_TRT_RTX = importlib.util.find_spec("tensorrt_rtx_bindings") is not None
#: tests that drive real bindings of either library (TensorRT 10 or TensorRT for RTX) on a CUDA GPU
needs_trt_bindings = pytest.mark.skipif(
    not ((HAS_TRT or HAS_TRT_RTX) and HAS_CUDA),
    reason="needs TensorRT or TensorRT-RTX bindings and a CUDA GPU (here: "
           f"tensorrt {'importable' if HAS_TRT else 'absent'}, tensorrt_rtx_bindings "
           f"{'importable' if HAS_TRT_RTX else 'absent'}, CUDA {'present' if HAS_CUDA else 'absent'})")


ZOO = Path(__file__).resolve().parent / "models" / "zoo.py"


def load_zoo():
    """``tests/models/zoo.py`` as a module, the way ``parity compare zoo.py:factory`` imports it (by file)."""
    sys.path.insert(0, str(ZOO.parent))
    try:
        import zoo
    finally:
        sys.path.pop(0)
    return zoo


def cli(capsys, *args):
    """The real command line in this process: (exit code, stdout, stderr lines that are parity's)."""
    from parity.cli import main

    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, [ln for ln in err.splitlines() if ln.startswith("parity:")]


def use_metric_path(path: str, monkeypatch) -> None:
    """Send score_pair down one scoring path for a test: ``"numba"`` (the compiled fused kernel,
    even for small test pairs; skipped without numba) or ``"numpy"`` (``PARITY_NO_NUMBA=1``)."""
    if path == "numpy":
        monkeypatch.setenv("PARITY_NO_NUMBA", "1")
        return
    pytest.importorskip("numba")
    from parity.lib.scoring import fused

    monkeypatch.delenv("PARITY_NO_NUMBA", raising=False)
    monkeypatch.setattr(fused, "MIN_COMPILED_SIZE", 0)


def tiny_onnx(path, width: int = 4, hidden: int = 8, unused_initializer: bool = False) -> Path:
    """A two-node ONNX model (MatMul, Relu) with a free batch: input ``x`` [N, width], output ``y`` [N, hidden].

    Built with onnx.helper (no torch, no export): tests that only need some model to run parity on.
    ``unused_initializer`` adds a weight no node reads (ONNX Runtime then logs a warning).
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((width, hidden)).astype(np.float32), "W")
    inits = [w] + ([numpy_helper.from_array(np.ones(3, np.float32), "unused")] if unused_initializer else [])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["y"], name="relu")],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return Path(path)


def train_causal_lm(net, ids, *, steps: int, seq: int, lr: float, batch: int = 16) -> None:  # type: ignore[no-untyped-def]
    """Train ``net`` (a transformers causal LM, built after ``torch.manual_seed`` by the caller) on
    random windows of ``seq`` tokens of ``ids`` for ``steps`` AdamW steps, seeded: the same weights
    every run. On one thread: two threads on a loaded 2-core machine spin, 100x slower than one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        opt = torch.optim.AdamW(net.parameters(), lr=lr)
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            ix = torch.randint(0, len(ids) - seq - 1, (batch,), generator=g)
            x = torch.stack([ids[i:i + seq] for i in ix])
            loss = net(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)


def plugged(plugin, name: str):  # type: ignore[no-untyped-def]
    """A generator for a pytest fixture: ``plugin`` registered as a third-party plugin named ``name``
    while the test runs, then unregistered and the registry reset (no other test sees it)."""
    from parity.core import registry

    registry.register_plugin(plugin, name=name)
    try:
        yield
    finally:
        registry.unregister_plugin(plugin)
        registry.reset()

"""Buffer reuse (issue 19): the allocator keeps freed activation buffers, and one run resolves a
torch model's ONNX export once however many sessions need it."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import ctypes, sys
from parity.lib.memory import reuse_freed_buffers
first = reuse_freed_buffers()
again = reuse_freed_buffers()
print(first, again)
"""


def _probe(env_extra: dict) -> str:
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False


@pytest.mark.skipif(not _glibc(), reason="the allocator tuning is glibc's mallopt")
def test_allocator_tuning_is_applied_once_and_can_be_turned_off():
    assert _probe({"PARITY_MALLOC": ""}) == "True True"
    assert _probe({"PARITY_MALLOC": "default"}) == "False False"


def test_freed_buffers_are_reused_after_tuning():
    """After the tuning, freeing and allocating the same large buffer again faults no fresh pages
    (before it, each new buffer came from mmap and was faulted in page by page)."""
    code = r"""
import resource, numpy as np, sys
from parity.lib.memory import reuse_freed_buffers
if sys.argv[1] == "tuned":
    assert reuse_freed_buffers()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(8 * 2**20 // 8); del a  # warm: the heap has grown once
f0 = faults()
for _ in range(20):
    a = np.ones(8 * 2**20 // 8)  # 8 MiB: mmap'd and faulted anew each time by default
    del a
print(faults() - f0)
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("PARITY_MALLOC", None)
    if not _glibc():
        pytest.skip("page-fault counts of glibc's allocator")
    got = {}
    for kind in ("default", "tuned"):
        r = subprocess.run([sys.executable, "-c", code, kind], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        got[kind] = int(r.stdout.strip())
    # 20 x 8 MiB = 40,960 pages faulted by default; reused, nearly none
    assert got["tuned"] < got["default"] / 10, got


def test_one_run_resolves_a_torch_export_once(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import parity.lib.onnx.models as models
    from parity.contract.source import RunConfig

    loads = []
    real = models._load_torch
    monkeypatch.setattr(models, "_load_torch", lambda cfg: loads.append(cfg.model) or real(cfg))
    spec = f"{ROOT / 'tests' / 'models' / 'zoo.py'}:encoder"
    feed = {"x": np.zeros((1, 8, 32), np.float32)}
    cfg = RunConfig(model=spec, workdir=tmp_path)
    with models.one_export_per_run():
        a = models.onnx_model_for(cfg, feed)
        b = models.onnx_model_for(RunConfig(model=spec, workdir=tmp_path, options={"outputs_only": True}), feed)
        assert len(loads) == 1 and a == b
        models.onnx_model_for(RunConfig(model=spec, workdir=tmp_path, options={"ort_threads": 1}), feed)
        assert len(loads) == 2  # other options: resolved again (only outputs-only/keep lists are known not to matter)
        models.onnx_model_for(cfg, {"x": np.zeros((2, 8, 32), np.float32)})
        assert len(loads) == 3  # another feed signature: resolved again
    models.onnx_model_for(cfg, feed)
    models.onnx_model_for(cfg, feed)
    assert len(loads) == 5  # outside a run, every call resolves (weights may change between runs)

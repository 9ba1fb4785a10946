"""Interrupting `parity compare --save-ref --save-target --json` never leaves a dump that reads as complete.

Why: a Ctrl-C used to leave the dump folders holding the layers captured so far plus a manifest,
and `parity analyze` then compared those layers and exited 0. Every path a killed run leaves must be
either complete and valid (every layer of a finished run, each array readable) or absent.

The runs are real subprocesses killed at seeded random moments while the dumps are being written
(the first temporary sibling is the start signal, so a slow machine does not move the window).
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from parity.contract.errors import ParityError
from parity.core.dumps import feed_dumps, read_dump

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "models" / "zoo.py"
#: dumps of a run with --random-inputs 2: one per side, each holding both inputs' dumps
DUMPS = ("ref", "tgt")
SEED = int(os.environ.get("PARITY_INTERRUPT_SEED", "20240610"))
KILLS = int(os.environ.get("PARITY_INTERRUPT_RUNS", "3"))  # per signal


def _command(out: Path, fmt: str) -> list[str]:
    return [sys.executable, "-m", "parity", "compare", f"{ZOO}:resnet", "--ref", "torch", "--target", "torch-fp16",
            "--input-shape", "x:8x3x160x160", "--random-inputs", "2", "--save-format", fmt,
            "--save-ref", str(out / "ref"), "--save-target", str(out / "tgt"), "--json", str(out / "r.json"),
            "--workdir", str(out.parent / f"{out.name}-cache"), "-q"]


def _dump_path(out: Path, name: str, fmt: str) -> Path:
    return out / name  # a folder of the feeds' dumps, whatever the format


def _layers(path: Path) -> dict[int, dict[str, tuple]]:
    """Per feed, the layer keys and shapes of a dump of several feeds (reading every array)."""
    feeds = feed_dumps(path)
    assert feeds is not None, f"{path} is not a dump of several feeds"
    return {f.index: {a.key: np.asarray(a.array).shape for a in read_dump(f.path)} for f in feeds}


@pytest.fixture(scope="module")
def complete_layers(tmp_path_factory):
    """Layer keys and shapes of an uninterrupted run, per dump and format: what a complete dump holds."""
    out: dict[str, dict[str, dict[str, tuple]]] = {}
    for fmt in ("npy", "npz"):
        d = tmp_path_factory.mktemp(f"full-{fmt}")
        r = subprocess.run(_command(d, fmt), capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        out[fmt] = {name: _layers(_dump_path(d, name, fmt)) for name in DUMPS}
        assert all(len(v) == 2 and all(len(f) >= 20 for f in v.values()) for v in out[fmt].values())
    return out


def _default_sigint() -> None:
    """In the child: Ctrl-C handled as a terminal would deliver it, even when this test runs where SIGINT
    is ignored (a shell's background job), which the child would otherwise inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(out: Path, fmt: str, sig: int, delay: float) -> int:
    """Start a run, wait until a dump is being written, wait ``delay`` more, send ``sig``; the exit code."""
    proc = subprocess.Popen(_command(out, fmt), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            preexec_fn=_default_sigint)
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if out.is_dir() and any(p.name.startswith(".") for p in out.iterdir()):
                break
            time.sleep(0.005)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(sig)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


def _check_left(out: Path, fmt: str, complete: dict[str, dict[str, tuple]], sig: int) -> list[str]:
    """Every visible path is complete and valid; returns the names of the dumps found."""
    found = []
    for name in DUMPS:
        p = _dump_path(out, name, fmt)
        if not p.exists():
            continue
        got = _layers(p)  # reads every array of every feed
        assert got == complete[name], f"{p} is incomplete"
        found.append(name)
    allowed = {_dump_path(out, n, fmt).name for n in DUMPS} | {"r.json"}
    visible = {p.name for p in out.iterdir() if not p.name.startswith(".")} if out.exists() else set()
    assert visible <= allowed, visible - allowed
    if (out / "r.json").exists():
        assert json.loads((out / "r.json").read_text())["layers"]
    hidden = sorted(p.name for p in out.iterdir() if p.name.startswith(".")) if out.exists() else []
    if sig == signal.SIGINT:
        assert not hidden, f"an interrupted run left temporaries behind: {hidden}"
    for h in hidden:  # a hard kill cannot clean up: what it leaves is hidden, and refused when read
        with pytest.raises(ParityError) as e:
            list(read_dump(out / h))
        assert "\n" not in str(e.value)
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_killed_compare_leaves_each_dump_complete_or_absent(sig, complete_layers, tmp_path):
    rng = random.Random(SEED + sig)
    interrupted = 0
    for k in range(KILLS):
        fmt = ("npy", "npz")[k % 2]
        out = tmp_path / f"run{k}"
        delay = rng.uniform(0.0, 1.2)
        rc = _interrupt(out, fmt, sig, delay)
        assert rc in (0, 130 if sig == signal.SIGINT else -signal.SIGKILL), (k, rc)
        found = _check_left(out, fmt, complete_layers[fmt], sig)
        interrupted += rc != 0 and len(found) < len(DUMPS)
    assert interrupted, "no run was interrupted while writing: the test proved nothing"


def test_a_later_run_clears_what_a_hard_kill_left(complete_layers, tmp_path):
    """SIGKILL leaves hidden temporaries (nothing can clean up); the next dump to the same place removes them."""
    out = tmp_path / "run"
    # kill as soon as a temporary is seen; on a fast machine a dump can be renamed into place before the
    # signal lands, so try again (from a clean folder) until a kill does leave a temporary behind
    for attempt in range(10):
        shutil.rmtree(out, ignore_errors=True)
        rc = _interrupt(out, "npy", signal.SIGKILL, 0.0)
        if rc == -signal.SIGKILL and out.is_dir() and any(p.name.startswith(".") for p in out.iterdir()):
            break
    else:
        pytest.fail("ten hard kills left no temporary behind: the test proved nothing")
    r = subprocess.run(_command(out, "npy"), capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    _check_left(out, "npy", complete_layers["npy"], signal.SIGINT)

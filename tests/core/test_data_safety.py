"""Issue 17, data safety and bounded memory: runs too large for the machine, a full disk, a failing
dataset, external data outside the model's folder, and library noise kept off the terminal.

Outputs aimed at inputs and zip bombs are in tests/fuzz/test_hostile.py (with the hostile cases).
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support import cli, tiny_onnx

from parity.contract.source import InputSpec
from parity.core.preflight import available_memory, estimate_memory

ROOT = Path(__file__).resolve().parents[2]


def parity(*args, cwd):
    return subprocess.run([sys.executable, "-m", "parity", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


# -- huge shapes ----------------------------------------------------------------------------------

def test_a_batch_whose_layers_exceed_memory_is_refused_naming_the_figure_and_force(tmp_path, capsys):
    """The input alone fits easily; the first layer's output (1024x wider) does not: refused, exit 2.

    Before: the estimate counted only input-sized activations, so such a run was at most a note and
    then used most of the machine until ONNX Runtime died with bad_alloc.
    """
    avail = available_memory()
    if avail is None:
        pytest.skip("available memory unknown here")
    width, hidden = 4, 4096
    tiny_onnx(tmp_path / "wide.onnx", width=width, hidden=hidden)
    n = avail // (hidden * 4) + 1  # the [n, 4096] float32 layer output alone is above what is available
    old = sum(estimate_memory([InputSpec("x", (n, width), "float32")], 1, 0, random=True).values())
    assert old < avail / 2, "the input-only estimate would not even have warned"
    rc, _out, err = cli(capsys, "compare", tmp_path / "wide.onnx", "--ref", "ort", "--target", "ort-fp16",
                        "--input-shape", f"x:{n}x{width}", "--workdir", tmp_path / "cache")
    assert rc == 2 and len(err) == 1, err
    assert f"x:{n}x{width}" in err[0] and "--force" in err[0] and "--input-shape" in err[0], err[0]
    need = float(re.search(r"needs at least ([\d.]+) GiB", err[0]).group(1)) * 2 ** 30
    assert need >= n * hidden * 4, err[0]  # at least the layer output, by shape inference


def test_force_turns_the_refusal_into_a_note():
    from parity.contract.errors import UsageError
    from parity.core.preflight import check_memory

    parts = {"inputs": 600, "activations": 500}
    with pytest.raises(UsageError, match="--force"):
        check_memory(parts, "m", "smaller inputs", available=1000)
    check_memory(parts, "m", "smaller inputs", available=1000, force=True)  # proceeds


# -- disk full --------------------------------------------------------------------------------------

@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs filled to the last block (a real ENOSPC); skipped where it cannot be mounted."""
    d = tmp_path / "full"
    d.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount") or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:  # ENOSPC: full
            pass
        finally:
            os.close(fd)
        yield d
    finally:
        subprocess.run(["umount", str(d)], capture_output=True)


@pytest.mark.parametrize("option", ["--json", "--html", "--save-ref"])
def test_a_full_disk_is_one_line_naming_the_file_and_the_cause(option, tmp_path, full_disk, capsys):
    tiny_onnx(tmp_path / "tiny.onnx")
    before = sorted(os.listdir(full_disk))
    dest = full_disk / ("r.json" if option == "--json" else "r.html" if option == "--html" else "ref")
    extra = ["--save-format", "npz"] if option == "--save-ref" else []
    rc, _out, err = cli(capsys, "compare", tmp_path / "tiny.onnx", "--ref", "ort", "--target", "ort-fp16",
                        "--input-shape", "x:2x4", option, dest, *extra, "--workdir", tmp_path / "cache")
    assert rc == 1 and len(err) == 1, err
    assert "internal error" not in err[0] and str(dest) in err[0] and "cannot write" in err[0], err[0]
    assert "No space left on device" in err[0] or "bytes free" in err[0], err[0]
    assert sorted(os.listdir(full_disk)) == before  # nothing half-written, no temporary left


# -- a dataset function that raises -----------------------------------------------------------------

@pytest.mark.parametrize("body,where", [
    ("    yield {'x': np.ones((2, 4), np.float32)}\n    raise RuntimeError('disk on fire')\n", "item 1"),
    ("    raise RuntimeError('disk on fire')\n", "calling it failed"),
])
def test_a_dataset_that_raises_is_one_line_naming_it(body, where, tmp_path, capsys):
    tiny_onnx(tmp_path / "tiny.onnx")
    (tmp_path / "data.py").write_text("import numpy as np\n\ndef feeds():\n" + body)
    spec = f"{tmp_path / 'data.py'}:feeds"
    rc, _out, err = cli(capsys, "compare", tmp_path / "tiny.onnx", "--ref", "ort", "--target", "ort",
                        "--inputs", spec, "--workdir", tmp_path / "cache")
    assert rc == 1 and len(err) == 1, err
    assert f"dataset {spec}" in err[0] and "RuntimeError: disk on fire" in err[0] and where in err[0], err[0]
    assert "internal error" not in err[0]


# -- external data ------------------------------------------------------------------------------------

def _with_external_data(tmp_path, location: str) -> Path:
    import onnx

    m = tmp_path / "m"
    m.mkdir()
    tiny_onnx(m / "model.onnx")
    model = onnx.load(str(m / "model.onnx"))
    onnx.save(model, str(m / "model.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    model = onnx.load(str(m / "model.onnx"), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(model, str(m / "model.onnx"))
    return m / "model.onnx"


@pytest.mark.parametrize("location,says", [("../w.bin", "outside the model's folder"), ("gone.bin", "not in")])
def test_external_data_outside_the_folder_or_missing_is_one_line_naming_the_model(location, says, tmp_path, capsys):
    model = _with_external_data(tmp_path, location)
    if location.startswith(".."):
        shutil.move(model.parent / "w.bin", tmp_path / "w.bin")  # where the location points: it exists
    rc, _out, err = cli(capsys, "compare", model, "--ref", "ort", "--target", "ort", "--input-shape", "x:2x4",
                        "--workdir", tmp_path / "cache")
    assert rc == 1 and len(err) == 1, err
    assert str(model) in err[0] and location in err[0] and says in err[0] and "'W'" in err[0], err[0]
    assert "internal error" not in err[0]


def test_external_data_inside_the_folder_still_runs(tmp_path, capsys):
    model = _with_external_data(tmp_path, "w.bin")
    rc, _out, err = cli(capsys, "compare", model, "--ref", "ort", "--target", "ort", "--input-shape", "x:2x4",
                        "--workdir", tmp_path / "cache")
    assert rc == 0, err


# -- library noise ----------------------------------------------------------------------------------

def test_torch_pickle_warnings_show_only_with_verbose(tmp_path):
    import torch

    (tmp_path / "mymodels.py").write_text(
        "import torch\n\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.fc = torch.nn.Linear(4, 3)\n\n    def forward(self, x):\n        return self.fc(x)\n")
    torch.save({"fc.weight": torch.ones(3, 4), "fc.bias": torch.zeros(3)}, tmp_path / "sd.pt", pickle_protocol=3)
    args = ["compare", "mymodels.py:Net", "--state-dict", "sd.pt", "--ref", "torch", "--target", "torch",
            "--input-shape", "x:1x4", "--workdir", "cache", "-q"]
    quiet, loud = parity(*args, cwd=tmp_path), parity(*args, "-v", cwd=tmp_path)
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    assert "pickle protocol 3" in loud.stderr  # torch does warn on this file...
    assert "pickle protocol" not in quiet.stderr and "Warning" not in quiet.stderr, quiet.stderr  # ...not without -v


def test_onnxruntime_log_lines_show_only_with_verbose(tmp_path):
    tiny_onnx(tmp_path / "u.onnx", unused_initializer=True)
    args = ["compare", "u.onnx", "--ref", "ort", "--target", "ort-int8", "--input-shape", "x:2x4", "-q"]
    quiet = parity(*args, "--workdir", "cache", cwd=tmp_path)
    loud = parity(*args, "-v", "--workdir", "cache2", cwd=tmp_path)
    assert quiet.returncode in (0, 1) and loud.returncode in (0, 1), quiet.stderr + loud.stderr
    assert "[W:onnxruntime" in loud.stderr  # the runtime does log about the unused weight...
    assert "onnxruntime" not in quiet.stderr, quiet.stderr  # ...not without -v

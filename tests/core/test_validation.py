"""Everything the command line names is checked before any model runs (issue 10, part A).

Options against their meaning (exit 2), output paths, the cache folder, every target's source,
the memory a run needs, and a user's ONNX file saved by a newer ``onnx`` than the runtime reads.
"""
import math
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support import cli, load_zoo

from parity.core.preflight import estimate_memory, memory_verdict, value_range
from parity.contract.source import InputSpec

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "models" / "zoo.py"




def parity(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "parity", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env={**os.environ, **(env or {})})


def _dumps(tmp_path):
    """Two tiny dump folders, so `parity analyze` has something to compare."""
    for side in ("ref", "tgt"):
        (tmp_path / side).mkdir()
        np.save(tmp_path / side / "a.npy", np.linspace(-1, 1, 8, dtype=np.float32))
    return tmp_path / "ref", tmp_path / "tgt"


@pytest.fixture(scope="module")
def lenet_onnx(tmp_path_factory):
    import torch

    zoo = load_zoo()
    d = tmp_path_factory.mktemp("models")
    torch.onnx.export(zoo.lenet(), (torch.zeros(2, 1, 28, 28),), str(d / "lenet.onnx"), input_names=["x"],
                      dynamo=False)
    return d / "lenet.onnx"


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody can create files in, not even root (chattr +i); skipped where that cannot be made."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() == 0:
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(d)]).returncode:
            pytest.skip("cannot make a read-only folder here")
    else:
        d.chmod(0o555)
    try:
        (d / "probe").touch()
    except OSError:
        pass
    else:
        pytest.skip("the folder stayed writable")
    yield d
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(d)])
    d.chmod(0o755)


# -- options -------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,names", [
    (["--threshold", "2"], "cosine"),                       # cosine lies in [-1, 1]
    (["--threshold", "nan"], "cosine"),
    (["--threshold", "-5"], "cosine"),
    (["--fail-under", "nan"], "--fail-under"),
    (["--metrics", "rel-diff", "--threshold", "101"], "rel-diff"),  # a percentage lies in [0, 100]
    (["--metrics", "max-abs", "--threshold", "-0.1"], "max-abs"),   # a distance is >= 0
    (["--threshold", "l2=0.1"], "l2"),                      # a threshold for a metric not selected
    (["--metrics", ""], "--metrics"),                       # no metric: not silently the defaults
    (["--metrics", "cosin"], "cosin"),                      # an unknown name
    (["--rel-tol", "-1"], "--rel-tol"),
    (["--kl-bins", "1"], "--kl-bins"),
    (["--report", "nosuch=r.txt"], "nosuch"),
])
def test_bad_option_values_are_usage_errors_before_anything_runs(capsys, tmp_path, args, names):
    ref, tgt = _dumps(tmp_path)
    rc, out, err = cli(capsys, "analyze", ref, tgt, *args)
    assert rc == 2 and len(err) == 1 and names in err[0], err
    assert out == ""  # nothing was compared


@pytest.mark.parametrize("args,names", [
    (["--input-shape", "x:1xx3"], "--input-shape"),         # malformed: 2 like a malformed --threshold
    (["--input-shape", "x:0x1x28x28"], "--input-shape"),    # an empty input
    (["--seed", "-1"], "--seed"),
    (["--random-inputs", "0"], "--random-inputs"),
    (["--target", "ort-fp17"], "ort-fp17"),
    (["--device", "gpu"], "--device"),
])
def test_bad_run_options_are_usage_errors(capsys, tmp_path, args, names):
    rc, _out, err = cli(capsys, "compare", tmp_path / "nope.onnx", "--ref", "ort", *args)
    assert rc == 2 and len(err) == 1 and names in err[0], err


def test_fix_goal_outside_the_metric_is_a_usage_error(capsys, tmp_path):
    rc, _out, err = cli(capsys, "fix", tmp_path / "nope.onnx", "--ref", "ort", "--goal", "cosine=1.5")
    assert rc == 2 and "--goal" in err[0] and "[-1, 1]" in err[0]


def test_values_at_the_edge_of_a_metric_are_accepted(capsys, tmp_path):
    ref, tgt = _dumps(tmp_path)
    rc, out, err = cli(capsys, "analyze", ref, tgt, "--threshold", "cosine=1,rel-diff=100", "--fail-under", "-1")
    assert rc == 0 and "1 layers compared" in out, err


def test_value_range_is_read_from_the_metric_meaning():
    from parity.core.registry import get_metric

    got = {n: value_range(get_metric(n)) for n in ("cosine", "rel-diff", "max-abs", "kl", "sqnr")}
    assert got == {"cosine": (-1.0, 1.0), "rel-diff": (0.0, 100.0), "max-abs": (0.0, math.inf),
                   "kl": (0.0, math.inf), "sqnr": (-math.inf, math.inf)}


# -- output paths --------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["under-a-file", "a-directory", "pseudo-fs", "fifo", "read-only",
                                  "new-folder-in-read-only"])
def test_bad_output_paths_fail_before_the_run(capsys, tmp_path, lenet_onnx, case, request):
    cache = tmp_path / "cache"
    if case == "under-a-file":
        path, want = lenet_onnx / "x.json", "is a file, not a directory"
    elif case == "a-directory":
        path, want = tmp_path, "is a directory"
    elif case == "pseudo-fs":
        path, want = Path("/proc/parity-report.json"), "cannot write in /proc"
    elif case == "fifo":  # like /dev/null: renaming a report over it would replace it (never test on /dev/null)
        path, want = tmp_path / "pipe", "not a regular file"
        os.mkfifo(path)
    elif case == "read-only":
        path, want = request.getfixturevalue("read_only_dir") / "r.json", "cannot write in"
    else:
        path, want = request.getfixturevalue("read_only_dir") / "new" / "r.json", "cannot write in"
    rc, _out, err = cli(capsys, "compare", lenet_onnx, "--ref", "ort", "--target", "ort-fp16", "--json", path,
                        "--workdir", cache)
    assert rc == 1 and len(err) == 1 and str(path) in err[0] and want in err[0], err
    assert "internal error" not in err[0] and ".tmp" not in err[0]
    assert not cache.exists()  # found before anything was exported or run
    if case == "fifo":
        assert stat.S_ISFIFO(path.lstat().st_mode)  # still the pipe, not replaced by a report


def test_a_missing_report_folder_is_created_with_a_note(capsys, tmp_path, lenet_onnx):
    rc, _out, err = cli(capsys, "compare", lenet_onnx, "--ref", "ort", "--target", "ort-fp16", "-q",
                        "--json", tmp_path / "new" / "r.json", "--workdir", tmp_path / "cache")
    assert rc == 0 and (tmp_path / "new" / "r.json").is_file(), err
    assert f"parity: note: json report {tmp_path / 'new' / 'r.json'}: folder {tmp_path / 'new'} does not exist; " \
           f"parity creates it." in err


def test_save_paths_and_write_config_are_checked_too(capsys, tmp_path, lenet_onnx):
    (tmp_path / "f").write_text("a file")
    rc, _out, err = cli(capsys, "compare", lenet_onnx, "--ref", "ort", "--target", "ort-fp16",
                        "--save-ref", tmp_path / "f" / "ref", "--workdir", tmp_path / "cache")
    assert rc == 1 and "--save-ref" in err[0] and "not a directory" in err[0]
    rc, _out, err = cli(capsys, "fix", lenet_onnx, "--ref", "ort", "--target", "ort-fp16",
                        "--write-config", tmp_path / "f" / "fix.toml", "--workdir", tmp_path / "cache")
    assert rc == 1 and "--write-config" in err[0]
    assert not (tmp_path / "cache").exists()


def test_two_outputs_on_one_path_are_refused(capsys, tmp_path, lenet_onnx):
    rc, _out, err = cli(capsys, "compare", lenet_onnx, "--ref", "ort", "--json", tmp_path / "r",
                        "--csv", tmp_path / "r")
    assert rc == 2 and "same path" in err[0]


# -- several targets -----------------------------------------------------------------------------

def test_every_target_is_checked_before_the_first_runs(capsys, tmp_path, lenet_onnx):
    from parity.core.registry import get_source

    if get_source("trt-fp16").check() is None:
        pytest.skip("TensorRT runs here: no unavailable target to name")
    rc, out, err = cli(capsys, "compare", lenet_onnx, "--ref", "ort", "--target", "ort-fp16", "--target",
                       "trt-fp16", "--json", tmp_path / "r.json", "--workdir", tmp_path / "cache")
    assert rc == 1 and len(err) == 1 and "trt-fp16" in err[0] and "cannot run here" in err[0]
    assert list(tmp_path.glob("r*.json")) == [] and out == ""  # the first target did not run either
    assert not (tmp_path / "cache").exists()


# -- environment ---------------------------------------------------------------------------------

def test_the_cache_goes_to_the_user_cache_folder_not_the_current_one(tmp_path, read_only_dir, lenet_onnx):
    xdg = tmp_path / "xdg"
    r = parity("compare", lenet_onnx, "--ref", "ort", "--target", "ort-fp16", "-q", cwd=read_only_dir,
               env={"XDG_CACHE_HOME": str(xdg)})
    assert r.returncode == 0, r.stderr
    assert any((xdg / "parity").rglob("*.onnx"))  # the fp16 conversion was cached there
    assert list(read_only_dir.iterdir()) == []


def test_an_unwritable_cache_names_the_folder_and_the_option(tmp_path, read_only_dir, lenet_onnx):
    r = parity("compare", lenet_onnx, "--ref", "ort", "--target", "ort-fp16", "-q",
               env={"XDG_CACHE_HOME": str(read_only_dir / "c")})
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("parity:")]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert str(read_only_dir / "c" / "parity") in lines[0] and "--workdir" in lines[0]
    r = parity("compare", lenet_onnx, "--ref", "ort", "--target", "ort-fp16", "--workdir", read_only_dir)
    assert r.returncode == 1 and f"--workdir {read_only_dir}" in r.stderr and "cannot be written" in r.stderr


def test_a_model_at_a_newer_ir_version_than_the_runtime_reads_still_runs(capsys, tmp_path, lenet_onnx):
    import onnx

    from parity.lib.onnx.convert import max_ir_version

    m = onnx.load(str(lenet_onnx))
    m.ir_version = max_ir_version() + 1  # what a newer onnx writes; onnxruntime refuses it as it is
    onnx.save(m, str(tmp_path / "new.onnx"))
    before = (tmp_path / "new.onnx").read_bytes()
    rc, out, err = cli(capsys, "compare", tmp_path / "new.onnx", "--ref", "ort", "--target", "ort-fp16",
                       "--workdir", tmp_path / "cache", "--json", tmp_path / "r.json")
    assert rc == 0 and "layers compared" in out, err
    assert any(f"IR version {m.ir_version}" in ln and "note" in ln for ln in err), err
    assert (tmp_path / "new.onnx").read_bytes() == before  # the user's file is left as it was
    lowered = list((tmp_path / "cache" / "onnx").glob("new-ir*.onnx"))
    assert len(lowered) == 1 and onnx.load(str(lowered[0])).ir_version == max_ir_version()


# -- memory --------------------------------------------------------------------------------------

def test_a_run_too_large_for_the_machine_is_refused_with_the_figure(capsys, tmp_path):
    rc, _out, err = cli(capsys, "compare", f"{ZOO}:lenet", "--target", "torch-fp16", "--input-shape",
                        "x:1x3x100000x100000", "--workdir", tmp_path / "cache")
    assert rc == 2 and len(err) == 1, err
    assert "GiB" in err[0] and "--input-shape" in err[0] and "x:1x3x100000x100000" in err[0] and "--force" in err[0]
    assert "MemoryError" not in err[0] and "internal" not in err[0]


def test_memory_estimate_and_verdict():
    n = 3 * 20000 * 20000
    parts = estimate_memory([InputSpec("x", (1, 3, 20000, 20000), "float32")], 1, 1000, random=True)
    # the float32 input; two models; random draws are float64 (8 bytes) before the cast, as large as
    # the two input-sized activations (4 bytes, each side) held while scoring
    assert parts == {"inputs": 4 * n, "models": 2000, "activations": 8 * n}
    assert memory_verdict(10, 9) == "refuse" and memory_verdict(6, 10) == "warn" and memory_verdict(5, 10) == "ok"
    assert memory_verdict(10 ** 15, None) == "ok"  # nothing known: no guess

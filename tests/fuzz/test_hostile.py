"""Hostile command lines and files (issue 17, data safety): outputs aimed at inputs, and zip bombs.

An output path that names an input (the same path, a symlink, a hard link, a folder holding it)
must be refused before anything runs, as a usage error naming both, and the input left byte for
byte as it was. A compressed ``.npz`` that declares gigabytes must be judged by its headers, before
numpy decompresses a byte of data.
"""
import hashlib
import math
import os
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from fuzzing import scratch
from support import cli, tiny_onnx

from parity.contract.errors import ParityError, UsageError

ROOT = Path(__file__).resolve().parents[2]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- outputs against inputs: the rule, fuzzed over layouts and names -------------------------------

_NAME = st.text(alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters=" -_é"),
                min_size=1, max_size=12).filter(lambda n: n.strip(" ") == n and n not in (".", ".."))

#: how the output names the input, and whether that must be refused
_ALIASES = {
    "same": True, "dotted": True, "symlink": True, "hardlink": True, "symlinked-folder": True,
    "parent-folder": True, "grandparent-folder": True,
    "sibling-new": False, "sibling-existing": False, "prefix-folder": False, "elsewhere": False,
}


@given(name=_NAME, folder=_NAME, alias=st.sampled_from(sorted(_ALIASES)), input_is_folder=st.booleans())
def test_an_output_aliasing_an_input_is_refused_and_nothing_else(name, folder, alias, input_is_folder):
    from parity.core.preflight import check_no_clobber

    with scratch() as d:
        base = d / "a" / folder
        base.mkdir(parents=True)
        src = base / f"{name}.npz"
        if input_is_folder:
            src.mkdir()
            (src / "f0.npy").write_bytes(b"data")
        else:
            src.write_bytes(b"data")
        other = base / f"{name}.other"
        other.write_bytes(b"x")
        out = {"same": src, "dotted": base / ".." / folder / "." / src.name,
               "parent-folder": base, "grandparent-folder": d / "a",
               "sibling-new": base / f"{name}.json", "sibling-existing": other,
               "prefix-folder": d / "a" / (folder + "x"), "elsewhere": d / "b.json"}.get(alias)
        if alias == "symlink":
            out = d / "link"
            out.symlink_to(src)
        elif alias == "hardlink":
            if input_is_folder:  # a folder has no hard links: the nearest case is a file inside it
                out = src / "f0.npy"
            else:
                out = d / "hard"
                os.link(src, out)
        elif alias == "symlinked-folder":
            (d / "lf").symlink_to(base)
            out = d / "lf" / src.name
        refused = _ALIASES[alias]
        try:
            check_no_clobber([("--json", str(out))], [("--inputs", str(src))])
            outcome = False
        except UsageError as e:
            msg = str(e)
            assert "\n" not in msg and str(src) in msg and "--json" in msg, msg
            outcome = True
        assert outcome == refused, (alias, input_is_folder, out, src)


# -- outputs against inputs: the real command line, each input class of the issue ----------------

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny ONNX model, its feeds, a model factory, a dataset, mapping and config files."""
    d = tmp_path_factory.mktemp("hostile")
    tiny_onnx(d / "tiny.onnx")
    np.savez(d / "in.npz", x=np.ones((2, 4), np.float32))
    (d / "feeds").mkdir()
    np.savez(d / "feeds" / "a.npz", x=np.ones((2, 4), np.float32))
    (d / "mymodels.py").write_text("import torch\n\ndef net():\n    return torch.nn.Sequential(torch.nn.Linear(4, 3))\n")
    (d / "data.py").write_text("import numpy as np\n\ndef feeds():\n    yield {'x': np.ones((2, 4), np.float32)}\n")
    (d / "map.toml").write_text("[pairs]\n")
    (d / "cfg.toml").write_text("[options]\n")
    import torch
    torch.save({"0.weight": torch.ones(3, 4), "0.bias": torch.zeros(3)}, d / "sd.pt")
    (d / "link.npz").symlink_to(d / "in.npz")
    os.link(d / "in.npz", d / "hard.npz")
    (d / "dumps" / "ref").mkdir(parents=True)
    np.save(d / "dumps" / "ref" / "a.npy", np.ones(3, np.float32))
    return d


RUN = ["--ref", "ort", "--target", "ort"]
CASES = {  # command line (relative to the work folder), the input it would destroy
    "json-over-inputs": (["compare", "tiny.onnx", *RUN, "--inputs", "in.npz", "--json", "in.npz"], "in.npz"),
    "html-over-model": (["compare", "tiny.onnx", *RUN, "--inputs", "in.npz", "--html", "tiny.onnx"], "tiny.onnx"),
    "csv-over-model-source": (["compare", "mymodels.py:net", "--target", "torch", "--input-shape", "1x4",
                               "--csv", "mymodels.py"], "mymodels.py"),
    "csv-over-module-source": (["compare", "mymodels:net", "--target", "torch", "--input-shape", "1x4",
                                "--csv", "mymodels.py"], "mymodels.py"),
    "json-through-a-symlink": (["compare", "tiny.onnx", *RUN, "--inputs", "link.npz", "--json", "in.npz"], "in.npz"),
    "csv-on-a-hard-link": (["compare", "tiny.onnx", *RUN, "--inputs", "in.npz", "--csv", "hard.npz"], "in.npz"),
    "save-ref-over-the-model-folder": (["compare", "tiny.onnx", *RUN, "--inputs", "in.npz", "--save-ref", "."],
                                       "tiny.onnx"),
    "json-over-a-file-of-the-inputs-folder": (["compare", "tiny.onnx", *RUN, "--inputs", "feeds", "--json",
                                               "feeds/a.npz"], "feeds/a.npz"),
    "json-over-the-dataset-source": (["compare", "tiny.onnx", *RUN, "--inputs", "data.py:feeds", "--json", "data.py"],
                                     "data.py"),
    "save-target-over-mapping": (["compare", "tiny.onnx", *RUN, "--mapping", "map.toml", "--save-target", "map.toml",
                                  "--save-format", "npz"], "map.toml"),
    "json-over-config": (["compare", "tiny.onnx", *RUN, "--config", "cfg.toml", "--json", "cfg.toml"], "cfg.toml"),
    "json-over-calibration": (["compare", "tiny.onnx", "--ref", "ort", "--target", "ort-int8", "--calibration",
                               "in.npz", "--json", "in.npz"], "in.npz"),
    "json-over-state-dict": (["compare", "mymodels:net", "--target", "torch", "--input-shape", "1x4",
                              "--state-dict", "sd.pt", "--json", "sd.pt"], "sd.pt"),
    "fix-write-config-over-inputs": (["fix", "tiny.onnx", "--ref", "ort", "--target", "ort-fp16", "--inputs",
                                      "in.npz", "--write-config", "in.npz"], "in.npz"),
    "fix-write-model-over-model": (["fix", "tiny.onnx", "--ref", "ort", "--target", "ort-fp16",
                                    "--write-model", "tiny.onnx"], "tiny.onnx"),
    "repro-out-over-the-model-folder": (["repro", "tiny.onnx", "mm", "--out", "."], "tiny.onnx"),
    "analyze-json-into-a-dump": (["analyze", "dumps/ref", "dumps/ref", "--json", "dumps/ref/a.npy"],
                                 "dumps/ref/a.npy"),
}


_OUTPUT_OPTIONS = ("--json", "--html", "--csv", "--save-ref", "--save-target", "--write-config", "--write-model",
                   "--out")


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_output_over_an_input_is_a_usage_error_and_the_input_survives(case, work, capsys, monkeypatch):
    args, victim = CASES[case]
    output = args[next(i for i, a in enumerate(args) if a in _OUTPUT_OPTIONS) + 1]
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    before = {p: _digest(p) for p in work.rglob("*") if p.is_file()}
    extra = [] if args[0] == "analyze" else ["--workdir", str(work / ".cache")]
    rc, out, err = cli(capsys, *args, *extra)
    assert rc == 2, (rc, err)
    assert len(err) == 1 and err[0].startswith("parity: error:"), err
    assert "would" in err[0] and output in err[0] and victim in err[0], err[0]  # names both
    after = {p: _digest(p) for p in work.rglob("*") if p.is_file() and ".cache" not in p.parts}
    assert after == before, "an input changed or a file appeared"
    assert "Traceback" not in out


# -- zip bombs --------------------------------------------------------------------------------------

def _bomb(path: Path, shape: tuple[int, ...], name: str = "x") -> Path:
    """An honest .npz whose member declares ``shape`` float32 zeros, deflated (about 1/1000 of its size)."""
    n = math.prod(shape) * 4
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": shape})
            chunk = bytes(4 << 20)
            for _ in range(n // len(chunk)):
                fh.write(chunk)
            fh.write(bytes(n % len(chunk)))
    return path


def test_a_zip_bomb_of_the_wrong_shape_is_refused_from_its_header(tmp_path):
    """1.5 GiB declared in a few MB: refused naming the shape, and the process never holds the data."""
    tiny_onnx(tmp_path / "tiny.onnx")
    rows = (3 << 29) // (5 * 4)  # x is [N, 4]; the bomb is [rows, 5]: 1.5 GiB
    bomb = _bomb(tmp_path / "bomb.npz", (rows, 5))
    assert bomb.stat().st_size < 20 << 20
    # a wrapper process whose only child is parity: its children's peak RSS is parity's
    probe = textwrap.dedent(f"""
        import resource, subprocess, sys
        r = subprocess.run([sys.executable, "-m", "parity", "compare", "tiny.onnx", "--ref", "ort", "--target", "ort",
                            "--inputs", "bomb.npz", "--workdir", "cache"], capture_output=True, text=True)
        sys.stderr.write(r.stderr)
        print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
    """)
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    rc, peak = map(int, r.stdout.split())
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert rc == 1 and len(lines) == 1, r.stderr
    assert "bomb.npz" in lines[0] and f"[{rows}, 5]" in lines[0] and "no data was read" in lines[0], lines[0]
    assert peak < (3 << 29), f"peak RSS {peak} bytes: the data was decompressed"


def test_a_zip_bombs_declared_size_counts_not_its_size_on_disk(tmp_path):
    """The memory estimate reads headers: 256 MiB declared in under 1 MB, found without decompressing it."""
    from parity.core.compare import CompareSettings, _check_size
    from parity.core.inputs import declared_arrays

    rows = (1 << 28) // 16
    bomb = _bomb(tmp_path / "in.npz", (rows, 4))
    disk = bomb.stat().st_size
    tracemalloc.start()
    try:
        declared = declared_arrays(bomb)
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    shape, dtype = declared["x"]
    assert shape == (rows, 4) and dtype == np.float32
    assert peak < 16 << 20, f"{peak} bytes allocated while reading headers"
    tiny_onnx(tmp_path / "tiny.onnx")
    s = CompareSettings(model=str(tmp_path / "tiny.onnx"), ref="ort", target="ort", inputs=str(bomb))
    # a machine with 100x the file's size free still cannot hold the 256 MiB it declares
    with pytest.raises(UsageError) as e:
        _check_size(s, None, available=100 * disk)
    msg = str(e.value)
    assert "--force" in msg and str(bomb) in msg and "256.0 MiB" in msg, msg
    _check_size(s, None, available=64 << 30)  # room for it: no refusal
    s.force = True
    _check_size(s, None, available=100 * disk)  # --force: noted, not refused


def test_a_complex_input_is_refused_with_one_line(tmp_path, capsys):
    """Before: numpy's ComplexWarning and the imaginary part dropped, exit 0. Now refused from the header."""
    tiny_onnx(tmp_path / "tiny.onnx")
    np.savez(tmp_path / "c.npz", x=(np.ones((2, 4)) + 1j).astype(np.complex64))
    np.save(tmp_path / "c.npy", (np.ones((2, 4)) + 1j).astype(np.complex128))
    for f in ("c.npz", "c.npy"):
        rc, _out, err = cli(capsys, "compare", tmp_path / "tiny.onnx", "--ref", "ort", "--target", "ort",
                            "--inputs", tmp_path / f, "--workdir", tmp_path / "cache")
        assert rc == 1 and len(err) == 1 and "complex" in err[0] and f in err[0], err


def test_a_dataset_yielding_complex_arrays_is_refused():
    from parity.contract.source import InputSpec
    from parity.core.inputs import check_feed

    with pytest.raises(ParityError, match="complex"):
        check_feed({"x": np.ones((1, 4), np.complex64)}, [InputSpec("x", (None, 4), "float32")], "dataset d item 0")

"""Bad input at the command line: one line naming the file and the problem, exit 1 (2 for usage)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def parity(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "parity", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT)


def _good(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "conv1.txt").write_text("[1, 2, 2]\n1 2\n3 4\n")
    (folder / "prob.txt").write_text("[1, 3]\n0.1 0.2 0.7\n")
    return folder


@pytest.mark.parametrize("content,msg", [
    ("[1, 2, 2]\n1 2\n3\n", "needs 4"),            # value count does not match the shape line
    ("[1, 2, 2]\n1 2\n3 abc\n", "abc"),               # non-numeric token
    ("", "empty"),                                    # empty / truncated file
    ("1, 2\n", "shape"),                              # garbled shape line
])
def test_bad_text_dump_is_one_line_naming_the_file(tmp_path, content, msg):
    ref = _good(tmp_path / "ref")
    tgt = _good(tmp_path / "tgt")
    (tgt / "conv1.txt").write_text(content)
    r = parity("analyze", ref, tgt)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "conv1.txt" in lines[0] and msg in lines[0].lower()
    assert "Traceback" not in r.stderr


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    ref = _good(tmp_path / "ref")
    r = parity("analyze", ref, tmp_path / "empty")
    assert r.returncode == 1 and "empty" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = parity("analyze", ref, tmp_path / "nope")
    assert r.returncode == 1 and "nope" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_usage_errors_exit_2(tmp_path):
    r = parity("analyze")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    ref = _good(tmp_path / "ref")
    r = parity("analyze", ref, ref, "--threshold", "high")
    assert r.returncode == 2 and "--threshold" in r.stderr


def test_unknown_metric_lists_known_ones(tmp_path):
    ref = _good(tmp_path / "ref")
    r = parity("analyze", ref, ref, "--metrics", "cosin")
    # an unknown name on the command line is a usage error (README "Exit codes")
    assert r.returncode == 2 and "unknown metric 'cosin'" in r.stderr and "cosine" in r.stderr


def test_report_is_not_half_written_on_failure(tmp_path):
    ref = _good(tmp_path / "ref")
    out = tmp_path / "report.json"
    out.write_text("previous report\n")
    tgt = _good(tmp_path / "tgt")
    (tgt / "prob.txt").write_text("[1, 3]\n0.1 x 0.7\n")
    r = parity("analyze", ref, tgt, "--json", out)
    assert r.returncode == 1
    assert out.read_text() == "previous report\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []


def test_single_folder_layout_with_tags(tmp_path):
    d = tmp_path / "both"
    d.mkdir()
    x = np.linspace(-1, 1, 12, dtype=np.float32)
    for name, arr in (("conv1", x), ("prob", x[:4])):
        np.save(d / f"{name}_fp32.npy", arr)
        np.save(d / f"{name}_fp16.npy", arr.astype(np.float16))
    r = parity("analyze", d, "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    import json

    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["reference"] == "fp32" and rep["target"] == "fp16"
    assert [l["name"] for l in rep["layers"]] == ["conv1", "prob"]


def test_an_error_quoting_a_name_with_line_breaks_stays_one_line(tmp_path):
    """Names come from user files and paths; a newline in one must not split the error line."""
    bad = tmp_path / "ref\nfolder\r"
    r = parity("analyze", bad, tmp_path / "other")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("parity: error:"), r.stderr
    assert "ref\\nfolder\\r" in lines[0]

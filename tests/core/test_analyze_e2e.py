"""`parity analyze` end to end on dumps that parity itself wrote from a real model's FP32 and FP16 runs."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import torch

from parity.core.dumps import write_dump  # noqa: E402
from parity.core.registry import get_source  # noqa: E402
from parity.contract.source import RunConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    """FP32 and FP16 runs of the sampleMNIST-shaped LeNet, written as TensorRT-style text dumps."""
    from parity.core import registry as plugins

    plugins.reset()
    torch.manual_seed(0)
    from parity.examples.lenet import build

    model = build().eval()
    root = tmp_path_factory.mktemp("dumps")
    torch.jit.save(torch.jit.script(model), str(root / "lenet.pt"))
    cfg = RunConfig(model=str(root / "lenet.pt"), workdir=root / "cache")
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    for src, name in (("torch", "fp32"), ("torch-fp16", "fp16")):
        write_dump(get_source(src).run(cfg, {"x": x}), root / name, fmt="trt-text")
    return root


def parity(*args):
    return subprocess.run([sys.executable, "-m", "parity", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)


def test_analyze_prints_table_first_divergence_and_writes_reports(dumps, tmp_path):
    # the recipe's text files: first line the shape, then values
    first = (dumps / "fp32" / "conv1.txt").read_text().splitlines()[0]
    assert first == "[2, 20, 24, 24]"
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    # --rms-tol 0: the recipe's purely relative Similarity%, which fails some layers here
    r = parity("analyze", dumps / "fp32", dumps / "fp16", "--metrics", "rel-diff,cosine", "--rms-tol", "0",
               "--threshold", "rel-diff=99.99", "--json", out_json, "--csv", out_csv)
    assert r.returncode == 1 and "FAIL" in r.stderr, r.stderr  # layers below the threshold: exit 1
    rep = json.loads(out_json.read_text())
    names = [l["name"] for l in rep["layers"]]
    assert names[:8] == ["conv1", "pool1", "conv2", "pool2", "ip1", "relu", "ip2", "prob"]
    # independent check of one row: rel-diff share computed here from the dump files
    ref = np.loadtxt((dumps / "fp32" / "conv2.txt").read_text().splitlines()[1:]).ravel()
    tgt = np.loadtxt((dumps / "fp16" / "conv2.txt").read_text().splitlines()[1:]).ravel()
    share = 100.0 * np.mean(np.abs(tgt - ref) <= 0.1 * np.abs(ref))
    row = next(l for l in rep["layers"] if l["name"] == "conv2")
    assert row["values"]["rel-diff"] == pytest.approx(share, abs=1e-9)
    first_bad = next(l["name"] for l in rep["layers"] if l["values"]["rel-diff"] < 99.99)
    assert rep["first_divergent"] == first_bad
    line = next(l for l in r.stdout.splitlines() if f" {first_bad} " in l)
    assert "first divergence" in line and "2x20x" in r.stdout  # the table writes shapes as CSV and HTML do
    rows = list(csv.DictReader(out_csv.open()))
    assert [x["name"] for x in rows] == names


def test_fail_under_sets_the_exit_code(dumps):
    ok = parity("analyze", dumps / "fp32", dumps / "fp16", "--metrics", "cosine", "--fail-under", "0.99", "-q")
    assert ok.returncode == 0, ok.stderr
    bad = parity("analyze", dumps / "fp32", dumps / "fp16", "--metrics", "cosine", "--fail-under", "0.99999999",
                 "-q")
    assert bad.returncode == 1 and "FAIL" in bad.stderr
    # a distance fails when it is above the bound
    bad = parity("analyze", dumps / "fp32", dumps / "fp16", "--metrics", "max-abs", "--fail-under", "1e-9", "-q")
    assert bad.returncode == 1 and "above" in bad.stderr

"""A new ONNX consumer is one plugin package and no edit elsewhere.

``parity_onnx_reference`` (beside this file) registers a source that runs models with ONNX's own
reference evaluator, using only parity's contract and shared ONNX library. It is installed the way
pip installs a package (module plus ``*.dist-info`` with an entry point, on ``PYTHONPATH``), so
discovery goes through ``importlib.metadata``; then the real CLI compares a torch model against it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
ZOO = ROOT / "tests" / "models" / "zoo.py"
PKG = "parity_onnx_reference"


def install(site: Path) -> None:
    shutil.copytree(HERE / PKG, site / PKG, ignore=shutil.ignore_patterns("__pycache__"))
    info = site / "parity_onnx_reference-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: parity-onnx-reference\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[parity]\nonnx-reference = {PKG}\n")
    (info / "RECORD").write_text(f"{PKG}/__init__.py,,\n")


def _parity(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "parity", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_plugin_uses_only_the_contract_and_the_shared_onnx_library():
    src = (HERE / PKG / "__init__.py").read_text()
    imports = [line.split()[1] for line in src.splitlines() if line.startswith(("from parity", "import parity"))]
    assert imports and all(m == "parity" or m.startswith(("parity.contract", "parity.lib.onnx")) for m in imports)
    assert "parity_builtin" not in src


def test_onnx_consumer_from_an_entry_point_compares_against_torch(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install(site)
    listed = _parity(["plugins", "--json"], site, tmp_path)
    assert listed.returncode == 0, listed.stderr
    sources = {row["name"]: row for row in json.loads(listed.stdout)["source"]}
    assert sources["onnx-reference"]["package"] == "parity-onnx-reference 0.1"

    r = _parity(["compare", f"{ZOO}:lenet", "--ref", "torch", "--target", "onnx-reference",
                 "--json", "report.json", "--workdir", str(tmp_path / "cache")], site, tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((tmp_path / "report.json").read_text())
    rows = [l for l in rep["layers"] if l["ref_name"] and l["target_name"]]
    # every torch module of LeNet is found in the ONNX reference run, by export provenance
    modules = {"conv1", "pool1", "conv2", "pool2", "ip1", "relu", "ip2"}
    by_ref = {l["ref_name"]: l for l in rows}
    assert modules <= set(by_ref), sorted(by_ref)
    for name in modules:
        assert by_ref[name]["match"] in ("provenance", "exact", "output"), by_ref[name]
        # an fp32 ONNX reference evaluation of the same weights agrees with torch
        assert by_ref[name]["values"]["cosine"] > 0.99999, (name, by_ref[name]["values"])
    assert not any(np.isnan(l["values"].get("cosine", 0.0)) for l in rows)

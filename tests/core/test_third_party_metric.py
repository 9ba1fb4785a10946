"""A third-party metric, installed the way pip installs it, then used from the CLI.

The package is a module plus a ``*.dist-info`` folder (METADATA, entry_points.txt, RECORD)
on ``PYTHONPATH``: exactly what ``pip install`` leaves in site-packages, so discovery goes
through the real ``importlib.metadata`` entry-point path, not a test shortcut.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parity import ParityError, hookimpl
from parity.core import registry as plugins
from parity.contract.metric import Metric
from parity.lib.scoring import score_pair

EXAMPLE_MODULE = '''\
"""parity-example-metric: the largest relative error, as a parity metric."""
import numpy as np

from parity import hookimpl
from parity.contract.metric import Metric


class MaxRelMetric(Metric):
    name = "max-rel"
    description = "largest |t - r| / |r| over elements where r != 0 (lower is better)"
    higher_is_better = False

    def start(self, ctx):
        return [0.0]

    def update(self, state, chunk):
        nz = chunk.ref != 0
        if nz.any():
            state[0] = max(state[0], float((chunk.absdiff[nz] / chunk.absref[nz]).max()))
        return state

    def finish(self, state, ctx):
        return state[0]


@hookimpl
def register_metrics(register):
    register(MaxRelMetric())
'''

LAYERS = ("conv1", "relu1", "fc")


def install_example(site: Path) -> None:
    """Write the module and its dist-info into ``site`` as pip would."""
    (site / "parity_example_metric.py").write_text(EXAMPLE_MODULE)
    info = site / "parity_example_metric-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: parity-example-metric\nVersion: 0.1\n"
                                   "Requires-Dist: parity\n")
    (info / "entry_points.txt").write_text("[parity]\nexample-metric = parity_example_metric\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "top_level.txt").write_text("parity_example_metric\n")
    (info / "RECORD").write_text("parity_example_metric.py,,\n"
                                 "parity_example_metric-0.1.dist-info/METADATA,,\n"
                                 "parity_example_metric-0.1.dist-info/entry_points.txt,,\n"
                                 "parity_example_metric-0.1.dist-info/INSTALLER,,\n"
                                 "parity_example_metric-0.1.dist-info/top_level.txt,,\n"
                                 "parity_example_metric-0.1.dist-info/RECORD,,\n")


def max_rel(ref: np.ndarray, tgt: np.ndarray) -> float:
    r = ref.astype(np.float64).ravel()
    t = tgt.astype(np.float64).ravel()
    nz = r != 0
    return float(np.max(np.abs(t[nz] - r[nz]) / np.abs(r[nz])))


def run_parity(args: list[str], site: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PARITY_LOAD_PLUGINS", None)  # a real user's environment: every installed plugin
    env.pop("PARITY_DEBUG_HOOKS", None)
    env["PYTHONPATH"] = str(site) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "parity", *args], cwd=site, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    d = tmp_path / "site"
    d.mkdir()
    install_example(d)
    return d


def test_installed_plugin_is_listed(site):
    proc = run_parity(["plugins", "--json"], site)
    assert proc.returncode == 0, proc.stderr
    listed = {m["name"]: m for m in json.loads(proc.stdout)["metric"]}
    assert "max-rel" in listed and "cosine" in listed
    assert listed["max-rel"]["package"].startswith("parity-example-metric")
    assert listed["max-rel"]["plugin"] == "example-metric"
    assert listed["cosine"]["package"].startswith("parity ")

    table = run_parity(["plugins"], site)
    assert table.returncode == 0, table.stderr
    assert "max-rel" in table.stdout
    assert "parity-example-metric" in table.stdout or "parity_example_metric" in table.stdout


def test_installed_plugin_scores_dumps_from_the_cli(site, tmp_path):
    rng = np.random.default_rng(7)
    ref_dir, tgt_dir = tmp_path / "ref", tmp_path / "target"
    ref_dir.mkdir()
    tgt_dir.mkdir()
    arrays = {}
    for i, layer in enumerate(LAYERS):
        r = rng.standard_normal((2, 8, 5, 5)).astype(np.float32)
        t = (r * (1 + 0.01 * (i + 1) * rng.standard_normal(r.shape))).astype(np.float32)
        np.save(ref_dir / f"{layer}.npy", r)
        np.save(tgt_dir / f"{layer}.npy", t)
        arrays[layer] = (r, t)
    out = tmp_path / "report.json"
    proc = run_parity(["analyze", str(ref_dir), str(tgt_dir), "--metrics", "max-rel,cosine",
                       "--json", str(out)], site)
    assert proc.returncode in (0, 1), proc.stderr  # 1 would only mean a layer failed its threshold
    assert "Traceback" not in proc.stderr
    report = json.loads(out.read_text())
    assert "max-rel" in [m["name"] for m in report["metrics"]]
    rows = {row["name"]: row for row in report["layers"]}
    assert set(rows) == set(LAYERS)
    for layer, (r, t) in arrays.items():
        values = rows[layer]["values"]
        assert values["max-rel"] == pytest.approx(max_rel(r, t), rel=1e-12)
        r64, t64 = r.astype(np.float64).ravel(), t.astype(np.float64).ravel()
        cos = float(r64 @ t64 / (np.linalg.norm(r64) * np.linalg.norm(t64)))
        assert values["cosine"] == pytest.approx(cos, rel=1e-12)


# -- in-process registration ------------------------------------------------------------------

class PsnrMetric(Metric):
    """Peak signal-to-noise ratio, peak = max |ref|."""

    name = "psnr"
    description = "peak signal-to-noise ratio in dB, peak = max|ref| (higher is better)"
    higher_is_better = True
    default_threshold = 40.0

    def start(self, ctx):
        return [0.0, 0.0]

    def update(self, state, chunk):
        state[0] = max(state[0], float(chunk.absref.max()))
        state[1] += float(np.dot(chunk.diff, chunk.diff))
        return state

    def finish(self, state, ctx):
        mse = state[1] / ctx.finite_size
        return math.inf if mse == 0 else 10 * math.log10(state[0] ** 2 / mse)


class InProcessPlugin:
    @hookimpl
    def register_metrics(self, register):
        register(PsnrMetric())


class ClashingPlugin:
    @hookimpl
    def register_metrics(self, register):
        register(PsnrMetric(), name="cosine")


@pytest.fixture
def only_builtin_metrics(monkeypatch):
    """Load just the built-in metrics entry point, so sibling plugins cannot interfere."""
    monkeypatch.setenv("PARITY_LOAD_PLUGINS", "metrics")
    plugins.reset()
    yield
    plugins.reset()


def test_register_plugin_in_process(only_builtin_metrics, rng):
    plugin = InProcessPlugin()
    plugins.register_plugin(plugin, name="psnr-plugin")
    try:
        entry = plugins.registry()["metric"]["psnr"]
        assert entry.plugin == "psnr-plugin"
        assert entry.package == __name__.split(".")[0]
        ref = rng.standard_normal(10_001).astype(np.float32)
        tgt = (ref + 0.01 * rng.standard_normal(ref.size)).astype(np.float32)
        values, _ = score_pair(ref, tgt, [plugins.get_metric("psnr"), plugins.get_metric("cosine")],
                               chunk_elements=999)
        r, t = ref.astype(np.float64), tgt.astype(np.float64)
        want = 10 * np.log10(np.max(np.abs(r)) ** 2 / np.mean((t - r) ** 2))
        assert values["psnr"] == pytest.approx(want, rel=1e-12)
    finally:
        plugins.unregister_plugin(plugin)
    assert "psnr" not in plugins.registry()["metric"]
    assert "cosine" in plugins.registry()["metric"]


def test_duplicate_metric_name_is_an_error(only_builtin_metrics):
    plugin = ClashingPlugin()
    plugins.register_plugin(plugin, name="clashing")
    try:
        with pytest.raises(ParityError, match=r"cosine.*registered twice.*'metrics'.*'clashing'"):
            plugins.registry()
    finally:
        plugins.unregister_plugin(plugin)
    assert type(plugins.get_metric("cosine")).__name__ == "CosineMetric"

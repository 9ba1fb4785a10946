"""Diagnosis and `parity fix` end to end on models with a planted hazard (ONNX Runtime targets)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest



from parity.core.compare import CompareSettings, compare  # noqa: E402
from parity.core.fix import fix  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "models" / "zoo.py"


def settings(model, target, tmp_path, **kw):
    return CompareSettings(model=f"{ZOO}:{model}", ref="torch", target=target, workdir=str(tmp_path / "c"),
                           diagnose=True, random_inputs=2, **kw)


def test_fp16_overflow_is_the_culprit_and_the_fix_keeps_it(tmp_path):
    # strict fp16 storage: boost stores its out-of-range output in fp16 (as deployed on the CPU provider
    # the Mul runs in fp32 and the LayerNorm reading it is the culprit: next test)
    s = settings("fp16_hazard", "ort-fp16-strict", tmp_path)
    rep = compare(s)
    by = {r.name: r for r in rep.layers}
    boost = by["boost"]
    # the overflow trace names the layer whose reference values exceed fp16's range
    assert "boost" in rep.summary["overflow_layers"]
    assert boost.range["ref"]["absmax"] > 65504
    # the overflow is where the loss starts: the first culprit; the layers after it only inherit
    assert rep.summary["first_culprit"] == "boost" and boost.culprit_rank is not None
    assert set(rep.summary["culprits"]) <= {"boost", "norm"}
    for later in ("fc2", "head"):
        assert by[later].failing and by[later].culprit_rank is None
        assert by[later].local["cosine"] > 0.999
    res = fix(s, rep, "cosine", 0.999)
    assert res.passed and res.after >= 0.999
    assert not (res.before >= 0.999)  # NaN in the outputs before the fix
    assert {r.ref_name for r in res.rows} & {"boost", "norm"}
    assert len(res.kept) <= 2
    # the verified value is the measurement of exactly this set
    assert res.steps[-1].kept == res.kept and res.steps[-1].value == res.after


def test_fp16_overflow_as_deployed_names_the_layer_that_reads_it(tmp_path):
    """ONNX Runtime's CPU provider runs boost (a Mul) in fp32: its 1.7e5 becomes Inf only when cast to fp16 for
    the LayerNorm, which is then the culprit; the verdict names boost as the input beyond the format, and
    the layers after the LayerNorm are grouped under it."""
    rep = compare(settings("fp16_hazard", "ort-fp16", tmp_path))
    by = {r.name: r for r in rep.layers}
    assert rep.summary["culprits"][0] == rep.summary["first_culprit"] == "norm"
    ov = by["norm"].meta["overflow"]
    assert ov["input_from"] == "boost" and ov["input_absmax"] == by["boost"].range["ref"]["absmax"] > 65504
    assert "it reads boost" in rep.summary["first_culprit_cause"]
    for later in ("act", "fc2", "head"):
        assert by[later].culprit_rank is None and by[later].caused_by == "norm"


def test_int8_outlier_layer_is_found_and_the_fix_lifts_similarity(tmp_path):
    s = settings("int8_outlier", "ort-int8", tmp_path)
    rep = compare(s)
    by = {r.name: r for r in rep.layers}
    assert rep.summary["first_culprit"] in ("spiky", "act2")
    assert "outlier-heavy" in by["spiky"].range.get("risk", "") or "outlier-heavy" in by["act2"].range.get("risk", "")
    res = fix(s, rep, "cosine", 0.9999, max_steps=6)
    assert res.after > res.before + 1e-3  # measurably better outputs, re-measured
    assert res.kept and any(k for k in res.kept)


def test_fix_cli_prints_paste_forms_and_writes_a_config_compare_accepts(tmp_path):
    cfg = tmp_path / "fix.toml"
    args = [sys.executable, "-m", "parity", "fix", f"{ZOO}:fp16_hazard", "--ref", "torch", "--target", "ort-fp16",
            "--workdir", str(tmp_path / "c"), "--write-config", str(cfg)]
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Verified fix: keep" in r.stdout and "--layer-precisions" in r.stdout and ":fp32" in r.stdout
    assert "keep_fp32" in cfg.read_text()
    def compare_outputs(rc, *extra):
        out = tmp_path / f"r{len(extra)}.json"
        r = subprocess.run([sys.executable, "-m", "parity", "compare", f"{ZOO}:fp16_hazard", "--ref", "torch",
                            "--target", "ort-fp16", "--workdir", str(tmp_path / "c"), "--metrics", "cosine",
                            "-q", "--json", str(out), *extra], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == rc, r.stderr  # a comparison with NaN layers fails (exit 1)
        return next(l for l in json.loads(out.read_text())["layers"] if l["ref_name"] == "output")

    # the written config is what `compare --config` applies: the NaN outputs become right
    # (after the fix an intermediate fp16 tensor the capture materializes may still hold inf, which the
    # exit rule counts; the outputs are what the fix promises, so that run opts out with --exit-zero)
    before, after = compare_outputs(1), compare_outputs(0, "--config", str(cfg), "--exit-zero")
    assert before["status"] == "nonfinite"
    assert after["status"] == "ok" and after["values"]["cosine"] >= 0.999


# lower-is-better goals: the outputs' worst value must come down to the goal. Measured on this model:
# l2 ~3e-4 and max-abs ~1.5e-4 once the overflowing layer stays fp32; NaN before.
DISTANCE_GOALS = [("l2", 1e-3), ("max-abs", 1e-3)]


@pytest.mark.parametrize("metric,goal", DISTANCE_GOALS)
def test_fix_with_a_lower_is_better_primary_metric(tmp_path, metric, goal):
    s = settings("fp16_hazard", "ort-fp16", tmp_path, metrics=[metric, "cosine"])
    rep = compare(s)
    assert rep.primary.name == metric and not rep.primary.higher_is_better
    res = fix(s, rep, metric, goal)
    assert res.passed and res.after <= goal
    assert not (res.before <= goal)  # NaN in the outputs before the fix
    assert {r.ref_name for r in res.rows} & {"boost", "norm"} and len(res.kept) <= 2
    assert res.steps[-1].kept == res.kept and res.steps[-1].value == res.after


@pytest.mark.parametrize("metric,goal", DISTANCE_GOALS)
def test_fix_cli_with_a_distance_goal_is_verified_by_compare(tmp_path, metric, goal):
    cfg = tmp_path / "fix.toml"
    common = [f"{ZOO}:fp16_hazard", "--ref", "torch", "--target", "ort-fp16", "--workdir", str(tmp_path / "c")]
    r = subprocess.run([sys.executable, "-m", "parity", "fix", *common, "--metrics", f"{metric},cosine",
                        "--goal", f"{metric}={goal}", "--write-config", str(cfg)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Verified fix: keep" in r.stdout and f"<= {goal:g} (re-measured)" in r.stdout
    assert "keep_fp32" in cfg.read_text()

    def output_row(*extra):
        out = tmp_path / f"r{len(extra)}.json"
        r = subprocess.run([sys.executable, "-m", "parity", "compare", *common, "--metrics", metric,
                            "-q", "--json", str(out), "--exit-zero", *extra], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stderr  # --exit-zero: the NaN layers before the fix still exit 0
        return next(l for l in json.loads(out.read_text())["layers"] if l["ref_name"] == "output")

    # independent recomputation: compare with the written config reaches the goal at the output
    before, after = output_row(), output_row("--config", str(cfg))
    assert before["status"] == "nonfinite"
    assert after["status"] == "ok" and after["values"][metric] <= goal


# -- a ConvNeXt-style CNN: the middle conv overflows fp16 and a channel LayerNorm (permute, LayerNorm,
#    permute) reads it; the permute is an ONNX Transpose the torch model never names (target-only)

import torch  # noqa: E402
from torch import nn  # noqa: E402


class ChannelLN(nn.Module):
    """LayerNorm over the channels of NCHW, as ConvNeXt does it: permute, LayerNorm, permute back."""

    def __init__(self, c):
        super().__init__()
        self.ln = nn.LayerNorm(c)

    def forward(self, x):
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CnxOverflow(nn.Module):
    parity_input_shapes = {"x": (2, 3, 16, 16)}

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.norm0 = ChannelLN(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.mid = nn.Conv2d(16, 32, 1)
        self.norm1 = ChannelLN(32)
        self.act = nn.GELU()
        self.head = nn.Conv2d(32, 8, 1)
        with torch.no_grad():
            self.mid.weight.mul_(2e5)  # its outputs reach ~2.6e5, beyond fp16's 65504

    def forward(self, x):
        x = self.dw(self.norm0(self.stem(x)))
        return self.head(self.act(self.norm1(self.mid(x))))


def cnx_overflow():
    return CnxOverflow().eval()


CNX = f"{Path(__file__).resolve()}:cnx_overflow"


def test_fix_keeps_the_target_only_permute_that_reads_the_overflow(tmp_path):
    s = CompareSettings(model=CNX, ref="torch", target="ort-fp16", workdir=str(tmp_path / "c"), diagnose=True)
    rep = compare(s)
    transposes = {r.target_name for r in rep.layers if r.ref_name is None and r.target_name}
    res = fix(s, rep, "cosine", 0.999)
    assert res.passed and res.after >= 0.999 and not (res.before >= 0.999)
    # the Transpose reading the out-of-range conv output has no torch name; keeping it is the fix
    assert set(res.kept) & transposes
    assert "node_permute_2" in [r.meta.get("target_onnx_node") for r in res.rows]
    assert res.steps[-1].kept == res.kept and res.steps[-1].value == res.after
    # layers that add nothing alone were never tried: the search ends after one group
    assert res.tried == 1 and res.stopped == "the goal was met"


def test_fix_says_why_it_stopped(tmp_path):
    s = CompareSettings(model=CNX, ref="torch", target="ort-fp16", workdir=str(tmp_path / "c"), diagnose=True)
    rep = compare(s)
    short = fix(s, rep, "cosine", 1.0, max_steps=1)
    assert not short.passed and "--max-steps 1 reached" in short.stopped
    done = fix(s, rep, "cosine", 0.99999999999, max_steps=50)
    if not done.passed:  # every candidate tried: no advice to raise --max-steps
        assert "every candidate was tried" in done.stopped and "--max-steps" not in done.stopped
        assert done.tried == done.candidates < 50


def test_fix_cli_verifies_the_convnext_fix(tmp_path):
    r = subprocess.run([sys.executable, "-m", "parity", "fix", CNX, "--ref", "torch", "--target", "ort-fp16",
                        "--workdir", str(tmp_path / "c"), "-q"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Verified fix: keep" in r.stdout and "node_permute_2:fp32" in r.stdout
    assert "No verified fix" not in r.stdout

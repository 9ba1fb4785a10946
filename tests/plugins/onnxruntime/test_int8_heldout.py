"""int8 root causes on held-out architectures (tests/models/heldout.py, not the dev zoo), torch vs ort-int8.

- a causal decoder whose mask is built as Hugging Face builds it (float32's minimum above the diagonal and
  at padded keys: more than half of the scores), and an encoder with heavy padding (75% masked): the
  quantizer after the mask-add is calibrated on the mask constant, its scale is ~1e36 and every real score
  quantizes to 0. The diagnosis names that quantizer, not the Softmax after it; ``parity fix`` excludes
  the mask-adds (with the Softmax reading them) and prints int8 recipes only;
- a LayerNorm with one channel ~60x the others feeding a Linear: the outlier channel is named with its
  index and ratio, and the channels it leaves no resolution are counted.

Every figure is checked against the torch forward pass on the same inputs (hooks), independently of
parity's capture.
"""
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from parity.core.compare import CompareSettings, compare  # noqa: E402
from parity.core.fix import fix, write_fixed_model  # noqa: E402

HELD = Path(__file__).resolve().parents[2] / "models" / "heldout.py"
NEG = float(torch.finfo(torch.float32).min)


def _module():
    spec = importlib.util.spec_from_file_location("heldout", HELD)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


HO = _module()


def _feed(name):
    """The inputs every test of ``name`` compares (written to a file, so torch can rerun them)."""
    rng = np.random.default_rng(11)
    if name == "causal_decoder":
        return {"input_ids": rng.integers(0, 100, (2, HO.SEQ)).astype(np.int64)}
    shape = {"padded_encoder": (2, HO.SEQ, 12), "outlier_ln": (4, HO.SEQ, HO.HIDDEN)}[name]
    return {"x": rng.standard_normal(shape).astype(np.float32)}


def _settings(name, tmp, **kw):
    path = tmp / f"{name}.npz"
    if not path.exists():
        np.savez(path, **_feed(name))
    return CompareSettings(model=f"{HELD}:{name}", ref="torch", target="ort-int8", inputs=str(path),
                           workdir=str(tmp / "work"), diagnose=True, **kw)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("heldout")


@pytest.fixture(scope="module")
def reports(tmp):
    return {n: compare(_settings(n, tmp)) for n in ("causal_decoder", "padded_encoder", "outlier_ln")}


def _torch_scores(name):
    """Block 0's attention scores + mask and the mask, from the torch model run on the test's inputs."""
    model = getattr(HO, name)()
    seen = {}
    h = model.blocks[0].attn.register_forward_hook(lambda m, args, out: seen.update(x=args[0], mask=args[1]))
    with torch.no_grad():
        model(*(torch.from_numpy(v) for v in _feed(name).values()))
        h.remove()
        attn = model.blocks[0].attn
        x, mask = seen["x"], seen["mask"]
        b, t, _ = x.shape

        def split(y):
            return y.view(b, t, attn.heads, attn.d).transpose(1, 2)

        scores = split(attn.q(x)) @ split(attn.k(x)).transpose(-1, -2) / math.sqrt(attn.d)
        full = scores + mask
    return full.numpy(), (full == NEG).numpy()


@pytest.mark.parametrize("name", ["causal_decoder", "padded_encoder"])
def test_the_mask_adds_quantizer_is_the_first_culprit(reports, name):
    rep = reports[name]
    by = {r.name: r for r in rep.layers}
    first = by[rep.summary["first_culprit"]]
    assert first.target_op_type == "Add" and first.status == "target-only", first.name
    full, masked = _torch_scores(name)
    if name == "causal_decoder":
        assert masked.mean() > 0.5  # the mask constant is the majority of the scores
    q = first.meta["local_quantizer"]
    # the scale is the mask constant's: (0 - min) / 255, ~1.3e36
    assert q["scale"] == pytest.approx(-NEG / 255, rel=1e-6)
    # the useful values are block 0's real scores, as torch computes them
    useful = full[~masked]
    assert q["sentinels"] == int(masked.sum())
    assert q["useful_absmax"] == pytest.approx(float(np.abs(useful).max()), rel=1e-4)
    assert q["needed_scale"] == pytest.approx((max(useful.max(), 0) - min(useful.min(), 0)) / 255, rel=1e-4)
    assert q["scale_ratio"] > 1e30 and q["round_to_zero"] == 1.0  # every real score rounds to 0
    assert q["tensor"] == first.target_name and q["producer_op"] == "Add"
    # the whole tensor reads cosine 1 (the mask dominates it); its useful part is gone
    assert first.meta["local_whole"]["cosine"] > 0.9999 and first.local["cosine"] < 0.1
    cause = rep.summary["first_culprit_cause"]
    for words in (q["node"], q["producer"], "quantize to 0", "mask-constant", "what its useful values need"):
        assert words in cause, words
    # Softmax only reads the destroyed scores: never the first culprit, never before the mask-add
    soft = [r for r in rep.layers if r.target_op_type == "Softmax"]
    assert soft and all(r.order > first.order and r.culprit_rank != 1 for r in soft)
    assert rep.summary["first_culprit"] not in {r.name for r in soft}
    assert any(q["node"] in (r.meta.get("input_cause") or "") for r in soft)


def test_the_outlier_channel_is_named_with_index_and_ratio(reports):
    rep = reports["outlier_ln"]
    by = {r.name: r for r in rep.layers}
    model = HO.outlier_ln()
    seen = {}
    h = model.ln.register_forward_hook(lambda m, i, o: seen.update(y=o.detach().numpy()))
    with torch.no_grad():
        model(torch.from_numpy(_feed("outlier_ln")["x"]))
    h.remove()
    y = seen["y"].astype(np.float64)
    cam = np.abs(y).max(axis=(0, 1))
    scale = (max(y.max(), 0) - min(y.min(), 0)) / 255  # min/max calibration on the same feed
    ln = by["ln"]
    q = ln.meta["local_quantizer"]
    assert q["scale"] == pytest.approx(scale, rel=1e-4)
    oc = q["outlier"]
    assert (oc["axis"], oc["channel"]) == (2, HO.OUTLIER_CHANNEL)
    assert oc["ratio"] == pytest.approx(cam.max() / np.median(cam), rel=1e-4) and oc["ratio"] > 30
    assert oc["dead"] == int(np.count_nonzero(cam < scale / 2)) == len(HO.QUIET_CHANNELS)
    # the outlier channel hides the loss from the whole tensor's cosine; the other channels show it
    assert ln.meta["local_whole"]["cosine"] > 0.999 > ln.meta["local_inliers"]["cosine"]
    assert rep.summary["first_culprit"] == "ln"
    cause = rep.summary["first_culprit_cause"]
    assert f"channel {HO.OUTLIER_CHANNEL}" in cause and f"{oc['ratio']:.0f}x" in cause
    assert f"{len(HO.QUIET_CHANNELS)} of {HO.HIDDEN} channels round entirely to 0" in cause
    # the Linear reading it is told where its input lost precision
    readers = [r for r in rep.layers if r.target_op_type == "MatMul" and q["tensor"] in (r.meta.get("local_input_quantizers") or [])]
    assert readers and all(q["node"] in r.meta["input_cause"] for r in readers)


def _cos(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_fix_excludes_the_mask_adds_and_the_fixed_model_reaches_the_goal(reports, tmp):
    import onnx
    import onnxruntime as ort

    s = _settings("causal_decoder", tmp)
    rep = reports["causal_decoder"]
    res = fix(s, rep, "cosine", 0.999)
    assert res.passed and res.before < 0.99 <= 0.999 <= res.after
    adds = {r.target_name for r in rep.layers if r.target_op_type == "Add"
            and (r.meta.get("local_quantizer") or {}).get("sentinels")}
    assert len(adds) == 2 and adds <= set(res.kept)
    # independently: the written model, run by onnxruntime, against the torch output
    path = write_fixed_model(s, res, str(tmp / "fixed.onnx"))
    feed = _feed("causal_decoder")
    with torch.no_grad():
        want = HO.causal_decoder()(torch.from_numpy(feed["input_ids"])).numpy()
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert _cos(want, got) >= 0.999
    m = onnx.load(path)
    quantized = {n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    assert not adds & quantized  # the mask-added scores are no longer quantized


def test_fix_outlier_keeps_the_layernorm_and_its_linear(reports, tmp):
    rep = reports["outlier_ln"]
    res = fix(_settings("outlier_ln", tmp), rep, "cosine", 0.999)
    assert res.passed and res.before < 0.999 <= res.after
    ln = {r.name: r for r in rep.layers}["ln"]
    assert ln.target_name in res.kept
    forms = res.forms("ort-int8")
    assert "'ln.*'" in forms["ModelOpt torch: quantizers to disable"]


def test_fix_cli_prints_int8_recipes_only(tmp):
    s = _settings("causal_decoder", tmp)
    r = subprocess.run([sys.executable, "-m", "parity", "fix", s.model, "--ref", "torch", "--target", "ort-int8",
                        "--inputs", s.inputs, "--workdir", s.workdir, "--goal", "cosine=0.999", "--exit-zero"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Verified fix: keep" in out, out[-2000:]
    tail = out[out.index("Verified fix"):]
    assert "nodes_to_exclude=[" in tail and "quantize_static(" in tail and "--int8" in tail
    assert "modelopt.onnx.quantization.quantize(" in tail and "ModelOpt torch" in tail
    for fp16 in ("node_block_list", "float16", "AutoCast", "autocast", "convert_to_mixed_precision"):
        assert fp16 not in tail, fp16

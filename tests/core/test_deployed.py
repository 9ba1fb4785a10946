"""The deployed-outputs check (parity.core.deployed): capture must never change the answer unnoticed.

Unit level: every figure against numpy by hand, and the statistics merge to the same values however
the feeds are sharded. End to end: ONNX Runtime int8 marks every DequantizeLinear output, which keeps
the session from fusing QDQ pairs into integer kernels; the report must see that the captured outputs
are not the deployed ones, say by how much (checked against a plain session on the deployed file),
and judge the deployed outputs.
"""
import itertools
import json

import numpy as np
import pytest

from parity.contract.records import Activation
from parity.core.compare import gate
from parity.core.deployed import PERTURB_RTOL, DeployedStats, relative_diff
from parity.core.engine import metric_infos, resolve_metrics
from support import cli


def _out(name, arr):
    return {0: Activation(name, np.asarray(arr, dtype=np.float32), meta={"is_output": True, "output_position": 0})}


def _cos(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def _feeds(n=6):
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        ref = rng.standard_normal(40).astype(np.float32)
        dep = ref + rng.standard_normal(40).astype(np.float32) * 0.01 * (i + 1)
        cap = dep.copy()
        if i == 4:
            cap[7] += 0.5  # capture changed this feed's output
        if i == 2:
            dep[3] = np.inf  # the deployed run overflows where the captured one does not
        out.append((i, ref, cap, dep))
    return out


def test_values_are_numpy_values_and_sharding_never_changes_them():
    ms = resolve_metrics(["cosine", "max-abs"])
    infos = metric_infos(ms, {})
    feeds = _feeds()

    def fold(order):
        total = DeployedStats()
        for shard in order:
            part = DeployedStats()
            for i, ref, cap, dep in shard:
                part.add(i, _out("y", ref), _out("y", cap), _out("y", dep), ms, infos)
            total.merge(part, infos)
        return total.summary(infos[0])

    one = fold([feeds])
    for perm in itertools.permutations(range(3)):
        shards = [feeds[0:2], feeds[2:5], feeds[5:]]
        assert fold([shards[p] for p in perm]) == one
    assert fold([[f] for f in reversed(feeds)]) == one
    o = one["outputs"][0]
    # worst deployed cosine over finite feeds, checked by hand (feed 2 holds an Inf: its cosine is NaN)
    finite = [(i, _cos(r, d)) for i, r, _c, d in feeds if np.isfinite(d).all()]
    assert o["values"]["max-abs"] == pytest.approx(max(float(np.abs(r - d).max()) for i, r, _c, d in feeds
                                                       if np.isfinite(d).all()))
    assert min(v for _, v in finite) >= o["values"]["cosine"] or np.isnan(o["values"]["cosine"])
    assert o["nonfinite"] == 1 and o["captured_nonfinite"] == 0
    want = max(float(np.abs(c - d)[np.isfinite(d)].max() / np.abs(d[np.isfinite(d)]).max())
               for _i, _r, c, d in feeds)
    assert o["capture_diff"] == pytest.approx(want) and want > PERTURB_RTOL
    assert one["perturbed"] is True and o["perturbed"] is True


def test_equal_outputs_are_not_perturbed_and_noise_raises_the_tolerance():
    ms = resolve_metrics(["cosine"])
    infos = metric_infos(ms, {})
    ref = np.linspace(-1, 1, 50, dtype=np.float32)
    dep = ref * np.float32(1.001)
    st = DeployedStats()
    st.add(0, _out("y", ref), _out("y", dep), _out("y", dep), ms, infos)
    assert st.summary(infos[0])["perturbed"] is False
    cap = dep + np.float32(1e-3)  # 1e-3 of the magnitude: beyond 2**-13 ...
    st = DeployedStats()
    st.add(0, _out("y", ref), _out("y", cap), _out("y", dep), ms, infos)
    assert relative_diff(cap, dep) > PERTURB_RTOL and st.perturbed()
    st.noise = 2e-3  # ... but within a target's own run-to-run noise
    assert not st.perturbed()


def test_gate_judges_the_deployed_outputs_when_capture_perturbed():
    from parity.contract.report import LayerResult, Report

    infos = metric_infos(resolve_metrics(["cosine"]), {})
    row = LayerResult(name="a", ref_name="a", target_name="a", order=0, values={"cosine": 0.5})
    rep = Report([row], infos, "torch", "t")
    assert gate(rep) and "a" in gate(rep)[0]
    rep.summary["deployed"] = {"perturbed": True, "outputs": [
        {"name": "y", "values": {"cosine": 0.9999}, "nonfinite": 0}]}
    assert gate(rep) == []  # the captured rows are not what is deployed: they do not decide
    rep.summary["deployed"]["outputs"][0].update(values={"cosine": 0.99}, nonfinite=3)
    reasons = gate(rep)
    assert len(reasons) == 2 and all("deployed output y" in r for r in reasons)


def test_int8_capture_that_blocks_qdq_fusion_is_reported_against_a_plain_session(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    rc, out, err = cli(capsys, "compare", "parity.examples.lenet:build", "--ref", "torch", "--target", "ort-int8",
                       "--inputs", tmp_path / "in.npz", "--calibration", tmp_path / "in.npz",
                       "--workdir", tmp_path / "w", "--json", tmp_path / "r.json",
                       "--save-target", tmp_path / "tgt", "--save-ref", tmp_path / "ref", "--exit-zero")
    assert rc == 0, (out, err)
    rep = json.loads((tmp_path / "r.json").read_text())
    dep = rep["summary"]["deployed"]
    o = dep["outputs"][0]
    # the deployed file, run plainly, against the captured output parity saved
    deployed = dep["model_file"]
    plain = ort.InferenceSession(deployed, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    from parity.core.dumps import read_dump

    captured = next(a.array for a in read_dump(tmp_path / "tgt") if a.meta.get("is_output"))
    assert o["capture_diff"] == pytest.approx(float(np.abs(captured - plain).max() / np.abs(plain).max()), rel=1e-6)
    assert dep["perturbed"] is (o["capture_diff"] > PERTURB_RTOL)
    assert dep["perturbed"], "QDQ fusion blocked by capture should move the int8 outputs"
    ref = next(a.array for a in read_dump(tmp_path / "ref") if a.meta.get("is_output"))  # torch's, as saved
    assert o["values"]["cosine"] == pytest.approx(_cos(ref, plain), abs=1e-7)
    # top-1 agreement is the deployed model's: the plain session's arg-max against torch's
    assert rep["summary"]["top1_agreement"] == pytest.approx(float(np.mean(ref.argmax(-1) == plain.argmax(-1))))
    assert "Capture changed the output" in out
    assert all(r["meta"].get("capture_perturbed") for r in rep["layers"])


def test_print_report_follows_the_deployed_outputs_when_capture_perturbed():
    from parity.contract.report import LayerResult, Report

    infos = metric_infos(resolve_metrics(["cosine"]), {})
    rows = [LayerResult(name="a", ref_name="a", target_name="a", order=0, values={"cosine": 0.5})]
    rep = Report(rows, infos, "torch", "t")
    rep.summary["deployed"] = {"perturbed": True, "outputs": [{"name": "y", "values": {"cosine": 0.9999}, "nonfinite": 0}]}
    assert "PASS: the deployed outputs pass" in str(rep) and bool(rep)
    rep.summary["deployed"]["outputs"][0]["nonfinite"] = 2
    assert "FAIL: deployed output y holds 2 NaN/Inf" in str(rep) and not bool(rep)

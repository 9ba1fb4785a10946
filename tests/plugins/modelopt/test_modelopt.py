"""ModelOpt targets against ModelOpt itself: every figure parity reports is recomputed here with
``mtq.quantize`` and the quantizers' own API on the same model, calibration and feeds."""
from __future__ import annotations

import ast
import copy
import json

import numpy as np
import pytest

pytest.importorskip("modelopt", reason="nvidia-modelopt is not installed (pip install 'parity[modelopt]')")

import parity
from parity.contract.errors import ParityError
from parity.contract.source import RunConfig

import mo_models as models

torch = pytest.importorskip("torch")


def mtq():
    from parity_builtin_modelopt.quant import import_mtq

    return import_mtq()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def independent(net, config, calib):  # type: ignore[no-untyped-def]
    """The model ModelOpt itself makes from the same config and calibration feeds."""
    import contextlib
    import io

    def loop(m):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            for c in calib:
                m(torch.from_numpy(c))
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        return mtq().quantize(copy.deepcopy(net), copy.deepcopy(config), loop).eval()


CALIB = models.digits_feeds(4, start=1500)
FEED = models.digits_feeds(1)


@pytest.fixture(scope="module")
def outlier_run(tmp_path_factory):  # type: ignore[no-untyped-def]
    net = models.digits_cnn(outlier=200.0)
    work = tmp_path_factory.mktemp("modelopt")
    rep = parity.compare(net, FEED, ref="torch", target="modelopt-int8", calibration=CALIB, quiet=True,
                         workdir=work)
    return net, rep, work


def test_rows_pair_by_module_name_and_outputs_match_modelopt(outlier_run):
    net, rep, _ = outlier_run
    names = [n for n, _ in net.named_modules() if n]
    rows = {r.name: r for r in rep.layers}
    assert set(names) <= set(rows)
    assert all(r.ref_name == r.target_name and r.match == "exact" for r in rep.layers if r.name in names)
    q = independent(net, mtq().INT8_DEFAULT_CFG, CALIB)
    with torch.no_grad():
        ref, out = net(torch.from_numpy(FEED[0])).numpy(), q(torch.from_numpy(FEED[0])).numpy()
    assert rows["output"].values["cosine"] == pytest.approx(cosine(ref, out), abs=1e-6)
    assert rows["output"].values["cosine"] < 0.9  # the outlier channel destroys fc1's input


def test_quantizer_rows_match_the_quantizers_own_figures(outlier_run, tmp_path):
    from parity_builtin_modelopt.source import ModelOptSource

    net, _, work = outlier_run
    src = ModelOptSource("int8")
    cfg = RunConfig(model=_memory(net),
                    workdir=work, calibration=[{"x": c} for c in CALIB])
    recs = {r.key: r for r in src.run(cfg, {"x": FEED[0]})}
    q = independent(net, mtq().INT8_DEFAULT_CFG, CALIB)
    seen = {}
    h = q.fc1.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach().clone()))
    with torch.no_grad():
        q(torch.from_numpy(FEED[0]))
    h.remove()
    x = seen["x"]
    iq, wq = q.fc1.input_quantizer, q.fc1.weight_quantizer
    stats = recs["fc1"].meta["quantizers"]
    amax = float(iq.amax)
    with torch.no_grad():
        y = iq(x)
    nz = x != 0
    assert stats["input"]["amax"] == pytest.approx(amax, rel=1e-6)
    assert stats["input"]["to_zero"] == pytest.approx(int(((y == 0) & nz).sum()) / int(nz.sum()), abs=1e-12)
    assert stats["input"]["clipped"] == pytest.approx(int((x.abs() > amax).sum()) / x.numel(), abs=1e-12)
    assert stats["input"]["to_zero"] > 0.1  # the outlier channel's amax rounds the small values to 0
    assert stats["weight"]["amax_count"] == wq.amax.numel() == 32  # per output channel (axis 0)
    assert stats["weight"]["amax"] == pytest.approx(float(wq.amax.max()), rel=1e-6)
    assert "output" not in stats  # INT8_DEFAULT_CFG leaves output quantizers disabled
    assert "quantizers" not in recs["relu3"].meta
    # the compare report's row carries the same figures (JSON: layers[].meta.target_quantizers)
    row = next(r for r in outlier_run[1].layers if r.name == "fc1")
    assert row.meta["target_quantizers"]["input"]["amax"] == pytest.approx(amax, rel=1e-6)


def _memory(net):  # type: ignore[no-untyped-def]
    from parity.lib.torch_loader import register_memory_model

    return register_memory_model(net, "test net")


def test_culprit_is_the_outlier_input_quantizer_with_its_reason(outlier_run):
    net, rep, _ = outlier_run
    culprit = rep.culprits[0]
    assert culprit.name == "fc1"
    cause = culprit.meta["cause"]
    c = net.outlier_channel
    assert "fc1.input_quantizer" in cause and "outlier channel" in cause
    ch = int(cause.split("outlier channel ")[1].split()[0])
    assert 4 * c <= ch < 4 * c + 4
    # local error: fc1 quantized alone on the fp32 model's input to fc1, recomputed with ModelOpt
    q = independent(net, mtq().INT8_DEFAULT_CFG, CALIB)
    seen = {}
    h = net.fc1.register_forward_hook(lambda m, a, o: seen.update(x=a[0].detach().clone(), y=o.detach().clone()))
    with torch.no_grad():
        net(torch.from_numpy(FEED[0]))
        h.remove()
        alone = q.fc1(seen["x"])
    assert culprit.local["cosine"] == pytest.approx(cosine(seen["y"].numpy(), alone.numpy()), abs=1e-6)


def test_fix_prints_a_quant_cfg_fragment_modelopt_verifies(outlier_run):
    net, rep, _ = outlier_run
    res = rep.fix(goal="cosine=0.999")
    assert res.passed and "fc1" in res.kept and len(res.kept) <= 2  # fc1 (and pool, whose input has the outlier too)
    text = res.forms("modelopt-int8")["ModelOpt torch: quantizers to disable"]
    entries = ast.literal_eval(text.split("+=", 1)[1].split("  #", 1)[0].strip())
    assert entries == [{"quantizer_name": f"{k}.*", "enable": False} for k in res.kept]
    config = copy.deepcopy(mtq().INT8_DEFAULT_CFG)
    config["quant_cfg"] += entries
    q = independent(net, config, CALIB)
    assert not q.fc1.input_quantizer.is_enabled and not q.fc1.weight_quantizer.is_enabled
    assert q.fc2.input_quantizer.is_enabled and q.conv1.weight_quantizer.is_enabled
    with torch.no_grad():
        v = cosine(net(torch.from_numpy(FEED[0])).numpy(), q(torch.from_numpy(FEED[0])).numpy())
    assert res.after == pytest.approx(v, abs=1e-6)
    assert v >= 0.999


def test_disk_cache_restores_the_same_quantized_model(outlier_run):
    from parity_builtin_modelopt import quant
    from parity_builtin_modelopt.source import ModelOptSource

    net, _, work = outlier_run
    cfg = RunConfig(model=_memory(net), workdir=work, calibration=[{"x": c} for c in CALIB])
    first = ModelOptSource("int8").prepared(cfg)
    quant.cache_clear()
    again = ModelOptSource("int8").prepared(cfg)
    assert again.restored and again is not first and again.digest == first.digest
    with torch.no_grad():
        a = first.quantized(torch.from_numpy(FEED[0]))
        b = again.quantized(torch.from_numpy(FEED[0]))
    assert torch.equal(a, b)
    other = RunConfig(model=cfg.model, workdir=work, calibration=[{"x": c} for c in CALIB[:2]])
    assert ModelOptSource("int8").prepared(other).digest != first.digest  # calibration is in the key


@pytest.mark.parametrize("preset,attr", [("fp8", "FP8_DEFAULT_CFG"), ("int4-awq", "INT4_AWQ_CFG"),
                                         ("w4a8-awq", "W4A8_AWQ_BETA_CFG")])
def test_other_presets_give_modelopt_outputs(preset, attr, tmp_path):
    from parity_builtin_modelopt.source import ModelOptSource

    net = models.digits_cnn()
    cfg = RunConfig(model=_memory(net), workdir=tmp_path, calibration=[{"x": c} for c in CALIB[:2]])
    recs = list(ModelOptSource(preset).run(cfg, {"x": FEED[0]}))
    q = independent(net, getattr(mtq(), attr), CALIB[:2])
    with torch.no_grad():
        want = q(torch.from_numpy(FEED[0])).numpy()
    out = next(r for r in recs if r.meta.get("is_output"))
    np.testing.assert_allclose(out.array, want, rtol=1e-5, atol=1e-5)
    assert any(r.meta.get("quantizers") for r in recs)


def test_quant_cfg_from_json_and_python_and_bad_names(tmp_path):
    from parity_builtin_modelopt.source import ModelOptSource

    net = models.digits_cnn()
    config = copy.deepcopy(mtq().INT8_DEFAULT_CFG)
    config["quant_cfg"].append({"quantizer_name": "fc2.*", "enable": False})
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    (tmp_path / "mycfg.py").write_text("import copy\nimport modelopt.torch.quantization as mtq\n"
                                       "CFG = copy.deepcopy(mtq.INT8_DEFAULT_CFG)\n"
                                       "CFG['quant_cfg'].append({'quantizer_name': 'fc2.*', 'enable': False})\n")
    base = dict(model=_memory(net), workdir=tmp_path, calibration=[{"x": c} for c in CALIB[:2]])
    for spec in (str(tmp_path / "cfg.json"), f"{tmp_path / 'mycfg.py'}:CFG"):
        recs = {r.key: r for r in ModelOptSource(None).run(RunConfig(**base, options={"quant_cfg": spec}),
                                                           {"x": FEED[0]})}
        assert "quantizers" not in recs["fc2"].meta and recs["fc1"].meta["quantizers"]["input"]["amax"] > 0
    with pytest.raises(ParityError, match="not a ModelOpt config name"):
        list(ModelOptSource(None).run(RunConfig(**base, options={"quant_cfg": "INT9_CFG"}), {"x": FEED[0]}))
    with pytest.raises(ParityError, match="needs a config"):
        list(ModelOptSource(None).run(RunConfig(**base), {"x": FEED[0]}))


def test_decoder_transformer_pairs_every_linear(tmp_path):
    net = models.tiny_decoder()
    feed = models.decoder_feeds(1, start=500)
    calib = models.decoder_feeds(2, start=1000)
    rep = parity.compare(net, feed, ref="torch", target="modelopt-int8", calibration=calib, quiet=True,
                         workdir=tmp_path, diagnose=False)
    rows = {r.name: r for r in rep.layers}
    linears = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)]
    assert all(rows[n].match == "exact" and rows[n].target_name == n for n in linears)

    def loop(m):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            for c in calib:
                m(torch.from_numpy(c))
    import contextlib
    import io

    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        q = mtq().quantize(copy.deepcopy(net), mtq().INT8_DEFAULT_CFG, loop).eval()
    with torch.no_grad():
        v = cosine(net(torch.from_numpy(feed[0])).numpy(), q(torch.from_numpy(feed[0])).numpy())
    assert rows["output"].values["cosine"] == pytest.approx(v, abs=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="NVFP4 fake quantization needs a CUDA GPU")
def test_nvfp4_on_cuda_gives_modelopt_outputs(tmp_path):
    from parity_builtin_modelopt.source import ModelOptSource

    net = models.digits_cnn().cuda()
    cfg = RunConfig(model=_memory(net), device="cuda", workdir=tmp_path,
                    calibration=[{"x": c} for c in CALIB[:2]])
    recs = list(ModelOptSource("nvfp4").run(cfg, {"x": FEED[0]}))

    def loop(m):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            for c in CALIB[:2]:
                m(torch.from_numpy(c).cuda())
    torch.manual_seed(0)
    q = mtq().quantize(copy.deepcopy(net), mtq().NVFP4_DEFAULT_CFG, loop).eval()
    with torch.no_grad():
        want = q(torch.from_numpy(FEED[0]).cuda()).cpu().numpy()
    out = next(r for r in recs if r.meta.get("is_output"))
    np.testing.assert_allclose(out.array, want, rtol=1e-5, atol=1e-5)
    assert any("block_sizes" in s for r in recs for s in (r.meta.get("quantizers") or {}).values())


def test_nvfp4_says_why_it_cannot_run_on_cpu():
    from parity_builtin_modelopt.source import ModelOptSource

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    assert "CUDA" in ModelOptSource("nvfp4").check()
    assert ModelOptSource("int8").check() is None
    from importlib.metadata import version

    doctor = ModelOptSource(None).details()  # parity doctor: the version and the formats that run here
    assert doctor["modelopt"] == version("nvidia-modelopt")
    assert doctor["formats that run here"] == "int8, fp8, int4-awq, w4a8-awq" and "nvfp4" in doctor["not here"]


def test_fix_forms_of_an_fp8_target_are_modelopt_disables():
    """A verified set on modelopt-fp8 prints ModelOpt's fragment, not torch autocast (the number format decides)."""
    from parity.contract.capability import NumberFormat
    from parity.contract.report import LayerResult
    from parity.core.fix import FixResult

    res = FixResult("cosine", 0.999, 0.5, 0.9999, True, ["fc1"], rows=[LayerResult(name="fc1", ref_name="fc1", order=0,
                                                                                   target_name="fc1")],
                    number_format=NumberFormat.FP8)
    forms = res.forms("modelopt-fp8")
    assert "torch autocast: run these modules in fp32" not in forms
    text = forms["ModelOpt torch: quantizers to disable"]
    assert ast.literal_eval(text.split("+=", 1)[1].split("  #", 1)[0].strip()) == [
        {"quantizer_name": "fc1.*", "enable": False}]


def test_modelopt_colon_config_names_the_config_in_the_target(tmp_path):
    from parity.contract.errors import UsageError
    from parity.core.registry import get_source

    src = get_source("modelopt:INT8_SMOOTHQUANT_CFG")
    assert src is get_source("modelopt:INT8_SMOOTHQUANT_CFG") and src.name == "modelopt:INT8_SMOOTHQUANT_CFG"
    net = models.digits_cnn()
    cfg = RunConfig(model=_memory(net), workdir=tmp_path, calibration=[{"x": c} for c in CALIB[:2]])
    out = next(r for r in src.run(cfg, {"x": FEED[0]}) if r.meta.get("is_output"))
    q = independent(net, mtq().INT8_SMOOTHQUANT_CFG, CALIB[:2])
    with torch.no_grad():
        np.testing.assert_allclose(out.array, q(torch.from_numpy(FEED[0])).numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(UsageError, match="only modelopt takes a config"):
        get_source("modelopt-int8:INT8_SMOOTHQUANT_CFG")

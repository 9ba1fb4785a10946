"""``parity generate --target modelopt-*`` against ModelOpt itself: the target's per-step logits are
recomputed here with ``mtq.quantize`` of the same transformers model, config and calibration (the
prompts, one pass each), run with plain transformers calls; every per-step figure is then recomputed
from those logits with numpy."""
from __future__ import annotations

import contextlib
import inspect
import io
import json

import numpy as np
import pytest

pytest.importorskip("modelopt", reason="nvidia-modelopt is not installed (pip install 'parity[modelopt]')")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import mo_models as models  # noqa: E402
from support import needs_cuda  # noqa: E402

from parity.core.generate import GenerateSettings, generate  # noqa: E402

PROMPTS = ["Return the", "The text is", "If the width", "Wrap a single"]
N = 12


@pytest.fixture(scope="module")
def lm(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("modelopt-lm")
    folder = root / "model"
    models.tiny_llama().save_pretrained(folder)
    return {"root": root, "model": str(folder), "prompts": [models.text_ids(p) for p in PROMPTS],
            "work": str(root / "work")}


def _hf(folder: str, device: str = "cpu"):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).to(device).eval()


def independent(folder: str, cfg_name: str, calib: list[list[int]], device: str = "cpu"):  # type: ignore[no-untyped-def]
    """ModelOpt's own quantization of the same model: ``mtq.quantize`` with the preset's config, calibrated
    on each sequence in one pass, seed 0 (what the decoder documents)."""
    from parity_builtin_modelopt.quant import import_mtq

    mtq = import_mtq()
    net = _hf(folder, device)

    def loop(m):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            for seq in calib:
                m(input_ids=torch.tensor([seq], device=device))

    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        return mtq.quantize(net, getattr(mtq, cfg_name), loop).eval()


def _logits(net, seq: list[int], device: str = "cpu") -> np.ndarray:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return net(input_ids=torch.tensor([seq], device=device)).logits[0].double().cpu().numpy()


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def int8_doc(lm):  # type: ignore[no-untyped-def]
    return generate(GenerateSettings(model=lm["model"], target="modelopt-int8", prompts=lm["prompts"],
                                     max_new_tokens=N, worst=1, workdir=lm["work"]))


def test_int8_per_step_figures_are_modelopts_own(lm, int8_doc):
    doc = int8_doc
    assert doc["target_format"] == "int8" and doc["ref_format"] == "fp32"
    assert doc["calibration"] == {"from": "prompts", "sequences": len(PROMPTS)}
    ref, q = _hf(lm["model"]), independent(lm["model"], "INT8_DEFAULT_CFG", lm["prompts"])
    from parity.core.registry import get_decoder

    # the decoder's own logits (restored from the disk cache the generate run wrote) are ModelOpt's
    sess = get_decoder("modelopt-int8").load(lm["model"], calibration=lm["prompts"], workdir=lm["work"])
    assert sess.meta["restored"] is True and sess.meta["quant_cfg"] == "INT8_DEFAULT_CFG"
    firsts = []
    for r in doc["prompts"]:
        p0, seq = len(r["prompt_tokens"]), r["prompt_tokens"] + r["ref_tokens"]
        lr, lq = _logits(ref, seq[:-1])[p0 - 1:], _logits(q, seq[:-1])[p0 - 1:]
        assert r["ref_tokens"] == lr.argmax(-1).tolist()
        np.testing.assert_allclose(sess.forward(seq[:-1]).logits[p0 - 1:], lq, atol=1e-5, rtol=0)
        # stepped with its KV cache, against ModelOpt's model stepped with transformers' own cache
        step, rows = sess.forward(r["prompt_tokens"]), []
        kw = "cache" if "cache" in inspect.signature(q.forward).parameters else "past_key_values"
        with torch.no_grad():
            out = q(input_ids=torch.tensor([r["prompt_tokens"]]), use_cache=True)
            for t in r["ref_tokens"][:-1]:
                rows.append(out.logits[0, -1].double().numpy())
                np.testing.assert_allclose(step.logits[-1], rows[-1], atol=1e-5, rtol=0)
                step = sess.forward([t], step.cache)
                past = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
                out = q(input_ids=torch.tensor([[t]]), use_cache=True, **{kw: past})
        # every per-step figure, from those logits by numpy
        p, pq = _softmax(lr), _softmax(lq)
        kl = (p * (np.log(p) - np.log(pq))).sum(-1)
        # (the reference's rows come from its stepped generation: ~1e-6 apart from one pass, and KL ~1e-4)
        np.testing.assert_allclose([s["kl"] for s in r["steps"]], kl, rtol=1e-3, atol=1e-9)
        agree = lr.argmax(-1) == lq.argmax(-1)
        assert [s["agree"] for s in r["steps"]] == agree.tolist()
        assert r["top1_agreement"] == pytest.approx(agree.mean())
        first = None if agree.all() else int(np.argmin(agree))
        assert (r["first_divergence"] or {}).get("step") == first
        if first is not None:
            fd = r["first_divergence"]
            assert fd["target_token"] == int(lq[first].argmax())
            assert fd["target_margin"] == pytest.approx(lq[first].max() - lq[first][lr[first].argmax()], abs=1e-5)
            firsts.append(first)
    assert doc["summary"]["first_divergence_step"] == (min(firsts) if firsts else None)
    assert doc["summary"]["diverged_prompts"] == len(firsts)
    # the diagnosis ran on the quantized model: both layers compared end to end and alone
    d = doc["prompts"][0]["diagnosis"][0]
    assert [row["layer"] for row in d["layers"]] == ["model.layers.0", "model.layers.1"]
    assert all(0.9 < row["cosine"] < 1.0 and 0.9 < row["local_cosine"] < 1.0 for row in d["layers"])
    sess.close()


def test_cli_generate_with_a_modelopt_target(lm, int8_doc, tmp_path, capsys):
    from parity.cli import main

    files = []
    for i, p in enumerate(lm["prompts"]):
        f = tmp_path / f"p{i}.txt"
        f.write_text(" ".join(map(str, p)))
        files.append(str(f))
    out = tmp_path / "g.json"
    assert main(["generate", lm["model"], "--target", "modelopt-int8", "--tokens", *files, "-n", str(N),
                 "--worst", "1", "--workdir", lm["work"], "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "modelopt-int8 (target, int8)" in table and f"calibrated on the first {len(PROMPTS)} prompt(s)" in table
    doc = json.loads(out.read_text())
    assert doc["summary"] == int8_doc["summary"]
    assert [r["steps"] for r in doc["prompts"]] == [r["steps"] for r in int8_doc["prompts"]]


def test_modelopt_decoders_are_listed_and_nvfp4_says_why_not_on_cpu(capsys):
    from parity.cli import main
    from parity.contract.errors import ParityError
    from parity.core.registry import get_decoder

    assert main(["plugins", "--json"]) == 0
    listed = {d["name"]: d for d in json.loads(capsys.readouterr().out)["decoder"]}
    names = {"modelopt-int8", "modelopt-fp8", "modelopt-int4-awq", "modelopt-w4a8-awq", "modelopt-nvfp4"}
    assert names <= set(listed)
    assert "ModelOpt" in listed["modelopt-int4-awq"]["description"] and "INT4_AWQ_CFG" in listed["modelopt-int4-awq"]["description"]
    assert get_decoder("modelopt-w4a8-awq").number_format == "mixed"
    why = get_decoder("modelopt-nvfp4").available("cpu")
    assert why is not None and "CUDA" in why
    with pytest.raises(ParityError, match="calibrates on token sequences"):
        get_decoder("modelopt-int8").load("unused", calibration=[])


@needs_cuda
def test_nvfp4_generate_on_the_gpu(lm, tmp_path):
    doc = generate(GenerateSettings(model=lm["model"], target="modelopt-nvfp4", prompts=lm["prompts"][:2],
                                    max_new_tokens=8, worst=1, device="cuda", workdir=str(tmp_path)))
    assert doc["target_format"] == "nvfp4"
    q = independent(lm["model"], "NVFP4_DEFAULT_CFG", lm["prompts"][:2], "cuda")
    ref = _hf(lm["model"], "cuda")
    for r in doc["prompts"]:
        p0, seq = len(r["prompt_tokens"]), r["prompt_tokens"] + r["ref_tokens"]
        lr, lq = _logits(ref, seq[:-1], "cuda")[p0 - 1:], _logits(q, seq[:-1], "cuda")[p0 - 1:]
        agree = lr.argmax(-1) == lq.argmax(-1)
        assert [s["agree"] for s in r["steps"]] == agree.tolist()
        p, pq = _softmax(lr), _softmax(lq)
        np.testing.assert_allclose([s["kl"] for s in r["steps"]], (p * (np.log(p) - np.log(pq))).sum(-1),
                                   rtol=1e-3, atol=1e-7)
    assert doc["summary"]["mean_kl"] > 0

"""``parity generate``: every figure against an independent torch/numpy computation, on a small Llama
trained briefly on the docstrings of Python's standard library (no download).

The target of the culprit tests is the same model with one decoder layer's MLP scaled: the layer
that flips the token is known, so naming it is checked, not assumed.
"""
from __future__ import annotations

import inspect
import json
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from support import needs_cuda, train_causal_lm  # noqa: E402

from parity.core.generate import GenerateSettings, GenerateStats, compare_logits, generate, load_prompts  # noqa: E402

PROMPTS = ["Return the", "The module", "If the"]


def _docstrings() -> list[str]:
    import collections
    import json as js
    import os
    import re

    out = []
    for mod in (js, collections, textwrap, os.path, inspect, re):
        for _, obj in inspect.getmembers(mod):
            d = inspect.getdoc(obj)
            if d and len(d) > 40:
                out.append(d)
    return list(dict.fromkeys(out))


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A 2-layer Llama (hidden 64) and a byte-level BPE tokenizer (384 tokens), trained for 100 steps."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("lm")
    texts = _docstrings()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=384, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    ids = torch.tensor(tok.encode("\n\n".join(texts)).ids)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    m = LlamaForCausalLM(cfg)
    train_causal_lm(m, ids, steps=100, seq=64, lr=3e-3)
    folder = root / "model"
    m.eval().save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (root / "perturb.py").write_text(textwrap.dedent(f"""
        import torch
        from transformers import AutoModelForCausalLM

        def make():
            m = AutoModelForCausalLM.from_pretrained({str(folder)!r})
            with torch.no_grad():
                m.model.layers[1].mlp.down_proj.weight.mul_(3.0)
            return m
        """))
    return {"root": root, "model": str(folder), "perturbed": f"{root / 'perturb.py'}:make",
            "prompts": load_prompts(text_file=str(root / "prompts.txt"), tokenizer=str(folder)),
            "work": str(root / "work")}


def _hf(path: str, perturb: bool = False):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(path).eval()
    if perturb:
        with torch.no_grad():
            m.model.layers[1].mlp.down_proj.weight.mul_(3.0)
    return m


def test_decoders_are_registered_by_the_register_decoders_hook():
    from parity.core.registry import registry

    reg = registry()["decoder"]
    assert {"torch", "torch-fp16", "torch-bf16", "ort", "ort-fp16", "ort-int8"} <= set(reg)
    assert reg["torch"].plugin == "torch" and reg["ort-int8"].plugin == "onnxruntime"
    assert reg["torch-bf16"].obj.precision == "bf16" and reg["ort-int8"].obj.precision == "int8"


def test_compare_logits_matches_torch_and_scipy():
    from scipy.special import rel_entr, softmax

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(7, 50)) * 3
    tgt = ref + rng.normal(size=(7, 50)) * 0.8
    f = compare_logits(ref, tgt)
    p, q = softmax(ref, axis=-1), softmax(tgt, axis=-1)
    np.testing.assert_allclose(f["kl"], rel_entr(p, q).sum(axis=-1), rtol=1e-9, atol=1e-12)
    cos = torch.nn.functional.cosine_similarity(torch.tensor(ref), torch.tensor(tgt), dim=-1).numpy()
    np.testing.assert_allclose(f["cosine"], cos, rtol=1e-12)
    np.testing.assert_array_equal(f["agree"], ref.argmax(-1) == tgt.argmax(-1))
    assert not f["agree"].all() and f["agree"].any()  # the data exercises both outcomes
    rows = np.arange(7)
    np.testing.assert_allclose(f["target_margin"], tgt[rows, tgt.argmax(-1)] - tgt[rows, ref.argmax(-1)])
    assert (f["target_margin"][~f["agree"]] > 0).all() and (f["target_margin"][f["agree"]] == 0).all()


def test_same_model_as_target_agrees_on_every_token(lm):
    doc = generate(GenerateSettings(model=lm["model"], target="torch", prompts=lm["prompts"][:1], max_new_tokens=8,
                                    tokenizer=lm["model"], free=True))
    s = doc["summary"]
    assert s["top1_agreement"] == 1.0 and s["first_divergence_step"] is None and s["mean_kl"] < 1e-9
    r = doc["prompts"][0]
    assert r["free"]["part_step"] is None and r["free"]["ref_tokens"] == r["free"]["target_tokens"]
    assert all(abs(k["key_cosine"] - 1) < 1e-9 and abs(k["value_cosine"] - 1) < 1e-9 for k in r["kv_cache"])
    # the reference's tokens are transformers' own greedy decoding
    m = _hf(lm["model"])
    out = m.generate(torch.tensor([r["prompt_tokens"]]), max_new_tokens=8, do_sample=False)
    assert out[0, len(r["prompt_tokens"]):].tolist() == r["ref_tokens"]


@pytest.fixture(scope="module")
def perturbed_doc(lm):
    return generate(GenerateSettings(model=lm["model"], target="torch", target_model=lm["perturbed"],
                                     prompts=lm["prompts"], tokenizer=lm["model"], max_new_tokens=10, free=True,
                                     worst=1))


def test_teacher_forced_figures_match_an_independent_forward_pass(lm, perturbed_doc):
    from scipy.special import rel_entr, softmax

    ref, tgt = _hf(lm["model"]), _hf(lm["model"], perturb=True)
    assert perturbed_doc["summary"]["diverged_prompts"] >= 1, "the perturbation must flip some token"
    for r in perturbed_doc["prompts"]:
        seq = torch.tensor([r["prompt_tokens"] + r["ref_tokens"]])
        p0 = len(r["prompt_tokens"])
        with torch.no_grad():
            lr = ref(input_ids=seq).logits[0, p0 - 1:-1].double().numpy()
            lt = tgt(input_ids=seq).logits[0, p0 - 1:-1].double().numpy()
        assert r["ref_tokens"] == lr.argmax(-1).tolist()
        kl = rel_entr(softmax(lr, -1), softmax(lt, -1)).sum(-1)
        np.testing.assert_allclose([st["kl"] for st in r["steps"]], kl, rtol=1e-3, atol=1e-6)
        cos = (lr * lt).sum(-1) / np.linalg.norm(lr, axis=-1) / np.linalg.norm(lt, axis=-1)
        np.testing.assert_allclose([st["cosine"] for st in r["steps"]], cos, rtol=1e-5)
        agree = lr.argmax(-1) == lt.argmax(-1)
        assert [st["agree"] for st in r["steps"]] == agree.tolist()
        assert r["top1_agreement"] == pytest.approx(agree.mean())
        first = None if agree.all() else int(np.argmin(agree))
        assert (r["first_divergence"] or {}).get("step") == first
        if first is not None:
            fd = r["first_divergence"]
            assert fd["target_token"] == int(lt[first].argmax())
            assert fd["target_margin"] == pytest.approx(lt[first].max() - lt[first][lr[first].argmax()], rel=1e-3)


def test_culprit_is_the_perturbed_layer(perturbed_doc):
    diverged = [r for r in perturbed_doc["prompts"] if r["first_divergence"]]
    for r in diverged:
        d = r["diagnosis"][0]
        assert d["why"] == "first divergence" and d["step"] == r["first_divergence"]["step"]
        by = {row["layer"]: row for row in d["layers"]}
        assert by["model.layers.0"]["cosine"] == pytest.approx(1.0, abs=1e-6)
        assert by["model.layers.0"]["local_cosine"] == pytest.approx(1.0, abs=1e-6)
        assert by["model.layers.1"]["local_cosine"] < 0.999
        assert d["culprit"] == "model.layers.1" and d["culprit_method"] == "local"
        # layer 1's cache is computed from layer 0's output: untouched by its MLP
        assert by["model.layers.1"]["key_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert perturbed_doc["summary"]["culprits"] == ["model.layers.1"]


def test_free_running_parts_where_the_two_greedy_generations_part(lm, perturbed_doc):
    ref, tgt = _hf(lm["model"]), _hf(lm["model"], perturb=True)
    for r in perturbed_doc["prompts"]:
        x = torch.tensor([r["prompt_tokens"]])
        a = ref.generate(x, max_new_tokens=10, do_sample=False)[0, x.shape[1]:].tolist()
        b = tgt.generate(x, max_new_tokens=10, do_sample=False)[0, x.shape[1]:].tolist()
        fr = r["free"]
        assert fr["ref_tokens"] == a and fr["target_tokens"] == b
        part = next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), None)
        assert fr["part_step"] == part
    # a free-running text parts no earlier than the teacher-forced argmax first differs
    for r in perturbed_doc["prompts"]:
        if r["free"]["part_step"] is not None:
            assert r["first_divergence"]["step"] <= r["free"]["part_step"]


def test_ort_decoder_with_past_matches_the_torch_decoder(lm):
    from parity.core.registry import get_decoder

    t = get_decoder("torch").load(lm["model"])
    o = get_decoder("ort").load(lm["model"], workdir=lm["work"])
    import onnx

    names = {i.name for i in onnx.load(o.meta["path"]).graph.input}
    assert {"input_ids", "past_key_values.0.key", "past_key_values.1.value"} <= names
    seq = lm["prompts"][0] + [5, 17, 42]
    a, b = t.forward(seq[:-2]), o.forward(seq[:-2])
    a2, b2 = t.forward(seq[-2:], a.cache), o.forward(seq[-2:], b.cache)  # the step with a past
    np.testing.assert_allclose(b2.logits, a2.logits, atol=2e-5, rtol=1e-4)
    for (tk, tv), (ok, ov) in zip(t.cache_arrays(a2.cache), o.cache_arrays(b2.cache)):
        assert ok.shape == tk.shape == (2, len(seq), 16)
        np.testing.assert_allclose(ok, tk, atol=2e-5)
        np.testing.assert_allclose(ov, tv, atol=2e-5)


@pytest.mark.parametrize("target", ["ort", "ort-fp16", "ort-int8"])
def test_ort_targets_run_teacher_forced_and_incremental(lm, target):
    common = dict(model=lm["model"], target=target, prompts=lm["prompts"][:2], max_new_tokens=6, workdir=lm["work"],
                  diagnose=False)
    one = generate(GenerateSettings(**common))
    inc = generate(GenerateSettings(**common, incremental=True))
    for doc in (one, inc):
        s = doc["summary"]
        assert np.isfinite(s["mean_kl"]) and 0 <= s["top1_agreement"] <= 1
    if target == "ort":
        assert one["summary"]["mean_kl"] < 1e-8 and one["summary"]["top1_agreement"] == 1.0
    else:  # a lower precision is not exact, and its KL is what the figures say it is
        assert one["summary"]["mean_kl"] > 1e-9
    # the incremental path (past key/values) and the one-pass path see the same tokens: same order of KL
    assert inc["prompts"][0]["ref_tokens"] == one["prompts"][0]["ref_tokens"]
    assert inc["summary"]["mean_kl"] == pytest.approx(one["summary"]["mean_kl"], rel=0.5, abs=1e-7)


def test_statistics_merge_and_perplexity(lm, perturbed_doc):
    docs = perturbed_doc["prompts"]
    whole, a, b = GenerateStats(), GenerateStats(), GenerateStats()
    for i, r in enumerate(docs):
        whole.add(r)
        (a if i % 2 else b).add(r)
    merged, s = a.merge(b).summary(), whole.summary()
    assert merged.pop("mean_kl") == pytest.approx(s["mean_kl"], rel=1e-12)  # sums in another order
    assert merged == {k: v for k, v in s.items() if k != "mean_kl"}
    n = len(docs)
    first = [r["first_divergence"]["step"] if r["first_divergence"] else None for r in docs]
    assert s["diverged_by_step"] == [sum(f is not None and f <= i for f in first) / n for i in range(10)]
    assert s["divergence_rate_by_step"] == [sum(not r["steps"][i]["agree"] for r in docs) / n for i in range(10)]

    text = lm["root"] / "text.txt"
    text.write_text(inspect.getdoc(textwrap.dedent) + "\n" + inspect.getdoc(json.dumps))
    doc = generate(GenerateSettings(model=lm["model"], target="torch", target_model=lm["perturbed"],
                                    prompts=lm["prompts"][:1], tokenizer=lm["model"], max_new_tokens=2, diagnose=False,
                                    perplexity_text=str(text), perplexity_window=32))
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(lm["model"] + "/tokenizer.json").encode(text.read_text()).ids
    nll = {}
    for key, m in (("ref", _hf(lm["model"])), ("target", _hf(lm["model"], perturb=True))):
        tot, cnt = 0.0, 0
        for st in range(0, len(ids) - 1, 32):
            c = torch.tensor(ids[st:st + 33])
            if len(c) < 2:
                break
            with torch.no_grad():
                lo = m(input_ids=c[None, :-1]).logits[0].double()
            tot += float(torch.nn.functional.cross_entropy(lo, c[1:], reduction="sum"))
            cnt += len(c) - 1
        nll[key] = tot / cnt
    p = doc["summary"]["perplexity"]
    assert p["tokens"] == len(ids) - 1
    assert p["ref"] == pytest.approx(np.exp(nll["ref"]), rel=1e-4)
    assert p["target"] == pytest.approx(np.exp(nll["target"]), rel=1e-4)
    assert p["delta"] == pytest.approx(p["target"] - p["ref"])


def test_workers_on_ray_give_the_one_process_figures(lm, perturbed_doc):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'parity[ray]')")
    doc = generate(GenerateSettings(model=lm["model"], target="torch", target_model=lm["perturbed"],
                                    prompts=lm["prompts"], tokenizer=lm["model"], max_new_tokens=10, free=True,
                                    worst=1, workers=2))
    assert doc["summary"] == perturbed_doc["summary"]
    assert [r["ref_tokens"] for r in doc["prompts"]] == [r["ref_tokens"] for r in perturbed_doc["prompts"]]


def test_cli_writes_table_json_and_an_offline_html_page(lm, tmp_path, capsys):
    from parity.cli import main

    out_json, out_html = tmp_path / "g.json", tmp_path / "g.html"
    rc = main(["generate", lm["model"], "--target", "torch", "--target-model", lm["perturbed"], "--prompts",
               str(lm["root"] / "prompts.txt"), "--tokenizer", lm["model"], "-n", "10", "--free", "--worst", "1",
               "--json", str(out_json), "--html", str(out_html)])
    assert rc == 0
    table = capsys.readouterr().out
    doc = json.loads(out_json.read_text())
    assert doc["schema"] == "parity-generate/1" and len(doc["prompts"]) == len(PROMPTS)
    assert "culprit layer(s) at the first divergence: model.layers.1" in table
    first = next(r for r in doc["prompts"] if r["first_divergence"])
    page = out_html.read_text()
    assert "<svg" in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "<script" not in page
    assert page.count('class="first-divergence"') >= 2  # the reference's and the target's token at that step
    assert first["ref_text"] in doc["prompts"][first["index"]]["ref_text"]


@pytest.mark.parametrize("argv, code, words", [
    (["--prompts", "p.txt"], 2, "--tokenizer"),
    ([], 2, "needs prompts"),
    (["--tokens", "missing.npy"], 1, "missing.npy"),
    (["-n", "0", "--tokens", "x"], 2, "--max-new-tokens"),
    (["--prompts", "p.txt", "--tokenizer", "tok", "--json", "p.txt"], 2, "would overwrite --prompts"),
    (["--tokens", "p.txt", "--json", "r.json", "--html", "r.json"], 2, "each report its own file"),
    (["--tokens", "big.txt", "--target", "torch"], 1, "token id 99999 is outside the model's vocabulary"),
])
def test_cli_errors_are_one_line(lm, tmp_path, monkeypatch, capsys, argv, code, words):
    from parity.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.txt").write_text("hello\n")
    (tmp_path / "big.txt").write_text("1 2 99999\n")
    assert main(["generate", lm["model"], *argv]) == code
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err


def test_a_hub_name_is_refused_not_downloaded():
    from parity.contract.errors import ParityError
    from parity.core.registry import get_decoder

    with pytest.raises(ParityError, match="never downloaded"):
        get_decoder("torch").load("meta-llama/Llama-3.2-1B")


@needs_cuda
def test_torch_fp16_on_the_gpu(lm):
    doc = generate(GenerateSettings(model=lm["model"], target="torch-fp16", prompts=lm["prompts"][:1],
                                    max_new_tokens=8, device="cuda", diagnose=True))
    assert 0 <= doc["summary"]["top1_agreement"] <= 1 and doc["summary"]["mean_kl"] > 0


def test_parity_plugins_lists_the_decoders(capsys):
    from parity.cli import main

    assert main(["plugins", "--json"]) == 0
    listed = {d["name"]: d for d in json.loads(capsys.readouterr().out)["decoder"]}
    assert {"torch", "torch-bf16", "ort-fp16", "ort-int8"} <= set(listed)
    assert "ONNX" in listed["ort-int8"]["description"] and "int8" in listed["ort-int8"]["description"]

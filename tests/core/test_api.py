"""The Python API: parity.compare on objects and files gives the CLI's report, plus culprits, pandas, HTML, fix."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support import load_zoo
import torch

import parity
from parity.core.compare import CompareSettings, compare as core_compare
from parity.core.registry import registry

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "models" / "zoo.py"
zoo = load_zoo()  # by file, as `parity compare zoo.py:factory` imports it; sys.path left as it was


def _x(seed=0, n=2):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 1, 28, 28)).astype(np.float32))


def test_import_parity_stays_cheap_and_serves_the_api_lazily():
    code = ("import sys, parity; heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'parity.core.api') "
            "if m in sys.modules]; assert not heavy, heavy; f = parity.compare; "
            "assert f.__module__ == 'parity.core.api'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr


def test_module_in_memory_gives_the_cli_report_and_stays_untouched(tmp_path):
    model = zoo.lenet().train()  # training mode and fp32 weights must survive an fp16 target
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _x()
    rep = parity.compare(model, x, ref="torch", target="torch-fp16", workdir=tmp_path / "c", diagnose=False)
    assert isinstance(rep, parity.ComparisonReport) and isinstance(rep, parity.contract.report.Report)
    assert rep.summary["model"] == "LeNet (nn.Module in memory)"
    assert model.training and all(torch.equal(v, model.state_dict()[k]) and v.dtype == torch.float32
                                  for k, v in before.items())
    # the same model and input through the CLI's route (a spec and a feed file) scores the same
    np.save(tmp_path / "x.npy", x.numpy())
    cli = core_compare(CompareSettings(model=f"{ZOO}:lenet", ref="torch", target="torch-fp16",
                                       inputs=str(tmp_path / "x.npy"), workdir=str(tmp_path / "c")))
    assert [r.name for r in rep.layers] == [r.name for r in cli.layers]
    for a, b in zip(rep.layers, cli.layers):
        assert a.values.keys() == b.values.keys()
        for k in a.values:
            assert a.values[k] == pytest.approx(b.values[k], rel=1e-6, abs=1e-9, nan_ok=True), (a.name, k)


def test_onnx_modelproto_and_a_list_of_dict_feeds(tmp_path):
    import onnx

    model = zoo.lenet()
    first = parity.compare(model, _x(1), target="ort", workdir=tmp_path / "c", diagnose=False)
    path = first.onnx_model()
    proto = onnx.load(str(path))
    feeds = [{"x": _x(1).numpy()}, {"x": _x(2).numpy()}]
    rep = parity.compare(proto, feeds, ref="ort", target="ort-fp16", workdir=tmp_path / "c", diagnose=False)
    assert rep.summary["inputs"] == 2
    assert rep.summary["model"].endswith("(ONNX ModelProto in memory)")
    files = sorted((tmp_path / "c" / "onnx").glob("memory-*.onnx"))
    assert len(files) == 1 and onnx.load(str(files[0])) == proto  # saved once, as given
    # against the file itself, on the same feeds, every row scores the same
    folder = tmp_path / "feeds"
    folder.mkdir()
    for k, f in enumerate(feeds):
        np.savez(folder / f"{k}.npz", **f)
    cli = core_compare(CompareSettings(model=str(path), ref="ort", target="ort-fp16", inputs=str(folder),
                                       workdir=str(tmp_path / "c")))
    assert [(r.name, r.values["cosine"]) for r in rep.layers] == \
        [(r.name, pytest.approx(r.values["cosine"], rel=1e-6)) for r in cli.layers]


def test_culprits_pandas_and_fix_on_an_fp16_overflow(tmp_path):
    pd = pytest.importorskip("pandas")
    rep = parity.compare(zoo.fp16_hazard(), torch.randn(4, 16, generator=torch.Generator().manual_seed(0)),
                         target="ort-fp16", workdir=tmp_path / "c")
    assert not rep
    culprits = rep.culprits
    assert culprits and [r.culprit_rank for r in culprits] == sorted(r.culprit_rank for r in culprits)
    assert [r.name for r in culprits] == rep.summary["culprits"]
    df = rep.to_pandas()
    assert isinstance(df, pd.DataFrame) and list(df["name"]) == [r.name for r in rep.layers]
    for r, (_, row) in zip(rep.layers, df.iterrows()):
        assert row["cosine"] == pytest.approx(r.values.get("cosine", math.nan), nan_ok=True)
        if r.local:
            assert row["local cosine"] == pytest.approx(r.local.get("cosine", math.nan), nan_ok=True)
    assert set(df.loc[df["culprit_rank"].notna(), "name"]) == {r.name for r in culprits}
    res = rep.fix("cosine=0.999")
    assert res.passed and res.kept
    # checked independently: the kept set, applied as a plain option, brings the outputs back
    again = parity.compare(zoo.fp16_hazard(), torch.randn(4, 16, generator=torch.Generator().manual_seed(0)),
                           target="ort-fp16", workdir=tmp_path / "c", diagnose=False,
                           options={"keep_high_precision": res.kept})
    outs = [r for r in again.layers if r.meta.get("target_is_output") and "cosine" in r.values]
    assert outs and min(r.values["cosine"] for r in outs) >= 0.999


def test_to_pandas_without_pandas_says_how_to_install(tmp_path, monkeypatch):
    rep = parity.compare(zoo.lenet(), _x(), target="ort", workdir=tmp_path / "c", diagnose=False)
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed: import fails
    with pytest.raises(parity.ParityError, match=r"pip install pandas"):
        rep.to_pandas()


def test_repr_html_inlines_the_html_report_or_falls_back_to_the_table(tmp_path):
    import html

    rep = parity.compare(zoo.lenet(), _x(), target="ort", workdir=tmp_path / "c", diagnose=False)
    page = rep._repr_html_()
    assert page.startswith("<iframe srcdoc=")
    inner = html.unescape(page.split('srcdoc="', 1)[1].split('" style=', 1)[0])
    assert "<html" in inner and "conv1" in inner
    del registry()["reporter"]["html"]  # a setup without the html reporter (the registry is reset per test)
    text = rep._repr_html_()
    assert text.startswith("<pre>") and "conv1" in text and "layers compared" in text


def test_bad_models_and_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(parity.ParityError, match=r"a dict is not a model parity can run"):
        parity.compare({"not": "a model"}, workdir=tmp_path / "c")
    with pytest.raises(parity.ParityError, match=r"feed 0 is not numeric"):
        parity.compare(zoo.lenet(), [np.array([object()])], workdir=tmp_path / "c")
    with pytest.raises(parity.ParityError, match=r"gave no feed"):
        parity.compare(zoo.lenet(), iter([]), workdir=tmp_path / "c")
    with pytest.raises(parity.ParityError, match=r"input 'x' has shape \[2, 3\]"):
        parity.compare(zoo.lenet(), np.zeros((2, 3), np.float32), target="ort", workdir=tmp_path / "c")
    with pytest.raises(parity.UsageError, match=r"goal cosine=2: 2 is outside the values cosine takes"):
        parity.core.api.parse_goal("cosine=2", "cosine")


def test_a_collected_module_reference_says_so():
    from parity.contract.source import RunConfig
    from parity.lib.torch_loader import load_torch_model, register_memory_model

    ref = register_memory_model(torch.nn.Linear(2, 2), "Linear")  # nothing else holds the module
    import gc

    gc.collect()
    with pytest.raises(parity.ParityError, match=r"the in-memory model is gone"):
        load_torch_model(RunConfig(model=ref))


def test_docs_api_example_runs(tmp_path, monkeypatch, capsys):
    """docs/api.md's first Python block runs as written (in a scratch folder for its cache)."""
    import re

    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<docs/api.md, first python block>", "exec"), {"__name__": "docs_api"})
    out = capsys.readouterr().out
    assert "passed: False" in out and "culprits: [" in out and "keep in fp32: [" in out

"""parity.core.settings: one builder behind both front doors, settings in five parts; and in-memory
inputs (MemoryFeeds) fed as they are, never written to disk."""
import pickle
import tempfile
from dataclasses import fields, replace

import numpy as np
import pytest

from support import load_zoo
import torch

import parity
from parity.contract.source import InputSpec
from parity.core import settings as settings_mod
from parity.core.feeds import MemoryFeeds
from parity.core.settings import CompareSettings, InputsPart, RunPart, build

zoo = load_zoo()


def test_the_parts_cover_every_setting_once():
    names = [f.name for part in CompareSettings(model="m").parts() for f in fields(part)]
    assert sorted(names) == sorted(f.name for f in fields(CompareSettings)) and len(names) == len(set(names))
    s = CompareSettings(model="m.onnx", target="ort-int8", seed=4, thresholds={"cosine": 0.9}, save_ref="r",
                        workers=2)
    run, inputs, scoring, outputs, scale = s.parts()
    assert (run.target, inputs.seed, scoring.thresholds, outputs.save_ref, scale.workers) == \
        ("ort-int8", 4, {"cosine": 0.9}, "r", 2)
    assert CompareSettings.from_parts(*s.parts()) == s
    assert replace(s, limit=1).parts().inputs == InputsPart(seed=4, limit=1)
    with pytest.raises(TypeError):
        RunPart()  # the model is required


def test_build_parses_every_value_once():
    s = build(model="m.onnx", ref="ort", threshold="cosine=0.99", metrics=["cosine", "l2"], input_shapes=["x:1x4:int64"],
              layers=["a", "b"], max_memory="1G", step_bytes=4096, workers=0)
    assert s.thresholds == {"cosine": 0.99} and s.input_shapes == {"x": (1, 4)} and s.input_dtypes == {"x": "int64"}
    assert (s.layers, tuple(s.layer_names)) == (None, ("a", "b"))
    assert (s.max_memory, s.step_bytes, s.workers) == (1 << 30, 4096, 1)


def test_cli_and_api_build_equal_settings_with_the_one_builder(tmp_path, monkeypatch):
    from parity.cli import build_parser
    from parity.cli._common import build_settings
    from parity.core.api import settings_for

    calls = []
    real = settings_mod.build

    def counting(**kw):
        calls.append(kw["model"])
        return real(**kw)

    monkeypatch.setattr(settings_mod, "build", counting)
    model, feeds, cache = tmp_path / "m.onnx", tmp_path / "feeds", tmp_path / "cache"
    args = build_parser().parse_args([
        "compare", str(model), "--ref", "ort", "--target", "ort-fp16", "--inputs", str(feeds),
        "--input-shape", "x:1x3x8x8:float16", "--seed", "3", "--metrics", "cosine,rel-diff",
        "--threshold", "cosine=0.99", "--layers", "conv.*", "--limit", "4", "--max-memory", "2G",
        "--step-bytes", "256M", "--workdir", str(cache), "--keep-fp32-ops", "Softmax", "--diagnose",
        "--matcher", "auto", "--random-inputs", "2"])
    cli = build_settings(args, "ort-fp16", True)
    api, _label, _keep = settings_for(
        str(model), inputs_path=feeds, ref="ort", target="ort-fp16", diagnose=True, metrics=["cosine", "rel-diff"],
        threshold={"cosine": 0.99}, input_shapes={"x": ((1, 3, 8, 8), "float16")}, seed=3, workdir=cache,
        options={"keep_fp32_ops": ["Softmax"]}, layers="conv.*", limit=4, max_memory="2G", step_bytes=256 << 20,
        random_inputs=2, metric_options={"rel_tol": 0.1, "abs_tol": 0.0, "kl_bins": None, "rms_tol": 0.1,
                                         "top1": False})
    assert calls == [str(model), str(model)]  # both front doors went through build()
    assert cli.flat() == api.flat()
    assert cli.thresholds == {"cosine": 0.99} and cli.max_memory == 2 << 30 and cli.input_dtypes == {"x": "float16"}


def _x(seed, n=2):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 1, 28, 28)).astype(np.float32))


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_in_memory_inputs_never_touch_disk(tmp_path, monkeypatch):
    """The arrays handed to parity.compare reach the sources as they are: no .npy/.npz is written
    (numpy's writers fail if called), nothing appears in the temporary folder, and the report is
    the one the same arrays give from files."""
    spare = tmp_path / "tmp"
    spare.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spare))
    xs = [_x(1), _x(2), _x(3)]
    files = tmp_path / "files"
    files.mkdir()
    for k, x in enumerate(xs):
        np.save(files / f"feed-{k}.npy", x.numpy())
    from_files = parity.compare(zoo.lenet(), inputs_path=files, ref="torch", target="torch-fp16", diagnose=False,
                                workdir=tmp_path / "c1", quiet=True)

    def refuse(*a, **k):
        raise AssertionError("in-memory inputs were written to disk")

    for name in ("save", "savez", "savez_compressed"):
        monkeypatch.setattr(np, name, refuse)
    monkeypatch.setattr(np.lib.format, "write_array", refuse)
    cache = tmp_path / "c2"
    rep = parity.compare(zoo.lenet(), (x for x in xs), ref="torch", target="torch-fp16", diagnose=False,
                         workdir=cache, quiet=True)
    assert _files(spare) == []
    assert not [f for f in _files(cache) if f.endswith((".npy", ".npz")) or "parity-inputs" in f]
    assert isinstance(rep.settings.inputs, MemoryFeeds)
    assert rep.summary["inputs"] == 3
    assert set(rep.summary.get("input_labels", {}).values()) <= {"feed 0", "feed 1", "feed 2"}
    for a, b in zip(rep.layers, from_files.layers):
        assert a.name == b.name and a.values["cosine"] == pytest.approx(b.values["cosine"], rel=1e-6)


SPECS = [InputSpec("x", (None, 1, 28, 28), "float32")]


def test_memory_feeds_read_a_generator_once_and_feed_it_again():
    """A one-pass iterable is kept as it is read: the first feed read early (to fail fast) is not
    lost, and a second pass (the fix search, calibration) sees the same feeds."""
    pulled = []

    def gen():
        for k in range(3):
            pulled.append(k)
            yield _x(k).numpy()

    fs = MemoryFeeds(obj=gen()).bound(SPECS)
    assert fs.first()[0] == "feed 0" and pulled == [0]
    again = MemoryFeeds(obj=None, _kept=fs._kept).bound(SPECS)  # another binding of the same feeds
    first = [(label, a["x"].copy()) for label, a in fs]
    second = [(label, a["x"]) for label, a in again]
    assert pulled == [0, 1, 2] and [l for l, _ in first] == ["feed 0", "feed 1", "feed 2"]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, second))
    assert np.array_equal(first[1][1], _x(1).numpy()) and fs.known_length() == 3


def test_memory_feeds_name_positional_inputs_limit_and_pickle():
    specs = [InputSpec("a", (None, 2), "float32"), InputSpec("b", (None, 2), "float32")]
    a, b = np.ones((1, 2), np.float32), np.zeros((1, 2), np.float64)  # b is cast to the model's float32
    fs = MemoryFeeds(obj=[(a, b), {"b": b, "a": a}, (a, b)], names=lambda: ["a", "b"]).bound(specs, limit=2)
    got = list(fs)
    assert [label for label, _ in got] == ["feed 0", "feed 1"] and fs.known_length() == 2
    assert all(f["b"].dtype == np.float32 and np.array_equal(f["a"], a) for _, f in got)
    clone = pickle.loads(pickle.dumps(MemoryFeeds(obj=(f for f in [(a, b)]), names=lambda: ["a", "b"])))
    assert [label for label, _ in clone.bound(specs)] == ["feed 0"]  # a Ray worker gets the arrays


@pytest.mark.parametrize("obj, specs, message", [
    ([np.zeros((1, 2))], [InputSpec("a", (None, 2), "float32"), InputSpec("b", (None, 2), "float32")],
     r"^inputs: feed 0: one array given but the model has inputs a, b"),
    ([{"a": np.zeros((1, 2))}], [InputSpec("a", (None, 2), "float32"), InputSpec("b", (None, 2), "float32")],
     r"^inputs: feed 0: arrays a do not name the model inputs a, b"),
    ([np.zeros((1, 3), np.float32)], [InputSpec("a", (None, 2), "float32")],
     r"^inputs: feed 0: input 'a' has shape \[1, 3\] but the model expects \['\?', 2\]"),
    (iter([]), SPECS, r"^inputs: the iterable gave no feed"),
])
def test_memory_feeds_refusals(obj, specs, message):
    with pytest.raises(parity.ParityError, match=message):
        MemoryFeeds(obj=obj).bound(specs).first()


def test_in_memory_inputs_count_in_the_memory_estimate():
    """As input files do: the arrays (both sides hold one feed) weigh in the estimate, and a run that
    cannot fit is refused naming the inputs given in memory."""
    from parity.core.compare import _check_size

    big = np.zeros((16, 1024, 1024), np.float32)  # 64 MiB a feed
    s = CompareSettings(model="m.onnx", inputs=MemoryFeeds(obj=[big, big, big]))
    _check_size(s, None, available=64 << 30)  # fits: silent
    with pytest.raises(parity.UsageError, match=r"^m\.onnx on the inputs given in memory: needs at least "
                                                r"256\.0 MiB of memory \(inputs 128\.0 MiB, activations 128\.0 MiB\)"):
        _check_size(s, None, available=100 << 20)

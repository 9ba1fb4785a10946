"""--save-ref/--save-target over several feeds write ONE dump per side (the feeds inside it), and
`parity analyze` compares two such dumps feed by feed; analyze never passes on layers it did not pair."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from parity import Activation, ParityError
from parity.core.analyze import analyze
from parity.core.compare import CompareSettings, compare
from parity.core.dumps import FEEDS_MANIFEST, feed_dumps, read_dump, write_dump
from support import cli

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "models" / "zoo.py"
METRICS = ["cosine", "rel-diff", "max-abs", "sqnr"]


def _lenet():
    spec = importlib.util.spec_from_file_location("zoo_for_dumps", ZOO)
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    return zoo.lenet()


@pytest.fixture(scope="module")
def feeds(tmp_path_factory):
    d = tmp_path_factory.mktemp("feeds")
    for i in range(3):
        np.save(d / f"img{i}.npy", np.random.default_rng(10 + i).standard_normal((2, 1, 28, 28)).astype(np.float32))
    return d


@pytest.fixture(scope="module")
def saved(feeds, tmp_path_factory):
    """One compare over the 3 feeds with both sides saved (npy), and its report."""
    out = tmp_path_factory.mktemp("saved")
    s = CompareSettings(model=f"{ZOO}:lenet", target="ort-fp16", inputs=str(feeds), metrics=METRICS,
                        workdir=str(out / "cache"), save_ref=str(out / "ref"), save_target=str(out / "tgt"))
    return out, compare(s)


def test_several_feeds_give_one_dump_per_side_holding_every_feed(saved, feeds):
    out, report = saved
    assert sorted(p.name for p in out.iterdir() if p.name != "cache") == ["ref", "tgt"]  # no ref-0, ref-1, ...
    doc = json.loads((out / "ref" / FEEDS_MANIFEST).read_text())
    assert doc["complete"] is True and [f["index"] for f in doc["feeds"]] == [0, 1, 2]
    listed = feed_dumps(out / "ref")
    assert [f.label for f in listed] == ["img0.npy", "img1.npy", "img2.npy"]
    # each feed's dump holds that feed's forward pass: torch's own conv1 and ip1 on the feed's array
    net = _lenet()
    seen = {}
    for name in ("conv1", "ip1"):
        getattr(net, name).register_forward_hook(lambda m, i, o, name=name: seen.update({name: o.detach().numpy()}))
    for f in listed:
        with torch.no_grad():
            net(torch.from_numpy(np.load(feeds / f.label)))
        recs = {a.name: a.array for a in read_dump(f.path)}
        for name in ("conv1", "ip1"):
            np.testing.assert_allclose(recs[name], seen[name], rtol=1e-5, atol=1e-6)
    assert len(feed_dumps(out / "tgt")) == 3 and not any(p.name.startswith(".") for p in out.iterdir())


def test_analyze_of_two_feed_dumps_is_the_dataset_report(saved):
    out, report = saved
    again = analyze(out / "ref", out / "tgt", metrics=METRICS)
    assert again.summary["inputs"] == 3
    a = {(r.ref_name, r.target_name): r for r in report.matched}
    b = {(r.ref_name, r.target_name): r for r in again.matched}
    assert a.keys() == b.keys() and len(a) >= 8
    for k in a:  # the dumps hold the very arrays that were scored: the same statistics, bit for bit
        assert (a[k].n_inputs, a[k].values, a[k].worst_inputs, a[k].pooled) == \
            (b[k].n_inputs, b[k].values, b[k].worst_inputs, b[k].pooled)


def test_a_feed_dump_is_not_read_as_one_run(saved):
    out, _ = saved
    with pytest.raises(ParityError, match=r"dump of 3 feeds .*parity analyze.*feed-00000") as e:
        list(read_dump(out / "ref"))
    assert "\n" not in str(e.value)
    one = feed_dumps(out / "tgt")[0].path
    with pytest.raises(ParityError, match=r"is a dump of 3 feeds .* but .* is a dump of one"):
        analyze(out / "ref", one)


def test_a_damaged_feeds_manifest_or_other_feeds_are_refused_in_one_line(saved, tmp_path):
    """formats.md's refusals: an incomplete manifest, a newer schema, a listed dump that is missing, and
    (analyze) two dumps of different feeds, each one line naming the file or the feeds."""
    import shutil

    out, _ = saved
    doc = json.loads((out / "ref" / FEEDS_MANIFEST).read_text())
    cases = {"incomplete": ({**doc, "complete": False}, "incomplete"),
             "newer": ({**doc, "schema_version": 99}, "upgrade parity"),
             "missing": ({**doc, "feeds": [*doc["feeds"], {"index": 9, "label": "x", "dump": "feed-00009"}]},
                         "missing"),
             "twice": ({**doc, "feeds": [*doc["feeds"], {**doc["feeds"][0], "dump": "feed-00001"}]}, "twice")}
    for name, (bad, says) in cases.items():
        d = shutil.copytree(out / "ref", tmp_path / name)
        (d / FEEDS_MANIFEST).write_text(json.dumps(bad))
        with pytest.raises(ParityError, match=says) as e:
            feed_dumps(d)
        assert "\n" not in str(e.value) and FEEDS_MANIFEST in str(e.value), str(e.value)
    fewer = shutil.copytree(out / "tgt", tmp_path / "fewer")
    (fewer / FEEDS_MANIFEST).write_text(json.dumps({**doc, "feeds": doc["feeds"][:2]}))
    with pytest.raises(ParityError, match=r"hold different feeds \(3 and 2; only in the reference: \[2\]") as e:
        analyze(out / "ref", fewer, metrics=METRICS)
    assert "\n" not in str(e.value)


def test_archive_format_and_one_feed(feeds, tmp_path):
    """npz: the feeds' archives inside one folder; a run of one feed still writes one plain archive."""
    s = CompareSettings(model=f"{ZOO}:lenet", target="torch-fp16", inputs=str(feeds), metrics=METRICS,
                        workdir=str(tmp_path / "cache"), save_ref=str(tmp_path / "ref"), save_format="npz")
    compare(s)
    assert [f.path.name for f in feed_dumps(tmp_path / "ref")] == ["feed-00000.npz", "feed-00001.npz",
                                                                   "feed-00002.npz"]
    one = CompareSettings(**{**s.__dict__, "limit": 1, "save_ref": str(tmp_path / "one")})
    compare(one)
    assert (tmp_path / "one.npz").is_file() and feed_dumps(tmp_path / "one.npz") is None
    assert {a.name for a in read_dump(tmp_path / "one.npz")} >= {"conv1", "ip1"}


def test_a_failed_run_leaves_no_dump(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    np.save(d / "0.npy", np.zeros((1, 1, 28, 28), np.float32))
    np.save(d / "1.npy", np.zeros((1, 3, 5, 5), np.float32))  # lenet takes [N, 1, 28, 28]: the 2nd feed fails
    s = CompareSettings(model=f"{ZOO}:lenet", target="torch-fp16", inputs=str(d), metrics=METRICS,
                        workdir=str(tmp_path / "cache"), save_ref=str(tmp_path / "out" / "ref"))
    with pytest.raises(ParityError, match="1.npy"):
        compare(s)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


# -- analyze: names that do not pair are never a pass ---------------------------------------------------


def _dump(path: Path, names: list[str], noise: float) -> Path:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((4, 8 + 4 * i)).astype(np.float32) for i in range(len(names))]
    recs = [Activation(n, a + noise * rng.standard_normal(a.shape).astype(np.float32), order=i)
            for i, (n, a) in enumerate(zip(names, arrays))]
    return write_dump(recs, path)


@pytest.fixture
def renamed(tmp_path):
    """The same 4 layers under other names (as two frameworks name them); one name in common."""
    ref = _dump(tmp_path / "ref", ["stem", "block1", "block2", "head"], 0.0)
    tgt = _dump(tmp_path / "tgt", ["stem", "/b1/Conv_output_0", "/b2/Conv_output_0", "/head/Gemm_output_0"], 1e-4)
    return ref, tgt


def test_analyze_pairs_renamed_layers_with_the_auto_matcher(renamed):
    rep = analyze(*renamed, metrics=METRICS)
    assert len(rep.matched) == 4 and not [r for r in rep.layers if not (r.ref_name and r.target_name)]
    assert {r.ref_name: r.target_name for r in rep.matched}["block2"] == "/b2/Conv_output_0"
    assert "exact names paired 1 of 4" in rep.summary["matcher"]
    for r in rep.matched:  # scored on the right pair: the noise is 1e-4 of unit values
        assert r.values["cosine"] > 0.9999


def test_analyze_with_exact_names_fails_naming_what_was_left_unmatched(renamed, capsys):
    rc, out, err = cli(capsys, "analyze", *renamed, "--matcher", "exact")
    assert rc == 1 and len(err) == 1
    assert "paired 1 of 4 reference layers (3 reference and 3 target layers left unmatched)" in err[0]
    assert "--matcher auto" in err[0]
    rc, out, err = cli(capsys, "analyze", *renamed)  # the default: auto takes over, and passes
    assert rc == 0, err


def test_a_target_dump_of_a_subset_still_pairs_by_exact_name(tmp_path):
    """Only one side has extra layers: exact names paired every layer of the other, nothing to retry."""
    ref = _dump(tmp_path / "ref", ["a", "b", "c"], 0.0)
    tgt = _dump(tmp_path / "tgt", ["a"], 1e-4)
    rep = analyze(ref, tgt, metrics=METRICS, matcher="exact")
    assert [r.name for r in rep.matched] == ["a"] and "matcher" not in rep.summary

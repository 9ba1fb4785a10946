"""Datasets as inputs: folders streamed one file at a time, Python iterables and DataLoaders, stable indices."""
import gc
import tracemalloc

import numpy as np
import pytest

from parity.contract.errors import ParityError
from parity.contract.source import InputSpec
from parity.core.feeds import FileFeeds, PythonFeeds, is_python_dataset

SPECS = [InputSpec("x", (None, 4, 64), "float32")]


def _folder(tmp_path, n, shape=(1, 4, 64)):
    d = tmp_path / "feeds"
    d.mkdir()
    for i in range(n):
        np.save(d / f"{i:05d}.npy", np.full(shape, float(i), np.float32))
    return d


def test_a_folder_streams_in_name_order_with_stable_indices_and_shards(tmp_path):
    d = _folder(tmp_path, 10)
    fs = FileFeeds(SPECS, path=str(d))
    assert fs.known_length() == 10
    got = [(f.index, f.label, float(f.arrays["x"][0, 0, 0])) for f in fs.iter()]
    assert got == [(i, f"{i:05d}.npy", float(i)) for i in range(10)]
    # shards (contiguous blocks or strides) cover every feed once, under the same indices
    blocks = [f.index for a in range(0, 10, 3) for f in fs.iter(a, min(a + 3, 10))]
    strides = sorted(f.index for w in range(3) for f in fs.iter(w, None, 3))
    assert blocks == strides == list(range(10))
    assert [f.index for f in FileFeeds(SPECS, path=str(d), limit=4).iter()] == [0, 1, 2, 3]


def test_a_thousand_feeds_stream_without_holding_them(tmp_path):
    d = _folder(tmp_path, 1000, shape=(1, 4, 1024))  # 16 KiB a feed, 16 MiB in all
    fs = FileFeeds([InputSpec("x", (None, 4, 1024), "float32")], path=str(d))
    gc.collect()
    tracemalloc.start()
    n = 0
    total = 0.0
    for f in fs.iter():
        n += 1
        total += float(f.arrays["x"][0, 0, 0])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 1000 and total == sum(range(1000))
    assert peak < 2 << 20, f"peak {peak} bytes: feeds are being held"


def test_python_datasets_generators_lists_tuples_and_dataloaders(tmp_path, monkeypatch):
    mod = tmp_path / "mydata.py"
    mod.write_text(
        "import numpy as np\n"
        "def gen():\n"
        "    for i in range(5):\n"
        "        yield np.full((2, 4, 64), i, np.float32)\n"
        "def pairs():\n"
        "    return [(np.full((1, 4, 64), i, np.float32), i % 2) for i in range(3)]\n"
        "def dicts():\n"
        "    return [{'x': np.full((1, 4, 64), 7, np.float32), 'unused': 1}]\n"
        "def loader():\n"
        "    import torch\n"
        "    from torch.utils.data import DataLoader, TensorDataset\n"
        "    x = torch.arange(6 * 4 * 64, dtype=torch.float32).reshape(6, 4, 64)\n"
        "    return DataLoader(TensorDataset(x, torch.zeros(6)), batch_size=4)\n")
    spec = f"{mod}:gen"
    assert is_python_dataset(spec) and not is_python_dataset(str(mod))
    fs = PythonFeeds(SPECS, spec=spec)
    assert fs.known_length() is None  # a generator does not know
    assert [(f.index, float(f.arrays["x"][0, 0, 0])) for f in fs.iter()] == [(i, float(i)) for i in range(5)]
    # iterating again calls the function again; a shard skips to its start
    assert [f.index for f in fs.iter(1, None, 2)] == [1, 3]
    pairs = PythonFeeds(SPECS, spec=f"{mod}:pairs")
    assert pairs.known_length() == 3  # a list knows
    assert [float(f.arrays["x"][0, 0, 0]) for f in pairs.iter()] == [0.0, 1.0, 2.0]  # labels ignored
    assert float(PythonFeeds(SPECS, spec=f"{mod}:dicts").first()[1]["x"][0, 0, 0]) == 7.0
    dl = PythonFeeds(SPECS, spec=f"{mod}:loader")
    batches = [f.arrays["x"] for f in dl.iter()]
    assert dl.known_length() == 2 and [b.shape for b in batches] == [(4, 4, 64), (2, 4, 64)]
    assert batches[0].dtype == np.float32 and float(batches[1][0, 0, 0]) == 4 * 4 * 64


def test_bad_python_datasets_are_one_line(tmp_path):
    mod = tmp_path / "bad.py"
    mod.write_text("def num():\n    return 3\n"
                   "def short():\n    return [()]\n"
                   "def boom():\n    raise KeyError('nope')\n")
    for fn, msg in (("num", "returned int, not an iterable"), ("short", "0 values for 1 inputs"),
                    ("boom", "calling it failed: KeyError"), ("missing", "has no attribute 'missing'")):
        with pytest.raises(ParityError, match=msg) as e:
            PythonFeeds(SPECS, spec=f"{mod}:{fn}").first()
        assert "\n" not in str(e.value)


def test_default_calibration_is_the_first_feeds_bounded_by_bytes(tmp_path):
    d = _folder(tmp_path, 10)
    fs = FileFeeds(SPECS, path=str(d))
    assert len(fs.head(64)) == 10
    assert len(fs.head(3)) == 3
    one = 4 * 64 * 4
    assert len(fs.head(64, max_bytes=2 * one)) == 2
    assert len(fs.head(64, max_bytes=1)) == 1  # at least one


def _rss() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_thousand_feed_comparison_keeps_flat_memory(tmp_path):
    """End to end (torch vs ONNX Runtime): memory after 1,000 feeds is what it was after 100, but for the
    per-input values the report keeps (16 bytes per layer, metric and input)."""
    from pathlib import Path

    from parity.core.compare import CompareSettings, finish, prepare, run_feeds

    zoo = Path(__file__).resolve().parents[1] / "models" / "zoo.py"
    d = tmp_path / "feeds"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1000):
        np.save(d / f"{i:04d}.npy", rng.standard_normal((1, 8, 32)).astype(np.float32))
    s = CompareSettings(model=f"{zoo}:encoder", target="ort", inputs=str(d), workdir=str(tmp_path / "cache"))
    prep = prepare(s)
    stats = run_feeds(prep, s, prep.feeds.iter(0, 100), total=1000)
    gc.collect()
    tracemalloc.start()
    rss0 = _rss()
    stats = run_feeds(prep, s, prep.feeds.iter(100, 1000), total=1000, stats=stats)
    gc.collect()
    grown, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_grown = _rss() - rss0
    rep = finish(s, stats)
    kept = sum(len(st.samples) for st in stats.layers.values()) * 900 * 16
    assert rep.summary["inputs"] == 1000 and all(l.n_inputs == 1000 for l in rep.matched)
    assert grown < kept + (1 << 20), f"python memory grew {grown} bytes over 900 feeds (values kept: {kept})"
    assert rss_grown < 64 << 20, f"resident memory grew {rss_grown >> 20} MiB over 900 feeds"

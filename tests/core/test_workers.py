"""--workers: feeds sharded over Ray actors (a local Ray, 2 workers) give the one-process report bit
for bit (values, pooled values), also when a worker process is killed mid-run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parity.contract.errors import ParityError
from parity.core.compare import CompareSettings, compare, sharding_steps

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "models" / "zoo.py"
METRICS = ["cosine", "rel-diff", "max-abs", "sqnr", "nonfinite"]
ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'parity[ray]')")


def _same(a, b):
    assert a.summary.get("inputs") == b.summary.get("inputs")
    assert {k: v for k, v in a.summary.items() if k not in ("workers", "model", "worker_usage")} == \
        {k: v for k, v in b.summary.items() if k not in ("workers", "model", "worker_usage")}
    assert [l.name for l in a.layers] == [l.name for l in b.layers]
    for la, lb in zip(a.layers, b.layers):
        assert (la.status, la.n_inputs, la.ref_nan, la.target_inf) == (lb.status, lb.n_inputs, lb.ref_nan, lb.target_inf)
        assert la.values == lb.values and la.worst_inputs == lb.worst_inputs and la.quantiles == lb.quantiles
        assert la.pooled.keys() == lb.pooled.keys()
        assert la.pooled == lb.pooled  # bit for bit: the pooled sums are exact, whatever the merge order


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def test_two_workers_give_the_one_process_report_on_a_64_feed_folder(tmp_path, cache):
    d = tmp_path / "feeds"
    d.mkdir()
    for i in range(64):
        np.save(d / f"{i:03d}.npy", np.random.default_rng(i).standard_normal((1, 1, 28, 28)).astype(np.float32))
    s = CompareSettings(model=f"{ZOO}:lenet", target="ort-fp16", inputs=str(d), metrics=METRICS, workdir=cache)
    one = compare(s)
    import parity

    # the Python API, as a user calls it
    two = parity.compare(f"{ZOO}:lenet", inputs_path=d, target="ort-fp16", metrics=METRICS, workdir=cache,
                         diagnose=False, workers=2, quiet=True)
    assert one.summary["inputs"] == two.summary["inputs"] == 64 and two.summary["workers"] == 2
    assert any(l.pooled for l in one.layers)
    _same(one, two)


DATASET = '''
import os, signal
import numpy as np

DRIVER, MARK = {driver}, {mark!r}

class Feeds:
    """64 feeds; in a Ray worker (not the driver), the first time item 37 is read the process kills itself."""
    def __len__(self):
        return 64

    def __iter__(self):
        for i in range(64):
            if i == 37 and os.getpid() != DRIVER and not os.path.exists(MARK):
                open(MARK, "w").write(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            yield np.random.default_rng(100 + i).standard_normal((1, 1, 28, 28)).astype(np.float32)

def feeds():
    return Feeds()
'''


def test_a_worker_killed_mid_run_is_retried_and_nothing_is_counted_twice(tmp_path, cache):
    mark = tmp_path / "killed.pid"
    ds = tmp_path / "ds.py"
    ds.write_text(DATASET.format(driver=os.getpid(), mark=str(mark)))
    spec = f"{ds}:feeds"
    # --save-target below captures every target tensor (a dump should be whole), so the one-process
    # run captures them all too: the rows then include the target-only ones on both sides
    one = compare(CompareSettings(model=f"{ZOO}:lenet", target="ort-fp16", inputs=spec, metrics=METRICS,
                                  workdir=cache, all_tensors=True))
    assert any(l.ref_name is None for l in one.layers)
    assert not mark.exists()  # the driver never kills itself
    out = tmp_path / "r.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "tests"), os.environ.get("PYTHONPATH")) if p)}
    # relative paths, as a user types them: the workers see the driver's folder
    r = subprocess.run([sys.executable, "-m", "parity", "compare", f"{ZOO}:lenet", "--target", "ort-fp16",
                        "--inputs", "ds.py:feeds", "--metrics", ",".join(METRICS), "--workdir", cache,
                        "--workers", "2", "--json", "r.json", "--save-ref", "ref", "--save-target", "tgt", "-q"],
                       capture_output=True, text=True, env=env,
                       timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert mark.exists() and int(mark.read_text()) != os.getpid()  # a worker really died mid-run
    doc = json.loads(out.read_text())
    assert doc["summary"]["inputs"] == 64 and doc["summary"]["workers"] == 2
    rows = {l["name"]: l for l in doc["layers"]}
    assert len(rows) == len(one.layers)
    for l in one.layers:
        got = rows[l.name]
        assert got["n_inputs"] == l.n_inputs == 64
        assert got["values"] == l.values  # bit for bit (JSON writes floats as repr: they round-trip)
        assert got["worst_inputs"] == l.worst_inputs
        assert got["pooled"] == l.pooled
    # the workers' dumps: one per side, every feed once (feed 37's block was retried), and the
    # target's dumps re-analyzed against the reference's give the report bit for bit
    from parity.core.analyze import analyze
    from parity.core.dumps import feed_dumps

    for side in ("ref", "tgt"):
        assert [f.index for f in feed_dumps(tmp_path / side)] == list(range(64))
    again = analyze(tmp_path / "ref", tmp_path / "tgt", metrics=METRICS)
    b = {(r.ref_name, r.target_name): r for r in again.matched}
    for l in one.matched:
        assert b[(l.ref_name, l.target_name)].values == l.values and b[(l.ref_name, l.target_name)].pooled == l.pooled
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_workers_without_ray_say_how_to_install_it(monkeypatch):
    from parity.core import workers

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as where it is absent
    with pytest.raises(ParityError, match=r"pip install 'parity\[ray\]'"):
        workers.compare_sharded(CompareSettings(model=f"{ZOO}:lenet", workers=2), sharding_steps())


def test_blocks_cover_every_feed_once():
    from parity.core.workers import blocks

    for n in (1, 7, 64, 1000):
        for w in (1, 2, 3):
            idx = [i for a, b, s in blocks(n, w) for i in range(a, b, s)]
            assert idx == list(range(n))
    assert blocks(None, 2) == [(0, None, 2), (1, None, 2)]


def test_a_bad_input_is_the_one_process_error_not_a_dead_worker(tmp_path, cache):
    d = tmp_path / "bad"
    d.mkdir()
    np.save(d / "0.npy", np.zeros((1, 3, 5, 5), np.float32))  # lenet takes [N, 1, 28, 28]
    s = CompareSettings(model=f"{ZOO}:lenet", target="ort-fp16", inputs=str(d), workdir=cache)
    with pytest.raises(ParityError) as one:
        compare(s)
    with pytest.raises(ParityError) as sharded:
        compare(CompareSettings(**{**s.__dict__, "workers": 2}))
    assert str(sharded.value) == str(one.value) and "0.npy" in str(one.value)
    assert type(sharded.value) is ParityError and "\n" not in str(sharded.value)


def test_a_workers_error_names_the_api_parameters_when_the_api_asked(tmp_path, cache):
    """A shape error found inside a Ray worker speaks the driver's front end: parity.compare's
    ``input_shapes``, where the command line's run says ``--input-shape``."""
    import parity

    d = tmp_path / "feeds"
    d.mkdir()
    for k in range(2):
        np.save(d / f"{k}.npy", np.zeros((1, 1, 28, 28), np.float32))
    with pytest.raises(ParityError) as api:
        parity.compare(f"{ZOO}:lenet", inputs_path=d, input_shapes={"z": (1, 2)}, target="ort", workers=2,
                       workdir=cache, quiet=True)
    assert "input_shapes names 'z'" in str(api.value) and "--input-shape" not in str(api.value)
    with pytest.raises(ParityError) as cli:
        compare(CompareSettings(model=f"{ZOO}:lenet", target="ort", inputs=str(d), input_shapes={"z": (1, 2)},
                                workers=2, workdir=cache))
    assert "--input-shape names 'z'" in str(cli.value)

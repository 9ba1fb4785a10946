"""A folder of feeds reuses the ONNX Runtime source's models and session: counted, not timed.

Issue 12: every feed of a folder used to re-export/re-load the model and build a new session.
The reuse must not change a value: a folder run's report equals the merge of one run per file.
"""
import gc
from pathlib import Path

import numpy as np
import pytest

import parity_builtin_onnxruntime.runner as runner
from parity.contract.source import RunConfig
from parity.core.compare import CompareSettings, compare
from parity.core.engine import merge_reports
from parity_builtin_onnxruntime.source import OrtSource

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[3]
MODEL = f"{ROOT / 'tests' / 'models' / 'zoo.py'}:encoder"
N = 4


@pytest.fixture
def sessions(monkeypatch):
    """How many ONNX Runtime sessions the ort source builds (the real ``make_session`` still runs)."""
    made: list[str] = []
    real = runner.make_session

    def counting(*args, **kwargs):
        made.append(args[-1] if args else "")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "make_session", counting)
    return made


def _feeds(folder: Path) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(12)
    files = []
    for k in range(N):
        f = folder / f"in{k}.npz"
        np.savez(f, x=rng.standard_normal((1, 8, 32)).astype(np.float32))
        files.append(f)
    return files


def _compare(inputs: Path, workdir: Path, options: dict) -> object:
    return compare(CompareSettings(model=MODEL, ref="torch", target="ort", inputs=str(inputs),
                                   workdir=str(workdir), source_options=dict(options)))


def _values(rep) -> dict:
    return {(r.ref_name, r.target_name): (r.status, r.values) for r in rep.layers}


@pytest.mark.parametrize("options, steps", [({}, False), ({"ort_output_batch": 4}, True)])
def test_folder_run_builds_one_session_and_matches_per_feed_runs(options, steps, sessions, tmp_path):
    files = _feeds(tmp_path / "feeds")
    work = tmp_path / "cache"
    singles = []
    per_feed = []
    for f in files:
        before = len(sessions)
        singles.append(_compare(f, work, options))
        per_feed.append(len(sessions) - before)
    assert len(set(per_feed)) == 1 and per_feed[0] >= 1
    sessions.clear()
    folder = _compare(tmp_path / "feeds", work, options)
    # each run also builds one session of the model as deployed (outputs only, parity.core.deployed),
    # kept for every feed like a one-session capture
    if steps:  # step models depend on the feed: built per feed, as before
        assert per_feed[0] > 2
        assert len(sessions) == N * (per_feed[0] - 1) + 1
    else:
        assert per_feed[0] == 2
        assert len(sessions) == 2, sessions  # not one per feed
    merged = merge_reports(singles)
    got, want = _values(folder), _values(merged)
    assert got.keys() == want.keys() and len(got) >= 8
    for k in want:
        assert got[k][0] == want[k][0], k
        assert got[k][1] == pytest.approx(want[k][1], rel=0, abs=0, nan_ok=True), k


def _arrays(src, cfg, feed):
    return {a.name: a.array for a in src.run(cfg, feed)}


def test_a_new_shape_or_run_gets_its_own_session_and_the_old_one_is_released(sessions, tmp_path):
    src = OrtSource("fp32")
    cfg = RunConfig(model=MODEL, workdir=tmp_path / "cache")
    rng = np.random.default_rng(3)
    one = {"x": rng.standard_normal((1, 8, 32)).astype(np.float32)}
    three = {"x": rng.standard_normal((3, 8, 32)).astype(np.float32)}
    first = _arrays(src, cfg, one)
    assert len(sessions) == 1
    assert _arrays(src, cfg, dict(one)).keys() == first.keys()
    assert len(sessions) == 1  # same run, same signature: reused
    got3 = _arrays(src, cfg, three)
    assert len(sessions) == 2  # another shape: never a session built for (1, 8, 32)
    assert {a.shape[0] for a in got3.values() if a.ndim == 3} == {3}
    # the same values as a source that keeps nothing between feeds
    fresh = {a.name: a.array for a in runner.capture("fp32", cfg, three)}
    assert fresh.keys() == got3.keys()
    for name in fresh:
        np.testing.assert_array_equal(got3[name], fresh[name])
    # another option is another key, even on the same cfg object
    cfg.options["ort_graph_optimization"] = "disable"
    n = len(sessions)
    _arrays(src, cfg, three)
    assert len(sessions) == n + 1
    # the run ends (its cfg is gone): the session is released
    assert src._plans._entries and all(plan.session is not None for _, _, plan in src._plans._entries)
    del cfg
    gc.collect()
    assert src._plans._entries == []

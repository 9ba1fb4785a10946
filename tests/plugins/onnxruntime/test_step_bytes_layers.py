"""Capture steps bounded by bytes, and ``--layers`` in the ONNX Runtime source, on a real exported BERT.

Issue 12 items 1 and 5: the capture used to step by tensor count, so memory grew with batch; and
every tensor was marked as an output whatever ``--layers`` asked. Both must leave every value as
the one-session, full capture has it.
"""
from pathlib import Path

import numpy as np
import pytest

import parity_builtin_onnxruntime.runner as runner
from parity.contract.errors import ParityError
from parity.contract.source import LayerSelection, RunConfig
from parity_builtin_onnxruntime.source import OrtSource

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

ZOO = Path(__file__).resolve().parents[2] / "models" / "real_zoo.py"
MODEL = f"{ZOO}:bert"
SELF1 = "bert.encoder.layer.1.attention.self"


@pytest.fixture
def sessions(monkeypatch):
    """Session builds and runs of the ort source (the real onnxruntime calls still happen)."""
    made: list[int] = []
    runs: list[int] = []
    real_make, real_run = runner.make_session, runner.run_session

    def make(*args, **kwargs):
        made.append(1)
        return real_make(*args, **kwargs)

    def run(sess, outputs, feed, label):
        runs.append(len(outputs))
        return real_run(sess, outputs, feed, label)

    monkeypatch.setattr(runner, "make_session", make)
    monkeypatch.setattr(runner, "run_session", run)
    return made, runs


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("bert_steps")


def _feed() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"input_ids": rng.integers(0, 90, size=(2, 16)).astype(np.int64)}


#: graph optimizations off: which tensors are outputs changes what onnxruntime fuses (a marked
#: tensor cannot be fused away), which moves values by a rounding; unfused, they must be identical
EXACT = {"ort_graph_optimization": "disable"}


def _same(got: np.ndarray, want: np.ndarray, precision: str) -> None:
    """fp32: identical. fp16: within a few fp16 roundings, because onnxruntime's CPU provider runs
    ops without fp16 kernels in fp32 and drops the fp16 round trip between two of them unless the
    tensor between is an output, so which tensors are marked decides where fp16 rounding happens."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if precision == "fp32":
        np.testing.assert_array_equal(got, want)
    else:
        scale = float(np.max(np.abs(want.astype(np.float64)))) if want.size else 0.0
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=0,
                                   atol=8 * 2.0**-11 * max(scale, 1e-3))


def _capture(work: Path, precision: str = "fp32", options: dict | None = None, **kw) -> dict[str, object]:
    cfg = RunConfig(model=MODEL, workdir=work, options={**EXACT, **(options or {})}, **kw)
    return {a.name: a for a in OrtSource(precision).run(cfg, _feed())}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_small_step_bytes_gives_the_one_step_values_in_more_runs(work, sessions, precision):
    made, runs = sessions
    whole = _capture(work, precision, step_bytes=0)  # 0: no byte limit, one session
    assert len(runs) == 1 and len(made) == 1
    sizes = {k: a.array.nbytes for k, a in whole.items()}
    budget = 4 * max(sizes.values())
    made.clear()
    runs.clear()
    stepped = _capture(work, precision, step_bytes=budget)
    assert list(stepped) == list(whole)  # same tensors, same order
    for k, a in whole.items():
        _same(stepped[k].array, a.array, precision)
    # the plan's steps hold at most the budget of *real* bytes (a step of one tensor aside), and
    # the runs are as many as the bytes need: at least total / budget, at most one per step
    plan = runner.plan_capture(precision, RunConfig(model=MODEL, workdir=work, step_bytes=budget, options=EXACT),
                               _feed())
    for chunk in plan.chunks:
        real = sum(sizes.get(site.name, 0) for site, _, _ in chunk)
        assert len(chunk) == 1 or real <= budget
    total = sum(sizes.values())
    assert -(-total // budget) <= len(runs) == len(made) <= len(plan.chunks)
    assert len(runs) > 1


def test_a_tensor_above_the_budget_is_a_step_alone(work, sessions):
    made, runs = sessions
    whole = _capture(work, step_bytes=0)
    runs.clear()
    stepped = _capture(work, step_bytes=1)  # every tensor exceeds one byte
    assert len(runs) == len(whole)
    for k, a in whole.items():
        np.testing.assert_array_equal(stepped[k].array, a.array)


def test_ort_output_batch_caps_tensors_per_step_alone_and_with_bytes(work, sessions):
    made, runs = sessions
    whole = _capture(work, step_bytes=0)
    n = len(whole)
    runs.clear()
    _capture(work, options={"ort_output_batch": 10})  # alone: its old meaning, 10 tensors a run
    assert len(runs) == -(-n // 10)
    runs.clear()
    _capture(work, options={"ort_output_batch": 0})  # alone, 0: one session
    assert len(runs) == 1
    runs.clear()
    _capture(work, options={"ort_output_batch": 10, "step_bytes": "1GiB"})  # both caps hold
    assert len(runs) == -(-n // 10)


def test_step_bytes_option_and_its_errors():
    assert runner.parse_bytes("256MiB") == runner.parse_bytes("256M") == 256 * 2**20
    assert runner.parse_bytes("1GB") == 10**9
    assert runner.parse_bytes(4096) == 4096
    cfg = RunConfig(model="m.onnx", options={"step_bytes": "2k"})
    assert runner.step_limits(cfg) == (2048, None)
    assert runner.step_limits(RunConfig(model="m.onnx", step_bytes=100, options={"step_bytes": "2k"})) == (100, None)
    assert runner.step_limits(RunConfig(model="m.onnx")) == (runner.DEFAULT_STEP_BYTES, None)
    assert runner.step_limits(RunConfig(model="m.onnx", options={"ort_output_batch": 8})) == (None, 8)
    with pytest.raises(ParityError, match="not a size"):
        runner.parse_bytes("lots")
    with pytest.raises(ParityError, match="negative"):
        runner.parse_bytes(-1)


def test_step_chunks_pure():
    assert [list(r) for r in runner.step_chunks([5, 5, 5, 20, 1], 10, None)] == [[0, 1], [2], [3], [4]]
    assert [list(r) for r in runner.step_chunks([1] * 5, None, 2)] == [[0, 1], [2, 3], [4]]
    assert [list(r) for r in runner.step_chunks([1] * 5, None, None)] == [[0, 1, 2, 3, 4]]
    assert runner.step_chunks([], 10, None) == []


def test_layers_capture_only_the_selected_tensors_with_equal_values(work, sessions):
    made, runs = sessions
    whole = _capture(work, step_bytes=0)
    outputs = {k for k, a in whole.items() if a.meta["is_output"]}
    sel = LayerSelection(pattern=SELF1.replace(".", r"\."))
    runs.clear()
    part = _capture(work, step_bytes=0, layers=sel)
    assert len(runs) == 1
    # exactly the records the core's own filter would keep (name, module path, node, enclosing module)
    kept = {k for k, a in whole.items() if a.meta["is_output"] or sel.selects(
        a.name, a.meta.get("module_path"), a.meta.get("onnx_node"), a.meta.get("within"))}
    assert outputs < set(part) and set(part) == kept
    assert runs[0] == len(part) < len(whole)
    assert any(a.meta.get("module_path", "") and a.meta["module_path"].startswith(SELF1) for a in part.values())
    for k, a in part.items():
        np.testing.assert_array_equal(a.array, whole[k].array)


def test_layers_by_exact_tensor_name_fp16(work, sessions):
    made, runs = sessions
    whole = _capture(work, "fp16", step_bytes=0)
    inner = [k for k, a in whole.items() if not a.meta["is_output"]]
    pick = {inner[3], inner[len(inner) // 2]}
    runs.clear()
    part = _capture(work, "fp16", step_bytes=0, layers=LayerSelection(names=frozenset(pick)))
    outputs = {k for k, a in whole.items() if a.meta["is_output"]}
    assert set(part) == pick | outputs
    assert runs == [len(part)]
    for k, a in part.items():
        _same(a.array, whole[k].array, "fp16")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_estimated_sizes_equal_the_arrays(work, precision):
    """Steps are planned on sizes known before the run: on BERT (whose attention mask is a
    constant broadcast to the batch, a dimension inference leaves unknown) each equals the array's."""
    import onnx

    from parity.lib.onnx.graph import estimated_bytes, inferred_info

    recs = _capture(work, precision, step_bytes=0)
    feed = _feed()
    shapes = {k: v.shape for k, v in feed.items()}
    m = onnx.load(next(iter(recs.values())).meta["run_model_file"])
    est = estimated_bytes(m, inferred_info(m, shapes), {k: v.nbytes for k, v in feed.items()},
                          *runner.guess_dims(shapes))
    for k, a in recs.items():
        assert est[a.meta.get("onnx_tensor", k)] == a.array.nbytes, k

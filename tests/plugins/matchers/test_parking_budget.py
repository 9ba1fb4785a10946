"""The built-in matchers park through ctx.parking: a tiny memory budget spills nearly everything to a
few files, and the report is the same as with everything held in memory."""
import numpy as np
import pytest

from parity.contract.matcher import MatchContext, Matcher
from parity.lib.scoring import metric_similarity
from parity.contract.records import Activation
from parity.contract.source import RunConfig
from parity.core.engine import run_engine
from parity.core.registry import get_metric
from parity_builtin_matchers import AutoMatcher, ExactMatcher
from support import ZOO

pytest.importorskip("onnxruntime")


def _capture(source, model, tmp_path):
    from support import load_zoo

    shape = getattr(load_zoo(), model)().parity_input_shapes["x"]
    feed = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    cfg = RunConfig(model=f"{ZOO}:{model}", workdir=tmp_path / "cache")
    return list(source.run(cfg, feed))


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    """Reference (torch) records of two zoo models and two targets: ONNX Runtime (for the auto matcher)
    and torch-fp16 in reverse order (names alike, so the exact matcher pairs; reversed, every reference
    record waits for its partner), captured once."""
    from parity_builtin_onnxruntime.source import OrtSource
    from parity_builtin_torch.source import TorchSource

    tmp = tmp_path_factory.mktemp("parking")
    return {m: (_capture(TorchSource("fp32"), m, tmp), {"auto": _capture(OrtSource("fp32"), m, tmp),
                                                        "exact": _capture(TorchSource("fp16"), m, tmp)[::-1]})
            for m in ("encoder", "resnet")}


def _report(matcher, ref, tgt, budget, spill):
    ctx = MatchContext(similarity=metric_similarity(get_metric("cosine")), spill_dir=str(spill), max_memory=budget)
    # fresh records each run: what a source yields is the consumer's (a copy stands in for a new capture)
    fresh = lambda acts: (Activation(a.name, a.array.copy(), a.output_index, a.order, a.op_type, dict(a.meta))
                          for a in acts)
    rep = run_engine(Matcher.match(matcher, fresh(ref), fresh(tgt), None, ctx), ["cosine", "max-abs", "sqnr"])
    return rep, ctx


@pytest.mark.parametrize("model", ["encoder", "resnet"])
@pytest.mark.parametrize("matcher", [AutoMatcher(), ExactMatcher()], ids=["auto", "exact"])
def test_tiny_budget_gives_the_same_report_as_a_large_one(streams, model, matcher, tmp_path):
    ref, tgt = streams[model][0], streams[model][1][matcher.name]
    big, big_ctx = _report(matcher, ref, tgt, 1 << 34, tmp_path / "big")
    small, small_ctx = _report(matcher, ref, tgt, 4096, tmp_path / "small")
    rows = lambda rep: [(r.ref_name, r.target_name, r.match, r.status, r.values) for r in rep.layers]
    assert rows(small) == rows(big)  # names, methods and metric values all identical
    assert sum(r.status not in ("ref-only", "target-only") for r in big.layers) >= 10
    s, b = small_ctx.parking_stats, big_ctx.parking_stats
    assert b.spilled_bytes == 0 and b.files_created == 0
    if matcher.name == "auto":  # the whole reference waits until the target runs: nearly all of it on file
        assert s.spilled_bytes >= 0.9 * sum(a.nbytes for a in ref)
    else:  # the target comes reversed: the first half of either stream waits for the other's second half
        assert s.parked_arrays >= len(ref) // 2 and s.spilled_arrays >= 0.8 * s.parked_arrays
    assert s.peak_held_bytes <= 4096
    assert 1 <= s.files_created <= 2
    assert small_ctx.stats == big_ctx.stats
    assert not list(tmp_path.rglob("*.bin"))  # every spill file removed when the stream ended

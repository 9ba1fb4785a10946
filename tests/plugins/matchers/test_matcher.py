import mmap

import numpy as np
import pytest

from parity import Activation, ParityError
from parity.contract.matcher import MappingRules, MatchContext, normalize_name
from parity.core.engine import compare_streams
from parity.core.registry import get_metric
from parity.lib.parking import Parking
from parity.lib.scoring import metric_similarity
from parity_builtin_matchers import AutoMatcher, ExactMatcher


def _ctx():
    """What the core hands a matcher: the registered cosine metric as the similarity."""
    return MatchContext(similarity=metric_similarity(get_metric("cosine")))


@pytest.mark.parametrize("name,expected", [
    ("/layer1/layer1.0/conv1/Conv_output_0", "layer1.0.conv1"),
    ("layer1.0.conv1", "layer1.0.conv1"),
    ("/conv1/Conv", "conv1"),
    ("block#1", "block"),
    ("features_3_conv", "features.3.conv"),
    ("/encoder/layers.0/self_attn/Softmax_output_0", "encoder.layers.0.self.attn"),
])
def test_normalize_name(name, expected):
    assert normalize_name(name) == expected


def _a(name, arr, order, **meta):
    return Activation(name, arr, order=order, meta=meta)


def _pairs(m, ref, tgt, rules=None, ctx=None):
    return [(p.ref.key if p.ref else None, p.target.key if p.target else None, p.how)
            for p in m.match(iter(ref), iter(tgt), rules, ctx if ctx is not None else _ctx())]


def test_provenance_nested_scopes_repeated_calls_and_outputs(rng):
    x = [rng.standard_normal((1, 4)).astype(np.float32) for _ in range(6)]
    ref = [
        _a("conv", x[0], 0, module_path="conv"),
        _a("block#0", x[1], 1, module_path="block"),
        _a("block#1", x[2], 2, module_path="block"),
        _a("head.fc", x[3], 3, module_path="head.fc"),
        _a("head", x[3], 4, module_path="head"),
        _a("output", x[3], 5, is_output=True),
    ]
    tgt = [
        _a("node_conv2d", x[0], 0, scopes=["conv"]),
        _a("node_add", x[1], 1, scopes=["block"]),
        _a("node_add_1", x[2], 2, scopes=["block"]),
        _a("inner_matmul", x[4], 3, scopes=[]),
        _a("linear", x[3], 4, scopes=["head.fc", "head"], is_output=True, output_position=0),
    ]
    got = _pairs(AutoMatcher(), ref, tgt)
    assert ("conv", "node_conv2d", "provenance") in got
    assert ("block#0", "node_add", "provenance") in got
    assert ("block#1", "node_add_1", "provenance") in got
    assert ("output", "linear", "output") in got
    assert ("head.fc", "linear", "provenance") in got and ("head", "linear", "provenance") in got
    # a tensor inside a module with no counterpart is listed, not dropped
    assert (None, "inner_matmul", "unmatched") in got


def test_normalized_names_then_order_shape_then_values(rng):
    a, b, c, d, e = (rng.standard_normal(s).astype(np.float32) for s in [(2, 3), (5,), (7,), (7,), (7,)])
    ref = [_a("conv1", a, 0), _a("mystery", b, 1), _a("anchor", c, 2), _a("x", d, 3), _a("y", e, 4)]
    tgt = [_a("/conv1/Conv_output_0", a, 0), _a("t_17", b, 1), _a("anchor", c, 2),
           _a("q", e + 1e-4, 3), _a("p", d + 1e-4, 4)]
    ctx = _ctx()
    got = _pairs(AutoMatcher(), ref, tgt, ctx=ctx)
    assert ("conv1", "/conv1/Conv_output_0", "normalized") in got
    assert ("mystery", "t_17", "order+shape") in got
    # two layers of the same shape after the last anchor: order+shape cannot decide, values do
    assert ("x", "p", "value") in got and ("y", "q", "value") in got
    assert ctx.stats["value"] == 2 and ctx.stats["order+shape"] == 1
    # without a similarity (no cosine metric installed) the value step is skipped, never guessed
    got = _pairs(AutoMatcher(), ref, tgt, ctx=MatchContext())
    assert ("x", None, "unmatched") in got and not any(h == "value" for *_, h in got)


def test_value_step_uses_the_registered_metric_not_its_own(rng):
    """The similarity the matcher gets is computed by the metric plugin: a stand-in shows it is called."""
    calls = []
    cos = metric_similarity(get_metric("cosine"))

    def spy(a, b):
        calls.append((a.size, b.size))
        return cos(a, b)

    d, e = rng.standard_normal(7).astype(np.float32), rng.standard_normal(7).astype(np.float32)
    ref = [_a("x", d, 0), _a("y", e, 1)]
    tgt = [_a("q", e + 1e-4, 0), _a("p", d + 1e-4, 1)]
    got = _pairs(AutoMatcher(), ref, tgt, ctx=MatchContext(similarity=spy))
    assert ("x", "p", "value") in got and ("y", "q", "value") in got and len(calls) == 4
    assert AutoMatcher.similarity_metric == "cosine"


def test_value_step_refuses_weak_matches(rng):
    ref = [_a("x", rng.standard_normal(50).astype(np.float32), 0), _a("y", np.ones(50, np.float32), 1)]
    tgt = [_a("p", rng.standard_normal(50).astype(np.float32), 0), _a("q", np.ones(50, np.float32), 1)]
    got = _pairs(AutoMatcher(), ref, tgt)
    assert ("x", None, "unmatched") in got and (None, "p", "unmatched") in got


def test_mapping_rules_pin_and_exclude(tmp_path, rng):
    a, b = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    f = tmp_path / "map.toml"
    f.write_text('[pin]\n"fc" = "weird_name"\n[exclude]\nref = ["drop*"]\ntarget = ["Constant_*"]\n')
    rules = MappingRules.load(f)
    ref = [_a("fc", a, 0), _a("dropout", b, 1)]
    tgt = [_a("weird_name", a, 0), _a("Constant_3", b, 1)]
    for m in (AutoMatcher(), ExactMatcher()):  # the rules apply around whichever matcher is selected
        ctx = _ctx()
        got = _pairs(m, ref, tgt, rules, ctx)
        assert got == [("fc", "weird_name", "pinned")], m
        assert ctx.stats["excluded_ref"] == 1 and ctx.stats["excluded_target"] == 1 and ctx.stats["pinned"] == 1


def test_mapping_rules_with_the_exact_matcher_through_the_engine(rng, tmp_path):
    """Pins rename, exclusions drop, the rest is matched by the exact matcher; pins never reach it."""
    x = {n: rng.standard_normal(8).astype(np.float32) for n in ("a", "b", "c", "noise")}
    f = tmp_path / "map.toml"
    f.write_text('[pin]\n"b" = "b_renamed"\n"c" = "a"\n[exclude]\ntarget = ["noise*"]\n')
    ref = [_a("a", x["a"], 0), _a("b", x["b"], 1), _a("c", x["c"], 2)]
    # the target's "a" is pinned to the reference's "c": exact names must not pair a with a
    tgt = [_a("a", x["c"], 0), _a("b_renamed", x["b"], 1), _a("noise_1", x["noise"], 2), _a("z", x["a"], 3)]
    rep = compare_streams(iter(ref), iter(tgt), ["cosine"], matcher="exact", rules=MappingRules.load(f))
    got = {(l.ref_name, l.target_name, l.match) for l in rep.layers}
    assert got == {("b", "b_renamed", "pinned"), ("c", "a", "pinned"), ("a", None, "unmatched"),
                   (None, "z", "unmatched")}
    assert all(l.values["cosine"] == pytest.approx(1.0) for l in rep.layers if l.match == "pinned")


def test_rules_keep_the_exact_matcher_streaming():
    seen = []

    def stream(side, names):
        for i, n in enumerate(names):
            seen.append((side, n))
            yield Activation(n, np.ones(3, np.float32), order=i)

    rules = MappingRules(pins={"p": "q"}, exclude_ref=["x*"])
    pairs = ExactMatcher().match(stream("r", ["a", "x1", "p", "b"]), stream("t", ["a", "q", "b"]), rules)
    first = next(pairs)
    assert (first.ref.name, first.target.name) == ("a", "a") and seen == [("r", "a"), ("t", "a")]
    rest = [(p.ref and p.ref.name, p.target and p.target.name, p.how) for p in pairs]
    assert sorted(rest, key=str) == sorted([("p", "q", "pinned"), ("b", "b", "exact")], key=str)


@pytest.mark.parametrize("text,msg", [
    ("[pin\n", "not valid TOML"),
    ("[pin]\nfc = 3\n", "must map"),
    ("[exclude]\nsideways = []\n", "takes keys"),
    ("[other]\n", "unknown section"),
])
def test_mapping_errors_name_the_file(tmp_path, text, msg):
    f = tmp_path / "m.toml"
    f.write_text(text)
    with pytest.raises(ParityError, match=msg) as e:
        MappingRules.load(f)
    assert "m.toml" in str(e.value)


def test_pin_of_unknown_layer_is_an_error(tmp_path, rng):
    rules = MappingRules(pins={"nope": "x"})
    for m in (AutoMatcher(), ExactMatcher()):
        with pytest.raises(ParityError, match="nope.*reference layers include a"):
            list(m.match(iter([_a("a", np.ones(2, np.float32), 0)]), iter([]), rules))


def test_parking_beyond_budget_spills_to_a_read_only_map(tmp_path, rng):
    """With no memory budget, a parked array is a read-only view of a spill file under spill_dir."""
    store = Parking(0, tmp_path)
    big = rng.standard_normal(100_000).astype(np.float32)
    parked = store.park(Activation("big", big))
    assert not parked.array.flags.writeable and parked.array is not big
    assert isinstance(parked.array.base.base.obj, mmap.mmap)  # a view of the spill file's map
    np.testing.assert_array_equal(parked.array, big)
    assert store.dir is not None and store.dir.parent == tmp_path
    store.close()
    assert not store.dir.exists()


def test_third_party_matcher_through_register_matchers(rng):
    """A matcher contributed by a plugin's register_matchers(register) hook is used by name."""
    from parity import hookimpl
    from parity.core import registry as plugins
    from parity.core.engine import compare_streams
    from parity.contract.matcher import Matcher
    from parity.contract.records import Pair

    class ByOrder(Matcher):
        name = "by-order"
        description = "pair the i-th reference layer with the i-th target layer"

        def pairs(self, ref, target):
            for r, t in zip(ref, target):
                yield Pair(r, t, "by-order", 0.5)

    class Plugin:
        @hookimpl
        def register_matchers(self, register):
            register(ByOrder())

    p = Plugin()
    plugins.register_plugin(p, name="by-order-test")
    try:
        a = rng.standard_normal(8).astype(np.float32)
        rep = compare_streams(iter([Activation("x", a)]), iter([Activation("y", a)]), ["cosine"], matcher="by-order")
        assert rep.layers[0].match == "by-order" and rep.layers[0].values["cosine"] == pytest.approx(1.0)
        assert plugins.registry()["matcher"]["by-order"].plugin == "by-order-test"
    finally:
        plugins.unregister_plugin(p)


def test_exact_name_yields_to_disagreeing_provenance(rng):
    a, b = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    # torch module "relu" is block.relu's sibling; the ONNX tensor "relu" came from block.act
    ref = [_a("block.act", a, 0, module_path="block.act"), _a("relu", b, 1, module_path="relu")]
    tgt = [_a("relu", a, 0, scopes=["block.act"]), _a("relu_1", b, 1, scopes=["relu"])]
    got = _pairs(AutoMatcher(), ref, tgt)
    assert ("block.act", "relu", "provenance") in got and ("relu", "relu_1", "provenance") in got


def test_exact_matcher_streams_and_reports_unmatched():
    seen = []

    def stream(side, names):
        for i, n in enumerate(names):
            seen.append((side, n))
            yield Activation(n, np.ones(3, np.float32), order=i)

    pairs = ExactMatcher().match(stream("r", ["a", "b", "only_ref"]), stream("t", ["a", "b", "only_tgt"]))
    first = next(pairs)
    # the first pair leaves after one record from each side, before the rest is produced
    assert (first.ref.name, first.target.name) == ("a", "a")
    assert seen == [("r", "a"), ("t", "a")]
    rest = list(pairs)
    assert [(p.ref and p.ref.name, p.target and p.target.name, p.how) for p in rest] == [
        ("b", "b", "exact"), ("only_ref", None, "unmatched"), (None, "only_tgt", "unmatched")]

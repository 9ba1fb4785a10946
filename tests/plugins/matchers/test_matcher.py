import numpy as np
import pytest

from parity import Activation, ParityError
from parity.core.matcher import AutoMatcher, MappingRules, SpillStore, normalize_name


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


def _pairs(m, ref, tgt):
    return [(p.ref.key if p.ref else None, p.target.key if p.target else None, p.how)
            for p in m.pairs(iter(ref), iter(tgt))]


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
    m = AutoMatcher()
    got = _pairs(m, ref, tgt)
    assert ("conv1", "/conv1/Conv_output_0", "normalized") in got
    assert ("mystery", "t_17", "order+shape") in got
    # two layers of the same shape after the last anchor: order+shape cannot decide, values do
    assert ("x", "p", "value") in got and ("y", "q", "value") in got
    assert m.stats["value"] == 2 and m.stats["order+shape"] == 1


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
    m = AutoMatcher(rules)
    got = _pairs(m, ref, tgt)
    assert got == [("fc", "weird_name", "pinned")]
    assert m.stats["excluded_ref"] == 1 and m.stats["excluded_target"] == 1


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
    with pytest.raises(ParityError, match="nope"):
        list(AutoMatcher(rules).pairs(iter([_a("a", np.ones(2, np.float32), 0)]), iter([])))


def test_spill_store_parks_large_arrays_on_disk(tmp_path, rng):
    store = SpillStore(tmp_path)
    big = rng.standard_normal(100_000).astype(np.float32)
    parked = store.park(Activation("big", big))
    assert isinstance(parked.array, np.memmap)
    np.testing.assert_array_equal(parked.array, big)
    store.close()
    assert not store.dir.exists()


def test_third_party_matcher_through_register_matchers(rng):
    """A matcher contributed by a plugin's register_matchers(register) hook is used by name."""
    from parity import hookimpl
    from parity.core import registry as plugins
    from parity.core.engine import compare_streams
    from parity.contract.records import Pair
    from parity.core.matcher import Matcher

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

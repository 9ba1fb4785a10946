"""parity.core.parse: every form of thresholds, goals, byte sizes, layer selections and input shapes, and
every refusal, as the command line and the Python API each spell it."""
import pytest

from parity.contract.errors import ParityError, UsageError
from parity.contract.frontend import speaking
from parity.contract.source import LayerSelection
from parity.core.parse import (parse_bytes, parse_goal, parse_layers, parse_shapes, parse_thresholds,
                               split_layers)

METRICS = ["cosine", "rel-diff", "max-abs"]


# -- thresholds ------------------------------------------------------------------------------------
@pytest.mark.parametrize("given, expected", [
    (None, {}),
    ("0.999", {"cosine": 0.999}),                       # a bare value: the primary metric
    (0.5, {"cosine": 0.5}),
    ("cosine=0.99, rel-diff=99", {"cosine": 0.99, "rel-diff": 99.0}),
    ({"rel-diff": 5, "max-abs": "0.25"}, {"rel-diff": 5.0, "max-abs": 0.25}),
])
def test_threshold_forms(given, expected):
    assert parse_thresholds(given, METRICS) == expected


def test_threshold_defaults_to_the_default_metrics():
    assert parse_thresholds("0.9", None) == {"cosine": 0.9}


@pytest.mark.parametrize("given, message", [
    (",", r"^--threshold ',' gives no value\. Note: use 0\.999 or cosine=0\.999,rel-diff=99\.$"),
    ("cosine=high", r"^--threshold: 'cosine=high' is not a number\."),
    ("l2=0.1", r"^--threshold 'l2=0\.1': metric 'l2' is not selected\. Note: selected metrics are "
               r"cosine, rel-diff, max-abs \(--metrics\)\.$"),
    ("2", r"^--threshold 2: 2 is outside the values cosine takes\. Note: cosine values lie in \[-1, 1\]\.$"),
    ("nan", r"^--threshold nan: nan is not a value cosine can be compared with"),
    ("rel-diff=101", r"^--threshold rel-diff=101: 101 is outside the values rel-diff takes"),
])
def test_threshold_refusals_name_the_flag(given, message):
    with pytest.raises(UsageError, match=message):
        parse_thresholds(given, METRICS)


def test_threshold_refusals_name_the_api_parameter():
    with speaking("api"), pytest.raises(UsageError, match=r"^threshold 'l2=0\.1': metric 'l2' is not selected\. "
                                                          r"Note: selected metrics are .* \(metrics\)\.$"):
        parse_thresholds({"l2": 0.1}, METRICS)
    with speaking("api"), pytest.raises(UsageError, match=r"^threshold: 'cosine=x' is not a number"):
        parse_thresholds({"cosine": "x"}, METRICS)


# -- goals -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("given, expected", [
    ("cosine=0.999", ("cosine", 0.999)),
    ("0.99", ("cosine", 0.99)),                          # bare: the primary metric
    (0.9, ("cosine", 0.9)),
    ("max-abs=0.01", ("max-abs", 0.01)),
])
def test_goal_forms(given, expected):
    assert parse_goal(given, "cosine") == expected


@pytest.mark.parametrize("given, message", [
    ("cosine=abc", r"^--goal 'cosine=abc': expected METRIC=VALUE, e\.g\. cosine=0\.999$"),
    ("cosine=1.5", r"^--goal cosine=1\.5: 1\.5 is outside the values cosine takes\. Note: .*\[-1, 1\]"),
    ("max-abs=-1", r"^--goal max-abs=-1: -1 is outside the values max-abs takes"),
    ("nosuch=1", r"^--goal: .*nosuch"),
])
def test_goal_refusals_name_the_flag(given, message):
    with pytest.raises(UsageError, match=message):
        parse_goal(given, "cosine")


def test_goal_refusal_names_the_api_parameter():
    with speaking("api"), pytest.raises(UsageError, match=r"^goal cosine=2: 2 is outside the values cosine takes"):
        parse_goal("cosine=2", "cosine")


# -- byte sizes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("given, expected", [
    (None, None), ("2G", 2 << 30), ("2GiB", 2 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29),
    ("0.5GB", 5 * 10**8), ("1000000", 10**6), (4096, 4096), (0, 0),
])
def test_byte_size_forms(given, expected):
    assert parse_bytes(given, "max_memory") == expected


@pytest.mark.parametrize("front, key, given, message", [
    ("cli", "max_memory", "lots", r"^--max-memory='lots' is not a size\. Note: write e\.g\. 268435456, 256MiB or 1G$"),
    ("cli", "step_bytes", "2X", r"^--step-bytes='2X' is not a size"),
    ("api", "max_memory", "lots", r"^max_memory='lots' is not a size"),
    ("api", "step_bytes", -1, r"^step_bytes=-1 is negative\. Note: use 0 for no byte limit$"),
])
def test_byte_size_refusals(front, key, given, message):
    with speaking(front), pytest.raises(UsageError, match=message):
        parse_bytes(given, key)


# -- layer selections ------------------------------------------------------------------------------
def test_layer_selection_forms(tmp_path):
    assert split_layers(None) == (None, ()) and split_layers("") == (None, ())
    assert split_layers("conv.*") == ("conv.*", ())
    assert split_layers(["conv1", "fc2"]) == (None, ("conv1", "fc2"))
    assert parse_layers(None) is None
    assert parse_layers("conv.*") == LayerSelection("conv.*", frozenset())
    assert parse_layers(None, ("a", "b")) == LayerSelection(None, frozenset({"a", "b"}))
    f = tmp_path / "layers.txt"
    f.write_text("# the culprits\nconv1\n\n  fc2  \n", encoding="utf-8")
    sel = parse_layers(f"@{f}")
    assert sel == LayerSelection(None, frozenset({"conv1", "fc2"}))
    assert sel.selects("conv1") and not sel.selects("conv2")


def test_layer_selection_refusals(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(ParityError, match=rf"^--layers @{missing}: cannot read {missing} \("):
        parse_layers(f"@{missing}")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(ParityError, match=rf"^--layers @{empty}: {empty} names no layer\.$"):
        parse_layers(f"@{empty}")
    with pytest.raises(ParityError, match=r"^--layers 'conv\(': not a regular expression \("):
        parse_layers("conv(")
    with speaking("api"), pytest.raises(ParityError, match=r"^layers 'conv\(': not a regular expression"):
        parse_layers("conv(")


# -- input shapes ----------------------------------------------------------------------------------
def test_input_shape_forms_of_both_front_ends_agree():
    cli = parse_shapes(["x:1x3x8x8", "ids:1x16:int64"])
    api = parse_shapes({"x": (1, 3, 8, 8), "ids": ((1, 16), "int64")})
    assert cli == api == ({"x": (1, 3, 8, 8), "ids": (1, 16)}, {"ids": "int64"})
    assert parse_shapes({"x": [2, 4]}, {"x": "float16"}) == ({"x": (2, 4)}, {"x": "float16"})
    assert parse_shapes(["1x4"]) == ({"": (1, 4)}, {})  # unnamed: the model's single input
    assert parse_shapes(None) == ({}, {})


@pytest.mark.parametrize("given, message", [
    (["x:1xx3"], r"^--input-shape 'x:1xx3' is not understood"),
    (["x:1x0"], r"^--input-shape 'x:1x0' has a dimension of 0"),
    (["x:1x2", "x:1x3"], r"^--input-shape gives input 'x' twice"),
    ({"x": "abc"}, r"^input_shapes\['x'\] = 'abc' is not a shape"),
    ({"x": (1, 0)}, r"^input_shapes\['x'\] = \(1, 0\): every size must be at least 1"),
    ({"x": ((1, 2), "object")}, r"'object' for input 'x' is not a dtype parity can feed"),
])
def test_input_shape_refusals(given, message):
    with pytest.raises(UsageError, match=message):
        parse_shapes(given)

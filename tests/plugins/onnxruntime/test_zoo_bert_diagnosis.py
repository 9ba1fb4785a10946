"""The diagnosis an expert gives on a real BERT encoder with a padding mask (torch vs ONNX Runtime).

The mask is float32's minimum added to the attention scores, as ``BertModel`` builds it. In fp16 it
saturates to -inf and softmax turns it into the reference's exact 0: nothing is lost. In int8 the
calibrated scale of the mask-added scores is ~1e36, so every real score quantizes to 0: the
information is lost at that tensor's QuantizeLinear, and the diagnosis must say so.
"""
import math
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from parity.core.compare import CompareSettings, compare  # noqa: E402
from parity.core.diagnose import SATURATED  # noqa: E402

ZOO = Path(__file__).resolve().parents[2] / "models" / "real_zoo.py"
SELF0 = "bert.encoder.layer.0.attention.self"
SELF1 = "bert.encoder.layer.1.attention.self"


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    work = tmp_path_factory.mktemp("bert")
    out = {}
    for target in ("ort-fp16-strict", "ort-fp16", "ort-int8"):
        out[target] = compare(CompareSettings(model=f"{ZOO}:bert", ref="torch", target=target,
                                              workdir=str(work), diagnose=True))
    return out


def _by(rep):
    return {r.name: r for r in rep.layers}


def _mask_adds(rep, module):
    """The target-only Add rows inside ``module`` whose reference holds the mask constant."""
    return [r for r in rep.layers if r.status == "target-only" and r.meta.get("module") == module
            and r.target_op_type == "Add" and r.meta.get("local_useful_bound") is not None]


def test_fp16_mask_saturation_is_not_a_culprit(reports):
    """Strict fp16 storage (as on a GPU): the mask-added scores are stored in fp16 and saturate."""
    rep = reports["ort-fp16-strict"]
    assert _by(rep)["output"].values["cosine"] > 0.9999  # passes end to end
    assert rep.summary.get("first_culprit") is None, rep.summary.get("culprits")
    adds = _mask_adds(rep, SELF0) + _mask_adds(rep, SELF1)
    assert len(adds) == 2
    for add in adds:
        # 6 padded keys x 16 queries x 4 heads of batch row 1 are -3.4e38 in fp32, -inf in fp16
        assert add.local[SATURATED] == 6 * 16 * 4
        assert add.culprit_rank is None and "still match" in add.meta["saturation"]


def test_int8_culprit_is_the_quantizer_of_the_mask_added_scores(reports):
    rep = reports["ort-int8"]
    by = _by(rep)
    first = by[rep.summary["first_culprit"]]
    assert first.target_op_type == "Add", first.name  # the scores + mask, not the softmax after it
    assert first in _mask_adds(rep, SELF0)
    # the whole tensor still reads cosine 1: the mask values dominate it; its useful part is gone
    assert first.meta["local_whole"]["cosine"] > 0.9999
    assert first.local["cosine"] < 0.1
    q = first.meta["local_quantizer"]
    assert q["node"].endswith("QuantizeLinear") and q["scale"] > 1e30 and q["levels"] < 1e-30
    cause = rep.summary["first_culprit_cause"]
    assert q["node"] in cause and "quantize to 0" in cause
    # softmax, which only inherits the rounded input, comes after it
    assert all(by[c].order >= first.order for c in rep.summary["culprits"])


def test_module_row_local_error_is_the_module_run_alone(reports):
    rep = reports["ort-int8"]
    row = _by(rep)[SELF0]
    assert row.meta["local_module_run"] == SELF0 and row.meta["local_nodes"] > 10
    acc, loc = row.values["cosine"], row.local["cosine"]
    assert acc < 0.95  # the module destroys attention end to end
    assert math.isclose(loc, acc, abs_tol=0.02)  # and alone, fed the module's reference inputs
    # the module's last node alone (its Reshape) would read ~1: that is not what the row shows
    reshape = row.target_name
    assert not any(r.name == reshape and r.status == "target-only" for r in rep.layers)


def test_target_only_rows_keep_their_module_and_their_place(reports):
    rep = reports["ort-fp16"]
    by = _by(rep)
    for module in (SELF0, SELF1):
        inside = [r for r in rep.layers if r.status == "target-only" and r.meta.get("module") == module]
        assert {"Softmax", "Add", "MatMul", "Transpose"} <= {r.target_op_type for r in inside}
        # between the module's first child and the module's own output row
        assert all(by[f"{module}.query"].order < r.order < by[module].order for r in inside), \
            [(r.name, r.order) for r in inside]


def test_fp16_as_deployed_on_the_cpu_provider_keeps_the_mask_in_float32(reports):
    """The CPU provider has no fp16 kernel for Add and Softmax (parity doctor lists them), so the
    mask-added scores pass from the Add to the Softmax in float32: nothing saturates, nothing is blamed."""
    from parity.lib.onnx.asrun import cpu_fp32_only_ops

    rep = reports["ort-fp16"]
    assert {"Add", "Softmax"} <= set(cpu_fp32_only_ops(("Add", "Softmax")))
    assert _by(rep)["output"].values["cosine"] > 0.9999
    assert rep.summary.get("first_culprit") is None, rep.summary.get("culprits")
    adds = _mask_adds(rep, SELF0) + _mask_adds(rep, SELF1)
    assert len(adds) == 2
    for add in adds:
        assert add.target_dtype == "float32" and not add.local.get(SATURATED)
    assert rep.summary["deployed"]["perturbed"] is False

"""int8 root causes on synthetic tensors: sentinels however many, a quantizer against its useful values,
outlier channels. Every figure is checked against an independent numpy quantization
(``q = clip(round(x / s) + zp, qmin, qmax)``, ``x' = (q - zp) * s``)."""
import numpy as np
import pytest

from parity.core.diagnose import OUTLIER_RATIO, QUANT_MIN_LEVELS, outlier_channels, quantizer_stats, useful_bound
from parity.core.fix import int8_tool_forms, modelopt_disable_forms

NEG = np.finfo(np.float32).min


def _fake_quant(x, scale, zp, qmin=-128, qmax=127):
    q = np.clip(np.round(x.astype(np.float64) / scale) + zp, qmin, qmax)
    return (q - zp) * scale


def _minmax_qparams(x, qmin=-128, qmax=127):
    """ONNX Runtime's min/max calibration for an asymmetric int8 activation: the range includes 0."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / (qmax - qmin)
    return scale, int(round(qmin - lo / scale))


def _causal_scores(rng, b=2, h=2, t=16, real=(16, 8)):
    """Attention scores plus the HF causal + padding mask: float32's minimum where masked."""
    scores = (rng.standard_normal((b, h, t, t)) * 4).astype(np.float32)
    masked = np.triu(np.ones((t, t), bool), 1)[None, None].repeat(b, 0).repeat(h, 1)
    for i, n in enumerate(real):
        masked[i, :, :, n:] = True
    return np.where(masked, NEG, scores).astype(np.float32), masked, scores


def test_sentinels_found_when_they_are_the_majority(rng):
    x, masked, scores = _causal_scores(rng)
    assert masked.mean() > 0.5  # the median is itself the mask constant
    bound = useful_bound(x)
    assert bound == pytest.approx(float(np.abs(scores[~masked]).max()))


def test_sentinels_found_when_they_are_a_minority(rng):
    x, masked, scores = _causal_scores(rng, real=(16, 14))
    x = x[:, :, 8:]  # the lower half of the rows: few keys masked
    m = masked[:, :, 8:]
    assert 0 < m.mean() < 0.5
    assert useful_bound(x) == pytest.approx(float(np.abs(scores[:, :, 8:][~m]).max()))


def test_no_sentinels_in_data_spread_over_decades(rng):
    # softmax probabilities: most values near 0 (1e-30), a few near 1. The large ones are data, not a
    # constant, so nothing is left out whichever side is the majority
    logits = rng.standard_normal((64, 32)) * 40
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    assert useful_bound(p.astype(np.float32)) is None
    assert useful_bound(rng.standard_normal(4096).astype(np.float32)) is None
    # a majority of large values spread over a decade is not a mask either
    y = np.concatenate([rng.uniform(1e6, 1e7, 900), rng.standard_normal(100)])
    assert useful_bound(y) is None


def test_quantizer_against_the_useful_values_of_a_masked_tensor(rng):
    x, masked, scores = _causal_scores(rng)
    scale, zp = _minmax_qparams(x)  # calibration saw the mask constant
    assert scale > 1e35
    q = quantizer_stats(x, {"node": "add_QuantizeLinear", "tensor": "add", "producer": "node_add",
                            "producer_op": "Add", "scale": scale, "zero_point": zp}, useful_bound(x))
    useful = scores[~masked].astype(np.float64)
    deq = _fake_quant(useful, scale, zp)
    nz = useful != 0
    assert q["round_to_zero"] == pytest.approx(np.mean(deq[nz] == 0))  # every real score becomes 0
    assert q["round_to_zero"] == 1.0
    u_scale, _ = _minmax_qparams(useful)
    assert q["needed_scale"] == pytest.approx(u_scale)
    assert q["scale_ratio"] == pytest.approx(scale / u_scale) and q["scale_ratio"] > 100
    assert q["sentinels"] == int(masked.sum())
    assert q["bad"] and q["levels"] < QUANT_MIN_LEVELS
    for words in ("add_QuantizeLinear", "node_add", "quantize to 0", "mask-constant", "what its useful values need"):
        assert words in q["cause"], words


def test_a_well_scaled_quantizer_is_not_bad(rng):
    x = rng.standard_normal((4, 16, 32)).astype(np.float32)
    scale, zp = _minmax_qparams(x)
    q = quantizer_stats(x, {"node": "q", "scale": scale, "zero_point": zp}, useful_bound(x))
    assert not q["bad"] and "cause" not in q and "outlier" not in q
    assert q["scale_ratio"] == pytest.approx(1.0)
    assert q["clipped"] == 0.0
    deq = _fake_quant(x, scale, zp)
    assert q["round_to_zero"] == pytest.approx(np.mean(deq[x != 0] == 0))


def test_clipping_is_counted_against_the_integer_grid(rng):
    x = rng.standard_normal(10000)
    scale, zp = 1.0 / 127, 0  # represents -1.008..1: about a third of a normal sample clips
    q = quantizer_stats(x, {"node": "q", "scale": scale, "zero_point": zp}, None)
    deq = _fake_quant(x, scale, zp)
    assert q["clipped"] == pytest.approx(np.mean(np.abs(deq - x) > scale / 2))
    assert 0.25 < q["clipped"] < 0.4


@pytest.mark.parametrize("layout", ["btc", "nchw"])
def test_outlier_channel_named_with_index_ratio_and_dead_channels(rng, layout):
    c, k = 32, 11
    gain = np.ones(c)
    gain[k] = 60.0
    gain[[0, 1, 2]] = 0.1
    if layout == "btc":
        x = rng.standard_normal((4, 16, c)) * gain
        axis = 2
    else:
        x = rng.standard_normal((2, c, 8, 8)) * gain[None, :, None, None]
        axis = 1
    x = x.astype(np.float32)
    scale, zp = _minmax_qparams(x)
    q = quantizer_stats(x, {"node": "ln_QuantizeLinear", "tensor": "ln_out", "scale": scale, "zero_point": zp},
                        useful_bound(x))
    oc = q["outlier"]
    cam = np.abs(x).max(axis=tuple(i for i in range(x.ndim) if i != axis))
    assert (oc["axis"], oc["channel"]) == (axis, k)
    assert oc["ratio"] == pytest.approx(cam.max() / np.median(cam)) and oc["ratio"] >= OUTLIER_RATIO
    # channels whose every value quantizes to 0, by fake quantization
    deq = np.moveaxis(_fake_quant(x, scale, zp), axis, -1).reshape(-1, c)
    dead = [j for j in range(c) if np.all(deq[:, j] == 0)]
    assert oc["dead"] == len(dead) and set(dead) == {0, 1, 2}
    assert oc["outliers"] == [k]
    assert q["bad"]
    for words in (f"channel {k}", f"axis {axis}", "ln_QuantizeLinear", f"{len(dead)} of {c} channels round entirely to 0"):
        assert words in q["cause"], words


def test_no_outlier_channel_below_the_derived_ratio(rng):
    # a channel 10x the others leaves the median channel 127/10 > 8 levels: not an outlier
    gain = np.ones(32)
    gain[5] = 10.0
    x = (rng.standard_normal((4, 16, 32)) * gain).astype(np.float32)
    scale, _ = _minmax_qparams(x)
    assert outlier_channels(x, scale) is None


def test_int8_forms_are_int8_recipes_only():
    nodes = ["node_add_1", "node_softmax"]
    forms = int8_tool_forms(nodes)
    text = "\n".join(forms.values())
    assert "nodes_to_exclude=['node_add_1', 'node_softmax']" in forms["ONNX Runtime int8 (quantize_static)"]
    assert "'^node_add_1$'" in forms["ModelOpt ONNX PTQ"]
    assert "--int8" in text and "--layerPrecisions=node_add_1:fp32,node_softmax:fp32" in text
    for fp16 in ("fp16", "float16", "node_block_list", "AutoCast", "convert_to_mixed_precision"):
        assert fp16 not in text, fp16
    mo = modelopt_disable_forms(["blocks.0.ln1"])
    assert "{'quantizer_name': 'blocks.0.ln1.*', 'enable': False}" in next(iter(mo.values()))

"""`--device-scoring` end to end (issue 19): torch records stay tensors from capture through matching,
parking and scoring to the report, and the report is the host path's (values to 1e-6, same rows),
bit-identical across worker counts. On the CPU the torch "device" is the CPU itself (forced ``on``);
the ``cuda`` tests are the ones the GPU machine runs (torch against torch-fp16 on the GPU)."""
import math
from pathlib import Path

import numpy as np
import pytest

from support import needs_cuda

pytest.importorskip("torch")

from parity.contract.errors import UsageError  # noqa: E402
from parity.contract.source import RunConfig  # noqa: E402
from parity.core.compare import compare  # noqa: E402
from parity.core.registry import get_source  # noqa: E402
from parity.core.settings import build  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "models" / "zoo.py"
METRICS = ["cosine", "rel-diff", "max-abs", "mean-abs", "sqnr", "nonfinite"]


def _run(tmp_path, mode, model="encoder", target="torch-bf16", device="cpu", **kw):
    kw.setdefault("random_inputs", 2)
    return compare(build(model=f"{ZOO}:{model}", ref="torch", target=target, device=device, metrics=METRICS,
                         workdir=str(tmp_path / "cache"), device_scoring=mode, **kw))


def _close(a, b):
    if a is None or b is None or math.isnan(a) or math.isnan(b) or math.isinf(a) or math.isinf(b):
        return a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b))
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b)) + 1e-300


def _same_rows(host, dev):
    key = lambda l: (l.ref_name, l.target_name)  # noqa: E731
    assert [key(l) for l in host.layers] == [key(l) for l in dev.layers]
    assert len(host.matched) >= 8
    for h, d in zip(host.layers, dev.layers):
        assert (h.status, h.match, h.ref_shape, h.target_shape, h.ref_dtype, h.target_dtype) == \
            (d.status, d.match, d.ref_shape, d.target_shape, d.ref_dtype, d.target_dtype), h.name
        assert (h.ref_nan, h.ref_inf, h.target_nan, h.target_inf) == (d.ref_nan, d.ref_inf, d.target_nan, d.target_inf)
        assert h.values.keys() == d.values.keys()
        for k in h.values:
            assert _close(h.values[k], d.values[k]), (h.name, k, h.values[k], d.values[k])
        assert h.pooled.keys() == d.pooled.keys()
        for k in h.pooled:
            assert _close(h.pooled[k], d.pooled[k]), (h.name, k)
        if h.range is not None:  # --diagnose: ranges from host copies of the device records
            assert d.range == h.range  # the same host values: the same ranges, bit for bit


def test_torch_source_hands_over_device_clones_only_when_asked(tmp_path):
    src = get_source("torch")
    feed = {"x": np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)}
    cfg = RunConfig(model=f"{ZOO}:lenet", workdir=tmp_path / "cache")
    host = list(src.run(cfg, feed))
    dev = list(src.run(RunConfig(model=f"{ZOO}:lenet", workdir=tmp_path / "cache", device_records=True), feed))
    assert host and not any(a.on_device for a in host)
    assert [a.key for a in dev] == [a.key for a in host] and all(a.on_device for a in dev)
    for h, d in zip(host, dev):
        assert d.array.device.type == "cpu" and (d.shape, d.dtype) == (h.shape, h.dtype)
        assert np.array_equal(d.host(), h.array)  # the same values, copied later


def test_device_scoring_on_gives_the_host_report_with_the_auto_matcher(tmp_path):
    off = _run(tmp_path, "off")
    on = _run(tmp_path, "on")
    _same_rows(off, on)


def test_device_scoring_on_with_diagnose_gives_the_host_report(tmp_path):
    off = _run(tmp_path, "off", diagnose=True, random_inputs=1)
    on = _run(tmp_path, "on", diagnose=True, random_inputs=1)
    _same_rows(off, on)
    assert any(l.range for l in on.layers)


def test_two_workers_give_the_one_process_values_bit_for_bit_with_device_scoring(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'parity[ray]')")
    one = _run(tmp_path, "on", model="lenet", random_inputs=4)
    two = _run(tmp_path, "on", model="lenet", random_inputs=4, workers=2)
    assert two.summary["workers"] == 2
    assert [l.name for l in one.layers] == [l.name for l in two.layers]
    for a, b in zip(one.layers, two.layers):
        assert a.values == b.values and a.pooled == b.pooled and a.quantiles == b.quantiles, a.name


def test_a_bad_device_scoring_value_is_one_line():
    with pytest.raises(UsageError, match=r"^--device-scoring 'maybe': expected auto, on or off\.$"):
        build(model=f"{ZOO}:lenet", ref="torch", device_scoring="maybe")


# --------------------------------------------------------------------------- the GPU machine's run

@needs_cuda
def test_cuda_device_scoring_gives_the_host_report_torch_vs_fp16(tmp_path):
    off = _run(tmp_path, "off", target="torch-fp16", device="cuda")
    on = _run(tmp_path, "auto", target="torch-fp16", device="cuda")  # auto: on with cuda
    _same_rows(off, on)
    again = _run(tmp_path, "on", target="torch-fp16", device="cuda")
    for a, b in zip(on.layers, again.layers):  # deterministic: the same pair scores the same bits
        assert a.values == b.values and a.pooled == b.pooled, a.name


@needs_cuda
def test_cuda_records_stay_on_the_gpu_and_park_there(tmp_path):
    src = get_source("torch-fp16")
    feed = {"x": np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)}
    recs = list(src.run(RunConfig(model=f"{ZOO}:lenet", device="cuda", workdir=tmp_path / "cache",
                                  device_records=True), feed))
    assert recs and all(a.on_device and a.array.device.type == "cuda" for a in recs)
    assert all(a.meta["dtype"] == "float16" for a in recs if a.meta.get("is_output") is None)
    from parity.lib.parking import Parking

    with Parking(budget=0, spill_dir=tmp_path) as park:
        kept = [park.park(a) for a in recs]
        assert all(k.on_device for k in kept) and park.stats.device_held_bytes == sum(a.nbytes for a in recs)


@needs_cuda
def test_cuda_two_workers_bit_for_bit(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'parity[ray]')")
    one = _run(tmp_path, "on", model="lenet", target="torch-fp16", device="cuda", random_inputs=4)
    two = _run(tmp_path, "on", model="lenet", target="torch-fp16", device="cuda", random_inputs=4, workers=2)
    for a, b in zip(one.layers, two.layers):
        assert a.values == b.values and a.pooled == b.pooled, a.name

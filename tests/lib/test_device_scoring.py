"""Device scoring (issue 19): a pair of tensors scored where they are gives the host path's values.

Each check scores the same data twice, as torch tensors (``score_pair_device``) and as the numpy
arrays a host copy gives (``score_pair``), and asks for the same values to 1e-6 relative and the
same counts exactly. The CPU runs here; the ``cuda`` parameter is the run the GPU machine makes.
"""
import math

import numpy as np
import pytest

from support import needs_cuda

torch = pytest.importorskip("torch")

from parity.contract.records import Activation, to_host  # noqa: E402
from parity.core.engine import resolve_metrics  # noqa: E402
from parity.lib.parking import Parking  # noqa: E402
from parity.lib.scoring import score_pair  # noqa: E402
from parity.lib.scoring.device import score_pair_device  # noqa: E402

ALL = ["cosine", "rel-diff", "max-abs", "mean-abs", "l2", "sqnr", "kl", "kl-softmax", "nonfinite"]
MOMENT_ONLY = ["cosine", "rel-diff", "max-abs", "mean-abs", "l2", "sqnr", "nonfinite"]
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
COUNTS = ("size", "finite_size", "ref_nan", "ref_inf", "tgt_nan", "tgt_inf", "tgt_new_nonfinite")


def _pair(n, dtype, seed=0, plant=True):
    """A reference and a noisy target of ``n`` elements, NaN/Inf planted on both sides (n > 20)."""
    rng = np.random.default_rng(seed)
    r = rng.standard_normal(n) * 3.0
    t = r + rng.standard_normal(n) * 0.05
    if plant and n > 20:
        r[[2, 11]] = [np.nan, -np.inf]  # the reference's own non-finite values
        t[[5, 11, 17]] = [np.inf, np.inf, np.nan]  # 5 and 17: new in the target
    rt = torch.tensor(r, dtype=dtype)
    tt = torch.tensor(t, dtype=dtype)
    return rt, tt


def _close(a, b, rel=1e-6):
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-300


def _check(rt, tt, names, device, **kw):
    ms = resolve_metrics(names)
    host_v, host_c = score_pair(to_host(rt), to_host(tt), ms)
    dev_v, dev_c = score_pair_device(rt.to(device), tt.to(device), ms, **kw)
    assert dev_v.keys() == host_v.keys()
    for k in host_v:
        assert _close(host_v[k], dev_v[k]), (k, host_v[k], dev_v[k])
    for k in COUNTS:
        assert getattr(dev_c, k) == getattr(host_c, k), k
    if host_c.moments is not None:
        assert dev_c.moments["within"] == host_c.moments["within"]  # a count: exact
        assert dev_c.moments["n"] == host_c.moments["n"]
        assert dev_c.moments.keys() == host_c.moments.keys()
    assert dev_c.states.keys() == host_c.states.keys()  # mergeable states for dataset pooling
    assert (dev_c.ref_dtype, dev_c.tgt_dtype) == (host_c.ref_dtype, host_c.tgt_dtype)
    return host_v, dev_v, host_c


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [0, 1, 1001, 1 << 20])
def test_device_values_equal_the_host_path_for_every_builtin_metric(device, dtype, n):
    rt, tt = _pair(n, dtype, seed=n)
    names = ALL if n < (1 << 20) else MOMENT_ONLY  # kl's host pass on a million elements adds nothing here
    host_v, _, ctx = _check(rt, tt, names, device)
    if n > 20:
        assert ctx.tgt_new_nonfinite == 2 and ctx.ref_nan == 1 and ctx.ref_inf == 1
        assert host_v["nonfinite"] == 2.0


@pytest.mark.parametrize("device", DEVICES)
def test_values_match_an_independent_float64_computation(device):
    rt, tt = _pair(4099, torch.float32, seed=3)
    r, t = to_host(rt).astype(np.float64), to_host(tt).astype(np.float64)
    both = np.isfinite(r) & np.isfinite(t)
    r, t = r[both], t[both]
    v, ctx = score_pair_device(rt.to(device), tt.to(device), resolve_metrics(MOMENT_ONLY))
    assert v["cosine"] == pytest.approx(r @ t / np.sqrt((r @ r) * (t @ t)), rel=1e-12)
    assert v["max-abs"] == np.abs(t - r).max()  # a max: exact
    assert v["mean-abs"] == pytest.approx(np.abs(t - r).mean(), rel=1e-12)
    assert v["l2"] == pytest.approx(np.sqrt(((t - r) ** 2).sum()), rel=1e-12)
    floor = 0.1 * np.sqrt((r * r).mean())  # rel-diff's rms floor: over positions finite on both sides
    assert v["rel-diff"] == pytest.approx(100.0 * np.mean(np.abs(t - r) <= np.abs(r) * 0.1 + floor), rel=1e-12)
    assert ctx.finite_size == r.size


@pytest.mark.parametrize("device", DEVICES)
def test_chunked_reads_give_the_one_read_values(device):
    """Sums and the max carried across chunk boundaries (odd chunk sizes, NaN in one chunk only)."""
    rt, tt = _pair(10_007, torch.float32, seed=5)
    _, whole, _ = _check(rt, tt, MOMENT_ONLY, device, chunk_elements=1 << 20)
    _, pieces, _ = _check(rt, tt, MOMENT_ONLY, device, chunk_elements=333)
    for k in whole:
        assert _close(whole[k], pieces[k], rel=1e-12), k


@pytest.mark.parametrize("device", DEVICES)
def test_all_nonfinite_and_all_zero_pairs(device):
    z = torch.zeros(64)
    _check(z, z.clone(), ALL, device)  # both zero: cosine 1, sqnr inf
    nan = torch.full((64,), float("nan"))
    _, v, ctx = _check(nan, torch.ones(64), ALL, device)
    assert ctx.finite_size == 0 and math.isnan(v["cosine"])
    inf = torch.full((64,), float("inf"))
    _, v, ctx = _check(torch.ones(64), inf, ALL, device)
    assert v["nonfinite"] == 64.0


def test_activation_reads_shape_dtype_bytes_and_host_values_of_a_tensor():
    t = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    a = Activation("x", t)
    assert a.on_device and a.shape == (2, 3) and a.nbytes == 12
    assert a.dtype == "float32"  # the dtype of its host copy, as tensor_to_numpy gives
    h = a.host()
    assert isinstance(h, np.ndarray) and h.dtype == np.float32 and h.tolist() == [[0, 1, 2], [3, 4, 5]]
    f = torch.ones(3)
    hf = Activation("y", f).host()
    f.add_(1)  # a host copy never follows later in-place ops on the tensor
    assert hf.tolist() == [1.0, 1.0, 1.0]
    n = np.ones(3, np.float16)
    assert Activation("z", n).host() is n and not Activation("z", n).on_device


def test_parking_keeps_device_records_within_the_device_budget_and_moves_the_rest_to_the_host(tmp_path):
    recs = [Activation(f"l{i}", torch.full((256,), float(i))) for i in range(4)]  # 1 KiB each
    with Parking(budget=0, spill_dir=tmp_path, device_budget=2048) as park:
        kept = [park.park(a) for a in recs]
        assert [k.on_device for k in kept] == [True, True, False, False]
        assert park.stats.device_held_bytes == 2048 and park.stats.device_moved_arrays == 2
        assert park.stats.spilled_arrays == 2  # host budget 0: the moved ones go to the spill file
        for i, k in enumerate(kept):
            assert np.array_equal(k.host(), np.full(256, float(i), np.float32))
        park.release(kept[0])
        assert park.stats.device_held_bytes == 1024
        assert park.park(Activation("late", torch.zeros(256))).on_device  # room again
        assert park.stats.device_peak_bytes == 2048

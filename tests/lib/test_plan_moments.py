"""One pass counts one ``within``: the host and the device scoring refuse two metrics asking for
different tolerances of it, and agree on the one they take (parity.lib.scoring.score.plan_moments)."""
import numpy as np
import pytest

from parity.lib.scoring import score_pair
from parity_builtin_metrics.metrics import CosineMetric, RelDiffMetric


def _pair():
    rng = np.random.default_rng(0)
    r = rng.standard_normal(5000).astype(np.float32)
    return r, (r + 0.05 * rng.standard_normal(5000)).astype(np.float32)


def test_two_tolerances_of_the_within_count_are_refused_on_the_host():
    r, t = _pair()
    with pytest.raises(ValueError, match="different tolerances"):
        score_pair(r, t, [RelDiffMetric(rel_tol=0.1), RelDiffMetric(rel_tol=0.01)])


def test_the_device_pass_refuses_alike_and_takes_the_same_tolerance():
    torch = pytest.importorskip("torch")
    from parity.lib.scoring.device import score_pair_device

    r, t = _pair()
    with pytest.raises(ValueError, match="different tolerances"):
        score_pair_device(torch.from_numpy(r), torch.from_numpy(t), [RelDiffMetric(0.1), RelDiffMetric(0.01)])
    metrics = [CosineMetric(), RelDiffMetric(rel_tol=0.02, abs_tol=0.0, rms_tol=0.0)]
    dev, _ = score_pair_device(torch.from_numpy(r), torch.from_numpy(t), metrics)
    host, _ = score_pair(r, t, metrics)
    # the share, by hand: |t - r| <= 0.02 |r| (no floor)
    want = 100.0 * np.mean(np.abs(t.astype(np.float64) - r) <= 0.02 * np.abs(r.astype(np.float64)))
    assert dev["rel-diff"] == host["rel-diff"] == pytest.approx(want, abs=1e-9)
    assert dev["cosine"] == pytest.approx(host["cosine"], rel=1e-9)

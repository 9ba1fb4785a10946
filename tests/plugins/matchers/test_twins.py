"""Twins (a Dropout in eval, an Identity: records holding an earlier record's exact values) are found
by a sample first and confirmed on every element."""
import numpy as np

from parity.contract.records import Activation
from parity_builtin_matchers.auto import TWIN_SAMPLE, _twins


def test_exact_copies_are_twins_and_sample_lookalikes_are_not():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 3000)).astype(np.float32)
    lookalike = a.copy()
    step = a.size // TWIN_SAMPLE
    lookalike.reshape(-1)[step // 2] += 1.0  # a position the sample skips: equal samples, other values
    other = rng.standard_normal((4, 3000)).astype(np.float32)
    recs = [Activation("x", a), Activation("drop", a.copy()), Activation("near", lookalike),
            Activation("y", other), Activation("id", other.copy()), Activation("f16", a.astype(np.float16)),
            Activation("out", a.copy(), meta={"is_output": True})]
    assert _twins(recs) == {1: 0, 4: 3}

"""The error-vs-magnitude summary the engine keeps per layer (for the HTML report's culprit plot).

Checked against an independent numpy histogram over the same power-of-4 edges: every element is
counted once, overflowing values land in ``nonfinite`` at their magnitude, exact ones in ``exact``.
"""
import numpy as np

from parity import Activation
from parity.core.engine import MAG_BASE, compare_streams, error_vs_magnitude, merge_error_vs_magnitude


def _independent(ref, tgt):
    r = ref.astype(np.float64).ravel()
    t = tgt.astype(np.float64).ravel()
    fin = np.isfinite(r)
    r, t = r[fin], t[fin]
    bad = ~np.isfinite(t)
    err = np.abs(t[~bad] - r[~bad])
    ar = np.abs(r[~bad])
    # bin k holds [4**(k-1), 4**k): k = floor(log4 |x|) + 1, computed with log2 (exact at powers of two,
    # where fp16 errors often sit), not with frexp as the engine does
    assert MAG_BASE == 4
    k = lambda a: np.floor(np.log2(a) / 2).astype(int) + 1  # noqa: E731
    cells = {}
    nz = err > 0
    for x, y in zip(k(ar[nz]), k(err[nz])):
        cells[(int(x), int(y))] = cells.get((int(x), int(y)), 0) + 1
    exact = {}
    for x in k(ar[~nz]):
        exact[int(x)] = exact.get(int(x), 0) + 1
    over = {}
    for x in k(np.abs(r[bad])):
        over[int(x)] = over.get(int(x), 0) + 1
    return cells, exact, over


def test_histogram_counts_every_element_in_its_power_of_4_bin(rng):
    # magnitudes spread over twelve decades, both signs
    ref = (rng.choice([-1, 1], 20000) * 10.0 ** rng.uniform(-6, 6, 20000)).astype(np.float32)
    with np.errstate(over="ignore"):
        tgt = ref.astype(np.float16).astype(np.float32)  # fp16: rounding, flush to zero, and inf past 65504
    h = error_vs_magnitude(ref, tgt, chunk_elements=4096)  # several chunks
    cells, exact, over = _independent(ref, tgt)
    got_cells = {(x, y): n for x, y, n in h["cells"]}
    assert got_cells == cells
    assert dict(map(tuple, h["exact"])) == exact
    assert dict(map(tuple, h["nonfinite"])) == over
    assert sum(over.values()) == int(np.sum(np.abs(ref) > 65520)) > 0
    assert sum(n for *_, n in h["cells"]) + sum(n for _, n in h["exact"]) + sum(n for _, n in h["nonfinite"]) == ref.size
    assert min(x for x, _ in h["nonfinite"]) >= 9  # 65536 = 4**8 lies in bin 9's lower edge


def test_merge_adds_counts_and_the_engine_stores_it_with_ranges(rng):
    a = rng.standard_normal(500).astype(np.float32)
    h = error_vs_magnitude(a, a + 0.01)
    m = merge_error_vs_magnitude([h, h])
    assert [c[:2] for c in m["cells"]] == [c[:2] for c in h["cells"]]
    assert [c[2] for c in m["cells"]] == [2 * c[2] for c in h["cells"]]
    rep = compare_streams(iter([Activation("x", a, order=0)]), iter([Activation("x", a + 0.01, order=0)]),
                          ["cosine"], options={"ranges": True})
    assert rep.layers[0].range["error_vs_magnitude"] == h
    rep = compare_streams(iter([Activation("x", a, order=0)]), iter([Activation("x", a + 0.01, order=0)]), ["cosine"])
    assert "error_vs_magnitude" not in rep.layers[0].range  # without --diagnose the report stays as it was

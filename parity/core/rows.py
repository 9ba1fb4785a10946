"""What one report row knows without the engine: its status, and its error-vs-magnitude picture.

Why a module of its own: the engine makes rows (:mod:`parity.core.engine`) and the dataset
statistics (:mod:`parity.core.stats`) merge them over many inputs; both classify a row and merge
its error-vs-magnitude summary. Kept here, neither imports the other for it (the engine imports
the statistics to merge reports; the statistics import nothing of the engine).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from parity.contract.report import (BELOW, NONFINITE, OK, REF_ONLY, SHAPE_MISMATCH, TARGET_ONLY, LayerResult,
                                    MetricInfo)


def classify(row: LayerResult, infos: list[MetricInfo]) -> None:
    """Set a scored row's status from its values and the primary threshold."""
    if row.status in (REF_ONLY, TARGET_ONLY, SHAPE_MISMATCH):
        return
    row.status = OK
    if row.meta.get("target_new_nonfinite", 0) > 0:
        row.status = NONFINITE
        return
    primary = infos[0]
    v = row.worst.get(primary.name, row.values.get(primary.name))
    if primary.threshold is not None and v is not None and primary.fails(v, primary.threshold):
        row.status = BELOW


#: bin k of the error-vs-magnitude summary holds magnitudes in [4**(k-1), 4**k): two octaves of the
#: exponent a float format stores; k is clipped to float32's whole range (0 goes to the lowest bin)
MAG_BASE, MAG_BIN_LO, MAG_BIN_HI = 4, -74, 65


def _bin(a: np.ndarray) -> np.ndarray:
    _, e = np.frexp(a)  # a in [2**(e-1), 2**e)
    return np.where(a > 0, np.clip((e + 1) // 2, MAG_BIN_LO, MAG_BIN_HI), MAG_BIN_LO)


def error_vs_magnitude(ref: np.ndarray, tgt: np.ndarray, chunk_elements: int = 1 << 20) -> dict[str, Any]:
    """A small, array-free picture of where a layer's error sits: |target - ref| against |ref|.

    Why: an overflow shows as non-finite target values at the largest magnitudes, a blown int8
    scale as one error level over every magnitude, rounding as error proportional to magnitude;
    the report keeps no arrays, so the picture is summarised as it is scored. A sparse 2-D
    histogram over powers of ``MAG_BASE`` counts every element, so a handful of overflowing values
    is never sampled away: ``cells`` are ``[x, y, count]`` with x the bin of |ref| and y that of
    the error; ``exact`` ``[x, count]`` the elements without error; ``nonfinite`` ``[x, count]``
    the elements where the target is NaN/Inf and the reference finite (docs/reports.md).
    """
    r = ref.reshape(-1)
    t = tgt.reshape(-1)
    cells: dict[tuple[int, int], int] = {}
    exact: dict[int, int] = {}
    bad: dict[int, int] = {}
    for s in range(0, r.size, chunk_elements):
        rc = np.asarray(r[s : s + chunk_elements], dtype=np.float64)
        tc = np.asarray(t[s : s + chunk_elements], dtype=np.float64)
        fin = np.isfinite(rc)
        rc, tc = rc[fin], tc[fin]
        x = _bin(np.abs(rc))
        tfin = np.isfinite(tc)
        for k, n in zip(*np.unique(x[~tfin], return_counts=True)):
            bad[int(k)] = bad.get(int(k), 0) + int(n)
        err = np.abs(tc[tfin] - rc[tfin])
        x = x[tfin]
        zero = err == 0
        for k, n in zip(*np.unique(x[zero], return_counts=True)):
            exact[int(k)] = exact.get(int(k), 0) + int(n)
        y = _bin(err[~zero])
        span = MAG_BIN_HI - MAG_BIN_LO + 1
        keys, counts = np.unique((x[~zero] - MAG_BIN_LO) * span + (y - MAG_BIN_LO), return_counts=True)
        for key, n in zip(keys.tolist(), counts.tolist()):
            xy = (key // span + MAG_BIN_LO, key % span + MAG_BIN_LO)
            cells[xy] = cells.get(xy, 0) + n
    return {"base": MAG_BASE, "cells": [[x, y, n] for (x, y), n in sorted(cells.items())],
            "exact": [[x, n] for x, n in sorted(exact.items())],
            "nonfinite": [[x, n] for x, n in sorted(bad.items())]}


def merge_error_vs_magnitude(hists: list[dict[str, Any]]) -> dict[str, Any]:
    """Several inputs' summaries of one layer as one: the counts add up (the bins are fixed)."""
    cells: dict[tuple[int, int], int] = {}
    exact: dict[int, int] = {}
    bad: dict[int, int] = {}
    for h in hists:
        for x, y, n in h["cells"]:
            cells[(x, y)] = cells.get((x, y), 0) + n
        for into, key in ((exact, "exact"), (bad, "nonfinite")):
            for x, n in h[key]:
                into[x] = into.get(x, 0) + n
    return {"base": MAG_BASE, "cells": [[x, y, n] for (x, y), n in sorted(cells.items())],
            "exact": [[x, n] for x, n in sorted(exact.items())],
            "nonfinite": [[x, n] for x, n in sorted(bad.items())]}

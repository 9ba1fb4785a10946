"""The scoring pass shared by the core and plugins: every metric of a pair from shared reads.

``score.py`` the pass itself (:func:`score_pair`, chunking, the numpy path); ``fused.py`` the
compiled-kernel driver (numba optional, ``PARITY_NO_NUMBA=1``); ``kernels.py`` the numba
kernels (imported only when numba is); ``layout.py`` the accumulator positions and block length
that both sides share. The types a metric is written against stay in
:mod:`parity.contract.metric`.
"""
from __future__ import annotations

from parity.lib.scoring.score import (
    CHUNK_ELEMENTS,
    iter_chunks,
    metric_similarity,
    pooled_value,
    score_pair,
    value_stats,
)

__all__ = ["CHUNK_ELEMENTS", "iter_chunks", "metric_similarity", "pooled_value", "score_pair", "value_stats"]

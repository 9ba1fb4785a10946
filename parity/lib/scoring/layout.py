"""The shared layout of the fused pass: accumulator positions and the block length.

Why a module of its own: both the numba kernels (:mod:`parity.lib.scoring.kernels`) and the
Python side that calls them (:mod:`parity.lib.scoring.fused`, :mod:`parity.lib.scoring.score`)
must agree on these numbers; keeping them here lets the kernels import them without importing
the module that imports the kernels (that two-file cycle was fused <-> kernels).

The accumulator vector (float64, ``ACC_LEN`` long) is shared by the compiled and the numpy
path; positions are the ``A_*`` constants.
"""
from __future__ import annotations

A_N, A_RR, A_TT, A_RT, A_DD, A_AD, A_MAXAD, A_WITHIN = range(8)
A_REF_NAN, A_REF_INF, A_TGT_NAN, A_TGT_INF, A_NEW_NONFINITE = range(8, 13)
A_AMBIGUOUS = 13  # number of blocks whose within count waits for the exact floor
ACC_LEN = 14
#: elements per block of the compiled loop: both sides of a block stay in L1 for the rare
#: rescan of its max, and a non-finite value sends only its own block down the exact path.
BLOCK = 2048

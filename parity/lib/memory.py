"""Reuse freed activation buffers inside the process instead of handing them back to the kernel.

Why: a comparison allocates and frees the same sizes of buffer over and over (each module output
copied off the torch forward, each ONNX Runtime output, each parked record, every feed). glibc's
allocator serves blocks above a threshold that adapts up to 32 MiB straight from ``mmap`` and gives
them back with ``munmap`` on free, and trims the top of the heap past 128 KiB of free space; every
next buffer then costs fresh pages, zeroed by the kernel one page fault at a time. On MiniLM-L6 at
batch 8 that was ~2/3 of a million page faults and a third of the run's CPU time in the kernel
(docs/benchmarks.md, "current figures"). Raising both thresholds makes freed blocks stay in the
heap, where the next allocation of that size finds them: a pool of buffers kept by the allocator
itself, with no change to any array's values.

Only a front end that owns the process calls :func:`reuse_freed_buffers` (``parity`` on the command
line); a library call leaves the embedding program's allocator alone. ``PARITY_MALLOC=default``
turns it off. Anywhere but glibc on Linux it does nothing.
"""
from __future__ import annotations

import os
import sys

#: mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

#: blocks below this come from the heap and are reused when freed (glibc's largest allowed value on 64-bit)
MMAP_THRESHOLD = 256 * 2**20
#: free space kept at the top of the heap before it is given back
TRIM_THRESHOLD = 1024 * 2**20
#: extra bytes asked of the kernel each time the heap grows (fewer, larger growths)
TOP_PAD = 64 * 2**20

_done: list[bool] = []


def reuse_freed_buffers() -> bool:
    """Tune glibc's allocator to keep and reuse freed buffers (once per process); True when it did."""
    if _done:
        return _done[0]
    ok = False
    if os.environ.get("PARITY_MALLOC", "").lower() != "default" and sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
            mallopt = None
        if mallopt is not None:
            ok = all(mallopt(p, v) == 1 for p, v in ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                                     (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                                                     (_M_TOP_PAD, TOP_PAD)))
    _done.append(ok)
    return ok

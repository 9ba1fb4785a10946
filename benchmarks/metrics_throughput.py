"""Throughput and extra memory of per-layer scoring (parity.lib.scoring.score_pair).

    python benchmarks/metrics_throughput.py [--gb 1.0] [--metrics cosine,kl] [--repeat 3]

Builds one float32 reference/target pair totalling ``--gb`` gigabytes (half per side; the
target is the reference plus 1% Gaussian noise, both written chunk by chunk so the
benchmark itself allocates nothing big besides the pair), then scores it with the default
metric set and with every registered metric (or only the ``--metrics`` you name).

Each set is timed on both scoring paths: the compiled fused kernel (numba, ``parity[fast]``)
and the numpy chunk path (``PARITY_NO_NUMBA=1``). For comparison the script also times
``np.dot(ref, tgt)`` and two plain sums over the same pair (what one core's memory bandwidth
allows), and, in fresh processes with an empty numba cache, the kernels' compile cost (first
use on a machine) and their load cost (every later process).

Figures printed per metric set:

* GB/s: bytes of *both* arrays divided by the best wall-clock time of ``--repeat`` runs,
  and divided by the best CPU time (``time.process_time``) of the process. Scoring is
  single-threaded, so on an idle machine the two agree; on a busy one the CPU figure is
  what one free core would give.
* tracemalloc peak: the largest amount of memory that numpy and Python allocated at one
  time during scoring, above what was allocated before it. numpy reports its array
  buffers to tracemalloc, so this is the extra memory scoring needs. Measured in a
  separate run, since tracing slows allocation down.
* RSS high-water growth: how much the process's peak resident size (``ru_maxrss``) rose
  during that run. The pair is already resident, so this is the extra memory the OS saw;
  it is 0 when scoring stayed below an earlier peak, and it includes allocator slack.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

from parity.lib.scoring import CHUNK_ELEMENTS, score_pair
from parity.core.registry import all_of

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _models import cpu_name  # noqa: E402

try:
    from parity.core.engine import DEFAULT_METRICS as DEFAULT_SET
except ImportError:  # engine not importable: the same default set, spelled out
    DEFAULT_SET = ("cosine", "rel-diff", "max-abs", "nonfinite")
GEN_CHUNK = 1 << 20


ROW = 1024  # last-axis length: rows for kl-softmax, like a logits tensor


def make_pair(total_bytes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    n = max(ROW, total_bytes // 8 // ROW * ROW)  # two float32 arrays, whole rows
    rng = np.random.default_rng(seed)
    ref = np.empty(n, dtype=np.float32)
    tgt = np.empty(n, dtype=np.float32)
    for s in range(0, n, GEN_CHUNK):
        e = min(s + GEN_CHUNK, n)
        r = ref[s:e]
        rng.standard_normal(e - s, dtype=np.float32, out=r)
        rng.standard_normal(e - s, dtype=np.float32, out=tgt[s:e])
        tgt[s:e] *= 0.01
        tgt[s:e] += r
    return ref.reshape(-1, ROW), tgt.reshape(-1, ROW)


def rss_peak_bytes() -> int:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * (1 if sys.platform == "darwin" else 1024)


def bench(ref: np.ndarray, tgt: np.ndarray, names: list[str], repeat: int,
          chunk: int, options: dict) -> dict:
    metrics = [all_of("metric")[n] for n in names]
    pair_bytes = ref.nbytes + tgt.nbytes
    # Memory first: ru_maxrss only ever rises, so a timed run before it would hide its growth.
    gc.collect()
    rss0 = rss_peak_bytes()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    score_pair(ref, tgt, metrics, options=options, chunk_elements=chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = rss_peak_bytes() - rss0
    times, cpu_times = [], []
    values: dict[str, float] = {}
    for _ in range(repeat):
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        values, _ = score_pair(ref, tgt, metrics, options=options, chunk_elements=chunk)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    best = min(times)
    cpu = min(cpu_times)
    return {"names": names, "seconds": best, "gbps": pair_bytes / best / 1e9,
            "cpu_seconds": cpu, "cpu_gbps": pair_bytes / cpu / 1e9,
            "traced_peak": peak - base, "rss_growth": rss_growth, "pair_bytes": pair_bytes,
            "values": values}


def bandwidth(ref: np.ndarray, tgt: np.ndarray, repeat: int) -> dict[str, float]:
    """GB/s of np.dot(ref, tgt) and of np.add.reduce over each side: the memory-bound ceiling."""
    r, t = ref.reshape(-1), tgt.reshape(-1)
    out = {}
    for name, fn in (("np.dot", lambda: np.dot(r, t)), ("sum+sum", lambda: (np.add.reduce(r), np.add.reduce(t)))):
        best = cpu = float("inf")
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            best = min(best, time.perf_counter() - t0)
            cpu = min(cpu, time.process_time() - c0)
        out[name] = (r.nbytes + t.nbytes) / best / 1e9
        out[name + " cpu"] = (r.nbytes + t.nbytes) / cpu / 1e9
    return out


_FIRST_USE = """
import time, numpy as np
t0 = time.perf_counter()
from parity.lib.scoring import score_pair
from parity.core.registry import all_of
ms = [all_of("metric")[n] for n in {names!r}]
t1 = time.perf_counter()
for dt in (np.float32, np.float16):
    a = np.arange(1 << 20, dtype=np.float32)  # at least fused.MIN_COMPILED_SIZE: the kernel is used
    score_pair(a, (a * 1.001).astype(dt), ms)
print(t1 - t0, time.perf_counter() - t1)
"""


def first_use_cost(names: list[str]) -> tuple[float, float, float] | None:
    """Seconds of the first score_pair calls (float32 and float16 targets) in a fresh process:
    with an empty numba cache (compile), with that cache filled (load), and with PARITY_NO_NUMBA=1
    (numpy path: no kernel at all). ``None`` when numba is missing."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        env.pop("PARITY_NO_NUMBA", None)
        runs = []
        for extra in ({}, {}, {"PARITY_NO_NUMBA": "1"}):
            out = subprocess.run([sys.executable, "-c", _FIRST_USE.format(names=names)], env={**env, **extra},
                                 capture_output=True, text=True, check=True).stdout.split()
            runs.append(float(out[-1]))
    return runs[0], runs[1], runs[2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=1.0, help="size of the pair, both arrays together (default 1.0)")
    ap.add_argument("--metrics", help="comma-separated metrics to time (default: the default set, then all)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per set; the best is reported")
    ap.add_argument("--chunk", type=int, default=CHUNK_ELEMENTS, help="elements per chunk")
    args = ap.parse_args(argv)

    total = int(args.gb * 1e9)
    ref, tgt = make_pair(total)
    if args.metrics:
        sets = [[m.strip() for m in args.metrics.split(",") if m.strip()]]
    else:
        sets = [list(DEFAULT_SET), sorted(all_of("metric"))]
    cpu = cpu_name()
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {np.__version__}")
    print(f"pair: 2 x {ref.size:,} float32 = {ref.nbytes + tgt.nbytes:,} bytes; chunk {args.chunk:,} elements")
    bw = bandwidth(ref, tgt, args.repeat)
    print(f"memory-bound ceiling on this pair: np.dot {bw['np.dot']:.2f} GB/s (CPU {bw['np.dot cpu']:.2f}), "
          f"np.add.reduce of each side {bw['sum+sum']:.2f} GB/s (CPU {bw['sum+sum cpu']:.2f})")
    fu = first_use_cost(list(DEFAULT_SET))
    if fu is None:
        print("numba not importable: numpy path only")
    else:
        print(f"first score_pair calls in a fresh process (float32 + float16 targets, default set): "
              f"{fu[0]:.2f} s with an empty numba cache (compile), {fu[1]:.2f} s with it filled (load), "
              f"{fu[2]:.2f} s with PARITY_NO_NUMBA=1")
    paths = [("numba", None), ("numpy", "1")] if fu is not None else [("numpy", "1")]
    for names in sets:
        print(f"\nmetrics: {','.join(names)}")
        for label, flag in paths:
            if flag is None:
                os.environ.pop("PARITY_NO_NUMBA", None)
            else:
                os.environ["PARITY_NO_NUMBA"] = flag
            # kernel load (numba import, cached machine code) outside the timing and the memory run:
            # a pair under fused.MIN_COMPILED_SIZE would take the numpy path and load nothing
            warm = 1 << 20
            score_pair(ref.reshape(-1)[:warm], tgt.reshape(-1)[:warm], [all_of("metric")[n] for n in names])
            r = bench(ref, tgt, names, args.repeat, args.chunk, {})
            pb = r["pair_bytes"]
            print(f"  [{label}] wall {r['seconds']:.3f} s = {r['gbps']:.2f} GB/s;  "
                  f"CPU {r['cpu_seconds']:.3f} s = {r['cpu_gbps']:.2f} GB/s")
            print(f"  [{label}] extra memory: tracemalloc peak {r['traced_peak'] / 2**20:.1f} MiB "
                  f"({100 * r['traced_peak'] / pb:.2f}% of the pair); "
                  f"RSS high-water growth {r['rss_growth'] / 2**20:.1f} MiB ({100 * r['rss_growth'] / pb:.2f}%)")
            print(f"  [{label}] values: " + ", ".join(f"{k}={v:.6g}" for k, v in r["values"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

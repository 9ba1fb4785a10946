"""``--workers N`` / ``--ray-address``: the feeds of one comparison sharded over Ray actors.

Why Ray and not a process pool of our own: scheduling, GPU placement (``num_gpus``), restarting a
dead worker and retrying its task, and running on a cluster are Ray's job, done well. parity adds
only what is its own: each actor prepares the reference and the target **once** (models,
sessions, exports), then compares blocks of feeds by their stable indices and returns the
blocks' mergeable :class:`parity.core.stats.DatasetStats`; the driver merges them in block order.

Nothing is counted twice or lost: a block's statistics reach the driver only when the block is
complete, and each block is stored once under its number. A worker process that dies is
restarted by Ray (its models prepared again) and the block it was running is retried
(``max_restarts``/``max_task_retries``); only a block that fails every retry fails the run.

The comparison's own steps (prepare, run feeds, finish, ...) are handed in by
:func:`parity.core.compare.compare` as a :class:`Steps`: this module imports nothing of the
comparison driver, so the driver may dispatch here without the two importing each other.
"""
from __future__ import annotations

import logging
import math
import os
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable

from parity.contract.errors import ParityError, first_line
from parity.contract.frontend import front_end, speaking
from parity.contract.progress import log, step
from parity.contract.report import Report
from parity.core.stats import DatasetStats

if TYPE_CHECKING:
    from parity.core.settings import CompareSettings

#: blocks per worker when the number of feeds is known: small enough to balance load and to make
#: a retry cheap, large enough that a block's statistics are worth shipping
BLOCKS_PER_WORKER = 4
#: how many times Ray restarts a dead worker and retries its block
RETRIES = 2
#: thread-count variables a framework reads to size its CPU thread pool. A matrix product split over
#: another number of threads sums in another order (torch's Linear differs by ~1e-7 between 1 and 2
#: threads), and Ray sets OMP_NUM_THREADS=1 in every worker it starts: each worker takes the
#: driver's values instead (set, or unset) so a sharded run computes what one process computes.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Steps:
    """The comparison's steps a sharded run needs (:mod:`parity.core.compare` hands in its own).

    Module-level functions, so Ray ships them to a worker by reference. ``prepare(s)`` builds
    both sources once (its result, opaque here, is what ``run_feeds`` takes); ``run_feeds(prep,
    s, feeds)`` compares feeds into mergeable statistics; ``finish(s, stats)`` makes the report;
    ``save_dumps(s)`` stages ``--save-*`` (a context yielding the staged settings and the
    function that moves the dumps into place); ``check_settings(s)`` refuses what cannot run
    before Ray starts.
    """

    check_settings: Callable[[Any], Any]
    prepare: Callable[[Any], Any]
    run_feeds: Callable[..., DatasetStats]
    finish: Callable[[Any, DatasetStats], Report]
    save_dumps: Callable[[Any], AbstractContextManager[tuple[Any, Callable[[DatasetStats], DatasetStats]]]]


def thread_env() -> dict[str, str | None]:
    """This process's thread-count variables (``None``: unset), as a worker must reproduce them."""
    return {k: os.environ.get(k) for k in THREAD_VARS}


def _use_thread_env(env: dict[str, str | None] | None) -> None:
    """Make this process's thread-count variables the driver's (before any framework sizes its pool)."""
    for k, v in (env or {}).items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ParityError("--workers and --ray-address need Ray. Note: pip install 'parity[ray]' "
                          "(or pip install ray), or run with --workers 1.") from None
    return ray


class ShardWorker:
    """One Ray actor: both models prepared once, then blocks of feeds compared on request."""

    def __init__(self, steps: Steps, settings: CompareSettings, cwd: str | None = None,
                 threads: dict[str, str | None] | None = None, front: str = "cli") -> None:
        self.steps = steps
        self.threads = threads
        self.front = front  # the driver's front end: a worker's errors name parity.compare's parameters too
        _use_thread_env(threads)
        # relative paths (--inputs feeds/, data.py:fn, the model file) mean what they mean to the driver:
        # a worker on the driver's machine works in the driver's folder; on another node, where it exists
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)
        self.settings = replace(settings, workers=1, ray_address=None)
        # a user error (a bad input file, a model that does not load) is kept and raised by plan():
        # raised here, Ray would restart the worker for it and report a dead actor
        self.error: ParityError | None = None
        try:
            with speaking(front):
                self.prep: Any = steps.prepare(self.settings)  # parity.core.compare.Prepared
        except ParityError as e:
            self.error = ParityError(str(e))
            self.error.exit_code = e.exit_code

    def plan(self) -> dict[str, Any]:
        """What the driver needs to cut the dataset into blocks, and who this worker is."""
        if self.error is not None:
            raise self.error
        return {"feeds": self.prep.feeds.known_length(), "pid": os.getpid(), "host": os.uname().nodename}

    def usage(self) -> dict[str, Any]:
        """This worker's process: pid, host, peak resident memory (for the report and benchmarks)."""
        import resource

        return {"pid": os.getpid(), "host": os.uname().nodename,
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}

    def run(self, start: int, stop: int | None, stride: int) -> tuple[DatasetStats, dict[str, Any]]:
        t0 = time.perf_counter()
        _use_thread_env(self.threads)  # Ray sets OMP_NUM_THREADS again before each task where it is unset
        with speaking(self.front):
            feeds: Iterable[Any] = self.prep.feeds.iter(start, stop, stride)
            stats = self.steps.run_feeds(self.prep, self.settings, feeds)
        return stats, {"pid": os.getpid(), "seconds": time.perf_counter() - t0, "feeds": stats.inputs}


def blocks(n: int | None, workers: int) -> list[tuple[int, int | None, int]]:
    """``(start, stop, stride)`` shards: contiguous blocks when ``n`` is known, else one stride per worker."""
    if n is None:
        return [(w, None, workers) for w in range(workers)]
    size = max(1, math.ceil(n / (workers * BLOCKS_PER_WORKER)))
    return [(a, min(a + size, n), 1) for a in range(0, n, size)]


def _init(ray: Any, s: CompareSettings) -> bool:
    """Connect to ``--ray-address`` or start a local Ray for ``--workers``; True when we started it."""
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if s.ray_address and s.ray_address != "local":
            ray.init(address=s.ray_address, logging_level=logging.ERROR, log_to_driver=False)
        else:
            gpus = None if s.device.startswith("cuda") else 0
            ray.init(num_cpus=max(s.workers, os.cpu_count() or 1), num_gpus=gpus, **quiet)
    except Exception as e:  # ConnectionError, a cluster that refuses us ...
        where = f"Ray cluster at {s.ray_address}" if s.ray_address else "a local Ray"
        raise ParityError(f"cannot start or reach {where}: {first_line(e, typed=True)}") from None
    return True


def compare_sharded(s: CompareSettings, steps: Steps) -> Report:
    """The comparison of :func:`parity.core.compare.compare` (whose ``steps`` these are), its feeds
    sharded over Ray workers."""
    steps.check_settings(s)  # missing files, sources that cannot run: said before Ray starts
    ray = _ray()
    started = _init(ray, s)
    try:
        with steps.save_dumps(s) as (staged, done):  # --save-*: workers write each feed's dump into one staging folder
            return _run(ray, steps, staged, done)
    finally:
        if started:
            ray.shutdown()


def _run(ray: Any, steps: Steps, s: CompareSettings, save_done: Callable[[DatasetStats], DatasetStats]) -> Report:
    """``s``: the run's settings with its save paths staged; ``save_done`` moves the workers' dumps into place
    (both from :func:`parity.core.compare.save_dumps`)."""
    n_workers = max(1, s.workers)
    resources: dict[str, Any] = {"num_cpus": 1}
    if s.device.startswith("cuda"):
        resources = {"num_cpus": 1, "num_gpus": 1}  # one GPU per worker, placed by Ray
    Actor = ray.remote(max_restarts=RETRIES, max_task_retries=RETRIES, **resources)(ShardWorker)
    # the first worker alone first: it fills the cache (exports, converted models) the others reuse
    with step("start workers", n_workers) as task:
        cwd = os.getcwd()
        threads = thread_env()
        front = front_end()
        first = Actor.remote(steps, s, cwd, threads, front)
        plan = _get(ray, first.plan.remote(), "starting worker 1")
        task.advance()
        actors = [first] + [Actor.remote(steps, s, cwd, threads, front) for _ in range(n_workers - 1)]
        for k, a in enumerate(actors[1:], 2):
            _get(ray, a.plan.remote(), f"starting worker {k}")
            task.advance()
    shards = blocks(plan["feeds"], n_workers)
    log.info("%d feeds in %d shards over %d workers", plan["feeds"] or -1, len(shards), n_workers)
    results: dict[int, DatasetStats] = {}
    pending: dict[Any, tuple[int, Any]] = {}
    done_info: list[dict[str, Any]] = []
    queue = list(range(len(shards)))
    idle = list(actors)
    with step("compare shards", len(shards)) as task:
        while queue or pending:
            while queue and idle:
                b, actor = queue.pop(0), idle.pop(0)
                pending[actor.run.remote(*shards[b])] = (b, actor)
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            b, actor = pending.pop(ref)
            start, stop, stride = shards[b]
            stats, info = _get(ray, ref, f"feeds {_span(start, stop, stride)}")
            results[b] = stats  # stored once per block: a retried block never counts twice
            done_info.append(info)
            idle.append(actor)
            task.advance()
            task.update(f"compare shards: {len(results)} of {len(shards)} done "
                        f"(feeds {_span(start, stop, stride)}: {info['feeds']} in {info['seconds']:.1f} s, "
                        f"worker pid {info['pid']})")
    from parity.core.engine import metric_infos, resolve_metrics

    infos = metric_infos(resolve_metrics(s.metrics), s.thresholds)
    total = DatasetStats()
    for b in sorted(results):  # block order: the same merge whatever order the blocks finished in
        total.merge(results[b], infos)
    save_done(total)  # the dumps the workers wrote, moved into place
    report = steps.finish(s, total)
    report.summary["workers"] = n_workers
    detail = []
    for a in actors:
        u = _get(ray, a.usage.remote(), "reading worker usage")
        u.update(feeds=sum(x["feeds"] for x in done_info if x["pid"] == u["pid"]),
                 seconds=round(sum(x["seconds"] for x in done_info if x["pid"] == u["pid"]), 3))
        detail.append(u)
    report.summary["worker_usage"] = detail
    return report


def _span(start: int, stop: int | None, stride: int) -> str:
    if stride != 1:
        return f"{start}, {start + stride}, ... (every {stride}th)"
    return f"{start}-{(stop or start) - 1}"


def _get(ray: Any, ref: Any, what: str) -> Any:
    """``ray.get`` with parity's errors: a ParityError raised in a worker comes back as itself."""
    try:
        return ray.get(ref)
    except Exception as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, ParityError):
            raise cause from None
        if isinstance(e, ParityError):
            raise
        name = type(e).__name__
        if "ActorDied" in name or "ActorError" in name or "WorkerCrashed" in name:
            raise ParityError(f"a Ray worker died {RETRIES + 1} times on {what}; giving up. Note: the worker's "
                              f"log is under /tmp/ray/session_latest/logs (out of memory?).") from None
        raise ParityError(f"Ray worker failed on {what}: {first_line(e, typed=True)}") from None

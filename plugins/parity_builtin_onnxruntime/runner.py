"""Run and capture: every intermediate tensor of one ONNX Runtime run, as ``Activation`` records.

:func:`capture` is what ``OrtSource.run`` does: resolve the models (:mod:`.loader`), work out
which tensors to capture and where the target graph holds each (fetch map), then run either
one session with every captured tensor as an output (:func:`run_whole`) or, on large graphs,
consecutive sessions over the graph cut into steps (:func:`run_steps`), and yield the records
one at a time. Records carry the fp32 tensor names for every precision, so ``ort``,
``ort-fp16`` and ``ort-int8`` records of one model pair by name, and each says which torch
module output it is (see :mod:`parity.lib.onnx.provenance`).

Steps are bounded by bytes: each session run returns at most ``step_bytes`` of captured tensors
(``RunConfig.step_bytes``, else ``--option step_bytes=...``, else :data:`DEFAULT_STEP_BYTES`),
sized from ONNX shape inference on the feed's shapes (:func:`step_chunks`); a tensor larger than
the budget is a step alone. ``--option ort_output_batch=N`` also caps each step at N tensors; given
alone (no step_bytes anywhere) it keeps its old meaning: N tensors per step, 0 one session.
``cfg.layers`` (``--layers``) captures only the selected tensors, and the model outputs.
``cfg.wants`` (set by the core once the feed's reference stream has ended) leaves out the tensors
no reference record could pair with (:class:`parity.contract.capture.CaptureWants`), counted in
the plan's ``skipped``; ``--all-tensors`` captures them.

Sessions come from :mod:`parity.lib.onnx.session` (``ort_providers``, ``ort_threads``,
``ort_graph_optimization``).
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from parity.contract.errors import ParityError
from parity.contract.options import option_bool, option_int, parse_bytes
from parity.contract.records import Activation
from parity.contract.source import RunConfig
from parity.lib.onnx.session import make_session, run_session, session_options
from parity.lib.onnx.util import feeds_digest

from .loader import HALF, capture_path, fetch_for, load_fp32, run_label, runnable_model, target_model

#: bytes of captured tensors one session run returns at most, unless set. Why 256 MiB: a small
#: model at batch 1 (a MiniLM-size encoder at 512 tokens returns ~150 MB in all) still takes
#: one session, so the fixed cost stays one session build; larger batches and models are cut
#: into steps, so what the capture adds to peak memory stops growing with batch (ONNX Runtime
#: frees an output block only once every output of the run is released).
DEFAULT_STEP_BYTES = 256 * 2**20

def step_limits(cfg: RunConfig) -> tuple[int | None, int | None]:
    """``(bytes, tensors)`` each capture step may return; ``None`` is no limit of that kind.

    Bytes: ``cfg.step_bytes``, else the ``step_bytes`` option, else :data:`DEFAULT_STEP_BYTES`
    unless ``ort_output_batch`` is given alone (then it keeps its old meaning). 0 bytes or 0
    tensors is no limit of that kind.
    """
    count = option_int(cfg.options, "ort_output_batch", None)
    if cfg.step_bytes is not None:
        nbytes: int | None = parse_bytes(cfg.step_bytes)
    elif cfg.options.get("step_bytes") not in (None, ""):
        nbytes = parse_bytes(cfg.options["step_bytes"])
    else:
        nbytes = DEFAULT_STEP_BYTES if count is None else None
    return (nbytes or None), (count or None)


def guess_dims(shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, int]:
    """What an unknown dimension is taken as when sizing steps: ``(any dimension, a first one)``:
    the feed's largest dimension, and its largest first (batch) dimension."""
    largest = max((int(d) for sh in shapes.values() for d in sh), default=1)
    batch = max((int(sh[0]) for sh in shapes.values() if len(sh)), default=1)
    return max(1, largest), max(1, batch)


def step_chunks(sizes: list[int], max_bytes: int | None, max_count: int | None) -> list[range]:
    """Consecutive index ranges over ``sizes`` (bytes per captured tensor, capture order), each
    within ``max_bytes`` and ``max_count``; a tensor above ``max_bytes`` is a range alone."""
    chunks: list[range] = []
    start, total = 0, 0
    for i, n in enumerate(sizes):
        full = i > start and ((max_bytes is not None and total + n > max_bytes)
                              or (max_count is not None and i - start >= max_count))
        if full:
            chunks.append(range(start, i))
            start, total = i, 0
        total += n
    if sizes:
        chunks.append(range(start, len(sizes)))
    return chunks


def run_whole(model: Any, names: list[str], feed: dict[str, np.ndarray], so: Any,
              providers: list[str], workdir: Path, label: str) -> Iterator[list[Any]]:
    """One session with every named tensor as an output (ONNX Runtime returns them all at once)."""
    from parity.lib.onnx.graph import with_outputs

    sess = make_session(with_outputs(model, names), so, providers, workdir, label)
    del model  # with the caller's references gone, the proto and its weights are freed here
    results = run_session(sess, names, feed, label)
    del sess
    yield results


def run_steps(model: Any, batches: list[list[str]], feed: dict[str, np.ndarray], so: Any,
              providers: list[str], workdir: Path, label: str) -> Iterator[list[Any]]:
    """Consecutive sessions over the graph cut into steps, none recomputed; one result list per batch.

    Each step's session holds only its own nodes and weights and returns its batch plus the
    tensors later steps read, so peak memory is one batch plus what crosses the cuts. A value
    is ``None`` where the run returned none (e.g. a tensor no step computes).
    """
    from parity.lib.onnx.graph import plan_capture_steps, step_model

    live: dict[str, Any] = dict(feed)
    for step in plan_capture_steps(model, batches):
        got: dict[str, Any] = {}
        if step.nodes:
            sess = make_session(step_model(model, step, live), so, providers, workdir, label)
            vals = run_session(sess, step.outputs, {x: live[x] for x in step.inputs}, label)
            del sess
            got = dict(zip(step.outputs, vals))
            del vals
            live.update((o, got[o]) for o in step.hand_on)
        results = [got[t] if t in got else live.get(t) for t in step.wanted]
        del got
        for x in step.release:
            live.pop(x, None)
        yield results


@dataclass
class CapturePlan:
    """What a capture needs that does not depend on the feed's values: models, fetch map, session.

    Built once per run by :func:`plan_capture` and reused by :func:`capture` for every feed of the
    same signature; ``session`` is kept only when the capture runs as one session (steps build
    their feed-dependent step models per feed from ``runnable``).
    """

    precision: str
    workdir: Path
    label: str
    items: list[tuple[Any, str, bool]]
    chunks: list[list[tuple[Any, str, bool]]]
    out_pos: dict[str, int]
    calls: dict[str, Any]
    within: list[str]
    common: dict[str, Any]
    all_dtypes: bool
    so: Any
    providers: list[str]
    runnable: Any = None
    session: Any = None
    #: tensors left out because no reference record of the feed could pair with them (``cfg.wants``)
    skipped: int = 0


def plan_capture(precision: str, cfg: RunConfig, feed: dict[str, np.ndarray], *,
                 keep_session: bool = False) -> CapturePlan:
    """Resolve the models and the tensors to capture for ``feed``'s signature (see :func:`capture`).

    With ``keep_session`` a one-session capture builds its session here, to be run on many feeds.
    """
    from parity.lib.onnx.graph import FLOAT_TYPES, captured_sites, estimated_bytes, inferred_info, with_outputs
    from parity.lib.onnx.provenance import innermost_modules, layer_aliases, module_provenance

    workdir = Path(cfg.workdir)
    opts = cfg.options
    src, module_names, orig = load_fp32(cfg, feed)

    exporter = next((p.value for p in orig.metadata_props if p.key == "parity.exporter"), None)
    graph_outputs = [o.name for o in orig.graph.output]
    out_pos = {n: i for i, n in enumerate(graph_outputs)}
    sites = captured_sites(orig)
    calls, scopes = module_provenance(orig, module_names)
    within = innermost_modules(scopes)
    sel = cfg.layers
    aliases = layer_aliases(orig, calls, scopes) if sel is not None else {}

    common: dict[str, Any] = {"precision": precision, "model_file": str(src)}
    if exporter:
        common["exporter"] = exporter
    outputs_only = cfg.outputs_only
    if outputs_only:
        sites = [s for s in sites if s.name in out_pos]
    run_path, extra = target_model(precision, cfg, src, orig, feed)
    common.update(extra)
    # a capture runs the graph the session runs with every tensor named (fp16: onnxruntime's own
    # graph, casts explicit), so marking outputs adds no rounding; outputs alone run the deployed file
    deployed_path = run_path
    if not outputs_only:
        run_path = capture_path(precision, cfg, run_path)
    if precision == "fp16" and not outputs_only:  # the ops the session runs in fp32 (the report lists them)
        from parity.lib.onnx.asrun import fallback_summary

        fallback = fallback_summary(run_path)
        if fallback:
            common["fp32_fallback_ops"] = fallback
    if precision != "fp32":
        del orig.graph.node[:]  # provenance is computed; free the fp32 weights early
        del orig.graph.initializer[:]
    runnable = runnable_model(precision, run_path, orig)
    del orig
    fetch = fetch_for(precision, runnable, [s.name for s in sites], {s.name: (s.node_name, s.output_index) for s in sites})
    common["run_model_file"] = str(run_path)
    common["deployed_model_file"] = str(deployed_path)

    all_dtypes = option_bool(opts, "ort_all_dtypes", False)
    max_bytes, max_count = step_limits(cfg)
    shapes = {k: tuple(np.shape(v)) for k, v in feed.items()}
    wants = cfg.wants if cfg.wants is not None and cfg.wants.ready and not outputs_only else None
    info = inferred_info(runnable, shapes) if (not all_dtypes or max_bytes or wants is not None) else {}
    items: list[tuple[Any, str, bool]] = []
    for s in sites:
        if s.name not in fetch:
            continue
        fname, quant = fetch[s.name]
        if sel is not None and s.name not in out_pos and not sel.selects(s.name, fname, *aliases.get(s.name, ())):
            continue
        t = info[fname].dtype if fname in info else None
        if not all_dtypes and s.name not in out_pos and t is not None and t not in FLOAT_TYPES:
            continue
        items.append((s, fname, quant))
    skipped = 0
    if wants is not None:  # only what a reference record of this feed could pair with (issue 19)
        from parity.contract.matcher import normalize_name

        def known(fname: str) -> tuple[int, ...] | None:
            dims = info[fname].dims if fname in info else None
            return dims if dims is not None and all(d is not None for d in dims) else None  # type: ignore[return-value]

        by_scope: dict[str, list[tuple[int, ...] | None]] = {}
        for site, fname, _ in items:  # each module's output tensors in capture order, as the matcher sees them
            for p, _ in calls.get(site.name, []):
                by_scope.setdefault(p, []).append(known(fname))
        loose = wants.loose_dims(by_scope)
        kept = []
        for it in items:
            site, fname = it[0], it[1]
            if wants.selects(site.name, [p for p, _ in calls.get(site.name, [])], normalize_name(site.name),
                             known(fname), site.name in out_pos, loose=loose):
                kept.append(it)
        skipped, items = len(items) - len(kept), kept

    so, providers = session_options(opts, cfg.device)
    if precision in HALF and run_path != deployed_path:
        import onnxruntime as ort

        # the captured graph is already the one the session runs: optimizing it again would fuse
        # away tensors it names
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # Captures larger than the step budget run in consecutive steps, so that ONNX Runtime never
    # holds every activation at once (it frees an output block only when the last output is released).
    if max_bytes:
        feed_bytes = {k: int(np.asarray(v).nbytes) for k, v in feed.items()}
        est = estimated_bytes(runnable, info, feed_bytes, *guess_dims(shapes))
        sizes = [est.get(f, 0) for _, f, _ in items]
    else:
        sizes = [0] * len(items)
    chunks = [items[r.start:r.stop] for r in step_chunks(sizes, max_bytes, max_count)] or [items]
    label = run_label(src, run_path)
    plan = CapturePlan(precision, workdir, label, items, chunks, out_pos, calls, within, common,
                       all_dtypes, so, providers, runnable=runnable, skipped=skipped)
    if keep_session and len(chunks) == 1:
        plan.session = make_session(with_outputs(runnable, [f for _, f, _ in items]), so, providers,
                                    workdir, label)
        plan.runnable = runnable = None  # the session has its own copy of the weights
    return plan


def _model_stat(model: str) -> tuple[int, int] | None:
    """(mtime_ns, size) of the model file (or a ``file.py:factory`` spec's file), else None."""
    for p in (model, model.rsplit(":", 1)[0]):
        try:
            st = os.stat(p)
        except (OSError, ValueError):
            continue
        return st.st_mtime_ns, st.st_size
    return None


def plan_key(precision: str, cfg: RunConfig, feed: dict[str, np.ndarray]) -> tuple[Any, ...] | None:
    """Everything a :class:`CapturePlan` depends on besides the run itself, or None when it depends on the feed.

    int8 without calibration feeds calibrates on the feed itself: no reuse then.
    """
    if precision == "int8" and not cfg.calibration:
        return None
    sig = tuple(sorted((k, str(np.asarray(v).dtype), tuple(np.shape(v))) for k, v in feed.items()))
    calib = feeds_digest(list(cfg.calibration)) if precision == "int8" else None
    return (precision, str(cfg.model), _model_stat(str(cfg.model)), str(cfg.device), str(cfg.workdir),
            repr(sorted(cfg.options.items(), key=lambda kv: str(kv[0]))), cfg.outputs_only, cfg.keep_high_precision,
            repr(sorted(cfg.input_shapes.items())), sig, calib, cfg.layers, cfg.step_bytes,
            cfg.wants.signature() if cfg.wants is not None else None)


class PlanCache:
    """:class:`CapturePlan` objects per source object, reused across the feeds of one run.

    A run is one ``RunConfig`` object, or two: the capture's and the deployed-outputs check's
    (``outputs_only``), which alternate on every feed, so :data:`SLOTS` plans are kept. An entry
    is only found for the very ``cfg`` it was built for (and the same :func:`plan_key`), and is
    dropped when that ``cfg`` is garbage-collected, when other runs or signatures push it out,
    or with :meth:`clear`.
    """

    SLOTS = 2

    def __init__(self) -> None:
        #: (weakref to the run's cfg, key, plan), most recently used last
        self._entries: list[tuple[Any, tuple[Any, ...], CapturePlan]] = []

    def clear(self) -> None:
        self._entries = []

    def get(self, precision: str, cfg: RunConfig, feed: dict[str, np.ndarray]) -> CapturePlan:
        key = plan_key(precision, cfg, feed)
        if key is None:
            return plan_capture(precision, cfg, feed)
        for i, (ref, k, plan) in enumerate(self._entries):
            if ref() is cfg and k == key:
                self._entries.append(self._entries.pop(i))
                return plan
        # release what no longer fits (and entries of runs that ended) before building the next session
        self._entries = [e for e in self._entries if e[0]() is not None][-(self.SLOTS - 1):]
        plan = plan_capture(precision, cfg, feed, keep_session=True)
        self._entries.append((weakref.ref(cfg), key, plan))
        weakref.finalize(cfg, _drop, weakref.ref(self))
        return plan


def _drop(cache_ref: Any) -> None:
    """Finalizer of a run's cfg: release the cache's plans whose run has ended."""
    cache = cache_ref()
    if cache is not None:
        cache._entries = [e for e in cache._entries if e[0]() is not None]


def capture(precision: str, cfg: RunConfig, feed: dict[str, np.ndarray],
            cache: PlanCache | None = None) -> Iterator[Activation]:
    """Every captured tensor of ``precision``'s run on ``feed``, in graph order, keyed by fp32 name.

    Options: ``outputs_only``, ``ort_all_dtypes``, ``ort_output_batch``, ``step_bytes`` (see
    :func:`step_limits`), the session options of
    :func:`parity.lib.onnx.session.session_options`, and the model options of :mod:`.loader`.
    With ``cache``, what does not depend on the feed (models, fetch map, a one-session capture's
    session) is reused from the previous feed of the same run and signature.
    """
    from parity.lib.onnx.graph import FLOAT_TYPES

    plan = cache.get(precision, cfg, feed) if cache is not None else plan_capture(precision, cfg, feed)
    items, chunks, out_pos, calls, within = plan.items, plan.chunks, plan.out_pos, plan.calls, plan.within
    if plan.skipped and cfg.wants is not None:
        cfg.wants.note_skipped(plan.skipped)
    common, all_dtypes = plan.common, plan.all_dtypes
    feed = {k: np.asarray(v) for k, v in feed.items()}
    names = [f for _, f, _ in items]
    if plan.session is not None:
        runs: Iterator[list[Any]] = iter([run_session(plan.session, names, feed, plan.label)])
    elif len(chunks) == 1:
        runnable, plan.runnable = plan.runnable, None  # an uncached plan: the session frees the proto
        runs = run_whole(runnable, names, feed, plan.so, plan.providers, plan.workdir, plan.label)
        del runnable
    else:
        runs = run_steps(plan.runnable, [[f for _, f, _ in c] for c in chunks], feed, plan.so, plan.providers,
                         plan.workdir, plan.label)
    del plan
    for chunk, results in zip(chunks, runs):
        for k, (site, fname, quant) in enumerate(chunk):
            arr = results[k]
            results[k] = None  # the caller holds the only reference from here on
            if not isinstance(arr, np.ndarray):
                continue
            if not all_dtypes and site.name not in out_pos and str(arr.dtype) not in FLOAT_TYPES:
                continue
            scopes = calls.get(site.name, [])
            meta: dict[str, Any] = {
                "onnx_node": site.node_name,
                "onnx_op": site.op_type,
                "onnx_output_index": site.output_index,
                "module_path": scopes[0][0] if scopes else None,
                "scopes": [p for p, _ in scopes],
                "module_calls": [[p, c] for p, c in scopes],
                "within": within[site.node_index],
                "is_output": site.name in out_pos,
                **common,
            }
            if site.name in out_pos:
                meta["output_position"] = out_pos[site.name]
            if precision == "int8":
                meta["quantized"] = quant
            if fname != site.name:
                meta["onnx_tensor"] = fname
            yield Activation(name=site.name, array=arr, order=site.node_index,
                             op_type=site.op_type, meta=meta)
            del arr
        del results

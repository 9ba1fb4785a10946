"""Run and capture: every intermediate tensor of one ONNX Runtime run, as ``Activation`` records.

:func:`capture` is what ``OrtSource.run`` does: resolve the models (:mod:`.loader`), work out
which tensors to capture and where the target graph holds each (fetch map), then run either
one session with every captured tensor as an output (:func:`run_whole`) or, on large graphs,
consecutive sessions over the graph cut into steps (:func:`run_steps`), and yield the records
one at a time. Records carry the fp32 tensor names for every precision, so ``ort``,
``ort-fp16`` and ``ort-int8`` records of one model pair by name, and each says which torch
module output it is (see :mod:`parity.lib.onnx.provenance`).

Sessions come from :mod:`parity.lib.onnx.session` (``ort_providers``, ``ort_threads``,
``ort_graph_optimization``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from parity.contract.options import option_bool, option_int
from parity.contract.records import Activation
from parity.contract.source import RunConfig
from parity.lib.onnx.session import make_session, run_session, session_options

from .loader import fetch_for, load_fp32, run_label, runnable_model, target_model

#: tensors captured per step on graphs with more than twice as many (``ort_output_batch=0``: one session)
DEFAULT_OUTPUT_BATCH = 64


def output_batch(options: Mapping[str, Any], n_tensors: int) -> int:
    """Tensors per step: ``ort_output_batch`` when given, else ``DEFAULT_OUTPUT_BATCH`` on graphs
    with more than twice as many captured tensors, else 0 (one session for all)."""
    batch = option_int(options, "ort_output_batch", None)
    if batch is None:
        batch = DEFAULT_OUTPUT_BATCH if n_tensors > 2 * DEFAULT_OUTPUT_BATCH else 0
    return batch


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


def capture(precision: str, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Activation]:
    """Every captured tensor of ``precision``'s run on ``feed``, in graph order, keyed by fp32 name.

    Options: ``outputs_only``, ``ort_all_dtypes``, ``ort_output_batch``, the session options of
    :func:`parity.lib.onnx.session.session_options`, and the model options of :mod:`.loader`.
    """
    from parity.lib.onnx.graph import FLOAT_TYPES, captured_sites, inferred_types
    from parity.lib.onnx.provenance import module_output_calls, node_scopes

    workdir = Path(cfg.workdir)
    opts = cfg.options
    src, module_names, orig = load_fp32(cfg, feed)

    exporter = next((p.value for p in orig.metadata_props if p.key == "parity.exporter"), None)
    graph_outputs = [o.name for o in orig.graph.output]
    out_pos = {n: i for i, n in enumerate(graph_outputs)}
    sites = captured_sites(orig)
    calls = module_output_calls(orig, module_names)
    within = [chain[-1][0] if chain else "" for chain in node_scopes(orig, module_names)]

    common: dict[str, Any] = {"precision": precision, "model_file": str(src)}
    if exporter:
        common["exporter"] = exporter
    if option_bool(opts, "outputs_only", False):
        sites = [s for s in sites if s.name in out_pos]
    run_path, extra = target_model(precision, cfg, src, orig, feed)
    common.update(extra)
    if precision != "fp32":
        del orig.graph.node[:]  # provenance is computed; free the fp32 weights early
        del orig.graph.initializer[:]
    runnable = runnable_model(precision, run_path, orig)
    fetch = fetch_for(precision, runnable, [s.name for s in sites])
    common["run_model_file"] = str(run_path)

    all_dtypes = option_bool(opts, "ort_all_dtypes", False)
    types = inferred_types(runnable) if not all_dtypes else {}
    items: list[tuple[Any, str, bool]] = []
    for s in sites:
        if s.name not in fetch:
            continue
        fname, quant = fetch[s.name]
        t = types.get(fname)
        if not all_dtypes and s.name not in out_pos and t is not None and t not in FLOAT_TYPES:
            continue
        items.append((s, fname, quant))

    so, providers = session_options(opts, cfg.device)
    # Large graphs are captured in consecutive steps by default, so that ONNX Runtime never holds
    # every activation at once (it frees an output block only when the last output is released).
    batch = output_batch(opts, len(items))
    chunks = ([items[i:i + batch] for i in range(0, len(items), batch)]
              if batch > 0 and len(items) > batch else [items])
    feed = {k: np.asarray(v) for k, v in feed.items()}
    label = run_label(src, run_path)
    if len(chunks) == 1:
        runs = run_whole(runnable, [f for _, f, _ in items], feed, so, providers, workdir, label)
        del runnable, orig  # the session has its own copy of the weights
    else:
        runs = run_steps(runnable, [[f for _, f, _ in c] for c in chunks], feed, so, providers,
                         workdir, label)
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

"""Local runs for diagnosis: each layer of the fp16 / int8 model alone, fed the fp32 activations.

A compare run measures *accumulated* error: every layer inherits what the layers before it
lost. To tell the layer that causes a loss from those that inherit it, each layer is also
run alone in the target setting on the *reference* inputs and scored against the reference
output (its *local* error, see ``parity.core.diagnose``).

How the local runs are built, for one feed:

1. One fp32 session run captures every tensor of the fp32 graph that some node reads (all
   dtypes: shape tensors and indices are inputs too). These are the reference values.
2. The target model is the one ``run()`` executes (the fp16-converted or QDQ-quantized model,
   taken from the same cache, with the same ``keep_*`` options). For each captured tensor
   ``T`` of node ``N``, the tensor that ``run()`` fetches for ``T`` is traced back through the
   target graph until it reaches tensors of the fp32 graph other than ``N``'s outputs. What
   lies in between is ``N`` as the target runs it, plus whatever the conversion put around it:
   the input casts to float16 and the output cast (fp16), or the ``QuantizeLinear ->
   DequantizeLinear`` pairs with their calibrated scales on the inputs, the dequantized
   weights, and the output's Q/DQ (int8). A node the converter fused with its producer (the
   QDQ quantizer drops a ``Relu`` after a quantized op) is traced with it.
3. All local subgraphs are copied, their internal tensors renamed apart, into one model whose
   inputs are the fp32 tensors they read; one session run computes every layer's local
   output. The inputs are fed as the target graph holds them: a tensor the fp16 model keeps
   in float16 is fed the reference value rounded to float16, exactly as the deployed model
   would store it (an fp32 value beyond 65504 arrives as inf).

When the reference capture exceeds the capture's step limits (``step_bytes``, default
``DEFAULT_STEP_BYTES`` of :mod:`.runner`, and ``ort_output_batch`` tensors when set; see
:func:`.runner.step_limits`; ``step_bytes=0`` alone or ``ort_output_batch=0`` alone forces the
single runs above) steps 1 and 3 go in consecutive groups instead, each within the same limits: the reference run is cut into steps that recompute nothing
(:func:`.runner.run_steps`), and after each step the layers whose inputs and outputs are all
captured run alone, are yielded, and every reference tensor no later layer reads is dropped. Peak memory
is then one step's tensors plus those crossing the cut, not the whole model's. Planning
these groups before the values exist needs each captured tensor's dtype, taken from ONNX
type inference (checked against every array the steps return); a graph that inference
leaves partly untyped takes the single runs.

Local results are yielded one at a time in graph order. Layers that cannot be run alone are
skipped and appended to the ``skipped`` list the caller passes (the source's
``last_local_skipped``): control-flow nodes (If/Loop/Scan), layers whose trace reaches a
tensor the reference run did not capture, and layers whose trace would pull in another
captured layer (the target graph no longer has the tensor between them).

This module uses the plugin's loader and runner and the shared session helpers; it knows
nothing of the source class.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from parity.contract.errors import ParityError
from parity.contract.source import RunConfig

from parity.contract.options import option_int
from parity.lib.onnx.session import make_session, run_session, session_options

from . import runner
from .loader import capture_path, fetch_for, load_fp32, target_model

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from parity.contract.records import LocalResult

#: a local subgraph larger than this is not one layer: the trace lost the fp32 tensor names
MAX_LOCAL_NODES = 64
#: a module run (all of a module's nodes together) larger than this is skipped
MAX_MODULE_NODES = 4096
_PREFIX = "parity.local{}::"


@dataclass
class LocalPlan:
    """One fp32 node as the target runs it: the target-graph nodes from its inputs to its outputs."""

    node_index: int
    node_name: str
    op_type: str
    keys: list[str]  # captured tensors of this node (fp32 names), in output order
    fetches: list[str]  # target-graph tensor standing for each key
    nodes: list[int] = field(default_factory=list)  # target-graph node indices, topological
    fed: list[str] = field(default_factory=list)  # fp32 tensors read, fed with reference values
    inits: set[str] = field(default_factory=set)
    module: str | None = None  # a module run as a whole: its dotted path (node_name is then the path)
    module_nodes: set[str] = field(default_factory=set)  # fp32 node names the module run may include
    consumers: dict[str, list[str]] = field(default_factory=dict)  # key -> keys of the layers reading it
    quantizers: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> its output QuantizeLinear
    input_quantizers: list[str] = field(default_factory=list)  # fed tensors the run reads through a quantizer


def _has_subgraph(node: "onnx.NodeProto") -> bool:
    import onnx

    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def plan_locals(orig: "onnx.ModelProto", target: "onnx.ModelProto", fetch: dict[str, tuple[str, bool]],
                keys: list[str], available: set[str],
                with_modules: bool = False) -> tuple[list[LocalPlan], list[dict[str, str]]]:
    """Trace each captured key's fetch tensor back to fp32 tensors; returns plans and skips.

    ``orig`` is the fp32 graph (node structure only is used), ``target`` the graph that runs,
    ``fetch`` maps fp32 names to the target tensor read for them (see ``int8_fetch_map``),
    ``keys`` are the tensors to run locally, ``available`` those the reference run captured.
    ``with_modules`` adds one plan per module call (see :func:`module_plans`), after its layers.
    """
    from parity.lib.onnx.graph import model_inputs, tensor_sites

    sites = {s.name: s for s in tensor_sites(orig)}
    boundary = set(sites) | {vi.name for vi in model_inputs(orig)}
    fp32_nodes = orig.graph.node
    tg = target.graph
    producer = {o: i for i, n in enumerate(tg.node) for o in n.output if o}
    inits = {t.name for t in tg.initializer} | {t.values.name for t in tg.sparse_initializer}
    # fp32 nodes that have a local run of their own: a trace must not run through them
    by_node: dict[int, LocalPlan] = {}
    for k in keys:
        s = sites[k]
        if k not in fetch:
            continue
        p = by_node.get(s.node_index)
        if p is None:
            n = fp32_nodes[s.node_index]
            p = by_node[s.node_index] = LocalPlan(s.node_index, n.name, n.op_type, [], [])
        p.keys.append(k)
        p.fetches.append(fetch[k][0])
    homes = {p.node_name: i for i, p in by_node.items() if p.node_name}
    modules = module_plans(orig, fetch, keys) if with_modules else []

    plans: list[LocalPlan] = []
    skipped: list[dict[str, str]] = []

    def skip(p: LocalPlan, why: str) -> None:
        skipped.extend({"key": k, "onnx_node": p.node_name, "reason": why} for k in p.keys)

    work = [(idx, by_node[idx]) for idx in sorted(by_node)] + [(-1, m) for m in modules]
    for idx, p in work:
        if p.module is not None:
            member = {i for i, n in enumerate(fp32_nodes) if n.name in p.module_nodes}
            own = {o for i in member for o in fp32_nodes[i].output}
            limit = MAX_MODULE_NODES
        else:
            own = set(fp32_nodes[idx].output)
            limit = MAX_LOCAL_NODES
        need: set[int] = set()
        fed: set[str] = set()
        seen: set[str] = set()
        stack = list(p.fetches)
        why = None
        while stack and why is None:
            t = stack.pop()
            if not t or t in seen:
                continue
            seen.add(t)
            if t in boundary and t not in own:
                fed.add(t)
                continue
            if t in inits:
                p.inits.add(t)
                continue
            i = producer.get(t)
            if i is None:
                why = f"its input {t!r} is neither a tensor of the fp32 graph nor computed in the target graph"
                break
            if i in need:
                continue
            node = tg.node[i]
            if _has_subgraph(node):
                why = f"it runs through control flow ({node.op_type} {node.name!r})"
                break
            other = homes.get(node.name) if node.name else None
            if other is not None and other != idx and node.name not in p.module_nodes:
                why = (f"the target graph has no tensor between it and node {node.name!r}, "
                       f"so it cannot run without that node")
                break
            need.add(i)
            if len(need) > limit:
                why = f"its trace through the target graph exceeds {limit} nodes"
                break
            stack.extend(node.input)
        if why is None:
            missing = sorted(t for t in fed if t not in available)
            if missing:
                why = f"the reference run did not capture its input(s) {missing[:4]}"
        if why is not None:
            skip(p, why)
            continue
        p.nodes = sorted(need)
        p.fed = sorted(fed)
        plans.append(p)
    # a module run goes where its last output is computed, after the layers inside it
    pos = {s.name: s.node_index for s in sites.values()}
    plans.sort(key=lambda q: (max(pos[k] for k in q.keys), q.module is not None, -len(q.nodes)))
    return plans, skipped


def module_plans(orig: "onnx.ModelProto", fetch: dict[str, tuple[str, bool]], keys: list[str]) -> list[LocalPlan]:
    """One plan per module call whose output is a captured key and that holds more than one node.

    The module's nodes are the fp32 nodes whose scope chain (export provenance) holds that call;
    its run is all of them in the target, fed the reference values of what enters the module.
    """
    from parity.lib.onnx.provenance import module_provenance

    calls, chains = module_provenance(orig)
    if not calls:
        return []
    names = [n.name for n in orig.graph.node]
    members: dict[tuple[str, Any], set[str]] = {}
    for name, chain in zip(names, chains):
        for scope in chain:
            members.setdefault(scope, set()).add(name)
    by_scope: dict[tuple[str, Any], list[str]] = {}
    for k in keys:
        if k in fetch:
            for scope in calls.get(k, []):
                by_scope.setdefault(tuple(scope), []).append(k)
    out: list[LocalPlan] = []
    for (path, call), ks in by_scope.items():
        nodes = members.get((path, call), set())
        if len(nodes) < 2 or not all(nodes_named for nodes_named in nodes):
            continue  # one node: its own run is the module's; unnamed nodes cannot be told apart
        label = path if call in (None, 0) else f"{path}#{call}"
        out.append(LocalPlan(-1, label, "module", ks, [fetch[k][0] for k in ks], module=label,
                             module_nodes=nodes))
    return out


def build_local_model(target: "onnx.ModelProto", plans: list[LocalPlan], fed_types: dict[str, int],
                      fed_shapes: dict[str, tuple[int, ...]]) -> tuple["onnx.ModelProto", list[list[str]]]:
    """One model holding every plan's subgraph side by side; returns it and each plan's output names.

    Fed tensors keep their names (several plans may read one); everything a plan computes is
    renamed with a per-plan prefix, so the copies never collide.
    """
    import onnx
    from onnx import helper

    from parity.lib.onnx.graph import empty_like

    tg = target.graph
    new = empty_like(target, "parity_local_runs")
    g = new.graph
    fed_all: list[str] = []
    init_all: set[str] = set()
    outs: list[list[str]] = []
    for k, p in enumerate(plans):
        pre = _PREFIX.format(k)
        keep = set(p.fed) | p.inits

        def ren(t: str, pre: str = pre, keep: set[str] = keep) -> str:
            return t if (not t or t in keep) else pre + t

        for i in p.nodes:
            n = onnx.NodeProto()
            n.CopyFrom(tg.node[i])
            n.input[:] = [ren(t) for t in n.input]
            n.output[:] = [ren(t) for t in n.output]
            n.name = pre + (n.name or f"#{i}")  # an as-run graph has unnamed nodes (inserted casts)
            g.node.append(n)
        names = [ren(f) for f in p.fetches]
        for nm in names:
            if nm not in {o.name for o in g.output}:
                g.output.add().name = nm  # untyped: onnxruntime infers it
        outs.append(names)
        fed_all.extend(t for t in p.fed if t not in fed_all)
        init_all |= p.inits
    for t in fed_all:
        g.input.append(helper.make_tensor_value_info(t, fed_types[t], list(fed_shapes[t])))
    g.initializer.extend(t for t in tg.initializer if t.name in init_all)
    g.sparse_initializer.extend(t for t in tg.sparse_initializer if t.values.name in init_all)
    return new, outs


def _reference_run(cfg: RunConfig, orig: "onnx.ModelProto", names: list[str],
                   feed: dict[str, np.ndarray], label: str) -> dict[str, np.ndarray]:
    """Every named tensor of the fp32 graph for ``feed`` (non-array values are dropped)."""
    from parity.lib.onnx.graph import with_outputs

    so, providers = session_options(cfg.options, cfg.device)
    batch = option_int(cfg.options, "ort_output_batch", 0) or 0
    chunks = [names[i:i + batch] for i in range(0, len(names), batch)] if 0 < batch < len(names) else [names]
    out: dict[str, np.ndarray] = {}
    for chunk in chunks:
        model = with_outputs(orig, chunk, prune=len(chunks) > 1)
        sess = make_session(model, so, providers, Path(cfg.workdir), label)
        vals = run_session(sess, chunk, feed, f"{label} for the local reference")
        del sess
        out.update((n, v) for n, v in zip(chunk, vals) if isinstance(v, np.ndarray))
    return out


class _Caster:
    """float32 -> float16 rounding as onnxruntime's Cast does it (IEEE round to nearest even,
    inf beyond 65504), three times faster than numpy's ``astype`` on large tensors.

    The rounding must happen outside the local model: inside it, onnxruntime on CPU drops an
    explicit ``Cast`` to float16 that feeds an op without a float16 kernel (it casts straight
    back), so the layer would see unrounded inputs.
    """

    def __init__(self, cfg: RunConfig) -> None:
        self._sess: Any = None
        self._cfg = cfg

    def __call__(self, a: np.ndarray, dtype: np.dtype) -> np.ndarray:
        if not (a.dtype == np.float32 and dtype == np.float16):
            with np.errstate(over="ignore", invalid="ignore"):  # beyond-range values become inf, as stored
                return a.astype(dtype)
        if self._sess is None:
            import onnx
            import onnxruntime as ort
            from onnx import helper

            g = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=onnx.TensorProto.FLOAT16)], "cast",
                                  [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, None)])
            so = ort.SessionOptions()
            so.log_severity_level = 3
            threads = option_int(self._cfg.options, "ort_threads", None)
            if threads:
                so.intra_op_num_threads = threads
            m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
            self._sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return self._sess.run(None, {"x": np.ascontiguousarray(a)})[0]


def local_results(precision: str, cfg: RunConfig, feed: dict[str, np.ndarray],
                  skipped: list[dict[str, str]] | None = None) -> Iterator["LocalResult"]:
    """Local runs of every captured float tensor of ``precision``'s target model, in graph order.

    Layers that cannot run alone are appended to ``skipped`` as ``{key, onnx_node, reason}``.

    Captures within the step limits (:func:`.runner.step_limits`: ``step_bytes``, and
    ``ort_output_batch`` tensors when set) take one reference session run and one local session
    run. Larger ones go in consecutive steps (see :func:`_stepped`), so memory holds one step's
    tensors, not the model's.
    """
    import onnx

    from parity.lib.onnx.graph import FLOAT_TYPES, captured_sites

    if skipped is None:
        skipped = []
    src, _names, orig = load_fp32(cfg, feed)
    feed = {k: np.asarray(v) for k, v in feed.items()}
    captured = [s.name for s in captured_sites(orig)]
    run_path, _extra = target_model(precision, cfg, src, orig, feed)
    run_path = capture_path(precision, cfg, run_path)  # layers alone as the session runs them

    limits = _Limits.of(cfg, orig, feed)
    batches = limits.chunk(captured)
    if len(batches) > 1:
        keys = _predicted_float_keys(orig, captured)
        if keys is not None:
            yield from _stepped(precision, cfg, feed, src, orig, batches, run_path, limits, keys, skipped)
            return

    ref = _reference_run(cfg, orig, captured, feed, src.name)
    ref.update(feed)
    # local runs only for float tensors: an integer tensor (shape arithmetic) has no rounding.
    # A tensor the target graph no longer holds has no record either, so it is not listed.
    keys = [k for k in captured if k in ref and str(ref[k].dtype) in FLOAT_TYPES]

    target = onnx.load(str(run_path))
    plans, skips = _plans(precision, orig, target, keys, set(ref), cfg.options)
    skipped.extend(skips)
    del orig
    fed_dtype = _FedDtypes(target)
    cast = _Caster(cfg)
    for group in _split(plans, limits):
        yield from _run_group(precision, cfg, target, run_path, group, ref, fed_dtype, cast)


@dataclass
class _Limits:
    """The capture's step limits (:func:`.runner.step_limits`) with the fp32 graph's tensor sizes
    for the feed's shapes, so that reference steps and local groups stay within the same budget."""

    max_bytes: int | None
    max_count: int | None
    sizes: dict[str, int]

    @classmethod
    def of(cls, cfg: RunConfig, orig: "onnx.ModelProto", feed: dict[str, np.ndarray]) -> "_Limits":
        from parity.lib.onnx.graph import estimated_bytes, inferred_info

        max_bytes, max_count = runner.step_limits(cfg)
        sizes: dict[str, int] = {}
        if max_bytes:
            shapes = {k: tuple(np.shape(v)) for k, v in feed.items()}
            sizes = estimated_bytes(orig, inferred_info(orig, shapes),
                                    {k: int(np.asarray(v).nbytes) for k, v in feed.items()},
                                    *runner.guess_dims(shapes))
        return cls(max_bytes, max_count, sizes)

    def chunk(self, names: list[str]) -> list[list[str]]:
        """``names`` in consecutive groups within the limits (one group when there are none)."""
        ranges = runner.step_chunks([self.sizes.get(t, 0) for t in names], self.max_bytes, self.max_count)
        return [names[r.start:r.stop] for r in ranges] or [names]


def _plans(precision: str, orig: "onnx.ModelProto", target: "onnx.ModelProto", keys: list[str],
           available: set[str], options: dict[str, Any] | None = None
           ) -> tuple[list[LocalPlan], list[dict[str, str]]]:
    """Node plans (and module plans unless ``local_modules`` is false), each with the layers that read
    its outputs and, for int8, the QuantizeLinear that rounds each output."""
    from parity.contract.options import option_bool

    fetch = fetch_for(precision, target, keys)
    plans, skips = plan_locals(orig, target, fetch, keys, available,
                               with_modules=option_bool(options or {}, "local_modules", True))
    key_set = set(keys)
    readers: dict[str, list[str]] = {}
    for n in orig.graph.node:
        first = next((o for o in n.output if o in key_set), None)
        if first is None:
            continue
        for t in n.input:
            if t and first not in readers.setdefault(t, []):
                readers[t].append(first)
    quant = _output_quantizers(target) if precision == "int8" else {}
    if quant:
        producers = {o: n for n in orig.graph.node for o in n.output if o}
        for q in quant.values():
            n = producers.get(q["tensor"])
            if n is not None:
                q.update(producer=n.name, producer_op=n.op_type)
    for pl in plans:
        pl.consumers = {k: readers.get(k, []) for k in pl.keys}
        if quant:
            pl.quantizers = {k: quant[k] for k in pl.keys if k in quant}
            inside = {target.graph.node[i].name for i in pl.nodes}
            pl.input_quantizers = [t for t in pl.fed if t in quant and quant[t]["node"] in inside]
    return plans, skips


def _output_quantizers(target: "onnx.ModelProto") -> dict[str, dict[str, Any]]:
    """Tensor -> its per-tensor QuantizeLinear in a QDQ model: node name, tensor, scale, zero point and the
    integer range of the zero point's type (int8 -128..127, uint8 0..255; what clips)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in target.graph.initializer}
    out: dict[str, dict[str, Any]] = {}
    for n in target.graph.node:
        if n.op_type != "QuantizeLinear" or len(n.input) < 2 or n.input[0] in out or n.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[n.input[1]])
        if scale.size != 1:
            continue  # per-channel: no single step to report
        zp = numpy_helper.to_array(inits[n.input[2]]) if len(n.input) > 2 and n.input[2] in inits else None
        info = np.iinfo(zp.dtype) if zp is not None and zp.dtype.kind in "iu" else np.iinfo(np.int8)
        out[n.input[0]] = {"node": n.name, "tensor": n.input[0], "scale": float(scale.reshape(-1)[0]),
                           "zero_point": int(zp.reshape(-1)[0]) if zp is not None and zp.size == 1 else 0,
                           "qmin": int(info.min), "qmax": int(info.max)}
    return out


class _FedDtypes:
    """The dtype each fp32 tensor is fed as: as the target graph holds it (float16 where the fp16
    model stores it so), from the target's declared inputs, its inferred types, or the reference."""

    def __init__(self, target: "onnx.ModelProto") -> None:
        from parity.lib.onnx.graph import inferred_types, model_inputs

        self.types = inferred_types(target)
        self.tin = {vi.name: vi.type.tensor_type.elem_type for vi in model_inputs(target)}
        self.np: dict[str, np.dtype] = {}
        self.onnx: dict[str, int] = {}

    def add(self, t: str, ref: np.ndarray) -> None:
        import onnx

        from parity.lib.onnx.graph import FLOAT_TYPES

        if t in self.onnx:
            return
        want = self.types.get(t)
        if t in self.tin and self.tin[t]:
            self.onnx[t] = self.tin[t]
            self.np[t] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self.tin[t]))
        elif want and want in {"float16", "float32", "float64"} and str(ref.dtype) in FLOAT_TYPES:
            self.np[t] = np.dtype(want)
            self.onnx[t] = onnx.helper.np_dtype_to_tensor_dtype(self.np[t])
        else:
            self.np[t] = ref.dtype
            self.onnx[t] = onnx.helper.np_dtype_to_tensor_dtype(ref.dtype)


def _run_group(precision: str, cfg: RunConfig, target: "onnx.ModelProto", run_path: Path,
               group: list[LocalPlan], ref: dict[str, np.ndarray], fed_dtype: _FedDtypes,
               cast: _Caster) -> Iterator["LocalResult"]:
    """One session run of the local subgraphs of ``group``; their results, in plan order."""
    from parity.contract.records import LocalResult

    so, providers = session_options(cfg.options, cfg.device)
    label = f"the local runs of {Path(run_path).name}"
    fed = sorted({t for p in group for t in p.fed})
    for t in fed:
        fed_dtype.add(t, ref[t])
    model, outs = build_local_model(target, group, fed_dtype.onnx, {t: ref[t].shape for t in fed})
    sess = make_session(model, so, providers, Path(cfg.workdir), label)
    del model
    names = [nm for o in outs for nm in o]
    inputs = {t: ref[t] if ref[t].dtype == fed_dtype.np[t] else cast(ref[t], fed_dtype.np[t]) for t in fed}
    vals = run_session(sess, names, inputs, label)
    del sess, inputs
    got = dict(zip(names, vals))
    del vals
    for p, o in zip(group, outs):
        for key, nm in zip(p.keys, o):
            arr = got.pop(nm, None)
            if not isinstance(arr, np.ndarray):
                continue
            meta: dict[str, Any] = {"onnx_node": p.node_name, "local_nodes": len(p.nodes),
                                    "local_inputs": list(p.fed), "precision": precision,
                                    "consumers": p.consumers.get(key, [])}
            if p.module is not None:
                meta.update(onnx_node=None, module_run=p.module)
            elif key in p.quantizers:
                meta["quantizer"] = dict(p.quantizers[key])
            if p.input_quantizers:
                meta["input_quantizers"] = list(p.input_quantizers)
            yield LocalResult(key=key, ref=ref[key], target=arr, op_type=None if p.module else p.op_type,
                              meta=meta)
            del arr
    del got


def _predicted_float_keys(orig: "onnx.ModelProto", captured: list[str]) -> list[str] | None:
    """The captured tensors a reference run will return as float arrays, from ONNX type inference.

    Step-wise local runs plan every layer before the reference values exist, so they need
    what the single run reads off the arrays: which captured tensors are float (every one of
    them must be an array, which is checked as the steps return them). ``None`` when inference
    leaves any captured tensor untyped or not a plain tensor (the caller then takes the single run).
    """
    from parity.lib.onnx.graph import FLOAT_TYPES, inferred_types

    types = inferred_types(orig)
    keys: list[str] = []
    for t in captured:
        d = types.get(t)
        if d is None or d == "non-tensor":
            return None
        if d in FLOAT_TYPES:
            keys.append(t)
    return keys


def _stepped(precision: str, cfg: RunConfig, feed: dict[str, np.ndarray], src: Path,
             orig: "onnx.ModelProto", batches: list[list[str]], run_path: Path, limits: _Limits,
             keys: list[str], skipped: list[dict[str, str]]) -> Iterator["LocalResult"]:
    """Reference capture in consecutive steps (:func:`.runner.run_steps`, nothing recomputed); after
    each step, the local runs of the layers whose inputs and outputs are all captured by then.

    A reference tensor is dropped once the last layer that reads it or reports it has run, so
    memory holds about one step's tensors plus those that cross the cut, whatever the depth.
    """
    import onnx

    from parity.lib.onnx.graph import FLOAT_TYPES

    key_set = set(keys)
    captured = [t for b in batches for t in b]
    target = onnx.load(str(run_path))
    plans, skips = _plans(precision, orig, target, keys, set(captured) | set(feed), cfg.options)
    skipped.extend(skips)
    last_use: dict[str, int] = {}
    for j, p in enumerate(plans):
        for t in (*p.keys, *p.fed):
            last_use[t] = j
    fed_dtype = _FedDtypes(target)
    cast = _Caster(cfg)
    so, providers = session_options(cfg.options, cfg.device)
    label = f"{src.name} for the local reference"
    ref: dict[str, np.ndarray] = {t: a for t, a in feed.items() if t in last_use}
    have: set[str] = set(feed)
    nxt = 0
    for names, results in zip(batches, runner.run_steps(orig, batches, feed, so, providers,
                                                      Path(cfg.workdir), label)):
        for k, t in enumerate(names):
            v = results[k]
            results[k] = None
            is_key = isinstance(v, np.ndarray) and str(v.dtype) in FLOAT_TYPES
            if not isinstance(v, np.ndarray) or is_key != (t in key_set):
                raise ParityError(f"the local runs of {src.name} expected tensor {t!r} to be "
                                  f"{'a float' if t in key_set else 'a non-float'} array, as ONNX type "
                                  f"inference says; the reference run returned "
                                  f"{getattr(v, 'dtype', type(v).__name__)}. Note: ort_output_batch=0 "
                                  f"runs the reference in one session, which needs no prediction")
            have.add(t)
            if t in last_use:
                ref[t] = v
            del v
        del results
        start = nxt
        while nxt < len(plans) and all(t in have for t in (*plans[nxt].keys, *plans[nxt].fed)):
            nxt += 1
        for group in _split(plans[start:nxt], limits):
            yield from _run_group(precision, cfg, target, run_path, group, ref, fed_dtype, cast)
            start += len(group)
            for t in [t for t in ref if last_use.get(t, -1) < start]:
                del ref[t]
    if nxt < len(plans):  # cannot happen: every plan reads and reports captured tensors only
        raise ParityError(f"the local runs of {src.name} left {len(plans) - nxt} layer(s) unrun. "
                          f"Note: ort_output_batch=0 runs them in one session")


def _split(plans: list[LocalPlan], limits: _Limits) -> list[list[LocalPlan]]:
    """Consecutive groups of local runs whose outputs stay within ``limits`` (a plan's outputs
    counted at their fp32 size, an upper bound for fp16/int8; one plan per group at least)."""
    groups: list[list[LocalPlan]] = [[]]
    n = size = 0
    for p in plans:
        b = sum(limits.sizes.get(k, 0) for k in p.keys)
        full = groups[-1] and ((limits.max_count is not None and n + len(p.keys) > limits.max_count)
                               or (limits.max_bytes is not None and size + b > limits.max_bytes))
        if full:
            groups.append([])
            n = size = 0
        groups[-1].append(p)
        n += len(p.keys)
        size += b
    return [g for g in groups if g]

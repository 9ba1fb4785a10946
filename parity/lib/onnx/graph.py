"""ONNX graph plumbing: load with clear errors, list capturable tensors, mark them as outputs.

Only onnx is needed here; onnxruntime is used by the source itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from parity.contract.errors import ParityError, first_line

from parity.lib.onnx.util import sniff

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import onnx

FLOAT_TYPES = {"float32", "float16", "float64", "bfloat16"}
#: ops whose outputs are values fixed at export time, never activations
CONSTANT_OPS = {"Constant", "ConstantOfShape"}


@dataclass(frozen=True)
class TensorSite:
    """Where a tensor of the top-level graph comes from."""

    name: str
    node_index: int
    node_name: str
    op_type: str
    output_index: int  # position among the producing node's outputs


def load_model(path: str | Path, *, what: str = "model") -> "onnx.ModelProto":
    """``onnx.load`` with one-line errors: missing file, zip/pickle/text, not a model."""
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.exists():
        raise ParityError(f"{what} {p} does not exist. Note: pass the path of an .onnx file or a torch model")
    if p.is_dir():
        raise ParityError(f"{what} {p} is a directory, not an ONNX model file")
    looks = sniff(p)
    if looks.startswith(("a zip archive", "a Python pickle", "a NumPy", "an empty file")):
        raise ParityError(f"{what} {p} is not an ONNX model. Note: it looks like {looks}; "
                          f"pass a torch model under a .pt/.pt2 name so parity exports it, or an .onnx file")
    try:
        m = onnx.load(str(p))
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise ParityError(f"{what} {p} is not an ONNX model. Note: it looks like {looks} "
                          f"({first_line(e, 200, typed=True)})") from e
    if not m.graph.node and not m.graph.output or not m.opset_import:
        raise ParityError(f"{what} {p} is not an ONNX model. Note: it parsed as a protobuf but has no graph "
                          f"or opset (it looks like {looks})")
    return m


def model_inputs(model: "onnx.ModelProto") -> list["onnx.ValueInfoProto"]:
    """Graph inputs a caller must feed (initializers listed as inputs are defaults, not inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def elem_dtype(elem_type: int) -> str | None:
    """numpy dtype name of an ONNX tensor element type (``None`` if unknown)."""
    import onnx

    if not elem_type:
        return None
    if elem_type == onnx.TensorProto.BFLOAT16:
        return "bfloat16"
    try:
        import numpy as np

        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)))
    except Exception:
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def value_dims(vi: "onnx.ValueInfoProto") -> tuple[int | None, ...] | None:
    """Static dims as ints, symbolic/unknown ones as ``None``; ``None`` if the rank is unknown."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)


def _subgraph_refs(node: "onnx.NodeProto") -> set[str]:
    from parity.lib.onnx.provenance import _subgraph_refs as refs

    return refs(node)


def tensor_sites(model: "onnx.ModelProto") -> list[TensorSite]:
    """Top-level tensors that depend on a graph input, in node (topological) order.

    Outputs of Constant nodes and of subgraphs fed only by initializers and constants are
    left out: they are weights, not activations.
    """
    g = model.graph
    live = {i.name for i in model_inputs(model)}
    sites: list[TensorSite] = []
    for i, n in enumerate(g.node):
        ins = set(n.input) | _subgraph_refs(n)
        if n.op_type in CONSTANT_OPS:
            continue
        if not any(x in live for x in ins if x):
            continue
        for j, o in enumerate(n.output):
            if o:
                live.add(o)
                sites.append(TensorSite(o, i, n.name, n.op_type, j))
    return sites


def captured_sites(model: "onnx.ModelProto") -> list[TensorSite]:
    """The sites worth capturing: tensors some node reads (subgraphs included) or graph outputs."""
    outputs = {o.name for o in model.graph.output}
    consumed = {x for n in model.graph.node for x in n.input}
    for n in model.graph.node:
        consumed |= _subgraph_refs(n)
    return [s for s in tensor_sites(model) if s.name in consumed or s.name in outputs]


def empty_like(model: "onnx.ModelProto", graph_name: str | None = None) -> "onnx.ModelProto":
    """A model with ``model``'s header (IR version, producer, opsets, functions) and an empty graph.

    Every derived model (weight-free, pruned, one capture step, the local runs) starts here.
    """
    import onnx

    new = onnx.ModelProto()
    for f in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(new, f, getattr(model, f))
    new.opset_import.extend(model.opset_import)
    new.functions.extend(model.functions)
    new.graph.name = model.graph.name if graph_name is None else graph_name
    return new


def without_weights(model: "onnx.ModelProto", keep_elements: int = 1024) -> "onnx.ModelProto":
    """A copy of ``model`` where initializers above ``keep_elements`` become typed graph inputs.

    Small initializers (shape constants read by Reshape, Expand...) keep their values.
    """
    from onnx import helper

    g = model.graph
    light = empty_like(model)
    lg = light.graph
    lg.node.extend(g.node)
    lg.input.extend(g.input)
    lg.output.extend(g.output)
    lg.value_info.extend(g.value_info)
    declared = {vi.name for vi in g.input}
    for t in g.initializer:
        n = 1
        for d in t.dims:
            n *= d
        if n <= keep_elements:
            lg.initializer.append(t)
        elif t.name not in declared:
            lg.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light


def inferred_types(model: "onnx.ModelProto") -> dict[str, str | None]:
    """dtype name per tensor from ONNX shape inference (``{}`` if inference fails)."""
    import onnx

    try:
        # dtypes do not depend on weight values: infer on a copy whose large initializers are
        # declared inputs, which skips serializing and re-parsing every weight (and the 2 GB limit)
        inf = onnx.shape_inference.infer_shapes(without_weights(model), strict_mode=False)
    except Exception:
        inf = model
    out: dict[str, str | None] = {}
    for vi in list(inf.graph.value_info) + list(inf.graph.output) + list(inf.graph.input):
        if vi.type.HasField("tensor_type"):
            out[vi.name] = elem_dtype(vi.type.tensor_type.elem_type)
        else:
            out[vi.name] = "non-tensor"
    return out


@dataclass(frozen=True)
class TensorInfo:
    """What ONNX shape inference says of one tensor for a given feed: dtype name and dims.

    ``dims`` is ``None`` when the rank is unknown; a dimension inference could not settle is ``None``.
    """

    dtype: str | None
    dims: tuple[int | None, ...] | None

    @property
    def nbytes(self) -> int | None:
        """Bytes of the tensor, or ``None`` unless dtype and every dimension are known."""
        return self.bytes_with(None)

    def bytes_with(self, unknown_dim: int | None, unknown_first: int | None = None) -> int | None:
        """Bytes with each unknown dimension taken as ``unknown_dim``, an unknown first dimension
        as ``unknown_first`` (default ``unknown_dim``); ``None`` when a dimension stays unknown."""
        import numpy as np

        if self.dims is None or self.dtype in (None, "non-tensor"):
            return None
        first = unknown_dim if unknown_first is None else unknown_first
        dims = [(first if i == 0 else unknown_dim) if d is None else d for i, d in enumerate(self.dims)]
        if any(d is None for d in dims):
            return None
        try:
            item = 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize
        except TypeError:
            return None
        n = item
        for d in dims:
            n *= int(d)  # type: ignore[arg-type]
        return n


def inferred_info(model: "onnx.ModelProto", input_shapes: dict[str, tuple[int, ...]] | None = None
                  ) -> dict[str, TensorInfo]:
    """dtype and dims per tensor from one ONNX shape inference, with the graph inputs fixed to
    ``input_shapes`` (the feed's shapes) so that symbolic dimensions such as the batch resolve.

    Runs on a weight-free copy (see :func:`without_weights`); ``{}`` when inference fails.
    """
    import onnx

    light = without_weights(model)
    if input_shapes:
        for vi in light.graph.input:
            shape = input_shapes.get(vi.name)
            if shape is None or not vi.type.HasField("tensor_type"):
                continue
            tt = vi.type.tensor_type
            tt.ClearField("shape")
            for d in shape:
                tt.shape.dim.add().dim_value = int(d)
    try:
        inf = onnx.shape_inference.infer_shapes(light, strict_mode=False)
    except Exception:
        return {}
    out: dict[str, TensorInfo] = {}
    for vi in list(inf.graph.value_info) + list(inf.graph.output) + list(inf.graph.input):
        if vi.type.HasField("tensor_type"):
            out[vi.name] = TensorInfo(elem_dtype(vi.type.tensor_type.elem_type), value_dims(vi))
        else:
            out[vi.name] = TensorInfo("non-tensor", None)
    return out


#: ops whose first output holds exactly as many elements, of the same type, as their data input
_SAME_SIZE_OPS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Softmax",
                            "LogSoftmax", "Relu", "Erf", "Tanh", "Sigmoid", "Sqrt", "Neg", "Exp", "Log", "Abs",
                            "Gelu", "Reciprocal"})
#: elementwise ops whose output is the data input's size when every other input is a scalar
_SCALAR_BINARY_OPS = frozenset({"Mul", "Div", "Add", "Sub", "Pow"})


def _same_size_input(node: "onnx.NodeProto", sizes: dict[str, int], scalars: set[str]) -> int | None:
    """Bytes of ``node``'s first output when they equal its data input's (see :data:`_SAME_SIZE_OPS`;
    a binary op whose other input is one of ``scalars``, one-element tensors), else None."""
    if node.op_type in _SAME_SIZE_OPS and node.input and node.input[0] in sizes:
        return sizes[node.input[0]]
    if node.op_type in _SCALAR_BINARY_OPS and len(node.input) == 2:
        a, b = node.input
        if b in scalars and a in sizes:  # a one-element operand (a scale, an epsilon) broadcasts to nothing larger
            return sizes[a]
        if a in scalars and b in sizes:
            return sizes[b]
    return None


def estimated_bytes(model: "onnx.ModelProto", info: dict[str, TensorInfo],
                    feed_bytes: dict[str, int] | None = None, unknown_dim: int = 1,
                    unknown_first: int | None = None) -> dict[str, int]:
    """Bytes per tensor of ``model``: exact where :func:`inferred_info` knows dtype and shape, else
    estimated: a known rank with some unknown dimensions takes an unknown first dimension as
    ``unknown_first`` (callers pass the feed's batch) and any other as ``unknown_dim`` (callers pass
    the feed's largest dimension, which a sequence axis rarely exceeds); an unknown rank takes the
    largest input of the producing node (in graph order, so inputs are settled first).

    Why an estimate: dimensions derived from constants (a mask buffer broadcast to the batch) or
    data-dependent shapes (NonZero) stay unknown to ONNX inference, and capture steps planned on
    an underestimate would overrun their budget. A tensor with nothing to go by counts as the largest feed.
    """
    sizes: dict[str, int] = dict(feed_bytes or {})
    scalars: set[str] = set()
    for t in model.graph.initializer:
        n = TensorInfo(elem_dtype(t.data_type), tuple(t.dims)).nbytes
        if n is not None:
            sizes[t.name] = n
        if all(int(d) == 1 for d in t.dims):
            scalars.add(t.name)
    fallback = max(sizes.values(), default=0) if feed_bytes is None else max(feed_bytes.values(), default=0)
    guessed: dict[str, int] = {}
    for name, ti in info.items():
        if ti.dims is not None and all(d == 1 for d in ti.dims):
            scalars.add(name)
        n = ti.nbytes
        if n is not None:
            sizes[name] = n
        else:
            g = ti.bytes_with(max(1, int(unknown_dim)),
                              None if unknown_first is None else max(1, int(unknown_first)))
            if g is not None:
                guessed[name] = g
    for node in model.graph.node:
        same = _same_size_input(node, sizes, scalars)
        for o in node.output:
            if o and o not in sizes:
                if same is not None and o == node.output[0]:
                    # exact where inference left dimensions open: a Reshape or Transpose of a known
                    # tensor, or its product with a scalar, has that tensor's bytes (a guess from the
                    # feed's largest dimension put a (8, 12, 32, 128) attention reshape at 64 MiB, 40x)
                    sizes[o] = same
                    continue
                if o in guessed:
                    sizes[o] = guessed[o]
                    continue
                known = [sizes[x] for x in node.input if x in sizes]
                sizes[o] = max(known) if known else fallback
    return sizes


def with_outputs(model: "onnx.ModelProto", names: Iterable[str], *, prune: bool = False
                 ) -> "onnx.ModelProto":
    """``model`` with ``names`` added to its graph outputs (in place), or with ``prune`` a new
    model whose only outputs are ``names`` and that keeps only the nodes they need.

    Outputs are declared without a type: onnxruntime infers it, which also covers tensors
    ONNX shape inference could not type. Pruned models serve batched capture, where a
    smaller graph with fewer outputs bounds the memory of each run.
    """
    wanted = list(dict.fromkeys(names))
    g = model.graph
    if not prune:
        # in place: copying the proto would duplicate every weight
        existing = {o.name for o in g.output}
        for t in wanted:
            if t not in existing:
                g.output.add().name = t
        return model
    new = empty_like(model)
    ng = new.graph
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    need: set[int] = set()
    stack = [producer[t] for t in wanted if t in producer]
    while stack:
        i = stack.pop()
        if i in need:
            continue
        need.add(i)
        n = g.node[i]
        for x in set(n.input) | _subgraph_refs(n):
            if x in producer and producer[x] not in need:
                stack.append(producer[x])
    used = {x for i in need for x in set(g.node[i].input) | _subgraph_refs(g.node[i])}
    ng.node.extend(g.node[i] for i in sorted(need))
    ng.initializer.extend(t for t in g.initializer if t.name in used)
    ng.sparse_initializer.extend(t for t in g.sparse_initializer if t.values.name in used)
    ng.input.extend(g.input)
    declared = {o.name: o for o in g.output}
    for t in wanted:
        if t in declared:
            ng.output.append(declared[t])
        else:
            ng.output.add().name = t
    return new


@dataclass
class CaptureStep:
    """One session run of batched capture: the nodes no earlier step ran, what they read, what they hand on.

    ``wanted`` are the captured tensors of this step, in capture order; each is computed here or
    was handed on by an earlier step. ``outputs`` are what this step's session returns: the wanted
    tensors it computes, then those that later steps read (``hand_on``). ``release`` lists
    tensors no later step reads, to drop once this step's records are out.
    """

    wanted: list[str]
    nodes: list[int]
    inputs: list[str]
    initializers: list[str]
    outputs: list[str]
    hand_on: list[str]
    release: list[str]


def plan_capture_steps(model: "onnx.ModelProto", batches: list[list[str]]) -> list[CaptureStep]:
    """Split a capture into consecutive session runs that never recompute a node.

    Step k runs the ancestors of its batch that earlier steps did not run, fed the graph inputs
    and the tensors earlier steps computed; so memory holds one batch plus the tensors that
    cross the cut (for a layer stack, the running activation), and the whole capture costs one
    forward pass, whatever the number of steps.
    """
    g = model.graph
    nodes = g.node
    inits = {t.name for t in g.initializer}
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    graph_inputs = {vi.name for vi in g.input} - inits
    all_reads = [list(dict.fromkeys([x for x in n.input if x] + sorted(_subgraph_refs(n)))) for n in nodes]
    reads = [[x for x in r if x in producer or x in graph_inputs] for r in all_reads]
    done: set[int] = set()
    plans: list[list[int]] = []
    for batch in batches:
        need: set[int] = set()
        stack = [producer[t] for t in batch if t in producer]
        while stack:
            i = stack.pop()
            if i in need or i in done:
                continue
            need.add(i)
            stack.extend(producer[x] for x in reads[i] if x in producer)
        plans.append(sorted(need))
        done |= need
    made: dict[str, int] = {}
    last_read: dict[str, int] = {}
    for k, plan in enumerate(plans):
        for i in plan:
            for o in nodes[i].output:
                if o:
                    made[o] = k
            for x in reads[i]:
                last_read[x] = max(last_read.get(x, -1), k)
    for k, batch in enumerate(batches):
        for t in batch:  # wanted by a later step than the one computing it: hand it on
            if made.get(t, k) < k:
                last_read[t] = max(last_read.get(t, -1), k)
    steps: list[CaptureStep] = []
    live: set[str] = set(graph_inputs)
    for k, (batch, plan) in enumerate(zip(batches, plans)):
        pset = set(plan)
        inputs = list(dict.fromkeys(x for i in plan for x in reads[i] if x not in producer or producer[x] not in pset))
        used_inits = list(dict.fromkeys(x for i in plan for x in all_reads[i] if x in inits))
        own = [t for t in batch if made.get(t) == k]
        hand_on = [o for i in plan for o in nodes[i].output if o and last_read.get(o, -1) > k]
        outputs = list(dict.fromkeys(own + hand_on))
        live |= set(hand_on)
        release = sorted(x for x in live if last_read.get(x, -1) <= k)
        live -= set(release)
        steps.append(CaptureStep(list(batch), plan, inputs, used_inits, outputs, hand_on, release))
    return steps


def step_model(model: "onnx.ModelProto", step: CaptureStep, input_arrays: dict[str, "np.ndarray"]
               ) -> "onnx.ModelProto":
    """The model one capture step runs: its nodes, typed inputs from the arrays it is fed, its weights."""
    from onnx import helper

    g = model.graph
    new = empty_like(model)
    ng = new.graph
    ng.node.extend(g.node[i] for i in step.nodes)
    for x in step.inputs:
        a = input_arrays[x]
        ng.input.append(helper.make_tensor_value_info(x, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)))
    wanted = set(step.initializers)
    ng.initializer.extend(t for t in g.initializer if t.name in wanted)
    for o in step.outputs:
        ng.output.add().name = o  # untyped: onnxruntime infers it
    return new

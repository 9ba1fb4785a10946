"""Which tensors of a network to capture, decided on a plain description of its layers.

TensorRT refuses (or silently mis-handles) some tensors as outputs or debug tensors:
shape tensors, tensors inside loops and conditionals; constants fold away; integer and
bool tensors carry indices, not activations. The choice is made here on a list of
:class:`LayerDesc` so it is tested without TensorRT: :mod:`.source` describes a
``tensorrt.INetworkDefinition`` this way, :func:`describe_onnx` describes an ONNX graph
(the same layers the ONNX parser creates, one per node, before fusion).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from .config import EngineConfig, LayerPrecision, resolve_layer_precision

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from parity.contract.source import LayerSelection

#: dtypes worth comparing (numpy spelling; bfloat16 and fp8 as TensorRT names them)
FLOAT_DTYPES = frozenset({"float32", "float16", "bfloat16", "float64", "fp8", "float8_e4m3fn"})
#: TensorRT layer types that open a loop or conditional body (tensorrt.LayerType member names)
_BODY_OPENERS = frozenset({"RECURRENCE", "ITERATOR", "TRIP_LIMIT", "CONDITIONAL_INPUT", "CONDITION"})
#: layer types whose outputs leave a loop or conditional body
_BODY_CLOSERS = frozenset({"LOOP_OUTPUT", "CONDITIONAL_OUTPUT"})
#: ONNX ops that take a body graph
_ONNX_CONTROL_FLOW = frozenset({"Loop", "If", "Scan"})
#: ONNX ops whose output is a shape, and inputs that are consumed as shapes
_SHAPE_SOURCES = frozenset({"Shape", "Size"})
SHAPE_INPUTS = {"Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Slice": (1, 2, 3, 4),
                 "Resize": (1, 2, 3), "Upsample": (1,), "Range": (0, 1, 2), "TopK": (1,), "Squeeze": (1,),
                 "Unsqueeze": (1,), "Pad": (1, 3), "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,),
                 "ReduceMin": (1,), "ReduceProd": (1,), "OneHot": (1,)}
_RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                         "Bernoulli"})


@dataclass(frozen=True)
class TensorDesc:
    """One tensor as the capture decision needs it."""

    name: str
    dtype: str | None = None
    shape: tuple[int | None, ...] | None = None
    is_shape_tensor: bool = False
    is_constant: bool = False
    is_network_input: bool = False
    is_network_output: bool = False


@dataclass(frozen=True)
class LayerDesc:
    """One layer (TensorRT) or node (ONNX): its type, input tensor names and outputs."""

    name: str
    type: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[TensorDesc, ...] = ()
    in_control_flow: bool = False
    precision: str | None = None


@dataclass
class Selection:
    """The tensors to capture, in layer order, and every tensor left out with the reason."""

    tensors: list[str] = field(default_factory=list)
    layer_of: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def reasons(self) -> dict[str, int]:
        """How many tensors each reason left out (for one summary line)."""
        out: dict[str, int] = {}
        for r in self.skipped.values():
            out[r] = out.get(r, 0) + 1
        return out


# --------------------------------------------------------------------------- graph facts

def mark_control_flow(layers: Sequence[LayerDesc]) -> list[LayerDesc]:
    """Flag layers inside TensorRT loop or conditional bodies (``in_control_flow``).

    TensorRT builds a loop from boundary layers: data enters through RECURRENCE/ITERATOR
    (and TRIP_LIMIT/CONDITION set it up), leaves through LOOP_OUTPUT/CONDITIONAL_OUTPUT.
    A layer is inside a body when it is reachable from an opener without passing a closer;
    openers are themselves inside, closers are not (their outputs are ordinary tensors).
    """
    producer: dict[str, int] = {}
    for i, layer in enumerate(layers):
        for t in layer.outputs:
            producer[t.name] = i
    inside = [lay.type in _BODY_OPENERS or lay.in_control_flow for lay in layers]
    changed = True
    while changed:  # layers are in network order, so this converges in a pass or two
        changed = False
        for i, layer in enumerate(layers):
            if inside[i] or layer.type in _BODY_CLOSERS:
                continue
            if any(x in producer and inside[producer[x]] for x in layer.inputs):
                inside[i] = True
                changed = True
    return [replace(lay, in_control_flow=True) if inside[i] and not lay.in_control_flow else lay
            for i, lay in enumerate(layers)]


def propagate_constants(layers: Sequence[LayerDesc], constant_inputs: Iterable[str] = ()) -> list[LayerDesc]:
    """Flag tensors computed from constants only: TensorRT folds them at build time."""
    const = set(constant_inputs)
    out: list[LayerDesc] = []
    for layer in layers:
        srcs = [x for x in layer.inputs if x]
        is_const_layer = layer.type in ("CONSTANT", "Constant") or (
            srcs and all(x in const for x in srcs) and layer.type not in _RANDOM_OPS)
        if layer.type in ("ConstantOfShape",) and srcs and all(x in const for x in srcs):
            is_const_layer = True
        outs = []
        for t in layer.outputs:
            if is_const_layer or t.is_constant:
                const.add(t.name)
                outs.append(t if t.is_constant else replace(t, is_constant=True))
            else:
                outs.append(t)
        out.append(replace(layer, outputs=tuple(outs)))
    return out


# --------------------------------------------------------------------------- selection

def _skip_reason(t: TensorDesc, layer: LayerDesc) -> str | None:
    if t.is_network_input:
        return "network input"
    if layer.in_control_flow:
        return "inside a loop or conditional"
    if t.is_shape_tensor:
        return "shape tensor"
    if t.is_constant:
        return "constant"
    if t.dtype is not None and t.dtype not in FLOAT_DTYPES:
        return f"{t.dtype} tensor"
    return None


def select_tensors(layers: Sequence[LayerDesc], cfg: EngineConfig | None = None, *,
                   regex: str | None = None, names: Iterable[str] | None = None,
                   include_outputs: bool = True, selection: "LayerSelection | None" = None,
                   aliases: Mapping[str, Sequence[str | None]] | None = None) -> Selection:
    """The tensors worth capturing, in layer order, with a reason for each one left out.

    ``regex`` / ``names`` (or ``cfg.mark_regex`` / ``cfg.mark_names``) keep only tensors
    whose own name or whose layer's name matches; network outputs are always kept
    (when ``include_outputs``) because the comparison needs them. ``selection`` (the run's
    ``--layers``, ``RunConfig.layers``) narrows further on the same rule as the core's filter:
    a tensor is kept when its name, its layer's name or any of its ``aliases`` (the ONNX tensor
    and node it stands for, its torch module paths) is selected, so fewer tensors are marked.
    """
    if cfg is not None:
        regex = regex if regex is not None else cfg.mark_regex
        names = names if names is not None else cfg.mark_names
    rx = re.compile(regex) if regex else None
    wanted = set(names or ())
    filtered = rx is not None or bool(wanted)
    sel = Selection()
    seen: set[str] = set()
    for layer in layers:
        for t in layer.outputs:
            if not t.name or t.name in seen:
                continue
            seen.add(t.name)
            why = _skip_reason(t, layer)
            if why is not None and not (t.is_network_output and include_outputs and why != "network input"):
                sel.skipped[t.name] = why
                continue
            if filtered and not (t.is_network_output and include_outputs):
                hit = (t.name in wanted or layer.name in wanted
                       or (rx is not None and (rx.search(t.name) is not None or rx.search(layer.name) is not None)))
                if not hit:
                    sel.skipped[t.name] = "not selected by trt_mark / trt_mark_names"
                    continue
            if selection is not None and not (t.is_network_output and include_outputs) and not selection.selects(
                    t.name, layer.name, *((aliases or {}).get(t.name, ()))):
                sel.skipped[t.name] = "not selected by --layers"
                continue
            sel.tensors.append(t.name)
            sel.layer_of[t.name] = layer.name
    return sel


def plan_layer_precisions(layers: Sequence[LayerDesc], overrides: Sequence[LayerPrecision]
                          ) -> tuple[dict[str, str], dict[str, str]]:
    """Which layers get which precision, and which matched layers were skipped and why.

    An exact name is always applied; a wildcard match is skipped, as trtexec skips it,
    for layers working on shape tensors or producing integer/bool data only.
    """
    applied: dict[str, str] = {}
    skipped: dict[str, str] = {}
    if not overrides:
        return applied, skipped
    dtypes = {t.name: t for lay in layers for t in lay.outputs}
    for layer in layers:
        if layer.type == "Input":
            continue
        prec = resolve_layer_precision(overrides, layer.name)
        if prec is None:
            continue
        exact = any(lp.pattern == layer.name for lp in overrides)
        if not exact:
            first_in = dtypes.get(layer.inputs[0]) if layer.inputs else None
            known = [t.dtype for t in layer.outputs if t.dtype is not None]
            if first_in is not None and first_in.is_shape_tensor:
                skipped[layer.name] = "operates on a shape tensor"
                continue
            if known and all(d not in FLOAT_DTYPES for d in known):
                # trtexec skips layers whose own precision is integer/bool: they compute no activation
                skipped[layer.name] = "produces no floating-point output"
                continue
        applied[layer.name] = prec
    return applied, skipped


def unknown_override_names(layers: Sequence[LayerDesc], overrides: Sequence[LayerPrecision]) -> list[str]:
    """Override patterns that match no layer: TensorRT ignores them silently, parity says so."""
    names = [lay.name for lay in layers]
    return [lp.pattern for lp in overrides if not any(lp.matches(n) for n in names)]


# --------------------------------------------------------------------------- ONNX

def _elem_name(elem_type: int) -> str | None:
    import onnx

    if not elem_type:
        return None
    try:
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    except Exception:  # noqa: BLE001 - bfloat16 / float8 have no numpy dtype
        name = onnx.TensorProto.DataType.Name(elem_type).lower()
        return {"bfloat16": "bfloat16", "float8e4m3fn": "fp8"}.get(name, name)
    return str(np_dtype)


def _static(shape: tuple[int | None, ...] | None) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def describe_onnx(model: "onnx.ModelProto") -> list[LayerDesc]:
    """One :class:`LayerDesc` per ONNX node, body graphs of Loop/If/Scan flattened in and flagged.

    Dtypes and shapes come from ONNX shape inference; shape tensors are the outputs of
    Shape/Size and everything computed from shapes only, plus tensors consumed as shapes.
    Layer names follow the ONNX parser: an unnamed node is called ``node_of_<first output>``.
    """
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - describe what is known when inference fails
        inferred = model
    types: dict[str, tuple[str | None, tuple[int | None, ...] | None]] = {}

    def collect(g: "onnx.GraphProto") -> None:
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            tt = vi.type.tensor_type
            shape = None
            if tt.HasField("shape"):
                shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
            types[vi.name] = (_elem_name(tt.elem_type), shape)
        for init in g.initializer:
            types[init.name] = (_elem_name(init.data_type), tuple(init.dims))
        for n in g.node:
            for a in n.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    collect(sub)

    collect(inferred.graph)
    g = inferred.graph
    inits = {i.name for i in g.initializer}
    graph_inputs = {i.name for i in g.input} - inits
    graph_outputs = {o.name for o in g.output}

    flat: list[tuple["onnx.NodeProto", bool]] = []

    def walk(graph: "onnx.GraphProto", inside: bool) -> None:
        for n in graph.node:
            flat.append((n, inside))
            if n.op_type in _ONNX_CONTROL_FLOW or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                                      for a in n.attribute):
                for a in n.attribute:
                    for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                        walk(sub, True)

    walk(g, False)
    shape_t: set[str] = set()
    consts: set[str] = set(inits)
    for n, _ in flat:
        for pos in SHAPE_INPUTS.get(n.op_type, ()):
            if pos < len(n.input) and n.input[pos]:
                shape_t.add(n.input[pos])
    layers: list[LayerDesc] = []
    for n, inside in flat:
        ins = tuple(n.input)
        live = [x for x in ins if x and x not in consts]
        if n.op_type not in _RANDOM_OPS and (n.op_type == "Constant" or (not live and any(ins))):
            consts.update(o for o in n.output if o)
        elif n.op_type in _SHAPE_SOURCES and ins and _static(types.get(ins[0], (None, None))[1]):
            consts.update(o for o in n.output if o)  # the shape of a fixed-size tensor is a constant
        from_shapes = n.op_type in _SHAPE_SOURCES or (bool(live) and all(x in shape_t for x in live))
        outs = []
        for o in n.output:
            if not o:
                continue
            dt, shp = types.get(o, (None, None))
            if from_shapes:
                shape_t.add(o)
            outs.append(TensorDesc(o, dt, shp, is_shape_tensor=o in shape_t and o not in graph_outputs,
                                   is_network_output=o in graph_outputs and not inside))
        name = n.name or (f"node_of_{n.output[0]}" if n.output else "")
        layers.append(LayerDesc(name, n.op_type, ins, tuple(outs), in_control_flow=inside))
    # a second pass: tensors consumed as shapes were flagged after their producer was described
    layers = [replace(lay, outputs=tuple(replace(t, is_shape_tensor=True)
                                         if t.name in shape_t and not t.is_shape_tensor and not t.is_network_output
                                         else t for t in lay.outputs)) for lay in layers]
    described = propagate_constants(layers, consts)
    if graph_inputs:
        described.insert(0, LayerDesc("(inputs)", "Input", (), tuple(
            TensorDesc(i, *types.get(i, (None, None)), is_network_input=True) for i in sorted(graph_inputs))))
    return described

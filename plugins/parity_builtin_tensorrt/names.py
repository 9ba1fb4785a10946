"""From TensorRT engine layers back to the ONNX nodes and tensors they came from.

After fusion an engine layer is named after everything it swallowed. The grammar, as it
shows in ``trtexec --dumpLayerInfo`` / ``--exportLayerInfo`` output of TensorRT 8.6-10:

* ``A + B + C``                      vertical fusion (``Conv_0 + Relu_1``), names may be
  initializers (``fc.weight + QuantizeLinear_8 + Conv_12``) or parser-internal layers
  (``(Unnamed Layer* 360) [Shuffle]``, ``ONNXTRT_ShapeShuffle_336``);
* ``PWN(a, b)``                      pointwise fusion, nested: ``PWN(PWN(/act/Sigmoid), PWN(/act/Mul))``;
* ``A || B``                         horizontal fusion of parallel layers;
* ``{ForeignNode[A...B]}``           a Myelin region from network layer A to layer B;
* ``Reformatting CopyNode for Input Tensor 0 to L`` / ``... Output Tensor 0 to L``: a
  layout/precision copy feeding or draining layer L; its output tensor is
  ``Reformatted Input Tensor 0 to L`` unless it restores an ONNX tensor;
* ``T copy``                         a copy of tensor T (e.g. for a Concat);
* ``copied_squeeze_after_X``, ``reshape_after_X``, ``unsqueeze_node_after_X``, ... helper
  reshapes TensorRT inserts around X;
* Myelin kernels ``/model_10/attn/MatMul_myl109_2`` (``.`` turned into ``_``) and
  generated kernels ``__myl_MulMaxSubExpSum_myl109_3``;
* a second layer made for one ONNX node gets a unique suffix (``/model.10/Split_13``),
  an unnamed node is called ``node_of_<first output>`` (ONNX parser's ``getNodeName``).

When the engine was built with ``ProfilingVerbosity.DETAILED`` the layer information
carries ``Metadata`` ``[ONNX Layer: a]\\x1f[ONNX Layer: b]`` with the exact ONNX node names;
that wins over name parsing. Names that resolve to nothing are reported, never dropped.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from parity.contract.records import Activation

from .layer_info import EngineInfo, LayerInfo

if TYPE_CHECKING:  # pragma: no cover
    import onnx

_REFORMAT = re.compile(r"^Reformatting CopyNode for (Input|Output) Tensor (\d+) to (.+)$", re.S)
_REFORMATTED = re.compile(r"^Reformatted (Input|Output) Tensor (\d+) to (.+)$", re.S)
_UNNAMED = re.compile(r"\(Unnamed Layer\* ?\d+\) \[[^\]]*\]")
_HELPER = re.compile(r"^(?:copied_)?(squeeze_after_|unsqueeze_node_after_|reshape_after_|reshape_before_|"
                     r"transpose_before_|transpose_after_|shuffle_after_|shuffle_before_)(.+)$", re.S)
_MYELIN_SUFFIX = re.compile(r"_myl\d+_\d+$")
_UNIQUE_SUFFIX = re.compile(r"^(.+)_(\d+)$", re.S)


# --------------------------------------------------------------------------- parsing

@dataclass
class ParsedName:
    """The structure of one TensorRT layer name."""

    raw: str
    kind: str = "layer"                 # layer | reformat | copy | foreign
    atoms: list[str] = field(default_factory=list)
    ranges: list[tuple[str, str]] = field(default_factory=list)
    parallel: bool = False
    io: str | None = None               # reformat: "input" | "output"
    index: int | None = None            # reformat: tensor index
    target: "ParsedName | None" = None  # reformat: the layer it feeds or drains


def _split_top(s: str, seps: Sequence[str]) -> list[tuple[str, str | None]]:
    """Split ``s`` on any of ``seps`` outside brackets; each piece comes with the separator before it."""
    out: list[tuple[str, str | None]] = []
    depth = 0
    start = 0
    prev: str | None = None
    i = 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        elif depth == 0:
            hit = next((sep for sep in seps if s.startswith(sep, i)), None)
            if hit is not None:
                out.append((s[start:i], prev))
                prev = hit
                i += len(hit)
                start = i
                continue
        i += 1
    out.append((s[start:], prev))
    return out


def _parse_piece(piece: str, into: ParsedName) -> None:
    piece = piece.strip()
    if not piece:
        return
    if piece.startswith("{ForeignNode[") and piece.endswith("]}"):
        into.kind = "foreign" if into.kind == "layer" else into.kind
        inner = piece[len("{ForeignNode["):-2]
        if "..." in inner:
            a, b = inner.split("...", 1)
            into.ranges.append((a.strip(), b.strip()))
        else:
            _parse_into(inner, into)
        return
    if piece.startswith("PWN(") and piece.endswith(")"):
        inner = piece[4:-1]
        for sub, _ in _split_top(inner, (", ",)):
            _parse_into(sub, into)
        return
    into.atoms.append(piece)


def _parse_into(text: str, into: ParsedName) -> None:
    for piece, sep in _split_top(text, (" + ", " || ")):
        if sep == " || ":
            into.parallel = True
        _parse_piece(piece, into)


def parse_layer_name(name: str) -> ParsedName:
    """Split a TensorRT layer name into the names it is made of (no ONNX graph needed)."""
    m = _REFORMAT.match(name)
    if m:
        return ParsedName(name, "reformat", io=m.group(1).lower(), index=int(m.group(2)),
                          target=parse_layer_name(m.group(3)))
    if name.endswith(" copy") and len(name) > 5:
        return ParsedName(name, "copy", atoms=[name[:-5]])
    p = ParsedName(name)
    _parse_into(name, p)
    return p


# --------------------------------------------------------------------------- the ONNX side

def _norm(s: str) -> str:
    """What Myelin does to names: everything but letters, digits and '/' becomes '_'."""
    return re.sub(r"[^0-9A-Za-z/]", "_", s)


@dataclass
class OnnxGraph:
    """The facts about an ONNX graph that name mapping needs, in topological order."""

    nodes: list[str]
    op_types: list[str]
    node_inputs: list[list[str]]
    node_outputs: list[list[str]]
    initializers: set[str]
    graph_inputs: list[str]
    graph_outputs: list[str]
    index: dict[str, int] = field(default_factory=dict)
    producer: dict[str, int] = field(default_factory=dict)
    consumers: dict[str, list[int]] = field(default_factory=dict)
    normalized: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: "onnx.ModelProto") -> "OnnxGraph":
        g = model.graph
        names, ops, ins, outs = [], [], [], []
        for n in g.node:
            names.append(n.name or (f"node_of_{n.output[0]}" if n.output else ""))
            ops.append(n.op_type)
            ins.append([x for x in n.input if x])
            outs.append([x for x in n.output if x])
        inits = {i.name for i in g.initializer}
        self = cls(names, ops, ins, outs, inits, [i.name for i in g.input if i.name not in inits],
                   [o.name for o in g.output])
        for i, n in enumerate(names):
            if n:
                self.index.setdefault(n, i)
                self.normalized.setdefault(_norm(n), []).append(i)
            for t in outs[i]:
                self.producer[t] = i
            for t in ins[i]:
                self.consumers.setdefault(t, []).append(i)
        for i, n in enumerate(g.node):  # subgraph references count as consumption
            for a in n.attribute:
                subs = [a.g] if a.HasField("g") else list(a.graphs)
                for sub in subs:
                    for sn in sub.node:
                        for t in sn.input:
                            if t and t in self.producer and i not in self.consumers.get(t, []):
                                self.consumers.setdefault(t, []).append(i)
        return self

    def is_tensor(self, name: str) -> bool:
        return name in self.producer or name in self.graph_inputs or name in self.initializers

    def sinks(self, covered: Iterable[int]) -> list[str]:
        """Outputs of ``covered`` nodes that leave the set (consumed outside, or graph outputs)."""
        cov = set(covered)
        out: list[str] = []
        outputs = set(self.graph_outputs)
        for i in sorted(cov):
            for t in self.node_outputs[i]:
                users = self.consumers.get(t, [])
                if t in outputs or not users or any(u not in cov for u in users):
                    if not users and t not in outputs:
                        continue  # a dangling optional output computes nothing anyone sees
                    out.append(t)
        return out


@dataclass
class Atom:
    """How one name inside a layer name resolved."""

    text: str
    kind: str            # node | constant | internal | helper | myelin | unknown
    node: int | None = None
    approximate: bool = False
    helper_of: int | None = None


def resolve_atom(text: str, g: OnnxGraph) -> Atom:
    """Resolve one name from a layer name to an ONNX node (or say what else it is)."""
    t = text.strip()
    if t in g.index:
        return Atom(t, "node", g.index[t])
    if t.startswith("node_of_") and t[8:] in g.producer:
        return Atom(t, "node", g.producer[t[8:]])
    base = t[:-len("[Constant]")] if t.endswith("[Constant]") else t
    if base in g.initializers:
        return Atom(t, "constant")
    if _UNNAMED.search(t) or t.startswith("ONNXTRT_") or t.startswith("(Unnamed"):
        return Atom(t, "internal")
    m = _HELPER.match(t)
    if m:
        inner = resolve_atom(m.group(2), g)
        return Atom(t, "helper", helper_of=inner.node if inner.kind == "node" else None)
    if t.endswith("[Constant]"):
        return Atom(t, "constant")
    if t in g.producer:  # a layer named after its output tensor
        return Atom(t, "node", g.producer[t], approximate=True)
    if t.startswith("__myl_"):
        return Atom(t, "myelin")
    stripped = _MYELIN_SUFFIX.sub("", t)
    for cand in ([stripped] if stripped != t else []) + [t]:
        if cand in g.index:
            return Atom(t, "node", g.index[cand], approximate=True)
        hits = g.normalized.get(_norm(cand), [])
        if len(hits) == 1:
            return Atom(t, "node", hits[0], approximate=True)
    m2 = _UNIQUE_SUFFIX.match(t)
    if m2 and m2.group(1) in g.index:
        return Atom(t, "node", g.index[m2.group(1)], approximate=True)
    return Atom(t, "myelin" if stripped != t else "unknown")


def _range_index(text: str, g: OnnxGraph, end: bool) -> int | None:
    """Graph position of a ForeignNode range end: a node, or the node a tensor/weight touches."""
    a = resolve_atom(text, g)
    if a.kind == "node" and a.node is not None:
        return a.node
    base = text[:-len("[Constant]")] if text.endswith("[Constant]") else text
    users = g.consumers.get(base, [])
    if users:
        return max(users) if end else min(users)
    return None


# --------------------------------------------------------------------------- the mapping

@dataclass
class LayerMapping:
    """One engine layer and what it computes in ONNX terms."""

    layer: str
    layer_type: str | None
    kind: str                           # layer | reformat | copy | foreign | helper
    onnx_nodes: list[str]
    outputs: list[str]                  # engine tensor names (empty without layer information)
    output_onnx: list[str | None]       # per output: the ONNX tensor it equals, if known
    unmapped: list[str]
    internal: list[str]
    source: str                         # "metadata" | "name"
    approximate: bool = False
    order: int = 0

    @property
    def fused(self) -> bool:
        return len(self.onnx_nodes) > 1

    @property
    def onnx_tensors(self) -> list[str]:
        return [t for t in self.output_onnx if t]


@dataclass
class TrtOnnxMap:
    """Every engine layer mapped to ONNX, plus the names nothing resolved."""

    layers: list[LayerMapping]
    graph: OnnxGraph
    module_paths: dict[str, list[str]] = field(default_factory=dict)
    by_layer: dict[str, LayerMapping] = field(default_factory=dict)
    by_tensor: dict[str, tuple[LayerMapping, int]] = field(default_factory=dict)
    representative: dict[str, str] = field(default_factory=dict)   # onnx tensor -> engine tensor
    layer_representative: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def unmappable(self) -> list[tuple[str, str]]:
        """(layer, name) for every name inside a layer name that resolved to nothing."""
        return [(m.layer, u) for m in self.layers for u in m.unmapped]

    def covered_nodes(self) -> set[str]:
        return {n for m in self.layers for n in m.onnx_nodes}

    def uncovered_nodes(self) -> list[str]:
        """ONNX nodes no engine layer claims (constant-folded, eliminated, or unmapped)."""
        cov = self.covered_nodes()
        return [n for n in self.graph.nodes if n and n not in cov]

    def onnx_tensor_for(self, engine_tensor: str) -> str | None:
        hit = self.by_tensor.get(engine_tensor)
        return hit[0].output_onnx[hit[1]] if hit else None

    def lookup(self, record: Activation) -> tuple[LayerMapping, int] | None:
        tensor = record.meta.get("trt_tensor")
        if tensor and tensor in self.by_tensor:
            return self.by_tensor[tensor]
        layer = record.meta.get("trt_layer")
        if layer and layer in self.by_layer:
            return self.by_layer[layer], record.output_index
        if record.name in self.by_tensor:
            return self.by_tensor[record.name]
        if record.name in self.by_layer:
            return self.by_layer[record.name], record.output_index
        return None

    def annotate(self, record: Activation) -> Activation:
        """A copy of ``record`` whose meta says which ONNX nodes/tensor/module it corresponds to.

        Adds ``onnx_tensor`` (None when unknown), ``onnx_nodes`` and ``covers`` (same list),
        ``fused``, ``trt_layer``, ``trt_layer_type``, ``mapping`` (metadata|name|tensor-name|none),
        ``mapping_approximate``, ``onnx_tensor_exact`` (this engine tensor is the one that
        holds the ONNX tensor's values in its final layout; False for pre-reformat copies)
        and, for exact ones with export provenance, ``module_path`` / ``scopes``.
        """
        meta = dict(record.meta)
        hit = self.lookup(record)
        engine_t = record.meta.get("trt_tensor") or record.name
        if hit is None and engine_t in self.graph.producer:
            # not in the layer information (e.g. a tensor marked after fusion was decided), but the
            # ONNX parser names network tensors after ONNX tensors: this one is that tensor
            node = self.graph.nodes[self.graph.producer[engine_t]]
            meta.update({"onnx_tensor": engine_t, "onnx_nodes": [node], "covers": [node], "fused": False,
                         "mapping": "tensor-name", "mapping_approximate": False, "onnx_tensor_exact": True,
                         "onnx_node": node, "trt_tensor": engine_t})
            if engine_t in self.module_paths:
                meta["scopes"] = list(self.module_paths[engine_t])
                meta["module_path"] = meta["scopes"][0] if meta["scopes"] else None
            return dataclasses.replace(record, meta=meta)
        if hit is None:
            meta.update({"onnx_tensor": None, "onnx_nodes": [], "covers": [], "fused": False, "mapping": "none"})
            meta.setdefault("unmapped", [record.meta.get("trt_layer") or record.name])
            return dataclasses.replace(record, meta=meta)
        m, k = hit
        onnx_t = m.output_onnx[k] if 0 <= k < len(m.output_onnx) else None
        engine_t = m.outputs[k] if 0 <= k < len(m.outputs) else None
        exact = onnx_t is not None and (
            (engine_t is not None and self.representative.get(onnx_t) == engine_t)
            or (engine_t is None and self.layer_representative.get(onnx_t) == (m.layer, k)))
        meta.update({
            "onnx_tensor": onnx_t, "onnx_nodes": list(m.onnx_nodes), "covers": list(m.onnx_nodes),
            "fused": m.fused, "trt_layer": m.layer, "trt_layer_type": m.layer_type, "trt_layer_kind": m.kind,
            "mapping": m.source, "mapping_approximate": m.approximate, "onnx_tensor_exact": exact,
        })
        if engine_t is not None:
            meta.setdefault("trt_tensor", engine_t)
        if m.unmapped:
            meta["unmapped"] = list(m.unmapped)
        if m.onnx_nodes:
            meta.setdefault("onnx_node", m.onnx_nodes[-1])
        if exact and onnx_t in self.module_paths:
            paths = self.module_paths[onnx_t]
            meta["scopes"] = list(paths)
            meta["module_path"] = paths[0] if paths else None
        return dataclasses.replace(record, meta=meta)

    def report(self) -> dict[str, Any]:
        """Counts and names for a one-screen summary (and the JSON report)."""
        return {"layers": len(self.layers), "fused": sum(1 for m in self.layers if m.fused),
                "from_metadata": sum(1 for m in self.layers if m.source == "metadata"),
                "approximate": [m.layer for m in self.layers if m.approximate],
                "unmappable": [f"{lay}: {n}" for lay, n in self.unmappable],
                "uncovered_onnx_nodes": self.uncovered_nodes()}


def _resolve_names(parsed: ParsedName, g: OnnxGraph) -> tuple[list[int], list[str], list[str], bool, list[int]]:
    """Covered node indices, unmapped names, internal names, approximate?, helper targets."""
    covered: list[int] = []
    unmapped: list[str] = []
    internal: list[str] = []
    helpers: list[int] = []
    approx = False
    for text in parsed.atoms:
        a = resolve_atom(text, g)
        if a.kind == "node" and a.node is not None:
            covered.append(a.node)
            approx |= a.approximate
        elif a.kind == "helper":
            internal.append(text)
            if a.helper_of is not None:
                helpers.append(a.helper_of)
        elif a.kind in ("constant", "internal"):
            internal.append(text)
        else:
            unmapped.append(text)
    for start, end in parsed.ranges:
        i0 = _range_index(start, g, end=False)
        i1 = _range_index(end, g, end=True)
        if i0 is None:
            unmapped.append(start)
        if i1 is None:
            unmapped.append(end)
        if i0 is not None and i1 is not None and i0 <= i1:
            covered.extend(range(i0, i1 + 1))
        elif i0 is not None or i1 is not None:
            covered.extend(i for i in (i0, i1) if i is not None)
            approx = True
    return sorted(set(covered)), unmapped, internal, approx, helpers


def build_map(model: "onnx.ModelProto | OnnxGraph", engine: EngineInfo | Sequence[str | LayerInfo],
              module_paths: Mapping[str, list[str]] | None = None, *, provenance: bool = True,
              module_names: Iterable[str] | None = None) -> TrtOnnxMap:
    """Map every engine layer to the ONNX nodes it covers and the ONNX tensor its output equals.

    ``engine`` is the parsed layer information (:func:`.layer_info.read_layer_info`) or a
    list of layer names. ``module_paths`` is ``{onnx tensor: [module path, ...]}``; when
    None and ``provenance``, it is computed with
    ``parity.lib.onnx.provenance.module_outputs`` if that plugin is installed
    (``module_names``: the torch model's ``named_modules()`` names, which sharpen it).
    """
    g = model if isinstance(model, OnnxGraph) else OnnxGraph.from_model(model)
    if module_paths is None and provenance and not isinstance(model, OnnxGraph):
        module_paths = _module_outputs(model, module_names)
    infos = engine.layers if isinstance(engine, EngineInfo) else [
        x if isinstance(x, LayerInfo) else LayerInfo(str(x)) for x in engine]
    mappings: list[LayerMapping] = []
    covered_by: list[list[int]] = []          # node indices per layer, parallel to ``mappings``
    claims_exact: set[int] = set()
    helper_targets: dict[int, list[int]] = {}
    for order, info in enumerate(infos):
        parsed = parse_layer_name(info.name)
        md_nodes = info.onnx_nodes
        if info.name in g.index:  # an unfused layer keeps its node's name, whatever it contains
            parsed = ParsedName(info.name, "layer", atoms=[info.name])
        kind = parsed.kind
        if md_nodes:
            covered, unmapped, internal, approx = [], [], [], False
            for n in md_nodes:
                a = resolve_atom(n, g)
                if a.kind == "node" and a.node is not None:
                    covered.append(a.node)
                    approx |= a.approximate
                else:
                    unmapped.append(n)
            covered = sorted(set(covered))
            helpers: list[int] = []
            source = "metadata"
            claims_exact.update(covered)
        elif kind in ("reformat", "copy"):
            covered, unmapped, internal, approx, helpers = [], [], [], False, []
            source = "name"
        else:
            covered, unmapped, internal, approx, helpers = _resolve_names(parsed, g)
            source = "name"
            exact_nodes = {resolve_atom(a, g).node for a in parsed.atoms}
            claims_exact.update(i for i in covered if i in exact_nodes)
            if not covered and helpers and not unmapped:
                kind = "helper"
        if helpers:
            helper_targets[order] = helpers
        mappings.append(LayerMapping(
            layer=info.name, layer_type=info.layer_type, kind=kind, onnx_nodes=[], outputs=[t.name for t in info.outputs],
            output_onnx=[], unmapped=unmapped, internal=internal, source=source, approximate=approx, order=order))
        covered_by.append(covered)
    # a node named exactly by some layer belongs to it, not to a Myelin range that spans it
    for k, m in enumerate(mappings):
        if m.source == "name" and m.kind == "foreign":
            covered_by[k] = [i for i in covered_by[k] if i not in claims_exact]
        m.onnx_nodes = [g.nodes[i] for i in covered_by[k]]
    result = TrtOnnxMap(mappings, g, dict(module_paths or {}))
    _map_outputs(result, infos, covered_by, helper_targets)
    return result


def _map_outputs(result: TrtOnnxMap, infos: Sequence[LayerInfo], covered_by: list[list[int]],
                 helper_targets: dict[int, list[int]]) -> None:
    g = result.graph
    tensor_onnx: dict[str, str | None] = {}
    for t in g.graph_inputs:
        tensor_onnx[t] = t
    for m, info, cov in zip(result.layers, infos, covered_by):
        result.by_layer.setdefault(m.layer, m)
        sinks = g.sinks(cov) if cov else []
        if not sinks and m.order in helper_targets:
            sinks = [t for i in helper_targets[m.order] for t in g.node_outputs[i]][:1]
        parsed = parse_layer_name(m.layer)
        outs: list[str | None] = []
        n_out = len(info.outputs) if info.outputs else 1
        for k in range(n_out):
            t = info.outputs[k].name if info.outputs else None
            onnx_t: str | None = None
            if t is not None and g.is_tensor(t) and t not in g.initializers:
                onnx_t = t
            elif m.kind == "reformat" and parsed.io == "input":
                src = info.inputs[0].name if info.inputs else None
                onnx_t = tensor_onnx.get(src) if src else None
                if onnx_t is None and src and g.is_tensor(src):
                    onnx_t = src
            elif m.kind == "reformat":  # output reformat: same values as the layer it drains
                src = info.inputs[0].name if info.inputs else None
                onnx_t = tensor_onnx.get(src) if src else None
            elif m.kind == "copy":
                src = parsed.atoms[0]
                onnx_t = src if g.is_tensor(src) else tensor_onnx.get(src)
            elif len(sinks) == n_out:
                onnx_t = sinks[k]
            elif n_out == 1 and len(sinks) > 1 and cov and g.node_outputs[cov[-1]]:
                # a fused region with side outputs: the one output is the last node's
                last = g.node_outputs[cov[-1]][0]
                onnx_t = last if last in sinks else None
            outs.append(onnx_t)
            if t is not None:
                tensor_onnx[t] = onnx_t
                result.by_tensor.setdefault(t, (m, k))
        m.output_onnx = outs
    # which engine tensor holds each ONNX tensor's values as ONNX would: the one named like it,
    # else the last one computed (after reshapes and output reformats, not input-side copies)
    for m in result.layers:
        copy_only = m.kind == "copy" or (m.kind == "reformat" and parse_layer_name(m.layer).io == "input")
        for k, onnx_t in enumerate(m.output_onnx):
            if onnx_t is None:
                continue
            eng = m.outputs[k] if k < len(m.outputs) else None
            if eng is not None and result.representative.get(onnx_t) != onnx_t and (eng == onnx_t or not copy_only):
                result.representative[onnx_t] = eng
            if not copy_only:
                result.layer_representative[onnx_t] = (m.layer, k)


def _module_outputs(model: "onnx.ModelProto", module_names: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Torch module paths of ONNX tensors, from the ONNX Runtime plugin's provenance reader."""
    try:
        from parity.lib.onnx.provenance import module_outputs
    except ImportError:  # the ONNX Runtime plugin is optional; without it records carry no module path
        return {}
    try:
        return dict(module_outputs(model, module_names))
    except Exception:  # noqa: BLE001 - provenance is a bonus; a graph it cannot read still maps by name
        return {}


def onnx_named(records: Iterable[Activation], mapping: TrtOnnxMap) -> Iterator[Activation]:
    """Annotate engine-tensor records and name each after the ONNX tensor it holds, where exact.

    An engine tensor that holds an ONNX tensor's values in ONNX's layout (see
    :meth:`TrtOnnxMap.annotate`) is renamed to the ONNX tensor, so it pairs by name with an
    ONNX Runtime run or a torch run with provenance; every other record keeps its engine
    name (``meta["trt_tensor"]`` always has it). Names stay unique.
    """
    used: set[str] = set()
    for k, rec in enumerate(records):
        engine_t = rec.meta.get("trt_tensor") or rec.name
        rec = mapping.annotate(dataclasses.replace(rec, meta={**rec.meta, "trt_tensor": engine_t}))
        onnx_t = rec.meta.get("onnx_tensor")
        name = onnx_t if (onnx_t and rec.meta.get("onnx_tensor_exact") and onnx_t not in used) else engine_t
        if name in used:
            name = f"{engine_t}#{rec.order if rec.order is not None else k}"
        used.add(name)
        hit = mapping.by_tensor.get(engine_t)
        yield dataclasses.replace(rec, name=name, op_type=rec.op_type or (hit[0].layer_type if hit else None))


def annotate(record: Activation, mapping: TrtOnnxMap) -> Activation:
    """Module-level form of :meth:`TrtOnnxMap.annotate`."""
    return mapping.annotate(record)


__all__ = ["Atom", "LayerMapping", "OnnxGraph", "ParsedName", "TrtOnnxMap", "annotate",
           "build_map", "onnx_named", "parse_layer_name", "resolve_atom"]

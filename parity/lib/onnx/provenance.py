"""Which torch module produced which ONNX tensor, read from the graph alone.

Pairing a PyTorch run with an ONNX run needs to know that ONNX tensor ``relu_1`` is what
``layer1.0`` returned. Exporters leave that trail in two places, both handled here:

* the dynamo exporter (``torch.onnx.export(..., dynamo=True)``) writes node metadata
  ``namespace`` = ``": pkg.Root/layer1: Sequential/layer1.0: Block/.../relu_1: aten.relu.default"``:
  the root, then each enclosing module as ``dotted.path: Class``, then the FX node;
* the TorchScript exporter (``dynamo=False``) puts the scope in the node name:
  ``/layer1/layer1.0/conv1/Conv``; a second call of ``relu`` in the same parent shows up as
  ``relu_1``.

When a module runs several times, the dynamo ``namespace`` is identical for every call, so
the calls cannot be told apart from it (call index ``None``; back-to-back calls merge into
one scope). parity's own exporter (:mod:`.export`) adds the call from ``torch.export``'s
module stack as node metadata ``parity.module_calls`` (JSON ``[[path, call], ...]``), which
wins when present. TorchScript names mark a repeated call of a leaf with a ``_N`` suffix
(read as call N where the unsuffixed sibling exists, or where ``module_names`` says so),
but not a repeated call of a container.

A tensor is an *output* of module scope S when a node inside S produces it and at least one
consumer lies outside S (or it is a graph output). One tensor can leave several nested
scopes at once; those are listed innermost first. Only onnx is needed (no onnxruntime, no
torch), so the matcher and the TensorRT plugin can reuse this on any ONNX model.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import onnx

#: node metadata key written by :func:`parity.lib.onnx.export.export_onnx`
CALLS_KEY = "parity.module_calls"
NAMESPACE_KEY = "namespace"

#: (dotted module path, call index: 0 for the first call; ``None`` where the graph does not say)
Scope = tuple[str, "int | None"]

_CALL_SUFFIX = re.compile(r"^(.*)_(\d+)$")


def _metadata(node: "onnx.NodeProto") -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def parse_namespace(namespace: str) -> list[str]:
    """Module paths (outermost first, root left out) from a dynamo ``namespace`` string.

    Segments are ``name: qualified.Class`` joined by ``/``; the first is the root module
    (empty name) and the last is the FX node, so neither is a module path.
    """
    segs = namespace.split("/")
    paths: list[str] = []
    for seg in segs[1:-1]:
        name = seg.split(": ", 1)[0].strip()
        if name:
            paths.append(name)
    return paths


def parse_scope_name(node_name: str, module_names: set[str] | None = None) -> list[Scope] | None:
    """Scope chain from a TorchScript-exporter node name (``/layer1/layer1.0/conv1/Conv``).

    Returns ``None`` when the name carries no scope (it does not start with ``/``).
    Segments are attribute names, except that children of containers may already be
    qualified (``layer1.0`` under ``layer1``); a repeated call of a module in one parent
    shows as ``name_N``. ``module_names`` (torch ``named_modules()`` names), when known,
    resolve both ambiguities; without them ``name_N`` is read as call N of ``name`` only
    when a sibling scope ``name`` exists in the same graph (decided by the caller).
    """
    if not node_name.startswith("/"):
        return None
    segs = [s for s in node_name.split("/")[1:-1] if s]
    chain: list[Scope] = []
    cur = ""
    for seg in segs:
        if cur and seg.startswith(cur + "."):
            path = seg
        elif cur:
            path = f"{cur}.{seg}"
        else:
            path = seg
        call = 0
        if module_names is not None and path not in module_names:
            m = _CALL_SUFFIX.match(path)
            if m and m.group(1) in module_names:
                path, call = m.group(1), int(m.group(2))
            else:
                # ModuleDict / ModuleList entries lose their container's name in TorchScript
                # scopes (``enc.d.a`` shows as ``/enc/a``): find the unique module under cur.
                leaf = path.rsplit(".", 1)[-1]
                tries: list[Scope] = [(leaf, 0)]
                m2 = _CALL_SUFFIX.match(leaf)
                if m2:
                    tries.append((m2.group(1), int(m2.group(2))))
                prefix = f"{cur}." if cur else ""
                for lf, c in tries:
                    cands = [n for n in module_names
                             if n.startswith(prefix) and (n == prefix + lf or n.endswith("." + lf))]
                    if len(cands) == 1:
                        path, call = cands[0], c
                        break
        chain.append((path, call))
        cur = path
    return chain


def _calls_from_metadata(md: dict[str, str]) -> list[Scope] | None:
    raw = md.get(CALLS_KEY)
    if not raw:
        return None
    try:
        return [(str(p), int(c)) for p, c in json.loads(raw)]
    except (ValueError, TypeError):
        return None


def _load(model: "onnx.ModelProto | str | Path") -> "onnx.ModelProto":
    if isinstance(model, (str, Path)):
        import onnx

        return onnx.load(str(model), load_external_data=False)
    return model


def _subgraph_refs(node: "onnx.NodeProto") -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read: a superset of its implicit inputs."""
    import onnx

    refs: set[str] = set()
    for attr in node.attribute:
        graphs = []
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs = [attr.g]
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs = list(attr.graphs)
        for g in graphs:
            for n in g.node:
                refs.update(i for i in n.input if i)
                refs |= _subgraph_refs(n)
    return refs


def node_scopes(model: "onnx.ModelProto | str | Path", module_names: Iterable[str] | None = None
                ) -> list[list[Scope]]:
    """Per top-level node, its module scope chain (outermost first, root excluded).

    Nodes that carry no provenance (inserted by an optimizer or a converter) inherit the
    longest common scope of the nodes producing their inputs, so they neither create nor
    hide module boundaries.
    """
    m = _load(model)
    names = set(module_names) if module_names is not None else None
    nodes = list(m.graph.node)
    raw: list[list[Scope] | None] = []
    from_ns: list[bool] = []  # chain read from ``namespace``: paths right, call indices unknown
    ts_style = has_calls = False
    for n in nodes:
        md = _metadata(n)
        chain = _calls_from_metadata(md)
        has_calls = has_calls or chain is not None
        ns = chain is None and bool(md.get(NAMESPACE_KEY))
        if ns:
            chain = [(p, None) for p in parse_namespace(md[NAMESPACE_KEY])]
        if chain is None:
            chain = parse_scope_name(n.name, names)
            ts_style = ts_style or chain is not None
        raw.append(chain)
        from_ns.append(ns)
    if ts_style and names is None:
        raw = _resolve_repeated_calls(raw)
    producer: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                producer[o] = i
    out: list[list[Scope]] = []
    for i, n in enumerate(nodes):
        chain = raw[i]
        parents = [out[producer[x]] for x in n.input if x in producer and producer[x] < i]
        if chain is None:
            chain = _common_prefix(parents) if parents else []
        elif has_calls and from_ns[i]:
            # a node the call annotation missed: borrow call indices from a producer that
            # sits in the same module at the same depth
            fixed: list[Scope] = []
            for k, (p, c) in enumerate(chain):
                c = 0
                for par in parents:
                    if k < len(par) and par[k][0] == p and par[:k] == fixed[:k]:
                        c = par[k][1]
                        break
                fixed.append((p, c))
            chain = fixed
        out.append(list(chain))
    return out


def _resolve_repeated_calls(raw: list[list[Scope] | None]) -> list[list[Scope] | None]:
    """Read TorchScript ``name_N`` scopes as call N of ``name`` where a sibling ``name`` exists."""
    seen = {p for chain in raw if chain for p, _ in chain}
    fixed: list[list[Scope] | None] = []
    for chain in raw:
        if chain is None:
            fixed.append(None)
            continue
        new: list[Scope] = []
        for path, call in chain:
            m = _CALL_SUFFIX.match(path)
            if m and call == 0 and m.group(1) in seen:
                path, call = m.group(1), int(m.group(2))
            new.append((path, call))
        fixed.append(new)
    return fixed


def _common_prefix(chains: Sequence[Sequence[Scope]]) -> list[Scope]:
    first = list(chains[0])
    n = len(first)
    for c in chains[1:]:
        k = 0
        while k < min(n, len(c)) and first[k] == c[k]:
            k += 1
        n = k
    return first[:n]


def module_output_calls(model: "onnx.ModelProto | str | Path", module_names: Iterable[str] | None = None
                        ) -> dict[str, list[Scope]]:
    """For each tensor that is a module output: the ``(path, call)`` scopes it leaves, innermost first."""
    m = _load(model)
    return _output_calls(m, node_scopes(m, module_names))


def _output_calls(m: "onnx.ModelProto", scopes: list[list[Scope]]) -> dict[str, list[Scope]]:
    """:func:`module_output_calls` from already computed :func:`node_scopes`."""
    nodes = list(m.graph.node)
    graph_outputs = {o.name for o in m.graph.output}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for x in set(n.input) | _subgraph_refs(n):
            if x:
                consumers.setdefault(x, []).append(i)
    result: dict[str, list[Scope]] = {}
    for i, n in enumerate(nodes):
        chain = scopes[i]
        if not chain:
            continue
        for t in n.output:
            if not t:
                continue
            users = consumers.get(t, [])
            left: list[Scope] = []
            # walk outward: t leaves level j if some consumer's chain does not hold chain[j]
            for j in range(len(chain) - 1, -1, -1):
                prefix = chain[: j + 1]
                outside = t in graph_outputs or any(scopes[u][: j + 1] != prefix for u in users)
                if not outside:
                    break
                left.append(chain[j])
            if left:
                result[t] = left
    return result


def module_outputs(model: "onnx.ModelProto | str | Path", module_names: Iterable[str] | None = None
                   ) -> dict[str, list[str]]:
    """``{tensor name: [module path, ...]}``, innermost first, in torch ``named_modules()`` form.

    Repeated calls of one module map several tensors to the same path; use
    :func:`module_output_calls` to tell the calls apart where the exporter recorded them.
    """
    out: dict[str, list[str]] = {}
    for t, scopes in module_output_calls(model, module_names).items():
        paths: list[str] = []
        for p, _ in scopes:
            if p not in paths:
                paths.append(p)
        out[t] = paths
    return out


def scope_of_nodes(model: "onnx.ModelProto | str | Path", module_names: Iterable[str] | None = None
                   ) -> dict[str, str]:
    """Node name -> innermost enclosing module path (``""`` for the root): where an op lives."""
    m = _load(model)
    return dict(zip((n.name for n in m.graph.node), innermost_modules(node_scopes(m, module_names))))


def innermost_modules(scopes: list[list[Scope]]) -> list[str]:
    """Per node of :func:`node_scopes`, the innermost module path it sits in (``""`` for the root)."""
    return [chain[-1][0] if chain else "" for chain in scopes]


def module_provenance(model: "onnx.ModelProto | str | Path", module_names: Iterable[str] | None = None
                      ) -> tuple[dict[str, list[Scope]], list[list[Scope]]]:
    """``(module_output_calls, node_scopes)`` from one scope walk (the walk is the costly part)."""
    m = _load(model)
    scopes = node_scopes(m, module_names)
    return _output_calls(m, scopes), scopes


def layer_aliases(model: "onnx.ModelProto | str | Path", calls: dict[str, list[Scope]],
                  scopes: list[list[Scope]]) -> dict[str, tuple[str, ...]]:
    """Per tensor a node outputs, the other names ``--layers`` may select it by: its producing node,
    the module the node sits in and the modules whose output it is (``calls``, ``scopes``: from
    :func:`module_provenance`), so every source selects the same tensors for one ``--layers``."""
    m = _load(model)
    out: dict[str, tuple[str, ...]] = {}
    for node, within in zip(m.graph.node, innermost_modules(scopes)):
        for t in node.output:
            if t:
                out[t] = tuple(x for x in (node.name, within, *(p for p, _ in calls.get(t, []))) if x)
    return out

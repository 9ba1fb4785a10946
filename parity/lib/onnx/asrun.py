"""The graph ONNX Runtime really runs for a reduced-precision model, and a strict-storage variant.

Why: ONNX Runtime's CPU provider has no float16 kernel for many ops (MatMul, Gemm, Add ...). It
runs them in float32 behind ``Cast`` nodes it inserts at session start, and removes the casts
that would meet back to back (float32 -> float16 -> float32). A value past 65504 between two such
ops therefore never becomes inf in the deployed session. Marking that tensor as a graph output
(as a mark-all capture does) makes ONNX Runtime store a float16 copy for the output: the copy
holds inf, the computation does not, and the captured tensor is not what the deployed model
holds. Two graphs settle this:

* :func:`as_run_model` — the session's own graph, saved at graph-optimization level *disable*
  (``SessionOptions.optimized_model_filepath``): the inserted casts are in it, fusions are not, so
  every tensor of the original graph is still there. Each tensor the session holds in float32
  only (``InsertedPrecisionFreeCast_<name>``) is renamed back to ``<name>``, so captures, local
  runs and fetch maps keep the original tensor names, and capturing it adds no rounding: its
  graph type is already what the session holds. Where the session keeps both a float32 value and
  a float16 copy (a float32 op feeding a float16 op), the float32 value takes the name and the
  copy is renamed ``<name>::fp16`` (its consumers read the rounded copy, as deployed).
* :func:`strict_storage_model` — every float16 node output rounded to float16 before anything
  reads it, as GPU kernels and TensorRT store fp16 tensors: the as-run graph with an explicit
  ``Cast(float16) -> Cast(float32)`` after each tensor the session would hold in float32 only.
  (An ``Identity`` in float16 would not do: ONNX Runtime moves an fp16 node isolated between
  float32 ops into float32 too, and removes the casts around it.)

Both are cached beside the converted model they come from (whose file name already carries its
content digest) and are written atomically.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from parity.contract.errors import ParityError, first_line

#: the prefix ONNX Runtime gives the float32 tensors its cast insertion creates
INSERTED_CAST = "InsertedPrecisionFreeCast_"
#: suffix of the float16 copy of a tensor the session also holds in float32
FP16_COPY = "::fp16"
#: suffix of the stored (rounded) value a strict-storage model hands to consumers
STORED = "::stored"
#: bumped when the derived graphs change, so stale cache files are not reused
_VERSION = "4"

__all__ = ["FP16_COPY", "INSERTED_CAST", "STORED", "as_run_model", "fallback_summary", "strict_storage_model",
           "cpu_fp32_only_ops"]


def _derived(src: Path, kind: str) -> Path:
    import onnxruntime as ort

    return src.with_name(f"{src.stem}.{kind}-ort{ort.__version__}-v{_VERSION}.onnx")


def _save_atomic(model: Any, path: Path) -> None:
    import onnx

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def as_run_model(src: Path, providers: list[str] | None = None) -> Path:
    """The graph ONNX Runtime runs for ``src`` (see the module docstring), cached beside ``src``.

    A JSON file beside it (:func:`fallback_summary`) lists the nodes that run in float32 behind
    inserted casts.
    """
    import onnx
    import onnxruntime as ort

    out = _derived(src, "asrun")
    side = out.with_suffix(".json")
    if out.is_file() and side.is_file():
        return out
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory(dir=src.parent) as d:
        raw = Path(d) / "optimized.onnx"
        so.optimized_model_filepath = str(raw)
        try:
            ort.InferenceSession(str(src), so, providers=providers or ["CPUExecutionProvider"])
            model = onnx.load(str(raw))
        except Exception as e:
            raise ParityError(f"onnxruntime cannot load {src.name} to learn the graph it runs. "
                              f"Note: {first_line(e, 300)}") from e
    g = model.graph
    produced = {o for n in g.node for o in n.output if o}
    outputs = {o.name for o in g.output}
    sources = {t.name for t in g.initializer} | {i.name for i in g.input}
    inits = {t.name for t in g.initializer}
    back: dict[str, str] = {}  # ONNX Runtime's float32 tensor -> the original name it takes back
    renamed: set[str] = set()
    for n in g.node:
        if n.op_type == "Cast" and n.input and n.input[0] in inits:
            continue  # a weight's cast: the weight keeps its own name
        for o in n.output:
            name = o[len(INSERTED_CAST):] if o.startswith(INSERTED_CAST) else ""
            if name and name not in sources and name not in renamed and not (name in produced and name in outputs):
                back[o] = name  # (a graph output keeps its name; its float32 value stays as named)
                renamed.add(name)
    # one pass over the graph: the float16 copy of a renamed tensor becomes <name>::fp16 in the same pass
    mapping = {**{t: t + FP16_COPY for t in renamed if t in produced}, **back}
    for n in g.node:
        for i, t in enumerate(n.input):
            if t in mapping:
                n.input[i] = mapping[t]
        for i, t in enumerate(n.output):
            if t in mapping:
                n.output[i] = mapping[t]
    for vi in list(g.value_info) + list(g.output):
        if vi.name in mapping:
            vi.name = mapping[vi.name]
    fp32_nodes = [{"node": n.name, "op_type": n.op_type} for n in g.node
                  if n.op_type != "Cast" and any(o in renamed for o in n.output)]
    restored = _restore_removed_casts(onnx.load(str(src), load_external_data=False), g)
    stale = renamed | {t + FP16_COPY for t in renamed} | restored
    kept = [vi for vi in g.value_info if vi.name not in stale]  # the renamed tensors' types changed
    del g.value_info[:]
    g.value_info.extend(kept)
    # the side file first, both atomically: a worker that sees the model also finds a whole side file
    fd, tmp = tempfile.mkstemp(dir=side.parent, prefix=side.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"fp32_nodes": fp32_nodes, "fp32_held": sorted(renamed | restored)}, f)
    os.replace(tmp, side)
    _save_atomic(model, out)
    return out


def _restore_removed_casts(converted: Any, g: Any) -> set[str]:
    """Tensors of the converted model that the session's cast removal took away, named again.

    The converter rounds a node kept in float32 back to float16 (``T = Cast(U, to=float16)``); when
    every reader of ``T`` runs in float32 too, ONNX Runtime drops that cast and the one it inserted
    after it, and the readers read ``U``: ``T`` is gone, and its deployed value is ``U``, unrounded.
    ``T = Identity(U)`` names it again and the readers read ``T``, as in the original graph, so it is
    captured (as held: float32) and a local run traces through it.
    """
    from onnx import TensorProto, helper

    produced = {o for n in g.node for o in n.output if o} | {i.name for i in g.input}
    outputs = {o.name for o in g.output}
    back: dict[str, str] = {}
    for n in converted.graph.node:
        if n.op_type != "Cast" or not n.input or not n.output or n.output[0] in produced:
            continue
        to = next((a.i for a in n.attribute if a.name == "to"), None)
        if to == TensorProto.FLOAT16 and n.input[0] in produced and n.input[0] not in outputs:
            back[n.input[0]] = n.output[0]
    if not back:
        return set()
    for n in g.node:
        for i, t in enumerate(n.input):
            if t in back:
                n.input[i] = back[t]
    nodes = []
    for u in (i.name for i in g.input):  # a graph input read through a removed cast
        if u in back:
            nodes.append(helper.make_node("Identity", [u], [back[u]], name=f"{back[u]}::as_held"))
    for n in g.node:
        nodes.append(n)
        for u in n.output:  # right after its producer: the node list stays in topological order
            if u in back:
                nodes.append(helper.make_node("Identity", [u], [back[u]], name=f"{back[u]}::as_held"))
    del g.node[:]
    g.node.extend(nodes)
    return set(back.values())


def fallback_summary(as_run: Path) -> dict[str, int]:
    """Op type -> how many nodes of the model ONNX Runtime runs in float32 behind inserted casts."""
    side = Path(as_run).with_suffix(".json")
    try:
        nodes = json.loads(side.read_text(encoding="utf-8"))["fp32_nodes"]
    except (OSError, ValueError, KeyError):
        return {}
    out: dict[str, int] = {}
    for n in nodes:
        out[n["op_type"]] = out.get(n["op_type"], 0) + 1
    return out


def strict_storage_model(as_run: Path) -> Path:
    """The as-run graph (:func:`as_run_model`) with every tensor it holds in float32 only rounded to
    float16 before anything reads it (cached beside it).

    Each such tensor ``T`` is renamed ``T::fp32`` at its producer; an explicit ``Cast(float16)``
    makes ``T`` again, now the float16 value a capture reads, and a ``Cast(float32)`` of it,
    ``T::stored``, is what every consumer reads. ONNX Runtime removes only cast pairs it inserted
    itself; a pair in the model runs (checked at every optimization level). Tensors the as-run
    graph holds in float16 already are stored so; graph outputs stay as they are.
    """
    import onnx
    from onnx import TensorProto, helper

    out = _derived(Path(as_run), "strict")
    if out.is_file():
        return out
    model = onnx.load(str(as_run))
    held = json.loads(Path(as_run).with_suffix(".json").read_text(encoding="utf-8")).get("fp32_held", [])
    g = model.graph
    outputs = {o.name for o in g.output}
    producer = {o: n for n in g.node for o in n.output if o}
    rounded = {t for t in held if t in producer and t not in outputs}
    for n in g.node:  # consumers read the stored (rounded) value
        for i, t in enumerate(n.input):
            if t in rounded:
                n.input[i] = t + STORED
    new_nodes = []
    for n in g.node:
        new_nodes.append(n)
        for i, o in enumerate(n.output):
            if o not in rounded:
                continue
            raw = o + "::fp32"
            n.output[i] = raw
            new_nodes.append(helper.make_node("Cast", [raw], [o], name=f"{o}::round_fp16", to=TensorProto.FLOAT16))
            new_nodes.append(helper.make_node("Cast", [o], [o + STORED], name=f"{o}{STORED}", to=TensorProto.FLOAT))
    del g.node[:]
    g.node.extend(new_nodes)
    stale = [vi for vi in g.value_info if vi.name in rounded]
    for vi in stale:
        g.value_info.remove(vi)
    _save_atomic(model, out)
    return out


#: ops common in exported models, checked by :func:`cpu_fp32_only_ops`
COMMON_OPS = ("Add", "Sub", "Mul", "Div", "MatMul", "Gemm", "Conv", "ConvTranspose", "Relu", "Sigmoid", "Tanh",
              "Erf", "Gelu", "Softmax", "LayerNormalization", "BatchNormalization", "ReduceMean", "Pow", "Sqrt",
              "Exp", "Log", "MaxPool", "AveragePool", "GlobalAveragePool", "Transpose", "Reshape", "Concat",
              "Slice", "Gather", "Where", "Expand", "Split", "Clip", "LeakyRelu", "Resize", "Einsum")


def cpu_fp32_only_ops(ops: tuple[str, ...] = COMMON_OPS) -> list[str]:
    """Ops of ``ops`` whose CPU kernels take float32 but not float16 (run in float32 under an fp16 model).

    Read from onnxruntime's kernel registry, so it is true of the installed build.
    """
    try:
        from onnxruntime.capi import _pybind_state as C

        defs = C.get_all_opkernel_def()
    except Exception:  # noqa: BLE001 - a build without the registry: nothing to say
        return []
    fp16: set[str] = set()
    fp32: set[str] = set()
    for k in defs:
        if k.provider != "CPUExecutionProvider" or k.domain not in ("", "ai.onnx"):
            continue
        types = {t for v in k.type_constraints.values() for t in v}
        if "tensor(float16)" in types:
            fp16.add(k.op_name)
        if "tensor(float)" in types:
            fp32.add(k.op_name)
    return [op for op in ops if op in fp32 and op not in fp16]

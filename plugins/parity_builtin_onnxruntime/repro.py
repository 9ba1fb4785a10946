"""``parity repro`` for ONNX models: the layer cut out of the fp32 ONNX model, with its fp32 inputs and outputs.

Why here: cutting a layer is graph surgery on the ONNX model and its reference values come from an
ONNX Runtime run, so the ONNX Runtime source offers it (``Capability.WRITE_REPRO``) and the core
only dispatches (``parity.core.repro``). The folder is one a runtime's maintainers can run as it is:
the layer's nodes with their weights, the values that reach it in the fp32 reference (ONNX Runtime on
the CPU) as Polygraphy ``--load-inputs`` JSON and ``.npz``, and the outputs the fp32 reference
computes from them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from parity.contract.capability import ReproResult
from parity.contract.errors import ParityError
from parity.contract.source import RunConfig

README = """parity repro: layer {layer!r} of {model}, cut out of its fp32 ONNX model.

model.onnx                {nodes} node(s): {ops}
inputs.json / inputs.npz  the values that reach it in the fp32 reference: {inputs}
reference_outputs.npz     what the fp32 reference (ONNX Runtime, CPU) computes from them: {outputs}

Reproduce (Polygraphy):
  polygraphy run model.onnx --onnxrt --load-inputs inputs.json
  polygraphy run model.onnx --trt --fp16 --onnxrt --load-inputs inputs.json --atol 1e-3 --rtol 1e-3
Reproduce (Python):
  import numpy as np, onnxruntime as ort
  s = ort.InferenceSession("model.onnx"); x = dict(np.load("inputs.npz"))
  ref = np.load("reference_outputs.npz"); out = s.run(list(ref.keys()), x)
"""


def _layer_outputs(model: Any, layer: str, module_names: list[str] | None) -> tuple[list[str], str | None]:
    """The tensors LAYER names: a node's outputs, a tensor, or a torch module's outputs (and that module)."""
    from parity.lib.onnx.provenance import module_outputs

    g = model.graph
    for n in g.node:
        if n.name and n.name == layer:
            return [o for o in n.output if o], None
    if any(layer in n.output for n in g.node):
        return [layer], None
    outs = [t for t, paths in module_outputs(model, module_names).items() if paths and paths[0] == layer]
    outs = outs or [t for t, paths in module_outputs(model, module_names).items() if layer in paths]
    if outs:
        return outs, layer
    sample = ", ".join([n.name for n in g.node if n.name][:4] + list(module_names or [])[1:3])
    raise ParityError(f"layer {layer!r} is not an ONNX node, tensor or torch module of the model. "
                      f"Note: give a node name, tensor name or module path, e.g. {sample}")


def _cut(model: Any, outputs: list[str], module: str | None, module_names: list[str] | None) -> list[int]:
    """Node indices of the cut: the producers of ``outputs``, widened to the module's own nodes when
    LAYER is a module, and the Constant nodes they read (a value fixed at export, not an input)."""
    from parity.lib.onnx.graph import CONSTANT_OPS
    from parity.lib.onnx.provenance import scope_of_nodes

    g = model.graph
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    scope = scope_of_nodes(model, module_names) if module is not None else {}

    def inside(i: int) -> bool:
        n = g.node[i]
        if n.op_type in CONSTANT_OPS and not n.input:
            return True
        s = scope.get(n.name, "")
        return module is not None and (s == module or s.startswith(module + "."))

    need: set[int] = set()
    stack = [producer[t] for t in outputs]
    first = set(stack)
    while stack:
        i = stack.pop()
        if i in need:
            continue
        need.add(i)
        stack += [producer[x] for x in g.node[i].input if x in producer and producer[x] not in need
                  and (inside(producer[x]) or i in first and g.node[producer[x]].op_type in CONSTANT_OPS
                       and not g.node[producer[x]].input)]
    return sorted(need)


def write_repro(cfg: RunConfig, feed: dict[str, np.ndarray], layer: str, folder: Path,
                model_label: str) -> ReproResult:
    """Write LAYER's repro (model.onnx, inputs.json/.npz, reference_outputs.npz, README.txt, repro.json)
    into the existing empty ``folder``; the caller renames it into place."""
    import onnx
    from onnx import helper

    from parity.lib.onnx.convert import clamp_ir_version
    from parity.lib.onnx.graph import CaptureStep, load_model, model_inputs, step_model
    from parity.lib.onnx.models import onnx_model_for
    from parity.lib.onnx.reference import reference_values
    from parity.lib.polygraphy_json import save_polygraphy_inputs

    src, module_names = onnx_model_for(cfg, feed)
    model = load_model(src, what="model")
    outputs, module = _layer_outputs(model, layer, module_names)
    nodes = _cut(model, outputs, module, module_names)
    g = model.graph
    made = {o for i in nodes for o in g.node[i].output if o}
    inits = {t.name for t in g.initializer}
    reads = list(dict.fromkeys(x for i in nodes for x in g.node[i].input if x and x not in made))
    inputs = [x for x in reads if x not in inits]
    graph_inputs = {vi.name for vi in model_inputs(model)}
    fetched = [x for x in inputs if x not in graph_inputs] + outputs
    vals = reference_values(model, fetched, feed, cfg.options, cfg.workdir, src.name)
    vals.update({x: feed[x] for x in inputs if x in graph_inputs})
    missing = [x for x in inputs + outputs if x not in vals]
    if missing:
        raise ParityError(f"layer {layer!r}: the fp32 reference gives no array for {missing} (not tensors). "
                          f"Note: pick a layer whose inputs and outputs are tensors")
    step = CaptureStep(outputs, nodes, inputs, [x for x in reads if x in inits], outputs, [], [])
    sub = step_model(model, step, vals)
    del sub.graph.output[:]
    for o in outputs:  # typed outputs: a TensorRT parser wants them
        a = vals[o]
        sub.graph.output.append(helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)))
    sub.graph.name = f"parity_repro_{layer}"[:120]
    clamp_ir_version(sub)
    ops = ", ".join(sorted({g.node[i].op_type for i in nodes}))
    text = README.format(layer=layer, model=model_label, nodes=len(nodes), ops=ops,
                         inputs=", ".join(f"{x} {list(vals[x].shape)} {vals[x].dtype}" for x in inputs),
                         outputs=", ".join(f"{o} {list(vals[o].shape)}" for o in outputs))
    node_names = [g.node[i].name for i in nodes]
    onnx.save(sub, str(folder / "model.onnx"))
    save_polygraphy_inputs([{x: vals[x] for x in inputs}], folder / "inputs.json")
    np.savez(folder / "inputs.npz", **{x: vals[x] for x in inputs})
    np.savez(folder / "reference_outputs.npz", **{o: vals[o] for o in outputs})
    (folder / "README.txt").write_text(text, encoding="utf-8")
    (folder / "repro.json").write_text(json.dumps({"layer": layer, "model": model_label, "inputs": inputs,
                                                   "outputs": outputs, "nodes": node_names}, indent=2))
    return ReproResult(folder, layer, outputs, inputs, node_names)

"""The ``onnx`` dump annotator: ONNX graph facts for records of a dump made elsewhere.

A dump from another machine (Polygraphy, trtexec) names tensors after the ONNX graph; given that
graph (``--target-onnx``), each record gets the torch module that produced it (export
provenance), its node, op type, execution order and output position, as the live ONNX Runtime
source attaches them, so the matcher lines it up with a torch reference by provenance.
"""
from __future__ import annotations

from typing import Callable

from parity.contract.dumpformat import AnnotationContext, DumpAnnotator
from parity.contract.errors import ParityError
from parity.contract.records import Activation


class OnnxGraphAnnotator(DumpAnnotator):
    name = "onnx"
    description = "ONNX provenance, node, order and output position of dump records (--target-onnx)"
    order = 200  # after a name mapping such as TensorRT layer info

    def wants(self, ctx: AnnotationContext) -> bool:
        return bool(ctx.onnx_path)

    def prepare(self, ctx: AnnotationContext) -> Callable[[Activation], Activation]:
        assert ctx.onnx_path is not None
        try:
            import onnx
        except ImportError as e:
            raise ParityError(f"--target-onnx needs the onnx package. Note: {e}") from None
        from parity.lib.onnx.provenance import module_outputs

        path = ctx.onnx_path
        try:
            model = onnx.load(path, load_external_data=False)
        except FileNotFoundError:
            raise ParityError(f"{path}: ONNX model not found.") from None
        except Exception as e:  # noqa: BLE001 - protobuf raises several types for a bad file
            raise ParityError(f"{path}: not an ONNX model ({type(e).__name__}).") from None
        scopes = module_outputs(model)
        producer = {o: (i, n) for i, n in enumerate(model.graph.node) for o in n.output}
        outputs = {o.name: k for k, o in enumerate(model.graph.output)}

        def annotate(a: Activation) -> Activation:
            name = a.meta.get("onnx_tensor") or a.name
            if name in scopes:
                a.meta.setdefault("scopes", scopes[name])
                a.meta.setdefault("module_path", scopes[name][0] if scopes[name] else None)
            elif "trt_layer" not in a.meta:  # a mapped engine record keeps what the mapping decided
                a.meta.setdefault("scopes", [])
            if name in producer:
                i, node = producer[name]
                a.order = i if a.order is None else a.order
                a.op_type = a.op_type or node.op_type
                a.meta.setdefault("onnx_node", node.name)
            if name in outputs:
                a.meta["is_output"] = True
                a.meta["output_position"] = outputs[name]
            return a

        return annotate

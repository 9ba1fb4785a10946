"""A transformers causal LM exported as an ONNX decoder with past key/values, the form Optimum writes.

Why this form: it is what ONNX Runtime (GenAI) deployments run, one graph serving both the prompt
(empty past) and every later step (one token, the past grown by one), so ``parity generate``
compares the graph users deploy, cache included. Names follow Optimum: inputs ``input_ids``,
``attention_mask``, ``position_ids``, ``past_key_values.{i}.key|value``; outputs ``logits``,
``present.{i}.key|value``, caches ``[batch, kv_heads, positions, head_dim]``.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from parity.contract.atomic import atomic_path
from parity.contract.errors import ParityError, first_line

__all__ = ["cache_shape", "decoder_to_fp16", "export_decoder", "past_names"]


def past_names(n_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]


def cache_shape(config: Any) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)`` of a transformers config."""
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    hd = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return layers, kv, hd


def decoder_to_fp16(src: Path) -> Path:
    """``src`` converted to float16 with fp32 inputs and outputs (cache included), beside it and cached.

    Why not :func:`parity.lib.onnx.convert.to_fp16`: onnxconverter-common's pass keeps each
    ``Cast(to=float)`` (rotary positions cast from int64, a norm's upcast) producing fp32 while the
    ops after it become fp16, a graph ONNX Runtime refuses to load. Those casts are made to cast
    to float16 first, so the graph is fp16 throughout, as a deployed fp16 decoder is.
    """
    import onnx
    from onnxconverter_common import float16

    from parity.lib.onnx.convert import clamp_ir_version

    out = src.with_name(src.stem + "-fp16.onnx")
    if out.is_file():
        return out
    m = onnx.load(str(src))
    for node in m.graph.node:
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i == onnx.TensorProto.FLOAT:
                    a.i = onnx.TensorProto.FLOAT16
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m16 = float16.convert_float_to_float16(m, keep_io_types=True, check_fp16_ready=False)
    except Exception as e:
        raise ParityError(f"fp16 conversion of the decoder {src.name} failed: {first_line(e, typed=True)}") from None
    clamp_ir_version(m16)
    with atomic_path(out) as tmp:
        onnx.save(m16, str(tmp))
    return out


def _identity_casts(m: Any) -> None:
    """Turn each ``Cast(to=float)`` of a tensor that already is float into ``Identity``.

    Why: transformers' norms cast to fp32 explicitly (``x.to(torch.float32)``); in the fp32 export
    these casts do nothing, and onnxconverter-common's fp16 pass leaves them casting to fp32 while
    declaring their outputs fp16, a graph ONNX Runtime refuses. As Identity they follow the pass.
    """
    import onnx

    FLOAT = onnx.TensorProto.FLOAT
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)}
    types.update({t.name: t.data_type for t in m.graph.initializer})
    for node in m.graph.node:
        if node.op_type == "Cast" and types.get(node.input[0]) == FLOAT and \
                any(a.name == "to" and a.i == FLOAT for a in node.attribute):
            node.op_type = "Identity"
            del node.attribute[:]


def _outputs_not_read(m: Any) -> None:
    """Give each graph output that other nodes also read (the present key/values, read again by the
    attention) an ``Identity`` of its own, so that an fp16 pass that casts outputs back to fp32 leaves
    those readers on the fp16 tensor (onnxconverter-common rewires them to the fp32 cast otherwise)."""
    import onnx

    outs = {o.name for o in m.graph.output}
    read = {i for n in m.graph.node for i in n.input} & outs
    for name in sorted(read):
        inner = name + "_inner"
        for n in m.graph.node:
            for j, o in enumerate(n.output):
                if o == name:
                    n.output[j] = inner
            for j, i in enumerate(n.input):
                if i == name:
                    n.input[j] = inner
        m.graph.node.append(onnx.helper.make_node("Identity", [inner], [name], name=f"{name}_output"))


def export_decoder(model: Any, out: Path) -> Path:
    """Export ``model`` (fp32, CPU) to ``out`` with past key/values; returns ``out``.

    Uses the TorchScript exporter: it traces the transformers cache as plain tensors, with dynamic
    sequence and past lengths, in seconds for small models.
    """
    import torch
    from transformers import DynamicCache

    from parity.lib.causal_lm import cache_keyword, cache_of

    kw = cache_keyword(model)
    n, kvh, hd = cache_shape(model.config)

    class _WithPast(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *past: Any) -> tuple:
            cache = DynamicCache(config=self.m.config)
            for i in range(n):
                cache.update(past[2 * i], past[2 * i + 1], i)
            o = self.m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=True, **{kw: cache})
            res = [o.logits]
            for layer in cache_of(o).layers:
                res += [layer.keys, layer.values]
            return tuple(res)

    t, p = 3, 2
    ids = torch.zeros(1, t, dtype=torch.int64)
    past = [torch.zeros(1, kvh, p, hd) for _ in range(2 * n)]
    mask = torch.ones(1, p + t, dtype=torch.int64)
    pos = torch.arange(p, p + t)[None]
    ins = ["input_ids", "attention_mask", "position_ids"] + past_names(n)
    outs = ["logits"] + [f"present.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
    dyn: dict[str, dict[int, str]] = {"input_ids": {1: "sequence"}, "attention_mask": {1: "total"},
                                      "position_ids": {1: "sequence"}, "logits": {1: "sequence"}}
    dyn.update({k: {2: "past"} for k in ins[3:]})
    dyn.update({k: {2: "total"} for k in outs[1:]})
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_WithPast(model), (ids, mask, pos, *past), str(tmp), input_names=ins,
                              output_names=outs, dynamic_axes=dyn, dynamo=False, opset_version=17)
        import onnx

        m = onnx.load(str(out))
        _identity_casts(m)
        _outputs_not_read(m)
        with atomic_path(out) as tmp:
            onnx.save(m, str(tmp))
    except Exception as e:
        raise ParityError(f"exporting the decoder to ONNX with past key/values failed: "
                          f"{first_line(e, typed=True)}. Note: export it yourself (optimum-cli export onnx "
                          f"--task text-generation-with-past) and pass the .onnx file") from None
    return out

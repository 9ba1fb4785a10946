"""fp16/bf16 casts and int8 (QDQ) quantization of an fp32 ONNX model, cached on disk.

All keep the original tensor names wherever the tool keeps them, which is what lets an
fp16 or int8 record carry the same name as its fp32 counterpart (see :func:`int8_fetch_map`
for how QDQ tensors are read back). Every model written here is saved at an IR version the
installed ONNX Runtime accepts (:func:`clamp_ir_version`).
"""
from __future__ import annotations

import contextlib
import logging
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from parity.contract.atomic import atomic_path
from parity.contract.errors import ParityError, first_line

from parity.contract.options import option_list, read_options
from parity.lib.options import INT8
from parity.lib.onnx.util import feeds_digest, key_of, model_digest


_LARGE = 1_800_000_000  # protobuf's 2 GB limit, with margin


def _model_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in [path, *path.parent.glob(path.name + "*.data")] if f.is_file())


def _stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem)[:60]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the converters' chatter (root-logger warnings, truncation warnings) for a call."""
    prev = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(prev)


#: activations the int8 quantizer folds into the Conv/Gemm/MatMul before them
_FUSED_ACTIVATIONS = {"Relu", "Clip"}
_FUSING_OPS = {"Conv", "Gemm", "MatMul", "ConvTranspose"}


def keep_producers(model: Any, keys: Sequence[str], label: str, *, name_unnamed: bool = False,
                   with_fused: bool = False) -> list[str]:
    """Names of the nodes producing the tensors ``keys`` (the ``keep_high_precision`` option).

    ``keys`` are target record keys, i.e. tensor names of the fp32 graph. A name that no node
    produces is a ``ParityError`` naming it. A producer without a name cannot be put on a
    converter's list; with ``name_unnamed`` it is given one in ``model`` (in place).
    """
    producer = {o: n for n in model.graph.node for o in n.output if o}
    inputs = {i.name for i in model.graph.input}
    unknown = [k for k in keys if k not in producer]
    if unknown:
        why = ("model inputs, which no node produces" if all(k in inputs for k in unknown)
               else "not tensors of the fp32 graph")
        sample = ", ".join(list(producer)[:4])
        raise ParityError(f"keep_high_precision names {unknown}, {why} in {label}. Note: give tensor names "
                          f"of the fp32 graph as records show them (target_name), e.g. {sample}")
    wanted = set(keys)
    if with_fused:
        # keeping a Relu/Clip the quantizer folded into its Conv/Gemm means keeping that producer too,
        # or the quantized computation stays exactly as it was
        for k in list(wanted):
            n = producer[k]
            if n.op_type in _FUSED_ACTIVATIONS and n.input and n.input[0] in producer \
                    and producer[n.input[0]].op_type in _FUSING_OPS:
                wanted.add(n.input[0])
    out: list[str] = []
    for i, n in enumerate(model.graph.node):
        if not any(o in wanted for o in n.output if o):
            continue
        if not n.name:
            if not name_unnamed:
                raise ParityError(f"keep_high_precision: the node producing {[o for o in n.output if o in wanted]} "
                                  f"in {label} has no name, so it cannot be excluded from quantization. "
                                  f"Note: give the model's nodes names (re-export it through parity)")
            n.name = f"parity_keep_{i}"
        if n.name not in out:
            out.append(n.name)
    return out


#: The converter clamps constants to these; its defaults (1e4, 1e-7) would change weights that fp16
#: represents exactly, so parity clamps only at fp16's own limits (largest finite, smallest subnormal).
FP16_MAX = 65504.0
FP16_MIN_POSITIVE = 5.960464477539063e-08


# --------------------------------------------------------------------------- IR version

_MAX_IR: list[int] = []


def max_ir_version() -> int:
    """The highest ONNX IR version the installed onnxruntime loads (``onnx.IR_VERSION`` without it).

    Asked of onnxruntime itself: a one-node model at an absurd IR version is refused with
    "max supported IR version: N". onnx's own default can be newer than what onnxruntime
    reads (onnx 1.23 writes IR 14; onnxruntime 1.30 reads up to 13). Probed once per process.
    """
    if _MAX_IR:
        return _MAX_IR[0]
    import onnx
    from onnx import TensorProto, helper

    found = int(onnx.IR_VERSION)
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
        probe = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                                                    [vi[0]], [vi[1]]),
                                  opset_imports=[helper.make_opsetid("", 13)])
        probe.ir_version = 10_000
        try:
            ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - the refusal carries the number
            m = re.search(r"max supported IR version:\s*(\d+)", str(e))
            if m:
                found = int(m.group(1))
    _MAX_IR.append(found)
    return found


def clamp_ir_version(model: Any) -> Any:
    """``model`` (an ``onnx.ModelProto`` or ``onnx_ir.Model``) with its IR version lowered, in place, to
    :func:`max_ir_version` when it is above it; returned for chaining.

    Lowering the number changes no node: the opsets a model imports are what its operators mean,
    and onnxruntime accepts every opset it implements at the IR versions it reads.
    """
    top = max_ir_version()
    if int(model.ir_version) > top:
        model.ir_version = top
    return model


# --------------------------------------------------------------------------- fp16 / bf16


def to_fp16(src: Path, workdir: Path, keep_ops: Sequence[str] = (), keep_nodes: Sequence[str] = (),
            keep_tensors: Sequence[str] = ()) -> Path:
    """``src`` converted to float16 with fp32 inputs/outputs, cached under ``workdir/ort``.

    ``keep_ops`` (op types) and ``keep_nodes`` (node names) stay in fp32, on top of the
    converter's own default block list (ops without fp16 kernels); so do the nodes producing
    ``keep_tensors`` (fp32 tensor names, the ``keep_high_precision`` option of ``parity fix``).
    """
    return _to_half(src, workdir, "fp16", keep_ops, keep_nodes, keep_tensors)


def to_bf16(src: Path, workdir: Path, keep_ops: Sequence[str] = (), keep_nodes: Sequence[str] = (),
            keep_tensors: Sequence[str] = ()) -> Path:
    """``src`` cast to bfloat16 with fp32 inputs/outputs, cached under ``workdir/ort``: as :func:`to_fp16`.

    onnxconverter-common has no bf16 pass, so the fp16 pass decides what is cast and where the
    Cast nodes go, and :func:`_retype_bf16` then turns each float16 in the result into bfloat16,
    taking weights and constants from the fp32 originals (bf16 keeps fp32's range: nothing is
    clamped at fp16's 65504). For consumers with bf16 kernels (TensorRT's parser); onnxruntime's
    CPU provider lacks bf16 kernels for most ops.
    """
    return _to_half(src, workdir, "bf16", keep_ops, keep_nodes, keep_tensors)


def _to_half(src: Path, workdir: Path, kind: str, keep_ops: Sequence[str], keep_nodes: Sequence[str],
             keep_tensors: Sequence[str]) -> Path:
    import onnx
    import onnxconverter_common
    from onnxconverter_common import float16

    keep_ops, keep_nodes = sorted(set(keep_ops)), sorted(set(keep_nodes))
    keep_tensors = sorted(set(keep_tensors))
    key = key_of(kind, onnxconverter_common.__version__, model_digest(src, workdir), keep_ops, keep_nodes, keep_tensors,
                 FP16_MAX, FP16_MIN_POSITIVE, max_ir_version(), "kept-to-kept edges stay fp32")
    out = workdir / "ort" / f"{_stem(src)}-{kind}-{key}.onnx"
    if out.is_file():
        return out
    model = onnx.load(str(src))
    names = {n.name for n in model.graph.node}
    unknown = [n for n in keep_nodes if n not in names]
    if unknown:
        sample = ", ".join(list(names)[:5])
        raise ParityError(f"keep_fp32_nodes names nodes {unknown} that are not in {src.name}. "
                          f"Note: node names look like {sample}")
    if keep_tensors:
        keep_nodes = sorted(set(keep_nodes) | set(keep_producers(model, keep_tensors, src.name, name_unnamed=True)))
    block = list(float16.DEFAULT_OP_BLOCK_LIST) + [o for o in keep_ops if o not in float16.DEFAULT_OP_BLOCK_LIST]
    try:
        with _quiet():
            m16 = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block,
                                                   node_block_list=keep_nodes or None,
                                                   max_finite_val=FP16_MAX, min_positive_val=FP16_MIN_POSITIVE)
    except Exception as e:
        raise ParityError(f"{kind} conversion of {src.name} failed: {type(e).__name__}: {e}. Note: try keeping "
                          f"the failing op in fp32 with the keep_fp32_ops option") from e
    _skip_half_round_trips(m16)
    _keep_float_outputs(m16, model)
    if kind == "bf16":
        _retype_bf16(m16, onnx.load(str(src)))
    clamp_ir_version(m16)
    with atomic_path(out) as tmp:
        if m16.ByteSize() > _LARGE:
            onnx.save(m16, str(tmp), save_as_external_data=True, location=out.name + ".data")
        else:
            onnx.save(m16, str(tmp))
    return out


def _skip_half_round_trips(converted: Any) -> None:
    """Between two kept (block-listed) nodes the value stays float32, in place.

    onnxconverter-common casts every kept node's result to float16 and casts it back to float32 at
    each kept consumer, so a value beyond fp16 (a residual stream at 9e4) is inf between two
    fp32 nodes and keeping both changes nothing: `parity fix` found no set for GPT-2 at fp16. Each
    such input cast is bypassed; an output cast no node reads any more is removed and the kept node
    writes the tensor's own name in float32 (what records fetch under that name).
    """
    from onnx import TensorProto

    g = converted.graph

    def to(n: Any) -> int | None:
        return next((a.i for a in n.attribute if a.name == "to"), None)

    producer = {o: n for n in g.node for o in n.output if o}
    graph_outs = {o.name for o in g.output}
    drop: list[Any] = []
    for c in g.node:
        if c.op_type != "Cast" or to(c) != TensorProto.FLOAT or "_input_cast" not in c.name \
                or c.output[0] in graph_outs:
            continue
        p = producer.get(c.input[0])
        if p is None or p.op_type != "Cast" or to(p) != TensorProto.FLOAT16 or "_output_cast" not in p.name:
            continue
        for u in g.node:
            for k, x in enumerate(u.input):
                if x == c.output[0]:
                    u.input[k] = p.input[0]
        drop.append(c)
    if not drop:
        return
    for c in drop:
        g.node.remove(c)
    read = {x for n in g.node for x in n.input} | graph_outs
    renames: dict[str, str] = {}
    for p in [n for n in g.node if n.op_type == "Cast" and to(n) == TensorProto.FLOAT16
              and "_output_cast" in n.name and n.output[0] not in read]:
        renames[p.input[0]] = p.output[0]  # the fp32 result takes the tensor's name
        g.node.remove(p)
    for n in g.node:
        for k, x in enumerate(n.output):
            n.output[k] = renames.get(x, x)
        for k, x in enumerate(n.input):
            n.input[k] = renames.get(x, x)
    stale = set(renames) | set(renames.values())
    keep_vi = [v for v in g.value_info if v.name not in stale]
    del g.value_info[:]
    g.value_info.extend(keep_vi)


def _keep_float_outputs(converted: Any, original: Any) -> None:
    """Graph outputs that were float32 stay float32, in place.

    onnxconverter-common 1.16 with ``keep_io_types`` turns a graph output produced by a node on
    its block list into float16 (it casts the kept node's fp32 result *to* fp16 before the output):
    the kept layer's exact values would be rounded after all. Such a Cast is made a cast to
    float32; any other float16 output gets one appended.
    """
    from onnx import TensorProto, helper

    was_float = {o.name for o in original.graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT}
    producer = {o: n for n in converted.graph.node for o in n.output if o}
    for out in converted.graph.output:
        tt = out.type.tensor_type
        if out.name not in was_float or tt.elem_type != TensorProto.FLOAT16:
            continue
        node = producer.get(out.name)
        to = [a for a in node.attribute if a.name == "to"] if node is not None and node.op_type == "Cast" else []
        if to:
            to[0].i = TensorProto.FLOAT
        else:
            inner = f"{out.name}_parity_fp16"
            if node is not None:
                node.output[list(node.output).index(out.name)] = inner
            converted.graph.node.append(helper.make_node("Cast", [inner], [out.name], to=TensorProto.FLOAT,
                                                         name=f"{out.name}_parity_cast_fp32"))
        tt.elem_type = TensorProto.FLOAT


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 values as bfloat16 bit patterns (uint16), rounded to nearest even; NaN stays NaN."""
    a = np.ascontiguousarray(values, dtype=np.float32)
    bits = a.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(a), np.uint16(0x7FC0), rounded).astype(np.uint16)


def _bf16_tensor(values: np.ndarray, name: str) -> Any:
    from onnx import TensorProto

    t = TensorProto()
    t.name = name
    t.data_type = TensorProto.BFLOAT16
    t.dims.extend(int(d) for d in np.shape(values))
    t.raw_data = bf16_bits(np.asarray(values)).tobytes()
    return t


def _retype_bf16(model: Any, original: Any) -> None:
    """Every float16 of ``model`` (the fp16 pass's result) made bfloat16, in place.

    Weights and Constant values come from ``original`` (the fp32 model) where it has them by
    the same name, so no value passes through fp16; the rest (values the converter made) are
    widened from fp16, which bf16 holds without overflow.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    f16, b16 = TensorProto.FLOAT16, TensorProto.BFLOAT16
    fp32: dict[str, Any] = {}
    for g in _graphs(original.graph):
        fp32.update((t.name, t) for t in g.initializer)
        for n in g.node:
            if n.op_type == "Constant" and n.output:
                for a in n.attribute:
                    if a.type == onnx.AttributeProto.TENSOR:
                        fp32[n.output[0]] = a.t

    def as_bf16(t: Any, key: str) -> Any:
        src = fp32.get(key)
        if src is not None and src.data_type == TensorProto.FLOAT and list(src.dims) == list(t.dims):
            vals = numpy_helper.to_array(src)
        else:
            vals = numpy_helper.to_array(t).astype(np.float32)
        return _bf16_tensor(vals, t.name)

    def retype(vi: Any) -> None:
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.elem_type == f16:
            tt.elem_type = b16

    for g in _graphs(model.graph):
        for k, t in enumerate(g.initializer):
            if t.data_type == f16:
                g.initializer[k].CopyFrom(as_bf16(t, t.name))
        for vi in [*g.input, *g.output, *g.value_info]:
            retype(vi)
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == f16:
                    a.t.CopyFrom(as_bf16(a.t, n.output[0] if n.op_type == "Constant" and n.output else ""))
                elif a.type == onnx.AttributeProto.INT and a.name in ("to", "dtype") and a.i == f16:
                    a.i = b16


def _graphs(graph: Any) -> Iterator[Any]:
    """``graph`` and every body graph inside it (If/Loop/Scan), depth first."""
    import onnx

    yield graph
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from _graphs(sub)


def to_int8(src: Path, workdir: Path, calibration: list[dict[str, np.ndarray]],
            options: dict[str, Any] | None = None) -> Path:
    """``src`` statically quantized to int8 in QDQ format, cached under ``workdir/ort``.

    Options (from ``cfg.options``): ``int8_per_channel`` (bool), ``int8_calibrate_method``
    (minmax | entropy | percentile | distribution), ``int8_op_types`` (op types to
    quantize), ``int8_nodes_to_exclude`` (node names), ``int8_preprocess`` (run
    ``quant_pre_process`` with shape inference only, no graph optimization, so tensor
    names survive), ``keep_high_precision`` (fp32 tensor names whose producing nodes are left
    unquantized: added to ``nodes_to_exclude``).
    """
    import onnxruntime
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    from parity.lib.onnx.session import quiet_runtime_logs

    quiet_runtime_logs()  # the quantizer's calibration sessions log warnings through the default logger

    opts = dict(options or {})
    o = read_options(INT8, opts)  # typed, defaults filled: the group's one declaration
    per_channel = o["int8_per_channel"]
    method_name = o["int8_calibrate_method"]
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}
    if method_name not in methods:
        raise ParityError(f"int8_calibrate_method {method_name!r} is not known. Note: use one of "
                          f"{', '.join(methods)}")
    op_types = list(o["int8_op_types"]) or None
    exclude = list(o["int8_nodes_to_exclude"]) or None
    preprocess = o["int8_preprocess"]
    keep_tensors = sorted(set(option_list(opts, "keep_high_precision")))
    key = key_of("int8", onnxruntime.__version__, model_digest(src, workdir), feeds_digest(calibration), per_channel,
                 method_name, sorted(op_types or []), sorted(exclude or []), preprocess, keep_tensors)
    out = workdir / "ort" / f"{_stem(src)}-int8-{key}.onnx"
    if out.is_file():
        return out
    if keep_tensors:
        import onnx

        m = onnx.load(str(src), load_external_data=False)
        exclude = sorted(set(exclude or []) | set(keep_producers(m, keep_tensors, src.name, with_fused=True)))
        del m

    class Reader(CalibrationDataReader):
        def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    out.parent.mkdir(parents=True, exist_ok=True)
    model_in: Path = src
    try:
        with _quiet(), contextlib.ExitStack() as stack:
            if preprocess:
                from onnxruntime.quantization import quant_pre_process

                tmpdir = stack.enter_context(tempfile.TemporaryDirectory(dir=out.parent))
                pre = Path(tmpdir) / "pre.onnx"
                quant_pre_process(str(src), str(pre), skip_optimization=True)
                model_in = pre
            with atomic_path(out) as tmp:
                quantize_static(str(model_in), str(tmp), Reader(list(calibration)),
                                quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                                weight_type=QuantType.QInt8, per_channel=per_channel,
                                calibrate_method=methods[method_name], op_types_to_quantize=op_types,
                                nodes_to_exclude=exclude,
                                use_external_data_format=_model_bytes(src) > _LARGE)
    except ParityError:
        raise
    except Exception as e:
        raise ParityError(f"int8 quantization of {src.name} failed: {first_line(e, typed=True)}. Note: check the calibration "
                          f"feeds match the model inputs, or exclude the failing nodes with "
                          f"int8_nodes_to_exclude") from e
    return out


def fetch_map(model: Any, names: Sequence[str], *, quantized: bool,
              producers: Mapping[str, tuple[str, int]] | None = None) -> dict[str, tuple[str, bool]]:
    """For each fp32 tensor name the running model still computes: (tensor to fetch, quantized?).

    fp16 keeps the names, so a tensor is fetched as itself where a node still produces it; a QDQ
    model is read through :func:`int8_fetch_map` (``producers``: see there).
    """
    if quantized:
        return int8_fetch_map(model, names, producers)
    produced = {o for n in model.graph.node for o in n.output}
    return {t: (t, False) for t in names if t in produced}


def int8_fetch_map(qmodel: Any, names: Sequence[str],
                   producers: Mapping[str, tuple[str, int]] | None = None) -> dict[str, tuple[str, bool]]:
    """For each original tensor name present in the QDQ model: (tensor to fetch, quantized?).

    QDQ quantization puts ``QuantizeLinear -> DequantizeLinear`` after a tensor and rewires
    its consumers to the DequantizeLinear output, so that output is the activation as the
    next layers see it (rounded to the int8 grid): it is fetched under the original name.
    A graph output is itself a DequantizeLinear output. Tensors left in float (ops not
    quantized) are fetched as they are.

    A tensor the quantizer renamed: ONNX Runtime's quantizer folds an activation (Relu, Clip)
    into the QuantizeLinear after the node before it (the clipped int8 range does what the
    activation did) and removes it; that node then writes the activation's output name, so its own
    output (a Linear's Gemm output: ``linear``) is gone by name. ``producers`` (fp32 tensor ->
    (producing node's name, output position), from the fp32 graph) finds it: the node of the same
    name in the QDQ model, same output position, holds the value (before its QuantizeLinear,
    hence not rounded to the int8 grid, and before the folded activation) and is fetched for it.
    """
    g = qmodel.graph
    producer = {o: n for n in g.node for o in n.output if o}
    q_of: dict[str, str] = {}  # tensor -> QuantizeLinear output
    dq_of: dict[str, str] = {}  # QuantizeLinear output -> DequantizeLinear output
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.input and n.input[0] not in q_of:
            q_of[n.input[0]] = n.output[0]
        elif n.op_type == "DequantizeLinear" and n.input and n.input[0] not in dq_of:
            dq_of[n.input[0]] = n.output[0]
    out: dict[str, tuple[str, bool]] = {}
    for t in names:
        p = producer.get(t)
        if p is not None and p.op_type == "DequantizeLinear":
            out[t] = (t, True)
        elif t in q_of and q_of[t] in dq_of:
            out[t] = (dq_of[q_of[t]], True)
        elif p is not None:
            out[t] = (t, False)
    if producers:
        by_name = {n.name: n for n in g.node if n.name}
        for t in names:
            if t in out or t in producer or t not in producers:
                continue
            node_name, k = producers[t]
            n = by_name.get(node_name)
            if n is not None and k < len(n.output) and n.output[k] and n.op_type not in (
                    "QuantizeLinear", "DequantizeLinear"):
                out[t] = (n.output[k], False)
    return out

"""The option groups that several sources share, declared once.

Why here: the options a library reads belong to that library, not to each plugin that uses it. The
torch loader reads ``trust_model`` and ``state_dict`` whichever source loads a torch model; the ONNX
exporter reads ``opset``; an ONNX Runtime session reads ``ort_threads`` for the ``ort-*`` targets
and for the reference values of ``trt-*``. A source's schema composes the groups of the libraries
it uses plus its own options (:attr:`parity.contract.source.Source.option_schema`), as Polygraphy's
tools compose their argument groups, and the libraries read their group with
:func:`parity.contract.options.read_options`, getting typed values with defaults filled.

Pure data: importing this module imports no framework.
"""
from __future__ import annotations

from parity.contract.options import Option

#: loading a torch model (:mod:`parity.lib.torch_loader`)
LOADING: tuple[Option, ...] = (
    Option("trust_model", "bool", False, "allow loading a pickled model (runs code from the file: only for files "
                                         "you trust)", flag="--trust-model"),
    Option("state_dict", "str", None, "weights for a package.module:factory model (loaded with weights_only)",
           flag="--state-dict"),
)

#: parity's export of a torch model to ONNX (:mod:`parity.lib.onnx.models`)
EXPORT: tuple[Option, ...] = (
    Option("opset", "int", None, "ONNX opset for parity's export (default chosen by parity)", flag="--opset",
           minimum=1),
    Option("export_dynamic_batch", "bool", True, "export with a dynamic batch dimension"),
    Option("export_optimize", "bool", True, "let the exporter optimize the exported graph"),
    Option("export_dynamo", "bool", True, "export with torch.export (dynamo); false: the TorchScript exporter"),
)

#: an ONNX Runtime session (:func:`parity.lib.onnx.session.session_options`)
ORT_SESSION: tuple[Option, ...] = (
    Option("ort_providers", "list", (), "execution providers, in order (default: chosen for --device)"),
    Option("ort_threads", "int", None, "intra-op threads (0: onnxruntime's default)", minimum=0),
    Option("ort_graph_optimization", "choice", "all", "graph optimization level",
           choices=("disable", "basic", "extended", "all")),
    Option("ort_mem_arena", "bool", False, "turn the CPU memory arena back on (more peak memory, no speed)"),
)

#: an fp16 conversion of an ONNX model (:func:`parity.lib.onnx.convert.to_fp16`)
FP16: tuple[Option, ...] = (
    Option("keep_fp32_ops", "list", (), "op types kept fp32 by the fp16 conversion (e.g. Softmax,LayerNormalization)",
           flag="--keep-fp32-ops"),
    Option("keep_fp32_nodes", "list", (), "ONNX node names kept fp32 by the fp16 conversion", flag="--keep-fp32-nodes"),
)

#: ONNX Runtime's static int8 quantization (:func:`parity.lib.onnx.convert.to_int8`)
INT8: tuple[Option, ...] = (
    Option("int8_per_channel", "bool", False, "quantize weights per channel"),
    Option("int8_calibrate_method", "choice", "minmax", "how activation ranges are calibrated",
           choices=("minmax", "entropy", "percentile", "distribution")),
    Option("int8_op_types", "list", (), "op types to quantize (default: all the quantizer knows)"),
    Option("int8_nodes_to_exclude", "list", (), "ONNX node names left unquantized"),
    Option("int8_preprocess", "bool", False, "run quant_pre_process (shape inference only) before quantizing"),
)

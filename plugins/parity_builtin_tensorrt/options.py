"""The options the ``trt-*`` sources read, declared once (see :attr:`parity.contract.source.Source.option_schema`).

Values are converted by the registry; :func:`.config.engine_config` still checks how they combine
(a layer precision with constraints ``none``, strong typing with a reduced precision).
"""
from __future__ import annotations

from parity.contract.options import Option
from parity.lib.options import EXPORT, LOADING, ORT_SESSION

from .config import CAPTURE_MODES, DEBUG_STRATEGIES

OPTIONS: tuple[Option, ...] = (
    *LOADING, *EXPORT, *ORT_SESSION,  # the model is exported to ONNX; --diagnose's reference runs in ONNX Runtime
    Option("trt_capture", "choice", "debug", "how layers are captured: debug tensors, marked outputs, or the "
           "outputs only", choices=CAPTURE_MODES, flag="--trt-capture"),
    Option("trt_debug_strategy", "choice", "auto", "how debug capture marks tensors", choices=DEBUG_STRATEGIES),
    Option("trt_mark", "regex", None, "capture only tensors or layers whose name matches"),
    Option("trt_mark_names", "list", (), "tensor or layer names to capture"),
    Option("trt_layer_precisions", "str", None, "per-layer precisions, trtexec's spelling: name:fp32,other*:fp16",
           flag="--layer-precisions", aliases=("layer_precisions",)),
    Option("trt_precision_constraints", "choice", None, "obey | prefer | none (default obey when layer "
           "precisions are given)", choices=("obey", "prefer", "none")),
    Option("trt_workspace", "str", None, "workspace pool limit: 4096 (MiB, as trtexec), 2G, 512MiB"),
    Option("trt_strongly_typed", "bool", None, "build a strongly typed network (precision from the ONNX types)"),
    Option("trt_int8_fallback", "choice", "fp32", "what int8 layers that cannot be int8 run in",
           choices=("fp32", "fp16")),
    Option("trt_engine_cache", "bool", True, "reuse engines from the cache folder"),
    Option("trt_queue_size", "int", 4, "debug tensors held between TensorRT and the scorer", minimum=1),
)

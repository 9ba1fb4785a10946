"""The options the ``ort*`` sources read, declared once (see :attr:`parity.contract.source.Source.option_schema`).

The shared groups are the libraries this plugin drives: a torch model is loaded and exported
(``LOADING``, ``EXPORT``), run in an ONNX Runtime session (``ORT_SESSION``), converted to fp16
(``FP16``) or quantized to int8 (``INT8``).
"""
from __future__ import annotations

from parity.contract.options import Option
from parity.lib.options import EXPORT, FP16, INT8, LOADING, ORT_SESSION

OPTIONS: tuple[Option, ...] = (
    *LOADING, *EXPORT, *ORT_SESSION, *FP16, *INT8,
    Option("ort_output_batch", "int", None, "at most N captured tensors per session run (0: one session)",
           minimum=0),
    Option("step_bytes", "bytes", None, "bytes of captured tensors per session run (--step-bytes first)"),
    Option("ort_all_dtypes", "bool", False, "also capture integer and bool tensors"),
    Option("local_modules", "bool", True, "--diagnose also runs each module alone, not only each node"),
)

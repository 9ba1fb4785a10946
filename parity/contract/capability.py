"""What a target computes in, and what else a source can do: typed answers the core asks for.

Why: the core once read a target's number format out of its name (``"int8" in "ort-int8"``) and
did the ONNX work of ``parity fix --write-model`` and ``parity repro`` itself. A source now says
its :class:`NumberFormat` as an attribute and offers optional :class:`Capability` s through
:meth:`parity.contract.source.Source.offers`; the core asks, dispatches, and refuses with a clear
line when a target lacks one, naming the sources that have it. A new source (a quantization
toolkit, a decoder) plugs in without the core learning its name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

__all__ = ["Capability", "FixedModel", "NumberFormat", "ReproResult", "StageKind"]


class NumberFormat(str, Enum):
    """The number format a target computes in (``Source.number_format``), never parsed from its name.

    ``MIXED``: several formats by design (a weight-only int4 model with fp16 activations ...), so no
    one format's range applies to every layer.
    """

    FP32 = "fp32"
    TF32 = "tf32"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"
    INT8 = "int8"
    INT4 = "int4"
    NVFP4 = "nvfp4"
    MIXED = "mixed"

    @property
    def report_name(self) -> str | None:
        """The name a report's ``summary["target_format"]`` gives it (JSON schema: ``float16``,
        ``bfloat16``, ``int8`` ...); None for a format with float32's range (fp32, tf32) or none (mixed)."""
        return _REPORT_NAMES.get(self)

    @property
    def quantized(self) -> bool:
        """Integer or 8-bit-and-below formats: values pass through quantizers with a scale, not a cast."""
        return self in (NumberFormat.FP8, NumberFormat.INT8, NumberFormat.INT4, NumberFormat.NVFP4)

    def __str__(self) -> str:
        return self.value


_REPORT_NAMES = {NumberFormat.FP16: "float16", NumberFormat.BF16: "bfloat16", NumberFormat.INT8: "int8",
                 NumberFormat.FP8: "fp8", NumberFormat.INT4: "int4", NumberFormat.NVFP4: "nvfp4"}


class StageKind(str, Enum):
    """Which step of deployment a source models (``Source.stage_kind``), for ``parity compare --stages``.

    Why typed: the staged report names the kind of step that owns the loss (the quantization, the
    export, the runtime); reading it from a source's name (``-qdq``, ``modelopt-``) broke with every
    new toolkit. ``STAGE`` is the default: a step of no particular kind (an fp32 run, a third-party source).
    """

    #: a quantization toolkit's fake-quantized model (ModelOpt)
    QUANTIZATION = "quantization"
    #: the framework itself in lower precision (torch fp16 / bf16 autocast)
    PRECISION = "precision"
    #: an exported file run as written (every tensor stored as exported, Q/DQ nodes run literally)
    EXPORT = "export"
    #: a runtime as deployed (ONNX Runtime's optimized kernels, a TensorRT engine)
    RUNTIME = "runtime"
    STAGE = "stage"

    def __str__(self) -> str:
        return self.value


class Capability(str, Enum):
    """Optional things a source can do beside running a model (``Source.offers(capability)``)."""

    #: each layer alone in the target's setting on the reference's inputs (``--diagnose``'s local error):
    #: :meth:`Source.local_errors`
    RUN_LAYER_ALONE = "run a layer alone"
    #: the target's model with some layers kept in high precision, as a file (``parity fix --write-model``):
    #: :meth:`Source.write_fixed_model`
    WRITE_FIXED_MODEL = "write a fixed model"
    #: one layer cut into a standalone model with its inputs and reference outputs (``parity repro``):
    #: :meth:`Source.write_repro`
    WRITE_REPRO = "cut a layer into a standalone repro"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class FixedModel:
    """What :meth:`Source.write_fixed_model` wrote: the file, the kept record keys, its number format."""

    path: Path
    kept: tuple[str, ...]
    number_format: NumberFormat


@dataclass
class ReproResult:
    """What :meth:`Source.write_repro` wrote into ``folder``: the cut model's tensors and nodes."""

    folder: Path
    layer: str
    outputs: list[str] = field(default_factory=list)  # tensors the cut model returns
    inputs: list[str] = field(default_factory=list)  # tensors it is fed
    nodes: list[str] = field(default_factory=list)  # the model's nodes it holds (ONNX node names)

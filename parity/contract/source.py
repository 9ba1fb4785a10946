"""The source contract: something that runs a model and yields its activations lazily.

A source is registered under a target name (``torch``, ``torch-fp16``, ``ort-int8``,
``trt-fp16``); one class typically serves several names through its constructor
arguments. Heavy frameworks are imported inside methods, never at module import, so
``parity --help`` and ``parity plugins`` stay fast and work without them installed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

import numpy as np

from parity.contract.capability import Capability, FixedModel, NumberFormat, ReproResult, StageKind
from parity.contract.capture import CaptureWants
from parity.contract.errors import ParityError
from parity.contract.options import RUN_OPTIONS, Option
from parity.contract.records import Activation, LocalResult


@dataclass(frozen=True)
class InputSpec:
    """A model input as declared by the model; ``None`` in ``shape`` marks a dynamic dimension."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"
    #: an integer index input's exclusive upper bound where the model tells it (an embedding's row
    #: count): random values stay below it, as a real index must; None: unknown
    high: int | None = None


@dataclass(frozen=True)
class LayerSelection:
    """Which layers to capture (``--layers``): a regular expression and/or exact names.

    Why: a model whose activations do not fit in memory can still be compared in slices, and a
    source that knows the selection captures less (ONNX Runtime marks fewer outputs, torch hooks
    fewer modules). The core filters what any source yields with the same rule, so a source that
    ignores the selection is slower, never wrong. Model outputs are always kept.
    """

    pattern: str | None = None
    names: frozenset[str] = frozenset()

    def selects(self, *names: str | None) -> bool:
        """True when any of ``names`` (a record's name, its module path, its ONNX node ...) is selected."""
        import re

        for n in names:
            if not n:
                continue
            if n in self.names or (self.pattern is not None and re.search(self.pattern, n)):
                return True
        return False


@dataclass
class RunConfig:
    """Everything a source needs to load and run a model, shared by reference and target.

    ``model`` is a path (``.pt``, ``.pt2``, ``.onnx``) or a Python spec ``pkg.module:factory``.
    ``workdir`` is where a source may cache derived artifacts (exported ONNX, converted
    models, engines); ``options`` carries source-specific settings from the CLI/config
    (``trust_model``, ``state_dict``, ``opset``, ``keep_fp32_ops``, ``calibration`` ...).
    """

    model: str
    device: str = "cpu"
    workdir: Path = field(default_factory=lambda: Path(".parity-cache"))
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    #: feeds used for calibration by quantizing targets (int8); set by the driver
    calibration: list[dict[str, np.ndarray]] = field(default_factory=list)
    #: only these layers are captured (``--layers``); None: every layer
    layers: LayerSelection | None = None
    #: bytes of activations a source may hold at once while capturing (one "step" of extra outputs);
    #: None: the source's own default
    step_bytes: int | None = None
    #: yield only the model outputs, nothing captured (``parity fix`` re-measures with it; the deployed
    #: run beside every capture). The core sets it only for a source with ``supports_outputs_only``
    outputs_only: bool = False
    #: record keys (as :meth:`Source.run` names them) whose layers stay in high precision (fp32): the
    #: fix ``parity fix`` searches. The core refuses it for a source without ``supports_keep_high_precision``
    keep_high_precision: tuple[str, ...] = ()
    #: which target tensors can pair with the current feed's reference (issue 19): the core fills it
    #: when the reference stream ends; a source captures only what it selects. None: capture all
    #: (``--all-tensors``, ``--diagnose``, ``--save-target``, a mapping file, or a matcher that pairs otherwise)
    wants: CaptureWants | None = None
    #: the core accepts records whose ``array`` is a tensor where the model ran (``--device-scoring``,
    #: on by default with a CUDA device): a source that can may then hand over detached device
    #: clones instead of host copies, and the core scores them there. A source may ignore it
    device_records: bool = False

    def __post_init__(self) -> None:
        """The typed fields taken out of ``options`` where a caller (a ``--config`` file, an older
        plugin or test) put them there, so a source reads them in one place only."""
        if any(o.name in self.options for o in RUN_OPTIONS):
            opts = dict(self.options)
            if "outputs_only" in opts:
                self.outputs_only = bool(RUN_OPTIONS[0].convert(opts.pop("outputs_only")))
            if "keep_high_precision" in opts:
                self.keep_high_precision = tuple(RUN_OPTIONS[1].convert(opts.pop("keep_high_precision")) or ())
            self.options = opts
        self.keep_high_precision = tuple(self.keep_high_precision or ())


class Source:
    """Base class for a source plugin."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: what this source's numbers mean, in one sentence, when its name does not say it all (an fp16
    #: target that keeps some ops in fp32): reports and ``parity fix`` print it beside their results
    semantics: ClassVar[str | None] = None
    #: whether :meth:`run` with ``outputs_only`` is the model as deployed (nothing captured): the
    #: driver then runs it beside every capture to check that capturing changed nothing
    runs_deployed: ClassVar[bool] = True
    #: the options this source reads from ``cfg.options``, typed (:class:`parity.contract.options.Option`):
    #: the registry refuses any other key and converts values before the run, the CLI makes a flag of
    #: each option with a ``flag``, ``parity plugins --options NAME`` lists them. One class serving
    #: several names may set it per instance
    option_schema: tuple[Option, ...] = ()
    #: whether :meth:`run` honours ``cfg.outputs_only`` (yields the outputs only, nothing captured);
    #: without it the core never asks, and cannot run this target as deployed beside a capture
    supports_outputs_only: ClassVar[bool] = False
    #: whether :meth:`run` honours ``cfg.keep_high_precision``; without it ``parity fix`` and a
    #: ``--config`` keeping layers in fp32 refuse this target (exit 2) rather than measure nothing
    supports_keep_high_precision: ClassVar[bool] = False
    #: the number format this target computes in, typed (never read from the name): diagnosis picks
    #: the format's range and ``parity fix`` the tool recipes by it. A source that says nothing is fp32;
    #: one class serving several precisions sets it per instance in its constructor
    number_format: NumberFormat = NumberFormat.FP32
    #: which step of deployment this source models (quantization, precision, export, runtime), typed:
    #: ``parity compare --stages`` names the kind of the stage owning the loss by it. One class serving
    #: several names sets it per instance
    stage_kind: StageKind = StageKind.STAGE
    #: for a stage others follow in ``--stages`` (a quantization or precision stage): the short names a
    #: later stage may be given and the source each one means after this one (``ort`` after
    #: ``modelopt-int8`` is ``modelopt-int8-ort``; after ``torch-fp16`` it is ``ort-fp16``)
    stage_aliases: Mapping[str, str] = {}
    #: optional capabilities this source offers beyond running (see :meth:`offers`)
    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    def offers(self, capability: Capability) -> bool:
        """Whether this source implements ``capability``; the core asks before dispatching to it.

        ``RUN_LAYER_ALONE`` is also offered by a source setting the older ``supports_local``.
        """
        if capability is Capability.RUN_LAYER_ALONE and self.supports_local:
            return True
        return capability in self.capabilities

    def check(self) -> str | None:
        """``None`` if this source can run on this machine, else one line saying what is missing."""
        return None

    def input_specs(self, cfg: RunConfig) -> list[InputSpec]:
        """The model's inputs, so the driver can make or validate feeds."""
        raise NotImplementedError

    def run(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Activation]:
        """Run once on ``feed`` and yield every captured activation in execution order.

        The final model outputs are yielded too, with ``meta["is_output"] = True``.
        A source declaring ``supports_outputs_only`` honours ``cfg.outputs_only`` (yield only the
        outputs: ``parity fix`` re-measures with it); one declaring ``supports_keep_high_precision``
        honours ``cfg.keep_high_precision`` (record keys whose layers stay fp32: the fix being searched).
        """
        raise NotImplementedError

    # Optional capabilities. The defaults say "not offered"; the driver calls them unconditionally.

    def input_names(self, cfg: RunConfig) -> list[str] | None:
        """Input names when shapes are unknown (a lone ``.npy`` feeding a shape-less TorchScript model)."""
        return None

    #: whether :meth:`local_errors` is implemented: ``--diagnose`` says so when it is not
    supports_local: ClassVar[bool] = False

    def local_errors(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[LocalResult]:
        """Each layer alone in this source's setting, fed the reference's inputs to it (``--diagnose``).

        Why: accumulated error says where the loss shows, local error says which layer causes it.
        Yield :class:`LocalResult` keyed like :meth:`run`'s records; raise :class:`ParityError` when
        this model cannot be cut into layers.
        """
        raise ParityError(f"source {self.name!r} cannot run layers alone")

    def write_fixed_model(self, cfg: RunConfig, feed: dict[str, np.ndarray], keep: list[str],
                          dest: Path) -> FixedModel:
        """Write the model this target runs with the records ``keep`` in high precision to ``dest``
        (``Capability.WRITE_FIXED_MODEL``; ``parity fix --write-model``).

        Why a capability: only the source knows how its precision is made (a conversion with a block
        list, a quantization with exclusions), so only it can write the file the fix measured. ``keep``
        holds record keys as :meth:`run` names them (``cfg.keep_high_precision``'s form);
        ``feed`` is the first input, for a model that must be resolved or exported first. ``dest`` is a
        temporary name the core renames once this returns; raise :class:`ParityError` when no single
        file can hold the model.
        """
        raise ParityError(f"source {self.name!r} cannot write a fixed model")

    def write_repro(self, cfg: RunConfig, feed: dict[str, np.ndarray], layer: str, folder: Path,
                    model_label: str) -> ReproResult:
        """Write ``layer`` cut out of the float32 model as a standalone repro into the empty ``folder``
        (``Capability.WRITE_REPRO``; ``parity repro``): the cut model, the float32 values reaching it
        for ``feed``, the float32 outputs they give, and a README saying how to run it.

        ``layer`` is whatever the user named (a node, tensor or module path); ``model_label`` names the
        model in the README. ``folder`` is a temporary folder the core renames once this returns.
        """
        raise ParityError(f"source {self.name!r} cannot cut a layer into a standalone repro")

    def details(self) -> list[dict[str, Any]] | dict[str, Any] | None:
        """Extra lines for ``parity doctor`` (library versions, devices, what works)."""
        return None

    def __repr__(self) -> str:
        return f"<source {self.name}>"


class InputReader:
    """Reads ``--inputs`` files that are not plain ``.npy``/``.npz`` (Polygraphy's ``--save-inputs`` JSON ...).

    Why a hook: replaying exactly the inputs that ran on another machine needs that tool's
    file format; the plugin that knows the format reads it, the core only asks who claims a file.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def can_read(self, path: Path) -> bool:
        raise NotImplementedError

    def read(self, path: Path) -> Iterator[dict[str, np.ndarray]]:
        """Yield one feed (input name -> array) per input set in the file; errors name the file."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<input reader {self.name}>"

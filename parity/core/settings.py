"""What a comparison was asked, in five parts, and the one function that builds it.

Why parts: some thirty settings travel from two front doors (``parity compare`` and
``parity.compare``) to the engine. Grouped by what they decide, each part can be read and tested on
its own:

* :class:`RunPart`     which model runs where: model, reference and target sources, device, cache
  folder, source options, a dump made elsewhere standing in for the target;
* :class:`InputsPart`  what is fed: a file, folder or dataset spec, arrays in memory
  (:class:`~parity.core.feeds.MemoryFeeds`), or random feeds from shapes, dtypes and a seed;
  calibration data; a limit on the number of feeds;
* :class:`ScoringPart` how layers are paired and judged: metrics, thresholds, metric options,
  matcher, mapping, layer selection, diagnosis;
* :class:`OutputsPart` what is written besides the report: the activation dumps (``--save-*``);
* :class:`ScalePart`   how big a run may grow: Ray workers, memory and step budgets, ``--force``.

:func:`build` is the one builder: the CLI hands it what argparse read, the Python API what the caller
passed, and both get their values parsed by :mod:`parity.core.parse`. The engine reads the flat
:class:`CompareSettings` it returns (``s.model``, ``s.thresholds``, ...) as before: the flat access is
kept on purpose, so the many readers in compare, fix, repro and the workers (and
``dataclasses.replace`` on a field) stay as they were; :meth:`CompareSettings.parts` gives the
grouped view and :meth:`CompareSettings.from_parts` joins parts again.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, NamedTuple, Sequence

from parity.core.feeds import MemoryFeeds

__all__ = ["CompareSettings", "InputsPart", "OutputsPart", "Parts", "RunPart", "ScalePart", "ScoringPart", "build"]


@dataclass
class RunPart:
    """Which model runs in which sources, where."""

    #: keyword-only: a required field, whatever order the parts are joined in (CompareSettings)
    model: str = field(kw_only=True)
    ref: str = "torch"
    target: str = "ort"
    device: str = "cpu"
    #: cache of exported/converted models and engines; None: the user cache folder (platformdirs)
    workdir: str | None = None
    source_options: dict[str, Any] = field(default_factory=dict)
    #: compare against activations dumped elsewhere (Polygraphy JSON, trtexec, npz...) instead of a target source
    target_dump: str | None = None
    #: the ONNX model the dump was made from: gives dump tensors their module provenance and outputs
    target_onnx: str | None = None
    #: TensorRT layer information JSON (trtexec --exportLayerInfo) to map engine layer names to ONNX
    layer_info: str | None = None


@dataclass
class InputsPart:
    """What the two sides are fed (the same feed each)."""

    #: a file, a folder of feed files, a dataset spec ``module:function``, in-memory feeds, or None (random)
    inputs: str | MemoryFeeds | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: dtypes of random inputs by input name (``--input-shape ids:1x16:int64``, ``input_dtypes=``)
    input_dtypes: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    random_inputs: int = 1
    #: INT8 calibration feeds: a path, or in-memory feeds; None: the first feeds of the dataset
    calibration: str | MemoryFeeds | None = None
    #: compare at most this many feeds of the dataset (``--limit``)
    limit: int | None = None


@dataclass
class ScoringPart:
    """How layers are paired and judged."""

    metrics: Sequence[str] | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    metric_options: dict[str, Any] = field(default_factory=dict)
    mapping: str | None = None
    matcher: str = "auto"
    #: diagnose: local errors (when the target source offers them), culprits, range tracing
    diagnose: bool = False
    #: only layers whose name (or module path, ONNX node) matches this regex are compared (``--layers``);
    #: a file of names, one a line, via ``@FILE``, or names via ``layer_names``; model outputs always stay
    layers: str | None = None
    layer_names: Sequence[str] = ()
    #: where pairs are scored (``--device-scoring``): ``on`` on the device the tensors are on (a torch
    #: source hands over device clones; only per-layer scalars cross to the host), ``off`` on host
    #: copies, ``auto`` on for a CUDA device. The values are the same either way (to 1e-6 relative)
    device_scoring: str = "auto"


@dataclass
class OutputsPart:
    """What a run writes besides its report: each side's activations as a dump, for `parity analyze` later."""

    save_ref: str | None = None
    save_target: str | None = None
    save_format: str = "npy"


@dataclass
class ScalePart:
    """How large a run may grow, and over how many processes."""

    #: bytes of parked activations held in memory before spilling to disk (``--max-memory``; None: default)
    max_memory: int | None = None
    #: bytes of activations a source captures per step (``--step-bytes``; None: the source's default)
    step_bytes: int | None = None
    #: shard the feeds over this many Ray workers (``--workers``); 1: this process
    workers: int = 1
    #: an existing Ray cluster (``--ray-address``); None: a local one when workers > 1
    ray_address: str | None = None
    #: run even when the memory estimate exceeds what is available (``--force``)
    force: bool = False
    #: capture every target tensor, also those no reference layer can pair with (``--all-tensors``);
    #: by default a target captures only what pairs (issue 19; ``summary.capture.skipped`` counts the rest)
    all_tensors: bool = False
    #: bytes of device records parked on the device (``--device-memory``; None: a quarter of the
    #: device memory free at the first one); beyond it they move to the host
    device_memory: int | None = None


class Parts(NamedTuple):
    run: RunPart
    inputs: InputsPart
    scoring: ScoringPart
    outputs: OutputsPart
    scale: ScalePart


_PART_TYPES = Parts(RunPart, InputsPart, ScoringPart, OutputsPart, ScalePart)


@dataclass
class CompareSettings(RunPart, InputsPart, ScoringPart, OutputsPart, ScalePart):
    """Everything `parity compare` was asked, flat: the union of the five parts (see the module's doc).

    Built by :func:`build` (the CLI and the API); constructing it directly with keywords still
    works (tests, benchmarks, ``dataclasses.replace``).
    """

    def parts(self) -> Parts:
        """The settings grouped by what they decide (copies: changing one leaves these settings alone)."""
        return Parts(*(t(**{f.name: getattr(self, f.name) for f in fields(t)}) for t in _PART_TYPES))

    @classmethod
    def from_parts(cls, run: RunPart, inputs: InputsPart, scoring: ScoringPart, outputs: OutputsPart,
                   scale: ScalePart) -> "CompareSettings":
        values: dict[str, Any] = {}
        for part in (run, inputs, scoring, outputs, scale):
            values.update({f.name: getattr(part, f.name) for f in fields(part)})
        return cls(**values)

    def flat(self) -> dict[str, Any]:
        """Every setting by name (for comparing two settings, logging)."""
        return asdict(self)


def build(*, model: str, ref: str, target: str = "ort", device: str = "cpu", workdir: str | None = None,
          options: Mapping[str, Any] | None = None, target_dump: str | None = None, target_onnx: str | None = None,
          layer_info: str | None = None,
          inputs: str | MemoryFeeds | None = None, input_shapes: Sequence[str] | Mapping[str, Any] | None = None,
          input_dtypes: Mapping[str, Any] | None = None, seed: int = 0, random_inputs: int = 1,
          calibration: str | MemoryFeeds | None = None, limit: int | None = None,
          metrics: Sequence[str] | None = None, threshold: str | float | Mapping[str, Any] | None = None,
          metric_options: Mapping[str, Any] | None = None, mapping: str | None = None, matcher: str = "auto",
          diagnose: bool = False, layers: str | Sequence[str] | None = None,
          save_ref: str | None = None, save_target: str | None = None, save_format: str = "npy",
          max_memory: str | int | None = None, step_bytes: str | int | None = None, workers: int = 1,
          ray_address: str | None = None, force: bool = False, all_tensors: bool = False,
          device_scoring: str = "auto", device_memory: str | int | None = None) -> CompareSettings:
    """The settings of one comparison from what a front end was given, every value parsed by
    :mod:`parity.core.parse` (thresholds, input shapes, byte sizes, layer selection).

    ``input_shapes`` takes the command line's ``["x:1x3x224x224", "ids:1x16:int64"]`` or the API's
    ``{"x": (1, 3, 224, 224)}``; ``threshold`` ``"cosine=0.999"``, ``0.999`` or ``{"cosine": 0.999}``;
    ``layers`` a regex, ``@FILE`` or a list of names; ``max_memory``/``step_bytes`` ``"2G"`` or bytes.
    """
    from parity.contract.options import check_seed
    from parity.core.parse import parse_bytes, parse_device_scoring, parse_shapes, parse_thresholds, split_layers

    shapes, dtypes = parse_shapes(input_shapes, input_dtypes)
    pattern, names = split_layers(layers)
    metric_list = list(metrics) if metrics else None
    return CompareSettings.from_parts(
        RunPart(model=model, ref=ref, target=target, device=device, workdir=workdir,
                source_options=dict(options or {}), target_dump=target_dump, target_onnx=target_onnx,
                layer_info=layer_info),
        InputsPart(inputs=inputs, input_shapes=shapes, input_dtypes=dtypes, seed=check_seed(seed),
                   random_inputs=random_inputs, calibration=calibration, limit=limit),
        ScoringPart(metrics=metric_list, thresholds=parse_thresholds(threshold, metric_list),
                    metric_options=dict(metric_options or {}), mapping=mapping, matcher=matcher, diagnose=diagnose,
                    layers=pattern, layer_names=names, device_scoring=parse_device_scoring(device_scoring)),
        OutputsPart(save_ref=save_ref, save_target=save_target, save_format=save_format),
        ScalePart(max_memory=parse_bytes(max_memory, "max_memory"), step_bytes=parse_bytes(step_bytes, "step_bytes"),
                  workers=workers or 1, ray_address=ray_address, force=force, all_tensors=all_tensors,
                  device_memory=parse_bytes(device_memory, "device_memory")))

"""`parity compare`: run one model in a reference and a target on the same inputs and diagnose.

Flow per input feed: the reference source streams its activations into the matcher (which
parks them memory-mapped), then the target source streams its own; each target activation
is matched and scored as it arrives. Per-input reports are merged (mean, worst, spread).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from parity.core.dumps import feed_dump_path
from parity.core.engine import match_pairs, metric_infos, resolve_metrics, run_engine
from parity.core.feeds import (Feed, FeedSet, FileFeeds, LazyFeeds, MemoryFeeds, PythonFeeds, RandomFeeds,
                               is_python_dataset)
from parity.core.settings import CompareSettings
from parity.core.deployed import DeployedStats, collect_outputs, relative_diff
from parity.core.stats import DatasetStats
from parity.core.parse import device_records

from parity.contract.report import Report, deployed_failures
from parity.contract import frontend
from parity.contract.capability import Capability
from parity.contract.errors import ARCHIVE_ERRORS, ParityError, first_line
from parity.core.inputs import load_feeds, resolve_specs
from parity.core.preflight import (check_memory, check_no_clobber, check_output_path, check_workdir,
                                   estimate_memory)
from parity.contract.capture import CaptureWants, learning
from parity.contract.matcher import MappingRules, normalize_name
from parity.contract.progress import log, track
from parity.contract.dumpformat import AnnotationContext
from parity.contract.records import Activation
from parity.contract.source import InputSpec, LayerSelection, RunConfig, Source


def _source(name: str, role: str) -> Source:
    from parity.core.registry import get_source

    src = get_source(name)
    why = src.check()
    if why:
        raise ParityError(f"{role} {name!r} cannot run here: {why}")
    return src


def _specs(ref: Source, tgt: Source, cfg: RunConfig) -> list[InputSpec]:
    """Input specs from the reference, else the target (a TorchScript module declares none)."""
    errors = []
    for src in (ref, tgt):
        try:
            specs = src.input_specs(cfg)
        except ParityError as e:
            errors.append(str(e))
            continue
        if specs:
            return specs
    raise ParityError(errors[0] if errors else f"{cfg.model}: the model declares no inputs.")


def _input_names(cfg: RunConfig, *srcs: Source) -> list[str] | None:
    """The model's input names: declared names (a TorchScript forward), else the names of its specs."""
    for src in srcs:
        for ask in (src.input_names, lambda c, src=src: [x.name for x in src.input_specs(c)]):
            try:
                names = ask(cfg)
            except ParityError:
                names = None
            if names:
                return list(names)
    return None


def _shapes_from_inputs(path: str | MemoryFeeds, cfg: RunConfig, *srcs: Source) -> dict[str, tuple[int, ...]]:
    """Shapes the input files imply, under the user's own --input-shape (which wins).

    A lone array (a ``.npy``, or an ``.npz`` holding one data array under another name) is the
    shape of the model's single input, as :func:`parity.core.inputs.load_feeds` will feed it.
    """
    from parity.core.inputs import peek_shapes

    names = _input_names(cfg, *srcs)
    if isinstance(path, MemoryFeeds):
        peek = path.peek_shapes()
    else:
        peek = peek_shapes(path, names)  # an input named like a label ("y") is the model's when it takes one
    if len(peek) == 1:
        if names and len(names) == 1 and names[0] not in peek:
            peek = {names[0]: next(iter(peek.values()))}
        elif "" in peek:
            peek = {}
    return {**peek, **cfg.input_shapes}


def _name_lone_shape(cfg: RunConfig, *srcs: Source) -> dict[str, tuple[int, ...]]:
    """``--input-shape 1x3x32x32`` (no name) as the shape of the model's single input."""
    shapes = dict(cfg.input_shapes)
    dims = shapes.pop("")
    text = "x".join(map(str, dims))
    names = _input_names(replace(cfg, input_shapes=shapes), *srcs)
    if not names:
        raise ParityError(f"{cfg.model}: --input-shape {text} names no input and the model's input names are "
                          f"unknown. Note: use --input-shape NAME:{text}.")
    if len(names) != 1:
        raise ParityError(f"{cfg.model}: --input-shape {text} names no input but the model has {len(names)}: "
                          f"{', '.join(names)}. Note: use --input-shape NAME:{text} for each.")
    if names[0] in shapes:
        raise ParityError(f"{cfg.model}: --input-shape gives input {names[0]!r} twice (with and without its name).")
    shapes[names[0]] = dims
    return shapes


def _free_batch(specs: list[InputSpec]) -> list[InputSpec]:
    """Files may carry any batch size: the leading dimension is not checked."""
    return [InputSpec(s.name, (None, *s.shape[1:]) if s.shape else s.shape, s.dtype) for s in specs]


def _model_bytes(s: CompareSettings) -> int:
    """Size of the weights on disk where known (the model file, or --state-dict), for the memory estimate."""
    for path in (s.model, s.source_options.get("state_dict")):
        if path and Path(str(path)).is_file():
            return Path(str(path)).stat().st_size
    return 0


def _activation_bytes(s: CompareSettings, shapes: dict[str, tuple[int, ...]]) -> int:
    """A lower bound of the activation memory of an ONNX model on inputs of ``shapes`` (shape inference, no run).

    Why: a layer's output is often many times its input (LeNet's first convolution: 20 channels
    from 1), so an estimate from the input size alone let a 2,000,000-image batch pass as a note.
    Each side computes the largest node with its inputs and outputs alive at once (the reference in
    fp32; the target at least half of that, in fp16), and scoring holds that layer's output of both
    sides (:func:`parity.lib.onnx.models.activation_bound`). 0 when unknown (not an ONNX file,
    inference fails): the estimate then rests on the inputs.
    """
    if not s.model.endswith(".onnx") or not Path(s.model).is_file():
        return 0
    from parity.lib.onnx.models import activation_bound

    return activation_bound(s.model, shapes)


def _check_size(s: CompareSettings, specs: list[InputSpec] | None, available: int | None = None) -> None:
    """Refuse (or warn about) a run too large for this machine, before any input is made or read.

    Input files count by what their headers declare, not their size on disk (a compressed ``.npz``
    of zeros is a thousand times smaller than its arrays). Activations: each side holds at least the
    largest node's inputs and outputs (:func:`_activation_bytes`), or twice the inputs if unknown.
    """
    if specs is None:  # input files (their arrays stream one file at a time) or arrays in memory
        from parity.core.inputs import declared_arrays, input_files

        sizes, shapes = [], {}
        where = f"--inputs {s.inputs}"
        if isinstance(s.inputs, MemoryFeeds):  # the first feed stands for the others (none is read ahead)
            first = next(iter(s.inputs.raw()), {})
            sizes = [sum(a.nbytes for a in first.values())] * min(2, s.inputs.known_length() or 1)
            shapes = {k: tuple(a.shape) for k, a in first.items()}
            where = "the inputs given in memory"
        for f in [] if isinstance(s.inputs, MemoryFeeds) else input_files(Path(str(s.inputs))):
            if not f.is_file() or f.suffix not in (".npy", ".npz"):
                continue
            try:
                arrays = declared_arrays(f)
            except (ParityError, *ARCHIVE_ERRORS):
                continue  # load_feeds reports a damaged file with its name
            sizes.append(sum(math.prod(sh) * dt.itemsize for sh, dt in arrays.values()))
            shapes = shapes or {k: sh for k, (sh, _dt) in arrays.items()}
        activations = _activation_bytes(s, shapes) if shapes and "" not in shapes else 0
        held = 2 * max(sizes) if len(sizes) > 1 else sum(sizes)
        parts = {"inputs": held, "models": 2 * _model_bytes(s),
                 "activations": max(2 * max(sizes, default=0), activations)}
        check_memory(parts, f"{s.model} on {where}", "smaller input files or batches", available,
                     force=s.force)
        return
    parts = estimate_memory(specs, max(1, s.random_inputs), _model_bytes(s), random=True)
    parts["activations"] = max(parts["activations"], _activation_bytes(s, {x.name: x.shape for x in specs}))
    shapes = " ".join(f"{x.name}:{'x'.join(map(str, x.shape))}" for x in specs)
    check_memory(parts, f"{s.model} on random inputs {shapes}",
                 f"smaller sizes or a smaller batch in {frontend.option('input_shape')}, or fewer "
                 f"{frontend.option('random_inputs')}",
                 available, force=s.force)


def make_feeds(s: CompareSettings, specs: list[InputSpec]) -> FeedSet:
    """The run's feeds, described (streamed when iterated); the first one is read now so a bad file fails fast."""
    fs: FeedSet
    if isinstance(s.inputs, MemoryFeeds):  # arrays handed over in memory: fed as they are
        _check_size(s, None)
        fs = s.inputs.bound(_free_batch(specs), s.limit)
    elif s.inputs and is_python_dataset(s.inputs):
        fs = PythonFeeds(_free_batch(specs), spec=s.inputs, limit=s.limit)
    elif s.inputs:
        _check_size(s, None)
        fs = FileFeeds(_free_batch(specs), path=s.inputs, limit=s.limit)
    else:
        resolved = resolve_specs(specs, s.input_shapes, s.model, s.input_dtypes)
        _check_size(s, resolved)
        fs = RandomFeeds(resolved, seed=s.seed, count=max(1, s.random_inputs), limit=s.limit)
    fs.first()
    return fs


#: default calibration data (no ``--calibration``): the dataset's first feeds, up to this many and bytes
CALIBRATION_FEEDS = 64
CALIBRATION_BYTES = 256 << 20


class _StreamAborted(Exception):
    """The tee's consumer stopped before the stream ended (Ctrl-C, an error): the dump must not appear."""


def _tee_to_dump(stream: Iterable[Activation], path: str, fmt: str) -> Iterator[Activation]:
    """Pass records on unchanged while a writer thread saves them as a dump (streaming, atomic).

    The dump is finished only when the stream is exhausted; if the consumer stops early
    (KeyboardInterrupt, an error, the generator closed) the writer is told to abort, so
    write_dump removes its temporary and nothing partial is moved into place.
    """
    import queue
    import threading

    from parity.core.dumps import write_dump

    q: "queue.Queue[Any]" = queue.Queue(maxsize=2)
    end, abort = object(), object()
    failure: list[BaseException] = []

    def records() -> Iterator[Activation]:
        while (item := q.get()) is not end:
            if item is abort:
                raise _StreamAborted(path)
            yield item

    def work() -> None:
        try:
            write_dump(records(), path, fmt=fmt, overwrite=True)
        except _StreamAborted:
            return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer below
            failure.append(e)
            while q.get() not in (end, abort):  # drain so the producer never blocks
                pass

    t = threading.Thread(target=work, name="parity-save-dump", daemon=True)
    t.start()
    done = False
    try:
        for a in stream:
            q.put(Activation(a.name, _host_copy(a), a.output_index, a.order, a.op_type, dict(a.meta)))
            yield a
        done = True
    finally:
        q.put(end if done else abort)
        t.join()
    if failure:
        raise failure[0]


def _host_copy(a: Activation) -> np.ndarray:
    """A host copy of ``a``'s values that nothing else holds (a device record's copy is already one)."""
    arr = a.host()
    return np.array(arr) if arr is a.array else arr


class _OutputTap:
    """Keeps the arg-max of classifier-shaped model outputs, for top-1 agreement.

    Classifier-shaped is ``[batch, classes]``: an arg-max over a hidden state (``[batch, tokens,
    hidden]``) is no prediction, and agreement on it means nothing. ``top1`` (``--top1``) asks for
    it over the last axis of any output of two or more dimensions (per-token logits).
    """

    def __init__(self, asked: bool = False, keep: bool = False) -> None:
        self.top1: dict[int, np.ndarray] = {}
        self.asked = asked
        #: the model outputs themselves, by position, when ``keep`` (the deployed-outputs check)
        self.keep = keep
        self.outputs: dict[int, Activation] = {}

    def __call__(self, stream: Iterable[Activation]) -> Iterator[Activation]:
        for a in stream:
            if a.meta.get("is_output"):
                pos = int(a.meta.get("output_position", a.output_index or 0))
                shape = a.shape
                if shape[-1:] > (1,) and (len(shape) == 2 or (self.asked and len(shape) > 2)):
                    self.top1[pos] = a.host().argmax(axis=-1).ravel()
                if self.keep:
                    self.outputs[pos] = Activation(a.name, _host_copy(a), a.output_index, a.order,
                                                   a.op_type, dict(a.meta))
            yield a


class _DumpTarget(Source):
    """A dump made elsewhere, standing in for a target source: same records for every feed."""

    description = "activations imported from a dump file or folder"
    runs_deployed = False  # a dump holds one run: there is no deployed run to set beside it

    def __init__(self, s: CompareSettings) -> None:
        self.name = f"dump:{Path(s.target_dump).name}"  # type: ignore[misc]
        self.path = s.target_dump
        self.onnx = s.target_onnx
        self.layer_info = s.layer_info
        if not Path(self.path).exists():  # type: ignore[arg-type]
            raise ParityError(f"{self.path}: target dump not found.")
        # prepared once, before any model runs: a bad --target-onnx/--layer-info fails fast
        self.steps = _annotators(AnnotationContext(onnx_path=self.onnx, layer_info=self.layer_info))

    def input_specs(self, cfg: RunConfig) -> list[InputSpec]:
        return []

    def run(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Activation]:
        from parity.core.dumps import read_dump

        for a in read_dump(self.path):
            for step in self.steps:
                a = step(a)
            yield a


def _annotators(ctx: AnnotationContext) -> list[Callable[[Activation], Activation]]:
    """The registered dump annotators that apply to ``ctx``, prepared, in their order."""
    from parity.core.registry import all_of

    chosen = sorted((a for a in all_of("dump-annotator").values() if a.wants(ctx)), key=lambda a: (a.order, a.name))
    if ctx.onnx_path and not chosen:
        raise ParityError("--target-onnx needs a dump annotator for ONNX models (parity's onnxruntime plugin). "
                          "Note: run 'parity plugins' to see what is installed.")
    return [a.prepare(ctx) for a in chosen]


@dataclass
class Prepared:
    """What every run of one comparison shares: the two sources, the run config and the feeds."""

    ref: Source
    target: Source
    cfg: RunConfig
    feeds: FeedSet


def check_settings(s: CompareSettings) -> tuple[Source, Source]:
    """Everything about ``s`` that can be known before a model runs: sources that can run here, files
    that exist, outputs that can be written. The CLI calls it for every target before running any."""
    ref_src = _source(s.ref, "reference")
    tgt_src = _DumpTarget(s) if s.target_dump else _source(s.target, "target")
    from parity.core.registry import check_run_fields, check_source_options

    # source options typed and checked (exit 2) before any model runs: every target of a CLI run, and
    # before Ray starts workers; prepare() checks again for the dict it hands the sources
    check_run_fields(tgt_src, RunConfig(model=s.model, options=check_source_options(tgt_src, s.source_options, ref_src)))
    if "://" not in s.model and ":" not in Path(s.model).name and not Path(s.model).exists():
        raise ParityError(f"{s.model}: model file not found.")
    check_external_data(s.model)
    for key, path in (("inputs", s.inputs), ("calibration", s.calibration), ("mapping", s.mapping)):
        if isinstance(path, MemoryFeeds) or (key == "inputs" and is_python_dataset(path)):
            continue
        if path and not Path(path).exists():  # named as the user gave it: --inputs PATH, inputs_path='PATH'
            raise ParityError(f"{frontend.given(key, path)}: file or folder not found.")
    for option, path in (("--save-ref", s.save_ref), ("--save-target", s.save_target)):
        if path:
            check_output_path(path, option, folder_ok=True)
    check_no_clobber([("--save-ref", s.save_ref or ""), ("--save-target", s.save_target or "")], input_paths(s))
    return ref_src, tgt_src


def check_external_data(model: str) -> None:
    """Every external-data file of an ONNX model lies in the model's folder and exists.

    Why: ONNX refuses a location outside the folder (a model file must not make the reader open
    arbitrary files), and a missing one fails deep in the loader; both surfaced as internal errors.
    """
    if not model.endswith(".onnx") or not Path(model).is_file():
        return
    folder = Path(model).resolve().parent
    from parity.lib.onnx.models import external_data

    for tensor, loc in external_data(model):
        target = (folder / loc).resolve()
        if Path(loc).is_absolute() or folder not in target.parents:
            raise ParityError(f"{model}: weight {tensor!r} names external data {loc!r}, outside the model's folder "
                              f"{folder}; ONNX reads external data only from that folder. Note: move the data "
                              f"file beside the model and save it with location set to its file name.")
        if not target.is_file():
            raise ParityError(f"{model}: weight {tensor!r} names external data {loc!r}, which is not in {folder}. "
                              f"Note: keep the data file beside the model when copying it.")


def input_paths(s: CompareSettings) -> list[tuple[str, str]]:
    """Every file the run reads, as (what, path): no output may be written over one (:func:`check_no_clobber`)."""
    from parity.core.feeds import python_spec_file

    out: list[tuple[str, str]] = []
    if Path(s.model).is_file():
        out.append(("model file", s.model))
        if s.model.endswith(".onnx"):
            from parity.lib.onnx.models import external_data

            out += [("external data of the model", str(Path(s.model).parent / loc))
                    for loc in sorted({loc for _t, loc in external_data(s.model)})]
    elif model_src := python_spec_file(s.model):
        out.append((f"the source file of model {s.model}", model_src))
    if isinstance(s.inputs, MemoryFeeds):
        pass  # arrays in memory: no file to protect
    elif s.inputs and is_python_dataset(s.inputs):
        if data_src := python_spec_file(s.inputs):
            out.append((f"the source file of dataset {s.inputs}", data_src))
    elif s.inputs:
        out.append(("--inputs", s.inputs))
    calibration = None if isinstance(s.calibration, MemoryFeeds) else s.calibration
    for option, path in (("--state-dict", s.source_options.get("state_dict")), ("--calibration", calibration),
                         ("--mapping", s.mapping), ("--target-dump", s.target_dump),
                         ("--target-onnx", s.target_onnx), ("--layer-info", s.layer_info),
                         ("--layers", s.layers[1:] if s.layers and s.layers.startswith("@") else None)):
        if path:
            out.append((option, str(path)))
    return out


def prepare(s: CompareSettings) -> Prepared:
    """Resolve sources, model, input specs, feeds and calibration feeds (used by compare and fix)."""
    ref_src, tgt_src = check_settings(s)
    from parity.core.registry import check_run_fields, check_source_options

    # typed and checked against both sides' schemas: an unknown key or a bad value stops here (exit 2)
    options = check_source_options(tgt_src, s.source_options, ref_src)
    cfg = RunConfig(model=s.model, device=s.device, workdir=check_workdir(s.workdir),
                    input_shapes=dict(s.input_shapes), options=options,
                    layers=layer_selection(s), step_bytes=s.step_bytes)
    check_run_fields(tgt_src, cfg)  # keep_high_precision (a --config) on a target that cannot: refused
    log.info("cache folder (exports, converted models, engines): %s", cfg.workdir)
    if "" in cfg.input_shapes:
        cfg.input_shapes = _name_lone_shape(cfg, ref_src, tgt_src)
        s = replace(s, input_shapes=dict(cfg.input_shapes))
    try:
        specs = _specs(ref_src, tgt_src, cfg)
    except ParityError:
        if not s.inputs or (not isinstance(s.inputs, MemoryFeeds) and is_python_dataset(s.inputs)):
            raise
        # the model declares no shapes (a TorchScript module): take them from the inputs
        cfg.input_shapes = _shapes_from_inputs(s.inputs, cfg, ref_src, tgt_src)
        specs = _specs(ref_src, tgt_src, cfg)
    if s.target_dump:  # a dump holds one run: compare it on the input it was made from
        s = replace(s, limit=1)
    feeds = make_feeds(s, specs)
    if isinstance(s.calibration, MemoryFeeds):
        cfg.calibration = [f for _, f in s.calibration.bound(_free_batch(specs))]
    elif s.calibration:
        cfg.calibration = [f for _, f in load_feeds(s.calibration, _free_batch(specs))]
    else:  # the same first feeds in every worker, so every shard calibrates alike
        cfg.calibration = LazyFeeds(feeds, CALIBRATION_FEEDS, CALIBRATION_BYTES)  # type: ignore[assignment]
    return Prepared(ref_src, tgt_src, cfg, feeds)


def layer_selection(s: CompareSettings) -> LayerSelection | None:
    """``--layers`` as the contract's selection (checked here: a bad regex fails before any model runs)."""
    from parity.core.parse import parse_layers

    return parse_layers(s.layers, s.layer_names)


def _selected(stream: Iterable[Activation], sel: LayerSelection | None) -> Iterator[Activation]:
    """Records ``sel`` selects (and every model output), whatever the source captured."""
    for a in stream:
        if sel is None or a.meta.get("is_output") or sel.selects(
                a.name, a.key, a.meta.get("module_path"), a.meta.get("onnx_node"), a.meta.get("node"),
                a.meta.get("within")):
            yield a


_TORCHSCRIPT_HEAD = "The following operation failed in the TorchScript interpreter"


def _run_failure(e: ParityError, feed: dict[str, np.ndarray], label: str) -> ParityError:
    """A framework's failure on a feed, with the feed's shapes and the line that names the fault.

    A TorchScript error's first line only says that an operation failed; its last line says which
    and why (``mat1 and mat2 shapes cannot be multiplied``), so that line replaces it.
    """
    cause = e.__cause__
    if cause is None or isinstance(cause, ParityError):
        return e
    msg = str(e).rstrip(".")
    if _TORCHSCRIPT_HEAD in msg:
        lines = [ln.strip() for ln in str(cause).strip().splitlines() if ln.strip()]
        if lines:
            head = first_line(cause, typed=True)
            last = lines[-1] if ":" in lines[-1] else f"{type(cause).__name__}: {lines[-1]}"
            msg = msg.replace(head.rstrip("."), last) if head.rstrip(".") in msg else f"{msg}: {last}"
    fed = ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in feed.items())
    out = ParityError(f"{msg}; inputs were {fed} ({label}).")
    out.exit_code = e.exit_code
    return out


def compare(s: CompareSettings) -> Report:
    """Run the comparison over every feed and return the report (summary carries agreement and match stats).

    With ``workers > 1`` or a Ray address the feeds are sharded over Ray workers
    (:mod:`parity.core.workers`); the report is the same as this process would give.
    """
    if s.workers > 1 or s.ray_address:
        from parity.core.workers import compare_sharded

        return compare_sharded(s, sharding_steps())
    from parity.lib.onnx.models import one_export_per_run

    with one_export_per_run():
        prep = prepare(s)
        with save_dumps(s) as (staged, done):
            stats = done(run_feeds(prep, staged, prep.feeds.iter(), total=prep.feeds.known_length()))
    return finish(s, stats)


def sharding_steps() -> Any:
    """This module's steps as :func:`parity.core.workers.compare_sharded` runs them (a
    :class:`parity.core.workers.Steps`): handed over, so that module never imports this one."""
    from parity.core.workers import Steps

    return Steps(check_settings, prepare, run_feeds, finish, save_dumps)


@contextlib.contextmanager
def save_dumps(s: CompareSettings) -> Iterator[tuple[CompareSettings, Callable[[DatasetStats], DatasetStats]]]:
    """``--save-ref``/``--save-target``: ONE dump per side, whatever the number of feeds.

    Yields the settings to run with (each save path replaced by a hidden staging folder that
    :func:`run_feeds` writes one dump per feed into, at ``feed_dump_path``: Ray workers write into
    the same folder) and ``done(stats)``, which moves each side's dump into place: the lone feed's
    dump for one feed, else a folder of the feeds' dumps with its feeds manifest
    (docs/formats.md). If the run fails or is interrupted, the staging is removed: nothing appears.
    """
    from parity.core.dumps import FeedDumpWriter

    writers: dict[str, FeedDumpWriter] = {}
    try:
        for name in ("save_ref", "save_target"):
            path = getattr(s, name)
            if path:
                writers[name] = FeedDumpWriter(path, s.save_format)
                writers[name].start()
        staged = replace(s, **{k: str(w.staging) for k, w in writers.items()}) if writers else s

        def done(stats: DatasetStats) -> DatasetStats:
            for w in writers.values():
                w.finish(stats.labels)
            return stats

        yield staged, done
    except BaseException:
        for w in writers.values():
            w.abort()
        raise


def run_feeds(prep: Prepared, s: CompareSettings, feeds: Iterable[Feed], total: int | None = None,
              stats: DatasetStats | None = None) -> DatasetStats:
    """Compare reference and target on each feed as it is read, folding each into dataset statistics.

    Why fold at once: a dataset of thousands of feeds keeps only per-layer statistics, never a
    report per feed. A Ray worker calls this on its shard; the driver merges the shards' results.
    """
    from parity.core.registry import get_matcher

    ref_src, tgt_src, cfg = prep.ref, prep.target, prep.cfg
    rules = MappingRules.load(s.mapping) if s.mapping else MappingRules()
    stats = stats if stats is not None else DatasetStats()
    stats.labels_of_sides = (s.ref, tgt_src.name)
    asked = bool(s.metric_options.get("top1"))
    mopts = {**s.metric_options, "ranges": True} if s.diagnose else s.metric_options
    ms = resolve_metrics(s.metrics)
    wants = capture_wants(s, get_matcher(s.matcher))
    if wants is not None:  # one config object for the whole run (sources key what they reuse on it)
        cfg = replace(cfg, wants=wants)
    if device_records(s.device_scoring, s.device):  # pairs are scored where the tensors are
        cfg = replace(cfg, device_records=True)
    deploy = tgt_src.runs_deployed
    if deploy:  # one config object for the whole run, so sources can reuse what they built for it
        # a source that cannot run outputs only is asked for its ordinary run (its outputs are kept)
        dcfg = replace(cfg, outputs_only=tgt_src.supports_outputs_only, wants=None, device_records=False)
        if stats.deployed is None:
            stats.deployed = DeployedStats(semantics=tgt_src.semantics)
        dinfos = metric_infos(ms, s.thresholds)
    for feed in track(feeds, "capture input", total=total):
        k, label, arrays = feed.index, feed.label, feed.arrays
        rtap, ttap = _OutputTap(asked, keep=deploy), _OutputTap(asked, keep=deploy)
        matcher = get_matcher(s.matcher)
        ref_stream = rtap(_selected(ref_src.run(cfg, arrays), cfg.layers))
        if wants is not None:  # the target then captures only what this feed's reference can pair with
            wants.reset()
            ref_stream = learning(wants, ref_stream, normalize_name)
        tgt_stream = ttap(_selected(tgt_src.run(cfg, arrays), cfg.layers))
        if s.save_ref:  # a staging folder here (see save_dumps): one dump per feed inside it
            ref_stream = _tee_to_dump(ref_stream, feed_dump_path(s.save_ref, k), s.save_format)
        if s.save_target:
            tgt_stream = _tee_to_dump(tgt_stream, feed_dump_path(s.save_target, k), s.save_format)
        try:
            pairs, mctx = match_pairs(matcher, ref_stream, tgt_stream, rules, max_memory=s.max_memory,
                                      device_memory=s.device_memory)
            rep = run_engine(pairs, ms, thresholds=s.thresholds, options=mopts,
                             ref_label=s.ref, target_label=tgt_src.name)
        except ParityError as e:
            failure = _run_failure(e, arrays, label)
            if failure is e:
                raise
            raise failure from e.__cause__
        if s.diagnose:
            _attach_local(s, tgt_src, cfg, arrays, rep, ms, k)
        for key, v in mctx.stats.items():
            stats.match_stats[key] = stats.match_stats.get(key, 0) + v
        if wants is not None:
            stats.capture_skipped += wants.skipped
        if deploy:  # the target as deployed: outputs only, nothing captured (see parity.core.deployed)
            dtap = _OutputTap(asked)
            deployed = collect_outputs(dtap(tgt_src.run(dcfg, arrays)))
            if k == 0:  # run-to-run noise, on the dataset's first feed whichever worker has it
                again = collect_outputs(tgt_src.run(dcfg, arrays))
                stats.deployed.noise = max([stats.deployed.noise] + [
                    relative_diff(again[p].array, deployed[p].array) for p in deployed if p in again])
            stats.deployed.add(k, rtap.outputs, ttap.outputs, deployed, ms, dinfos, s.metric_options)
            ttap = dtap  # top-1 agreement is the deployed model's
            del deployed
        if 0 in rtap.top1 and 0 in ttap.top1 and rtap.top1[0].shape == ttap.top1[0].shape:
            stats.agree += int((rtap.top1[0] == ttap.top1[0]).sum())
            stats.top1_total += int(rtap.top1[0].size)
        stats.add(k, label, rep)
        del rep, pairs
    return stats


def capture_wants(s: CompareSettings, matcher: Any) -> CaptureWants | None:
    """The run's :class:`CaptureWants` when the target may capture only what can pair (issue 19), else None.

    Why not always: ``--all-tensors`` asks for every tensor; ``--diagnose`` reads the rows around a
    culprit, target-only ones included; ``--save-target`` writes a dump that should be whole; a
    ``--mapping`` file may pin any tensor; a matcher that pairs by other rules than
    :meth:`CaptureWants.selects` allows (``Matcher.pairs_within_wants`` False) may need any tensor.
    """
    if s.all_tensors or s.diagnose or s.save_target or s.mapping:
        return None
    if not getattr(matcher, "pairs_within_wants", False):
        return None
    return CaptureWants()


def _attach_local(s: CompareSettings, tgt_src: Source, cfg: RunConfig, feed: dict[str, np.ndarray],
                  rep: Report, ms: list, k: int) -> None:
    """``--diagnose``: each layer run alone in the target, scored into the feed's report rows."""
    from parity.core.capabilities import offers

    if not offers(tgt_src, Capability.RUN_LAYER_ALONE):
        rep.summary["local_unavailable"] = f"source {s.target!r} offers no local runs"
        return
    from parity.core.diagnose import attach_local, score_local

    try:
        runs = track(tgt_src.local_errors(cfg, feed), f"layers run alone (input {k + 1})")
        if cfg.layers is not None:  # --layers: rows exist only for selected layers; score no other
            names = {r.target_name for r in rep.layers if r.target_name}
            runs = (r for r in runs if r.key in names)
        n_local = attach_local(rep, dict(score_local(runs, ms, s.metric_options,
                                                          getattr(tgt_src, "number_format", None))))
    except ParityError as e:  # no local runs for this model: the rest of the diagnosis stands
        rep.summary["local_unavailable"] = str(e)
    else:
        if not n_local:
            rep.summary["local_unavailable"] = f"source {s.target!r} produced no local runs"


def finish(s: CompareSettings, stats: DatasetStats) -> Report:
    """The dataset's report from its statistics: rows, agreement, match counts, and the diagnosis."""
    if stats.inputs == 0:
        raise ParityError("no input was compared. Note: the input source yielded nothing.")
    infos = metric_infos(resolve_metrics(s.metrics), s.thresholds)
    ref_label, target_label = stats.labels_of_sides or (s.ref, s.target)
    report = stats.report(infos, ref_label, target_label)
    n = stats.inputs
    summary: dict[str, Any] = {"inputs": n, "model": s.model}
    if stats.top1_total:
        summary["top-1 agreement"] = f"{100.0 * stats.agree / stats.top1_total:.2f}% of {stats.top1_total} samples"
        summary["top1_agreement"] = stats.agree / stats.top1_total
    by = {k: v // n for k, v in stats.match_stats.items() if v}
    if by:
        summary["matched by"] = ", ".join(f"{k} {v}" for k, v in by.items())
        summary["matched_by"] = by
        matched = sum(v for k, v in by.items() if not k.startswith("excluded"))
        if matched:
            summary["provenance_share"] = by.get("provenance", 0) / matched
    if stats.capture_skipped:  # the JSON's field, and the table's line (a key without '_' is printed)
        skipped = stats.capture_skipped // n
        summary["capture"] = {"skipped": skipped, "all_tensors": "--all-tensors"}
        summary["not captured"] = (f"{skipped} target tensors no reference layer can pair with "
                                   "(--all-tensors, all_tensors=True in Python, captures them)")
    report.summary.update(summary)
    if stats.deployed is not None and stats.deployed.outputs:
        _attach_deployed(report, stats.deployed)
    if s.diagnose:
        from parity.core.diagnose import find_culprits, target_format, trace_ranges

        trace_ranges(report, target_format(s.target, report.layers[0] if report.layers else None))
        find_culprits(report)
    return report


def _attach_deployed(report: Report, dep: DeployedStats) -> None:
    """The deployed-outputs check into the report: ``summary["deployed"]``, and a note on every row
    when capture changed the outputs (the rows then describe a run that is not the deployed one)."""
    report.summary["deployed"] = dep.summary(report.primary)
    if report.summary["deployed"]["perturbed"]:
        for r in report.layers:
            r.meta["capture_perturbed"] = True
            r.notes.append("capture perturbed the target run: this row is of the captured run, not of the deployed one")


def gate(report: Report, fail_under: float | None = None) -> list[str]:
    """Why ``report`` fails as a comparison, one line each; empty when it passes.

    The one exit rule of compare, analyze and fix (``parity`` exits 1 on any reason, unless
    ``--exit-zero``): a layer gained NaN/Inf, a pair has different shapes, nothing was compared,
    or a layer's primary metric is worse than the bound: ``fail_under`` (``--fail-under``) when
    given, else the primary metric's threshold (none for a metric without one, e.g. l2).
    """
    from parity.contract.report import NONFINITE, SHAPE_MISMATCH

    p = report.primary
    out: list[str] = []
    if p is None or report.worst_value(p.name) is None:
        return ["no layer was compared"]
    dep = report.summary.get("deployed") or {}
    if dep.get("perturbed"):  # the captured run is not the deployed one: judge what is deployed
        bound = fail_under if fail_under is not None else p.threshold
        return deployed_failures(dep, p, bound)
    nonfinite = [r for r in report.layers if r.status == NONFINITE]
    if nonfinite:
        out.append(f"{len(nonfinite)} layers produce NaN/Inf where the reference is finite, first "
                   f"{nonfinite[0].name}")
    shapes = [r for r in report.layers if r.status == SHAPE_MISMATCH]
    if shapes:
        r = shapes[0]
        out.append(f"{len(shapes)} paired layers differ in shape, first {r.name} "
                   f"({list(r.ref_shape or [])} vs {list(r.target_shape or [])})")
    bound = fail_under if fail_under is not None else p.threshold
    if bound is not None:
        worse = [r for r in report.matched if r.status not in (NONFINITE, SHAPE_MISMATCH) and p.name in r.values
                 and p.fails(r.worst.get(p.name, r.values.get(p.name)), bound)]
        if worse:
            w = worse[0]
            v = w.worst.get(p.name, w.values.get(p.name))
            side = "below" if p.higher_is_better else "above"
            what = "--fail-under" if fail_under is not None else "the threshold"
            out.append(f"{len(worse)} layers have {p.name} {side} {what} {bound:g}, first {w.name} ({p.format(v)})")
    return out

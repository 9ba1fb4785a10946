"""The Python API for notebooks, scripts and tests: ``parity.compare(model, inputs, target="ort-fp16")``.

It builds the same :class:`~parity.core.compare.CompareSettings` the CLI builds and calls the same
:func:`parity.core.compare.compare` and :func:`parity.core.fix.fix`. What it adds is taking objects
as well as files: an ``nn.Module`` reaches the sources through an in-process reference (never
pickled; :func:`parity.lib.torch_loader.register_memory_model`), an ONNX ``ModelProto`` is saved
once into the cache folder under its digest, and in-memory inputs are written as ``.npy``/``.npz``
feed files into a temporary folder that lives as long as the returned report.
"""
from __future__ import annotations

import hashlib
import html
import io
import logging
import math
import os
import shutil
import sys
import tempfile
import weakref
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from parity.contract.atomic import atomic_path
from parity.contract.errors import ParityError, UsageError
from parity.contract.frontend import speaking
from parity.contract.progress import step
from parity.contract.report import LayerResult, Report, culprit_groups
from parity.core.compare import CompareSettings

__all__ = ["ComparisonReport", "compare", "run_fix"]

log = logging.getLogger("parity")


def _torch_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # an nn.Module means torch is imported already: never import it here
    return torch is not None and isinstance(obj, torch.nn.Module)


def _onnx_proto(obj: Any) -> bool:
    onnx = sys.modules.get("onnx")
    return onnx is not None and isinstance(obj, onnx.ModelProto)


def model_reference(model: Any, workdir: Path) -> tuple[str, str, Any]:
    """``(what the sources get as cfg.model, how reports name it, the object to keep alive)``."""
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model), os.fspath(model), None
    if _torch_module(model):
        from parity.lib.torch_loader import register_memory_model

        label = type(model).__name__
        return register_memory_model(model, label), f"{label} (nn.Module in memory)", model
    if _onnx_proto(model):
        try:
            data = model.SerializeToString()
        except Exception as e:  # a proto over 2 GB cannot be serialized in one piece
            raise ParityError(f"the ONNX ModelProto cannot be serialized ({type(e).__name__}: {e}). Note: save it "
                              f"with onnx.save(..., save_as_external_data=True) and pass the path") from None
        name = model.graph.name or "model"
        out = workdir / "onnx" / f"memory-{hashlib.sha256(data).hexdigest()[:20]}.onnx"
        if not out.is_file():
            with atomic_path(out) as tmp:
                Path(tmp).write_bytes(data)
        log.info("ONNX ModelProto %r saved for the sources as %s", name, out)
        return str(out), f"{name} (ONNX ModelProto in memory)", None
    raise ParityError(f"model: a {type(model).__name__} is not a model parity can run. Note: give a torch.nn.Module, "
                      f"an onnx.ModelProto, a path (.onnx, .pt, .pt2) or a spec 'package.module:factory'")


def default_ref(model: Any) -> str:
    """The reference when none is named: ONNX Runtime fp32 (``ort``) for an ONNX model (a ``.onnx``
    path or an ``onnx.ModelProto``), which torch cannot run; ``torch`` for everything else.
    ``parity compare model.onnx`` without ``--ref`` uses the same rule."""
    if _onnx_proto(model):
        return "ort"
    if isinstance(model, (str, os.PathLike)):
        from parity.lib.onnx.models import is_onnx_file

        return "ort" if is_onnx_file(os.fspath(model)) else "torch"
    return "torch"


def _array(x: Any, where: str) -> np.ndarray:
    """A tensor or array as a numpy array (a torch tensor detached and moved to the CPU)."""
    if type(x).__module__.startswith("torch"):
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":  # numpy has no bfloat16: the model casts it back
            t = t.float()
        x = t.numpy()
    a = np.asarray(x)
    if a.dtype == object:
        raise ParityError(f"inputs: {where} is not numeric (a {type(x).__name__} holding objects). Note: give "
                          f"tensors or numeric arrays")
    return a


def _tensor_like(x: Any) -> bool:
    return hasattr(x, "shape") or hasattr(x, "__array__")


def _positional(feed: Any) -> bool:
    """A tuple of tensors is one call's positional inputs, ``model(*feed)`` (as ``torch.onnx.export``
    takes its args); a list is several feeds."""
    return isinstance(feed, tuple) and bool(feed) and all(_tensor_like(v) for v in feed)


def _feeds(inputs: Any) -> Iterator[Any]:
    """One feed per element: a lone tensor/array, a dict of them, a tuple of positional tensors, or a
    list/iterable of those (streamed)."""
    if isinstance(inputs, Mapping) or _tensor_like(inputs) or _positional(inputs):
        yield inputs
        return
    if isinstance(inputs, (str, bytes)):
        raise ParityError("inputs: a string is not inputs here. Note: pass a path or a dataset spec "
                          "'module:function' as inputs_path=..., or tensors/arrays/dicts")
    try:
        it = iter(inputs)
    except TypeError:
        raise ParityError(f"inputs: a {type(inputs).__name__} is not inputs. Note: give a tensor, an array, a dict "
                          f"name -> tensor, or a list of those (one feed each)") from None
    n = 0
    for feed in it:
        n += 1
        yield feed
    if not n:
        raise ParityError("inputs: the iterable gave no feed. Note: give at least one tensor, array or dict")


def write_feeds(inputs: Any, folder: Path, names: Callable[[], list[str] | None] | None = None) -> Path:
    """In-memory inputs as the feed files :func:`parity.core.inputs.load_feeds` reads (one file per feed,
    ``feed-000000.npy`` for a lone array, ``.npz`` keyed by input name for a dict or a tuple of
    positional inputs, named by ``names()``, the model's input names), written as the iterable yields
    them, so a generator of thousands of feeds is never held at once."""
    folder.mkdir(parents=True, exist_ok=True)
    known: list[str] | None = None
    for k, feed in enumerate(_feeds(inputs)):
        if _positional(feed):
            if known is None:
                known = (names() if names is not None else None) or []
            if not known:
                raise ParityError(f"inputs: feed {k} is a tuple of {len(feed)} positional inputs, but the model's "
                                  f"input names are unknown. Note: pass a dict input name -> tensor")
            if len(feed) > len(known):
                raise ParityError(f"inputs: feed {k} is a tuple of {len(feed)} positional inputs (one call, "
                                  f"model(*inputs)), but the model takes {len(known)}: {', '.join(known)}. Note: "
                                  f"pass a list [x1, x2, ...] for several feeds")
            feed = dict(zip(known, feed))
        if isinstance(feed, Mapping):
            arrays = {str(n): _array(v, f"feed {k} input {n!r}") for n, v in feed.items()}
            if not arrays:
                raise ParityError(f"inputs: feed {k} is an empty dict. Note: map input names to tensors")
            with open(folder / f"feed-{k:06d}.npz", "wb") as f:
                np.savez(f, **arrays)
        else:
            np.save(folder / f"feed-{k:06d}.npy", _array(feed, f"feed {k}"), allow_pickle=False)
    return folder


class ComparisonReport(Report):
    """A :class:`Report` that remembers what was compared: ``.culprits``, ``.to_pandas()``, ``.fix()``,
    ``.node_data()`` and an inline HTML view in notebooks (``_repr_html_``)."""

    settings: CompareSettings
    _keep: Any = None

    @classmethod
    def wrap(cls, report: Report, settings: CompareSettings, keep: Any = None) -> "ComparisonReport":
        out = cls(**{f.name: getattr(report, f.name) for f in fields(Report)})
        out.settings, out._keep = settings, keep
        return out

    @property
    def culprits(self) -> list[LayerResult]:
        """The layers that cause the loss, culprit #1 first (needs ``diagnose=True``): the report's one
        ordering (``summary["culprits"]``), which the table, HTML and JUnit show too. The rows that only
        carry a culprit's error are not in it; each names its culprit in ``caused_by``."""
        return [r for r, _ in culprit_groups(self)]

    def to_pandas(self) -> Any:
        """One row per layer: names, op, status, every metric (mean, worst, local), culprit rank."""
        try:
            import pandas as pd
        except ImportError:
            raise ParityError("Report.to_pandas needs pandas, which is not installed. Note: pip install pandas") \
                from None
        rows = []
        for r in self.layers:
            row: dict[str, Any] = {"name": r.name, "ref_name": r.ref_name, "target_name": r.target_name,
                                   "op_type": r.op_type or r.target_op_type, "status": r.status, "match": r.match,
                                   "shape": r.shape}
            for m in self.metrics:
                row[m.name] = r.values.get(m.name, math.nan)
                if r.n_inputs > 1:
                    row[f"{m.name} worst"] = r.worst.get(m.name, math.nan)
                if r.local:
                    row[f"local {m.name}"] = r.local.get(m.name, math.nan)
            row["culprit_rank"] = r.culprit_rank
            rows.append(row)
        return pd.DataFrame(rows)

    def _repr_html_(self) -> str:
        """The HTML report inline (in an iframe, so its styles and scripts stay its own); the table as
        text where no ``html`` reporter is registered."""
        from parity.core.registry import get_reporter

        buf = io.StringIO()
        try:
            get_reporter("html").write(self, buf, {})
        except ParityError:
            get_reporter("table").write(self, buf, {"sort": "order"})
            return f"<pre>{html.escape(buf.getvalue())}</pre>"
        return (f'<iframe srcdoc="{html.escape(buf.getvalue(), quote=True)}" '
                f'style="width:100%;height:720px;border:0" title="parity report"></iframe>')

    def fix(self, goal: str | float = "cosine=0.999", max_steps: int = 24,
            log: Callable[[str], None] | None = None) -> Any:
        """Search and verify layers to keep in fp32 (as ``parity fix``); returns the
        :class:`~parity.core.fix.FixResult` (``.passed``, ``.kept``, ``.forms(target)``)."""
        with speaking("api"):
            metric, value = parse_goal(goal, self.primary.name if self.primary else "cosine")
            return run_fix(self.settings, self, metric, value, max_steps=max_steps, log=log)

    def onnx_model(self) -> Path:
        """The fp32 ONNX graph the target ran: the model itself, or parity's cached export of it (the
        path the report recorded, ``summary["target_onnx"]``; else made again from the settings, e.g.
        for a torch-fp16 target, which runs none)."""
        from parity.core.compare import prepare
        from parity.lib.onnx.models import onnx_model_for

        recorded = self.summary.get("target_onnx")
        if recorded and Path(recorded).is_file():  # what the target ran, as the report recorded it
            return Path(recorded)
        with speaking("api"):
            prep = prepare(self.settings)
            return Path(onnx_model_for(prep.cfg, prep.feeds.first()[1]).path)

    def node_data(self, folder: str | os.PathLike) -> list[Path]:
        """Model Explorer overlays of this report on :meth:`onnx_model` (see :mod:`parity.core.view`)."""
        from parity.core.view import write_node_data

        return write_node_data(self, self.onnx_model(), Path(folder))


def parse_goal(goal: str | float, primary: str) -> tuple[str, float]:
    """``"cosine=0.999"`` or ``0.999`` (the primary metric) as (metric, value), checked against the metric."""
    from parity.core.preflight import check_metric_value
    from parity.core.registry import get_metric

    if isinstance(goal, (int, float)):
        name, value = primary, float(goal)
    else:
        name, sep, val = str(goal).rpartition("=")
        name = name.strip() if sep else primary
        try:
            value = float(val)
        except ValueError:
            raise UsageError(f"goal {goal!r}: expected METRIC=VALUE, e.g. cosine=0.999") from None
    check_metric_value(get_metric(name), value, f"goal {goal}")
    return name, value


def run_fix(settings: CompareSettings, report: Report, goal_metric: str, goal: float, max_steps: int = 24,
            log: Callable[[str], None] | None = None) -> Any:
    """:func:`parity.core.fix.fix` with each step shown as progress (the CLI's ``parity fix`` calls this)."""
    from parity.core.fix import fix

    with step(f"fix: search layers to keep in fp32 for {goal_metric} {goal:g}") as task:
        def say(message: str) -> None:
            task.update(f"fix: {message}")
            if log is not None:
                log(message)

        return fix(settings, report, goal_metric, goal, max_steps=max_steps, log=say)


def _thresholds(threshold: float | Mapping[str, float] | None, metrics: Sequence[str] | None) -> dict[str, float]:
    from parity.core.engine import DEFAULT_METRICS
    from parity.core.preflight import check_metric_value
    from parity.core.registry import get_metric

    if threshold is None:
        return {}
    selected = list(metrics or DEFAULT_METRICS)
    given = {selected[0]: threshold} if isinstance(threshold, (int, float)) else dict(threshold)
    out = {}
    for name, value in given.items():
        if name not in selected:
            raise UsageError(f"threshold: metric {name!r} is not selected. Note: selected are {', '.join(selected)}")
        out[name] = check_metric_value(get_metric(name), float(value), f"threshold {name}={value}")
    return out


def _model_input_names(model: Any, ref_model: str, ref: str, target: str, cache: Path,
                       options: Mapping[str, Any] | None) -> list[str] | None:
    """The model's input names in call order, to name a tuple of positional inputs: a module's
    ``forward`` signature, an ONNX graph's inputs, else what the sources say (a spec, a torch file)."""
    if _torch_module(model):
        from parity.lib.torch_loader import module_input_names

        return module_input_names(model)
    from parity.lib.onnx.models import is_onnx_file

    if _onnx_proto(model) or is_onnx_file(ref_model):
        from parity.lib.onnx.graph import load_model, model_inputs

        proto = model if _onnx_proto(model) else load_model(ref_model, what="model")
        return [i.name for i in model_inputs(proto)]
    from parity.contract.source import RunConfig
    from parity.core.compare import _input_names, _source

    cfg = RunConfig(model=ref_model, workdir=cache, options=dict(options or {}))
    return _input_names(cfg, _source(ref, "reference"), _source(target, "target"))


def _shapes_and_dtypes(input_shapes: Mapping[str, Any] | None, input_dtypes: Mapping[str, Any] | None,
                       ) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """``input_shapes={"x": (1, 3, 224, 224), "ids": ((1, 16), "int64")}`` and ``input_dtypes={"ids":
    torch.int64}`` as the settings' shapes and numpy dtype names (the ``(shape, dtype)`` pair is the
    form a model's ``parity_input_shapes`` declaration takes too)."""
    from parity.core.inputs import input_dtype

    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for name, value in (input_shapes or {}).items():
        name = str(name)
        if (isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], (tuple, list))
                and not isinstance(value[1], (int, np.integer))):
            value, dtypes[name] = value[0], input_dtype(value[1], name)
        try:
            dims = tuple(int(d) for d in value)
        except (TypeError, ValueError):
            raise UsageError(f"input_shapes[{name!r}] = {value!r} is not a shape. Note: give a tuple of sizes such "
                             f"as (1, 3, 224, 224), or (shape, dtype) such as ((1, 16), 'int64')") from None
        if not dims or min(dims) < 1:
            raise UsageError(f"input_shapes[{name!r}] = {value!r}: every size must be at least 1 (an empty input "
                             f"compares nothing). Note: e.g. (1, 3, 224, 224)")
        shapes[name] = dims
    for name, value in (input_dtypes or {}).items():
        dtypes[str(name)] = input_dtype(value, str(name))
    return shapes, dtypes


@speaking("api")  # errors name this function's parameters (input_shapes=...), not CLI flags
def compare(model: Any, inputs: Any = None, *, ref: str | None = None, target: str = "ort-fp16",
            diagnose: bool = True, metrics: Sequence[str] | None = None,
            threshold: float | Mapping[str, float] | None = None, input_shapes: Mapping[str, Any] | None = None,
            input_dtypes: Mapping[str, Any] | None = None, seed: int = 0, random_inputs: int = 1, device: str = "cpu", workdir: str | os.PathLike | None = None,
            options: Mapping[str, Any] | None = None, metric_options: Mapping[str, Any] | None = None,
            matcher: str = "auto", mapping: str | None = None, calibration: Any = None,
            inputs_path: str | os.PathLike | None = None, quiet: bool = False, workers: int = 1,
            ray_address: str | None = None, layers: str | Sequence[str] | None = None,
            max_memory: int | None = None, step_bytes: int | None = None,
            limit: int | None = None) -> ComparisonReport:
    """Compare ``model`` in ``ref`` and ``target`` layer by layer, as ``parity compare --diagnose`` does.

    ``model``: an ``nn.Module``, an ONNX ``ModelProto``, a path (``.onnx``, ``.pt``, ``.pt2``) or a spec
    ``package.module:factory``. ``ref``: the reference source; by default ``ort`` (ONNX Runtime fp32) for an
    ONNX model, else ``torch``. ``inputs``: a tensor or array, a dict input name -> tensor, a tuple of
    tensors (one call's positional inputs, ``model(x, y)``), or a list (any iterable) of those, one feed
    each; ``None`` makes random ones from the model's shapes (``input_shapes={"x": (1, 3, 224, 224)}``;
    a dtype as ``{"input_ids": ((1, 16), "int64")}`` or ``input_dtypes={"input_ids": torch.int64}``; an
    input the model indexes an ``nn.Embedding`` with is found to be int64 without it). ``inputs_path``/``calibration`` also take files as the CLI;
    ``inputs_path`` also a folder of thousands of feeds (streamed) or a dataset spec ``module:function``.
    ``workers``/``ray_address`` shard the feeds over Ray workers (the model must then be a path or a spec);
    ``layers`` (a regex, or a list of names) compares only those layers; ``max_memory``/``step_bytes``
    bound the bytes of parked and captured activations; ``limit`` the number of feeds.
    ``options`` are source options (``keep_fp32_ops``, ``opset``, ...). Progress shows on a terminal
    unless ``quiet``. Errors are :class:`~parity.ParityError` with one line saying what is wrong.
    """
    from parity.contract.options import check_seed
    from parity.core.compare import compare as run
    from parity.core.preflight import check_workdir
    from parity.core.progress import showing

    if ref is None:
        ref = default_ref(model)
    if inputs is not None and inputs_path is not None:
        raise UsageError("give either inputs or inputs_path, not both")
    seed = check_seed(seed)
    shapes, dtypes = _shapes_and_dtypes(input_shapes, input_dtypes)
    cache = check_workdir(workdir)
    if (workers > 1 or ray_address) and _torch_module(model):
        raise ParityError("model: an nn.Module in memory cannot be sent to Ray workers. Note: pass a path "
                          "(.pt2, .onnx) or a spec 'package.module:factory' with workers")
    ref_model, label, keep = model_reference(model, cache)
    tmp = Path(tempfile.mkdtemp(prefix="parity-inputs-", dir=cache))

    def names() -> list[str] | None:
        return _model_input_names(model, ref_model, ref, target, cache, options)

    try:
        feeds_path = str(write_feeds(inputs, tmp / "inputs", names)) if inputs is not None else \
            (os.fspath(inputs_path) if inputs_path is not None else None)
        calib_path = None
        if calibration is not None:
            calib_path = os.fspath(calibration) if isinstance(calibration, (str, os.PathLike)) else \
                str(write_feeds(calibration, tmp / "calibration", names))
        settings = CompareSettings(
            model=ref_model, ref=ref, target=target, inputs=feeds_path,
            input_shapes=shapes, input_dtypes=dtypes, seed=seed,
            random_inputs=random_inputs, device=device, workdir=str(cache), metrics=list(metrics) if metrics else None,
            thresholds=_thresholds(threshold, metrics), metric_options=dict(metric_options or {}),
            source_options=dict(options or {}), mapping=mapping, matcher=matcher, calibration=calib_path,
            diagnose=diagnose, workers=workers, ray_address=ray_address,
            layers=layers if isinstance(layers, str) or layers is None else None,
            layer_names=() if isinstance(layers, str) or layers is None else tuple(layers),
            max_memory=max_memory, step_bytes=step_bytes, limit=limit)
        with showing(quiet=quiet):
            report = run(settings)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.summary["model"] = label
    out = ComparisonReport.wrap(report, settings, keep)
    weakref.finalize(out, shutil.rmtree, str(tmp), True)  # the feed files live as long as the report
    return out

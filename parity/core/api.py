"""The Python API for notebooks, scripts and tests: ``parity.compare(model, inputs, target="ort-fp16")``.

It builds the same :class:`~parity.core.settings.CompareSettings` the CLI builds and calls the same
:func:`parity.core.compare.compare` and :func:`parity.core.fix.fix`. What it adds is taking objects
as well as files: an ``nn.Module`` reaches the sources through an in-process reference (never
pickled; :func:`parity.lib.torch_loader.register_memory_model`), an ONNX ``ModelProto`` is saved
once into the cache folder under its digest, and in-memory inputs are fed as they are
(:class:`~parity.core.feeds.MemoryFeeds`: no file is written). Both front doors build their settings
with :func:`parity.core.settings.build` and parse values with :mod:`parity.core.parse`.
"""
from __future__ import annotations

import hashlib
import html
import io
import logging
import math
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from parity.contract.atomic import atomic_path
from parity.contract.errors import ParityError, UsageError
from parity.contract.frontend import speaking
from parity.contract.progress import step
from parity.contract.report import LayerResult, Report, culprit_groups
from parity.core.parse import parse_goal
from parity.core.settings import CompareSettings

__all__ = ["ComparisonReport", "compare", "run_fix", "settings_for"]

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
            limit: int | None = None, all_tensors: bool = False, device_scoring: str | bool = "auto",
            device_memory: int | str | None = None) -> ComparisonReport:
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
    bound the bytes of parked and captured activations; ``limit`` the number of feeds; ``all_tensors``
    captures the target tensors no reference layer can pair with too (``diagnose`` does anyway);
    ``device_scoring`` (auto, on, off) scores pairs where the tensors are (auto: on with ``device="cuda"``),
    ``device_memory`` bounds the bytes of device records parked on the device.
    ``options`` are source options (``keep_fp32_ops``, ``opset``, ...). Progress shows on a terminal
    unless ``quiet``. Errors are :class:`~parity.ParityError` with one line saying what is wrong.
    """
    from parity.core.compare import compare as run
    from parity.core.progress import showing

    settings, label, keep = settings_for(
        model, inputs, ref=ref, target=target, diagnose=diagnose, metrics=metrics, threshold=threshold,
        input_shapes=input_shapes, input_dtypes=input_dtypes, seed=seed, random_inputs=random_inputs, device=device,
        workdir=workdir, options=options, metric_options=metric_options, matcher=matcher, mapping=mapping,
        calibration=calibration, inputs_path=inputs_path, workers=workers, ray_address=ray_address, layers=layers,
        max_memory=max_memory, step_bytes=step_bytes, limit=limit, all_tensors=all_tensors,
        device_scoring=device_scoring, device_memory=device_memory)
    with showing(quiet=quiet):
        report = run(settings)
    report.summary["model"] = label
    return ComparisonReport.wrap(report, settings, keep)


@speaking("api")
def settings_for(model: Any, inputs: Any = None, *, ref: str | None = None, target: str = "ort-fp16",
                 diagnose: bool = True, metrics: Sequence[str] | None = None,
                 threshold: str | float | Mapping[str, float] | None = None,
                 input_shapes: Mapping[str, Any] | None = None, input_dtypes: Mapping[str, Any] | None = None,
                 seed: int = 0, random_inputs: int = 1, device: str = "cpu", workdir: str | os.PathLike | None = None,
                 options: Mapping[str, Any] | None = None, metric_options: Mapping[str, Any] | None = None,
                 matcher: str = "auto", mapping: str | None = None, calibration: Any = None,
                 inputs_path: str | os.PathLike | None = None, workers: int = 1, ray_address: str | None = None,
                 layers: str | Sequence[str] | None = None, max_memory: str | int | None = None,
                 step_bytes: str | int | None = None, limit: int | None = None,
                 all_tensors: bool = False, device_scoring: str | bool = "auto",
                 device_memory: int | str | None = None) -> tuple[CompareSettings, str, Any]:
    """What :func:`compare` runs: ``(settings, how the report names the model, the object to keep alive)``.

    The settings come from :func:`parity.core.settings.build`, the builder the CLI uses; in-memory
    inputs and calibration data become :class:`~parity.core.feeds.MemoryFeeds` (fed as they are).
    """
    from parity.contract.options import check_seed
    from parity.core.feeds import MemoryFeeds
    from parity.core.preflight import check_workdir
    from parity.core.settings import build

    if ref is None:
        ref = default_ref(model)
    if inputs is not None and inputs_path is not None:
        raise UsageError("give either inputs or inputs_path, not both")
    seed = check_seed(seed)
    cache = check_workdir(workdir)
    if (workers > 1 or ray_address) and _torch_module(model):
        raise ParityError("model: an nn.Module in memory cannot be sent to Ray workers. Note: pass a path "
                          "(.pt2, .onnx) or a spec 'package.module:factory' with workers")
    ref_model, label, keep = model_reference(model, cache)

    def names() -> list[str] | None:
        return _model_input_names(model, ref_model, ref, target, cache, options)

    feeds: str | MemoryFeeds | None = MemoryFeeds(obj=inputs, names=names) if inputs is not None else \
        (os.fspath(inputs_path) if inputs_path is not None else None)
    calib: str | MemoryFeeds | None = None
    if calibration is not None:
        calib = os.fspath(calibration) if isinstance(calibration, (str, os.PathLike)) else \
            MemoryFeeds(obj=calibration, names=names)
    settings = build(
        model=ref_model, ref=ref, target=target, device=device, workdir=str(cache), options=options,
        inputs=feeds, input_shapes=dict(input_shapes or {}), input_dtypes=input_dtypes, seed=seed,
        random_inputs=random_inputs, calibration=calib, limit=limit, metrics=metrics, threshold=threshold,
        metric_options=metric_options, mapping=mapping, matcher=matcher, diagnose=diagnose, layers=layers,
        max_memory=max_memory, step_bytes=step_bytes, workers=workers, ray_address=ray_address,
        all_tensors=all_tensors, device_scoring=device_scoring, device_memory=device_memory)
    return settings, label, keep

"""Build, convert, cache: the model each ``ort*`` precision runs, derived from the fp32 ONNX model.

The fp32 model comes from :func:`parity.lib.onnx.models.onnx_model_for` (an ``.onnx`` file, or
a torch model exported with provenance); :func:`load_fp32` resolves, loads and checks it.
:func:`target_model` derives what the target precision runs: the fp32 file itself (``ort``),
the fp16-converted model with its keep lists (``ort-fp16``) or the QDQ-quantized model
calibrated on the calibration feeds (``ort-int8``); both conversions are cached under the
workdir by :mod:`parity.lib.onnx.convert`. :func:`runnable_model` and :func:`fetch_for` give
the graph to run and, for each fp32 tensor name, the target-graph tensor that stands for it.
Nothing here runs a session (see :mod:`.runner`).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from parity.contract.errors import ParityError
from parity.contract.options import option_list
from parity.contract.progress import step
from parity.contract.source import RunConfig
from parity.lib.onnx.models import fmt_dims, onnx_model_for

if TYPE_CHECKING:  # pragma: no cover
    import onnx

#: source name per precision
PRECISIONS = {"fp32": "ort", "fp16": "ort-fp16", "fp16-strict": "ort-fp16-strict", "int8": "ort-int8"}
#: the precisions that run an fp16-converted model
HALF = ("fp16", "fp16-strict")
#: what each precision's numbers mean (reports and ``parity fix`` say which one they measured)
SEMANTICS = {
    "fp32": "ONNX Runtime float32",
    "fp16": ("ONNX Runtime fp16 as deployed on this provider: ops without a float16 kernel run in float32 "
             "behind casts the session inserts, and a value passing between two of them is never stored "
             "in float16"),
    "fp16-strict": ("strict fp16 storage: every float16 node output rounded to float16 before it is read, "
                    "as GPU kernels and TensorRT store fp16 tensors"),
    "int8": "ONNX Runtime int8 (QDQ, static calibration)",
}


def check_feed(model: "onnx.ModelProto", feed: dict[str, np.ndarray], path: Path, what: str = "feed") -> None:
    """A one-line ``ParityError`` unless ``feed`` has exactly the model's inputs, in shape and dtype."""
    from parity.lib.onnx.graph import elem_dtype, model_inputs, value_dims

    inputs = model_inputs(model)
    expected = [vi.name for vi in inputs]
    if set(feed) != set(expected):
        missing = [n for n in expected if n not in feed]
        extra = [n for n in feed if n not in expected]
        raise ParityError(f"{what} does not match the inputs of {path.name}. Note: the model expects "
                          f"{expected}; missing {missing}, unexpected {extra}")
    for vi in inputs:
        a = np.asarray(feed[vi.name])
        dims = value_dims(vi)
        if dims is not None and (len(dims) != a.ndim or any(d is not None and d != s
                                                             for d, s in zip(dims, a.shape))):
            raise ParityError(f"{what} input {vi.name!r} of {path.name} has shape {list(a.shape)}. "
                              f"Note: the model expects {fmt_dims(dims)} (? = any size)")
        want = elem_dtype(vi.type.tensor_type.elem_type)
        if want and str(a.dtype) != want:
            raise ParityError(f"{what} input {vi.name!r} of {path.name} has dtype {a.dtype}. "
                              f"Note: the model expects {want}")


def target_model(precision: str, cfg: RunConfig, src: Path, orig: "onnx.ModelProto",
                 feed: dict[str, np.ndarray]) -> tuple[Path, dict[str, Any]]:
    """The file ``precision`` runs (converted and cached), plus record meta about it.

    ``keep_high_precision`` (fp32 tensor names, e.g. from ``parity fix``) is checked against
    ``orig`` here, for every precision, so an unknown name fails before any conversion.
    fp16 honours ``keep_fp32_ops`` / ``keep_fp32_nodes``; int8 calibrates on
    ``cfg.calibration`` (each feed checked like the run feed), or on ``feed`` itself with a
    warning in the meta when none was given.
    """
    from parity.lib.onnx.convert import keep_producers, to_fp16, to_int8

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
    workdir = Path(cfg.workdir)
    opts = cfg.options
    keep = list(cfg.keep_high_precision)
    if keep:
        keep_producers(orig, keep, src.name, name_unnamed=True)  # int8 refuses unnamed ones later
    extra: dict[str, Any] = {}
    if precision == "fp32":
        return src, extra
    if precision in HALF:
        with step(f"convert {src.name} to fp16"):
            path = to_fp16(src, workdir, option_list(opts, "keep_fp32_ops"), option_list(opts, "keep_fp32_nodes"),
                           keep_tensors=keep)
        if precision == "fp16-strict":  # the strict model is what runs, captured or not
            from parity.lib.onnx.asrun import as_run_model, strict_storage_model

            path = strict_storage_model(as_run_model(path, _providers(cfg)))
        return path, extra
    calib = list(cfg.calibration)
    if not calib:
        calib = [feed]
        extra["calibration"] = "run feed (no calibration feeds were given)"
        extra["warning"] = ("int8 calibrated on the compared input itself: scales fit this input "
                            "and the error is optimistic; pass calibration data")
    for k, c in enumerate(calib):
        check_feed(orig, c, src, what=f"calibration feed #{k}")
    extra["calibration_feeds"] = len(calib)
    with step(f"quantize {src.name} to int8 ({len(calib)} calibration feeds)"):
        return to_int8(src, workdir, calib, {**opts, "keep_high_precision": keep}), extra


def load_fp32(cfg: RunConfig, feed: dict[str, np.ndarray]) -> tuple[Path, Any, "onnx.ModelProto"]:
    """``(fp32 ONNX file, torch module names or None, its loaded graph)``, with ``feed`` checked against it.

    Compute what needs the untouched fp32 graph (sites, provenance) before :func:`target_model`,
    which names unnamed nodes of ``orig`` when ``keep_high_precision`` is given.
    """
    from parity.lib.onnx.graph import load_model

    src, module_names = onnx_model_for(cfg, feed)
    orig = load_model(src, what="model")
    check_feed(orig, feed, src)
    return src, module_names, orig


def _providers(cfg: RunConfig) -> list[str]:
    from parity.lib.onnx.session import default_providers

    return option_list(cfg.options, "ort_providers") or default_providers(cfg.device)


def capture_path(precision: str, cfg: RunConfig, run_path: Path) -> Path:
    """The model a capture or a local run executes: what the session runs, with every tensor named.

    For ``fp16`` that is ONNX Runtime's own graph of ``run_path`` (its inserted casts explicit,
    :func:`parity.lib.onnx.asrun.as_run_model`), so marking a tensor as an output stores it in
    the precision the deployed session holds it in and adds no rounding. Else ``run_path``.
    """
    if precision != "fp16":
        return run_path
    from parity.lib.onnx.asrun import as_run_model

    with step(f"learn the graph onnxruntime runs for {run_path.name}"):
        return as_run_model(run_path, _providers(cfg))


def runnable_model(precision: str, run_path: Path, orig: "onnx.ModelProto") -> "onnx.ModelProto":
    """The graph ``precision`` runs: ``orig`` itself for fp32, else the converted file at ``run_path``."""
    import onnx

    if precision == "fp32":
        return orig
    return onnx.load(str(run_path))


def run_label(src: Path, run_path: Path) -> str:
    """How error messages name the model that runs: ``converted.onnx (from model.onnx)`` or ``model.onnx``."""
    return f"{Path(run_path).name} (from {src.name})" if Path(run_path) != Path(src) else src.name


def fetch_for(precision: str, runnable: "onnx.ModelProto", names: list[str],
              producers: dict[str, tuple[str, int]] | None = None) -> dict[str, tuple[str, bool]]:
    """For each fp32 tensor name, ``(tensor of runnable read for it, whether it is quantized)``.

    fp32 reads every name as is; fp16/int8 map through the conversion (see
    :func:`parity.lib.onnx.convert.fetch_map`; ``producers``, fp32 tensor -> (node name, output
    position), finds a tensor the int8 quantizer renamed); a name the target graph lost is absent.
    """
    from parity.lib.onnx.convert import fetch_map

    if precision == "fp32":
        return {n: (n, False) for n in names}
    return fetch_map(runnable, names, quantized=precision == "int8", producers=producers)


def write_fixed(precision: str, cfg: RunConfig, feed: dict[str, np.ndarray], keep: list[str], dest: Path) -> Path:
    """Copy the model ``precision`` runs with the fp32 tensors ``keep`` left in fp32 to ``dest``.

    The same conversion the run made (:mod:`parity.lib.onnx.convert`): fp16 with the producers of
    ``keep`` block-listed (``keep_fp32_ops`` / ``keep_fp32_nodes`` still honoured), or int8 with them
    excluded from quantization, calibrated on ``cfg.calibration``; so the file is the model the fix
    measured (``fp16-strict``'s storage rounding is an analysis device, not part of the model).
    """
    import shutil

    from parity.lib.onnx.convert import to_fp16, to_int8

    if precision not in PRECISIONS or precision == "fp32":
        raise ParityError(f"{PRECISIONS.get(precision, precision)} runs the fp32 model: there is no lower "
                          f"precision to keep layers out of. Note: write a fixed model for ort-fp16 or ort-int8")
    src, _ = onnx_model_for(cfg, feed)
    workdir, opts, kept = Path(cfg.workdir), cfg.options, list(keep)
    if precision == "int8":
        fixed = to_int8(src, workdir, list(cfg.calibration), {**opts, "keep_high_precision": kept})
    else:
        fixed = to_fp16(src, workdir, option_list(opts, "keep_fp32_ops"), option_list(opts, "keep_fp32_nodes"),
                        keep_tensors=kept)
    if any(fixed.parent.glob(fixed.name + "*.data")):
        raise ParityError(f"the fixed model {fixed} keeps its weights in external data files beside it. "
                          f"Note: copy it and its .data file from there")
    shutil.copyfile(fixed, dest)
    return dest

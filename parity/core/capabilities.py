"""Dispatch to a source's optional capabilities; refuse clearly when a target lacks one.

Why: the core knows no framework. Writing a fixed model or cutting a repro is the source's work
(:class:`parity.contract.capability.Capability`); the core asks ``source.offers(...)``, hands over
a temporary path, renames it into place once the source returns (so a failure leaves nothing
half-written), and otherwise names the registered sources that can do it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from parity.contract.atomic import atomic_path
from parity.contract.capability import Capability, FixedModel, NumberFormat, ReproResult
from parity.contract.errors import ParityError, first_line
from parity.contract.source import RunConfig, Source
from parity.core.registry import all_of, get_source

__all__ = ["offering", "offers", "repro_source", "require", "write_fixed_model", "write_repro"]


def offering(capability: Capability, number_format: NumberFormat | None = None) -> list[str]:
    """Names of the registered sources offering ``capability`` (of ``number_format`` when given), in
    registration order."""
    return [n for n, src in all_of("source").items()
            if offers(src, capability) and (number_format is None or src.number_format == number_format)]


def offers(src: Any, capability: Capability) -> bool:
    """``src.offers(capability)``, for a source that predates :meth:`Source.offers` too."""
    method = getattr(src, "offers", None)
    if method is not None:
        return bool(method(capability))
    return capability is Capability.RUN_LAYER_ALONE and bool(getattr(src, "supports_local", False))


def require(src: Source, capability: Capability, name: str, what: str) -> None:
    """A one-line ``ParityError`` unless ``src`` (registered as ``name``) offers ``capability``.

    The note names the sources that can, those of the same number format first: ``trt-fp16 cannot
    write a fixed model. Note: sources that can: ort-fp16, ort-fp16-strict (then ort-int8)``.
    """
    if offers(src, capability):
        return
    fmt = getattr(src, "number_format", None)
    same = offering(capability, fmt) if fmt is not None else []
    others = [n for n in offering(capability) if n not in same]
    if same or others:
        can = ", ".join(same or others) + (f" (other formats: {', '.join(others)})" if same and others else "")
        note = f"sources that can: {can}"
    else:
        note = "no loaded source can (parity plugins lists them)"
    raise ParityError(f"{what}: {name} cannot {capability}. Note: {note}")


def write_fixed_model(src: Source, name: str, cfg: RunConfig, feed: dict[str, np.ndarray], keep: list[str],
                      path: str | os.PathLike[str], what: str) -> FixedModel:
    """``src`` writes its model with ``keep`` in high precision; atomically at ``path``."""
    require(src, Capability.WRITE_FIXED_MODEL, name, what)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out) as tmp:
            fixed = src.write_fixed_model(cfg, feed, list(keep), Path(tmp))
    except ParityError as e:
        raise ParityError(f"{what}: {first_line(e)}") from None
    return replace(fixed, path=out)


def repro_source(target: str) -> str:
    """Which source cuts the repro: the target when it offers it, else the first registered that does.

    A repro is the layer in the float32 model with float32 values, so any source offering it writes
    the same folder; a target that cannot (a torch or TensorRT target) is served by one that can.
    """
    try:
        if offers(get_source(target), Capability.WRITE_REPRO):
            return target
    except ParityError:  # not a registered source: the first that can cut a repro
        pass
    names = offering(Capability.WRITE_REPRO)
    if not names:
        raise ParityError(f"parity repro: no loaded source can {Capability.WRITE_REPRO}. Note: the onnxruntime "
                          f"plugin's sources (ort ...) can; parity plugins lists what is loaded")
    return names[0]


def write_repro(src: Source, name: str, cfg: RunConfig, feed: dict[str, np.ndarray], layer: str,
                out: str | os.PathLike[str], model_label: str) -> ReproResult:
    """``src`` writes LAYER's repro folder; into a temporary sibling of ``out`` renamed into place at the end.

    ``out`` must not exist, or be an empty folder (checked before any model work by the caller too).
    """
    require(src, Capability.WRITE_REPRO, name, "parity repro")
    dest = Path(out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        res = src.write_repro(cfg, feed, layer, tmp, model_label)
        if dest.exists():
            dest.rmdir()  # empty, checked by the caller
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace(res, folder=dest)

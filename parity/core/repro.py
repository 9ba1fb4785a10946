"""`parity repro`: the culprit layer as a standalone model, with its fp32 inputs and outputs.

Why: a bug report to a runtime's maintainers should be one folder they can run as it is. Cutting the
layer out of the model and computing its reference values is framework work, so a source does it
(``Capability.WRITE_REPRO``: the ONNX Runtime sources cut parity's fp32 ONNX model and run the fp32
reference on the CPU); this module picks that source, prepares the run and dispatches
(:mod:`parity.core.capabilities`).
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from parity.contract.capability import ReproResult
from parity.contract.errors import ParityError
from parity.core.capabilities import repro_source, write_repro
from parity.core.compare import CompareSettings, prepare

__all__ = ["ReproResult", "repro"]


def repro(settings: CompareSettings, layer: str, out: str | os.PathLike[str]) -> ReproResult:
    """Write LAYER's standalone repro folder ``out`` (model.onnx, inputs, reference outputs, README.txt)."""
    dest = Path(out)
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise ParityError(f"--out {dest} already exists. Note: give a new (or empty) folder for the repro")
    name = repro_source(settings.target)
    prep = prepare(replace(settings, ref=name, target=name, random_inputs=1, diagnose=False))
    feed = {k: np.asarray(v) for k, v in prep.feeds.first()[1].items()}
    return write_repro(prep.target, name, prep.cfg, feed, layer, dest, str(settings.model))

"""fp32 values of named tensors of an ONNX model, from one ONNX Runtime run (any source may use it).

The reference a target's local runs are measured against: the TensorRT source feeds each layer
cut out alone the fp32 values of its inputs and compares its outputs with these. Sessions come
from :mod:`parity.lib.onnx.session`, so the ``ort_*`` options mean what they mean for the
``ort*`` sources; the run is on the CPU unless ``ort_providers`` says otherwise (the CUDA
provider may compute fp32 in TF32).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from parity.lib.onnx.graph import with_outputs
from parity.lib.onnx.session import make_session, run_session, session_options

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["reference_values"]


def reference_values(model: "onnx.ModelProto", names: Sequence[str], feed: Mapping[str, np.ndarray],
                     options: Mapping[str, Any] | None, workdir: str | Path,
                     label: str = "the model") -> dict[str, np.ndarray]:
    """``names`` from one ONNX Runtime run of ``model`` on ``feed``, as host arrays.

    ``model`` gains ``names`` as graph outputs, in place (a copy would double the weights in
    memory). ``options`` are a source's options (``ort_providers``, ``ort_threads``,
    ``ort_graph_optimization``, read by :func:`~parity.lib.onnx.session.session_options` for the
    CPU); a model too large for protobuf goes through a temporary file under ``workdir``.
    Tensors that are not arrays (sequences, maps) are left out. Failures are one ``ParityError``
    line naming ``label``.
    """
    names = list(names)
    so, providers = session_options(dict(options or {}), device="cpu")
    sess = make_session(with_outputs(model, names), so, providers, workdir, f"{label} (fp32 reference)")
    vals = run_session(sess, names, dict(feed), f"{label} for the fp32 reference")
    del sess
    return {n: v for n, v in zip(names, vals) if isinstance(v, np.ndarray)}

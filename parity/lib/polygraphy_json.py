"""Polygraphy's JSON encoding of arrays, and its input-data file (``polygraphy run --load-inputs``).

Why in lib: the TensorRT plugin's importers and the core's ``parity repro`` both write feeds a
Polygraphy user loads as-is, and the core never imports a plugin.
"""
from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from parity.contract.atomic import write_text
from parity.contract.errors import ParityError

#: the key naming a value's Polygraphy class in its JSON encoding
TYPE_KEY = "polygraphy_class"


def encode_array(a: np.ndarray, what: str) -> dict[str, Any]:
    """``a`` as Polygraphy encodes an ndarray: base64 of its ``.npy`` bytes (no pickle)."""
    a = np.asarray(a)
    if a.dtype.hasobject:
        raise ParityError(f"{what} holds Python objects; Polygraphy input data holds numeric arrays")
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return {"array": base64.b64encode(buf.getvalue()).decode(), TYPE_KEY: "ndarray"}


def save_polygraphy_inputs(feeds: Iterable[dict[str, np.ndarray]], path: str | os.PathLike[str]) -> Path:
    """Write feeds as Polygraphy input data, for ``polygraphy run --load-inputs`` on another machine."""
    p = Path(path)
    docs = [{str(name): encode_array(arr, f"input {name!r}") for name, arr in feed.items()} for feed in feeds]
    if not docs:
        raise ParityError(f"no feeds to write to {p}. Note: give at least one {{input name: array}}")
    write_text(p, json.dumps(docs))
    return p

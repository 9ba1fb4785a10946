"""Which front end a message speaks to: the command line or the Python API.

Why: the same checks run behind ``parity compare`` and ``parity.compare(...)`` (an input whose
shape is unknown, a bad seed, an input the model does not have). A message must name what the
user actually wrote: ``--input-shape x:1x16`` on the command line, ``input_shapes={'x': (1, 16)}``
in Python. Messages are built once, with :func:`option` and :func:`shape_hint`; the front end is a
context variable that ``parity.compare`` sets to ``"api"`` for the duration of its call (the
command line is the default, so every existing entry point keeps its wording).

A thread started inside a call does not inherit it (Python copies no context into a new
thread); input shapes and options are checked on the calling thread, before any source runs. Ray
workers are handed the driver's front end (:mod:`parity.core.workers`).
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator, Sequence

__all__ = ["FRONT_ENDS", "front_end", "given", "option", "shape_hint", "speaking"]

FRONT_ENDS = ("cli", "api")

_FRONT: ContextVar[str] = ContextVar("parity_front_end", default="cli")

#: (command-line option, parameter of parity.compare) for the settings not spelt ``--key-name`` and
#: ``key``; :func:`option` derives the others (``seed``, ``layers``, ``random_inputs``, ...)
OPTIONS: dict[str, tuple[str, str]] = {
    "input_shape": ("--input-shape", "input_shapes"),
    "input_dtype": ("--input-shape", "input_dtypes"),
    "inputs": ("--inputs", "inputs_path"),
    "trust_model": ("--trust-model", "options={'trust_model': True}"),
}


def front_end() -> str:
    """``"cli"`` or ``"api"``: the front end the current call serves."""
    return _FRONT.get()


@contextlib.contextmanager
def speaking(front: str) -> Iterator[None]:
    """Messages built inside name ``front``'s parameters (``"cli"`` or ``"api"``)."""
    if front not in FRONT_ENDS:
        raise ValueError(f"front end {front!r}: expected one of {FRONT_ENDS}")
    token = _FRONT.set(front)
    try:
        yield
    finally:
        _FRONT.reset(token)


def option(key: str) -> str:
    """How the current front end spells setting ``key``: ``--input-shape`` or ``input_shapes``."""
    cli, api = OPTIONS.get(key, ("--" + key.replace("_", "-"), key))
    return api if _FRONT.get() == "api" else cli


def given(key: str, value: object) -> str:
    """Setting ``key`` with ``value`` as the user wrote it: ``--seed -1`` or ``seed=-1``."""
    return f"{option(key)}={value!r}" if _FRONT.get() == "api" else f"{option(key)} {value}"


def shape_hint(name: str | Sequence[str] | None, dims: Sequence[int | None] = (1, 3, 224, 224)) -> str:
    """How to give input ``name`` (or each of several names) the shape ``dims``, as the current front
    end writes it: ``--input-shape x:1x3x224x224`` or ``input_shapes={'x': (1, 3, 224, 224)}``."""
    names = [name] if name is None or isinstance(name, str) else list(name)
    shown = tuple(1 if d is None else int(d) for d in dims)
    if _FRONT.get() == "api":
        return "input_shapes={" + ", ".join(f"{(n or 'x')!r}: {shown}" for n in names) + "}"
    text = "x".join(map(str, shown))
    return " ".join(f"--input-shape {n}:{text}" if n else f"--input-shape {text}" for n in names)

"""Progress of parity's long steps: export, conversion, engine builds, capture per input, local runs, fix.

Why in the contract: a source plugin reports its own steps (an export, an engine build) without
importing rich or the core. The core installs a display (:mod:`parity.core.progress`, a rich
spinner on a terminal); without one, :func:`step` and :func:`track` show nothing. Every step is
also a line on the ``parity`` logger (``parity -v``), so a log says what ran and for how long.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

__all__ = ["Display", "Task", "install", "step", "track"]

T = TypeVar("T")
log = logging.getLogger("parity")


class Task:
    """One running step, as a display shows it; this base shows nothing."""

    def update(self, text: str) -> None:
        """New words for the step (``keep ip1: cosine 0.9991``)."""

    def advance(self, n: int = 1) -> None:
        """``n`` more items of a counted step done."""


class Display:
    """Where steps show. This base shows nothing: the state when output is not a terminal or ``--quiet``."""

    def start(self, text: str, total: int | None) -> Task:
        return Task()

    def finish(self, task: Task) -> None:
        """The step ended (done or interrupted): a display removes it."""


_lock = threading.Lock()
_display: Display = Display()


def install(display: Display) -> Display:
    """Make ``display`` show the steps from now on (process-wide: sources run steps in threads); returns
    the one it replaces, for the caller to put back."""
    global _display
    with _lock:
        old, _display = _display, display
    return old


@contextmanager
def step(text: str, total: int | None = None) -> Iterator[Task]:
    """``with step("export lenet to ONNX"): ...`` shows the step while it runs and logs it with its time."""
    log.info("%s ...", text)
    t0 = time.perf_counter()
    display = _display
    task = display.start(text, total)
    done = False
    try:
        yield task
        done = True
    finally:
        display.finish(task)
        log.info("%s: %s in %.2f s", text, "done" if done else "stopped", time.perf_counter() - t0)


def track(items: Iterable[T], text: str, total: int | None = None) -> Iterator[T]:
    """``items`` passed through while a step counts them: ``capture input 2 of 5`` (``N items`` when
    the total is unknown). The step ends when the items end or the loop stops."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with step(text, total) as task:
        for k, item in enumerate(items):
            task.update(f"{text} {k + 1} of {total}" if total else f"{text}: {k + 1}")
            yield item
            task.advance()

"""The terminal side of parity: a rich progress display for the contract's steps, and ``-v`` logging.

Why here: plugins and libraries only call :func:`parity.contract.progress.step`; what shows it
(a spinner per running step on stderr, nothing when stderr is no terminal or with ``--quiet``)
is decided once, by the CLI or the Python API, through :func:`showing`.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from parity.contract import progress as contract

__all__ = ["RichDisplay", "setup_logging", "showing"]

_console: Any = None


def stderr_console() -> Any:
    """One rich console on standard error (resolved at each write), shared by progress and log lines."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True, highlight=False)
    return _console


class _RichTask(contract.Task):
    def __init__(self, display: "RichDisplay", task_id: Any) -> None:
        self.display, self.id = display, task_id

    def update(self, text: str) -> None:
        self.display.progress.update(self.id, description=text)
        self.display.progress.refresh()

    def advance(self, n: int = 1) -> None:
        self.display.progress.advance(self.id, n)


class RichDisplay(contract.Display):
    """A spinner, the step's words and its elapsed time per running step; gone when the steps end.

    Each change is drawn at once (steps are few and slow), so even a step shorter than rich's
    refresh period is shown.
    """

    def __init__(self, console: Any) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                 console=console, transient=True, redirect_stdout=False, redirect_stderr=False)
        self._lock = threading.Lock()
        self._running = 0

    def start(self, text: str, total: int | None) -> contract.Task:
        with self._lock:
            if not self._running:
                self.progress.start()
            self._running += 1
            tid = self.progress.add_task(text, total=total)
        self.progress.refresh()
        return _RichTask(self, tid)

    def finish(self, task: contract.Task) -> None:
        with self._lock:
            if isinstance(task, _RichTask):
                self.progress.remove_task(task.id)
            self._running -= 1
            if not self._running:
                self.progress.stop()

    def close(self) -> None:
        with self._lock:
            if self._running:
                self._running = 0
                self.progress.stop()


@contextmanager
def showing(quiet: bool = False, console: Any = None) -> Iterator[contract.Display]:
    """Show the steps run inside on ``console`` (default: stderr) when it is a terminal and not ``quiet``.

    A pipe, a file, CI logs or ``--quiet`` get nothing: a spinner there is only noise.
    """
    display: contract.Display = contract.Display()
    if not quiet:
        con = console if console is not None else stderr_console()
        if con.is_terminal:
            display = RichDisplay(con)
    old = contract.install(display)
    try:
        yield display
    finally:
        contract.install(old)
        if isinstance(display, RichDisplay):
            display.close()


_handler: logging.Handler | None = None


def setup_logging(verbosity: int) -> None:
    """``-v``: what parity does and where its caches are (INFO); ``-vv``: DEBUG. Lines go to stderr
    through rich, above any progress display; without ``-v`` only parity's warnings (libraries' Python
    warnings and ONNX Runtime's log lines are then silent)."""
    global _handler
    logger = logging.getLogger("parity")
    # libraries' Python warnings (torch's "Detected pickle protocol 4 in the checkpoint", deprecations)
    # are not the user's business unless -v: routed into logging, shown only by the -v handler
    logging.captureWarnings(True)
    pywarn = logging.getLogger("py.warnings")
    pywarn.propagate = False
    if not any(isinstance(h, logging.NullHandler) for h in pywarn.handlers):
        pywarn.addHandler(logging.NullHandler())
    if _handler is not None:
        logger.removeHandler(_handler)
        pywarn.removeHandler(_handler)
        _handler = None
    if verbosity <= 0:
        logger.setLevel(logging.WARNING)
        return
    from rich.logging import RichHandler

    import sys

    from rich.console import Console

    # on a terminal, the progress display's console (log lines print above it); in a pipe or a file,
    # room for a whole path on one line instead of rich's 80 columns
    console = stderr_console() if sys.stderr.isatty() else Console(stderr=True, width=220, highlight=False)
    _handler = RichHandler(console=console, show_path=False, show_time=True, markup=False, rich_tracebacks=False)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_handler)
    pywarn.addHandler(_handler)
    logger.setLevel(logging.INFO if verbosity == 1 else logging.DEBUG)

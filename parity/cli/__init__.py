"""Command line: parses arguments and calls the public API. Nothing else lives here.

One module per command (``compare``, ``fix``, ...), each with ``add_parser(sub)`` for its flags and
``run(args)`` calling the Python API; ``_common`` holds what several commands share. A new command
is a new module and one line in ``COMMANDS`` (the order there is the order of ``parity --help``).

Every ParityError becomes one line on stderr and a non-zero exit (2 for usage, 1 otherwise).
"""
from __future__ import annotations

import argparse
import os
import sys
from types import ModuleType
from typing import Sequence

from parity.cli import analyze, compare, doctor, example, fix, generate, plugins, repro, view
from parity.cli._common import Parser, validate
from parity.contract.errors import ParityError, one_line

COMMANDS: dict[str, ModuleType] = {"plugins": plugins, "analyze": analyze, "compare": compare, "fix": fix,
                                   "repro": repro, "generate": generate, "doctor": doctor, "example": example,
                                   "view": view}


def build_parser() -> argparse.ArgumentParser:
    from parity import __version__

    p = Parser(prog="parity", description="Find where a neural network loses accuracy between frameworks "
                                          "and precisions, layer by layer.")
    p.add_argument("--version", action="version", version=f"parity {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="say what parity does and where its caches are (-vv: debug details)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in COMMANDS.values():
        module.add_parser(sub)
    for sp in sub.choices.values():  # -v after the command too; the top-level count stays when not given
        sp.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="say what parity does and where its caches are (-vv: debug details)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the process is parity's own: let its allocator reuse freed activation buffers
        from parity.lib.memory import reuse_freed_buffers

        reuse_freed_buffers()
    try:
        rc = _main(argv)
    finally:
        if argv is None:  # the process's own entry point: what is written is complete now, and a
            # Ctrl-C landing during interpreter shutdown would otherwise turn exit 0/130 into death by SIGINT
            import signal

            signal.signal(signal.SIGINT, signal.SIG_IGN)
    if argv is None and _interrupted:
        _exit_interrupted(rc)
    return rc


#: set when a run ended on Ctrl-C (the handler in ``_main`` printed "interrupted")
_interrupted: list[bool] = []


def _exit_interrupted(rc: int) -> None:
    """End the process with ``rc`` (130) after a handled Ctrl-C, skipping only the interpreter's own teardown.

    Why: with the handler above done ("interrupted" printed, 130 returned), the process still died by
    SIGINT (-2) in about one interrupted run in eight under ``python -m parity`` (seen repeatedly in the
    test suite; CPython kills itself with SIGINT at exit when it believes a KeyboardInterrupt went
    unhandled, and something in the run's extensions left it believing so; not pinned down further).
    The exit handlers still run (temporary folders are removed) and the streams are flushed; only the
    teardown that re-raised the signal is skipped.
    """
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(rc)


def _main(argv: Sequence[str] | None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 2
        validate(args)
        from parity.core.progress import setup_logging, showing

        setup_logging(getattr(args, "verbose", 0))
        with showing(quiet=bool(getattr(args, "quiet", False))):
            return COMMANDS[args.command].run(args)
    except ParityError as e:
        print(f"parity: error: {one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("parity: interrupted", file=sys.stderr)
        _interrupted.append(True)
        return 130
    except Exception as e:  # a bug, not bad input: still one line unless asked for the traceback
        if os.environ.get("PARITY_TRACEBACK"):
            raise
        print(f"parity: internal error: {type(e).__name__}: {one_line(str(e))} (set PARITY_TRACEBACK=1 for the traceback; "
              f"please report it)", file=sys.stderr)
        return 1


"""The single exception type parity raises for anything a user can fix."""
from __future__ import annotations

import re
import zipfile
import zlib


class ParityError(Exception):
    """An error with a message meant for the user: what failed, what was seen, what is valid.

    The CLI prints ``str(error)`` as one line and exits non-zero; nothing else should
    reach the user as a traceback.
    """

    exit_code = 1


class UsageError(ParityError):
    """Bad command-line usage (exit code 2)."""

    exit_code = 2



#: what reading a damaged or unusual zip archive (an ``.npz``) raises besides ParityError: a bad
#: directory or CRC, an encrypted member (RuntimeError), a compression method Python lacks
#: (NotImplementedError), a corrupt deflate stream (zlib.error), a short read or a bad header
ARCHIVE_ERRORS: tuple[type[BaseException], ...] = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError,
                                                   EOFError, ValueError, RuntimeError, NotImplementedError)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def first_line(e: BaseException, limit: int = 300, *, typed: bool = False) -> str:
    """The first non-empty line of an exception's text, cut to ``limit``; ``typed`` prefixes its type.

    Why: library errors are often pages long and coloured (ONNX Runtime, TorchScript, the
    exporter, TensorRT); parity's one-line messages quote only the line that names the fault.
    An exception without text is named by its type.
    """
    for line in _ANSI.sub("", str(e)).strip().splitlines():
        if line.strip():
            text = line.strip()[:limit]
            return f"{type(e).__name__}: {text}" if typed else text
    return type(e).__name__


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters shown escaped.

    Why: an error message quotes names from user files (layer names, archive members), which may
    hold newlines; the CLI's promise is one line per error, whatever the file contains.
    """
    return _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], text)

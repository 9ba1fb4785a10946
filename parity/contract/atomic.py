"""Write files so that a crash or a bad input never leaves a half-written result.

The project's one write-then-rename: reports, dumps, configs and cached models all go through
:func:`atomic_path`. The file gets the permissions an ordinary ``open(path, "w")`` would give it
(0666 less the umask, or the mode of the file it replaces), not ``mkstemp``'s private 0600.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import Iterator, TextIO

from parity.contract.errors import ParityError


def _create_sibling(dest: Path) -> Path:
    """A new empty file beside ``dest``, hidden, with ``dest``'s suffix last (np.save and friends look at it)."""
    while True:
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp{dest.suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(dest.stat().st_mode))
        return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_sibling(dest)
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_text(path: str | os.PathLike) -> Iterator[TextIO]:
    """A UTF-8 text stream whose content replaces ``path`` only if the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        yield f


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_text(path) as f:
        f.write(text)


def write_failure(what: str, path: str | os.PathLike, e: OSError) -> ParityError:
    """One line for an output that could not be written (disk full, quota, I/O error): the file and the cause.

    Why: ``OSError: [Errno 28]`` surfaced as "internal error ... please report it"; and numpy's short
    write says only "23040 requested and 7136 written", so the space left on the filesystem is named.
    """
    cause = e.strerror or str(e) or type(e).__name__
    try:
        st = os.statvfs(Path(path).parent if Path(path).parent.exists() else ".")
        free = st.f_bavail * st.f_frsize
        room = f"; {free} bytes free on that filesystem" if free < (1 << 30) else ""
    except (OSError, AttributeError):
        room = ""
    return ParityError(f"cannot write {what} {path}: {cause}{room}. Note: free space there or choose another "
                       f"location; nothing was left half-written.")

"""Checks made before any model runs: output paths, the cache folder, memory, metric values.

Why: a run can take minutes. An output path that cannot be written, a cache in a read-only
folder, an input too large for the machine or a threshold no metric can reach must be found
while the command line is read, as one line naming the option and what is wrong, not as an
"internal error" naming a hidden temporary file after the work is done.

Exit codes (README "Exit codes"): a wrong command line (unknown option or name, malformed or
out-of-range value, conflicting options, an output that would overwrite an input, a run whose
memory estimate exceeds what is available without ``--force``) is a :class:`UsageError` (2); a
well-formed command line naming something that is bad (a missing or malformed file, an output
that cannot be written) is a :class:`ParityError` (1).
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from parity.contract.errors import ParityError, UsageError
from parity.contract.source import InputSpec


def notice(message: str) -> None:
    """A visible note on stderr where parity proceeds on something the user may not expect."""
    sys.stderr.write(f"parity: note: {message}\n")


# -- output paths ---------------------------------------------------------------------------------

def _probe(folder: Path) -> str | None:
    """Why a new file cannot be created in ``folder`` (None if it can): the only honest test.

    ``os.access`` says yes to root on a read-only mount's directory and on ``/proc``; creating
    (and removing) an empty file is what the write will do.
    """
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".parity-probe-")
    except OSError as e:
        return e.strerror or type(e).__name__
    os.close(fd)
    try:
        os.unlink(name)
    except OSError:
        pass
    return None


#: folders already announced as to be created (one note each)
_NEW_FOLDERS: set[Path] = set()


def check_output_path(path: str | os.PathLike, option: str, *, folder_ok: bool = False,
                      create_parents: bool = True) -> None:
    """Fail now if ``path`` cannot be written later.

    ``folder_ok``: the output may be a folder (a dump); otherwise an existing path must be a regular
    file. Missing parent folders are created when the output is written, never silently: a note
    names them now (``create_parents=False`` refuses them instead).
    """
    p = Path(os.path.abspath(path))
    where = f"{option} {path}"
    if p.exists():
        if p.is_dir() and not folder_ok:
            raise ParityError(f"{where}: is a directory. Note: give a file path inside it.")
        if not p.is_dir() and not p.is_file():
            raise ParityError(f"{where}: exists and is not a regular file (a device, pipe or socket). "
                              f"Note: use NAME=- for standard output, or another path.")
    parent = p.parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ParityError(f"{where}: {existing} is a file, not a directory. Note: choose a path in a directory.")
    if existing != parent and not create_parents:
        raise ParityError(f"{where}: directory {parent} does not exist. Note: create it first.")
    why = _probe(existing)
    if why:
        raise ParityError(f"{where}: cannot write in {existing} ({why}). Note: choose a writable location.")
    if existing != parent and parent not in _NEW_FOLDERS:
        _NEW_FOLDERS.add(parent)
        notice(f"{where}: folder {parent} does not exist; parity creates it.")


def check_distinct_outputs(paths: Iterable[tuple[str, str]]) -> None:
    """Two outputs naming one file would overwrite each other: refuse before running."""
    seen: dict[str, str] = {}
    for option, path in paths:
        key = os.path.realpath(path)
        if key in seen:
            raise UsageError(f"{option} {path}: the same path as {seen[key]}. Note: give each output its own path.")
        seen[key] = f"{option} {path}"


def _same(a: str, b: str) -> bool:
    """One file under two names: the same resolved path, or ``os.path.samefile`` (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): only the resolved path can say
        return False


def _inside(child: str, folder: str) -> bool:
    """``child`` lies in ``folder`` (resolved paths): writing the folder replaces what it holds."""
    c, f = os.path.realpath(child), os.path.realpath(folder)
    return c != f and c.startswith(f.rstrip(os.sep) + os.sep)


def check_no_clobber(outputs: Iterable[tuple[str, str]], inputs: Iterable[tuple[str, str]]) -> None:
    """Refuse an output that would overwrite (or, as a folder, replace) a file the run reads.

    Why: an output is written atomically, over whatever the path names; ``--json in.npz`` used to
    replace the input file with the report, exit 0. Checked by resolved path (symlinks) and by
    ``os.path.samefile`` (hard links), for files in an input folder too, before anything runs.
    """
    ins = [(label, str(path)) for label, path in inputs if path]
    for option, out in outputs:
        if not out or out == "-":
            continue
        out = str(out)
        for label, src in ins:
            if _same(out, src):
                raise UsageError(f"{option} {out}: would overwrite {label} {src}, which this run reads. "
                                 f"Note: write the output to another path.")
            if _inside(src, out):
                raise UsageError(f"{option} {out}: writing it would replace the folder holding {label} {src}, "
                                 f"which this run reads. Note: write the output to another path.")
            if os.path.isdir(src) and _inside(out, src) and os.path.lexists(out):
                raise UsageError(f"{option} {out}: would overwrite a file of {label} {src}, which this run reads. "
                                 f"Note: write the output to another path.")


# -- cache folder -------------------------------------------------------------------------------

def default_workdir() -> str:
    """The user's cache folder for parity (``~/.cache/parity`` on Linux), never the current folder."""
    import platformdirs

    return platformdirs.user_cache_dir("parity", appauthor=False)


def check_workdir(workdir: str | os.PathLike | None) -> Path:
    """The cache folder to use, created and writable; says which option moves it when it is not."""
    explicit = workdir is not None
    p = Path(workdir) if explicit else Path(default_workdir())
    what = f"--workdir {p}" if explicit else f"cache folder {p} (the user cache folder, the default)"
    try:
        if p.exists() and not p.is_dir():
            raise ParityError(f"{what}: is a file, not a folder. Note: pass --workdir DIR with a writable folder.")
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ParityError(f"{what}: cannot be created ({e.strerror}). Note: pass --workdir DIR with a writable "
                          f"folder.") from None
    why = _probe(p)
    if why:
        raise ParityError(f"{what}: cannot be written ({why}). Note: pass --workdir DIR with a writable folder.")
    return p


# -- memory -------------------------------------------------------------------------------------

def available_memory() -> int | None:
    """Bytes this process can still use: MemAvailable (or physical memory), under a cgroup limit if one is set."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:  # a container's limit is lower than what the host has free
        cg = Path("/sys/fs/cgroup")
        limit = (cg / "memory.max").read_text().strip()
        if limit.isdigit():
            used = int((cg / "memory.current").read_text().strip())
            avail = min(avail, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return avail


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _elements(shape: Sequence[int | None]) -> int:
    return int(math.prod(int(d or 1) for d in shape))


def estimate_memory(specs: Sequence[InputSpec], feeds: int, model_bytes: int, *, random: bool) -> dict[str, int]:
    """A lower bound of what a comparison holds at its peak, in bytes, by part.

    inputs: every feed is held for the whole run; models: the reference and the target each
    hold the weights (the model file's size stands for them); activations: each side holds at
    least one input-sized activation while it is scored (real layers are often larger); random
    inputs are first drawn as float64, a transient the size of the largest input.
    """
    one = sum(_elements(s.shape or ()) * np.dtype(s.dtype or "float32").itemsize for s in specs)
    transient = max((_elements(s.shape or ()) * 8 for s in specs), default=0) if random else 0
    activations = 2 * sum(_elements(s.shape or ()) * 4 for s in specs)
    return {"inputs": one * max(1, feeds), "models": 2 * model_bytes, "activations": max(activations, transient)}


def memory_verdict(need: int, available: int | None) -> str:
    """``refuse`` above what is available, ``warn`` above half of it, else ``ok``."""
    if available is None:
        return "ok"
    if need > available:
        return "refuse"
    return "warn" if need > available / 2 else "ok"


def check_memory(parts: Mapping[str, int], subject: str, lowers: str, available: int | None = None,
                 *, force: bool = False) -> None:
    """Refuse a run that cannot fit in memory, warn about one that takes more than half of it.

    ``subject`` names the run (model and inputs), ``lowers`` the option that makes it smaller.
    Why refused and not noted: past available memory the machine swaps or the runtime dies with
    ``bad_alloc`` minutes later (18 GB of a 24 GB machine before ONNX Runtime gave up); the
    estimate is a lower bound, so ``force`` (``--force``) is the user's word that it is wrong.
    """
    avail = available_memory() if available is None else available
    need = sum(parts.values())
    verdict = memory_verdict(need, avail)
    if verdict == "ok":
        return
    detail = ", ".join(f"{k} {human_bytes(v)}" for k, v in parts.items() if v)
    head, have = f"{subject}: needs at least {human_bytes(need)} of memory ({detail})", human_bytes(avail or 0)
    if verdict == "refuse":
        if not force:
            raise UsageError(f"{head} but {have} is available. Note: lower it with {lowers}, or pass --force "
                             f"to run anyway.")
        notice(f"{head} but {have} is available; running anyway (--force).")
        return
    notice(f"{head}, more than half of the {have} available; {lowers} lowers it.")


# -- metric values ------------------------------------------------------------------------------

def value_range(metric: Any) -> tuple[float, float]:
    """The values ``metric`` can take, from what the metric says about itself (the Metric contract).

    A percentage lies in [0, 100]; a lower-is-better metric is a distance, >= 0; a higher-is-better
    metric with a positive perfect value P is a similarity in [-P, P] (cosine: [-1, 1]), with
    another perfect value it is at most P; a higher-is-better metric without one is unbounded (sqnr).
    """
    if metric.percent:
        return 0.0, 100.0
    if not metric.higher_is_better:
        return 0.0, math.inf
    perfect = metric.perfect
    if perfect is None:
        return -math.inf, math.inf
    return (-perfect if perfect > 0 else -math.inf), float(perfect)


def check_metric_value(metric: Any, value: float, option: str) -> float:
    """A bound the user gave for ``metric`` (threshold, --fail-under, --goal) that it can reach."""
    lo, hi = value_range(metric)
    span = f"[{lo:g}, {hi:g}]"
    if not math.isfinite(value):
        raise UsageError(f"{option}: {value} is not a value {metric.name} can be compared with. "
                         f"Note: {metric.name} values lie in {span}.")
    if not lo <= value <= hi:
        raise UsageError(f"{option}: {value:g} is outside the values {metric.name} takes. "
                         f"Note: {metric.name} values lie in {span}.")
    return value

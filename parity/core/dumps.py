"""Reading and writing dump folders and archives, whatever the file format.

Formats (:class:`parity.contract.dumpformat.DumpFormat` plugins) only know how to read or write one
file. Everything that concerns a *set* of files lives here, so a third-party format gets it
for free: choosing the format of each file, layer names and their order, the
``parity-manifest.json`` that keeps names and metadata exact, run tags (two runs in one
folder), and writing atomically. The layout rules are documented in ``docs/formats.md``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from parity.contract.atomic import write_failure
from parity.contract.errors import ParityError
from parity.contract.dumpformat import (MANIFEST_NAME, manifest_json, parse_manifest, apply_manifest_entry,
                                        manifest_entry, safe_filename)
from parity.contract.records import Activation

# A file belongs to run TAG when its stem ends with one of these followed by TAG.
TAG_SEPARATORS = ("_", "-", ".")

__all__ = ["TAG_SEPARATORS", "read_dump", "write_dump", "detect_tags", "natural_key", "split_tag",
           "understood_extensions", "FEEDS_MANIFEST", "FeedDump", "FeedDumpWriter", "feed_dump_path", "feed_dumps"]


# --------------------------------------------------------------------------- helpers


def natural_key(name: str) -> tuple:
    """Sort key putting ``layer2`` before ``layer10`` (digit runs compare as numbers)."""
    parts = re.split(r"(\d+)", name)
    # Parts alternate text, number, text, ... so tuples always compare like with like.
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)) + (name,)


def split_tag(stem: str) -> tuple[str, str] | None:
    """Split ``conv1_fp16`` into ``("conv1", "fp16")`` at the last tag separator, if any."""
    idx = max(stem.rfind(sep) for sep in TAG_SEPARATORS)
    if idx <= 0 or idx == len(stem) - 1:
        return None
    return stem[:idx], stem[idx + 1:]


def _strip_tag(stem: str, tag: str) -> str | None:
    """The layer name when ``stem`` carries run ``tag`` (``conv1.fp16`` -> ``conv1``), else None."""
    for sep in TAG_SEPARATORS:
        if stem.endswith(sep + tag) and len(stem) > len(tag) + 1:
            return stem[: -len(tag) - 1]
    return None


def _formats() -> dict[str, Any]:
    from parity.core import registry as plugins
    return plugins.all_of("dump-format")


def understood_extensions() -> dict[str, list[str]]:
    """Extension -> names of the formats that claim it, for messages and ``parity plugins``."""
    out: dict[str, list[str]] = {}
    for name, fmt in _formats().items():
        for ext in getattr(fmt, "extensions", ()):
            out.setdefault(ext, []).append(name)
    return dict(sorted(out.items()))


def _extensions_note() -> str:
    exts = understood_extensions()
    if not exts:
        return "no dump format is installed (run 'parity plugins')"
    return "understood extensions: " + ", ".join(f"{e} ({'/'.join(n)})" for e, n in exts.items())


def _format_for(path: Path, fmt: Any | None) -> Any | None:
    """The format that reads ``path``: the named one, or the single one claiming it."""
    if fmt is not None:
        return fmt
    claims = [f for f in _formats().values() if _claims(f, path)]
    if len(claims) > 1:
        names = ", ".join(f.name for f in claims)
        raise ParityError(f"{path}: several dump formats claim this file ({names}). "
                          f"Note: name the one to use (--format NAME).")
    return claims[0] if claims else None


def _claims(fmt: Any, path: Path) -> bool:
    try:
        return bool(fmt.can_read(path))
    except ParityError:
        raise
    except Exception as e:
        raise ParityError(f"{path}: format plugin {fmt.name!r} failed while checking the file: {e}") from e


def _is_candidate(p: Path) -> bool:
    """Files considered in a dump folder: not hidden (temp files, .DS_Store), not the manifest."""
    return p.is_file() and not p.name.startswith(".") and p.name != MANIFEST_NAME


def _listdir(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir(), key=lambda p: natural_key(p.name))
    except OSError as e:
        raise ParityError(f"cannot list dump folder {folder}: {e.strerror or e}") from e


def _dump_subfolders(folder: Path) -> list[str]:
    """Subfolders that look like runs: they hold a manifest or a readable dump file."""
    out = []
    for sub in _listdir(folder):
        if not sub.is_dir() or sub.name.startswith("."):
            continue
        files = _listdir(sub)
        if any(f.name == MANIFEST_NAME for f in files) or any(
                _is_candidate(f) and _format_for(f, None) is not None for f in files):
            out.append(sub.name)
    return out


# --------------------------------------------------------------------------- manifest


def _load_manifest(folder: Path) -> list[dict[str, Any]] | None:
    mpath = folder / MANIFEST_NAME
    if not mpath.is_file():
        return None
    try:
        data = mpath.read_bytes()
    except OSError as e:
        raise ParityError(f"{mpath}: cannot read the manifest: {e.strerror or e}") from e
    return parse_manifest(data, str(mpath))


# --------------------------------------------------------------------------- reading


@dataclasses.dataclass
class _Item:
    """One file to read, with what the folder layout says about it."""

    file: Path
    fmt: Any
    name: str | None = None                 # layer name for single-activation files
    entry: dict[str, Any] | None = None     # manifest entry, when the folder has one
    record_tag: str | None = None           # multi files: keep records named NAME_TAG only

    @property
    def key(self) -> str | None:
        if self.fmt.multi:
            return None
        if self.entry is not None:
            oi = int(self.entry.get("output_index", 0))
            return self.entry["name"] if oi == 0 else f"{self.entry['name']}:{oi}"
        return self.name


_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def _one_line(e: ParityError) -> ParityError:
    """``e`` with control characters escaped: layer names and file names may hold newlines, a message may not."""
    msg = str(e)
    if _CONTROL.search(msg):
        e.args = (_CONTROL.sub(lambda m: repr(m.group())[1:-1], msg),)
    return e


def read_dump(path: str | os.PathLike[str], *, tag: str | None = None,
              fmt: str | None = None) -> Iterator[Activation]:
    """Activations stored at ``path``: a dump folder, a multi-activation file, or one file.

    The layout is checked before anything is yielded (missing path, no dump files,
    unknown extensions, duplicate layer names), so errors come before the first array is
    read; arrays themselves are read one at a time as the iterator advances.
    ``tag`` selects one run of a folder holding two (subfolder ``TAG/`` or files named
    ``NAME_TAG.ext``); ``fmt`` names the format instead of going by file extensions.
    """
    try:
        items = _plan(Path(path), tag, fmt)
    except ParityError as e:
        raise _one_line(e) from e.__cause__
    return _iterate(items)


def _plan(p: Path, tag: str | None, fmt: str | None) -> list[_Item]:
    if not p.exists():
        if _unfinished_beside(p):
            raise ParityError(f"dump not found: {p}; only an unfinished one lies beside it (its writer was "
                              f"interrupted). Note: write the dump again.")
        raise ParityError(f"dump not found: {p}. Note: give a dump folder or a dump file; {_extensions_note()}.")
    fmt_obj = None
    if fmt is not None:
        from parity.core.registry import get_dump_format
        fmt_obj = get_dump_format(fmt)
    if tag is not None and (tag.strip(".") == "" or any(s in tag for s in "/\\")):
        raise ParityError(f"run tag {tag!r} is not valid. Note: a tag is a plain word such as fp32 or fp16.")
    if p.is_dir() and (p / FEEDS_MANIFEST).is_file():
        feeds = feed_dumps(p) or []  # an incomplete one is refused as such
        first = feeds[0].path if feeds else p
        raise ParityError(f"{p} is a dump of {len(feeds)} feeds ({FEEDS_MANIFEST}), one dump per feed inside it. "
                          f"Note: compare two such dumps with parity analyze (feed by feed), or read one feed's "
                          f"dump, e.g. {first}.")
    if p.is_dir():
        items = _plan_folder(p, tag, fmt_obj)
    else:
        items = _plan_file(p, tag, fmt_obj)
    _check_duplicates(items)
    return items


def _unfinished_beside(p: Path) -> bool:
    """Whether a writer's temporary for ``p`` (or ``p`` plus an extension) lies in its folder."""
    try:
        names = [q.name for q in p.parent.iterdir()]
    except OSError:
        return False
    prefix = re.compile(r"^\.\.?" + re.escape(p.name) + r"(?:\.[A-Za-z0-9]+)?\.tmp-")
    return any(prefix.match(n) for n in names)


def _plan_file(p: Path, tag: str | None, fmt: Any | None) -> list[_Item]:
    f = _format_for(p, fmt)
    if f is None:
        raise ParityError(f"{p}: unknown dump file extension {p.suffix or '(none)'!r}. "
                          f"Note: {_extensions_note()}; or name the format (--format NAME).")
    if f.multi:
        return [_Item(p, f, record_tag=tag)]
    name = p.stem
    if tag is not None:
        stripped = _strip_tag(p.stem, tag)
        if stripped is None:
            raise ParityError(f"{p}: file does not belong to run {tag!r}. "
                              f"Note: files of run {tag!r} are named like NAME_{tag}{p.suffix}.")
        name = stripped
    entry = None
    manifest = _load_manifest(p.parent) if tag is None else None
    if manifest:
        entry = next((e for e in manifest if e["file"] == p.name), None)
    return [_Item(p, f, name=name, entry=entry)]


def _plan_folder(folder: Path, tag: str | None, fmt: Any | None) -> list[_Item]:
    if tag is not None:
        sub = folder / tag
        if sub.is_dir():
            return _plan_folder(sub, None, fmt)
        if (folder / MANIFEST_NAME).is_file():
            raise ParityError(f"{folder}: holds a single run written by parity ({MANIFEST_NAME}), so run tag "
                              f"{tag!r} selects nothing. Note: tags select a subfolder {tag}/ or files named "
                              f"NAME_{tag}.ext; drop the tag to read this folder.")
        return _plan_tagged(folder, tag, fmt)

    manifest = _load_manifest(folder)
    items: list[_Item] = []
    listed: set[str] = set()
    if manifest is not None:
        mpath = folder / MANIFEST_NAME
        for e in manifest:
            file = folder / e["file"]
            if not file.is_file():
                raise ParityError(f"{mpath}: lists {e['file']!r}, which is missing from the folder. "
                                  f"Note: the dump was copied incompletely; rewrite it or delete the manifest.")
            f = _format_for(file, fmt)
            if f is None:
                raise ParityError(f"{file}: unknown dump file extension {file.suffix or '(none)'!r}. "
                                  f"Note: {_extensions_note()}; or name the format (--format NAME).")
            if f.multi:
                raise ParityError(f"{mpath}: entry {e['file']!r} is a multi-activation file ({f.name}); "
                                  f"a folder manifest lists single-activation files only.")
            items.append(_Item(file, f, name=file.stem, entry=e))
            listed.add(e["file"])
    for file in _listdir(folder):
        if not _is_candidate(file) or file.name in listed:
            continue
        f = _format_for(file, fmt)
        if f is None:
            raise ParityError(f"{file}: unknown dump file extension {file.suffix or '(none)'!r}. "
                              f"Note: {_extensions_note()}; remove the file or name the format (--format NAME).")
        items.append(_Item(file, f, name=None if f.multi else file.stem))
    if not items:
        subs = _dump_subfolders(folder)
        hint = (f" It has run subfolders {', '.join(subs)}: pass a run tag (--ref-tag/--target-tag) to read one."
                if subs else "")
        raise ParityError(f"no dump files in folder {folder}.{hint} Note: {_extensions_note()}.")
    return items


def _plan_tagged(folder: Path, tag: str, fmt: Any | None) -> list[_Item]:
    items: list[_Item] = []
    for file in _listdir(folder):
        if not _is_candidate(file):
            continue
        stripped = _strip_tag(file.stem, tag)
        whole = file.stem == tag
        if stripped is None and not whole:
            continue
        f = _format_for(file, fmt)
        if f is None:
            raise ParityError(f"{file}: unknown dump file extension {file.suffix or '(none)'!r}. "
                              f"Note: {_extensions_note()}; or name the format (--format NAME).")
        if f.multi:
            items.append(_Item(file, f))
        elif whole:
            raise ParityError(f"{file}: the file name is only the run tag {tag!r}, so it names no layer. "
                              f"Note: name single-activation files LAYER_{tag}{file.suffix}.")
        else:
            items.append(_Item(file, f, name=stripped))
    if not items:
        tags = detect_tags(folder)
        seen = f" Runs found here: {', '.join(tags)}." if tags else ""
        raise ParityError(f"no dump files of run {tag!r} in folder {folder}.{seen} Note: a run's files lie in a "
                          f"subfolder {tag}/ or are named NAME_{tag}.ext, NAME-{tag}.ext or NAME.{tag}.ext.")
    return items


def _check_duplicates(items: list[_Item]) -> None:
    seen: dict[str, Path] = {}
    for it in items:
        k = it.key
        if k is None:
            continue
        if k in seen:
            raise ParityError(f"two dump files give layer {k!r}: {seen[k]} and {it.file}. "
                              f"Note: keep one of them, or move one run into its own folder.")
        seen[k] = it.file


def _read_records(item: _Item) -> Iterator[Activation]:
    """The format's records, with foreign exceptions turned into one-line errors."""
    it = iter(item.fmt.read(item.file))
    while True:
        try:
            rec = next(it)
        except StopIteration:
            return
        except ParityError:
            raise
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as e:
            raise ParityError(f"{item.file}: format {item.fmt.name!r} could not read it: "
                              f"{type(e).__name__}: {e}") from e
        yield rec


def _iterate(items: list[_Item]) -> Iterator[Activation]:
    try:
        yield from _iterate_items(items)
    except ParityError as e:
        raise _one_line(e) from e.__cause__


def _iterate_items(items: list[_Item]) -> Iterator[Activation]:
    seen: dict[str, str] = {}
    for item in items:
        if item.fmt.multi:
            count = 0
            for rec in _read_records(item):
                if item.record_tag is not None:
                    base = _strip_tag(rec.name, item.record_tag)
                    if base is None:
                        continue
                    rec = dataclasses.replace(rec, name=base)
                count += 1
                where = f"{item.file} [{rec.key}]"
                if rec.key in seen:
                    raise ParityError(f"layer {rec.key!r} appears twice: in {seen[rec.key]} and in {where}. "
                                      f"Note: keep one of them.")
                seen[rec.key] = where
                yield rec
            if count == 0 and len(items) == 1:
                what = f"no activations of run {item.record_tag!r}" if item.record_tag else "no activations"
                raise ParityError(f"{item.file}: holds {what}. Note: it must hold at least one array"
                                  + (f" named NAME_{item.record_tag}." if item.record_tag else "."))
            continue
        recs = _read_records(item)
        first = next(recs, None)
        if first is None or next(recs, None) is not None:
            raise ParityError(f"{item.file}: format {item.fmt.name!r} should give exactly one activation "
                              f"for this file but gave {'none' if first is None else 'several'}.")
        rec = dataclasses.replace(first, name=item.name or first.name)
        if item.entry is not None:
            rec = apply_manifest_entry(rec, item.entry, str(item.file))
        seen[rec.key] = str(item.file)
        yield rec


# --------------------------------------------------------------------------- tags


def detect_tags(folder: str | os.PathLike[str]) -> list[str]:
    """Run tags of a folder holding several runs, or ``[]`` when it holds one (or is no folder).

    Two layouts are recognised: top-level dump files that all end in ``_TAG``/``-TAG``/
    ``.TAG`` with every layer present under every tag (at least two tags, each containing
    a letter, so ``conv_1``/``conv_2`` are not mistaken for runs); or, when the folder has
    no dump files of its own, subfolders that hold dump files.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    if (root / MANIFEST_NAME).is_file():
        return []
    files = [f for f in _listdir(root) if _is_candidate(f)]
    if not files:
        return _dump_subfolders(root)
    by_base: dict[str, set[str]] = {}
    for f in files:
        fmt = _format_for(f, None)
        if fmt is None:
            continue
        split = split_tag(f.stem)
        if split is None:
            if not fmt.multi:
                return []
            split = ("", f.stem)  # whole-run archives such as fp32.npz / fp16.npz
        base, t = split
        if not re.search(r"[A-Za-z]", t):
            return []
        by_base.setdefault(base, set()).add(t)
    tags = set().union(*by_base.values()) if by_base else set()
    if len(tags) < 2 or any(ts != tags for ts in by_base.values()):
        return []
    return sorted(tags, key=natural_key)


# --------------------------------------------------------------------------- writing


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32]


def _temp_sibling(dest: Path, what: str) -> Path:
    """A hidden sibling naming its writer (host, pid), so a later write can tell a hard-killed one's leftovers."""
    return dest.with_name(f".{dest.name}.{what}-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _stale_pattern(dest: Path) -> re.Pattern[str]:
    # also matches the write-then-rename temporaries that a multi format makes of our own temporary
    return re.compile(r"^\.\.?" + re.escape(dest.name) + r"\.(?P<what>tmp|old)-(?P<host>[A-Za-z0-9]*)-(?P<pid>\d+)-"
                      r"[0-9a-f]{8}(?:\..*)?$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process: alive
    return True


def _clear_stale(dest: Path) -> None:
    """Remove temporaries that a hard-killed writer of ``dest`` on this host left (SIGKILL cannot clean up).

    Only siblings named by :func:`_temp_sibling` whose writing process is gone are touched;
    an ``old`` folder (the previous dump, set aside during the swap) only once ``dest`` exists again.
    """
    if os.name == "nt":  # os.kill(pid, 0) is not a liveness probe there
        return
    pat, host, me = _stale_pattern(dest), _host(), os.getpid()
    try:
        siblings = list(dest.parent.iterdir())
    except OSError:
        return
    for p in siblings:
        m = pat.match(p.name)
        if m is None or m["host"] != host or int(m["pid"]) == me or _pid_alive(int(m["pid"])):
            continue
        if m["what"] == "old" and not dest.exists():
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


def _check_destination(dest: Path, multi: bool, overwrite: bool) -> None:
    if not dest.exists() and not dest.is_symlink():
        return
    if not multi and dest.is_dir() and not dest.is_symlink() and not any(dest.iterdir()):
        return  # an empty folder made for the dump holds nothing to lose
    if not overwrite:
        raise ParityError(f"{dest} already exists. Note: choose another path, or pass overwrite=True "
                          f"(--overwrite) to replace it once the new dump is complete.")
    if multi:
        if not dest.is_file():
            raise ParityError(f"refusing to replace {dest}: it is not a file. Note: an archive dump is written "
                              f"as one file; choose another path.")
        return
    if not dest.is_dir():
        raise ParityError(f"refusing to replace {dest}: it is a file, and this dump is a folder. "
                          f"Note: choose another path.")
    contents = [p for p in dest.iterdir()]
    if contents and not (dest / MANIFEST_NAME).is_file() and not (dest / FEEDS_MANIFEST).is_file():
        raise ParityError(f"refusing to replace folder {dest}: it is not a parity dump (no {MANIFEST_NAME}) "
                          f"and holds {len(contents)} entries. Note: only empty folders and folders written "
                          f"by parity are replaced; choose another path.")


def _as_record(rec: Any, i: int) -> Activation:
    if not isinstance(rec, Activation):
        raise ParityError(f"write_dump expects Activation records; item {i} is {type(rec).__name__}.")
    if not isinstance(rec.name, str) or not rec.name:
        raise ParityError(f"record {i} has no layer name (saw {rec.name!r}); every activation needs one.")
    if not isinstance(rec.array, np.ndarray):  # a device record (or a list): its host values
        rec = dataclasses.replace(rec, array=rec.host())
    return rec


def write_dump(records: Iterable[Activation], path: str | os.PathLike[str], *, fmt: str = "npy",
               overwrite: bool = False) -> Path:
    """Write ``records`` as a dump at ``path``; return the path written.

    Single-activation formats give a folder (one file per record plus the manifest);
    multi formats give one file, whose name gets the format's extension if it lacks it.
    Records are written as they arrive and not kept. Everything goes to a temporary
    sibling first and is moved into place at the end: an interrupted write leaves nothing,
    and an existing destination is replaced (``overwrite=True``) only once the new dump is
    complete. Only empty folders, parity dump folders and plain files are ever replaced;
    an existing empty folder is used without ``overwrite``.
    """
    from parity.core.registry import get_dump_format
    f = get_dump_format(fmt)
    if not getattr(f, "writable", True):
        raise ParityError(f"format {fmt!r} can be read but not written. Note: write npy, npz or trt-text.")
    dest = Path(path)
    if f.multi and f.extensions and not any(dest.name.lower().endswith(e) for e in f.extensions):
        dest = dest.with_name(dest.name + f.extensions[0])
    _check_destination(dest, f.multi, overwrite)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ParityError(f"cannot create folder {dest.parent}: {e.strerror or e}") from e
    _clear_stale(dest)

    recs = (_as_record(r, i) for i, r in enumerate(records))
    if f.multi:
        tmp = _temp_sibling(dest, "tmp")
        try:
            written = f.write_many(_unique_keys(recs), tmp)
            if written is not None and len(written) == 0:
                raise ParityError(f"no activations to write to {dest}. Note: the records iterable was empty.")
            os.replace(tmp, dest)
        except BaseException as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            _reraise_os(e, dest)
            raise
        return dest

    tmpdir = _temp_sibling(dest, "tmp")
    try:
        tmpdir.mkdir()
        # first: a folder cut short (a hard kill, a copy of the temporary) says it is incomplete
        (tmpdir / MANIFEST_NAME).write_text(manifest_json([], f.name, complete=False), encoding="utf-8")
        entries: list[dict[str, Any]] = []
        used: set[str] = set()
        ext = f.extensions[0] if f.extensions else ""
        for rec in _unique_keys(recs):
            stem = safe_filename(rec.key)
            unique, n = stem, 1
            while (unique + ext).lower() in used or (unique + ext) == MANIFEST_NAME:
                n += 1
                unique = f"{stem}-{n}"
            fname = unique + ext
            used.add(fname.lower())
            f.write_one(rec, tmpdir / fname)
            entries.append(manifest_entry(rec, fname))  # the array itself is not kept
        if not entries:
            raise ParityError(f"no activations to write to {dest}. Note: the records iterable was empty.")
        final = tmpdir / f".{MANIFEST_NAME}.tmp"
        final.write_text(manifest_json(entries, f.name, complete=True), encoding="utf-8")
        os.replace(final, tmpdir / MANIFEST_NAME)
        _swap_in(tmpdir, dest)
    except BaseException as e:
        shutil.rmtree(tmpdir, ignore_errors=True)
        _reraise_os(e, dest)
        raise
    return dest


def _unique_keys(recs: Iterable[Activation]) -> Iterator[Activation]:
    seen: set[str] = set()
    for r in recs:
        if r.key in seen:
            raise ParityError(f"two records have the same layer key {r.key!r}; a dump holds each layer once. "
                              f"Note: give repeated outputs distinct names or output_index values.")
        seen.add(r.key)
        yield r


def _reraise_os(e: BaseException, dest: Path) -> None:
    if isinstance(e, OSError) and not isinstance(e, ParityError):
        raise write_failure("dump", dest, e) from e


def _swap_in(tmpdir: Path, dest: Path) -> None:
    """Move the finished folder into place, keeping the old one until the move succeeded."""
    if dest.exists():
        old = _temp_sibling(dest, "old")
        os.replace(dest, old)
        try:
            os.replace(tmpdir, dest)
        except BaseException:
            os.replace(old, dest)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmpdir, dest)


# --------------------------------------------------------------------------- dumps of several feeds

#: the manifest of a dump of several feeds (``--save-ref DIR`` over a dataset): which feed is where
FEEDS_MANIFEST = "parity-feeds.json"
_FEEDS_KIND = "parity-feeds"
_FEEDS_SCHEMA = 1


@dataclasses.dataclass(frozen=True)
class FeedDump:
    """One feed of a dump of several feeds: its stable index, its label, and its own dump."""

    index: int
    label: str
    path: Path


def feed_dump_path(root: str | os.PathLike[str], index: int) -> str:
    """Where the dump of feed ``index`` lies inside a dump of several feeds (or its staging folder):
    ``ROOT/feed-00003`` (a multi format adds its extension: ``feed-00003.npz``)."""
    return str(Path(root) / f"feed-{index:05d}")


def _feeds_json(feeds: list[FeedDump], dump_format: str, complete: bool) -> str:
    import json

    from parity import __version__

    head = json.dumps({"kind": _FEEDS_KIND, "schema_version": _FEEDS_SCHEMA, "parity_version": __version__,
                       "dump_format": dump_format, "complete": bool(complete)})[:-1]
    rows = ",\n ".join(json.dumps({"index": f.index, "label": f.label, "dump": f.path.name}) for f in feeds)
    return f'{head}, "feeds": [\n {rows}\n]}}\n' if rows else f'{head}, "feeds": []}}\n'


def feed_dumps(path: str | os.PathLike[str]) -> list[FeedDump] | None:
    """The feeds of a dump of several feeds, by index; ``None`` when ``path`` is no such dump.

    Refused in one line: a manifest cut short (``complete`` false: its run was interrupted), one that
    is not valid, or one listing a feed dump that is missing.
    """
    import json

    root = Path(path)
    mpath = root / FEEDS_MANIFEST
    if not root.is_dir() or not mpath.is_file():
        return None
    try:
        doc = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ParityError(f"{mpath}: not a readable feeds manifest ({type(e).__name__}). "
                          f"Note: write the dump again.") from None
    if not isinstance(doc, dict) or doc.get("kind") != _FEEDS_KIND or not isinstance(doc.get("feeds"), list):
        raise ParityError(f"{mpath}: not a parity feeds manifest (kind {_FEEDS_KIND!r} with a list of feeds).")
    if not isinstance(doc.get("schema_version"), int) or doc["schema_version"] > _FEEDS_SCHEMA:
        raise ParityError(f"{mpath}: schema_version {doc.get('schema_version')!r} is not one this parity reads "
                          f"(up to {_FEEDS_SCHEMA}). Note: upgrade parity.")
    if doc.get("complete") is not True:
        raise ParityError(f"{mpath}: the dump is incomplete (manifest says complete=false): its run was "
                          f"interrupted or failed. Note: run the comparison again to write it.")
    out: list[FeedDump] = []
    for i, e in enumerate(doc["feeds"]):
        ok = (isinstance(e, dict) and isinstance(e.get("index"), int) and isinstance(e.get("label"), str)
              and isinstance(e.get("dump"), str) and e["dump"] and "/" not in e["dump"] and "\\" not in e["dump"]
              and e["dump"] not in (".", ".."))
        if not ok:
            raise ParityError(f"{mpath}: feeds[{i}] is not {{index: int, label: str, dump: plain name}}.")
        p = root / e["dump"]
        if not p.exists():
            raise ParityError(f"{mpath}: lists feed {e['index']} in {e['dump']!r}, which is missing. "
                              f"Note: the dump was copied incompletely; write it again.")
        out.append(FeedDump(e["index"], e["label"], p))
    if len({f.index for f in out}) != len(out):
        raise ParityError(f"{mpath}: lists a feed index twice.")
    return sorted(out, key=lambda f: f.index)


class FeedDumpWriter:
    """One dump of one side over all the feeds of a run, written atomically.

    Each feed's dump is written (by :func:`write_dump`, itself atomic) into a hidden staging
    sibling of the destination, at :func:`feed_dump_path` (so Ray workers write theirs into the
    same staging folder, and a retried block simply replaces a feed's dump); :meth:`finish` puts
    down the feeds manifest and moves the staging folder into place. A run of one feed gives a
    plain dump at the destination instead, as it always did. :meth:`abort` removes the staging.
    """

    def __init__(self, dest: str | os.PathLike[str], fmt: str) -> None:
        from parity.core.registry import get_dump_format

        self.dest = Path(dest)
        self.fmt = fmt
        self.multi = bool(get_dump_format(fmt).multi)
        self.staging = _temp_sibling(self.dest, "tmp")

    def start(self) -> str:
        """Check the destination can be replaced, make the staging folder; return its path."""
        _check_feeds_destination(self.dest, self.multi)
        try:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ParityError(f"cannot create folder {self.dest.parent}: {e.strerror or e}") from e
        _clear_stale(self.dest)
        try:
            self.staging.mkdir()
            (self.staging / FEEDS_MANIFEST).write_text(_feeds_json([], self.fmt, complete=False), encoding="utf-8")
        except OSError as e:
            raise write_failure("dump", self.dest, e) from e
        return str(self.staging)

    def finish(self, labels: dict[int, str]) -> Path:
        """Move the finished dump into place: the lone feed's dump itself, or the folder of feeds."""
        try:
            listing = list(self.staging.iterdir())
            for p in listing:  # what a killed worker's attempt left (hidden temporaries)
                if p.name.startswith("."):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            by_index = {int(m[1]): p for p in listing if (m := re.fullmatch(r"feed-(\d+)(\.[A-Za-z0-9]+)?", p.name))}
            feeds = [FeedDump(i, labels.get(i, str(i)), by_index[i]) for i in sorted(by_index)]
            if not feeds:  # no feed was compared (the run says so): no dump
                self.abort()
                return self.dest
            if len(feeds) == 1:
                one = feeds[0].path
                dest = self.dest
                if self.multi and one.suffix and not dest.name.lower().endswith(one.suffix.lower()):
                    dest = dest.with_name(dest.name + one.suffix)
                _check_destination(dest, self.multi, overwrite=True)
                if self.multi:
                    os.replace(one, dest)
                else:
                    _swap_in(one, dest)
                shutil.rmtree(self.staging, ignore_errors=True)
                return dest
            if self.dest.is_file() or self.dest.is_symlink():
                raise ParityError(f"refusing to replace {self.dest} with a dump of {len(feeds)} feeds: it is a "
                                  f"file, and such a dump is a folder. Note: choose another path.")
            final = self.staging / f".{FEEDS_MANIFEST}.tmp"
            final.write_text(_feeds_json(feeds, self.fmt, complete=True), encoding="utf-8")
            os.replace(final, self.staging / FEEDS_MANIFEST)
            _swap_in(self.staging, self.dest)
        except BaseException as e:
            self.abort()
            _reraise_os(e, self.dest)
            raise
        return self.dest

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _check_feeds_destination(dest: Path, multi: bool) -> None:
    """The destination of a dump of several feeds: absent, an empty folder, or a dump parity wrote
    (a file too for an archive format: a run of one feed writes one archive)."""
    if not dest.exists() and not dest.is_symlink():
        return
    if dest.is_dir() and not dest.is_symlink():
        contents = list(dest.iterdir())
        if contents and not (dest / MANIFEST_NAME).is_file() and not (dest / FEEDS_MANIFEST).is_file():
            raise ParityError(f"refusing to replace folder {dest}: it is not a parity dump (no {MANIFEST_NAME} or "
                              f"{FEEDS_MANIFEST}) and holds {len(contents)} entries. Note: only empty folders and "
                              f"folders written by parity are replaced; choose another path.")
        return
    if multi and dest.is_file():
        return
    raise ParityError(f"refusing to replace {dest}: it is not a folder, and a dump of several feeds is one. "
                      f"Note: choose another path.")

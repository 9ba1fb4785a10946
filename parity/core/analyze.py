"""Analyze activation dumps made elsewhere (two folders/archives, or one folder holding both runs)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from parity.core.engine import compare_streams

from parity.contract.report import Report
from parity.contract.errors import ParityError

#: tags taken for the reference run when a single folder holds two runs and none was named
REF_TAG_HINTS = ("fp32", "ref", "reference", "float32", "torch")


def pick_tags(folder: Path, ref_tag: str | None, target_tag: str | None) -> tuple[str, str]:
    """Choose which run in a single-folder layout is the reference and which the target."""
    from parity.core.dumps import detect_tags

    if ref_tag and target_tag:
        return ref_tag, target_tag
    tags = detect_tags(folder)
    if ref_tag:
        others = [t for t in tags if t != ref_tag]
        if len(others) == 1:
            return ref_tag, others[0]
    elif target_tag:
        others = [t for t in tags if t != target_tag]
        if len(others) == 1:
            return others[0], target_tag
    elif len(tags) == 2:
        refs = [t for t in tags if t.lower() in REF_TAG_HINTS]
        if len(refs) == 1:
            return refs[0], next(t for t in tags if t != refs[0])
    found = ", ".join(tags) if tags else "none"
    raise ParityError(f"{folder}: cannot tell the reference run from the target run in one folder. "
                      f"Note: run tags found: {found}; pass --ref-tag and --target-tag "
                      f"(files named LAYER_TAG.ext, LAYER.TAG.ext, or in subfolders TAG/).")


def analyze(ref: str | Path, target: str | Path | None = None, *, ref_tag: str | None = None,
            target_tag: str | None = None, fmt: str | None = None,
            metrics: Sequence[str] | None = None, thresholds: dict[str, float] | None = None,
            options: dict[str, Any] | None = None, matcher: str | None = None,
            mapping: str | None = None) -> Report:
    """Compare two dumps layer by layer; with ``target=None``, ``ref`` is one folder holding both runs.

    ``matcher``: ``None`` (the default) pairs exact names and, when they leave layers unmatched on
    both sides, the auto matcher instead; a named matcher is used as given, and ``"exact"`` that
    leaves layers unmatched on both sides fails naming how many (a report of 1 of N layers would
    read as a pass). Two dumps of several feeds (``--save-ref DIR`` over a dataset) are compared
    feed by feed and folded like a dataset run. ``mapping``: a TOML mapping file (pins,
    exclusions), applied around whichever matcher is selected.
    """
    from parity.contract.matcher import MappingRules
    from parity.core.dumps import feed_dumps, read_dump

    rules = MappingRules.load(mapping) if mapping else None
    kw = dict(metrics=metrics, thresholds=thresholds, options=options, rules=rules)

    ref = Path(ref)
    if target is None:
        if not ref.is_dir():
            raise ParityError(f"{ref}: a single path must be a folder holding both runs. "
                              f"Note: give REF and TARGET, or a folder with two tagged runs.")
        rt, tt = pick_tags(ref, ref_tag, target_tag)
        return _pair(lambda: read_dump(ref, tag=rt, fmt=fmt), lambda: read_dump(ref, tag=tt, fmt=fmt),
                     matcher, (rt, tt), str(ref), **kw)
    target = Path(target)
    labels = (str(ref) + (f"[{ref_tag}]" if ref_tag else ""), str(target) + (f"[{target_tag}]" if target_tag else ""))
    ref_feeds, tgt_feeds = feed_dumps(ref), feed_dumps(target)
    if ref_feeds is None and tgt_feeds is None:
        return _pair(lambda: read_dump(ref, tag=ref_tag, fmt=fmt), lambda: read_dump(target, tag=target_tag, fmt=fmt),
                     matcher, labels, str(ref), **kw)
    return _analyze_feeds(ref, target, ref_feeds, tgt_feeds, fmt, matcher, labels, **kw)


def _analyze_feeds(ref: Path, target: Path, ref_feeds: list[Any] | None, tgt_feeds: list[Any] | None,
                   fmt: str | None, matcher: str | None, labels: tuple[str, str], **kw: Any) -> Report:
    """Two dumps of several feeds, feed by feed (paired by feed index), folded into one dataset report."""
    from parity.core.dumps import FEEDS_MANIFEST, read_dump
    from parity.core.stats import DatasetStats

    if ref_feeds is None or tgt_feeds is None:
        many, one = (ref, target) if ref_feeds is not None else (target, ref)
        n = len(ref_feeds or tgt_feeds or [])
        raise ParityError(f"{many} is a dump of {n} feeds ({FEEDS_MANIFEST}) but {one} is a dump of one. "
                          f"Note: compare dumps of the same feeds: two dumps of several feeds, or one feed's dump "
                          f"(e.g. {(ref_feeds or tgt_feeds)[0].path}) against {one}.")  # type: ignore[index]
    r_by = {f.index: f for f in ref_feeds}
    t_by = {f.index: f for f in tgt_feeds}
    if set(r_by) != set(t_by):
        only_r, only_t = sorted(set(r_by) - set(t_by)), sorted(set(t_by) - set(r_by))
        raise ParityError(f"{ref} and {target} hold different feeds ({len(r_by)} and {len(t_by)}; "
                          f"only in the reference: {only_r[:5] or 'none'}, only in the target: {only_t[:5] or 'none'}). "
                          f"Note: compare the dumps of one run (--save-ref and --save-target together).")
    stats = DatasetStats()
    report: Report | None = None
    for i in sorted(r_by):
        rf, tf = r_by[i], t_by[i]
        report = _pair(lambda: read_dump(rf.path, fmt=fmt), lambda: read_dump(tf.path, fmt=fmt), matcher,
                       labels, f"{rf.path} (feed {i})", **kw)
        stats.add(i, rf.label or tf.label, report)
    assert report is not None
    out = stats.report(report.metrics, *labels)
    out.summary["inputs"] = stats.inputs
    return out


def _unmatched(report: Report) -> tuple[int, int, int]:
    """(paired rows, reference-only rows, target-only rows)."""
    from parity.contract.report import REF_ONLY, TARGET_ONLY

    ro = sum(1 for r in report.layers if r.status == REF_ONLY)
    to = sum(1 for r in report.layers if r.status == TARGET_ONLY)
    return len(report.layers) - ro - to, ro, to


def _pair(read_ref: Any, read_tgt: Any, matcher: str | None, labels: tuple[str, str], where: str,
          **kw: Any) -> Report:
    """One comparison of two dumps (read by the callables, twice if the auto matcher must retry);
    ``kw``: :func:`compare_streams`'s metrics, thresholds, options and rules."""
    def run(m: str) -> Report:
        return compare_streams(read_ref(), read_tgt(), matcher=m, ref_label=labels[0], target_label=labels[1], **kw)

    report = run(matcher or "exact")
    if not report.layers:
        raise ParityError(f"{where}: no activations found to compare.")
    paired, ro, to = _unmatched(report)
    if not (ro and to) or matcher not in (None, "exact"):
        return report
    if matcher == "exact":
        raise ParityError(f"{where}: exact layer names paired {paired} of {paired + ro} reference layers "
                          f"({ro} reference and {to} target layers left unmatched). Note: use --matcher auto "
                          f"(pairs by graph outputs, provenance, normalized names, order and shape, values), "
                          f"or a --mapping file that pins the pairs.")
    auto = run("auto")
    auto.summary["matcher"] = (f"auto: exact names paired {paired} of {paired + ro} reference layers, "
                               f"{ro} and {to} left unmatched")
    return auto

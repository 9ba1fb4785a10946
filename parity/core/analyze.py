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
            options: dict[str, Any] | None = None, matcher: str = "exact", mapping: str | None = None) -> Report:
    """Compare two dumps layer by layer; with ``target=None``, ``ref`` is one folder holding both runs.

    ``mapping``: a TOML mapping file (pins, exclusions), applied around whichever matcher is selected.
    """
    from parity.contract.matcher import MappingRules
    from parity.core.dumps import read_dump

    rules = MappingRules.load(mapping) if mapping else None

    ref = Path(ref)
    if target is None:
        if not ref.is_dir():
            raise ParityError(f"{ref}: a single path must be a folder holding both runs. "
                              f"Note: give REF and TARGET, or a folder with two tagged runs.")
        rt, tt = pick_tags(ref, ref_tag, target_tag)
        ref_stream = read_dump(ref, tag=rt, fmt=fmt)
        tgt_stream = read_dump(ref, tag=tt, fmt=fmt)
        labels = (rt, tt)
    else:
        target = Path(target)
        ref_stream = read_dump(ref, tag=ref_tag, fmt=fmt)
        tgt_stream = read_dump(target, tag=target_tag, fmt=fmt)
        labels = (str(ref) + (f"[{ref_tag}]" if ref_tag else ""),
                  str(target) + (f"[{target_tag}]" if target_tag else ""))
    report = compare_streams(ref_stream, tgt_stream, metrics, matcher=matcher, thresholds=thresholds,
                             options=options, ref_label=labels[0], target_label=labels[1], rules=rules)
    if not report.layers:
        raise ParityError(f"{ref}: no activations found to compare.")
    return report

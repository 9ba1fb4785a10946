"""``parity analyze``: compare two activation dumps made elsewhere (no model runs).

A thin layer: its flags, then the Python API; the shared groups live in ``_common``.
"""
from __future__ import annotations

import argparse
from typing import Any

from parity.cli._common import add_report_args, check_reports, csv_list, emit, metric_options


def add_parser(sub: Any) -> None:
    an = sub.add_parser("analyze", help="compare two activation dumps made elsewhere (folders or archives)")
    an.add_argument("ref", help="reference dump: folder or archive (or one folder holding both runs)")
    an.add_argument("target", nargs="?", help="target dump: folder or archive")
    an.add_argument("--ref-tag", help="run tag of the reference in a single-folder layout (e.g. fp32)")
    an.add_argument("--target-tag", help="run tag of the target in a single-folder layout (e.g. fp16)")
    an.add_argument("--format", dest="fmt", help="dump format name (default: by file extension)")
    an.add_argument("--matcher", help="layer matcher (default: exact names, or auto when exact names leave layers "
                                      "unmatched on both sides; --matcher exact then fails instead)")
    an.add_argument("--mapping", help="TOML file pinning or excluding layer pairs, for any matcher "
                                      "(see configs/mapping.example.toml)")
    add_report_args(an)


def run(args: argparse.Namespace) -> int:
    from parity.core.analyze import analyze
    from parity.core.parse import parse_thresholds

    metrics = csv_list(args.metrics)
    check_reports(args, inputs=[(w, p) for w, p in (("reference dump", args.ref), ("target dump", args.target),
                                                      ("--mapping", args.mapping)) if p])
    report = analyze(args.ref, args.target, ref_tag=args.ref_tag, target_tag=args.target_tag, fmt=args.fmt,
                     metrics=metrics, thresholds=parse_thresholds(args.threshold, metrics),
                     options=metric_options(args), matcher=args.matcher, mapping=args.mapping)
    return emit(report, args)

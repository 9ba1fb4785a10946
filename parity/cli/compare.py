"""``parity compare``: run a model in a reference and one or more targets and compare every layer.

A thin layer: its flags, then the Python API; the shared groups live in ``_common``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from parity.contract.errors import UsageError
from parity.cli._common import (add_report_args, add_run_args, build_settings, check_reports, emit, report_options,
                                report_requests, suffixed)


def add_parser(sub: Any) -> None:
    co = sub.add_parser("compare", help="run a model in a reference and target(s), compare every layer")
    add_run_args(co, several_targets=True)
    g = co.add_argument_group("dumps made elsewhere (instead of --target)")
    g.add_argument("--target-dump", help="compare against a dump: Polygraphy JSON, trtexec JSON, .npz or a folder")
    g.add_argument("--target-onnx", help="the ONNX model the dump was made from (provenance, op types, outputs)")
    g.add_argument("--layer-info", help="TensorRT layer information JSON (trtexec --exportLayerInfo) for fused names")
    g = co.add_argument_group("saving activations")
    g.add_argument("--save-ref", metavar="PATH", help="also write the reference's activations as a dump")
    g.add_argument("--save-target", metavar="PATH", help="also write the target's activations as a dump "
                                                         "(with several targets, one per target: PATH.TARGET)")
    g.add_argument("--save-format", default="npy", help="dump format for --save-*: npy (folder), npz, trt-text")
    co.add_argument("--diagnose", action="store_true",
                    help="also run each layer alone in the target (local error), name the culprit layers, "
                         "and trace value ranges against the target format")
    add_report_args(co)


def run(args: argparse.Namespace) -> int:
    from parity.core.compare import compare

    targets = args.target or (["dump"] if args.target_dump else ["ort"])
    if args.target_dump and args.target:
        raise UsageError("give either --target or --target-dump, not both")
    from parity.core.compare import check_settings

    rc = 0
    many = len(targets) > 1
    runs = []
    for k, tgt in enumerate(targets):
        settings = build_settings(args, tgt, args.diagnose)
        settings.save_target = suffixed(settings.save_target, tgt, many)
        if k:
            settings.save_ref = None  # the reference run is the same for every target: saved once
        runs.append((tgt, settings))
    saves = [(o, p) for _, st in runs for o, p in (("--save-ref", st.save_ref), ("--save-target", st.save_target)) if p]
    from parity.core.compare import input_paths

    check_reports(args, targets, saves, inputs=[i for _, st in runs for i in input_paths(st)])
    for _, settings in runs:  # every source must be able to run before any runs
        check_settings(settings)
    # several targets and a machine-readable report on standard output: one document for all (JSON: a list)
    piped = next((r for r in report_requests(args) if r.to_stdout and r.name != "table"), None) if many else None
    reports = []
    for tgt, settings in runs:
        report = compare(settings)
        reqs = report_requests(args, tgt, many)
        if piped:
            reports.append(report)
            reqs = [r for r in reqs if not r.to_stdout]
        rc = max(rc, emit(report, args, reqs, piped=piped is not None))
        if many:
            print(file=sys.stderr if piped else sys.stdout)
    if piped:
        from parity.core.report import write_stdout_many

        write_stdout_many(reports, piped.name, report_options(args))
    return rc

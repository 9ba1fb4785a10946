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
    co.add_argument("--stages", metavar="LIST",
                    help="staged attribution: compare each stage with the reference and say what each adds, e.g. "
                         "modelopt-int8,onnx-qdq,ort (quantization, export, runtime) or torch-fp16,onnx-fp16,ort "
                         "(docs/modelopt.md)")
    co.add_argument("--diagnose", action="store_true",
                    help="also run each layer alone in the target (local error), name the culprit layers, "
                         "and trace value ranges against the target format")
    add_report_args(co)


def run(args: argparse.Namespace) -> int:
    from parity.core.compare import compare

    if getattr(args, "stages", None):
        return run_stages(args)

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


def run_stages(args: argparse.Namespace) -> int:
    """``--stages``: one compare per stage against the same reference, then what each stage adds (core.stages)."""
    import json

    from parity.core.compare import check_settings
    from parity.core.stages import resolve, staged_compare

    if args.target or args.target_dump:
        raise UsageError("give either --stages or --target/--target-dump, not both")
    stages = resolve(args.stages.split(","))
    settings = build_settings(args, stages[0], args.diagnose)
    check_settings(settings)
    staged = staged_compare(settings, stages)
    for line in staged.lines():
        print(line)
    json_path = getattr(args, "json", None)
    if json_path and json_path != "-":
        from parity.contract.atomic import write_text

        write_text(json_path, json.dumps(staged.to_dict(), indent=2, allow_nan=True) + "\n")
    elif json_path == "-":
        print(json.dumps(staged.to_dict(), indent=2, allow_nan=True))
    return 0 if staged.reports[-1] else 1

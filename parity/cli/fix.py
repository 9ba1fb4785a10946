"""``parity fix``: search and verify a small set of layers to keep at higher precision.

A thin layer: its flags, then the Python API; the shared groups live in ``_common``.
"""
from __future__ import annotations

import argparse
from typing import Any

from parity.cli._common import (add_report_args, add_run_args, build_settings, check_reports, csv_list, emit,
                                report_requests, verdict)


def add_parser(sub: Any) -> None:
    fx = sub.add_parser("fix", help="find and verify a small set of layers to keep at higher precision")
    add_run_args(fx, several_targets=False)
    fx.add_argument("--goal", default="cosine=0.999",
                    help="what the model outputs must reach, METRIC=VALUE: at least VALUE for a similarity, at most "
                         "for a distance (l2=0.01); a bare VALUE names the primary metric (default cosine=0.999)")
    fx.add_argument("--max-steps", type=int, default=24, help="most layers to try adding (default 24)")
    fx.add_argument("--write-config", metavar="PATH", help="write the verified set as a parity TOML config")
    fx.add_argument("--write-model", metavar="PATH", help="write the target's ONNX model with the verified set kept "
                                                          "in fp32 (ONNX targets: ort-fp16, ort-bf16, ort-int8)")
    add_report_args(fx)


def run(args: argparse.Namespace) -> int:
    from parity.contract.atomic import write_text
    from parity.core.compare import compare
    from parity.core.api import run_fix

    from parity.core.engine import DEFAULT_METRICS
    from parity.core.parse import parse_goal
    from parity.core.registry import get_metric

    # unnamed: the primary metric
    goal_metric, goal = parse_goal(args.goal, (csv_list(args.metrics) or list(DEFAULT_METRICS))[0])
    gm = get_metric(goal_metric)
    from parity.core.compare import input_paths
    from parity.core.fix import check_fixable

    settings = build_settings(args, args.target, True)
    check_fixable(settings.target)  # a target that cannot keep layers: refused before the compare runs
    check_reports(args, saves=[(o, p) for o, p in (("--write-config", args.write_config),
                                                    ("--write-model", args.write_model)) if p],
                   inputs=input_paths(settings))
    report = compare(settings)
    emit(report, argparse.Namespace(**{**vars(args), "fail_under": None, "quiet": True}))
    print()
    print(f"Searching layers to keep in fp32 until the outputs reach {goal_metric} {goal:g} "
          f"(every step re-runs {args.target}):")
    res = run_fix(settings, report, goal_metric, goal, max_steps=args.max_steps, log=lambda m: print("  " + m))
    _record_fix(report, res, gm, args)
    if res.semantics:
        print(f"Measured under: {res.semantics}.")
    cmp = ">=" if gm.higher_is_better else "<="
    if res.before == res.after and not res.kept and res.passed:
        print(f"{args.target} already reaches {goal_metric} {gm.format(res.before)} {cmp} {goal:g} at the outputs: "
              f"nothing to keep.")
        if not report:  # same run, other criterion: the compare gate judges every layer, the goal the outputs
            culprit = report.summary.get("first_culprit")
            print(f"Note: layers inside the model fail the compare threshold"
                  + (f" (culprit {culprit})" if culprit else "")
                  + f", but the outputs meet the goal; pass a stricter --goal to search a fix for them.")
        return 0
    if not res.passed:
        print(f"No verified fix: keeping {len(res.kept)} of {res.total_layers} target nodes reached {goal_metric} "
              f"{gm.format(res.after)}, short of {goal:g} (from {gm.format(res.before)}; best measured "
              f"{gm.format(res.best)}). Stopped because {res.stopped}.")
        return verdict([f"no verified fix reaches {goal_metric} {goal:g}"], args)
    print(f"Verified fix: keep {len(res.kept)} of {res.total_layers} target nodes in fp32; output {goal_metric} "
          f"{gm.format(res.before)} -> {gm.format(res.after)} {cmp} {goal:g} (re-measured).")
    for label, text in res.forms(args.target).items():
        print(f"\n{label}:\n{text}")
    if args.write_config:
        try:
            write_text(args.write_config, res.forms(args.target)["parity config (TOML)"] + "\n")
        except OSError as e:
            from parity.contract.atomic import write_failure

            raise write_failure("--write-config", args.write_config, e) from None
    if args.write_model:
        from parity.core.fix import write_fixed_model

        print(f"\nFixed model (runs as measured): {write_fixed_model(settings, res, args.write_model)}")
    return 0


def _record_fix(report: Any, res: Any, gm: Any, args: argparse.Namespace) -> None:
    """Put the searched fix into the report's summary and rewrite the report files (the HTML page shows it)."""
    from parity.core.report import write_reports

    report.summary["fix"] = {
        "goal_metric": gm.name, "goal": res.goal, "before": res.before, "after": res.after,
        "before_text": gm.format(res.before), "after_text": gm.format(res.after), "passed": res.passed,
        "kept": list(res.kept), "total_layers": res.total_layers, "semantics": res.semantics,
        "forms": res.forms(args.target) if res.passed and res.kept else {}}
    files = [r for r in report_requests(args) if not r.to_stdout]
    if files:
        write_reports(report, files, {"sort": args.sort, "max_rows": args.max_rows, "quiet": True})

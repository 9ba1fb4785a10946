"""What the commands share: the argument groups, option checks, settings and report plumbing.

Each command module (compare, fix, ...) only adds its own flags and calls the Python API; the
helpers here are the one copy of what several commands need, so a flag means the same everywhere.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Sequence

from parity.contract.errors import ParityError, UsageError
from parity.contract.options import as_list, check_seed
from parity.cli.source_flags import add_source_flags, flag_values


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other parity error
        raise UsageError(f"{message} (see '{self.prog} --help')")


def csv_list(s: str | None) -> list[str] | None:
    return as_list(s) or None


def at_least(args: argparse.Namespace, key: str, low: float, what: str = "") -> None:
    value = getattr(args, key, None)
    if value is None:
        return
    option = "--" + key.replace("_", "-")
    if not math.isfinite(value) or value < low:
        raise UsageError(f"{option} {value:g}: must be {what or f'at least {low:g}'}.")


def validate(args: argparse.Namespace) -> None:
    """Every option of analyze/compare/fix checked against its meaning before anything runs.

    The one rule: a wrong command line (unknown name, malformed or out-of-range value, conflicting
    options) is a usage error, exit 2; what it names being bad (files, models) is found later, exit 1.
    """
    from parity.core.engine import DEFAULT_METRICS
    from parity.core.parse import known, parse_goal, parse_thresholds
    from parity.core.preflight import check_metric_value

    if args.command not in ("analyze", "compare", "fix"):
        return
    if args.metrics is not None and not as_list(args.metrics):
        raise UsageError(f"--metrics {args.metrics!r} names no metric. Note: use names from 'parity plugins', "
                         f"e.g. cosine,rel-diff (the default is {','.join(DEFAULT_METRICS)}).")
    metrics = csv_list(args.metrics) or list(DEFAULT_METRICS)
    for m in metrics:
        known("metric", m, "--metrics")
    parse_thresholds(args.threshold, metrics)
    if args.fail_under is not None:
        check_metric_value(known("metric", metrics[0], "--metrics"), args.fail_under, f"--fail-under {args.fail_under}")
    at_least(args, "rel_tol", 0, "a finite number >= 0")
    at_least(args, "abs_tol", 0, "a finite number >= 0")
    at_least(args, "rms_tol", 0, "a finite number >= 0")
    if args.exit_zero and args.fail_under is not None:
        raise UsageError("--exit-zero and --fail-under contradict each other: one asks never to fail, the other "
                         "sets when to fail. Note: give one of them.")
    at_least(args, "kl_bins", 2)
    at_least(args, "max_rows", 0)
    for req in report_requests(args):
        known("reporter", req.name, "--report")
    if args.command == "analyze":
        if args.fmt:
            known("dump-format", args.fmt, "--format")
        if args.matcher:
            known("matcher", args.matcher, "--matcher")
        return
    from parity.core.inputs import parse_input_shapes

    parse_input_shapes(args.input_shape)
    check_seed(args.seed)  # the rule parity.compare(seed=...) applies too
    at_least(args, "random_inputs", 1)
    at_least(args, "workers", 1)
    at_least(args, "limit", 1)
    at_least(args, "opset", 1)
    if args.device != "cpu" and not (args.device == "cuda" or (args.device.startswith("cuda:")
                                                                and args.device[5:].isdigit())):
        raise UsageError(f"--device {args.device!r}: expected cpu, cuda or cuda:N.")
    if args.ref is None:  # not given: a reference that can run the model (ONNX Runtime fp32 for an .onnx file)
        from parity.core.api import default_ref

        args.ref = default_ref(args.model)
    known("source", args.ref, "--ref")
    targets = args.target if isinstance(args.target, list) else [args.target] if args.target else []
    for t in targets:
        known("source", t, "--target")
    known("matcher", args.matcher, "--matcher")
    if getattr(args, "save_format", None):
        known("dump-format", args.save_format, "--save-format")
    if args.command == "fix":
        at_least(args, "max_steps", 1)
        parse_goal(args.goal, metrics[0])


def add_report_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("metrics and report")
    g.add_argument("--metrics", help="comma-separated metric names; the first is the primary one "
                                     "(default: cosine,rel-diff,max-abs,nonfinite)")
    g.add_argument("--threshold", help="pass threshold of the primary metric (0.999) or per metric "
                                       "(cosine=0.999,rel-diff=99); marks the first diverging layer")
    g.add_argument("--rel-tol", type=float, default=0.1,
                   help="relative tolerance of the rel-diff metric (default 0.1, as in the TensorRT recipe)")
    g.add_argument("--abs-tol", type=float, default=0.0, help="absolute tolerance added in rel-diff")
    g.add_argument("--kl-bins", type=int, default=None,
                   help="histogram bins of the kl metric (default 256; use <= 64 for INT8 targets)")
    g.add_argument("--sort", choices=["order", "worst"], default="order", help="table row order")
    g.add_argument("--max-rows", type=int, default=None, help="print at most N table rows")
    g.add_argument("--columns", metavar="NAME,...",
                   help="table columns to show besides #, layer and the marker (shape, op, a metric, local, "
                        "matched ..., or all); default: what fits the terminal, the hidden ones named under it")
    g.add_argument("--report", action="append", metavar="NAME[=PATH]",
                   help="write the report with reporter NAME (table, json, csv, or a plugin's) to PATH; "
                        "NAME or NAME=- writes to standard output, replacing the table there (repeatable)")
    g.add_argument("--json", metavar="PATH", help="shorthand for --report json=PATH (schema in docs/report-schema.md)")
    g.add_argument("--csv", metavar="PATH", help="shorthand for --report csv=PATH")
    g.add_argument("--html", metavar="PATH", help="shorthand for --report html=PATH: one self-contained page "
                                                  "with the verdict, plots and a sortable table (docs/reports.md)")
    g.add_argument("--fail-under", type=float, metavar="X",
                   help="the bound of the exit rule instead of the primary threshold: exit 1 if any compared "
                        "layer's primary metric is worse than X (below X for similarities, above for distances)")
    g.add_argument("--exit-zero", action="store_true",
                   help="exit 0 even when the comparison fails (a layer below the threshold or --fail-under, NaN/Inf "
                        "gained, shapes differing; for fix, no verified fix); errors still exit 1 or 2")
    g.add_argument("--rms-tol", type=float, default=0.1,
                   help="rel-diff's floor as a share of the reference's rms (default 0.1; 0 for the purely "
                        "relative test of the TensorRT recipe)")
    g.add_argument("--top1", action="store_true",
                   help="top-1 agreement over the last axis of any output (default: only [batch, classes] outputs)")
    g.add_argument("--quiet", "-q", action="store_true", help="no table, only the verdict lines")


def add_run_args(co: argparse.ArgumentParser, several_targets: bool) -> None:
    co.add_argument("model", help="model: .onnx, TorchScript .pt, ExportedProgram .pt2, or package.module:factory")
    co.add_argument("--ref", help="reference source (default: ort, ONNX Runtime fp32, for an .onnx model; "
                                  "torch otherwise)")
    if several_targets:
        co.add_argument("--target", action="append", help="target source; repeat for several (default: ort)")
    else:
        co.add_argument("--target", default="ort-fp16", help="target source (default: ort-fp16)")
    g = co.add_argument_group("inputs")
    g.add_argument("--inputs", help=".npy/.npz file, a folder of them (one feed per file, streamed), or a "
                                    "Python dataset module:function / data.py:function returning an iterable "
                                    "of feeds or a torch DataLoader")
    g.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224[:DTYPE]",
                   help="shape for random inputs or dynamic dims, optionally their dtype "
                        "(input_ids:1x16:int64) (repeatable)")
    g.add_argument("--seed", type=int, default=0, help="seed of random inputs (default 0)")
    g.add_argument("--random-inputs", type=int, default=1, metavar="N", help="number of random feeds (default 1)")
    g.add_argument("--calibration", help="feeds for INT8 calibration (default: the first 64 compared inputs, at most 256 MiB)")
    g = co.add_argument_group("sources")
    g.add_argument("--device", default="cpu", help="cpu or cuda (torch sources)")
    g.add_argument("--device-scoring", choices=("auto", "on", "off"), default="auto",
                   help="score pairs where the tensors are (torch sources hand over device tensors; only "
                        "per-layer scalars cross to the host): auto = on with a cuda device (default)")
    add_source_flags(g)  # each source's own flags, from its option schema (parity plugins --options SOURCE)
    g.add_argument("--workdir", help="cache of exported/converted models and engines "
                                     "(default: the user cache folder, e.g. ~/.cache/parity)")
    g.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="any other source option (repeatable; 'parity plugins --options SOURCE' lists them)")
    g.add_argument("--config", help="parity TOML config: [precision] keep_fp32 = [...] (as 'parity fix' writes), "
                                    "[options] source options")
    g = co.add_argument_group("datasets and scale")
    g.add_argument("--layers", metavar="REGEX|@FILE",
                   help="compare only layers whose name, module path or ONNX node matches REGEX (or named in "
                        "FILE, one a line); sources capture only those; model outputs always stay")
    g.add_argument("--limit", type=int, metavar="N", help="compare at most the first N feeds of --inputs")
    g.add_argument("--force", action="store_true",
                   help="run even when parity's memory estimate exceeds the memory available")
    g.add_argument("--max-memory", metavar="BYTES",
                   help="memory for activations waiting to be paired, e.g. 2G (beyond it they spill to disk)")
    g.add_argument("--device-memory", metavar="BYTES",
                   help="device memory for device records waiting to be paired, e.g. 4G (default: a quarter "
                        "of the free device memory; beyond it they move to the host)")
    g.add_argument("--step-bytes", metavar="BYTES",
                   help="activation bytes a source captures per step, e.g. 256M (default: the source's)")
    g.add_argument("--all-tensors", action="store_true",
                   help="capture every target tensor, also those no reference layer can pair with "
                        "(default: only what pairs; the report counts the rest)")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="shard the feeds over N Ray workers (pip install 'parity[ray]'); each holds both models once")
    g.add_argument("--ray-address", metavar="ADDR",
                   help="run the workers on an existing Ray cluster (ray://host:10001 or auto)")
    g = co.add_argument_group("matching")
    g.add_argument("--matcher", default="auto", help="layer matcher (default: auto, cross-framework)")
    g.add_argument("--mapping", help="TOML file pinning or excluding layer pairs (see configs/mapping.example.toml)")


def metric_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"rel_tol": args.rel_tol, "abs_tol": args.abs_tol, "kl_bins": args.kl_bins, "rms_tol": args.rms_tol,
            "top1": args.top1}


def report_requests(args: argparse.Namespace, tag: str | None = None, many: bool = False) -> list[Any]:
    """The reports asked for: --report NAME=PATH, --json/--csv shorthands, and the table on stdout
    unless another report goes there. With several targets, each file path gets the target's name."""
    from parity.core.report import ReportRequest, parse_report_arg

    reqs = [parse_report_arg(r) for r in (getattr(args, "report", None) or [])]
    if getattr(args, "json", None):
        reqs.append(ReportRequest("json", args.json))
    if getattr(args, "csv", None):
        reqs.append(ReportRequest("csv", args.csv))
    if getattr(args, "html", None):
        reqs.append(ReportRequest("html", args.html))
    if not any(r.to_stdout for r in reqs):
        reqs.insert(0, ReportRequest("table"))
    if tag is not None:
        reqs = [r if r.to_stdout else ReportRequest(r.name, suffixed(r.path, tag, many) or r.path) for r in reqs]
    return reqs


def check_reports(args: argparse.Namespace, targets: Sequence[str] = (), saves: Sequence[tuple[str, str]] = (),
                   inputs: Sequence[tuple[str, str]] = ()) -> None:
    """Fail on an unknown reporter name, or an output path that cannot be written, before any model runs.

    With several targets, every target's report paths are checked; ``saves`` are further outputs
    (option, path) such as --save-ref and --write-config; ``inputs`` (what, path) are the files the
    run reads, which no output may overwrite.
    """
    from parity.core.preflight import check_distinct_outputs, check_no_clobber, check_output_path
    from parity.core.engine import DEFAULT_METRICS
    from parity.core.report import check_report_options, get_reporters

    requests = report_requests(args)
    get_reporters(requests)
    check_report_options(requests, report_options(args),
                         csv_list(getattr(args, "metrics", None)) or list(DEFAULT_METRICS))
    many = len(targets) > 1
    reqs = [r for t in targets for r in report_requests(args, t, many)] if many else requests
    outputs = [(f"{r.name} report", r.path) for r in reqs if not r.to_stdout] + list(saves)
    for option, path in outputs:
        check_output_path(path, option, folder_ok=option.startswith("--save"))
    check_distinct_outputs(outputs)
    check_no_clobber(outputs, read_paths(args, inputs))


def read_paths(args: argparse.Namespace, inputs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The files a run reads, (what, path): ``inputs`` and --config, which no output may overwrite."""
    config = getattr(args, "config", None)
    return [*inputs, *([("--config", config)] if config else [])]


def report_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"sort": args.sort, "max_rows": args.max_rows, "quiet": args.quiet, "columns": getattr(args, "columns", None)}


def emit(report: Any, args: argparse.Namespace, requests: list[Any] | None = None, piped: bool = False) -> int:
    from parity.core.compare import gate
    from parity.core.report import write_reports

    reqs = requests if requests is not None else report_requests(args)
    written = write_reports(report, reqs, report_options(args))
    # the paths go where they cannot corrupt a machine-readable report on standard output
    stream = sys.stderr if piped or any(r.to_stdout and r.name != "table" for r in reqs) else sys.stdout
    for name, path in written:
        print(f"{name} report written to {path}", file=stream)
    return verdict(gate(report, args.fail_under), args)


def verdict(reasons: list[str], args: argparse.Namespace) -> int:
    """The exit rule: a failing comparison (or fix) exits 1 and says why, unless --exit-zero."""
    if not reasons:
        return 0
    for why in reasons:
        print(f"parity: FAIL: {why}", file=sys.stderr)
    if getattr(args, "exit_zero", False):
        print("parity: --exit-zero: exiting 0 anyway", file=sys.stderr)
        return 0
    return 1


def load_config(path: str) -> dict[str, Any]:
    """Source options from a parity TOML config file."""
    import tomllib

    try:
        data = tomllib.loads(open(path, encoding="utf-8").read())
    except FileNotFoundError:
        raise ParityError(f"{path}: config file not found.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ParityError(f"{path}: not valid TOML ({e}).") from None
    unknown = set(data) - {"precision", "options"}
    if unknown:
        raise ParityError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}. Note: valid: [precision], [options].")
    opts = dict(data.get("options", {}))
    keep = data.get("precision", {}).get("keep_fp32")
    if keep is not None:
        if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
            raise ParityError(f"{path}: [precision] keep_fp32 must be a list of layer names.")
        opts["keep_high_precision"] = keep
    return opts


def source_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = load_config(args.config) if getattr(args, "config", None) else {}
    opts.update(flag_values(args))
    for item in args.option or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UsageError(f"--option {item!r}: expected KEY=VALUE")
        opts[k.strip().replace("-", "_")] = v
    return opts


def suffixed(path: str | None, tag: str, many: bool) -> str | None:
    if not path or not many:
        return path
    p = os.path.splitext(path)
    return f"{p[0]}.{tag}{p[1]}"


def build_settings(args: argparse.Namespace, target: str, diagnose: bool) -> Any:
    """The settings of one run of compare, fix or repro, by the one builder the Python API uses too."""
    from parity.core.settings import build

    return build(
        model=args.model, ref=args.ref, target=target, device=args.device, workdir=args.workdir,
        options=source_options(args), target_dump=getattr(args, "target_dump", None),
        target_onnx=getattr(args, "target_onnx", None), layer_info=getattr(args, "layer_info", None),
        inputs=args.inputs, input_shapes=args.input_shape, seed=args.seed, random_inputs=args.random_inputs,
        calibration=args.calibration, limit=getattr(args, "limit", None),
        metrics=csv_list(getattr(args, "metrics", None)), threshold=getattr(args, "threshold", None),
        metric_options=metric_options(args) if hasattr(args, "rel_tol") else None, mapping=args.mapping,
        matcher=args.matcher, diagnose=diagnose, layers=getattr(args, "layers", None),
        save_ref=getattr(args, "save_ref", None), save_target=getattr(args, "save_target", None),
        save_format=getattr(args, "save_format", "npy"), max_memory=getattr(args, "max_memory", None),
        step_bytes=getattr(args, "step_bytes", None), workers=getattr(args, "workers", 1) or 1,
        ray_address=getattr(args, "ray_address", None), force=getattr(args, "force", False),
        all_tensors=getattr(args, "all_tensors", False), device_scoring=getattr(args, "device_scoring", "auto"),
        device_memory=getattr(args, "device_memory", None))

"""Command line: parses arguments and calls the public API. Nothing else lives here.

Every ParityError becomes one line on stderr and a non-zero exit (2 for usage, 1 otherwise).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Sequence

from parity.contract.errors import ParityError, UsageError, one_line
from parity.contract.options import as_list, check_seed


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other parity error
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _csv_list(s: str | None) -> list[str] | None:
    return as_list(s) or None


def parse_thresholds(s: str | None, metrics: list[str] | None) -> dict[str, float]:
    """``0.999`` applies to the first (primary) metric; ``cosine=0.999,rel-diff=99`` names them.

    Each must name a selected metric and lie in the values that metric takes (usage errors).
    """
    from parity.core.engine import DEFAULT_METRICS
    from parity.core.preflight import check_metric_value

    if s is None:
        return {}
    selected = metrics or list(DEFAULT_METRICS)
    out: dict[str, float] = {}
    parts = [p for p in s.split(",") if p.strip()]
    if not parts:
        raise UsageError(f"--threshold {s!r} gives no value. Note: use 0.999 or cosine=0.999,rel-diff=99.")
    for part in parts:
        name, _, val = part.rpartition("=")
        name = name.strip() or selected[0]
        try:
            value = float(val)
        except ValueError:
            raise UsageError(f"--threshold: {part!r} is not a number. Note: use 0.999 or cosine=0.999,rel-diff=99.")
        if name not in selected:
            raise UsageError(f"--threshold {part!r}: metric {name!r} is not selected. "
                             f"Note: selected metrics are {', '.join(selected)} (--metrics).")
        out[name] = check_metric_value(_known("metric", name, "--threshold"), value, f"--threshold {part.strip()}")
    return out


def _known(kind: str, name: str, option: str) -> Any:
    """A registered plugin object; an unknown name on the command line is a usage error (exit 2)."""
    from parity.core import registry as r

    get = {"metric": r.get_metric, "reporter": r.get_reporter, "source": r.get_source, "matcher": r.get_matcher,
           "dump-format": r.get_dump_format}[kind]
    try:
        return get(name)
    except UsageError:
        raise
    except ParityError as e:
        raise UsageError(f"{option}: {e}") from None


def _at_least(args: argparse.Namespace, key: str, low: float, what: str = "") -> None:
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
    from parity.core.preflight import check_metric_value

    if args.command not in ("analyze", "compare", "fix"):
        return
    if args.metrics is not None and not as_list(args.metrics):
        raise UsageError(f"--metrics {args.metrics!r} names no metric. Note: use names from 'parity plugins', "
                         f"e.g. cosine,rel-diff (the default is {','.join(DEFAULT_METRICS)}).")
    metrics = _csv_list(args.metrics) or list(DEFAULT_METRICS)
    for m in metrics:
        _known("metric", m, "--metrics")
    parse_thresholds(args.threshold, metrics)
    if args.fail_under is not None:
        check_metric_value(_known("metric", metrics[0], "--metrics"), args.fail_under, f"--fail-under {args.fail_under}")
    _at_least(args, "rel_tol", 0, "a finite number >= 0")
    _at_least(args, "abs_tol", 0, "a finite number >= 0")
    _at_least(args, "rms_tol", 0, "a finite number >= 0")
    if args.exit_zero and args.fail_under is not None:
        raise UsageError("--exit-zero and --fail-under contradict each other: one asks never to fail, the other "
                         "sets when to fail. Note: give one of them.")
    _at_least(args, "kl_bins", 2)
    _at_least(args, "max_rows", 0)
    for req in _report_requests(args):
        _known("reporter", req.name, "--report")
    if args.command == "analyze":
        if args.fmt:
            _known("dump-format", args.fmt, "--format")
        if args.matcher:
            _known("matcher", args.matcher, "--matcher")
        return
    from parity.core.inputs import parse_input_shapes

    parse_input_shapes(args.input_shape)
    check_seed(args.seed)  # the rule parity.compare(seed=...) applies too
    _at_least(args, "random_inputs", 1)
    _at_least(args, "workers", 1)
    _at_least(args, "limit", 1)
    _at_least(args, "opset", 1)
    if args.device != "cpu" and not (args.device == "cuda" or (args.device.startswith("cuda:")
                                                                and args.device[5:].isdigit())):
        raise UsageError(f"--device {args.device!r}: expected cpu, cuda or cuda:N.")
    if args.ref is None:  # not given: a reference that can run the model (ONNX Runtime fp32 for an .onnx file)
        from parity.core.api import default_ref

        args.ref = default_ref(args.model)
    _known("source", args.ref, "--ref")
    targets = args.target if isinstance(args.target, list) else [args.target] if args.target else []
    for t in targets:
        _known("source", t, "--target")
    _known("matcher", args.matcher, "--matcher")
    if getattr(args, "save_format", None):
        _known("dump-format", args.save_format, "--save-format")
    if args.command == "fix":
        _at_least(args, "max_steps", 1)
        name, sep, val = args.goal.rpartition("=")
        try:
            goal = float(val)
        except ValueError:
            raise UsageError(f"--goal {args.goal!r}: expected METRIC=VALUE, e.g. cosine=0.999") from None
        check_metric_value(_known("metric", name if sep else metrics[0], "--goal"), goal, f"--goal {args.goal}")


def _add_report_args(p: argparse.ArgumentParser) -> None:
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


def _add_run_args(co: argparse.ArgumentParser, several_targets: bool) -> None:
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
    g.add_argument("--trust-model", action="store_true",
                   help="allow loading a pickled torch module (runs code from the file: only for files you trust)")
    g.add_argument("--state-dict", help="weights for a package.module:factory model (loaded with weights_only)")
    g.add_argument("--torch-capture", choices=["modules", "fx"], help="torch capture: module hooks or fx graph")
    g.add_argument("--opset", type=int, help="ONNX opset for parity's export (default chosen by parity)")
    g.add_argument("--keep-fp32-ops", help="op types kept fp32 by ort-fp16 (e.g. Softmax,LayerNormalization)")
    g.add_argument("--keep-fp32-nodes", help="ONNX node names kept fp32 by ort-fp16")
    g.add_argument("--trt-capture", choices=["debug", "mark", "outputs"], help="TensorRT capture mode")
    g.add_argument("--layer-precisions", help="TensorRT per-layer precisions: name:fp32,other:fp16")
    g.add_argument("--workdir", help="cache of exported/converted models and engines "
                                     "(default: the user cache folder, e.g. ~/.cache/parity)")
    g.add_argument("--option", action="append", metavar="KEY=VALUE", help="any other source option (repeatable)")
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
    g.add_argument("--step-bytes", metavar="BYTES",
                   help="activation bytes a source captures per step, e.g. 256M (default: the source's)")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="shard the feeds over N Ray workers (pip install 'parity[ray]'); each holds both models once")
    g.add_argument("--ray-address", metavar="ADDR",
                   help="run the workers on an existing Ray cluster (ray://host:10001 or auto)")
    g = co.add_argument_group("matching")
    g.add_argument("--matcher", default="auto", help="layer matcher (default: auto, cross-framework)")
    g.add_argument("--mapping", help="TOML file pinning or excluding layer pairs (see configs/mapping.example.toml)")


def build_parser() -> argparse.ArgumentParser:
    from parity import __version__

    p = _Parser(prog="parity", description="Find where a neural network loses accuracy between frameworks "
                                           "and precisions, layer by layer.")
    p.add_argument("--version", action="version", version=f"parity {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="say what parity does and where its caches are (-vv: debug details)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    pl = sub.add_parser("plugins", help="list sources, metrics, formats and matchers, with their packages")
    pl.add_argument("--json", action="store_true", help="machine-readable output")

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
    _add_report_args(an)

    co = sub.add_parser("compare", help="run a model in a reference and target(s), compare every layer")
    _add_run_args(co, several_targets=True)
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
    _add_report_args(co)

    fx = sub.add_parser("fix", help="find and verify a small set of layers to keep at higher precision")
    _add_run_args(fx, several_targets=False)
    fx.add_argument("--goal", default="cosine=0.999",
                    help="what the model outputs must reach, METRIC=VALUE: at least VALUE for a similarity, at most "
                         "for a distance (l2=0.01); a bare VALUE names the primary metric (default cosine=0.999)")
    fx.add_argument("--max-steps", type=int, default=24, help="most layers to try adding (default 24)")
    fx.add_argument("--write-config", metavar="PATH", help="write the verified set as a parity TOML config")
    fx.add_argument("--write-model", metavar="PATH", help="write the target's ONNX model with the verified set kept "
                                                          "in fp32 (ONNX targets: ort-fp16, ort-bf16, ort-int8)")
    _add_report_args(fx)

    rp = sub.add_parser("repro", help="write a layer as a standalone ONNX model with its fp32 inputs and outputs "
                                      "(a bug report's folder)")
    _add_run_args(rp, several_targets=False)
    rp.add_argument("layer", help="ONNX node name, tensor name, or torch module path (e.g. the first culprit)")
    rp.add_argument("--out", required=True, metavar="DIR", help="new folder for model.onnx, inputs.json/.npz, "
                                                                "reference_outputs.npz and README.txt")
    dr = sub.add_parser("doctor", help="which sources and targets work on this machine, and why not")
    dr.add_argument("--json", action="store_true", help="machine-readable output")

    ex = sub.add_parser("example", help="build a bundled example model and its inputs")
    ex.add_argument("name", choices=["lenet"], help="lenet: sampleMNIST-shaped LeNet trained on sklearn digits")
    ex.add_argument("--out", default=".parity-cache/examples/lenet", help="folder for the model and inputs")

    vw = sub.add_parser("view", help="show a JSON report on the model graph in Model Explorer "
                                     "(pip install 'parity[view]')")
    vw.add_argument("report", help="a JSON report (parity compare ... --json PATH)")
    vw.add_argument("--onnx", help="the ONNX model the target ran (default: the report's model when it is .onnx)")
    vw.add_argument("--out", help="folder for the node-data files (default: REPORT.model-explorer beside the report)")
    vw.add_argument("--port", type=int, default=8080, help="Model Explorer's port (default 8080)")
    vw.add_argument("--no-serve", action="store_true", help="only write the node-data files, start no server")
    for sp in sub.choices.values():  # -v after the command too; the top-level count stays when not given
        sp.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="say what parity does and where its caches are (-vv: debug details)")
    return p


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {"rel_tol": args.rel_tol, "abs_tol": args.abs_tol, "kl_bins": args.kl_bins, "rms_tol": args.rms_tol,
            "top1": args.top1}


def _report_requests(args: argparse.Namespace, tag: str | None = None, many: bool = False) -> list[Any]:
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
        reqs = [r if r.to_stdout else ReportRequest(r.name, _suffixed(r.path, tag, many) or r.path) for r in reqs]
    return reqs


def _check_reports(args: argparse.Namespace, targets: Sequence[str] = (), saves: Sequence[tuple[str, str]] = (),
                   inputs: Sequence[tuple[str, str]] = ()) -> None:
    """Fail on an unknown reporter name, or an output path that cannot be written, before any model runs.

    With several targets, every target's report paths are checked; ``saves`` are further outputs
    (option, path) such as --save-ref and --write-config; ``inputs`` (what, path) are the files the
    run reads, which no output may overwrite.
    """
    from parity.core.preflight import check_distinct_outputs, check_no_clobber, check_output_path
    from parity.core.engine import DEFAULT_METRICS
    from parity.core.report import check_report_options, get_reporters

    requests = _report_requests(args)
    get_reporters(requests)
    check_report_options(requests, _report_options(args),
                         _csv_list(getattr(args, "metrics", None)) or list(DEFAULT_METRICS))
    many = len(targets) > 1
    reqs = [r for t in targets for r in _report_requests(args, t, many)] if many else requests
    outputs = [(f"{r.name} report", r.path) for r in reqs if not r.to_stdout] + list(saves)
    for option, path in outputs:
        check_output_path(path, option, folder_ok=option.startswith("--save"))
    check_distinct_outputs(outputs)
    check_no_clobber(outputs, _read_paths(args, inputs))


def _read_paths(args: argparse.Namespace, inputs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The files a run reads, (what, path): ``inputs`` and --config, which no output may overwrite."""
    config = getattr(args, "config", None)
    return [*inputs, *([("--config", config)] if config else [])]


def _report_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"sort": args.sort, "max_rows": args.max_rows, "quiet": args.quiet, "columns": getattr(args, "columns", None)}


def _emit(report: Any, args: argparse.Namespace, requests: list[Any] | None = None, piped: bool = False) -> int:
    from parity.core.compare import gate
    from parity.core.report import write_reports

    reqs = requests if requests is not None else _report_requests(args)
    written = write_reports(report, reqs, _report_options(args))
    # the paths go where they cannot corrupt a machine-readable report on standard output
    stream = sys.stderr if piped or any(r.to_stdout and r.name != "table" for r in reqs) else sys.stdout
    for name, path in written:
        print(f"{name} report written to {path}", file=stream)
    return _verdict(gate(report, args.fail_under), args)


def _verdict(reasons: list[str], args: argparse.Namespace) -> int:
    """The exit rule: a failing comparison (or fix) exits 1 and says why, unless --exit-zero."""
    if not reasons:
        return 0
    for why in reasons:
        print(f"parity: FAIL: {why}", file=sys.stderr)
    if getattr(args, "exit_zero", False):
        print("parity: --exit-zero: exiting 0 anyway", file=sys.stderr)
        return 0
    return 1


def cmd_plugins(args: argparse.Namespace) -> int:
    from parity.core.registry import registry

    reg = registry()
    if args.json:
        from parity.core.registry import broken

        out: dict[str, Any] = {kind: [{"name": r.name, "plugin": r.plugin, "package": r.package,
                                       "description": getattr(r.obj, "description", "")}
                                      for r in sorted(items.values(), key=lambda r: r.name)]
                               for kind, items in reg.items()}
        out["broken"] = [{"plugin": k, "why": v} for k, v in broken.items()]
        print(json.dumps(out, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140, highlight=False)
    from parity.core.registry import broken

    for name, why in broken.items():
        console.print(f"broken plugin {name}: {why}")
    for kind in ("source", "metric", "dump-format", "matcher", "reporter", "input-reader", "dump-annotator"):
        t = Table(title=f"{kind}s", title_justify="left")
        t.add_column("name")
        t.add_column("package")
        t.add_column("description", overflow="fold")
        for r in sorted(reg[kind].values(), key=lambda r: r.name):
            t.add_row(r.name, r.package, getattr(r.obj, "description", ""))
        console.print(t)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from parity.core.analyze import analyze

    metrics = _csv_list(args.metrics)
    _check_reports(args, inputs=[(w, p) for w, p in (("reference dump", args.ref), ("target dump", args.target),
                                                      ("--mapping", args.mapping)) if p])
    report = analyze(args.ref, args.target, ref_tag=args.ref_tag, target_tag=args.target_tag, fmt=args.fmt,
                     metrics=metrics, thresholds=parse_thresholds(args.threshold, metrics),
                     options=_options(args), matcher=args.matcher, mapping=args.mapping)
    return _emit(report, args)


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


def _source_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = load_config(args.config) if getattr(args, "config", None) else {}
    if args.trust_model:
        opts["trust_model"] = True
    for key in ("state_dict", "torch_capture", "opset", "trt_capture", "layer_precisions"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    for key in ("keep_fp32_ops", "keep_fp32_nodes"):
        if getattr(args, key):
            opts[key] = _csv_list(getattr(args, key))
    for item in args.option or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UsageError(f"--option {item!r}: expected KEY=VALUE")
        opts[k.strip().replace("-", "_")] = v
    return opts


def _suffixed(path: str | None, tag: str, many: bool) -> str | None:
    if not path or not many:
        return path
    p = os.path.splitext(path)
    return f"{p[0]}.{tag}{p[1]}"


def _settings(args: argparse.Namespace, target: str, diagnose: bool) -> Any:
    from parity.core.compare import CompareSettings
    from parity.core.inputs import parse_input_dtypes, parse_input_shapes

    metrics = _csv_list(args.metrics)
    return CompareSettings(
        model=args.model, ref=args.ref, target=target, inputs=args.inputs,
        input_shapes=parse_input_shapes(args.input_shape), input_dtypes=parse_input_dtypes(args.input_shape),
        seed=args.seed, random_inputs=args.random_inputs,
        device=args.device, workdir=args.workdir, metrics=metrics,
        thresholds=parse_thresholds(args.threshold, metrics), metric_options=_options(args),
        source_options=_source_options(args), mapping=args.mapping, matcher=args.matcher,
        calibration=args.calibration, diagnose=diagnose, target_dump=getattr(args, "target_dump", None),
        target_onnx=getattr(args, "target_onnx", None), layer_info=getattr(args, "layer_info", None),
        save_ref=getattr(args, "save_ref", None), save_target=getattr(args, "save_target", None),
        save_format=getattr(args, "save_format", "npy"),
        layers=getattr(args, "layers", None), limit=getattr(args, "limit", None), force=getattr(args, "force", False),
        max_memory=parse_bytes(getattr(args, "max_memory", None), "--max-memory"),
        step_bytes=parse_bytes(getattr(args, "step_bytes", None), "--step-bytes"),
        workers=getattr(args, "workers", 1) or 1, ray_address=getattr(args, "ray_address", None))


def parse_bytes(text: str | None, option: str) -> int | None:
    """``2G``, ``512M``, ``1.5GiB``, ``1000000`` -> bytes (the contract's one size vocabulary)."""
    from parity.contract.options import parse_bytes as size

    if text is None:
        return None
    try:
        return size(text, option)
    except ParityError as e:
        raise UsageError(str(e)) from None


def cmd_compare(args: argparse.Namespace) -> int:
    from parity.core.compare import compare

    targets = args.target or (["dump"] if args.target_dump else ["ort"])
    if args.target_dump and args.target:
        raise UsageError("give either --target or --target-dump, not both")
    from parity.core.compare import check_settings

    rc = 0
    many = len(targets) > 1
    runs = []
    for k, tgt in enumerate(targets):
        settings = _settings(args, tgt, args.diagnose)
        settings.save_target = _suffixed(settings.save_target, tgt, many)
        if k:
            settings.save_ref = None  # the reference run is the same for every target: saved once
        runs.append((tgt, settings))
    saves = [(o, p) for _, st in runs for o, p in (("--save-ref", st.save_ref), ("--save-target", st.save_target)) if p]
    from parity.core.compare import input_paths

    _check_reports(args, targets, saves, inputs=[i for _, st in runs for i in input_paths(st)])
    for _, settings in runs:  # every source must be able to run before any runs
        check_settings(settings)
    # several targets and a machine-readable report on standard output: one document for all (JSON: a list)
    piped = next((r for r in _report_requests(args) if r.to_stdout and r.name != "table"), None) if many else None
    reports = []
    for tgt, settings in runs:
        report = compare(settings)
        reqs = _report_requests(args, tgt, many)
        if piped:
            reports.append(report)
            reqs = [r for r in reqs if not r.to_stdout]
        rc = max(rc, _emit(report, args, reqs, piped=piped is not None))
        if many:
            print(file=sys.stderr if piped else sys.stdout)
    if piped:
        from parity.core.report import write_stdout_many

        write_stdout_many(reports, piped.name, _report_options(args))
    return rc


def _record_fix(report: Any, res: Any, gm: Any, args: argparse.Namespace) -> None:
    """Put the searched fix into the report's summary and rewrite the report files (the HTML page shows it)."""
    from parity.core.report import write_reports

    report.summary["fix"] = {
        "goal_metric": gm.name, "goal": res.goal, "before": res.before, "after": res.after,
        "before_text": gm.format(res.before), "after_text": gm.format(res.after), "passed": res.passed,
        "kept": list(res.kept), "total_layers": res.total_layers, "semantics": res.semantics,
        "forms": res.forms(args.target) if res.passed and res.kept else {}}
    files = [r for r in _report_requests(args) if not r.to_stdout]
    if files:
        write_reports(report, files, {"sort": args.sort, "max_rows": args.max_rows, "quiet": True})


def cmd_fix(args: argparse.Namespace) -> int:
    from parity.contract.atomic import write_text
    from parity.core.compare import compare
    from parity.core.api import run_fix

    name, sep, val = args.goal.rpartition("=")
    try:
        goal = float(val)
    except ValueError:
        raise UsageError(f"--goal {args.goal!r}: expected METRIC=VALUE, e.g. cosine=0.999") from None
    metrics = _csv_list(args.metrics)
    from parity.core.engine import DEFAULT_METRICS
    from parity.core.registry import get_metric

    goal_metric = name if sep else (metrics or list(DEFAULT_METRICS))[0]  # unnamed: the primary metric
    gm = get_metric(goal_metric)
    from parity.core.compare import input_paths

    settings = _settings(args, args.target, True)
    _check_reports(args, saves=[(o, p) for o, p in (("--write-config", args.write_config),
                                                    ("--write-model", args.write_model)) if p],
                   inputs=input_paths(settings))
    report = compare(settings)
    _emit(report, argparse.Namespace(**{**vars(args), "fail_under": None, "quiet": True}))
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
        return _verdict([f"no verified fix reaches {goal_metric} {goal:g}"], args)
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


def cmd_repro(args: argparse.Namespace) -> int:
    """The reference is always ONNX Runtime fp32 on parity's ONNX model (--ref/--target do not apply)."""
    from parity.core.compare import CompareSettings
    from parity.core.inputs import parse_input_shapes
    from parity.core.repro import repro

    settings = CompareSettings(model=args.model, ref="ort", target="ort", inputs=args.inputs,
                               input_shapes=parse_input_shapes(args.input_shape), seed=args.seed,
                               workdir=args.workdir, source_options=_source_options(args), force=args.force)
    from parity.core.compare import input_paths
    from parity.core.preflight import check_no_clobber

    check_no_clobber([("--out", args.out)], _read_paths(args, input_paths(settings)))
    res = repro(settings, args.layer, args.out)
    print(f"Wrote {res.folder}: {len(res.nodes)} node(s) producing {', '.join(res.outputs)} from "
          f"{', '.join(res.inputs)}; see {res.folder / 'README.txt'}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from parity.core.doctor import environment, sources

    env, srcs = environment(), sources()
    if args.json:
        print(json.dumps({"environment": env, "sources": srcs}, indent=2, default=str))
        return 0
    for k, v in env.items():
        print(f"{k:>22}: {v}")
    print()
    shown: list[Any] = []
    for s in srcs:
        print(f"{s['source']:>22}: {'works' if s['works'] else 'unavailable: ' + s['why']}")
        details = s.get("details") or {}
        if details and details in shown:
            continue  # several targets of one source share their checks: print them once
        shown.append(details)
        items = details.items() if isinstance(details, dict) else enumerate(details)
        for k, v in items:
            if isinstance(v, dict):
                v = ", ".join(f"{a}={b}" for a, b in v.items())
            print(f"{'':>24}{v}" if isinstance(k, int) else f"{'':>24}{k}: {v}")
    return 0


def cmd_example(args: argparse.Namespace) -> int:
    from parity.examples.lenet import write_example

    paths = write_example(args.out)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from parity.core.view import serve, write_view

    model, files = write_view(args.report, onnx=args.onnx, out=args.out)
    for f in files:
        print(f"node data written to {f}")
    if not args.no_serve:
        print(f"opening Model Explorer on {model} (Ctrl-C stops it)", flush=True)
        serve(model, files, args.port)
    return 0


COMMANDS = {"plugins": cmd_plugins, "analyze": cmd_analyze, "compare": cmd_compare, "fix": cmd_fix, "repro": cmd_repro,
            "doctor": cmd_doctor,
            "example": cmd_example, "view": cmd_view}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    finally:
        if argv is None:  # the process's own entry point: what is written is complete now, and a
            # Ctrl-C landing during interpreter shutdown would otherwise turn exit 0/130 into death by SIGINT
            import signal

            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _main(argv: Sequence[str] | None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 2
        validate(args)
        from parity.core.progress import setup_logging, showing

        setup_logging(getattr(args, "verbose", 0))
        with showing(quiet=bool(getattr(args, "quiet", False))):
            return COMMANDS[args.command](args)
    except ParityError as e:
        print(f"parity: error: {one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("parity: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: still one line unless asked for the traceback
        if os.environ.get("PARITY_TRACEBACK"):
            raise
        print(f"parity: internal error: {type(e).__name__}: {one_line(str(e))} (set PARITY_TRACEBACK=1 for the traceback; "
              f"please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

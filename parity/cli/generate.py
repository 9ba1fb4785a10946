"""``parity generate``: token-level parity of a language model (docs/generation.md).

A thin layer: its flags, then :func:`parity.core.generate.generate`.
"""
from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    g = sub.add_parser("generate", help="greedy-decode in a reference and a target decoder: the first diverging "
                                        "token, and the layer that flipped it")
    g.add_argument("model", help="a transformers model folder, file.py:factory, or an .onnx decoder with past key/values")
    g.add_argument("--ref", default="torch", help="reference decoder (default torch)")
    g.add_argument("--target", default="torch-bf16",
                   help="target decoder: torch-fp16, torch-bf16, ort, ort-fp16, ort-int8, modelopt-int8, modelopt-fp8, "
                        "modelopt-int4-awq, modelopt-w4a8-awq, modelopt-nvfp4 (parity plugins lists them; "
                        "default torch-bf16)")
    g.add_argument("--target-model", default=None, help="the target's own model when it differs from MODEL "
                                                        "(an .onnx export, a factory)")
    g.add_argument("--prompts", default=None, help="text file, one prompt per line (needs --tokenizer)")
    g.add_argument("--tokenizer", default=None, help="tokenizer.json, or a folder holding one (never downloaded)")
    g.add_argument("--tokens", nargs="+", default=[], metavar="FILE",
                   help="token id files (.npy integers, or whitespace-separated integers), one prompt each")
    g.add_argument("--max-new-tokens", "-n", type=int, default=32, help="tokens to generate per prompt (default 32)")
    g.add_argument("--free", action="store_true", help="also free-running: each side feeds its own tokens")
    g.add_argument("--incremental", action="store_true",
                   help="the target steps through the reference's tokens with its KV cache (the deployed path) "
                        "instead of one teacher-forced pass")
    g.add_argument("--no-diagnose", action="store_true", help="skip the per-layer comparison at diverging steps")
    g.add_argument("--worst", type=int, default=3, help="also diagnose the worst K steps by KL (default 3)")
    g.add_argument("--perplexity-text", default=None, help="text file: perplexity of both sides on it (needs --tokenizer)")
    g.add_argument("--device", default="cpu", help="cpu or cuda[:N] (torch-fp16 and modelopt-nvfp4 need cuda)")
    g.add_argument("--workers", type=int, default=1, help="shard the prompts over N Ray workers")
    g.add_argument("--ray-address", default=None, help="an existing Ray cluster (docs/datasets.md)")
    g.add_argument("--workdir", default=None, help="where ONNX exports and conversions are cached "
                                                   "(default: the user cache folder)")
    g.add_argument("--json", default=None, metavar="PATH", help="write the JSON document (- for standard output)")
    g.add_argument("--html", default=None, metavar="PATH", help="write the offline HTML page")
    g.add_argument("--quiet", "-q", action="store_true", help="no table on standard output")


def run(args: argparse.Namespace) -> int:
    from parity.contract.errors import UsageError
    from parity.core.generate import GenerateSettings, generate, load_prompts
    from parity.core.generate_report import write
    from parity.core.preflight import default_workdir

    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1 (got {args.max_new_tokens})")
    if args.worst < 0:
        raise UsageError(f"--worst must be 0 or more (got {args.worst})")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {args.workers})")
    _check_outputs(args)
    if args.prompts is None and not args.tokens:
        raise UsageError("parity generate needs prompts: --prompts FILE --tokenizer TOK, or --tokens FILE ...")
    prompts = load_prompts(text_file=args.prompts, tokenizer=args.tokenizer, token_files=args.tokens)
    s = GenerateSettings(model=args.model, ref=args.ref, target=args.target, target_model=args.target_model,
                         prompts=prompts, tokenizer=args.tokenizer, max_new_tokens=args.max_new_tokens,
                         free=args.free, incremental=args.incremental, diagnose=not args.no_diagnose,
                         worst=args.worst, device=args.device, workers=args.workers, ray_address=args.ray_address,
                         perplexity_text=args.perplexity_text, workdir=args.workdir or default_workdir())
    doc = generate(s)
    if args.json:
        write(doc, args.json, "json")
    if args.html:
        write(doc, args.html, "html")
    if not args.quiet and args.json != "-":
        write(doc, "-", "table")
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """An output that would overwrite one of the run's inputs (a prompts file, the model, the tokenizer),
    or the other output, is a usage error found before anything runs."""
    import os
    from pathlib import Path

    from parity.contract.errors import UsageError

    def same(a: str, b: str) -> bool:
        pa, pb = Path(a), Path(b)
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
        return pa.resolve() == pb.resolve()

    inputs = [("--prompts", args.prompts), ("--tokenizer", args.tokenizer), ("--perplexity-text", args.perplexity_text),
              ("MODEL", args.model),
              ("--target-model", args.target_model)] + [("--tokens", t) for t in args.tokens]
    outputs = [(f, v) for f, v in (("--json", args.json), ("--html", args.html)) if v and v != "-"]
    for flag, out in outputs:
        for what, path in inputs:
            if not path:
                continue
            base = path.rsplit(":", 1)[0] if ":" in path and not Path(path).exists() else path
            tok = Path(base) / "tokenizer.json" if what == "--tokenizer" and Path(base).is_dir() else None
            inside = Path(base).is_dir() and Path(out).exists() and Path(out).resolve().is_relative_to(Path(base).resolve())
            if same(out, base) or inside or (tok is not None and same(out, str(tok))):
                raise UsageError(f"{flag} {out} would overwrite {what} {path}, an input of this run. "
                                 f"Note: write the report elsewhere")
    if len(outputs) == 2 and same(outputs[0][1], outputs[1][1]):
        raise UsageError(f"--json and --html both name {args.json}: give each report its own file")

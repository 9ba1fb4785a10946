"""``parity repro``: cut one layer into a standalone ONNX model with its fp32 inputs and outputs.

A thin layer: its flags, then the Python API; the shared groups live in ``_common``.
"""
from __future__ import annotations

import argparse
from typing import Any

from parity.cli._common import add_run_args, read_paths, source_options


def add_parser(sub: Any) -> None:
    rp = sub.add_parser("repro", help="write a layer as a standalone ONNX model with its fp32 inputs and outputs "
                                      "(a bug report's folder)")
    add_run_args(rp, several_targets=False)
    rp.add_argument("layer", help="ONNX node name, tensor name, or torch module path (e.g. the first culprit)")
    rp.add_argument("--out", required=True, metavar="DIR", help="new folder for model.onnx, inputs.json/.npz, "
                                                                "reference_outputs.npz and README.txt")


def run(args: argparse.Namespace) -> int:
    """The reference is always ONNX Runtime fp32 on parity's ONNX model (--ref/--target do not apply)."""
    from parity.core.repro import repro
    from parity.core.settings import build

    settings = build(model=args.model, ref="ort", target="ort", inputs=args.inputs, input_shapes=args.input_shape,
                     seed=args.seed, workdir=args.workdir, options=source_options(args), force=args.force)
    from parity.core.compare import input_paths
    from parity.core.preflight import check_no_clobber

    check_no_clobber([("--out", args.out)], read_paths(args, input_paths(settings)))
    res = repro(settings, args.layer, args.out)
    print(f"Wrote {res.folder}: {len(res.nodes)} node(s) producing {', '.join(res.outputs)} from "
          f"{', '.join(res.inputs)}; see {res.folder / 'README.txt'}")
    return 0

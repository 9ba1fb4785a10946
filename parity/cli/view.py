"""``parity view``: show a JSON report on the model graph in Model Explorer.

A thin layer: its flags, then the Python API; the shared groups live in ``_common``.
"""
from __future__ import annotations

import argparse
from typing import Any



def add_parser(sub: Any) -> None:
    vw = sub.add_parser("view", help="show a JSON report on the model graph in Model Explorer "
                                     "(pip install 'parity[view]')")
    vw.add_argument("report", help="a JSON report (parity compare ... --json PATH)")
    vw.add_argument("--onnx", help="the ONNX model the target ran (default: the report's model when it is .onnx)")
    vw.add_argument("--out", help="folder for the node-data files (default: REPORT.model-explorer beside the report)")
    vw.add_argument("--port", type=int, default=8080, help="Model Explorer's port (default 8080)")
    vw.add_argument("--no-serve", action="store_true", help="only write the node-data files, start no server")


def run(args: argparse.Namespace) -> int:
    from parity.core.view import serve, write_view

    model, files = write_view(args.report, onnx=args.onnx, out=args.out)
    for f in files:
        print(f"node data written to {f}")
    if not args.no_serve:
        print(f"opening Model Explorer on {model} (Ctrl-C stops it)", flush=True)
        serve(model, files, args.port)
    return 0

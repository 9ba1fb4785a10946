"""``parity example``: write a bundled example model and its inputs.

A thin layer: its flags, then the Python API; the shared groups live in ``_common``.
"""
from __future__ import annotations

import argparse
from typing import Any



def add_parser(sub: Any) -> None:
    ex = sub.add_parser("example", help="build a bundled example model and its inputs")
    ex.add_argument("name", choices=["lenet"], help="lenet: sampleMNIST-shaped LeNet trained on sklearn digits")
    ex.add_argument("--out", default=".parity-cache/examples/lenet", help="folder for the model and inputs")


def run(args: argparse.Namespace) -> int:
    from parity.examples.lenet import write_example

    paths = write_example(args.out)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0

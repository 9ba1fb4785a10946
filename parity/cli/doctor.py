"""``parity doctor``: which sources work on this machine, and why the others do not.

A thin layer: its flags, then the Python API; the shared groups live in ``_common``.
"""
from __future__ import annotations

import argparse
import json
from typing import Any



def add_parser(sub: Any) -> None:
    dr = sub.add_parser("doctor", help="which sources and targets work on this machine, and why not")
    dr.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
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

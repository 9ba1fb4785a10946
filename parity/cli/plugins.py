"""``parity plugins``: the registered sources, metrics, formats, matchers and reporters, with their packages.

A thin layer: its flags, then the Python API; the shared groups live in ``_common``.
"""
from __future__ import annotations

import argparse
import json
from typing import Any



def add_parser(sub: Any) -> None:
    pl = sub.add_parser("plugins", help="list sources, metrics, formats and matchers, with their packages")
    pl.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
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
    for kind in ("source", "metric", "dump-format", "matcher", "reporter", "input-reader", "dump-annotator", "decoder"):
        t = Table(title=f"{kind}s", title_justify="left")
        t.add_column("name")
        t.add_column("package")
        t.add_column("description", overflow="fold")
        for r in sorted(reg[kind].values(), key=lambda r: r.name):
            t.add_row(r.name, r.package, getattr(r.obj, "description", ""))
        console.print(t)
    return 0

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
    pl.add_argument("--options", metavar="SOURCE",
                    help="list the options SOURCE reads (--option KEY=VALUE, its flags, a --config's [options])")


def run(args: argparse.Namespace) -> int:
    from parity.core.registry import registry

    if getattr(args, "options", None):
        return _options(args.options, args.json)
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


def _options(name: str, as_json: bool) -> int:
    """``parity plugins --options SOURCE``: the source's option schema, from its one declaration."""
    from parity.contract.errors import ParityError, UsageError
    from parity.core.registry import get_source, registry, source_schema

    try:
        src = get_source(name)
    except ParityError as e:  # an unknown name on the command line is a usage error (exit 2)
        raise UsageError(f"--options: {e}") from None
    reg = registry()["source"][name]
    schema = source_schema(src)
    honours = {"outputs_only": bool(getattr(src, "supports_outputs_only", False)),
               "keep_high_precision": bool(getattr(src, "supports_keep_high_precision", False))}
    if as_json:
        print(json.dumps({"source": name, "plugin": reg.plugin, "package": reg.package,
                          "options": [o.describe() for o in schema], "honours": honours}, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140, highlight=False)
    t = Table(title=f"options of source {name} ({reg.package})", title_justify="left")
    for col in ("option", "type", "default", "flag", "description"):
        t.add_column(col, overflow="fold")
    for o in schema:
        kind = f"{o.type}: {' | '.join(o.choices)}" if o.choices else o.type
        default = "" if o.default is None or o.default == () else str(o.default).lower() \
            if isinstance(o.default, bool) else str(o.default)
        names = ", ".join((o.name, *o.aliases))
        t.add_row(names, kind, default, o.flag or "", o.help)
    if not schema:
        console.print(f"source {name} declares no options")
    else:
        console.print(t)
    yes = {True: "yes", False: "no (refused)"}
    console.print(f"run configuration: outputs_only {yes[honours['outputs_only']]}, keep_high_precision "
                  f"{yes[honours['keep_high_precision']]}")
    console.print("set with --option KEY=VALUE, the flag, or a --config file's [options] table")
    return 0

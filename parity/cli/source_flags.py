"""The sources' own command-line flags, made from their option schemas.

Why: the front end used to own ``--trt-capture``, ``--torch-capture``, ``--layer-precisions`` ...,
so a plugin could not add a flag and a flag could drift from what its source reads. Now a source
declares an :class:`parity.contract.options.Option` with a ``flag`` and this module adds it to the
``sources`` group of ``compare``/``fix`` (as Polygraphy's argument groups own their flags); what a
flag gives lands in the source options under the option's name, converted by the same schema the
registry checks. Every other option is still ``--option KEY=VALUE``.
"""
from __future__ import annotations

import argparse
from typing import Any

from parity.contract.errors import ParityError, UsageError
from parity.contract.options import Option

#: argparse ``dest`` prefix of generated flags (never clashes with the front end's own arguments)
DEST = "source_option__"


def flag_options() -> list[tuple[Option, list[str]]]:
    """Each option some registered source gives a flag, once per flag, with the sources declaring it.

    Two sources may share an option (a library group: ``--trust-model``); one flag spelled by two
    different options is a plugin error, named here rather than left to argparse's traceback.
    """
    from parity.core.registry import registry

    by_flag: dict[str, tuple[Option, list[str]]] = {}
    for name, reg in sorted(registry()["source"].items()):
        for opt in getattr(reg.obj, "option_schema", ()) or ():
            if not opt.flag:
                continue
            seen = by_flag.get(opt.flag)
            if seen is None:
                by_flag[opt.flag] = (opt, [name])
            elif seen[0].name != opt.name:
                raise ParityError(f"flag {opt.flag} is declared by option {seen[0].name!r} of source "
                                  f"{seen[1][0]!r} and by option {opt.name!r} of source {name!r} "
                                  f"(plugin {reg.plugin!r}). Note: one flag, one option")
            else:
                seen[1].append(name)
    return [by_flag[f] for f in sorted(by_flag)]


def _owners(names: list[str]) -> str:
    """``torch, torch-fp16, torch-bf16`` as ``torch*``: the sources a flag serves, short."""
    stems = sorted({n.split("-")[0] for n in names})
    return ", ".join(s + ("*" if any(n != s for n in names if n.split("-")[0] == s) else "") for s in stems)


def add_source_flags(group: Any) -> None:
    """Add every generated flag to ``group`` (an argparse group); unset flags stay ``None``."""
    for opt, owners in flag_options():
        kw: dict[str, Any] = {"dest": DEST + opt.name, "default": None,
                              "help": f"{opt.help} [{_owners(owners)}]" if opt.help else f"[{_owners(owners)}]"}
        if opt.type == "bool":
            kw["action"] = "store_true"
        else:
            if opt.type == "choice":
                kw["choices"] = list(opt.choices)
            else:
                kw["metavar"] = {"list": "A,B", "int": "N", "float": "X", "bytes": "SIZE",
                                 "regex": "REGEX"}.get(opt.type, "VALUE")
        group.add_argument(opt.flag, **kw)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The source options the generated flags gave, converted (a bad value is a usage error, exit 2)."""
    out: dict[str, Any] = {}
    for opt, _owners_ in flag_options():
        value = getattr(args, DEST + opt.name, None)
        if value is None or value is False:
            continue
        try:
            out[opt.name] = opt.convert(value)
        except ParityError as e:
            raise UsageError(f"{opt.flag}: {e}") from None
    return out

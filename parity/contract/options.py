"""One reading of source options, whatever route they took.

Options reach a source as Python values (the API, a TOML config) or as text
(``--option key=value``). Every plugin reads them here so that ``false``, ``no`` and ``0``
mean the same everywhere; ``bool("false")`` is ``True``, which is how a copy of this logic
once read ``export_dynamic_batch=false`` as on.
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from parity.contract.errors import ParityError, UsageError
from parity.contract.frontend import given

TRUE_WORDS = frozenset({"1", "true", "yes", "on", "y"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", "n", ""})


def as_bool(value: Any, what: str) -> bool:
    """``value`` as a yes/no; text uses one vocabulary (true/yes/on/1/y, false/no/off/0/n)."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    s = str(value).strip().lower()
    if s in TRUE_WORDS:
        return True
    if s in FALSE_WORDS:
        return False
    raise ParityError(f"option {what}={value!r} is not a yes/no value. Note: use true or false")


def as_int(value: Any, what: str, default: int | None = None) -> int | None:
    """``value`` as an integer; ``None`` or empty text gives ``default``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, bool):
        raise ParityError(f"option {what}={value!r} is not an integer")
    try:
        as_float = float(value)
        if as_float != int(as_float):
            raise ValueError
        return int(as_float)
    except (TypeError, ValueError, OverflowError):
        raise ParityError(f"option {what}={value!r} is not an integer") from None


def as_list(value: Any) -> list[str]:
    """``value`` as a list of names: a list, or comma-separated text; empty items dropped."""
    if value is None:
        return []
    if isinstance(value, str):
        return [s.strip() for s in value.split(",") if s.strip()]
    return [str(s) for s in value]


def option_bool(options: Mapping[str, Any], key: str, default: bool) -> bool:
    return as_bool(options.get(key, default), key)


def option_int(options: Mapping[str, Any], key: str, default: int | None) -> int | None:
    return as_int(options.get(key), key, default)


def option_list(options: Mapping[str, Any], key: str) -> list[str]:
    return as_list(options.get(key))


_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": 2**30, "gb": 10**9, "gib": 2**30}


def parse_bytes(value: Any, what: str = "step_bytes") -> int:
    """``268435456``, ``"256MiB"``, ``"256M"`` (binary), ``"0.5GB"`` (decimal) as a byte count.

    One vocabulary for every size: ``--max-memory``, ``--step-bytes`` and the ``step_bytes`` option.
    """
    import re

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        n = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(value))
        if m is None or m.group(2).lower() not in _UNITS:
            raise ParityError(f"{what}={value!r} is not a size. Note: write e.g. 268435456, 256MiB or 1G")
        n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if n < 0:
        raise ParityError(f"{what}={value!r} is negative. Note: use 0 for no byte limit")
    return int(n)


def check_seed(value: Any) -> int:
    """The seed of random inputs: an integer >= 0, one rule for ``--seed`` and ``seed=``.

    Why >= 0: numpy's generator (which makes the random feeds) refuses negative seeds, which
    surfaced mid-run as an internal error; a float or a bool seed is a mistake, not a seed.
    """
    try:
        seed = None if isinstance(value, bool) else operator.index(value)  # int and numpy integers
    except TypeError:
        seed = None
    if seed is None or seed < 0:
        raise UsageError(f"{given('seed', value)}: the seed of random inputs must be an integer >= 0. "
                         f"Note: e.g. 0 (the default)")
    return seed


# --- typed option schemas -------------------------------------------------------------------------

#: the value types an :class:`Option` converts to (``list``: names, from a list or comma text;
#: ``bytes``: a size such as ``256MiB``; ``choice``: one of ``choices``; ``regex``: a pattern that compiles)
OPTION_TYPES = ("bool", "int", "float", "str", "list", "bytes", "choice", "regex")


@dataclass(frozen=True)
class Option:
    """One setting a source reads from ``RunConfig.options``, declared once.

    Why a declaration: one record serves validation (an unknown key or a bad value is refused before
    anything runs, naming the source and what is valid), conversion (every consumer reads a bool, an
    int, a byte count, never the text ``--option`` gave), the command line (``flag`` makes a
    ``--flag`` of it), ``parity plugins --options SOURCE`` and the docs. ``None`` as a value means
    "not set": the consumer's ``default`` applies.
    """

    name: str
    type: str = "str"
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] = ()
    #: the command-line flag that sets it (``--trt-capture``); None: only ``--option name=value``
    flag: str | None = None
    #: other keys accepted for it (an older spelling); values land under ``name``
    aliases: tuple[str, ...] = ()
    #: smallest value an ``int``/``float``/``bytes`` option takes
    minimum: float | None = None

    def __post_init__(self) -> None:
        if self.type not in OPTION_TYPES:
            raise ValueError(f"option {self.name!r}: type {self.type!r} is not one of {', '.join(OPTION_TYPES)}")
        if self.type == "choice" and not self.choices:
            raise ValueError(f"option {self.name!r}: a choice needs choices")

    def convert(self, value: Any, owner: str = "") -> Any:
        """``value`` (a Python value or the text ``--option`` gave) as this option's type.

        Idempotent: a converted value converts to itself, so a consumer may read through the
        schema whether or not the registry checked the dict first. Raises :class:`UsageError`
        naming ``owner`` (``source 'trt-fp16'``) and what would be valid.
        """
        if value is None:
            return None
        where = f"{owner}: " if owner else ""
        try:
            out = self._convert(value)
        except ParityError as e:
            raise UsageError(f"{where}{e}") from None
        if self.minimum is not None and isinstance(out, (int, float)) and out < self.minimum:
            raise UsageError(f"{where}option {self.name}={value!r} is below {self.minimum:g}. "
                             f"Note: {self.help or 'see parity plugins --options'}")
        return out

    def _convert(self, value: Any) -> Any:
        t, what = self.type, self.name
        if t == "bool":
            return as_bool(value, what)
        if t == "int":
            if isinstance(value, str) and not value.strip():
                return None
            return as_int(value, what)
        if t == "float":
            if isinstance(value, bool):
                raise ParityError(f"option {what}={value!r} is not a number")
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ParityError(f"option {what}={value!r} is not a number") from None
        if t == "list":
            return as_list(value)
        if t == "bytes":
            if isinstance(value, str) and not value.strip():
                return None
            return parse_bytes(value, f"option {what}")
        if t == "choice":
            s = str(value).strip().lower()
            if s not in self.choices:
                raise ParityError(f"option {what}={value!r} is not known. Note: use one of {', '.join(self.choices)}")
            return s
        if t == "regex":
            s = str(value)
            try:
                re.compile(s)
            except re.error as e:
                raise ParityError(f"option {what}={value!r} is not a valid regular expression: {e}") from None
            return s
        if isinstance(value, (list, tuple)):  # a str option given as a TOML list: one comma text
            return ",".join(str(v) for v in value)
        return str(value)

    def describe(self) -> dict[str, Any]:
        """This option as plain data (``parity plugins --options SOURCE --json``)."""
        return {"name": self.name, "type": self.type, "default": self.default, "help": self.help,
                "choices": list(self.choices), "flag": self.flag, "aliases": list(self.aliases)}


def option_index(schema: Iterable[Option]) -> dict[str, Option]:
    """Every key the options of ``schema`` answer to (names and aliases) -> its option."""
    index: dict[str, Option] = {}
    for opt in schema:
        for key in (opt.name, *opt.aliases):
            index.setdefault(key, opt)
    return index


def read_options(schema: Iterable[Option], values: Mapping[str, Any] | None, owner: str = "") -> dict[str, Any]:
    """The typed values of ``schema``'s options in ``values``, each option's default where unset.

    For consumers (a library group, a plugin): keys outside ``schema`` are left alone, since one
    ``RunConfig.options`` dict carries the options of both sides; :func:`check_options` is the
    refusal of unknown keys. An alias is read when its option's own name is absent.
    """
    values = values or {}
    out: dict[str, Any] = {}
    for opt in schema:
        raw = None
        for key in (opt.name, *opt.aliases):
            if values.get(key) is not None:
                raw = values[key]
                break
        value = opt.convert(raw, owner)
        out[opt.name] = opt.default if value is None else value
    return out


def check_options(schema: Iterable[Option], values: Mapping[str, Any] | None, owner: str,
                  extra: Iterable[Option] = (), elsewhere: Mapping[str, Iterable[str]] | None = None) -> dict[str, Any]:
    """``values`` checked against ``schema`` and converted; keys outside it are a usage error.

    Returns only the keys given (under each option's own name), so what a consumer leaves unset
    keeps meaning "the default". ``owner`` names the source(s) in messages; ``extra`` holds options
    every source accepts (the run configuration's own fields); ``elsewhere`` maps a key to the other
    sources that read it, so ``trt_capture`` given to an ``ort-*`` run says which targets take it.
    """
    schema = list(schema)
    index = option_index([*schema, *extra])
    out: dict[str, Any] = {}
    for key, raw in (values or {}).items():
        opt = index.get(key)
        if opt is None:
            raise UsageError(unknown_option_message(str(key), schema, owner, (elsewhere or {}).get(str(key), ())))
        out[opt.name] = opt.convert(raw, owner)
    return out


def unknown_option_message(key: str, schema: Iterable[Option], owner: str, elsewhere: Iterable[str] = ()) -> str:
    """``option 'trt_captur' is not an option of source 'trt-fp16'. Did you mean trt_capture? ...``"""
    import difflib

    names = sorted({o.name for o in schema})
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    others = sorted(elsewhere)
    if others:  # a real key of another source: say whose, rather than guess a spelling
        shown = ", ".join(others[:6]) + (f" and {len(others) - 6} more" if len(others) > 6 else "")
        hint = f" It is read by {'sources' if len(others) > 1 else 'source'} {shown}."
    else:
        hint = f" Did you mean {close[0]}?" if close else ""
    valid = ", ".join(names) or "none (it takes no options)"
    return (f"option {key!r} is not an option of {owner}.{hint} Note: valid keys are {valid} "
            f"(see 'parity plugins --options SOURCE')")


#: the run configuration's own settings, accepted in an options dict for every source and moved into
#: :class:`parity.contract.source.RunConfig`'s typed fields (a ``--config`` file's ``[precision]
#: keep_fp32`` arrives this way)
RUN_OPTIONS: tuple[Option, ...] = (
    Option("outputs_only", "bool", False, "yield only the model outputs, nothing captured (parity fix, "
                                          "the deployed run)"),
    Option("keep_high_precision", "list", (), "record keys whose layers stay in high precision (fp32): "
                                              "the fix parity fix searches"),
)

"""One reading of source options, whatever route they took.

Options reach a source as Python values (the API, a TOML config) or as text
(``--option key=value``). Every plugin reads them here so that ``false``, ``no`` and ``0``
mean the same everywhere; ``bool("false")`` is ``True``, which is how a copy of this logic
once read ``export_dynamic_batch=false`` as on.
"""
from __future__ import annotations

import operator
from typing import Any, Mapping

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

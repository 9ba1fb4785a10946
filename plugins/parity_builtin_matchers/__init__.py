"""Built-in matchers plugin for parity: ``exact`` and ``auto``, offered through the same hook a
third-party matcher uses and written against the contract (:mod:`parity.contract.matcher`) and
the shared parking store (:mod:`parity.lib.parking`).

Mapping rules (pins, exclusions) are not theirs to apply: :meth:`parity.contract.matcher.Matcher.match`
applies them around whichever matcher is selected.
"""
from __future__ import annotations

from parity import hookimpl

from .auto import AutoMatcher
from .exact import ExactMatcher

__all__ = ["AutoMatcher", "ExactMatcher", "register_matchers"]


@hookimpl
def register_matchers(register) -> None:
    register(ExactMatcher())
    register(AutoMatcher())

"""The plugin contract. Only markers and hook specifications live here.

Every hook hands the plugin a ``register`` callback, so one plugin can contribute
several objects and one class can be registered under several names::

    from parity import hookimpl

    @hookimpl
    def register_metrics(register):
        register(MyMetric())                      # name taken from MyMetric.name
        register(MyMetric(tol=0.01), name="my-metric-strict")
"""
from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("parity")
hookimpl = pluggy.HookimplMarker("parity")

Register = Callable[..., None]


@hookspec
def register_metrics(register: Register) -> None:
    """Contribute metrics: call ``register(metric, name=None)`` with :class:`parity.contract.metric.Metric` instances."""


@hookspec
def register_formats(register: Register) -> None:
    """Contribute dump formats: call ``register(fmt, name=None)`` with :class:`parity.contract.dumpformat.DumpFormat` instances."""


@hookspec
def register_sources(register: Register) -> None:
    """Contribute sources: call ``register(source, name=None)`` with :class:`parity.contract.source.Source` instances.

    One source class usually serves several target names (``ort``, ``ort-fp16``, ``ort-int8``).
    """


@hookspec
def register_matchers(register: Register) -> None:
    """Contribute layer matchers: call ``register(matcher, name=None)`` with :class:`parity.core.matcher.Matcher` instances."""


HOOKS: tuple[str, ...] = ("register_metrics", "register_formats", "register_sources", "register_matchers")



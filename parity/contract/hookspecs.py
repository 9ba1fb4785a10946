"""The plugin contract. Only markers and hook specifications live here.

Every hook hands the plugin a ``register`` callback, so one plugin can contribute
several objects and one class can be registered under several names::

    from parity import hookimpl

    @hookimpl
    def register_metrics(register):
        register(MyMetric())                      # name taken from MyMetric.name
        register(MyMetric(tol=0.01), name="my-metric-strict")

Each hook is optional for a plugin; a name claimed by two plugins is an error naming both.
"""
from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("parity")
hookimpl = pluggy.HookimplMarker("parity")

Register = Callable[..., None]


@hookspec
def register_metrics(register: Register) -> None:
    """Contribute metrics: ``register(metric, name=None)`` with :class:`parity.contract.metric.Metric` instances."""


@hookspec
def register_dump_formats(register: Register) -> None:
    """Contribute activation-dump file formats: ``register(fmt, name=None)`` with
    :class:`parity.contract.dumpformat.DumpFormat` instances (read by ``analyze``/``--target-dump``,
    written by ``--save-ref``/``--save-target``)."""


@hookspec
def register_sources(register: Register) -> None:
    """Contribute sources: ``register(source, name=None)`` with :class:`parity.contract.source.Source` instances.

    One source class usually serves several target names (``ort``, ``ort-fp16``, ``ort-int8``).
    """


@hookspec
def register_matchers(register: Register) -> None:
    """Contribute layer matchers: ``register(matcher, name=None)`` with :class:`parity.contract.matcher.Matcher` instances."""


@hookspec
def register_reporters(register: Register) -> None:
    """Contribute report outputs: ``register(reporter, name=None)`` with
    :class:`parity.contract.reporter.Reporter` instances (selected by ``--report NAME=PATH``)."""


@hookspec
def register_input_readers(register: Register) -> None:
    """Contribute input-file readers: ``register(reader, name=None)`` with
    :class:`parity.contract.source.InputReader` instances (``--inputs`` files other than .npy/.npz)."""


@hookspec
def register_dump_annotators(register: Register) -> None:
    """Contribute annotators for dumps made elsewhere: ``register(annotator, name=None)`` with
    :class:`parity.contract.dumpformat.DumpAnnotator` instances (``--target-onnx``, ``--layer-info``)."""


@hookspec
def register_decoders(register: Register) -> None:
    """Contribute language-model decoders for ``parity generate``: ``register(decoder, name=None)`` with
    :class:`parity.contract.decoder.Decoder` instances (one class usually serves several names:
    ``torch``, ``torch-bf16``)."""


HOOKS: tuple[str, ...] = ("register_metrics", "register_dump_formats", "register_sources", "register_matchers",
                          "register_reporters", "register_input_readers", "register_dump_annotators",
                          "register_decoders")

"""The core reaches plugin knowledge only through hooks: ``register_input_readers`` (``--inputs``
files in a plugin's format) and ``register_dump_annotators`` (facts attached to dumps made
elsewhere). Both are exercised here with third-party plugins registered in the test."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from parity import Activation, ParityError, hookimpl
from parity.contract.dumpformat import AnnotationContext, DumpAnnotator
from parity.contract.source import InputReader, InputSpec, RunConfig
from parity.core import registry as plugins
from parity.core.compare import CompareSettings, _DumpTarget
from parity.core.dumps import write_dump
from parity.core.inputs import load_feeds


class TextFeeds(InputReader):
    """One feed per line: ``name=v,v,v;name=...`` (a made-up format)."""

    name = "text-feeds"

    def can_read(self, path: Path) -> bool:
        return path.suffix == ".feeds"

    def read(self, path: Path):
        for line in path.read_text().splitlines():
            feed = {}
            for part in line.split(";"):
                k, v = part.split("=")
                feed[k] = np.array([float(x) for x in v.split(",")], np.float32).reshape(1, -1)
            yield feed


class Plugin:
    @hookimpl
    def register_input_readers(self, register):
        register(TextFeeds())

    @hookimpl
    def register_dump_annotators(self, register):
        register(Renamer())
        register(Tagger())


class Renamer(DumpAnnotator):
    """Maps engine names to graph names: must run before the tagger (lower order)."""

    name = "renamer"
    order = 10

    def wants(self, ctx: AnnotationContext) -> bool:
        return ctx.layer_info == "rename"

    def prepare(self, ctx):
        def step(a: Activation) -> Activation:
            a.meta["graph_name"] = a.name.replace("engine_", "graph_")
            return a
        return step


class Tagger(DumpAnnotator):
    name = "tagger"
    order = 20

    def wants(self, ctx: AnnotationContext) -> bool:
        return ctx.layer_info is not None

    def prepare(self, ctx):
        def step(a: Activation) -> Activation:
            a.meta["tag"] = f"seen {a.meta.get('graph_name', '-')}"
            return a
        return step


@pytest.fixture
def plugin(monkeypatch):
    # only the dump formats beside this plugin: the built-in annotators would claim the same context
    monkeypatch.setenv("PARITY_LOAD_PLUGINS", "formats")
    plugins.reset()
    p = Plugin()
    plugins.register_plugin(p, name="third-party-hooks")
    try:
        yield p
    finally:
        plugins.unregister_plugin(p)


def test_an_input_reader_plugin_feeds_load_feeds(plugin, tmp_path):
    f = tmp_path / "in.feeds"
    f.write_text("x=1,2,3\nx=4,5,6\n")
    got = list(load_feeds(f, [InputSpec("x", (1, 3))]))
    assert [n for n, _ in got] == ["in.feeds[0]", "in.feeds[1]"]
    np.testing.assert_array_equal(got[1][1]["x"], np.array([[4, 5, 6]], np.float32))
    # the core still validates what a plugin read, and names the file and the set
    with pytest.raises(ParityError, match=r"in\.feeds: input set 0 lacks y"):
        list(load_feeds(f, [InputSpec("y", (1, 3))]))


def test_without_the_plugin_the_file_is_not_claimed(tmp_path):
    f = tmp_path / "in.feeds"
    f.write_text("x=1,2,3\n")
    with pytest.raises(ParityError, match="in.feeds"):
        list(load_feeds(f, [InputSpec("x", (1, 3))]))


def test_dump_annotators_run_in_order_when_they_apply(plugin, tmp_path):
    dump = tmp_path / "dump"
    write_dump([Activation("engine_conv", np.ones((1, 2), np.float32), order=0)], dump)
    cfg = RunConfig(model="m")
    target = _DumpTarget(CompareSettings(model="m", target_dump=str(dump), layer_info="rename"))
    (rec,) = list(target.run(cfg, {}))
    assert rec.meta["graph_name"] == "graph_conv" and rec.meta["tag"] == "seen graph_conv"
    # an annotator that does not want the context is not applied
    target = _DumpTarget(CompareSettings(model="m", target_dump=str(dump), layer_info="other"))
    (rec,) = list(target.run(cfg, {}))
    assert "graph_name" not in rec.meta and rec.meta["tag"] == "seen -"

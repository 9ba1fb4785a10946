"""What the contract's Matcher base class shares with every matcher, and the import cycles issue 18 removed.

A matcher writes only ``stream(ref, target, ctx)``; ``pairs`` (with or without a context) and
``match`` (mapping rules) come from the base class, and the parking store a matcher parks in is
closed when its pairs end, whoever made the context.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pytest

from parity.contract.matcher import MappingRules, MatchContext, Matcher
from parity.contract.records import Activation, Pair
from parity.lib.parking import Parking

ROOT = Path(__file__).resolve().parents[2]


def _acts(names: list[str], size: int = 256) -> list[Activation]:
    rng = np.random.default_rng(0)
    return [Activation(n, rng.standard_normal(size).astype(np.float32)) for n in names]


class ParkByPosition(Matcher):
    """Parks every reference record, then pairs the i-th target with the i-th reference."""

    name = "park-by-position"
    created: list[Parking] = []

    @staticmethod
    def new_parking(budget: int | None, spill_dir: str | None) -> Parking:  # type: ignore[override]
        store = Parking(0, spill_dir)  # budget 0: every array goes to a spill file
        ParkByPosition.created.append(store)
        return store

    def stream(self, ref: Iterable[Activation], target: Iterable[Activation], ctx: MatchContext) -> Iterator[Pair]:
        held = [ctx.parking.park(r) for r in ref]
        for i, t in enumerate(target):
            r = held[i]
            ctx.parking.release(r)
            ctx.stats["position"] = ctx.stats.get("position", 0) + 1
            yield Pair(r, t, "position", 0.5)


def test_a_stream_only_matcher_gets_pairs_and_its_parking_closed(monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ParkByPosition.created.clear()
    ref, tgt = _acts(["a", "b", "c"]), _acts(["x", "y", "z"])
    pairs = list(ParkByPosition().pairs(ref, tgt))  # no context: the base class makes one
    assert [(p.ref.name, p.target.name) for p in pairs] == [("a", "x"), ("b", "y"), ("c", "z")]
    for p, r in zip(pairs, ref):  # the spilled copies read back the same values
        np.testing.assert_array_equal(p.ref.array, r.array)
    (store,) = ParkByPosition.created  # the class's own store, not the installed default
    assert store.stats.spilled_arrays == 3 and store.closed
    assert not list(tmp_path.glob("parity-park-*"))  # spill folder removed when the pairs ended


def test_match_applies_rules_around_a_stream_only_matcher(tmp_path):
    ParkByPosition.created.clear()
    ref, tgt = _acts(["a", "b", "skip"]), _acts(["x", "y"])
    ctx = MatchContext(spill_dir=str(tmp_path))
    pairs = list(ParkByPosition().match(ref, tgt, MappingRules(exclude_ref=["skip"]), ctx))
    assert [(p.ref.name, p.target.name) for p in pairs] == [("a", "x"), ("b", "y")]
    assert ctx.stats["position"] == 2 and ctx.stats["excluded_ref"] == 1
    assert ctx.new_parking is ParkByPosition.new_parking  # the matcher's store filled in
    assert ctx.parking_stats is not None and ctx.parking_stats.spilled_arrays == 2
    assert not list(tmp_path.glob("parity-park-*/*"))


def test_an_older_matcher_overriding_pairs_still_runs():
    class TwoArgs(Matcher):
        name = "two-args"

        def pairs(self, ref, target):  # the original two-parameter form
            for r, t in zip(ref, target):
                yield Pair(r, t, "zip", 1.0)

    ref, tgt = _acts(["a", "b"]), _acts(["a", "b"])
    pairs = list(TwoArgs().match(ref, tgt))
    assert [(p.ref.name, p.target.name, p.how) for p in pairs] == [("a", "a", "zip"), ("b", "b", "zip")]


def test_builtin_matchers_write_only_stream():
    from parity_builtin_matchers import AutoMatcher, ExactMatcher

    for cls in (ExactMatcher, AutoMatcher):
        assert cls.pairs is Matcher.pairs and cls.match is Matcher.match
        assert cls.stream is not Matcher.stream and cls.new_parking is Parking


@pytest.mark.parametrize("a,b", [
    ("parity.core.compare", "parity.core.workers"),
    ("parity.core.engine", "parity.core.stats"),
    ("parity.lib.scoring.fused", "parity.lib.scoring.kernels"),
    ("parity.core.culprits", "parity.core.diagnose"),
])
def test_the_two_module_import_cycles_stay_gone(a, b):
    grimp = pytest.importorskip("grimp")
    sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]
    try:
        graph = grimp.build_graph("parity", cache_dir=None)
    finally:
        del sys.path[:2]
    ab = graph.direct_import_exists(importer=a, imported=b)
    ba = graph.direct_import_exists(importer=b, imported=a)
    assert not (ab and ba), f"{a} and {b} import each other"

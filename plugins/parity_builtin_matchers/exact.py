"""The exact matcher: pairs records with equal keys."""
from __future__ import annotations

from itertools import zip_longest
from typing import Iterable, Iterator

from parity.contract.matcher import MatchContext, Matcher
from parity.contract.records import Activation, Pair
from parity.lib.parking import Parking


class ExactMatcher(Matcher):
    """Pairs records with equal keys, streaming: a pair leaves as soon as both sides have arrived.

    Both streams are pulled in turn, so two sources producing layers in the same order keep
    at most one unpaired activation waiting on each side. A waiting record is parked
    (``ctx.parking``: in memory within the budget, else in a spill file) and released when its
    partner arrives, so streams in different orders stay within ``max_memory`` too.
    """

    name = "exact"
    description = "pair layers with identical names (same framework, or dumps named alike)"
    new_parking = Parking  # for a context this matcher makes itself (called without the core)
    pairs_within_wants = True  # by key only

    def stream(self, ref: Iterable[Activation], target: Iterable[Activation], ctx: MatchContext) -> Iterator[Pair]:
        park = ctx.parking
        waiting_ref: dict[str, Activation] = {}
        waiting_tgt: dict[str, Activation] = {}
        sentinel = object()
        n = 0
        for r, t in zip_longest(ref, target, fillvalue=sentinel):
            if r is not sentinel:
                assert isinstance(r, Activation)
                other = waiting_tgt.pop(r.key, None)
                if other is not None:
                    n += 1
                    park.release(other)
                    yield Pair(r, other, "exact", 1.0)
                else:
                    waiting_ref[r.key] = park.park(r)
            if t is not sentinel:
                assert isinstance(t, Activation)
                other = waiting_ref.pop(t.key, None)
                if other is not None:
                    n += 1
                    park.release(other)
                    yield Pair(other, t, "exact", 1.0)
                else:
                    waiting_tgt[t.key] = park.park(t)
        for r in waiting_ref.values():
            yield Pair(r, None, "unmatched", 0.0)
        for t in waiting_tgt.values():
            yield Pair(None, t, "unmatched", 0.0)
        ctx.stats["exact"] = ctx.stats.get("exact", 0) + n

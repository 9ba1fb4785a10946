"""The matcher contract: how reference and target layers are lined up before scoring, and the
user's mapping rules that apply whichever matcher is selected.

A matcher turns two activation streams into a stream of :class:`parity.contract.records.Pair`.
Every pair says how it was matched and with what confidence; layers found on one side only
come out as pairs with the other side ``None``, so nothing is silently dropped.

The core calls :meth:`Matcher.match`, which applies :class:`MappingRules` (exclusions and pins)
around the plugin's own :meth:`Matcher.pairs`: a pinned pair or an excluded layer never reaches
the matcher, so every matcher honours a mapping file without knowing about it.
"""
from __future__ import annotations

import fnmatch
import inspect
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Iterator, Protocol

import numpy as np

from parity.contract.errors import ParityError
from parity.contract.records import Activation, Pair

#: confidence of a pair the user pinned in a mapping file
PINNED_CONFIDENCE = 1.0

Similarity = Callable[[np.ndarray, np.ndarray], float]


@dataclass
class ParkingStats:
    """What a parking store did, for reports and benchmarks (bytes, counts)."""

    held_bytes: int = 0
    peak_held_bytes: int = 0
    spilled_bytes: int = 0
    spilled_arrays: int = 0
    parked_arrays: int = 0
    copied_arrays: int = 0
    files_created: int = 0
    #: device records (tensors) kept where they are, within the device budget, and their peak
    device_held_bytes: int = 0
    device_peak_bytes: int = 0
    #: device records moved to the host because the device budget was full
    device_moved_arrays: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class ParkingStore(Protocol):
    """Where a matcher keeps records waiting for their partner (``ctx.parking``).

    The store itself (in memory within a budget, spill files beyond it) is
    :class:`parity.lib.parking.Parking`; a matcher needs only this much of it.
    """

    closed: bool
    stats: ParkingStats

    def park(self, a: Activation) -> Activation:
        """``a`` with its array kept (in memory or a read-only view of a spill file): keep this one."""
        ...

    def release(self, a: Activation | np.ndarray) -> None:
        """Give back the memory share of a parked record once it is paired."""
        ...

    def close(self) -> None:
        """Remove what the store wrote; its statistics stay readable."""
        ...


#: ``new_parking(max_memory, spill_dir)``: a fresh parking store
ParkingFactory = Callable[[int | None, str | None], ParkingStore]
#: the factory of a :class:`MatchContext` given none; :mod:`parity.lib.parking` installs its
#: ``Parking`` here when imported (the contract imports nothing of parity above it)
_default_parking: list[ParkingFactory] = []


def set_default_parking(factory: ParkingFactory) -> None:
    """Install the parking store a :class:`MatchContext` without ``new_parking`` uses."""
    _default_parking[:] = [factory]


@dataclass
class MatchContext:
    """What the core hands a matcher for one run.

    ``similarity`` scores two equal-size arrays with the metric the matcher asked for by name
    (:attr:`Matcher.similarity_metric`), computed by that registered metric; ``None`` when the
    matcher asked for none or it is not installed. A matcher keeps records waiting for their
    partner through :attr:`parking` (a :class:`ParkingStore`, made by ``new_parking``; the core
    passes :class:`parity.lib.parking.Parking`): in memory up to ``max_memory`` bytes (``None``:
    :func:`parity.lib.parking.default_budget`), beyond it in a few spill files under
    ``spill_dir`` (``None``: the system's temporary folder). :meth:`Matcher.match` closes it when
    the pair stream ends or is closed. A matcher counts how it matched into ``stats``
    (method -> pairs); the core reports the counts.
    """

    similarity: Similarity | None = None
    spill_dir: str | None = None
    stats: dict[str, int] = field(default_factory=dict)
    #: bytes of parked activations held in memory (``--max-memory``); None: the default budget
    max_memory: int | None = None
    #: makes the run's parking store; None: the installed default (:func:`set_default_parking`)
    new_parking: ParkingFactory | None = None
    _parking: ParkingStore | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def parking(self) -> ParkingStore:
        """The run's parking store, created at first use (a closed one is replaced by a fresh one)."""
        if self._parking is None or self._parking.closed:
            factory = self.new_parking or (_default_parking[0] if _default_parking else None)
            if factory is None:
                raise ParityError("this match has no parking store. Note: pass MatchContext(new_parking="
                                  "parity.lib.parking.Parking), or import parity.lib.parking")
            self._parking = factory(self.max_memory, self.spill_dir)
        return self._parking

    @property
    def parking_stats(self) -> ParkingStats | None:
        """What the last parking store did (held peak, bytes spilled, files); None when nothing was parked."""
        return self._parking.stats if self._parking is not None else None

    def close_parking(self) -> None:
        """Remove the spill files of the run's parking store (its statistics stay readable)."""
        if self._parking is not None:
            self._parking.close()


class Matcher:
    """Base class for matcher plugins.

    Implement :meth:`stream`: the matching itself, handed the run's :class:`MatchContext` (a
    similarity metric, ``ctx.parking`` for records waiting for a partner: park them there,
    release them once paired, and ``ctx.stats`` for its counts). :meth:`pairs` (and
    :meth:`match`, what the core calls) are shared: a matcher called without a context gets a
    fresh one whose parking store is closed when its pair stream ends. Set
    :attr:`similarity_metric` to the name of a registered metric to get ``ctx.similarity``.

    A matcher written against the older form overrides :meth:`pairs` instead (two parameters,
    or three with ``ctx``); :meth:`match` still calls it.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: name of the registered metric whose value ``ctx.similarity`` computes (None: needs none)
    similarity_metric: ClassVar[str | None] = None
    #: the parking store of a context this matcher makes itself (None: the installed default)
    new_parking: ClassVar[ParkingFactory | None] = None
    #: True when every pair this matcher makes is one :meth:`parity.contract.capture.CaptureWants.selects`
    #: allows (same key, model output, module provenance, normalized name, or same shape but for
    #: size-1 axes): the core then lets sources skip the target tensors no reference record can pair
    #: with. False (the default for third-party matchers): sources capture everything
    pairs_within_wants: ClassVar[bool] = False

    def stream(self, ref: Iterable[Activation], target: Iterable[Activation], ctx: MatchContext) -> Iterator[Pair]:
        """Yield the pairs of the two streams (one-sided layers as pairs with the other side None)."""
        raise NotImplementedError

    def pairs(self, ref: Iterable[Activation], target: Iterable[Activation],
              ctx: MatchContext | None = None) -> Iterator[Pair]:
        """:meth:`stream` with ``ctx``; without one, with a fresh context closed when the pairs end."""
        if ctx is not None:  # through Matcher.match, which closes ctx.parking when the stream ends
            return self.stream(ref, target, ctx)
        ctx = MatchContext(new_parking=type(self).new_parking)
        return closing_parking(self.stream(ref, target, ctx), ctx)

    def match(self, ref: Iterable[Activation], target: Iterable[Activation],
              rules: MappingRules | None = None, ctx: MatchContext | None = None) -> Iterator[Pair]:
        """What the core calls: :meth:`pairs` with the mapping ``rules`` applied around it."""
        ctx = ctx if ctx is not None else MatchContext(new_parking=type(self).new_parking)
        if ctx.new_parking is None:
            ctx.new_parking = type(self).new_parking
        if type(self).pairs is Matcher.pairs or "ctx" in inspect.signature(self.pairs).parameters:
            def inner(r: Iterable[Activation], t: Iterable[Activation]) -> Iterator[Pair]:
                return self.pairs(r, t, ctx)
        else:  # a matcher written against the two-argument form
            def inner(r: Iterable[Activation], t: Iterable[Activation]) -> Iterator[Pair]:
                return self.pairs(r, t)
        pairs = inner(ref, target) if rules is None or rules.empty else apply_rules(inner, ref, target, rules, ctx)
        return closing_parking(pairs, ctx)

    def __repr__(self) -> str:
        return f"<matcher {self.name}>"


def closing_parking(pairs: Iterable[Pair], ctx: MatchContext) -> Iterator[Pair]:
    """``pairs``, then ``ctx``'s parking store closed (its spill files removed) however the stream ends.

    :meth:`Matcher.match` wraps every matcher in it, and so does :meth:`Matcher.pairs` called without a
    context (it makes its own).
    """
    try:
        yield from pairs
    finally:
        ctx.close_parking()


def normalize_name(name: str) -> str:
    """A framework-neutral form of a layer name: the module path a name most likely denotes.

    ``/layer1/layer1.0/conv1/Conv_output_0`` → ``layer1.0.conv1``; ``layer1.0.conv1`` stays;
    ``features_3_conv`` and ``features.3.conv`` meet at ``features.3.conv``.
    """
    n = name.strip()
    n = re.sub(r"#\d+$", "", n)
    n = re.sub(r"(_output)?_\d+$", "", n) if "/" in n else n
    if "/" in n:
        parts = [p for p in n.split("/") if p]
        # the last component names the op (Conv, Relu, MatMul_1) when the name is a node/tensor name
        if len(parts) > 1:
            parts = parts[:-1]
        path = ""
        for p in parts:
            path = p if (not path or p.startswith(path + ".") or p.startswith(path + "_")) else f"{path}.{p}"
        n = path
    n = n.replace("_", ".").replace("::", ".").lower()
    return re.sub(r"\.+", ".", n).strip(".")


@dataclass
class MappingRules:
    """User pins and exclusions from a TOML mapping file (``configs/`` has an example)."""

    pins: dict[str, str] = field(default_factory=dict)  # ref name -> target name
    exclude_ref: list[str] = field(default_factory=list)  # glob patterns
    exclude_target: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MappingRules":
        import tomllib

        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ParityError(f"{p}: mapping file not found.") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ParityError(f"{p}: not valid TOML ({e}).") from None
        pins = data.get("pin", {})
        exc = data.get("exclude", {})
        if not isinstance(pins, dict) or not all(isinstance(v, str) for v in pins.values()):
            raise ParityError(f"{p}: [pin] must map reference layer names to target layer names (strings).")
        if not isinstance(exc, dict) or any(k not in ("ref", "target") for k in exc):
            raise ParityError(f"{p}: [exclude] takes keys 'ref' and 'target', each a list of name patterns.")
        unknown = set(data) - {"pin", "exclude"}
        if unknown:
            raise ParityError(f"{p}: unknown section(s) {', '.join(sorted(unknown))}. Note: valid: [pin], [exclude].")
        return cls(dict(pins), list(exc.get("ref", [])), list(exc.get("target", [])))

    @property
    def empty(self) -> bool:
        return not (self.pins or self.exclude_ref or self.exclude_target)

    def excluded(self, name: str, side: str) -> bool:
        pats = self.exclude_ref if side == "ref" else self.exclude_target
        return any(fnmatch.fnmatchcase(name, p) for p in pats)


def apply_rules(inner: Callable[[Iterable[Activation], Iterable[Activation]], Iterator[Pair]],
                ref: Iterable[Activation], target: Iterable[Activation], rules: MappingRules,
                ctx: MatchContext) -> Iterator[Pair]:
    """Run a matcher on the streams less excluded and pinned layers; yield the pinned pairs beside its own.

    Streaming: a pinned layer waits only until its partner arrives (pins are few), and the pair
    leaves at the next pair the matcher yields, or at the end. Counts ``pinned``,
    ``excluded_ref`` and ``excluded_target`` into ``ctx.stats``. A pin naming a reference layer
    the reference never produced is an error naming the layers it did produce.
    """
    pinned_t = {t: r for r, t in rules.pins.items()}
    held_ref: dict[str, Activation] = {}
    held_tgt: dict[str, Activation] = {}
    ready: list[Pair] = []
    seen_ref: list[str] = []
    seen_pins: set[str] = set()
    counts = {"pinned": 0, "excluded_ref": 0, "excluded_target": 0}

    def pin(r: Activation, t: Activation) -> None:
        note = "" if math.prod(r.shape) == math.prod(t.shape) else "pinned pair differs in size"
        counts["pinned"] += 1
        ready.append(Pair(r, t, "pinned", PINNED_CONFIDENCE, note))

    def refs() -> Iterator[Activation]:
        for r in ref:
            if rules.excluded(r.key, "ref"):
                counts["excluded_ref"] += 1
                continue
            if len(seen_ref) < 10:
                seen_ref.append(r.key)
            if r.key in rules.pins:
                seen_pins.add(r.key)
                t = held_tgt.pop(rules.pins[r.key], None)
                if t is not None:
                    pin(r, t)
                else:
                    held_ref[r.key] = r
                continue
            yield r

    def targets() -> Iterator[Activation]:
        for t in target:
            if rules.excluded(t.key, "target"):
                counts["excluded_target"] += 1
                continue
            if t.key in pinned_t:
                r = held_ref.pop(pinned_t[t.key], None)
                if r is not None:
                    pin(r, t)
                else:
                    held_tgt[t.key] = t
                continue
            yield t

    r_it, t_it = refs(), targets()
    for pair in inner(r_it, t_it):
        yield pair
        while ready:
            yield ready.pop(0)
    # a matcher may stop before a stream ends: what it never took is listed, and pins still meet
    for r in r_it:
        yield Pair(r, None, "unmatched", 0.0)
    for t in t_it:
        yield Pair(None, t, "unmatched", 0.0)
    while ready:
        yield ready.pop(0)
    missing = [r for r in rules.pins if r not in seen_pins]
    if missing:
        raise ParityError(f"mapping pins reference layer {missing[0]!r}, which the reference does not have. "
                          f"Note: reference layers include {', '.join(seen_ref)}.")
    for r in held_ref.values():
        yield Pair(r, None, "unmatched", 0.0, f"pinned to {rules.pins[r.key]!r}, which the target does not have")
    for t in held_tgt.values():
        yield Pair(None, t, "unmatched", 0.0)
    for k, v in counts.items():
        ctx.stats[k] = ctx.stats.get(k, 0) + v

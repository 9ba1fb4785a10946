"""Matchers: line up reference and target layers before scoring.

A matcher turns two activation streams into a stream of :class:`parity.contract.records.Pair`.
Every pair says how it was matched and with what confidence; layers found on one side
only come out as pairs with the other side ``None``, so nothing is silently dropped.
"""
from __future__ import annotations

from itertools import zip_longest
from typing import ClassVar, Iterable, Iterator

from parity.contract.records import Pair
from parity.contract.records import Activation


class Matcher:
    """Base class for matcher plugins."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def pairs(self, ref: Iterable[Activation], target: Iterable[Activation]) -> Iterator[Pair]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<matcher {self.name}>"


class ExactMatcher(Matcher):
    """Pairs records with equal keys, streaming: a pair leaves as soon as both sides have arrived.

    Both streams are pulled in turn, so two sources producing layers in the same order keep
    at most one unpaired activation waiting on each side.
    """

    name = "exact"
    description = "pair layers with identical names (same framework, or dumps named alike)"

    def pairs(self, ref: Iterable[Activation], target: Iterable[Activation]) -> Iterator[Pair]:
        waiting_ref: dict[str, Activation] = {}
        waiting_tgt: dict[str, Activation] = {}
        sentinel = object()
        for r, t in zip_longest(ref, target, fillvalue=sentinel):
            if r is not sentinel:
                assert isinstance(r, Activation)
                other = waiting_tgt.pop(r.key, None)
                if other is not None:
                    yield Pair(r, other, "exact", 1.0)
                else:
                    waiting_ref[r.key] = r
            if t is not sentinel:
                assert isinstance(t, Activation)
                other = waiting_ref.pop(t.key, None)
                if other is not None:
                    yield Pair(other, t, "exact", 1.0)
                else:
                    waiting_tgt[t.key] = t
        for r in waiting_ref.values():
            yield Pair(r, None, "unmatched", 0.0)
        for t in waiting_tgt.values():
            yield Pair(None, t, "unmatched", 0.0)


# --------------------------------------------------------------------------------------
# Cross-framework matching
# --------------------------------------------------------------------------------------

import fnmatch  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from parity.contract.errors import ParityError  # noqa: E402

#: confidence of each matching method, highest first; the report shows method and confidence
CONFIDENCE = {"exact": 1.0, "output": 1.0, "pinned": 1.0, "provenance": 0.95, "normalized": 0.8,
              "order+shape": 0.6, "value": 0.5}


class SpillStore:
    """Parks arrays on disk and hands back memory-mapped views, so waiting layers cost no RAM."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="parity-spill-", dir=root))
        self._n = 0

    def park(self, a: Activation) -> Activation:
        arr = np.ascontiguousarray(a.array)
        if arr.nbytes < 1 << 16:  # small arrays stay in memory: files would cost more than they save
            return Activation(a.name, np.array(arr), a.output_index, a.order, a.op_type, a.meta)
        path = self.dir / f"{self._n}.npy"
        self._n += 1
        np.save(path, arr)
        return Activation(a.name, np.load(path, mmap_mode="r"), a.output_index, a.order, a.op_type, a.meta)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


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

    def excluded(self, name: str, side: str) -> bool:
        pats = self.exclude_ref if side == "ref" else self.exclude_target
        return any(fnmatch.fnmatchcase(name, p) for p in pats)


def _scopes(a: Activation) -> list[str]:
    s = a.meta.get("scopes")
    if s:
        return list(s)
    mp = a.meta.get("module_path")
    return [mp] if mp else []


def _released(a: Activation) -> Activation:
    """The same record without its data: a zero-byte stand-in of the same shape and dtype."""
    return Activation(a.name, np.broadcast_to(np.zeros((), a.array.dtype), a.array.shape), a.output_index,
                      a.order, a.op_type, a.meta)


def _provenance_disagrees(r: Activation, t: Activation) -> bool:
    """Same name, but the exporter says the target tensor is another module's output.

    Across frameworks a shared name can be a coincidence (an ONNX tensor called ``relu`` is the
    first Relu op, whichever module it came from); provenance, when both sides have it, decides.
    """
    mp = r.meta.get("module_path")
    ts = t.meta.get("scopes")
    return bool(mp and ts is not None and mp not in ts)


def _lis(seq: list[int]) -> list[int]:
    """Indices of a longest strictly increasing subsequence (anchors that agree on order)."""
    import bisect

    tails: list[int] = []
    tails_idx: list[int] = []
    prev = [-1] * len(seq)
    for i, v in enumerate(seq):
        j = bisect.bisect_left(tails, v)
        if j == len(tails):
            tails.append(v)
            tails_idx.append(i)
        else:
            tails[j] = v
            tails_idx[j] = i
        prev[i] = tails_idx[j - 1] if j else -1
    out = []
    k = tails_idx[-1] if tails_idx else -1
    while k >= 0:
        out.append(k)
        k = prev[k]
    return out[::-1]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    m = np.isfinite(x) & np.isfinite(y)
    x, y = x[m], y[m]
    nx, ny = float(np.dot(x, x)), float(np.dot(y, y))
    if nx == 0 or ny == 0:
        return 1.0 if nx == ny else 0.0
    return float(np.dot(x, y) / np.sqrt(nx * ny))


class AutoMatcher(Matcher):
    """Aligns layers across frameworks: exact names, graph outputs, export provenance,
    normalized names, then (for what is left) graph order plus shape, then value similarity.

    The reference stream is parked first (arrays memory-mapped from a spill folder), then
    each target activation is matched and scored the moment it arrives. Only what no
    name-based rule can place waits for the fuzzy steps at the end.
    """

    name = "auto"
    description = "cross-framework: exact, outputs, export provenance, normalized names, order+shape, values"

    def __init__(self, rules: MappingRules | None = None, value_min_cosine: float = 0.99,
                 spill_dir: str | None = None):
        self.rules = rules or MappingRules()
        self.value_min_cosine = value_min_cosine
        self.spill_dir = spill_dir
        self.stats: dict[str, int] = {}

    def pairs(self, ref: Iterable[Activation], target: Iterable[Activation]) -> Iterator[Pair]:
        store = SpillStore(self.spill_dir)
        try:
            yield from self._pairs(ref, target, store)
        finally:
            store.close()

    def _pairs(self, ref: Iterable[Activation], target: Iterable[Activation], store: SpillStore) -> Iterator[Pair]:
        rules = self.rules
        refs: list[Activation] = []
        excluded = {"ref": 0, "target": 0}
        for r in ref:
            if rules.excluded(r.key, "ref"):
                excluded["ref"] += 1
                continue
            refs.append(store.park(r))
        by_key: dict[str, int] = {}
        by_scope: dict[str, list[int]] = {}
        by_norm: dict[str, list[int]] = {}
        outputs: dict[int, int] = {}
        for i, r in enumerate(refs):
            by_key.setdefault(r.key, i)
            if r.meta.get("is_output"):
                outputs.setdefault(int(r.meta.get("output_position", r.output_index)), i)
            for s in _scopes(r)[:1]:
                by_scope.setdefault(s, []).append(i)
            by_norm.setdefault(normalize_name(r.key), []).append(i)
        pinned = {t: r for r, t in rules.pins.items()}
        for rname in rules.pins:
            if rname not in by_key:
                raise ParityError(f"mapping pins reference layer {rname!r}, which the reference does not have. "
                                  f"Note: reference layers include {', '.join(list(by_key)[:10])}.")
        claimed: set[int] = set()
        scope_seen: dict[str, int] = {}
        stats = {k: 0 for k in CONFIDENCE}
        leftover: list[tuple[int, Activation]] = []  # (target arrival index, parked activation)
        matched_order: list[tuple[int, int]] = []  # (ref index, target arrival index)
        target_has_provenance = False

        def compatible(i: int, t: Activation) -> bool:
            return refs[i].array.size == t.array.size

        for ti, t in enumerate(target):
            if rules.excluded(t.key, "target"):
                excluded["target"] += 1
                continue
            found: list[tuple[int, str]] = []
            if t.key in pinned:
                found = [(by_key[pinned[t.key]], "pinned")]
            elif t.key in by_key and by_key[t.key] not in claimed and t.key not in rules.pins \
                    and not _provenance_disagrees(refs[by_key[t.key]], t):
                # same name; when the exporter's provenance also names this module, say so
                agrees = refs[by_key[t.key]].meta.get("module_path") in (t.meta.get("scopes") or ())
                found = [(by_key[t.key], "provenance" if agrees else "exact")]
            if not found and t.meta.get("is_output"):
                pos = int(t.meta.get("output_position", t.output_index))
                if pos in outputs and compatible(outputs[pos], t):
                    found = [(outputs[pos], "output")]
            scopes = _scopes(t)
            target_has_provenance |= bool(scopes)
            if scopes:
                # A tensor can be the output of several nested modules; each scope's k-th tensor
                # goes to that module's k-th record (repeated calls, multiple outputs).
                for s in scopes:
                    k = scope_seen.get(s, 0)
                    scope_seen[s] = k + 1
                    cands = by_scope.get(s, [])
                    if k < len(cands) and cands[k] not in claimed and compatible(cands[k], t) \
                            and all(cands[k] != f for f, _ in found):
                        found.append((cands[k], "provenance"))
            if not found:
                for i in by_norm.get(normalize_name(t.key), []):
                    if i not in claimed and compatible(i, t):
                        found = [(i, "normalized")]
                        break
            if not found:
                leftover.append((ti, store.park(t)))
                continue
            for i, how in found:
                claimed.add(i)
                stats[how] += 1
                matched_order.append((i, ti))
                note = "" if compatible(i, t) else "pinned pair differs in size"
                yield Pair(refs[i], t, how, CONFIDENCE[how], note)
                refs[i] = _released(refs[i])  # scored: let its pages go (a claimed layer is never read again)

        # Fuzzy steps, within gaps between anchors that agree on order.
        matched_order.sort()
        chain = [matched_order[j] for j in _lis([ti for _, ti in matched_order])]
        anchor_r = [i for i, _ in chain]
        anchor_t = [ti for _, ti in chain]
        import bisect

        gaps_r: dict[int, list[int]] = {}
        for i in range(len(refs)):
            if i not in claimed:
                gaps_r.setdefault(bisect.bisect_left(anchor_r, i), []).append(i)
        gaps_t: dict[int, list[tuple[int, Activation]]] = {}
        for ti, t in leftover:
            gaps_t.setdefault(bisect.bisect_left(anchor_t, ti), []).append((ti, t))
        used_t: set[int] = set()
        for g, ris in gaps_r.items():
            tis = gaps_t.get(g, [])
            if not tis:
                continue
            if not target_has_provenance:
                # order + shape: a shape unique to this gap on both sides pairs up
                for i in list(ris):
                    same_r = [j for j in ris if refs[j].shape == refs[i].shape]
                    same_t = [(ti, t) for ti, t in tis if ti not in used_t and t.shape == refs[i].shape]
                    if len(same_r) == 1 and len(same_t) == 1:
                        ti, t = same_t[0]
                        used_t.add(ti)
                        claimed.add(i)
                        ris.remove(i)
                        stats["order+shape"] += 1
                        yield Pair(refs[i], t, "order+shape", CONFIDENCE["order+shape"],
                                   "fuzzy match: only layer of this shape between its matched neighbours")
            # value similarity over size-compatible candidates, optimal assignment
            rest_t = [(ti, t) for ti, t in tis if ti not in used_t]
            if ris and rest_t:
                from scipy.optimize import linear_sum_assignment

                cost = np.full((len(ris), len(rest_t)), 2.0)
                for a, i in enumerate(ris):
                    for b, (_, t) in enumerate(rest_t):
                        if refs[i].array.size == t.array.size:
                            cost[a, b] = 1.0 - _cosine(refs[i].array, t.array)
                rows, cols = linear_sum_assignment(cost)
                for a, b in zip(rows, cols):
                    cos = 1.0 - cost[a, b]
                    if cost[a, b] <= 1.0 and cos >= self.value_min_cosine:
                        i = ris[a]
                        ti, t = rest_t[b]
                        used_t.add(ti)
                        claimed.add(i)
                        stats["value"] += 1
                        yield Pair(refs[i], t, "value", round(CONFIDENCE["value"] * cos, 3),
                                   f"fuzzy match by values (cosine {cos:.4f}); names did not match")
        for i, r in enumerate(refs):
            if i not in claimed:
                yield Pair(r, None, "unmatched", 0.0)
        for ti, t in leftover:
            if ti not in used_t:
                yield Pair(None, t, "unmatched", 0.0)
        stats["excluded_ref"] = excluded["ref"]
        stats["excluded_target"] = excluded["target"]
        self.stats = stats

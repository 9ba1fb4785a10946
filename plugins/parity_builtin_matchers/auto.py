"""The auto matcher: aligns layers across frameworks (exact names, graph outputs, export provenance,
normalized names, then graph order plus shape, then value similarity).

The value step scores candidates with the registered metric named by ``similarity_metric``
(cosine), which the core hands over as ``ctx.similarity``: no second cosine lives here. Mapping
rules (pins, exclusions) are applied around this matcher by :meth:`parity.contract.matcher.Matcher.match`.
"""
from __future__ import annotations

import bisect
import itertools
import math
from typing import Any, Iterable, Iterator

import numpy as np

from parity.contract.matcher import MatchContext, Matcher, normalize_name
from parity.contract.records import Activation, Pair, is_tensor, to_host
from parity.lib.parking import Parking

#: confidence of each matching method, highest first; the report shows method and confidence
#: (pinned pairs, confidence 1.0, come from the mapping rules around the matcher)
CONFIDENCE = {"exact": 1.0, "output": 1.0, "provenance": 0.95, "same-values": 0.9, "normalized": 0.8,
              "order+shape": 0.6, "value": 0.5}


def same_dims(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Same shape but for size-1 axes: the only difference under which two tensors line up element
    by element. Equal element counts alone ([2,32,12,32] vs [2,32,384]) are no evidence of a pair."""
    return tuple(d for d in a if d != 1) == tuple(d for d in b if d != 1)


def layout_permutation(ref: tuple[int, ...], target: tuple[int, ...]) -> tuple[int, ...] | None:
    """The one axis order that turns ``target``'s non-1 axes into ``ref``'s, when they differ only by it.

    Why: exporters keep some module outputs in another layout (ONNX LSTM/GRU run sequence-first, so
    a batch_first torch LSTM's output is a ``[seq, batch, hidden]`` tensor when the next op consumes
    it that way). Provenance says the tensor is the module's output; comparing it flat would pair
    unrelated elements. None when the layouts agree already, do not permute into each other, or
    more than one order fits (equal sizes: which axis is which cannot be told from shapes).
    """
    rs = tuple(d for d in ref if d != 1)
    ts = tuple(d for d in target if d != 1)
    if rs == ts or sorted(rs) != sorted(ts) or len(ts) > 6:
        return None
    fits = [p for p in itertools.permutations(range(len(ts))) if tuple(ts[k] for k in p) == rs]
    return fits[0] if len(fits) == 1 else None


def _permuted(t: Activation, ref_shape: tuple[int, ...], perm: tuple[int, ...]) -> Activation:
    """``t`` read in the reference's layout (a view where numpy can), for element-by-element scoring."""
    core = t.host().reshape(tuple(d for d in t.shape if d != 1))
    meta = dict(t.meta, layout=f"target {list(t.shape)} read with axes {list(perm)} as {list(ref_shape)}")
    return Activation(t.name, np.transpose(core, perm).reshape(ref_shape), t.output_index, t.order, t.op_type, meta)


#: elements sampled per record before two records are compared whole (twins)
TWIN_SAMPLE = 1024


def _twins(refs: list[Activation]) -> dict[int, int]:
    """Reference records holding exactly the values of an earlier one (a Dropout in eval, an Identity,
    a module returning its input), each mapped to the first: index -> index.

    Exporters drop such modules, so no target tensor is theirs; they are compared with their twin's
    target tensor instead of being left to the value step, which would pair them with a neighbour.
    Only records whose shape and dtype occur more than once are hashed.
    """
    by_kind: dict[tuple, list[int]] = {}
    for i, r in enumerate(refs):
        if not r.meta.get("is_output"):
            by_kind.setdefault((r.shape, r.dtype), []).append(i)
    out: dict[int, int] = {}
    for idx in by_kind.values():
        if len(idx) < 2:
            continue
        # a strided sample first (a few KiB a record): only records whose samples agree are compared
        # whole; hashing every record whole cost ~1 s a feed for a BERT-base batch of 8
        first: dict[bytes, list[int]] = {}
        for i in idx:
            flat = refs[i].array.reshape(-1)  # a device record's sample is read where it is
            step = max(1, math.prod(refs[i].shape) // TWIN_SAMPLE)
            key = np.ascontiguousarray(to_host(flat[::step][:TWIN_SAMPLE])).tobytes()
            group = first.setdefault(key, [])
            for j in group:
                if _same_values(flat, refs[j].array.reshape(-1)):
                    out[i] = j
                    break
            else:
                group.append(i)
    return out


def _same_values(a: Any, b: Any) -> bool:
    """Equal element by element (NaN equals nothing), numpy arrays or device tensors alike."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b))
    if is_tensor(a) and is_tensor(b) and str(a.device) == str(b.device):
        return bool((a == b).all())  # on the device: one boolean crosses to the host
    return bool(np.array_equal(to_host(a), to_host(b)))


def _scopes(a: Activation) -> list[str]:
    s = a.meta.get("scopes")
    if s:
        return list(s)
    mp = a.meta.get("module_path")
    return [mp] if mp else []


def _released(a: Activation) -> Activation:
    """The same record without its data: a zero-byte stand-in of the same shape and dtype."""
    return Activation(a.name, np.broadcast_to(np.zeros((), np.dtype(a.dtype)), a.shape), a.output_index,
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


class AutoMatcher(Matcher):
    """Aligns layers across frameworks: exact names, graph outputs, export provenance,
    normalized names, then (for what is left) graph order plus shape, then value similarity.

    The reference stream is parked first (``ctx.parking``: in memory within ``max_memory``,
    beyond it memory-mapped from a few spill files), then each target activation is matched and
    scored the moment it arrives; a paired reference is released at once. Only what no
    name-based rule can place waits for the fuzzy steps at the end.
    """

    name = "auto"
    description = "cross-framework: exact, outputs, export provenance, normalized names, order+shape, values"
    similarity_metric = "cosine"
    new_parking = Parking  # for a context this matcher makes itself (called without the core)
    pairs_within_wants = True  # every step pairs by key, output, scope, normalized name or same_dims

    def __init__(self, value_min_similarity: float = 0.99):
        #: the value step pairs two layers only when their similarity reaches this
        self.value_min_similarity = value_min_similarity

    def stream(self, ref: Iterable[Activation], target: Iterable[Activation], ctx: MatchContext) -> Iterator[Pair]:
        store = ctx.parking
        refs: list[Activation] = [store.park(r) for r in ref]
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
        claimed: set[int] = set()
        scope_seen: dict[str, int] = {}
        stats = {k: 0 for k in CONFIDENCE}
        leftover: list[tuple[int, Activation]] = []  # (target arrival index, parked activation)
        matched_order: list[tuple[int, int]] = []  # (ref index, target arrival index)
        target_has_provenance = False

        twins = _twins(refs)
        twin_of: dict[int, list[int]] = {}
        for i, j in twins.items():
            twin_of.setdefault(j, []).append(i)
            twin_of.setdefault(i, []).append(j)
        twin_target: dict[int, Activation] = {}  # ref index -> the target tensor it was paired with

        def compatible(i: int, t: Activation) -> bool:
            return same_dims(refs[i].shape, t.shape)

        for ti, t in enumerate(target):
            found: list[tuple[int, str]] = []
            if t.key in by_key and by_key[t.key] not in claimed and not _provenance_disagrees(refs[by_key[t.key]], t):
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
                    if k < len(cands) and cands[k] not in claimed and all(cands[k] != f for f, _ in found) \
                            and (compatible(cands[k], t)  # or the same tensor in the exporter's layout:
                                 or layout_permutation(refs[cands[k]].shape, t.shape) is not None):
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
                ti_act, note = t, ""
                if not compatible(i, t):
                    perm = layout_permutation(refs[i].shape, t.shape) if how == "provenance" else None
                    if perm is not None:
                        ti_act = _permuted(t, refs[i].shape, perm)
                        note = f"layouts differ: {ti_act.meta['layout']}"
                    else:
                        note = "same name, shapes differ"
                if i in twin_of:
                    twin_target[i] = store.park(ti_act)
                yield Pair(refs[i], ti_act, how, CONFIDENCE[how], note)
                store.release(refs[i])
                refs[i] = _released(refs[i])  # scored: let its pages go (a claimed layer is never read again)

        # A record with its twin's values is compared with the twin's target tensor.
        for i in sorted(twin_of):
            if i in claimed:
                continue
            j = next((k for k in twin_of[i] if k in twin_target), None)
            if j is None:
                continue
            claimed.add(i)
            twin_target[i] = twin_target[j]
            stats["same-values"] += 1
            yield Pair(refs[i], twin_target[j], "same-values", CONFIDENCE["same-values"],
                       f"same values as {refs[j].key} (returns its input unchanged, e.g. Dropout in eval; the "
                       f"exporter drops it): compared with that layer's target tensor")
            store.release(refs[i])
            refs[i] = _released(refs[i])

        # Fuzzy steps, within gaps between anchors that agree on order.
        matched_order.sort()
        chain = [matched_order[j] for j in _lis([ti for _, ti in matched_order])]
        anchor_r = [i for i, _ in chain]
        anchor_t = [ti for _, ti in chain]
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
            # value similarity over shape-compatible candidates, optimal assignment
            rest_t = [(ti, t) for ti, t in tis if ti not in used_t]
            if ris and rest_t and ctx.similarity is not None:
                from scipy.optimize import linear_sum_assignment

                cost = np.full((len(ris), len(rest_t)), 2.0)
                for a, i in enumerate(ris):
                    for b, (_, t) in enumerate(rest_t):
                        if same_dims(refs[i].shape, t.shape):  # never a flat guess across shapes
                            sim = ctx.similarity(refs[i].array, t.array)
                            if not math.isnan(sim):
                                cost[a, b] = 1.0 - sim
                rows, cols = linear_sum_assignment(cost)
                for a, b in zip(rows, cols):
                    cos = 1.0 - cost[a, b]
                    if cost[a, b] <= 1.0 and cos >= self.value_min_similarity:
                        i = ris[a]
                        ti, t = rest_t[b]
                        used_t.add(ti)
                        claimed.add(i)
                        stats["value"] += 1
                        yield Pair(refs[i], t, "value", round(CONFIDENCE["value"] * cos, 3),
                                   f"fuzzy match by values ({self.similarity_metric} {cos:.4f}); "
                                   f"names did not match")
        for i, r in enumerate(refs):
            if i not in claimed:
                yield Pair(r, None, "unmatched", 0.0)
        for ti, t in leftover:
            if ti not in used_t:
                yield Pair(None, t, "unmatched", 0.0)
        for k, v in stats.items():
            ctx.stats[k] = ctx.stats.get(k, 0) + v

"""Which target tensors a run will score, so that a source captures only those (issue 19).

Why: a graph runtime names far more tensors than a framework has layers (ONNX Runtime yields ~3x
as many tensors as a torch model has module outputs: reshapes, transposes, residual adds). Every
one it captures is an extra session output (no buffer reuse), a host copy and, in the matcher, a
parked record, yet most can never pair with a reference layer and only become ``target-only``
rows. Once the reference stream of a feed has ended (the ``auto`` matcher parks it whole before it
reads the target), the core knows every reference record, and a target tensor that none of them
could pair with is not worth capturing.

:class:`CaptureWants` is that knowledge. The rule is a superset of every way the built-in matchers
pair (see :meth:`CaptureWants.selects`), so skipping never loses a pair; a matcher whose rules go
beyond it says so by leaving :attr:`parity.contract.matcher.Matcher.pairs_within_wants` False, and
the core then asks for everything. The core fills one object per run (``RunConfig.wants``) anew
for each feed; a source that knows how reads it when its run starts, captures only what
:meth:`~CaptureWants.selects` keeps (model outputs always) and counts the rest with
:meth:`~CaptureWants.note_skipped`. A source that ignores it captures everything, as before.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator


def squeezed(shape: Iterable[int]) -> tuple[int, ...]:
    """A shape without its size-1 axes: two tensors that differ only there line up element by element."""
    return tuple(int(d) for d in shape if int(d) != 1)


class CaptureWants:
    """What the reference of the current feed recorded, and the target tensors it leaves unwanted.

    ``ready`` is False until the core has seen the reference stream end (:meth:`learn`); a source
    that starts before that (the ``exact`` matcher reads both streams side by side) captures all.
    """

    def __init__(self) -> None:
        self.keys: frozenset[str] = frozenset()
        self.scopes: frozenset[str] = frozenset()
        self.normalized: frozenset[str] = frozenset()
        self.dims: frozenset[tuple[int, ...]] = frozenset()
        #: per reference record: (first module scope or None, shape, is a model output), in stream order
        self.records: tuple[tuple[str | None, tuple[int, ...], bool], ...] = ()
        self.ready = False
        #: target tensors the source left out on the current feed (it counts them with note_skipped)
        self.skipped = 0

    def reset(self) -> None:
        """Forget the previous feed's reference (the core calls it before each feed)."""
        self.__init__()  # type: ignore[misc]

    def learn(self, keys: Iterable[str], scopes: Iterable[str], normalized: Iterable[str],
              shapes: Iterable[Iterable[int]],
              records: Iterable[tuple[str | None, tuple[int, ...], bool]] = ()) -> None:
        """The reference stream has ended: its record keys, first module scopes, normalized names and
        shapes, and per record ``(first scope, shape, is_output)`` (for :meth:`loose_dims`)."""
        self.keys = frozenset(keys)
        self.scopes = frozenset(scopes)
        self.normalized = frozenset(normalized)
        self.dims = frozenset(squeezed(s) for s in shapes)
        self.records = tuple((sc, tuple(int(d) for d in sh), bool(o)) for sc, sh, o in records)
        self.ready = True

    def loose_dims(self, scope_shapes: dict[str, list[tuple[int, ...] | None]]) -> frozenset[tuple[int, ...]]:
        """Dims of the reference records that the provenance step may leave unpaired, given the target's
        captured tensors per module scope (``scope_shapes[s]``: the shape of each tensor that is an output
        of module ``s``, in capture order; None where unknown).

        Only those records can reach the order+shape and value steps, so only their dims make a tensor
        without a name or scope of its own worth capturing. A record counts as placed when the tensor
        the provenance step gives it (the k-th of its module's tensors for the module's k-th record) has
        the same dims; a model output, a record without a scope, or any doubt leaves it loose. Without
        records (an older caller): every reference shape.
        """
        if not self.records:
            return self.dims
        rank: dict[str, int] = {}
        out: set[tuple[int, ...]] = set()
        for scope, shape, is_output in self.records:
            if scope is not None:
                k = rank.get(scope, 0)
                rank[scope] = k + 1
                shapes = scope_shapes.get(scope, [])
                if not is_output and k < len(shapes) and shapes[k] is not None \
                        and squeezed(shapes[k]) == squeezed(shape):
                    continue
            out.add(squeezed(shape))
        return frozenset(out)

    def signature(self) -> tuple[Any, ...] | None:
        """A hashable summary of the current selection (a source caching a capture plan keys on it)."""
        if not self.ready:
            return None
        return (self.keys, self.scopes, self.normalized, self.dims)

    def selects(self, key: str, scopes: Iterable[str] = (), normalized: str | None = None,
                shape: Iterable[int] | None = None, is_output: bool = False,
                loose: frozenset[tuple[int, ...]] | None = None) -> bool:
        """Whether a target record could pair with a reference record of this feed (True before :meth:`learn`).

        A pair needs one of: the same key (exact), being a model output (output position), being the
        output of a module the reference recorded (export provenance), the same normalized name, or
        the same shape but for size-1 axes (order+shape and value similarity never pair across
        shapes). ``shape`` None (unknown before the run) keeps the tensor. ``loose`` narrows the last
        rule to the dims of the records the provenance step may leave unpaired (:meth:`loose_dims`).
        """
        if not self.ready or is_output or key in self.keys:
            return True
        if any(s in self.scopes for s in scopes):
            return True
        if normalized is not None and normalized in self.normalized:
            return True
        return shape is None or squeezed(shape) in (self.dims if loose is None else loose)

    def note_skipped(self, n: int) -> None:
        self.skipped += int(n)


def learning(wants: CaptureWants, stream: Iterable[Any], normalize: Any) -> Iterator[Any]:
    """Pass the reference ``stream`` through unchanged; when it ends, :meth:`CaptureWants.learn` what it held.

    ``normalize`` maps a key to its framework-neutral form (the matchers' ``normalize_name``).
    Only names and shapes are kept, never arrays.
    """
    keys: list[str] = []
    scopes: list[str] = []
    norms: list[str] = []
    shapes: list[tuple[int, ...]] = []
    records: list[tuple[str | None, tuple[int, ...], bool]] = []
    for a in stream:
        keys.append(a.key)
        s = list(a.meta.get("scopes") or ([a.meta["module_path"]] if a.meta.get("module_path") else []))[:1]
        scopes.extend(s)
        norms.append(normalize(a.key))
        shapes.append(a.shape)
        records.append((s[0] if s else None, shapes[-1], bool(a.meta.get("is_output"))))
        yield a
    wants.learn(keys, scopes, norms, shapes, records)

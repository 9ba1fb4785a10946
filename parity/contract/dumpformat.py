"""The dump-format contract: readers and writers of activation files.

A format either holds one activation per file (the TensorRT sample text dump, ``.npy``)
or many per file (``.npz``, Polygraphy JSON). Folder handling, naming rules and the
manifest live in :mod:`parity.core.dumps`, so every format gets them for free.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Iterable, Iterator

from parity.contract.records import Activation


class DumpFormat:
    """Base class for a format plugin.

    ``extensions`` (lower case, with the dot) route files to the format when no format is
    named; ``multi`` says whether one file holds several activations. ``read`` yields
    activations lazily; a single-activation format names its record after the file stem,
    and :mod:`parity.core.dumps` may rename it (manifest, run tags).
    Errors are :class:`parity.ParityError` naming the file and what is wrong.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    extensions: ClassVar[tuple[str, ...]] = ()
    multi: ClassVar[bool] = False
    writable: ClassVar[bool] = True

    def can_read(self, path: Path) -> bool:
        """Whether this format claims ``path``; the default looks at the extension only."""
        name = path.name.lower()
        return any(name.endswith(ext) for ext in self.extensions)

    def read(self, path: Path) -> Iterator[Activation]:
        raise NotImplementedError

    def write_one(self, record: Activation, path: Path) -> None:
        """Write one activation to ``path`` (single-activation formats)."""
        raise NotImplementedError

    def write_many(self, records: Iterable[Activation], path: Path) -> list[Activation]:
        """Write activations to one file at ``path`` (multi formats); return what was written (arrays may be dropped)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<format {self.name}>"

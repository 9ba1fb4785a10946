"""The unit of data that flows from sources and dump readers into the engine."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Activation:
    """One captured tensor: a layer's output, as a source or a dump file produced it.

    ``order`` is the execution order where the producer knows it; ``op_type`` is the
    framework's own name for the operation (``Conv2d``, ``Conv``, ``CaskConvolution``);
    ``meta`` carries anything else a matcher may use (module path, ONNX node, provenance).
    """

    name: str
    array: np.ndarray
    output_index: int = 0
    order: int | None = None
    op_type: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Name used for exact pairing: the layer name, plus ``:N`` for outputs after the first."""
        return self.name if self.output_index == 0 else f"{self.name}:{self.output_index}"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.array.shape)

    @property
    def dtype(self) -> str:
        return str(self.array.dtype)

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


@dataclass
class Pair:
    """What a matcher hands the engine: one side may be missing (unmatched layer)."""

    ref: Activation | None
    target: Activation | None
    how: str = "exact"
    confidence: float = 1.0
    note: str = ""


@dataclass
class LocalResult:
    """One layer run alone by a source: the reference output and the target-alone output.

    ``key`` is the key of the target record this layer's output appears under in ``run()``,
    so local results join the compare rows by ``target_name``.
    """

    key: str
    ref: np.ndarray
    target: np.ndarray
    op_type: str | None = None
    meta: dict[str, Any] | None = None

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

    ``array`` is a numpy array, or a device tensor (a torch tensor, duck-typed: this module never
    imports torch) when the run asked for device records (``RunConfig.device_records``): the
    core then scores the pair where the tensors are and copies only scalars to the host.
    ``shape``, ``dtype`` and ``nbytes`` read either; whoever needs host *values* calls
    :meth:`host`. ``dtype`` is the numpy name of what :meth:`host` returns (a bfloat16 tensor
    reads ``float32``, as a host copy would; ``meta["dtype"]`` keeps the truth).
    """

    name: str
    array: Any
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
    def on_device(self) -> bool:
        """Whether ``array`` is a tensor (on a GPU, or a torch CPU tensor), not a numpy array."""
        return is_tensor(self.array)

    @property
    def dtype(self) -> str:
        if is_tensor(self.array):
            return tensor_dtype_name(self.array)
        return str(self.array.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes the record holds where it is (a device tensor's own bytes)."""
        a = self.array
        if is_tensor(a):
            return int(a.numel()) * int(a.element_size())
        return int(a.nbytes)

    def host(self) -> np.ndarray:
        """The values as a numpy array: ``array`` itself when it is one (not a copy), else a host copy
        of the tensor (dtypes numpy lacks, bfloat16 and float8, as float32)."""
        return to_host(self.array)


#: torch dtypes a host copy keeps as they are; any other floating type becomes float32
_NUMPY_NAMES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool",
                          "complex64", "complex128"})


def is_tensor(a: Any) -> bool:
    """A torch tensor (duck-typed: anything with ``detach`` and ``element_size`` that is no numpy array)."""
    return not isinstance(a, np.ndarray) and hasattr(a, "detach") and hasattr(a, "element_size")


def tensor_dtype_name(t: Any) -> str:
    """The numpy dtype name of ``t``'s host copy (``float32`` for bfloat16 and float8)."""
    name = str(t.dtype).replace("torch.", "")
    return name if name in _NUMPY_NAMES else "float32"


def to_host(a: Any) -> np.ndarray:
    """``a`` as a numpy array: as is when it is one, else a host copy of the tensor (see :meth:`Activation.host`)."""
    if not is_tensor(a):
        return a if isinstance(a, np.ndarray) else np.asarray(a)
    t = a.detach()
    fresh = t.device.type != "cpu"
    if tensor_dtype_name(t) != str(t.dtype).replace("torch.", ""):
        t, fresh = t.float(), True
    t = t.cpu()
    # a copy, never a view of the tensor: a later in-place op on it must not change the host values
    return (t if fresh else t.clone()).numpy()


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

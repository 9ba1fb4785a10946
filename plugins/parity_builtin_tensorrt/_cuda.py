"""Device memory for the TensorRT source, through torch (no pycuda or cuda-python needed).

TensorRT hands a debug tensor to ``IDebugListener.process_debug_tensor`` as a raw device
address plus dtype and shape (the Python binding passes the address as an ``int``, the
docs say ``capsule``: both are accepted). The address is only valid during the callback,
so the tensor is copied to host there: it is wrapped through the CUDA Array Interface
(``torch.as_tensor`` reads ``__cuda_array_interface__``) and copied on TensorRT's stream.
Everything here works on plain torch CUDA and is tested on a GPU without TensorRT.
"""
from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

#: tensorrt.DataType member name -> (CUDA array interface typestr, torch dtype name to view as)
TRT_DTYPES: dict[str, tuple[str, str | None]] = {
    "FLOAT": ("<f4", None),
    "HALF": ("<f2", None),
    "BF16": ("<u2", "bfloat16"),
    "INT8": ("|i1", None),
    "INT32": ("<i4", None),
    "INT64": ("<i8", None),
    "BOOL": ("|b1", None),
    "UINT8": ("|u1", None),
    "FP8": ("|u1", "float8_e4m3fn"),
}
#: tensorrt.DataType member name -> torch dtype name for engine I/O buffers
TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
                "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "float8_e4m3fn"}


def dtype_name(trt_dtype: Any) -> str:
    """``tensorrt.DataType.HALF`` (or the string ``"HALF"``) -> ``"HALF"``."""
    name = getattr(trt_dtype, "name", None) or str(trt_dtype)
    return name.rsplit(".", 1)[-1].upper()


def pointer_of(addr: Any) -> int:
    """A device address as an int, from an int or a PyCapsule (as the TensorRT docs describe it)."""
    if isinstance(addr, int):
        return addr
    if type(addr).__name__ == "PyCapsule":
        get_name = ctypes.pythonapi.PyCapsule_GetName
        get_name.restype = ctypes.c_char_p
        get_name.argtypes = [ctypes.py_object]
        get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
        get_ptr.restype = ctypes.c_void_p
        get_ptr.argtypes = [ctypes.py_object, ctypes.c_char_p]
        return int(get_ptr(addr, get_name(addr)) or 0)
    return int(addr)


class _DeviceView:
    """A borrowed device buffer described through the CUDA Array Interface (version 3)."""

    def __init__(self, ptr: int, shape: tuple[int, ...], typestr: str) -> None:
        self.__cuda_array_interface__ = {"shape": tuple(int(d) for d in shape), "typestr": typestr,
                                         # torch refuses read-only views; parity only reads it
                                         "data": (int(ptr), False), "version": 3, "strides": None,
                                         "stream": None}


def cuda_status() -> tuple[bool, str]:
    """(usable, why not) for torch CUDA on this machine."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed (pip install torch with CUDA support)"
    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} sees no CUDA device" + (
            " (CPU-only build)" if torch.version.cuda is None else "")
    return True, f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"


def device_to_host(addr: Any, shape: tuple[int, ...], trt_dtype: Any, stream: int) -> np.ndarray:
    """Copy a device tensor that TensorRT owns to a new host array, ordered after ``stream``'s work.

    bf16 and fp8 come back as float32 (numpy has neither); everything else keeps its dtype.
    """
    import torch

    name = dtype_name(trt_dtype)
    if name not in TRT_DTYPES:
        raise TypeError(f"debug tensor dtype {name} is not supported (packed int4/fp4 or unknown)")
    typestr, view_as = TRT_DTYPES[name]
    shape = tuple(int(d) for d in shape)
    n = int(np.prod(shape)) if shape else 1
    if n == 0:
        return np.zeros(shape, dtype=np.float32 if view_as else np.dtype(typestr))
    ptr = pointer_of(addr)
    ext = torch.cuda.ExternalStream(int(stream)) if stream else torch.cuda.current_stream()
    with torch.cuda.stream(ext):
        dev = torch.as_tensor(_DeviceView(ptr, shape, typestr), device="cuda")
        if view_as is not None:
            dev = dev.view(getattr(torch, view_as)).float()
        host = dev.to("cpu", copy=True)
    ext.synchronize()
    return host.numpy()


def host_to_host_copy(addr: Any, shape: tuple[int, ...], trt_dtype: Any) -> np.ndarray:
    """Copy a host-resident tensor TensorRT hands over (``TensorLocation.HOST``) into a new array."""
    name = dtype_name(trt_dtype)
    typestr, view_as = TRT_DTYPES[name]
    shape = tuple(int(d) for d in shape)
    n = int(np.prod(shape)) if shape else 1
    dt = np.dtype(typestr)
    buf = (ctypes.c_char * (n * dt.itemsize)).from_address(pointer_of(addr))
    arr = np.frombuffer(bytes(buf), dtype=dt).reshape(shape)
    if view_as == "bfloat16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    elif view_as is not None:
        import torch

        arr = torch.from_numpy(arr.copy()).view(getattr(torch, view_as)).float().numpy()
    return arr


def empty_device(shape: tuple[int, ...], trt_dtype: Any) -> Any:
    """A torch CUDA tensor to bind as an engine input/output buffer."""
    import torch

    return torch.empty(tuple(int(d) for d in shape), dtype=getattr(torch, TORCH_DTYPES[dtype_name(trt_dtype)]),
                       device="cuda")


def to_device(array: np.ndarray, trt_dtype: Any) -> Any:
    """A host array as a contiguous torch CUDA tensor of the engine's input dtype."""
    import torch

    want = getattr(torch, TORCH_DTYPES[dtype_name(trt_dtype)])
    t = torch.from_numpy(np.ascontiguousarray(array))
    return t.to(device="cuda", dtype=want).contiguous()


def to_host(t: Any) -> np.ndarray:
    """A torch tensor (any device) as numpy; bf16/fp8 widen to float32."""
    import torch

    t = t.detach()
    if t.dtype in (torch.bfloat16,) or "float8" in str(t.dtype):
        t = t.float()
    return t.cpu().numpy()

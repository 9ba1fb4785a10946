"""model_digest remembered across processes (workdir store), and invalidated by any change to the file.

Issue 12: the fp16/int8 cache key re-hashed and re-parsed the model on every process start.
"""
from __future__ import annotations

import hashlib
import os

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import parity.lib.onnx.util as U


def _model(path, scale: float, external: bool = False) -> None:
    import numpy as np

    w = numpy_helper.from_array(np.full((64, 64), scale, np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    if external:
        onnx.save(m, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0)
    else:
        onnx.save(m, str(path))


def _sha(*files) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture
def parses(monkeypatch):
    """How many times the digest parses a model (the real onnx.load still runs)."""
    n = []
    real = onnx.load

    def counting(*a, **k):
        n.append(1)
        return real(*a, **k)

    monkeypatch.setattr(onnx, "load", counting)
    monkeypatch.setattr(U, "_DIGESTS", {})  # as a fresh process starts
    return n


def test_store_spares_the_rehash_in_a_fresh_process_and_a_change_invalidates(tmp_path, parses):
    f = tmp_path / "m.onnx"
    _model(f, 1.0)
    d1 = U.model_digest(f, tmp_path / "wd")
    assert d1 == _sha(f) and len(parses) == 1
    assert (tmp_path / "wd" / U.DIGEST_STORE).is_file()
    U._DIGESTS.clear()  # a new process: only the store remains
    assert U.model_digest(f, tmp_path / "wd") == d1 and len(parses) == 1
    st = os.stat(f)
    _model(f, 2.0)  # same size, and the mtime put back: the ctime still moves
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(f).st_size == st.st_size
    U._DIGESTS.clear()
    d2 = U.model_digest(f, tmp_path / "wd")
    assert d2 == _sha(f) != d1 and len(parses) == 2


def test_external_data_change_invalidates(tmp_path, parses):
    f = tmp_path / "ext.onnx"
    _model(f, 1.0, external=True)
    data = tmp_path / "ext.onnx.data"
    h = hashlib.sha256(f.read_bytes())
    h.update(b"ext.onnx.data")
    h.update(data.read_bytes())
    d1 = U.model_digest(f, tmp_path)
    assert d1 == h.hexdigest()
    U._DIGESTS.clear()
    assert U.model_digest(f, tmp_path) == d1
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0xFF
    data.write_bytes(bytes(raw))
    U._DIGESTS.clear()
    assert U.model_digest(f, tmp_path) != d1


def test_without_store_nothing_is_written(tmp_path, parses):
    f = tmp_path / "m.onnx"
    _model(f, 1.0)
    U.model_digest(f)
    assert not list(tmp_path.glob("*.json"))

"""The built-in dump formats, file by file: trt-text, npy, npz."""
from __future__ import annotations

import math
import os
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from parity import Activation, ParityError
from parity.core import registry as plugins


@pytest.fixture(autouse=True)
def _formats_only(only_format_plugins):
    """These tests see the formats plugin alone (fixture in conftest.py)."""


def fmt(name: str):
    return plugins.get_dump_format(name)


def read_one(name: str, path: Path) -> Activation:
    recs = list(fmt(name).read(path))
    assert len(recs) == 1
    return recs[0]


class _Payload:
    """Unpickling this creates a directory: proof that a file was (or was not) unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def pickled_array(marker: Path) -> np.ndarray:
    arr = np.empty(1, dtype=object)
    arr[0] = _Payload(marker)
    return arr


def no_temp_leftovers(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


# --------------------------------------------------------------------------- registry


def test_builtin_formats_are_registered_by_the_formats_plugin():
    reg = plugins.registry()["dump-format"]
    assert {"trt-text", "npy", "npz"} <= set(reg)
    for name in ("trt-text", "npy", "npz"):
        assert reg[name].plugin == "formats"
    assert reg["trt-text"].obj.extensions == (".txt",) and not reg["trt-text"].obj.multi
    assert reg["npy"].obj.extensions == (".npy",) and not reg["npy"].obj.multi
    assert reg["npz"].obj.extensions == (".npz",) and reg["npz"].obj.multi


# --------------------------------------------------------------------------- trt-text


def test_classic_sample_text_dump(tmp_path):
    values = [0.5, -1.25, 3.0, 0.0, 1e-05, -2.5e3, 7.0, 0.125, -0.0625, 42.0]
    p = tmp_path / "prob.txt"
    p.write_text("[1, 10, 1, 1]\n" + "\n".join(repr(v) for v in values) + "\n")
    rec = read_one("trt-text", p)
    assert rec.name == "prob"
    assert rec.shape == (1, 10, 1, 1)
    assert rec.dtype == "float32"
    np.testing.assert_array_equal(rec.array.ravel(), np.array(values, dtype=np.float32))


@pytest.mark.parametrize("line,shape", [
    ("[1, 10, 1, 1]", (1, 10, 1, 1)),
    ("[1,10,1,1]", (1, 10, 1, 1)),
    ("[ 1 10  1  1]", (1, 10, 1, 1)),
    ("(1, 10)", (1, 10)),
    ("(10,)", (10,)),
    ("[10]", (10,)),
    ("1x10", (1, 10)),
    ("2 x 5", (2, 5)),
    ("[]", ()),
])
def test_shape_line_forms(tmp_path, line, shape):
    n = math.prod(shape)
    p = tmp_path / "t.txt"
    p.write_text(line + "\n" + " ".join(str(i) for i in range(n)) + "\n")
    rec = read_one("trt-text", p)
    assert rec.shape == shape
    np.testing.assert_array_equal(rec.array.ravel(), np.arange(n, dtype=np.float32))


def test_text_separators_specials_crlf_bom_and_no_final_newline(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"\xef\xbb\xbf[2, 4]\r\n1, 2,3  4\r\n\r\n nan\tinf , -inf\r\n-1.5e-3")
    a = read_one("trt-text", p).array
    assert a.shape == (2, 4)
    np.testing.assert_array_equal(a[0], [1, 2, 3, 4])
    assert math.isnan(a[1, 0]) and a[1, 1] == np.inf and a[1, 2] == -np.inf
    assert a[1, 3] == np.float32(-1.5e-3)


def test_text_zero_size_shape_with_no_values(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("[0, 3]\n")
    assert read_one("trt-text", p).shape == (0, 3)


def _parse_independently(path: Path) -> tuple[list[int], list[float], list[str]]:
    lines = path.read_text().splitlines()
    shape = [int(t) for t in re.findall(r"\d+", lines[0])]
    vals = [float(t) for line in lines[1:] for t in line.split()]
    return shape, vals, lines


def test_text_writer_layout_and_full_float32_precision(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.standard_normal((2, 3, 5)).astype(np.float32) * np.float32(1e-3)
    arr.flat[3] = np.nan
    arr.flat[4] = np.inf
    arr.flat[5] = -np.inf
    arr.flat[6] = np.float32(1) / np.float32(3)  # needs all 9 significant digits
    p = tmp_path / "w.txt"
    fmt("trt-text").write_one(Activation("w", arr), p)
    shape, vals, lines = _parse_independently(p)
    assert lines[0] == "[2, 3, 5]"
    assert shape == [2, 3, 5]
    assert all(1 <= len(line.split()) <= 8 for line in lines[1:])
    assert len(lines) == 1 + math.ceil(arr.size / 8)
    back = np.array(vals, dtype=np.float32)
    # bit-exact float32 round trip (nan compared as nan)
    np.testing.assert_array_equal(back, arr.ravel())
    assert no_temp_leftovers(tmp_path)


def test_text_writer_scalar_and_float16(tmp_path):
    p = tmp_path / "s.txt"
    fmt("trt-text").write_one(Activation("s", np.array(2.5, dtype=np.float16)), p)
    assert p.read_text() == "[]\n2.5\n"
    assert read_one("trt-text", p).array.shape == ()


def test_text_writer_refuses_complex(tmp_path):
    with pytest.raises(ParityError, match="complex.*cannot be written as trt-text"):
        fmt("trt-text").write_one(Activation("c", np.ones(2, dtype=np.complex64)), tmp_path / "c.txt")
    assert not (tmp_path / "c.txt").exists()


@pytest.mark.parametrize("content,pattern", [
    (b"", r"file is empty"),
    (b"  \n\n", r"file is empty"),
    (b"hello world\n1 2\n", r"line 1 is not a shape line: 'hello world'"),
    (b"0.5 0.25\n", r"line 1 is not a shape line: '0.5 0.25'"),
    (b"[1, -1]\n1\n", r"line 1 is not a shape line"),
    (b"[1, 10\n1\n", r"line 1 is not a shape line"),
    (b"[2, 2]\n1 2\n3 abc\n", r"line 3 holds 'abc', which is not a number"),
    (b"[3]\n1,2,x7\n", r"line 2 holds 'x7', which is not a number"),
    (b"[1, 10, 1, 1]\n1 2 3 4 5 6 7\n", r"holds 7 values but shape \[1, 10, 1, 1\] needs 10 \(file truncated\?\)"),
    (b"[2]\n1 2 3\n", r"holds 3 values but shape \[2\] needs 2\. "),
    (b"[4]\n1 2 3 1.5e", r"line 2 holds '1.5e', which is not a number"),
    (b"[4]\n", r"holds 0 values but shape \[4\] needs 4"),
])
def test_text_errors_name_the_file(tmp_path, content, pattern):
    p = tmp_path / "bad_layer.txt"
    p.write_bytes(content)
    with pytest.raises(ParityError, match=re.escape(str(p)) + ".*" + pattern):
        read_one("trt-text", p)


def test_text_parsing_is_fast_enough(tmp_path):
    """A vectorised parse: 2M values (~24 MB of text) must not take more than a few seconds."""
    arr = np.random.default_rng(1).standard_normal((2, 1_000_000)).astype(np.float32)
    p = tmp_path / "big.txt"
    fmt("trt-text").write_one(Activation("big", arr), p)
    t0 = time.perf_counter()
    back = read_one("trt-text", p).array
    elapsed = time.perf_counter() - t0
    np.testing.assert_array_equal(back, arr)
    assert elapsed < 10, f"parsing 2M values took {elapsed:.1f}s"


# --------------------------------------------------------------------------- npy


@pytest.mark.parametrize("arr", [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    np.linspace(-1, 1, 7).astype(np.float16),
    np.array(3.25),
    np.arange(2 ** 8, dtype=np.int32).reshape((2,) * 8),
    np.array([True, False]),
    np.zeros((0, 5), dtype=np.float32),
    np.asfortranarray(np.arange(6.0).reshape(2, 3)),
])
def test_npy_round_trip_is_memory_mapped(tmp_path, arr):
    p = tmp_path / "x.npy"
    fmt("npy").write_one(Activation("x", arr), p)
    rec = read_one("npy", p)
    assert rec.name == "x"
    assert isinstance(rec.array, np.memmap)
    assert rec.array.dtype == arr.dtype and rec.shape == arr.shape
    np.testing.assert_array_equal(rec.array, arr)
    assert no_temp_leftovers(tmp_path)


def test_npy_reads_files_written_by_numpy(tmp_path):
    arr = np.random.default_rng(2).standard_normal((3, 4))
    np.save(tmp_path / "conv1.npy", arr)
    rec = read_one("npy", tmp_path / "conv1.npy")
    assert rec.name == "conv1"
    np.testing.assert_array_equal(rec.array, arr)


def test_npy_pickle_is_refused_without_unpickling(tmp_path):
    live = tmp_path / "proof_payload_is_live"
    np.save(tmp_path / "live.npy", pickled_array(live), allow_pickle=True)
    np.load(tmp_path / "live.npy", allow_pickle=True)  # the payload really runs when unpickled
    assert live.exists()

    marker = tmp_path / "unpickled"
    p = tmp_path / "evil.npy"
    np.save(p, pickled_array(marker), allow_pickle=True)
    with pytest.raises(ParityError, match=re.escape(str(p)) + ".*Python object array.*never unpickles"):
        read_one("npy", p)
    assert not marker.exists()


def test_npy_refuses_object_array_on_write(tmp_path):
    p = tmp_path / "o.npy"
    with pytest.raises(ParityError, match="layer 'o'.*Python object array"):
        fmt("npy").write_one(Activation("o", np.array([{}, 1], dtype=object)), p)
    assert not p.exists() and no_temp_leftovers(tmp_path)


@pytest.mark.parametrize("make,pattern", [
    (lambda p: p.write_bytes(b"not a numpy file at all"), r"not a valid \.npy array"),
    (lambda p: p.write_bytes(b""), r"not a valid \.npy array"),
    (lambda p: (np.save(p, np.arange(100, dtype=np.float64)),
                p.write_bytes(p.read_bytes()[:-16])), r"truncated: header says shape \[100\] of float64 \(800 bytes\) but only 784"),
    (lambda p: np.save(p, np.array(["a", "b"])), r"holds dtype <U1, not numbers"),
])
def test_npy_errors_name_the_file(tmp_path, make, pattern):
    p = tmp_path / "layer.npy"
    make(p)
    with pytest.raises(ParityError, match=re.escape(str(p)) + ".*" + pattern):
        read_one("npy", p)


# --------------------------------------------------------------------------- npz


def test_npz_written_by_numpy_keeps_keys_and_archive_order(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {"layer10": rng.standard_normal(3), "layer2": rng.standard_normal((2, 2)).astype(np.float16),
              "a/b": np.array(1.5)}
    p = tmp_path / "run.npz"
    np.savez(p, **arrays)
    recs = list(fmt("npz").read(p))
    assert [r.name for r in recs] == list(arrays)
    for r in recs:
        np.testing.assert_array_equal(r.array, arrays[r.name])
        assert r.array.dtype == arrays[r.name].dtype


def test_npz_is_read_one_array_at_a_time(tmp_path):
    """The first record comes out before a damaged later member is even looked at."""
    p = tmp_path / "run.npz"
    np.savez(p, first=np.arange(4.0), second=np.arange(1000.0))
    raw = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as zf:
        info = zf.getinfo("second.npy")
    data_start = info.header_offset + zipfile.sizeFileHeader + len(info.filename) + len(info.extra)
    raw[data_start + 200] ^= 0xFF  # corrupt the second member's data: its CRC check fails
    p.write_bytes(bytes(raw))
    it = fmt("npz").read(p)
    first = next(it)
    assert first.name == "first"
    np.testing.assert_array_equal(first.array, np.arange(4.0))
    with pytest.raises(ParityError, match=re.escape(str(p)) + r" \[second\.npy\].*damaged"):
        next(it)


def test_npz_pickle_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    p = tmp_path / "evil.npz"
    np.savez(p, fine=np.ones(2), evil=pickled_array(marker))
    with pytest.raises(ParityError, match=re.escape(str(p)) + r" \[evil\.npy\].*Python object array"):
        list(fmt("npz").read(p))
    assert not marker.exists()


def test_npz_not_a_zip(tmp_path):
    p = tmp_path / "x.npz"
    p.write_bytes(b"PK nothing here")
    with pytest.raises(ParityError, match=re.escape(str(p)) + r".*not a valid \.npz archive"):
        list(fmt("npz").read(p))


def test_npz_writer_streams_and_embeds_manifest(tmp_path):
    recs = [Activation("/stem/conv1/Conv_output_0", np.arange(6, dtype=np.float32).reshape(2, 3), order=0,
                       op_type="Conv", meta={"module": "stem.conv1"}),
            Activation("split", np.ones((1,), dtype=np.float16), output_index=1, order=1)]
    p = tmp_path / "run.npz"
    written = fmt("npz").write_many(iter(recs), p)
    # the returned records describe what was written without holding the arrays
    assert [(w.name, w.shape, w.dtype, w.output_index) for w in written] == \
        [(r.name, r.shape, r.dtype, r.output_index) for r in recs]
    assert all(w.array.strides == (0,) * w.array.ndim for w in written)
    # plain numpy can open it; keys are safe names, the manifest is a raw member
    with np.load(p, allow_pickle=False) as z:
        assert set(z.files) == {"stem_conv1_Conv_output_0", "split_1", "parity-manifest.json"}
        np.testing.assert_array_equal(z["stem_conv1_Conv_output_0"], recs[0].array)
    back = list(fmt("npz").read(p))
    for a, b in zip(recs, back, strict=True):
        assert (a.name, a.output_index, a.order, a.op_type, a.meta, a.dtype) == \
            (b.name, b.output_index, b.order, b.op_type, b.meta, b.dtype)
        np.testing.assert_array_equal(a.array, b.array)
    assert no_temp_leftovers(tmp_path)


def test_npz_manifest_listing_a_missing_member(tmp_path):
    p = tmp_path / "run.npz"
    fmt("npz").write_many([Activation("a", np.ones(2)), Activation("b", np.ones(2))], p)
    with zipfile.ZipFile(p) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    with zipfile.ZipFile(p, "w") as zf:
        for n, data in members.items():
            if n != "b.npy":
                zf.writestr(n, data)
    with pytest.raises(ParityError, match=re.escape(str(p)) + r".*lists member 'b\.npy', which the archive lacks"):
        list(fmt("npz").read(p))


def test_npz_write_failure_leaves_nothing(tmp_path):
    def records():
        yield Activation("a", np.ones(3))
        yield Activation("b", np.ones(3))
        raise RuntimeError("source crashed")

    p = tmp_path / "run.npz"
    with pytest.raises(RuntimeError, match="source crashed"):
        fmt("npz").write_many(records(), p)
    assert list(tmp_path.iterdir()) == []


"""Fuzzing the input loader (--inputs: .npy, .npz, Polygraphy --save-inputs JSON) and the CLI's one-line errors."""
import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from fuzzing import arrays, byte_mutations, check, json_mutations, npy_bytes, npy_header_surgery, scratch, touch, write

from parity.contract.source import InputSpec
from parity.contract.errors import ParityError
from parity.core.inputs import load_feeds, peek_shapes

ROOT = Path(__file__).resolve().parents[2]
SPECS = [InputSpec("x", (None, 3), "float32")]


def _load(path):
    for _label, feed in load_feeds(path, SPECS):
        for a in feed.values():
            touch(a)
    shapes = peek_shapes(path)  # never raises: load_feeds reports the problem
    assert isinstance(shapes, dict)


@given(st.data())
def test_input_files_mutated(data):
    arr = data.draw(arrays([np.float32, np.float64, np.int32, np.float16], max_dims=3))
    kind = data.draw(st.sampled_from(["npy", "npz", "json"]))
    if kind == "npy":
        raw = npy_bytes(arr)
        raw = data.draw(byte_mutations(raw) | npy_header_surgery(arr) | st.just(raw))
    elif kind == "npz":
        import io
        buf = io.BytesIO()
        np.savez(buf, x=arr)
        raw = data.draw(byte_mutations(buf.getvalue()))
    else:
        doc = [{"x": {"array": base64.b64encode(npy_bytes(arr)).decode(), "polygraphy_class": "ndarray"}}]
        raw = json.dumps(data.draw(json_mutations(doc) | st.just(doc))).encode()
        raw = data.draw(byte_mutations(raw) | st.just(raw))
    with scratch() as d:
        f = write(d / f"in.{kind}", raw)
        check(lambda: _load(f), d, names_any=(str(f),))


def parity(*args, cwd):
    return subprocess.run([sys.executable, "-m", "parity", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def _bad_files(d: Path) -> dict[str, Path]:
    """One damaged file per reader, each a case the fuzzer produced once."""
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    npy = npy_bytes(a)
    out = {
        "npy-truncated": write(d / "t.npy", npy[:-7]),
        "npy-huge-shape": write(d / "h.npy", npy[:8] + npy[8:].replace(b"(3, 4)", b"(9999999, 99999)")),
        "text-bad-value": write(d / "v.txt", b"[2, 2]\n1 2\nthree 4\n"),
        "npz-lying-member": write(d / "m.npz", _zip({"a.npy": npy.replace(b"(3, 4)", b"(3, 4000000000)")})),
        "polygraphy-truncated": write(d / "p.json", b'{"lst": [["trt-runner", [{"outputs": {"t": {"arr'),
        "manifest-incomplete": _incomplete_dump(d / "dump", a),
    }
    return out


def _zip(members):
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, v in members.items():
            zf.writestr(k, v)
    return buf.getvalue()


def _incomplete_dump(folder: Path, a: np.ndarray) -> Path:
    from parity.contract.records import Activation
    from parity.core.dumps import write_dump

    write_dump([Activation("a", a), Activation("b", a)], folder)
    m = folder / "parity-manifest.json"
    m.write_text(m.read_text().replace('"complete": true', '"complete": false'))
    return folder


def test_cli_analyze_refuses_each_damaged_file_with_one_line(tmp_path):
    cases = _bad_files(tmp_path)
    before = {p.name for p in tmp_path.rglob("*")}
    for name, path in cases.items():
        r = parity("analyze", path, path, cwd=tmp_path)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 1, (name, r.returncode, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("parity: error: "), (name, r.stderr)
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, name
        assert path.name in lines[0], (name, lines[0])
    assert {p.name for p in tmp_path.rglob("*")} == before  # nothing written, not even a cache


@pytest.mark.parametrize("kind", ["npy", "json"])
def test_cli_compare_refuses_a_damaged_input_file_with_one_line(kind, tmp_path):
    raw = npy_bytes(np.zeros((2, 1, 28, 28), np.float32))
    f = write(tmp_path / f"in.{kind}", raw[:-9] if kind == "npy" else b'[{"x": {"array": "AAAA", "polygr')
    r = parity("compare", ROOT / "tests" / "models" / "zoo.py:lenet", "--target", "torch-fp16", "--inputs", f,
               "--workdir", tmp_path / "cache", cwd=tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f.name in lines[0] and "internal error" not in lines[0], lines[0]


def _stored_npz(flag_bits: int = 0, method: int = 0) -> bytes:
    """A one-member .npz whose member claims an encryption flag or a compression method Python lacks."""
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("x.npy", npy_bytes(np.zeros((2, 3), np.float32)))
    raw = bytearray(buf.getvalue())
    for sig, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = raw.index(sig)
        raw[at + flag_at:at + flag_at + 2] = flag_bits.to_bytes(2, "little")
        raw[at + method_at:at + method_at + 2] = method.to_bytes(2, "little")
    return bytes(raw)


@pytest.mark.parametrize("flag_bits,method,what", [(1, 0, "encrypted"), (0, 99, "compression")])
def test_npz_with_encrypted_or_unknown_compression_member_is_a_one_line_error(tmp_path, flag_bits, method, what):
    # found by the fuzzer: zipfile raises RuntimeError / NotImplementedError for these, which escaped as tracebacks
    f = write(tmp_path / "in.npz", _stored_npz(flag_bits, method))
    with pytest.raises(ParityError) as e:
        _load(f)
    assert str(f) in str(e.value) and "\n" not in str(e.value)
    assert what in str(e.value).lower()


@pytest.mark.parametrize("value", ["bad", "array"])
def test_polygraphy_json_with_line_breaks_in_its_keys_is_a_one_line_error(tmp_path, value):
    # found by the fuzzer: names read from the file were quoted raw, so the message spanned lines
    a = np.zeros((2, 3), np.float32)
    enc = {"array": base64.b64encode(npy_bytes(a)).decode(), "polygraphy_class": "ndarray"}
    doc = [{"\n": None if value == "bad" else enc}]  # a bad value under that key, or the input 'x' missing
    f = write(tmp_path / "in.json", json.dumps(doc).encode())
    with pytest.raises(ParityError) as e:
        _load(f)
    assert str(f) in str(e.value) and "\n" not in str(e.value) and "\\n" in str(e.value)

"""Fuzzing the NumPy readers (.npy, .npz), the folder manifest and the text dump through read_dump."""
import io
import json
import zipfile

import numpy as np
from hypothesis import given, strategies as st

from fuzzing import (arrays, byte_mutations, check, file_stems, json_mutations, names, npy_bytes,
                     npy_header_surgery, read_all, scratch, write)

from parity.core.dumps import write_dump
from parity.contract.records import Activation


@given(st.data())
def test_npy_mutated_bytes(data):
    arr = data.draw(arrays())
    raw = npy_bytes(arr, fortran=data.draw(st.booleans()))
    bad = data.draw(st.one_of(byte_mutations(raw), npy_header_surgery(arr)))
    stem = data.draw(file_stems)
    with scratch() as d:
        f = write(d / f"{stem}.npy", bad)
        if check(lambda: read_all(f), d, names_any=(str(f),)) == "ok" and bad == raw:
            assert np.array_equal(read_all(f)[0].array, arr, equal_nan=True)


@given(st.data())
def test_npy_unchanged_reads_back_exactly(data):
    arr = data.draw(arrays())
    with scratch() as d:
        f = write(d / "x.npy", npy_bytes(arr, fortran=data.draw(st.booleans())))
        assert check(lambda: read_all(f), d, names_any=(str(f),)) == "ok"
        got = read_all(f)[0].array
        assert got.dtype == arr.dtype and np.array_equal(got, arr, equal_nan=True)


def _npz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for k, v in members.items():
            zf.writestr(k, v)
    return buf.getvalue()


@given(st.data())
def test_npz_mutated(data):
    arrs = data.draw(st.dictionaries(names, arrays(max_side=4), min_size=1, max_size=3))
    members = {f"{k}.npy": npy_bytes(v) for k, v in arrs.items()}
    how = data.draw(st.sampled_from(["bytes", "member-header", "member-bytes", "manifest", "intact"]))
    with scratch() as d:
        if how in ("manifest", "intact"):
            recs = [Activation(k, v) for k, v in arrs.items()]
            path = write_dump(recs, d / "w", fmt="npz")
            if how == "manifest":
                with zipfile.ZipFile(path) as zf:
                    members = {i.filename: zf.read(i) for i in zf.infolist()}
                doc = json.loads(members["parity-manifest.json"])
                members["parity-manifest.json"] = json.dumps(data.draw(json_mutations(doc))).encode()
                path.write_bytes(_npz(members))
        else:
            if how != "bytes":
                key = data.draw(st.sampled_from(sorted(members)))
                members[key] = data.draw(npy_header_surgery(arrs[key[:-4]]) if how == "member-header"
                                         else byte_mutations(members[key]))
            raw = _npz(members)
            path = write(d / "a.npz", data.draw(byte_mutations(raw)) if how == "bytes" else raw)
        outcome = check(lambda: read_all(path), d, names_any=(str(path),))
        if how == "intact":
            assert outcome == "ok"
            got = {a.name: a.array for a in read_all(path)}
            assert got.keys() == arrs.keys()
            assert all(np.array_equal(got[k], arrs[k], equal_nan=True) for k in arrs)


@given(st.data())
def test_dump_folder_with_mutated_manifest_or_files(data):
    fmt = data.draw(st.sampled_from(["npy", "trt-text"]))
    dts = [np.float32, np.float16, np.int32, np.bool_] if fmt == "trt-text" else None
    arrs = data.draw(st.dictionaries(names, arrays(dts) if dts else arrays(), min_size=1, max_size=4))
    with scratch() as d:
        folder = write_dump([Activation(k, v) for k, v in arrs.items()], d / "dump", fmt=fmt)
        manifest = folder / "parity-manifest.json"
        files = sorted(p for p in folder.iterdir() if p.name != manifest.name)
        how = data.draw(st.sampled_from(["json", "bytes", "file", "delete", "extra", "complete"]))
        if how == "json":
            manifest.write_text(json.dumps(data.draw(json_mutations(json.loads(manifest.read_text())))))
        elif how == "bytes":
            manifest.write_bytes(data.draw(byte_mutations(manifest.read_bytes())))
        elif how == "file":
            f = data.draw(st.sampled_from(files))
            f.write_bytes(data.draw(byte_mutations(f.read_bytes())))
        elif how == "delete":
            data.draw(st.sampled_from(files)).unlink()
        elif how == "extra":
            (folder / "extra.npy").write_bytes(npy_bytes(data.draw(arrays())))
        else:
            doc = json.loads(manifest.read_text())
            doc["complete"] = data.draw(st.sampled_from([False, None, 0, 1, "yes", []]))
            manifest.write_text(json.dumps(doc))
        outcome = check(lambda: read_all(folder), d, names_any=(str(folder),))
        if how == "complete":
            assert outcome == "error"


@given(st.data())
def test_trt_text_mutated(data):
    arr = data.draw(arrays([np.float32], max_dims=4, max_side=6))
    with scratch() as d:
        good = write_dump([Activation("t", arr)], d / "w", fmt="trt-text") / "t.txt"
        raw = good.read_bytes()
        variant = data.draw(st.sampled_from(["as-is", "commas", "crlf", "bom"]))
        if variant == "commas":
            head, _, body = raw.partition(b"\n")
            raw = head + b"\n" + body.replace(b" ", b", ")
        elif variant == "crlf":
            raw = raw.replace(b"\n", b"\r\n")
        elif variant == "bom":
            raw = b"\xef\xbb\xbf" + raw
        bad = data.draw(byte_mutations(raw) | st.just(raw))
        f = write(d / f"{data.draw(file_stems)}.txt", bad)
        outcome = check(lambda: read_all(f), d, names_any=(str(f),))
        if bad == raw:
            assert outcome == "ok"
            assert np.array_equal(read_all(f)[0].array, arr, equal_nan=True)


@given(st.data())
def test_trt_text_made_up_headers_and_values(data):
    shape_line = data.draw(st.sampled_from([
        "[{}]", "({})", "{}", "[{},]", "[ {} ]"])).format(
        data.draw(st.sampled_from([", ", "x", " ", ","])).join(
            str(n) for n in data.draw(st.lists(st.integers(0, 2**64) | st.integers(0, 6), max_size=5))))
    values = data.draw(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr)
                                | st.sampled_from(["nan", "-inf", "inf", "NaN(123)", "infinity", "1e999", "-0",
                                                   "0x1p3", "1_000", "١", "", "+", "--1"]), max_size=40))
    seps = data.draw(st.sampled_from([" ", ",", "\n", "\t", " , "]))
    text = shape_line + "\n" + seps.join(values)
    with scratch() as d:
        f = write(d / "layer.txt", text.encode("utf-8"))
        check(lambda: read_all(f), d, names_any=(str(f),))

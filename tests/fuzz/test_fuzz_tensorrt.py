"""Fuzzing the dumps of other tools: Polygraphy RunResults JSON, trtexec --exportOutput JSON, trtexec debug tensors."""
import base64
import json

import numpy as np
from hypothesis import given, strategies as st

from fuzzing import (arrays, byte_mutations, check, json_mutations, names, npy_bytes, npy_header_surgery,
                     read_all, scratch, write)

NUMERIC = [np.float32, np.float16, np.float64, np.int32, np.int64, np.uint8, np.bool_]


def _encoded(arr_bytes: bytes, lazy: bool) -> dict:
    enc = {"array": base64.b64encode(arr_bytes).decode(), "polygraphy_class": "ndarray"}
    return {"values": enc, "polygraphy_class": "LazyArray"} if lazy else enc


@st.composite
def polygraphy_docs(draw):
    """A RunResults document and the arrays in it: one or two runners, one or two iterations."""
    runners = draw(st.lists(st.sampled_from(["onnxrt-runner-N0-01/01/24", "trt-runner-N0-01/01/24", "x"]),
                            min_size=1, max_size=2, unique=True))
    lst = []
    for r in runners:
        iters = []
        for _ in range(draw(st.integers(1, 2))):
            outs = draw(st.dictionaries(names, arrays(NUMERIC, max_side=4), min_size=1, max_size=3))
            iters.append({"outputs": {k: _encoded(npy_bytes(v), draw(st.booleans())) for k, v in outs.items()},
                          "runtime": 0.1, "runner_name": r, "polygraphy_class": "IterationResult"})
        lst.append([r, iters])
    return {"lst": lst, "polygraphy_class": "RunResults"}


def _read_mutated(data, raw: bytes, how: str, fmt: str) -> None:
    """Read ``raw`` (byte-mutated when ``how`` is "bytes") as a ``fmt`` file: it reads, or fails with
    :func:`fuzzing.check`'s one-line ParityError naming the file; an intact file must read."""
    if how == "bytes":
        raw = data.draw(byte_mutations(raw))
    with scratch() as d:
        f = write(d / "out.json", raw)
        outcome = check(lambda: read_all(f, fmt=fmt), d, names_any=(str(f),))
        if how == "intact":
            assert outcome == "ok"


@given(st.data())
def test_polygraphy_json_mutated(data):
    doc = data.draw(polygraphy_docs())
    how = data.draw(st.sampled_from(["json", "bytes", "payload", "header", "intact"]))
    if how in ("payload", "header"):
        it = doc["lst"][0][1][0]["outputs"]
        key = data.draw(st.sampled_from(sorted(it)))
        enc = it[key]["values"] if "values" in it[key] else it[key]
        raw = base64.b64decode(enc["array"])
        arr = np.load(__import__("io").BytesIO(raw), allow_pickle=False)
        new = data.draw(byte_mutations(raw) if how == "payload" else npy_header_surgery(arr))
        enc["array"] = base64.b64encode(new).decode()
    if how == "json":
        doc = data.draw(json_mutations(doc))
    _read_mutated(data, json.dumps(doc).encode(), how, "polygraphy-json")


def _trtexec_text(entries: list[dict]) -> str:
    """trtexec's own printing: values with 6 significant digits, nan/inf bare (not JSON)."""
    parts = []
    for e in entries:
        vals = ", ".join(("nan" if np.isnan(v) else ("inf" if v > 0 else "-inf")) if not np.isfinite(v)
                         else f"{v:.6g}" for v in np.asarray(e["values"], dtype=np.float64).ravel())
        parts.append(f'{{ "name" : {json.dumps(e["name"])}\n, "dimensions" : "{e["dims"]}"\n, "values" : [ {vals} ]\n}}')
    return "[\n" + ",\n".join(parts) + "\n]\n"


@given(st.data())
def test_trtexec_json_mutated(data):
    outs = data.draw(st.dictionaries(names, arrays([np.float32], max_side=4), min_size=1, max_size=3))
    entries = [{"name": k, "dims": "x".join(map(str, v.shape)), "values": v} for k, v in outs.items()]
    text = _trtexec_text(entries)
    how = data.draw(st.sampled_from(["bytes", "json", "dims", "intact"]))
    if how == "dims":
        e = data.draw(st.sampled_from(entries))
        e["dims"] = data.draw(st.sampled_from(["", "x", "1x", "-1", "99999999999999x99999999999", "a", "1.5",
                                                "0", "1x0", "٣"]))
        text = _trtexec_text(entries)
    elif how == "json":
        doc = [{"name": e["name"], "dimensions": e["dims"], "values": np.asarray(e["values"]).ravel().tolist()}
               for e in entries]
        text = json.dumps(data.draw(json_mutations(doc)))
    _read_mutated(data, text.encode(), how, "trtexec-json")


@given(st.data())
def test_trtexec_debug_summary_mutated(data):
    outs = data.draw(st.lists(arrays([np.float32, np.float16, np.int32], max_side=4), min_size=1, max_size=3))
    tensors, files = [], {}
    for i, arr in enumerate(outs):
        raw_kind = data.draw(st.booleans())
        fname = f"t{i}.raw" if raw_kind else f"t{i}.npy"
        files[fname] = arr.tobytes() if raw_kind else npy_bytes(arr)
        ttype = {"float32": "FLOAT", "float16": "HALF", "int32": "INT32"}[str(arr.dtype)]
        tensors.append({"name": f"layer {i}", "shape": list(arr.shape), "type": ttype,
                        "files": {"raw" if raw_kind else "numpy": fname}})
    doc = {"metadata": {"title": "Tensor Summary Report"}, "tensors": tensors}
    how = data.draw(st.sampled_from(["json", "bytes", "file", "missing", "intact"]))
    if how == "json":
        doc = data.draw(json_mutations(doc))
    elif how == "file":
        k = data.draw(st.sampled_from(sorted(files)))
        files[k] = data.draw(byte_mutations(files[k]))
    text = json.dumps(doc).encode()
    if how == "bytes":
        text = data.draw(byte_mutations(text))
    with scratch() as d:
        f = write(d / "dbg" / "tensor_summary.json", text)
        for k, v in files.items():
            write(d / "dbg" / k, v)
        if how == "missing":
            (d / "dbg" / data.draw(st.sampled_from(sorted(files)))).unlink()
        outcome = check(lambda: read_all(f, fmt="trtexec-debug"), d, names_any=(str(f),))
        if how == "intact":
            assert outcome == "ok"

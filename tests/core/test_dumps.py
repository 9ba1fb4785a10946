"""Dump folders and archives: layout, names, order, tags, manifest, atomic writing."""
from __future__ import annotations

import gc
import json
import re
import weakref
from pathlib import Path

import numpy as np
import pytest

from parity import Activation, ParityError, hookimpl
from parity.core import registry as plugins
from parity.core.dumps import (MANIFEST_NAME, detect_tags, natural_key, read_dump, safe_filename, split_tag,
                          write_dump)
from parity.contract.dumpformat import DumpFormat

FORMATS = ["npy", "npz", "trt-text"]


@pytest.fixture(autouse=True)
def _formats_only(only_format_plugins):
    """These tests see the formats plugin alone (fixture in conftest.py)."""


def sample_records() -> list[Activation]:
    rng = np.random.default_rng(0)
    return [
        Activation("/layer1/layer1.0/conv1/Conv_output_0", rng.standard_normal((1, 4, 3, 3)).astype(np.float32),
                   order=0, op_type="Conv", meta={"module": "layer1.0.conv1", "params": [3, 3], "flag": True}),
        Activation("A + B", rng.standard_normal((2, 5)).astype(np.float16), order=1, op_type="Add"),
        Activation("A + B", rng.standard_normal((3,)).astype(np.float16), output_index=1, order=2, op_type="Add"),
        Activation("scalar", np.array(-0.75, dtype=np.float32), order=3),
        Activation("rank8", np.arange(2 ** 8, dtype=np.int32).reshape((2,) * 8), order=4, op_type=None,
                   meta={"note": None, "x": 1.5}),
        Activation("mask", np.array([[True, False, True]]), order=5),
        Activation("layer10", np.full((2, 2), np.nan, dtype=np.float32), order=6),
    ]


def assert_same(a: Activation, b: Activation) -> None:
    assert (b.name, b.output_index, b.order, b.op_type, b.meta) == (a.name, a.output_index, a.order, a.op_type, a.meta)
    assert b.shape == a.shape and b.dtype == a.dtype
    np.testing.assert_array_equal(np.asarray(b.array), a.array)


def tmp_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def write_text_dump(path: Path, shape: tuple[int, ...], values) -> None:
    path.write_text("[" + ", ".join(map(str, shape)) + "]\n" + "\n".join(repr(float(v)) for v in values) + "\n")


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_preserves_everything(tmp_path, fmt):
    recs = sample_records()
    out = write_dump(iter(recs), tmp_path / "dump", fmt=fmt)
    assert out == (tmp_path / "dump.npz" if fmt == "npz" else tmp_path / "dump")
    back = list(read_dump(out))
    assert len(back) == len(recs)
    for a, b in zip(recs, back):
        assert_same(a, b)
    assert tmp_leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", ["npy", "trt-text"])
def test_folder_layout_has_safe_unique_files_and_manifest(tmp_path, fmt):
    names = ["a/b", "a b", "A/B", "?", "..", "CON", "x" * 300, "ok.name-1"]
    recs = [Activation(n, np.full(1, i)) for i, n in enumerate(names)]
    out = write_dump(recs, tmp_path / "d", fmt=fmt)
    files = sorted(p.name for p in out.iterdir() if p.name != MANIFEST_NAME)
    assert len(files) == len(names)
    assert len({f.lower() for f in files}) == len(files)  # unique even on case-insensitive filesystems
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", f) and len(f) < 120 for f in files)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["schema_version"] == 1 and manifest["dump_format"] == fmt
    assert [e["name"] for e in manifest["entries"]] == [r.name for r in recs]
    assert sorted(e["file"] for e in manifest["entries"]) == files
    entry = manifest["entries"][0]
    assert set(entry) >= {"file", "name", "output_index", "order", "op_type", "shape", "dtype", "meta"}
    assert [(r.name, float(r.array[0])) for r in read_dump(out)] == [(n, float(i)) for i, n in enumerate(names)]


def test_record_without_name_is_refused(tmp_path):
    with pytest.raises(ParityError, match="record 0 has no layer name"):
        write_dump([Activation("", np.ones(1))], tmp_path / "d")
    assert list(tmp_path.iterdir()) == []


def test_text_dump_restores_dtype_from_manifest_at_float32_precision(tmp_path):
    a = np.array([1 / 3, 1e-40, 2.0 ** 30 + 1], dtype=np.float64)
    out = write_dump([Activation("x", a)], tmp_path / "d", fmt="trt-text")
    (b,) = read_dump(out)
    assert b.dtype == "float64"
    np.testing.assert_array_equal(b.array, a.astype(np.float32).astype(np.float64))


def test_meta_that_json_cannot_hold_is_dropped_and_noted(tmp_path):
    rec = Activation("x", np.ones(2), meta={"keep": {"k": [1, "a"]}, "np": np.int64(7), "obj": object()})
    out = write_dump([rec], tmp_path / "d")
    (b,) = read_dump(out)
    assert b.meta == {"keep": {"k": [1, "a"]}, "np": 7}
    assert json.loads((out / MANIFEST_NAME).read_text())["entries"][0]["meta_dropped"] == ["obj"]


def test_multi_format_gets_its_extension(tmp_path):
    assert write_dump([Activation("a", np.ones(1))], tmp_path / "run", fmt="npz") == tmp_path / "run.npz"
    assert write_dump([Activation("a", np.ones(1))], tmp_path / "r.NPZ", fmt="npz") == tmp_path / "r.NPZ"


# --------------------------------------------------------------------------- reading folders without manifest


def test_recipe_folder_of_text_dumps_in_natural_order(tmp_path):
    rng = np.random.default_rng(1)
    expected = {}
    for name in ["layer10", "layer2", "layer1", "Layer3"]:
        v = rng.standard_normal(10).astype(np.float32)
        write_text_dump(tmp_path / f"{name}.txt", (1, 10, 1, 1), v)
        expected[name] = v
    (tmp_path / ".DS_Store").write_bytes(b"\0junk")  # hidden files are ignored
    (tmp_path / "notes").mkdir()  # subfolders are not read
    (tmp_path / "notes" / "x.txt").write_text("not a dump")
    recs = list(read_dump(tmp_path))
    assert [r.name for r in recs] == ["layer1", "layer2", "Layer3", "layer10"]
    for r in recs:
        assert r.shape == (1, 10, 1, 1) and r.order is None
        np.testing.assert_array_equal(r.array.ravel(), expected[r.name])


def test_natural_key():
    names = ["conv10", "conv2", "conv1_b", "conv1", "a", "B"]
    assert sorted(names, key=natural_key) == ["a", "B", "conv1", "conv1_b", "conv2", "conv10"]


def test_mixed_formats_in_one_folder(tmp_path):
    np.save(tmp_path / "b.npy", np.arange(3.0))
    write_text_dump(tmp_path / "a.txt", (2,), [1, 2])
    recs = list(read_dump(tmp_path))
    assert [(r.name, r.shape) for r in recs] == [("a", (2,)), ("b", (3,))]


def test_single_files(tmp_path):
    np.save(tmp_path / "conv1.npy", np.arange(3.0))
    (r,) = read_dump(tmp_path / "conv1.npy")
    assert r.name == "conv1"
    write_text_dump(tmp_path / "odd.dat", (2,), [1, 2])
    (r,) = read_dump(tmp_path / "odd.dat", fmt="trt-text")
    assert r.name == "odd" and r.shape == (2,)


def test_single_file_of_a_manifest_folder_keeps_its_real_name(tmp_path):
    out = write_dump([Activation("/a/b", np.ones(2), op_type="Relu")], tmp_path / "d")
    (r,) = read_dump(out / "a_b.npy")
    assert (r.name, r.op_type) == ("/a/b", "Relu")


def test_unlisted_files_follow_the_manifest_entries(tmp_path):
    out = write_dump([Activation("z", np.ones(1)), Activation("y", np.ones(1))], tmp_path / "d")
    np.save(out / "extra.npy", np.zeros(2))
    assert [r.name for r in read_dump(out)] == ["z", "y", "extra"]


def test_fmt_argument_overrides_extensions_in_folders(tmp_path):
    write_text_dump(tmp_path / "a.dump", (2,), [1, 2])
    write_text_dump(tmp_path / "b.dump", (1,), [3])
    with pytest.raises(ParityError, match="unknown dump file extension '.dump'"):
        read_dump(tmp_path)
    assert [r.name for r in read_dump(tmp_path, fmt="trt-text")] == ["a", "b"]


# --------------------------------------------------------------------------- run tags


def make_flat_tagged(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    write_text_dump(folder / "conv1_fp32.txt", (2,), [1.0, 2.0])
    write_text_dump(folder / "conv1.fp16.txt", (2,), [1.0, 2.001])
    write_text_dump(folder / "fc-fp32.txt", (1,), [5.0])
    write_text_dump(folder / "fc_fp16.txt", (1,), [5.1])


def test_flat_tagged_layout(tmp_path):
    make_flat_tagged(tmp_path)
    assert detect_tags(tmp_path) == ["fp16", "fp32"]
    fp32 = list(read_dump(tmp_path, tag="fp32"))
    fp16 = list(read_dump(tmp_path, tag="fp16"))
    assert [r.name for r in fp32] == ["conv1", "fc"]
    assert [r.name for r in fp16] == ["conv1", "fc"]
    np.testing.assert_array_equal(fp16[0].array, np.array([1.0, 2.001], dtype=np.float32))
    np.testing.assert_array_equal(fp32[1].array, [5.0])


def test_subfolder_tagged_layout(tmp_path):
    write_dump([Activation("conv1", np.ones(2)), Activation("fc", np.ones(1))], tmp_path / "fp32")
    (tmp_path / "fp16").mkdir()
    write_text_dump(tmp_path / "fp16" / "conv1.txt", (2,), [1, 1])
    assert detect_tags(tmp_path) == ["fp16", "fp32"]
    assert [r.name for r in read_dump(tmp_path, tag="fp32")] == ["conv1", "fc"]
    assert [r.name for r in read_dump(tmp_path, tag="fp16")] == ["conv1"]
    with pytest.raises(ParityError, match=r"no dump files in folder .*run subfolders fp16, fp32: pass a run tag"):
        read_dump(tmp_path)


def test_whole_run_archives_as_tags(tmp_path):
    write_dump([Activation("a", np.ones(2)), Activation("b", np.zeros(1))], tmp_path / "fp32.npz", fmt="npz")
    write_dump([Activation("a", np.ones(2) * 2)], tmp_path / "fp16.npz", fmt="npz")
    assert detect_tags(tmp_path) == ["fp16", "fp32"]
    assert [r.name for r in read_dump(tmp_path, tag="fp32")] == ["a", "b"]
    (r,) = read_dump(tmp_path, tag="fp16")
    np.testing.assert_array_equal(r.array, [2, 2])


def test_tag_inside_one_archive(tmp_path):
    p = tmp_path / "both.npz"
    np.savez(p, conv1_fp32=np.ones(2), conv1_fp16=np.full(2, 2.0), fc_fp32=np.zeros(1), fc_fp16=np.zeros(1))
    assert [(r.name, r.array[0]) for r in read_dump(p, tag="fp16")] == [("conv1", 2.0), ("fc", 0.0)]
    with pytest.raises(ParityError, match=re.escape(str(p)) + r": holds no activations of run 'int8'"):
        list(read_dump(p, tag="int8"))


@pytest.mark.parametrize("files", [
    ["conv1.txt", "conv2.txt"],                          # plain single run
    ["conv_1.txt", "conv_2.txt", "fc_1.txt", "fc_2.txt"],  # numeric suffixes are layer indices, not runs
    ["conv1_fp32.txt", "conv1_fp16.txt", "fc_fp32.txt"],   # fc missing from fp16: not a consistent pair of runs
    ["conv1_fp32.txt", "conv1_fp16.txt", "input.txt"],     # an untagged file
    ["conv1_fp32.txt"],                                    # a single tag is no choice
])
def test_detect_tags_finds_no_runs(tmp_path, files):
    for f in files:
        write_text_dump(tmp_path / f, (1,), [0])
    assert detect_tags(tmp_path) == []


def test_detect_tags_on_manifest_folder_and_files(tmp_path):
    out = write_dump([Activation("a_fp32", np.ones(1)), Activation("a_fp16", np.ones(1))], tmp_path / "d")
    assert detect_tags(out) == []
    assert detect_tags(out / "a_fp32.npy") == []
    assert detect_tags(tmp_path / "missing") == []


def test_split_tag():
    assert split_tag("conv1_fp16") == ("conv1", "fp16")
    assert split_tag("layer1.0.conv.fp16") == ("layer1.0.conv", "fp16")
    assert split_tag("a-b_c") == ("a-b", "c")
    assert split_tag("conv1") is None and split_tag("_x") is None and split_tag("x_") is None


# --------------------------------------------------------------------------- reading errors


def _setup_missing(tmp: Path) -> Path:
    return tmp / "nope"


def _setup_empty(tmp: Path) -> Path:
    (tmp / "d").mkdir()
    return tmp / "d"


def _setup_unknown_ext(tmp: Path) -> Path:
    (tmp / "d").mkdir()
    np.save(tmp / "d" / "a.npy", np.ones(1))
    (tmp / "d" / "weights.bin").write_bytes(b"\0")
    return tmp / "d"


def _setup_unknown_single(tmp: Path) -> Path:
    (tmp / "w.bin").write_bytes(b"\0")
    return tmp / "w.bin"


def _setup_duplicate(tmp: Path) -> Path:
    (tmp / "d").mkdir()
    write_text_dump(tmp / "d" / "conv1.txt", (1,), [1])
    np.save(tmp / "d" / "conv1.npy", np.ones(1))
    return tmp / "d"


def _setup_duplicate_tagged(tmp: Path) -> Path:
    (tmp / "d").mkdir()
    write_text_dump(tmp / "d" / "conv1_fp16.txt", (1,), [1])
    write_text_dump(tmp / "d" / "conv1.fp16.txt", (1,), [1])
    return tmp / "d"


def _setup_manifest_missing_file(tmp: Path) -> Path:
    out = write_dump([Activation("a", np.ones(1)), Activation("b", np.ones(1))], tmp / "d")
    (out / "b.npy").unlink()
    return out


def _setup_manifest_bad_json(tmp: Path) -> Path:
    out = write_dump([Activation("a", np.ones(1))], tmp / "d")
    (out / MANIFEST_NAME).write_text("{not json")
    return out


def _setup_manifest_newer(tmp: Path) -> Path:
    out = write_dump([Activation("a", np.ones(1))], tmp / "d")
    doc = json.loads((out / MANIFEST_NAME).read_text())
    doc["schema_version"] = 99
    (out / MANIFEST_NAME).write_text(json.dumps(doc))
    return out


def _setup_manifest_escaping_path(tmp: Path) -> Path:
    out = write_dump([Activation("a", np.ones(1))], tmp / "d")
    doc = json.loads((out / MANIFEST_NAME).read_text())
    doc["entries"][0]["file"] = "../secret.npy"
    (out / MANIFEST_NAME).write_text(json.dumps(doc))
    return out


@pytest.mark.parametrize("setup,kwargs,pattern", [
    (_setup_missing, {}, r"dump not found: {p}\. .*understood extensions: \.npy \(npy\), \.npz \(npz\), \.txt \(trt-text\)"),
    (_setup_empty, {}, r"no dump files in folder {p}\. Note: understood extensions: \.npy"),
    (_setup_unknown_ext, {}, r"{p}/weights\.bin: unknown dump file extension '\.bin'.*\.txt \(trt-text\).*--format"),
    (_setup_unknown_single, {}, r"{p}: unknown dump file extension '\.bin'"),
    (_setup_duplicate, {}, r"two dump files give layer 'conv1': {p}/conv1\.npy and {p}/conv1\.txt"),
    (_setup_duplicate_tagged, {"tag": "fp16"}, r"two dump files give layer 'conv1': {p}/conv1\.fp16\.txt and {p}/conv1_fp16\.txt"),
    (_setup_empty, {"tag": "fp16"}, r"no dump files of run 'fp16' in folder {p}\..*NAME_fp16\.ext"),
    (_setup_manifest_missing_file, {}, r"{p}/parity-manifest\.json: lists 'b\.npy', which is missing"),
    (_setup_manifest_bad_json, {}, r"{p}/parity-manifest\.json: manifest is not valid JSON"),
    (_setup_manifest_newer, {}, r"{p}/parity-manifest\.json: manifest schema_version 99 is newer"),
    (_setup_manifest_escaping_path, {}, r"{p}/parity-manifest\.json: manifest entry 0 is invalid: 'file' must be a plain file name"),
    (_setup_manifest_bad_json, {"tag": "fp32"}, r"{p}: holds a single run written by parity"),
    (_setup_duplicate, {"fmt": "nosuch"}, r"unknown dump format 'nosuch'\. Known dump formats: npy, npz, trt-text"),
])
def test_read_errors_are_eager_and_name_the_path(tmp_path, setup, kwargs, pattern):
    p = setup(tmp_path)
    with pytest.raises(ParityError, match=pattern.format(p=re.escape(str(p)))):
        read_dump(p, **kwargs)  # raised before iterating


def test_single_file_outside_the_tag(tmp_path):
    write_text_dump(tmp_path / "conv1_fp32.txt", (1,), [1])
    (r,) = read_dump(tmp_path / "conv1_fp32.txt", tag="fp32")
    assert r.name == "conv1"
    with pytest.raises(ParityError, match=re.escape(str(tmp_path / "conv1_fp32.txt")) + ": file does not belong to run 'fp16'"):
        read_dump(tmp_path / "conv1_fp32.txt", tag="fp16")


@pytest.mark.parametrize("tag", ["..", ".", "", "a/b"])
def test_tag_must_be_a_plain_word(tmp_path, tag):
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "x.npy", np.ones(1))
    with pytest.raises(ParityError, match="run tag .* is not valid"):
        read_dump(tmp_path / "d", tag=tag)


def test_manifest_shape_mismatch_names_the_file(tmp_path):
    out = write_dump([Activation("a", np.ones((2, 2)))], tmp_path / "d")
    np.save(out / "a.npy", np.ones(3))
    with pytest.raises(ParityError, match=re.escape(str(out / "a.npy")) + r": holds shape \[3\] but the manifest says \[2, 2\]"):
        list(read_dump(out))


def test_bad_file_content_error_surfaces_on_iteration_with_the_file(tmp_path):
    write_text_dump(tmp_path / "a.txt", (1,), [1])
    (tmp_path / "b.txt").write_text("[3]\n1 2\n")
    it = read_dump(tmp_path)
    assert next(it).name == "a"
    with pytest.raises(ParityError, match=re.escape(str(tmp_path / "b.txt")) + r": holds 2 values but shape \[3\] needs 3"):
        next(it)


# --------------------------------------------------------------------------- writing: policy, atomicity, streaming


def test_refuses_to_overwrite_unless_asked(tmp_path):
    out = write_dump([Activation("old", np.ones(1))], tmp_path / "d")
    with pytest.raises(ParityError, match=re.escape(str(out)) + " already exists.*overwrite=True"):
        write_dump([Activation("new", np.ones(1))], out)
    assert [r.name for r in read_dump(out)] == ["old"]
    write_dump([Activation("new", np.ones(1))], out, overwrite=True)
    assert [r.name for r in read_dump(out)] == ["new"]
    assert not (out / "old.npy").exists()
    assert tmp_leftovers(tmp_path) == []


def test_overwrite_never_replaces_a_foreign_folder(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("precious")
    with pytest.raises(ParityError, match=r"refusing to replace folder .*home: it is not a parity dump"):
        write_dump([Activation("a", np.ones(1))], tmp_path / "home", overwrite=True)
    assert (tmp_path / "home" / "thesis.tex").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ParityError, match=r"refusing to replace .*file: it is a file"):
        write_dump([Activation("a", np.ones(1))], tmp_path / "file", overwrite=True)
    (tmp_path / "empty").mkdir()
    write_dump([Activation("a", np.ones(1))], tmp_path / "empty")  # an empty folder needs no overwrite
    assert [r.name for r in read_dump(tmp_path / "empty")] == ["a"]
    (tmp_path / "run.npz").mkdir()
    with pytest.raises(ParityError, match=r"refusing to replace .*run\.npz: it is not a file"):
        write_dump([Activation("a", np.ones(1))], tmp_path / "run.npz", fmt="npz", overwrite=True)


def _two_then_crash():
    yield Activation("a", np.ones(3))
    yield Activation("b", np.ones(3))
    raise RuntimeError("model crashed mid-run")


@pytest.mark.parametrize("fmt", FORMATS)
def test_interrupted_write_leaves_nothing(tmp_path, fmt):
    with pytest.raises(RuntimeError, match="model crashed mid-run"):
        write_dump(_two_then_crash(), tmp_path / "d", fmt=fmt)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_interrupted_overwrite_keeps_previous_dump(tmp_path, fmt):
    old = [Activation("keep_me", np.arange(4.0)), Activation("me_too", np.zeros(2))]
    out = write_dump(old, tmp_path / "d", fmt=fmt)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="model crashed mid-run"):
        write_dump(_two_then_crash(), out, fmt=fmt, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    for a, b in zip(old, read_dump(out), strict=True):
        assert_same(a, b)


@pytest.mark.parametrize("fmt", FORMATS)
def test_duplicate_keys_and_empty_input_write_nothing(tmp_path, fmt):
    with pytest.raises(ParityError, match="two records have the same layer key 'a'"):
        write_dump([Activation("a", np.ones(1)), Activation("a", np.ones(1))], tmp_path / "d", fmt=fmt)
    with pytest.raises(ParityError, match="no activations to write"):
        write_dump([], tmp_path / "d", fmt=fmt)
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_non_records_and_unknown_formats(tmp_path):
    with pytest.raises(ParityError, match="expects Activation records; item 0 is ndarray"):
        write_dump([np.ones(1)], tmp_path / "d")
    with pytest.raises(ParityError, match="unknown dump format 'hdf5'"):
        write_dump([Activation("a", np.ones(1))], tmp_path / "d", fmt="hdf5")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_is_streaming(tmp_path, fmt):
    """Arrays already written are released while later records are still being produced."""
    refs: list[weakref.ref] = []
    alive_when_yielding: list[int] = []

    def records():
        for i in range(6):
            gc.collect()
            alive_when_yielding.append(sum(r() is not None for r in refs))
            arr = np.full((64, 64), float(i), dtype=np.float32)
            refs.append(weakref.ref(arr))
            yield Activation(f"l{i}", arr)

    out = write_dump(records(), tmp_path / "d", fmt=fmt)
    # at most the previous record's array may still be referenced when the next one is made
    assert max(alive_when_yielding) <= 1
    assert [float(r.array.flat[0]) for r in read_dump(out)] == [float(i) for i in range(6)]


# --------------------------------------------------------------------------- third-party formats


class CsvFormat(DumpFormat):
    """A toy one-line CSV format: shape in the first field separated by 'x'."""

    name = "test-csv"
    extensions = (".csv",)

    def read(self, path):
        head, *vals = Path(path).read_text().strip().split(",")
        if head == "boom":
            raise ValueError("bad csv header")
        shape = tuple(int(d) for d in head.split("x"))
        yield Activation(Path(path).stem, np.array([float(v) for v in vals], dtype=np.float32).reshape(shape))

    def write_one(self, record, path):
        Path(path).write_text("x".join(map(str, record.shape)) + "," +
                              ",".join(repr(float(v)) for v in np.asarray(record.array).ravel()))


class CsvPlugin:
    @hookimpl
    def register_dump_formats(self, register):
        register(CsvFormat())


@pytest.fixture
def csv_plugin():
    plugin = CsvPlugin()
    plugins.register_plugin(plugin, name="test-csv-plugin")
    yield
    plugins.unregister_plugin(plugin)


def test_third_party_format_works_in_folders(tmp_path, csv_plugin):
    (tmp_path / "b.csv").write_text("2,1.5,2.5")
    np.save(tmp_path / "a.npy", np.ones(3))
    recs = list(read_dump(tmp_path))
    assert [(r.name, r.shape) for r in recs] == [("a", (3,)), ("b", (2,))]
    np.testing.assert_array_equal(recs[1].array, [1.5, 2.5])
    out = write_dump([Activation("/x/y", np.arange(4.0).reshape(2, 2), op_type="Conv")], tmp_path / "w", fmt="test-csv")
    (r,) = read_dump(out)
    assert (r.name, r.op_type, r.dtype) == ("/x/y", "Conv", "float64")
    np.testing.assert_array_equal(r.array, np.arange(4.0).reshape(2, 2))


def test_third_party_format_exceptions_become_one_line_errors(tmp_path, csv_plugin):
    (tmp_path / "bad.csv").write_text("boom,1")
    with pytest.raises(ParityError, match=re.escape(str(tmp_path / "bad.csv")) +
                       r": format 'test-csv' could not read it: ValueError: bad csv header"):
        list(read_dump(tmp_path))


def test_safe_filename():
    assert safe_filename("/layer1/layer1.0/conv1/Conv_output_0") == "layer1_layer1.0_conv1_Conv_output_0"
    assert safe_filename("A + B") == "A_B"
    assert safe_filename("..") == "layer"
    assert safe_filename("nul") == "nul_"
    long = safe_filename("a" * 500)
    assert len(long) == 100 and long != safe_filename("a" * 499)

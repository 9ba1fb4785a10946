"""Typed source options (issue 18.1): each source declares its options once; the registry refuses an
unknown key or a bad value (exit 2, naming the source and the valid keys), every consumer reads typed
values, the CLI builds the sources' flags from the schemas, ``parity plugins --options`` lists them,
and ``outputs_only`` / ``keep_high_precision`` are typed run-configuration fields a source honours or
the core refuses."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from parity import hookimpl
from parity.contract.errors import ParityError, UsageError
from parity.contract.options import Option, check_options, read_options
from parity.contract.records import Activation
from parity.contract.source import InputSpec, RunConfig, Source
from parity.core import registry as plugins

from tests.support import ZOO, cli

ROOT = Path(__file__).resolve().parents[2]


# --- the Option type ---------------------------------------------------------------------------------

@pytest.mark.parametrize("opt,given,expected", [
    (Option("a", "bool"), "no", False),
    (Option("a", "bool"), "Yes", True),
    (Option("a", "bool"), 1, True),
    (Option("a", "int"), "12", 12),
    (Option("a", "int"), 3.0, 3),
    (Option("a", "float"), "0.25", 0.25),
    (Option("a", "list"), "Softmax, Add,", ["Softmax", "Add"]),
    (Option("a", "list"), ("x", "y"), ["x", "y"]),
    (Option("a", "bytes"), "2k", 2048),
    (Option("a", "bytes"), "1GB", 10**9),
    (Option("a", "choice", choices=("debug", "mark")), "MARK", "mark"),
    (Option("a", "regex"), "conv|attn", "conv|attn"),
    (Option("a", "str"), ["n1:fp32", "n2:fp16"], "n1:fp32,n2:fp16"),  # a TOML list for a comma option
])
def test_conversion_and_its_idempotence(opt, given, expected):
    value = opt.convert(given)
    assert value == expected and type(value) is type(expected)
    assert opt.convert(value) == value  # a consumer may read an already checked dict through the schema


@pytest.mark.parametrize("opt,given,match", [
    (Option("flag", "bool"), "maybe", r"flag='maybe' is not a yes/no value"),
    (Option("n", "int"), "many", r"n='many' is not an integer"),
    (Option("n", "int"), "2.5", r"n='2.5' is not an integer"),
    (Option("n", "int", minimum=1), "0", r"n='0' is below 1"),
    (Option("x", "float"), "wide", r"x='wide' is not a number"),
    (Option("s", "bytes"), "lots", r"'lots' is not a size"),
    (Option("c", "choice", choices=("debug", "mark")), "marx", r"c='marx' is not known. Note: use one of debug, mark"),
    (Option("r", "regex"), "(", r"r='\(' is not a valid regular expression"),
])
def test_a_bad_value_is_a_usage_error_naming_the_source(opt, given, match):
    with pytest.raises(UsageError, match=match) as info:
        opt.convert(given, "source 'acme'")
    assert str(info.value).startswith("source 'acme': ") and info.value.exit_code == 2


def test_check_refuses_unknown_keys_and_renames_aliases():
    schema = [Option("trt_capture", "choice", "debug", choices=("debug", "mark")),
              Option("trt_layer_precisions", "str", aliases=("layer_precisions",))]
    assert check_options(schema, {"layer_precisions": "a:fp32", "trt_capture": "Mark"}, "source 't'") == {
        "trt_layer_precisions": "a:fp32", "trt_capture": "mark"}
    with pytest.raises(UsageError) as info:
        check_options(schema, {"trt_captur": "mark"}, "source 't'")
    msg = str(info.value)
    assert "'trt_captur' is not an option of source 't'" in msg and "Did you mean trt_capture?" in msg
    assert "valid keys are trt_capture, trt_layer_precisions" in msg


def test_read_fills_defaults_and_ignores_the_other_sides_keys():
    schema = [Option("ort_threads", "int", None), Option("ort_mem_arena", "bool", False)]
    assert read_options(schema, {"ort_threads": "2", "torch_capture": "fx"}) == {"ort_threads": 2,
                                                                                "ort_mem_arena": False}


# --- the run configuration's typed fields --------------------------------------------------------------

def test_run_fields_are_typed_and_taken_out_of_options():
    cfg = RunConfig(model="m", options={"outputs_only": "yes", "keep_high_precision": "a, b", "opset": 17})
    assert cfg.outputs_only is True and cfg.keep_high_precision == ("a", "b") and cfg.options == {"opset": 17}
    assert RunConfig(model="m", keep_high_precision=["c"]).keep_high_precision == ("c",)
    with pytest.raises(ParityError, match="outputs_only='maybe' is not a yes/no value"):
        RunConfig(model="m", options={"outputs_only": "maybe"})


# --- built-in sources ------------------------------------------------------------------------------------

BUILTIN_PLUGIN_DIRS = ["plugins/parity_builtin_torch", "plugins/parity_builtin_onnxruntime",
                       "plugins/parity_builtin_tensorrt", "parity/lib"]
_READ = re.compile(r"""(?:option_(?:bool|int|list)\(\s*[\w.]+,\s*|\b(?:o|opts|options|cfg\.options)\.get\(\s*)["']([a-z][a-z0-9_]+)["']""")


def _keys_read_by_code() -> set[str]:
    keys: set[str] = set()
    for d in BUILTIN_PLUGIN_DIRS:
        for path in (ROOT / d).rglob("*.py"):
            keys |= set(_READ.findall(path.read_text(encoding="utf-8")))
    return keys


def test_every_option_the_code_reads_is_declared():
    """The schemas are the truth only if nothing reads a key they lack: every key the built-in sources
    and the shared libraries read is declared by some built-in source (or is a run-config field)."""
    read = _keys_read_by_code()
    assert {"trust_model", "ort_threads", "trt_capture", "torch_include_integer"} <= read  # the scan works
    declared = {o.name for name in ("torch", "ort", "ort-int8", "trt-fp16")
                for o in plugins.source_schema(name)} | {"outputs_only", "keep_high_precision", "layer_precisions"}
    assert read - declared == set()


@pytest.mark.parametrize("name,expected", [
    ("torch", {"trust_model", "state_dict", "torch_capture", "torch_include_integer", "torch_allow_tf32"}),
    ("torch-fp16", {"torch_capture", "trust_model"}),
    ("ort", {"opset", "ort_threads", "ort_providers", "export_dynamo", "step_bytes", "ort_output_batch"}),
    ("ort-fp16", {"keep_fp32_ops", "keep_fp32_nodes"}),
    ("ort-int8", {"int8_calibrate_method", "int8_per_channel"}),
    ("trt-fp16", {"trt_capture", "trt_layer_precisions", "trt_workspace", "opset", "ort_threads"}),
    ("trt-rtx-fp16", {"trt_capture", "trt_mark"}),
])
def test_each_builtin_source_lists_its_options(capsys, name, expected):
    rc, out, err = cli(capsys, "plugins", "--options", name, "--json")
    assert rc == 0, err
    data = json.loads(out)
    listed = {o["name"] for o in data["options"]}
    assert data["source"] == name and expected <= listed
    assert len(listed) == len(data["options"])  # no option declared twice
    assert data["honours"] == {"outputs_only": True, "keep_high_precision": True}
    assert "torch_capture" not in listed or name.startswith("torch")  # no other source's options
    rc, out, _ = cli(capsys, "plugins", "--options", name)
    assert rc == 0 and all(k in out for k in expected)


def test_listing_an_unknown_source_is_a_usage_error(capsys):
    rc, _out, err = cli(capsys, "plugins", "--options", "ort-fp17")
    assert rc == 2 and "unknown source 'ort-fp17'" in err[0] and "ort-fp16" in err[0]


def test_unknown_key_on_a_real_run_exits_2_with_did_you_mean(capsys, tmp_path):
    rc, _out, err = cli(capsys, "compare", f"{ZOO}:lenet", "--ref", "torch", "--target", "ort-fp16",
                        "--option", "ort_thread=1", "--workdir", tmp_path)
    assert rc == 2 and len(err) == 1
    assert "'ort_thread' is not an option of source 'ort-fp16' or source 'torch'" in err[0]
    assert "Did you mean ort_threads?" in err[0] and "valid keys are" in err[0] and "keep_fp32_ops" in err[0]
    assert not list(tmp_path.iterdir())  # refused before any export or conversion


@pytest.mark.parametrize("args,match", [
    (["--option", "ort_threads=many"], r"ort_threads='many' is not an integer"),
    (["--option", "int8_calibrate_method=magic"], r"int8_calibrate_method='magic' is not known. Note: use one of minmax"),
    (["--option", "step_bytes=lots"], r"'lots' is not a size"),
    (["--torch-capture", "ops"], r"argument --torch-capture: invalid choice: 'ops'"),
])
def test_bad_value_on_a_real_run_exits_2(capsys, tmp_path, args, match):
    rc, _out, err = cli(capsys, "compare", f"{ZOO}:lenet", "--ref", "torch", "--target", "ort-fp16", *args,
                        "--workdir", tmp_path)
    assert rc == 2 and len(err) == 1 and re.search(match, err[0]), err


def test_a_config_files_options_are_checked_too(capsys, tmp_path):
    cfg = tmp_path / "parity.toml"
    cfg.write_text('[options]\nkeep_fp32_op = ["Softmax"]\n')
    rc, _out, err = cli(capsys, "compare", f"{ZOO}:lenet", "--ref", "torch", "--target", "ort-fp16",
                        "--config", cfg, "--workdir", tmp_path / "cache")
    assert rc == 2 and "Did you mean keep_fp32_ops?" in err[0]


# --- a third-party source: its flag, its typed value, its refusals ---------------------------------------

class _Gain(Source):
    """Multiplies its input by the ``acme_gain`` option: what reached it is visible in the outputs."""

    description = "test source"
    option_schema = (Option("acme_gain", "float", 1.0, "scale of the output", flag="--acme-gain"),
                     Option("acme_mode", "choice", "fast", "how", choices=("fast", "exact")))
    seen: ClassVar[list[dict[str, Any]]] = []

    def input_specs(self, cfg: RunConfig) -> list[InputSpec]:
        return [InputSpec("x", (1, 8))]

    def run(self, cfg: RunConfig, feed: dict[str, np.ndarray]):
        type(self).seen.append(dict(cfg.options))
        gain = read_options(self.option_schema, cfg.options)["acme_gain"] if self.name != "acme" else 1.0
        x = np.asarray(feed["x"], np.float32)
        yield Activation("hidden", x * 2, order=0, meta={"module_path": "hidden"})
        yield Activation("y", x * gain, order=1, meta={"is_output": True, "output_position": 0})


class _Plugin:
    @hookimpl
    def register_sources(self, register):
        register(_Gain(), name="acme")
        register(_Gain(), name="acme-scaled")


@pytest.fixture
def acme(tmp_path):
    plugin = _Plugin()
    plugins.register_plugin(plugin, name="acme-options-test")
    _Gain.seen.clear()
    model = tmp_path / "model.acme"
    model.write_text("a model only the acme sources read\n")
    try:
        yield model
    finally:
        plugins.unregister_plugin(plugin)
        plugins.reset()


def test_a_generated_flag_reaches_the_source_typed(capsys, acme, tmp_path):
    rc, out, err = cli(capsys, "compare", acme, "--ref", "acme", "--target", "acme-scaled", "--acme-gain", "-1",
                       "--option", "acme_mode=EXACT", "--workdir", tmp_path / "c", "--json", tmp_path / "r.json")
    assert _Gain.seen and all(s == {"acme_gain": -1.0, "acme_mode": "exact"} for s in _Gain.seen)
    assert rc == 1, err  # the output flipped sign: cosine -1, a failing comparison
    report = json.loads((tmp_path / "r.json").read_text())
    rows = {row["name"]: row["values"]["cosine"] for row in report["layers"]}
    assert rows == {"hidden": pytest.approx(1.0), "y": pytest.approx(-1.0, abs=1e-6)}


def test_a_third_party_flag_appears_in_help_with_its_source(capsys, acme):
    with pytest.raises(SystemExit):
        cli(capsys, "compare", "--help")
    out = capsys.readouterr().out
    assert re.search(r"--acme-gain X\s+scale of the output \[acme\*\]", out)


def test_a_third_party_bad_value_and_unknown_key_exit_2(capsys, acme, tmp_path):
    rc, _out, err = cli(capsys, "compare", acme, "--ref", "acme", "--target", "acme-scaled", "--acme-gain", "loud",
                        "--workdir", tmp_path / "c")
    assert rc == 2 and "--acme-gain: option acme_gain='loud' is not a number" in err[0]
    rc, _out, err = cli(capsys, "compare", acme, "--ref", "acme", "--target", "acme-scaled", "--option",
                        "acme_gian=2", "--workdir", tmp_path / "c")
    assert rc == 2 and "Did you mean acme_gain?" in err[0] and "valid keys are acme_gain, acme_mode" in err[0]
    assert not _Gain.seen  # nothing ran


def test_keep_high_precision_is_refused_by_a_source_that_cannot_honour_it(capsys, acme, tmp_path):
    cfg = tmp_path / "fix.toml"
    cfg.write_text('[precision]\nkeep_fp32 = ["hidden"]\n')
    rc, _out, err = cli(capsys, "compare", acme, "--ref", "acme", "--target", "acme-scaled", "--config", cfg,
                        "--workdir", tmp_path / "c")
    assert rc == 2 and "target 'acme-scaled' cannot keep layers in high precision" in err[0]
    assert "torch" in err[0]  # the sources that can are named
    assert not _Gain.seen


def test_outputs_only_is_asked_only_of_sources_that_honour_it(capsys, acme, tmp_path):
    """The deployed run beside a capture asks ``outputs_only`` of a source declaring it; this one does
    not, so it gets its ordinary run, never a flag it would ignore."""
    class Recording(_Gain):
        got: ClassVar[list[bool]] = []

        def run(self, cfg, feed):
            Recording.got.append(cfg.outputs_only)
            return super().run(cfg, feed)

    class Plugin:
        @hookimpl
        def register_sources(self, register):
            register(Recording(), name="acme-rec")

    p = Plugin()
    plugins.register_plugin(p, name="acme-rec-test")
    try:
        rc, _out, err = cli(capsys, "compare", acme, "--ref", "acme", "--target", "acme-rec",
                            "--workdir", tmp_path / "c")
        assert rc in (0, 1), err
        assert Recording.got and not any(Recording.got)
        Recording.supports_outputs_only = True
        Recording.got.clear()
        rc, _out, err = cli(capsys, "compare", acme, "--ref", "acme", "--target", "acme-rec",
                            "--workdir", tmp_path / "c2")
        assert rc in (0, 1), err
        # the capture, then the deployed run (twice on the first feed: run-to-run noise)
        assert Recording.got[0] is False and len(Recording.got) > 1 and all(Recording.got[1:])
    finally:
        plugins.unregister_plugin(p)  # the fixture resets the registry


def test_another_sources_key_names_the_sources_that_read_it(capsys, tmp_path):
    """``--option trt_capture=mark`` on an ONNX Runtime run: not a typo but a TensorRT option."""
    rc, _out, err = cli(capsys, "compare", f"{ZOO}:lenet", "--ref", "torch", "--target", "ort-fp16",
                        "--option", "trt_capture=mark", "--workdir", tmp_path)
    assert rc == 2 and "'trt_capture' is not an option of source 'ort-fp16' or source 'torch'" in err[0]
    assert "It is read by sources trt-bf16, trt-fp16" in err[0] and "Did you mean" not in err[0]


def test_parity_fix_refuses_a_target_that_cannot_keep_layers(capsys, acme, tmp_path):
    rc, _out, err = cli(capsys, "fix", acme, "--ref", "acme", "--target", "acme-scaled", "--acme-gain", "-1",
                        "--workdir", tmp_path / "c")
    assert rc == 2 and "target 'acme-scaled' cannot keep layers in high precision" in err[-1], err
    assert not _Gain.seen  # refused before the compare ran


def test_the_python_api_checks_options_the_same_way(tmp_path):
    import parity

    with pytest.raises(UsageError, match=r"'ort_thread' is not an option of source 'ort-fp16'.*Did you mean ort_threads\?"):
        parity.compare(f"{ZOO}:lenet", ref="torch", target="ort-fp16", options={"ort_thread": 1},
                       workdir=tmp_path, quiet=True)
    with pytest.raises(UsageError, match=r"ort_threads=-1 is below 0"):
        parity.compare(f"{ZOO}:lenet", ref="torch", target="ort-fp16", options={"ort_threads": -1},
                       workdir=tmp_path, quiet=True)

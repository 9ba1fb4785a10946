import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from parity import ParityError, hookimpl
from parity.contract import hookspecs
from parity.core import registry as plugins
from parity.contract.metric import Metric

ROOT = Path(__file__).resolve().parents[2]


class _Dup(Metric):
    name = "cosine"
    description = "a metric that collides with the built-in"

    def start(self, ctx):
        return 0.0

    def update(self, s, c):
        return s

    def finish(self, s, ctx):
        return s


class _DupPlugin:
    @hookimpl
    def register_metrics(self, register):
        register(_Dup())


def test_builtins_come_from_entry_points_with_their_package():
    reg = plugins.registry()
    assert {"exact", "auto"} <= set(reg["matcher"])
    for kind in ("metric", "dump-format", "matcher"):
        assert reg[kind], kind
        for r in reg[kind].values():
            assert r.package.startswith("parity "), r


def test_duplicate_name_names_both_plugins():
    plugin = _DupPlugin()
    plugins.register_plugin(plugin, name="dup-test")
    try:
        with pytest.raises(ParityError, match=r"metric 'cosine' is registered twice.*dup-test"):
            plugins.registry()
    finally:
        plugins.unregister_plugin(plugin)


def test_unknown_name_lists_known_ones():
    with pytest.raises(ParityError, match=r"unknown metric 'nope'.*cosine"):
        plugins.get_metric("nope")


def _run(*args, env=None):
    import os

    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "parity", *args], capture_output=True, text=True, env=e,
                          cwd=ROOT)


def test_load_plugins_env_restricts_loading():
    r = _run("plugins", "--json", env={"PARITY_LOAD_PLUGINS": "matchers"})
    import json

    d = json.loads(r.stdout)
    assert d["metric"] == [] and {m["name"] for m in d["matcher"]} == {"exact", "auto"}


def test_debug_hooks_env_traces_hook_calls():
    r = _run("plugins", "--json", env={"PARITY_DEBUG_HOOKS": "1", "PARITY_LOAD_PLUGINS": "matchers"})
    assert r.returncode == 0
    assert "register_matchers" in r.stderr


def test_every_hook_is_documented_and_tested():
    """Each hook spec has a documented signature in docs/ and is exercised by some test."""
    hooks = [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("register_")]
    assert set(hooks) == set(hookspecs.HOOKS)
    docs = "\n".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py") if p.name != "test_plugins.py")
    for h in hooks:
        assert re.search(rf"{h}\(register\)", docs), f"{h} is not documented in docs/"
        assert h in tests, f"{h} has no test"


def test_help_does_not_import_frameworks():
    code = ("import sys; from parity.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "main(['plugins', '--json'])\n"
            "heavy = [m for m in ('torch', 'onnxruntime', 'tensorrt', 'onnx') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "HEAVY []" in r.stdout, r.stdout + r.stderr


def test_broken_plugin_is_skipped_with_a_warning(tmp_path):
    """A third-party plugin that fails to import is named, and the others keep working."""
    (tmp_path / "parity_broken_example.py").write_text("raise ImportError('needs libfoo')\n")
    dist = tmp_path / "parity_broken_example-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: parity-broken-example\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[parity]\nbroken = parity_broken_example\n")
    import json
    import os

    r = _run("plugins", "--json", env={"PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert r.returncode == 0, r.stderr
    assert "plugin 'broken'" in r.stderr and "needs libfoo" in r.stderr
    d = json.loads(r.stdout)
    assert d["broken"][0]["plugin"] == "broken" and any(m["name"] == "cosine" for m in d["metric"])


def test_doctor_says_which_sources_work_and_why_not():
    import importlib.util
    import json

    r = _run("doctor", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    by = {s["source"]: s for s in d["sources"]}
    assert {"torch", "ort", "ort-fp16", "ort-int8", "trt-fp16"} <= set(by)
    if importlib.util.find_spec("tensorrt") is None:
        assert not by["trt-fp16"]["works"] and "TensorRT" in by["trt-fp16"]["why"]
    if importlib.util.find_spec("onnxruntime") is not None:
        assert by["ort"]["works"] and "CPUExecutionProvider" in d["environment"]["onnxruntime providers"]

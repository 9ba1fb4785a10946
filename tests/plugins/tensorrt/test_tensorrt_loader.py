"""The TensorRT loader's handling of failing library calls, and the plugin's module layering.

TensorRT cannot be installed here, so nothing below runs TensorRT. The ``..._error_handling``
tests call parity's own checks with small fakes of the *library's API surface*: a runtime whose
``deserialize_cuda_engine`` returns None (as [PY Core/Runtime] documents on failure), a
``BuilderFlag`` namespace without ``FP16`` (as in TensorRT-RTX), a parser whose
``parse_from_file`` returned False, a builder whose ``build_serialized_network`` returned None.
They show that parity turns each documented failure value into one clear ``ParityError``;
they say nothing about what a real TensorRT returns or logs on a real GPU.
"""
from __future__ import annotations

import ast
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from parity import ParityError

from parity_builtin_tensorrt import config as C
from parity_builtin_tensorrt import loader as LD

PLUGIN = Path(LD.__file__).parent


# --------------------------------------------------------------------------- fakes of the library's API surface

class _Severity:
    """``ILogger.Severity``'s members; plain hashable values stand in for the pybind enum."""

    INTERNAL_ERROR = "INTERNAL_ERROR"
    ERROR = "ERROR"
    WARNING = "WARNING"
    INFO = "INFO"
    VERBOSE = "VERBOSE"


def _library(name: str = "tensorrt_rtx", version: str = "1.0.0", flags=("INT8", "TF32", "BF16"),
             deserialize_logs: str | None = None) -> types.ModuleType:
    """A module with the few names the loader touches: ``ILogger``, ``Runtime``, ``BuilderFlag``."""
    m = types.ModuleType(name)
    m.__version__ = version

    class ILogger:
        Severity = _Severity

        def __init__(self) -> None:
            pass

    class Runtime:
        def __init__(self, logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            if deserialize_logs:
                self.logger.log(_Severity.ERROR, deserialize_logs)
            return None

    m.ILogger = ILogger
    m.Runtime = Runtime
    m.BuilderFlag = types.SimpleNamespace(**{f: f"BuilderFlag.{f}" for f in flags})
    return m


@pytest.fixture
def fresh_loggers(monkeypatch):
    """Each test gets its own process-wide logger table (a fake library must not leak into a real one)."""
    monkeypatch.setattr(LD, "_LOGGERS", {})


# --------------------------------------------------------------------------- error handling

def test_engine_that_fails_to_deserialize_error_handling(tmp_path, fresh_loggers, capsys):
    """Exercises parity's handling of a documented library return value: ``Runtime.deserialize_cuda_engine``
    returning None, with the reason logged through the ILogger parity gave the library (a message
    like TensorRT-RTX's "does not support this compute capability")."""
    said = "Error Code 1: Internal Error (this engine does not support this compute capability)"
    trt = _library(deserialize_logs=said)
    built = LD.BuiltEngine(b"plan", "{}", {}, model="cnn.onnx", target="trt-fp16", cache_dir=tmp_path / "trt")
    with pytest.raises(ParityError) as e:
        LD.load_engine(trt, built)
    msg = str(e.value)
    assert "\n" not in msg and "NoneType" not in msg
    assert msg.startswith("TensorRT-RTX failed deserializing the engine built for trt-fp16 from cnn.onnx: ")
    assert "does not support this compute capability" in msg
    # an unsupported GPU is named as such: deleting the cache would not help
    assert msg.endswith("Note: the engine was built; this GPU's compute capability is not supported by "
                        "TensorRT-RTX: run on a GPU it supports, or use another target")
    assert built.loaded is None
    # the library's message was also shown as the library logged it
    assert "[TensorRT-RTX] [E] " + said in capsys.readouterr().err


def test_a_stale_cached_engine_names_the_cache_to_delete_error_handling(tmp_path, fresh_loggers):
    """Exercises parity's handling of ``deserialize_cuda_engine`` returning None for another reason (a plan
    from another library version): the note names the engine cache to delete."""
    trt = _library("tensorrt", "10.16.0", deserialize_logs="version tag mismatch")
    built = LD.BuiltEngine(b"plan", "{}", {}, model="cnn.onnx", target="trt-fp16", cache_dir=tmp_path / "trt")
    with pytest.raises(ParityError) as e:
        LD.load_engine(trt, built)
    msg = str(e.value)
    assert msg == (f"TensorRT failed deserializing the engine built for trt-fp16 from cnn.onnx: version tag "
                   f"mismatch. Note: delete {tmp_path / 'trt'} and run again")


def test_deserialize_without_a_logged_reason_or_raising_error_handling():
    """Exercises parity's handling of a documented library return value (None, nothing logged), and
    of a binding that raises instead."""
    log = LD.ErrorLog()
    log.add("an error from an earlier step")  # logged before this step: not quoted
    runtime = types.SimpleNamespace(deserialize_cuda_engine=lambda data: None)
    with pytest.raises(ParityError) as e:
        LD.deserialize_engine(runtime, b"plan", "m.onnx", "trt-int8", "TensorRT", log)
    assert str(e.value) == ("TensorRT failed deserializing the engine built for trt-int8 from m.onnx. "
                            "Note: see the library's log above")

    def boom(data):
        raise RuntimeError("plan magic mismatch\nsecond line")

    with pytest.raises(ParityError, match=r"from m\.onnx: RuntimeError: plan magic mismatch\. Note") as e:
        LD.deserialize_engine(types.SimpleNamespace(deserialize_cuda_engine=boom), b"plan", "m.onnx", "trt-int8")
    assert "second line" not in str(e.value)
    engine = object()
    assert LD.deserialize_engine(types.SimpleNamespace(deserialize_cuda_engine=lambda d: engine), b"p", "m", "t") \
        is engine


def test_builder_flag_the_library_lacks_error_handling():
    """Exercises parity's handling of a library without a ``BuilderFlag`` member (TensorRT-RTX has no FP16)."""
    trt = _library(flags=("INT8", "TF32"))
    with pytest.raises(ParityError) as e:
        LD.builder_flag(trt, "FP16", "trt-fp16")
    msg = str(e.value)
    assert "\n" not in msg and "AttributeError" not in msg
    assert msg.startswith("TensorRT-RTX 1.0.0 has no BuilderFlag.FP16, which trt-fp16 needs.")
    assert LD.builder_flag(trt, "INT8", "trt-int8") == "BuilderFlag.INT8"
    # every flag a precision asks for is looked up by name, so each is covered by the same check
    for f in C.engine_config("fp16").builder_flags:
        with pytest.raises(ParityError, match=f"no BuilderFlag.{f}"):
            LD.builder_flag(_library(flags=()), f, "trt-fp16")


def test_build_returning_none_error_handling():
    """Exercises parity's handling of a documented library return value: ``build_serialized_network`` -> None."""
    with pytest.raises(ParityError) as e:
        LD.check_serialized(None, "cnn.onnx", "trt-bf16", "TensorRT",
                            ["an earlier warning-free error", "Error Code 4: Internal Error (no tactic)\ndetails"])
    msg = str(e.value)
    assert msg.startswith("TensorRT could not build the trt-bf16 engine for cnn.onnx: Error Code 4: Internal "
                          "Error (no tactic). Note:") and "\n" not in msg
    with pytest.raises(ParityError, match=r"engine for cnn\.onnx\. Note"):
        LD.check_serialized(None, "cnn.onnx", "trt-bf16")
    assert LD.check_serialized(memoryview(b"plan"), "cnn.onnx", "trt-bf16") == b"plan"  # IHostMemory is a buffer


def test_onnx_parser_errors_error_handling():
    """Exercises parity's handling of a documented library return value: ``parse_from_file`` -> False,
    with the reasons in ``num_errors`` / ``get_error(i)``."""
    errs = ["In node 3 with name: /attn/Einsum and operator: Einsum (parseNode): UNSUPPORTED_NODE: "
            "equation not supported", "In node 4 (parseGraph): INVALID_NODE: skipped"]
    parser = types.SimpleNamespace(num_errors=len(errs), get_error=lambda i: errs[i])
    with pytest.raises(ParityError) as e:
        LD.check_parsed(False, parser, "encoder.onnx", "TensorRT-RTX")
    msg = str(e.value)
    assert msg.startswith("TensorRT-RTX's ONNX parser rejected encoder.onnx: In node 3 with name: /attn/Einsum")
    assert "equation not supported (1 more). Note:" in msg and "INVALID_NODE" not in msg
    with pytest.raises(ParityError, match=r"rejected m\.onnx: it gave no reason\. Note"):
        LD.check_parsed(False, types.SimpleNamespace(num_errors=0, get_error=None), "m.onnx")
    LD.check_parsed(True, None, "m.onnx")  # parsed: nothing to say


def test_execution_context_none_error_handling():
    """Exercises parity's handling of a documented library return value: ``create_execution_context`` -> None."""
    with pytest.raises(ParityError, match=r"TensorRT could not create an execution context for the trt-fp16 "
                                          r"engine of m\.onnx\. Note: usually out of GPU memory"):
        LD.check_context(None, "the trt-fp16 engine of m.onnx")
    ctx = object()
    assert LD.check_context(ctx, "x") is ctx


def test_error_log_quotes_only_what_a_step_logged(fresh_loggers, capsys):
    log = LD.ErrorLog(keep=3)
    log.add("old")
    mark = log.mark()
    for m in ("a", "b", "c", "d"):
        log.add(m)
    assert log.since(mark) == ["b", "c", "d"]  # bounded: the oldest go first
    assert log.since(log.mark()) == []
    # the ILogger subclass records errors only, prints warnings and errors, and is one per library
    trt = _library(name="tensorrt")
    logger = LD._logger(trt)
    assert LD._logger(trt) is logger and isinstance(logger, trt.ILogger)
    m = logger.errors.mark()
    logger.log(_Severity.INFO, "chatter")
    logger.log(_Severity.WARNING, "careful")
    logger.log(_Severity.INTERNAL_ERROR, "broken")
    assert logger.errors.since(m) == ["broken"]
    assert capsys.readouterr().err.splitlines() == ["[TensorRT] [W] careful", "[TensorRT] [E] broken"]


def test_library_names_for_messages_and_the_engine_cache():
    assert LD.library_label(_library("tensorrt", "10.16.0")) == "TensorRT 10.16.0"
    assert LD.library_label(_library("tensorrt_rtx", "1.1.1")) == "TensorRT-RTX 1.1.1"
    # the library is part of the cache key: the same version number of two libraries never shares an engine
    e = C.engine_config("fp16")
    assert C.cache_key("m", e, "1.0", {"library": "TensorRT"}) != C.cache_key("m", e, "1.0", {"library": "TensorRT-RTX"})


# --------------------------------------------------------------------------- one digest

def _tiny() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(np.arange(1, 5, dtype=np.float32).reshape(1, 4), name="w")  # raw_data
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"], name="add")], "g", [x], [y], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_engine_cache_uses_the_shared_model_digest(tmp_path):
    from parity.lib.onnx.util import model_digest

    p = tmp_path / "tiny.onnx"
    onnx.save(_tiny(), str(p))
    assert C.onnx_digest(p) == model_digest(p)
    ext = tmp_path / "ext.onnx"
    onnx.save(_tiny(), str(ext), save_as_external_data=True, location="ext.data", size_threshold=0)
    assert (tmp_path / "ext.data").is_file()
    assert C.onnx_digest(ext) == model_digest(ext) != model_digest(p)
    with pytest.raises(ParityError, match="cannot read ONNX model"):
        C.onnx_digest(tmp_path / "absent.onnx")


# --------------------------------------------------------------------------- layering

def _imports(path: Path) -> set[str]:
    """Modules a file imports (relative ones as ``.name``), TYPE_CHECKING blocks included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.add(base)
            if node.level and not node.module:
                found.update("." + a.name for a in node.names)
    return found


def test_plugin_imports_only_parity_contract_and_lib():
    files = sorted(PLUGIN.glob("*.py"))
    assert {f.name for f in files} >= {"loader.py", "runner.py", "source.py", "local.py"}
    for f in files:
        for mod in _imports(f):
            assert not mod.startswith(("parity.core", "parity_builtin_")), (f.name, mod)
            if mod.startswith("parity."):
                assert mod.startswith(("parity.contract", "parity.lib")), (f.name, mod)
    # no cycle through the source: the pieces it adapts never import it
    for name in ("loader.py", "runner.py", "local.py", "config.py"):
        assert ".source" not in _imports(PLUGIN / name), name
    assert ".runner" not in _imports(PLUGIN / "loader.py") and ".local" not in _imports(PLUGIN / "runner.py")

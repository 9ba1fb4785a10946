"""Typed answers instead of parsed names: a stage's kind and aliases (``Source.stage_kind``,
``Source.stage_aliases``) and a local run's number format (``meta["number_format"]``).

Checked: every built-in source's kind (the table ``--stages`` printed before the attribute existed);
a third-party source whose name reads like another kind gets its declared kind and its declared
aliases; an alias after a base that does not declare it is refused; a local run's saturations are
counted in the format its source stamped, whatever its older ``precision`` string says, and that
string is still read where no typed format was written (results of older sources).
"""
from __future__ import annotations

import numpy as np
import pytest

from parity import hookimpl
from support import plugged
from parity.contract.capability import NumberFormat, StageKind
from parity.contract.errors import UsageError
from parity.contract.records import LocalResult
from parity.contract.report import NEW_NONFINITE
from parity.contract.source import Source
from parity.core import registry as plugins
from parity.core.causes import FORMATS, SATURATED
from parity.core.diagnose import score_local
from parity.core.stages import kind_of, resolve

#: what kind of step each built-in source is (the staged report's column heads)
BUILTIN_KINDS = {
    "torch": "stage", "torch-fp16": "precision", "torch-bf16": "precision",
    "ort": "runtime", "ort-fp16": "runtime", "ort-int8": "runtime", "ort-fp16-strict": "export",
    "trt-fp32": "runtime", "trt-fp16": "runtime", "trt-bf16": "runtime", "trt-int8": "runtime",
    "trt-tf32": "runtime", "trt-rtx-fp16": "runtime",
    "modelopt": "quantization", "modelopt-int8": "quantization", "modelopt-fp8": "quantization",
    "modelopt-int8-qdq": "export", "modelopt-int8-ort": "runtime",
}


@pytest.mark.parametrize("name", sorted(BUILTIN_KINDS))
def test_every_builtin_source_declares_its_stage_kind(name):
    src = plugins.get_source(name)
    assert isinstance(src.stage_kind, StageKind)
    assert kind_of(name) == kind_of(src) == BUILTIN_KINDS[name]


def test_builtin_aliases_are_declared_by_the_base_stage():
    assert resolve(["torch-fp16", "onnx-fp16", "ort", "trt"]) == ["torch-fp16", "ort-fp16-strict", "ort-fp16",
                                                                   "trt-fp16"]
    assert resolve(["modelopt-int8", "trt"]) == ["modelopt-int8", "trt-int8"]
    # every alias names a registered source
    for name, src in plugins.all_of("source").items():
        for alias, target in src.stage_aliases.items():
            assert target in plugins.all_of("source"), (name, alias, target)
    with pytest.raises(UsageError, match="'onnx-fp16' does not follow 'torch-bf16'. Note: after torch-bf16: trt"):
        resolve(["torch-bf16", "onnx-fp16"])


class _Staged(Source):
    """A third-party source whose name reads like one kind while it declares another."""

    def __init__(self, name: str, kind: StageKind, aliases: dict[str, str]) -> None:
        self.name = name  # type: ignore[misc]
        self.stage_kind = kind
        self.stage_aliases = aliases


class _Plugin:
    @hookimpl
    def register_sources(self, register):
        register(_Staged("ort-acme", StageKind.QUANTIZATION, {"ort": "ort-int8"}), name="ort-acme")
        register(_Staged("torch-acme-qdq", StageKind.RUNTIME, {}), name="torch-acme-qdq")


@pytest.fixture
def acme():
    yield from plugged(_Plugin(), "acme-stages")


def test_the_kind_is_the_attribute_never_the_name(acme):
    assert kind_of("ort-acme") == "quantization"  # the name reads like a runtime
    assert kind_of("torch-acme-qdq") == "runtime"  # the name reads like an export
    assert kind_of("no-such-source") == "stage"
    # a quantization stage is a base: its own aliases apply after it
    assert resolve(["ort-acme", "ort"]) == ["ort-acme", "ort-int8"]
    # a runtime is no base: an alias after it alone has nothing to follow
    with pytest.raises(UsageError, match="'ort' needs a precision stage before it"):
        resolve(["torch-acme-qdq", "ort"])


def _saturations(meta):
    """SATURATED of one local run: reference 1e5 (beyond fp16's max), target inf there, stored float32."""
    ref = np.array([1e5, 1.0, 2.0, -3.0], np.float32)
    tgt = np.array([np.inf, 1.0, 2.0, -3.0], np.float32)
    [(_, values)] = list(score_local([LocalResult("x", ref, tgt, meta=meta)], []))
    sat = values.get(SATURATED, 0.0)
    assert values[NEW_NONFINITE] == 1.0 - sat  # the inf is a saturation or a new non-finite, never both
    return sat


def test_local_format_is_the_typed_number_format():
    # independent count: reference finite beyond fp16's max where the target is the same-signed inf
    expected = int(np.count_nonzero((np.float32(1e5) > FORMATS["float16"]["max"]) & np.isinf(np.float32(np.inf))))
    assert expected == 1
    assert _saturations({"number_format": "fp16"}) == expected
    # the typed value wins over the older string: int8 has no float range, fp32's range holds 1e5
    assert _saturations({"number_format": "int8", "precision": "fp16"}) == 0
    assert _saturations({"number_format": "fp32", "precision": "fp16"}) == 0
    # results written without the typed value (older sources) still read their precision string
    assert _saturations({"precision": "fp16-strict"}) == expected
    assert _saturations({"number_format": "fp64-someday"}) == 0  # unknown format: the dtype says float32


def test_local_runs_are_judged_in_their_sources_number_format():
    # the core passes the typed number_format of the source that ran the layers alone
    src = plugins.get_source("ort-fp16")
    ref = np.array([1e5, 1.0, 2.0, -3.0], np.float32)
    tgt = np.array([np.inf, 1.0, 2.0, -3.0], np.float32)
    [(_, values)] = list(score_local([LocalResult("x", ref, tgt)], [], number_format=src.number_format))
    assert NumberFormat(src.number_format) is NumberFormat.FP16 and values.get(SATURATED) == 1.0
    # no format given and none carried: the run's dtype (float32) holds 1e5, so nothing saturates
    [(_, plain)] = list(score_local([LocalResult("x", ref, tgt)], []))
    assert plain.get(SATURATED, 0.0) == 0.0
    # a run's own typed value wins over its source's
    [(_, own)] = list(score_local([LocalResult("x", ref, tgt, meta={"number_format": "fp32"})], [],
                                  number_format=src.number_format))
    assert own.get(SATURATED, 0.0) == 0.0

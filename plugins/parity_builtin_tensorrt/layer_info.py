"""Reader for TensorRT engine layer information (``trtexec --exportLayerInfo``, ``IEngineInspector``).

Both write the same JSON: ``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)``
returns it and ``trtexec --exportLayerInfo=FILE`` saves it. With
``ProfilingVerbosity.DETAILED`` (``trtexec --profilingVerbosity=detailed``) each layer is an
object::

    {"Layers": [{"Name": "Conv_0 + Relu_1", "LayerType": "CaskConvolution",
                 "Inputs":  [{"Name": "input.1", "Location": "Device", "Dimensions": [32, 3, 224, 224],
                              "Format/Datatype": "Row major linear FP32"}],
                 "Outputs": [{"Name": "onnx::MaxPool_125", ...}],
                 "Metadata": "[ONNX Layer: Conv_0]\\x1f[ONNX Layer: Relu_1]",
                 "TacticName": "...", ...}, ...],
     "Bindings": ["input.1", "191"]}

With the default verbosity (``LAYER_NAMES_ONLY``) ``Layers`` is a list of names only.
``Metadata`` (TensorRT >= 10 with the ONNX parser) lists the ONNX nodes a layer came
from, entries separated by ``\\x1f`` (``\\x1e`` between groups). The field names were
checked against engine graphs published with TensorRT's trt-engine-explorer examples
(``tools/experimental/trt-engine-explorer/examples/*/*.graph.json``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.contract.errors import ParityError

_METADATA_ENTRY = re.compile(r"\[ONNX Layer: (.*?)\](?=$|\[ONNX Layer: |[\x1e\x1f])", re.S)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...] | None = None
    format: str | None = None
    location: str | None = None


@dataclass(frozen=True)
class LayerInfo:
    """One engine layer as the inspector reports it."""

    name: str
    layer_type: str | None = None
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()
    metadata: str | None = None
    tactic: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def onnx_nodes(self) -> list[str]:
        """ONNX node names from ``Metadata`` (empty when TensorRT recorded none)."""
        return parse_metadata(self.metadata)


@dataclass
class EngineInfo:
    """The engine's layers in execution order, its I/O tensor names, and where it came from."""

    layers: list[LayerInfo]
    bindings: list[str]
    detailed: bool
    source: str = "<memory>"


def parse_metadata(metadata: str | None) -> list[str]:
    """ONNX node names from a layer's ``Metadata``: ``[ONNX Layer: a]\\x1f[ONNX Layer: b]`` -> [a, b]."""
    if not metadata:
        return []
    out: list[str] = []
    for part in re.split(r"[\x1e\x1f]", metadata):
        part = part.strip()
        if not part:
            continue
        found = _METADATA_ENTRY.findall(part)
        for name in found:
            if name and name not in out:
                out.append(name)
    return out


def _format_datatype(desc: dict[str, Any]) -> str | None:
    v = desc.get("Format/Datatype")
    return str(v) if v is not None else None


def _tensor(desc: Any, where: str) -> TensorInfo:
    if isinstance(desc, str):
        return TensorInfo(desc)
    if not isinstance(desc, dict) or "Name" not in desc:
        raise ParityError(f"{where}: a tensor entry is not an object with a Name. Note: expected "
                          f'{{"Name": ..., "Dimensions": [...], "Format/Datatype": ...}}, saw {str(desc)[:80]}')
    dims = desc.get("Dimensions")
    return TensorInfo(str(desc["Name"]),
                      tuple(int(d) for d in dims) if isinstance(dims, list) else None,
                      _format_datatype(desc), desc.get("Location"))


def engine_info_from_json(doc: Any, source: str = "<memory>") -> EngineInfo:
    """Parse an already-decoded layer-information document (dict with ``Layers``, or a bare list)."""
    where = source
    if isinstance(doc, dict) and "Layers" in doc:
        raw_layers = doc["Layers"]
        bindings = doc.get("Bindings") or []
    elif isinstance(doc, dict) and "Name" in doc:  # one layer from get_layer_information
        raw_layers, bindings = [doc], []
    elif isinstance(doc, list):
        raw_layers, bindings = doc, []
    else:
        keys = ", ".join(list(doc)[:6]) if isinstance(doc, dict) else type(doc).__name__
        raise ParityError(f"{where}: not TensorRT layer information. Note: expected a JSON object with "
                          f"\"Layers\" (trtexec --exportLayerInfo / IEngineInspector), saw {keys}")
    if not isinstance(raw_layers, list):
        raise ParityError(f"{where}: \"Layers\" is not a list. Note: expected the JSON written by "
                          f"trtexec --exportLayerInfo")
    layers: list[LayerInfo] = []
    detailed = False
    for i, item in enumerate(raw_layers):
        if isinstance(item, str):
            layers.append(LayerInfo(item))
            continue
        if not isinstance(item, dict) or "Name" not in item:
            raise ParityError(f"{where}: layer #{i} is neither a name nor an object with a Name. "
                              f"Note: saw {str(item)[:80]}")
        detailed = True
        lw = f"{where} layer {item['Name']!r}"
        layers.append(LayerInfo(
            name=str(item["Name"]),
            layer_type=str(item["LayerType"]) if item.get("LayerType") is not None else None,
            inputs=tuple(_tensor(t, lw) for t in item.get("Inputs") or []),
            outputs=tuple(_tensor(t, lw) for t in item.get("Outputs") or []),
            metadata=str(item["Metadata"]) if item.get("Metadata") else None,
            tactic=str(item.get("TacticName")) if item.get("TacticName") is not None else None,
            raw=item))
    bind = [b if isinstance(b, str) else str(b.get("Name", b)) if isinstance(b, dict) else str(b) for b in bindings]
    return EngineInfo(layers, bind, detailed, source)


def read_layer_info(src: str | Path | dict | list) -> EngineInfo:
    """Read ``trtexec --exportLayerInfo`` output (a path), a JSON string, or a decoded document."""
    if isinstance(src, (dict, list)):
        return engine_info_from_json(src)
    if isinstance(src, Path) or (isinstance(src, str) and not src.lstrip().startswith(("{", "["))):
        p = Path(src)
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise ParityError(f"cannot read TensorRT layer information {p}: {e.strerror or e}") from e
        where = str(p)
    else:
        text, where = str(src), "<layer information>"
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ParityError(f"{where}: not valid JSON ({e.msg} at line {e.lineno}). Note: expected the file "
                          f"written by trtexec --exportLayerInfo=FILE --profilingVerbosity=detailed") from None
    return engine_info_from_json(doc, where)

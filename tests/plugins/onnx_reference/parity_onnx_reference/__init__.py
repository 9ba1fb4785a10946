"""parity-onnx-reference: a third-party source that runs models with ONNX's own reference evaluator.

A test fixture standing for "a new ONNX consumer" (OpenVINO, say): it is one plugin package that
imports only parity's contract and its shared ONNX library — export with provenance, graph
surgery, module scopes — and no other plugin. `onnx.reference.ReferenceEvaluator` is a
genuinely different ONNX implementation from ONNX Runtime.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Iterator

import numpy as np

from parity import hookimpl
from parity.contract.errors import ParityError, first_line
from parity.contract.records import Activation
from parity.contract.source import InputSpec, RunConfig, Source
from parity.lib.onnx.graph import FLOAT_TYPES, captured_sites, load_model, with_outputs
from parity.lib.onnx.models import onnx_input_specs, onnx_model_for
from parity.lib.onnx.provenance import module_output_calls


class OnnxReferenceSource(Source):
    name = "onnx-reference"
    description = "ONNX's reference evaluator (onnx.reference), every intermediate tensor"

    def check(self) -> str | None:
        return None if importlib.util.find_spec("onnx") else "needs onnx"

    def input_specs(self, cfg: RunConfig) -> list[InputSpec]:
        return onnx_input_specs(cfg)

    def run(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Activation]:
        from onnx.reference import ReferenceEvaluator

        path, module_names = onnx_model_for(cfg, feed)
        model = load_model(path)
        outputs = {o.name: i for i, o in enumerate(model.graph.output)}
        calls = module_output_calls(model, module_names)
        sites = captured_sites(model)
        names = [s.name for s in sites]
        try:
            values = ReferenceEvaluator(with_outputs(model, names)).run(names, dict(feed))
        except Exception as e:  # noqa: BLE001 - the evaluator raises many types; one line for the user
            raise ParityError(f"onnx.reference failed running {path.name}: {first_line(e, typed=True)}") from None
        for site, arr in zip(sites, values):
            arr = np.asarray(arr)
            if site.name not in outputs and str(arr.dtype) not in FLOAT_TYPES:
                continue
            scopes = calls.get(site.name, [])
            meta: dict[str, Any] = {"onnx_node": site.node_name, "onnx_op": site.op_type,
                                    "module_path": scopes[0][0] if scopes else None,
                                    "scopes": [p for p, _ in scopes],
                                    "module_calls": [[p, c] for p, c in scopes],
                                    "is_output": site.name in outputs}
            if site.name in outputs:
                meta["output_position"] = outputs[site.name]
            yield Activation(name=site.name, array=arr, order=site.node_index, op_type=site.op_type, meta=meta)


@hookimpl
def register_sources(register):  # type: ignore[no-untyped-def]
    register(OnnxReferenceSource())

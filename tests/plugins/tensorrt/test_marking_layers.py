"""``--layers`` in TensorRT marking (issue 12 item 5): pure selection code, tested without TensorRT
on a real exported BERT (the ONNX graph the TensorRT parser turns into layers, one per node)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("onnx")
pytest.importorskip("torch")

from parity.contract.source import LayerSelection, RunConfig  # noqa: E402
from parity.lib.onnx.graph import load_model  # noqa: E402
from parity.lib.onnx.models import onnx_model_for  # noqa: E402
from parity.lib.onnx.provenance import module_output_calls  # noqa: E402
from parity_builtin_tensorrt import marking as M  # noqa: E402

ZOO = Path(__file__).resolve().parents[2] / "models" / "real_zoo.py"
SELF1 = "bert.encoder.layer.1.attention.self"


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    cfg = RunConfig(model=f"{ZOO}:bert", workdir=tmp_path_factory.mktemp("trt_marking"))
    feed = {"input_ids": np.random.default_rng(0).integers(0, 90, size=(2, 16)).astype(np.int64)}
    path, names = onnx_model_for(cfg, feed)
    model = load_model(path)
    aliases = {t: [p for p, _ in calls] for t, calls in module_output_calls(model, names).items()}
    return M.describe_onnx(model), aliases


def test_layers_mark_only_the_selected_tensors_and_the_outputs(bert):
    layers, aliases = bert
    full = M.select_tensors(layers)
    sel = LayerSelection(pattern=SELF1.replace(".", r"\."))
    part = M.select_tensors(layers, selection=sel, aliases=aliases)
    outputs = {t.name for lay in layers for t in lay.outputs if t.is_network_output}
    expected = [t for t in full.tensors if t in outputs
                or sel.selects(t, full.layer_of[t], *aliases.get(t, ()))]
    assert part.tensors == expected  # same order, exactly the selected ones of the full marking
    assert outputs <= set(part.tensors) and len(outputs) < len(part.tensors) < len(full.tensors)
    # the module path alone selected some (their tensor and node names do not carry it)
    by_module = [t for t in part.tensors if t not in outputs and not sel.selects(t, part.layer_of[t])]
    assert by_module
    left = [t for t, why in part.skipped.items() if why == "not selected by --layers"]
    assert set(left) == set(full.tensors) - set(part.tensors)


def test_layers_by_exact_names_and_no_selection(bert):
    layers, aliases = bert
    full = M.select_tensors(layers)
    assert M.select_tensors(layers, selection=None, aliases=aliases).tensors == full.tensors
    inner = [t for t in full.tensors if t not in {o.name for lay in layers for o in lay.outputs
                                                  if o.is_network_output}]
    pick = inner[5]
    part = M.select_tensors(layers, selection=LayerSelection(names=frozenset({full.layer_of[pick]})))
    assert pick in part.tensors
    assert all(t == pick or full.layer_of[t] == full.layer_of[pick]
               or any(o.name == t and o.is_network_output for lay in layers for o in lay.outputs)
               for t in part.tensors)


def test_the_runner_hands_layers_and_aliases_to_the_engine_config(bert, tmp_path):
    """The wiring TensorRT runs use: --layers enters the engine's build fields (its cache key), the
    aliases (node, enclosing module, module outputs) do not, and select the same tensors."""
    from dataclasses import replace

    import onnx

    from parity_builtin_tensorrt.config import engine_config
    from parity.lib.onnx.provenance import layer_aliases, module_provenance

    layers, _ = bert
    cfg = RunConfig(model=f"{ZOO}:bert", workdir=tmp_path)
    feed = {"input_ids": np.random.default_rng(0).integers(0, 90, size=(2, 16)).astype(np.int64)}
    path, names = onnx_model_for(cfg, feed)
    graph = onnx.load(str(path), load_external_data=False)
    aliases = layer_aliases(graph, *module_provenance(graph, names))
    node0 = graph.graph.node[0]
    assert node0.name in aliases[node0.output[0]]
    assert any(SELF1 in a for v in aliases.values() for a in v)
    base = engine_config("fp16")
    assert base.selection() is None
    ecfg = replace(base, layers_pattern=SELF1.replace(".", r"\."), aliases=aliases)
    assert ecfg.build_fields()["layers_pattern"] == ecfg.layers_pattern and "aliases" not in ecfg.build_fields()
    assert ecfg.build_fields() != base.build_fields()  # another engine: other tensors are marked
    part = M.select_tensors(layers, ecfg, selection=ecfg.selection(), aliases=ecfg.aliases)
    full = M.select_tensors(layers)
    assert 0 < len(part.tensors) < len(full.tensors)

"""``--layers`` in the torch source: only the selected modules are hooked and copied; model outputs are
always kept; every kept record holds exactly what the full capture holds."""
import re

import numpy as np
import pytest
import torch

from parity.contract.source import LayerSelection, RunConfig
from parity_builtin_torch import capture as cap
from parity_builtin_torch.source import TorchSource
from support import ZOO, load_zoo


def _run(model, sel, mode, tmp_path):
    shape = getattr(load_zoo(), model)().parity_input_shapes["x"]
    feed = {"x": np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
    cfg = RunConfig(model=f"{ZOO}:{model}", workdir=tmp_path / "cache", options={"torch_capture": mode}, layers=sel)
    return {a.key: a for a in TorchSource("fp32").run(cfg, feed)}


def _check(full, part, want):
    """``part`` holds exactly the records of ``full`` that ``want(record)`` says, plus the outputs, bit for bit."""
    expected = {k for k, a in full.items() if want(a) or a.meta.get("is_output")}
    assert set(part) == expected
    assert 0 < len(expected) - 1 < len(full) - 1  # the selection kept some layers and left some out
    for k, a in part.items():
        assert a.array.dtype == full[k].array.dtype and a.array.tobytes() == full[k].array.tobytes()
        assert a.name == full[k].name and a.op_type == full[k].op_type and a.meta == full[k].meta


@pytest.mark.parametrize("model,pattern", [("resnet", r"^layer1\.1\."), ("encoder", r"attn\.(qkv|softmax)$")])
@pytest.mark.parametrize("mode", ["modules", "fx"])
def test_a_regex_captures_only_the_selected_modules_and_the_outputs(model, pattern, mode, tmp_path):
    full = _run(model, None, mode, tmp_path)
    part = _run(model, LayerSelection(pattern=pattern), mode, tmp_path)
    _check(full, part, lambda a: bool(re.search(pattern, a.meta.get("module_path") or "") or re.search(pattern, a.name)))


def test_exact_names_select_one_call_of_a_module_called_twice(tmp_path):
    # Basic.relu runs twice per block: layer1.0.relu and layer1.0.relu#1
    full = _run("resnet", None, "modules", tmp_path)
    assert {"layer1.0.relu", "layer1.0.relu#1"} <= set(full)
    part = _run("resnet", LayerSelection(names=frozenset({"layer1.0.relu#1", "fc"})), "modules", tmp_path)
    assert set(part) == {"layer1.0.relu#1", "fc", "output"}
    _check(full, part, lambda a: a.key in ("layer1.0.relu#1", "fc"))


def test_unselected_modules_carry_no_capture_hook(rng):
    """Less is captured, not filtered afterwards: a module the selection leaves out has no hook during the forward."""
    model = load_zoo().resnet().eval()
    seen: dict[str, int] = {}
    for path, m in model.named_modules():
        if path:  # a user hook that counts the hooks its module carries when it runs
            m.register_forward_hook(lambda mod, i, o, p=path: seen.__setitem__(p, len(mod._forward_hooks)))
    got = []
    rec = cap.Recorder(got.append, {}, layers=LayerSelection(pattern=r"^layer1\.0\.conv"))
    x = torch.from_numpy(rng.standard_normal((2, 3, 16, 16)).astype(np.float32))
    with torch.no_grad():
        cap.run_with_hooks(model, (x,), {}, rec)
    assert {p for p, n in seen.items() if n == 2} == {"layer1.0.conv1", "layer1.0.conv2"}
    assert all(n == 1 for p, n in seen.items() if p not in ("layer1.0.conv1", "layer1.0.conv2"))
    assert [a.name for a in got] == ["layer1.0.conv1", "layer1.0.conv2"]


@pytest.mark.parametrize("sel,path,hooked", [
    (LayerSelection(pattern=r"^stem$"), "stem", True),
    (LayerSelection(pattern=r"^stem$"), "fc", False),
    (LayerSelection(names=frozenset({"layer1.0.relu#1"})), "layer1.0.relu", True),
    (LayerSelection(names=frozenset({"fc:1"})), "fc", True),
    (LayerSelection(names=frozenset({"fc:1"})), "fc2", False),
    (LayerSelection(pattern=r"relu#1$"), "layer1.0.bn1", True),  # only the record's name can say
    (None, "anything", True),
])
def test_which_modules_are_hooked(sel, path, hooked):
    assert cap.may_select(sel, path) is hooked

"""The trust gate of the shared torch loader: a pickled whole module is loaded only on an explicit yes."""
from __future__ import annotations

import pytest
import torch

from parity import ParityError
from parity.contract.source import RunConfig
from parity.lib.torch_loader import load_torch_model


@pytest.fixture
def pickled_module(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(3, 2), path)  # a full pickle: loading it runs arbitrary code
    return path


@pytest.mark.parametrize("value", [None, False, "false", "no", "0", "off"])
def test_pickled_module_is_refused_unless_trusted(pickled_module, value):
    opts = {} if value is None else {"trust_model": value}
    with pytest.raises(ParityError, match="trust"):
        load_torch_model(RunConfig(model=str(pickled_module), options=opts))


@pytest.mark.parametrize("value", [True, "true", "yes", "1"])
def test_pickled_module_loads_when_trusted(pickled_module, value):
    loaded = load_torch_model(RunConfig(model=str(pickled_module), options={"trust_model": value}))
    x = torch.ones(1, 3)
    assert torch.equal(loaded.module(x), torch.load(pickled_module, weights_only=False)(x))


def test_a_non_boolean_trust_value_is_an_error(pickled_module):
    with pytest.raises(ParityError, match="trust_model='maybe' is not a yes/no value"):
        load_torch_model(RunConfig(model=str(pickled_module), options={"trust_model": "maybe"}))

"""A decoder that cannot run here refuses in one line naming itself and why, before loading anything."""
import pytest

from parity.contract.errors import ParityError
from parity.core.registry import all_of


def test_every_unavailable_decoder_refuses_with_its_reason(tmp_path):
    decoders = all_of("decoder")
    refused = 0
    for name, d in sorted(decoders.items()):
        why = d.available("cpu")
        if why is None:
            continue
        with pytest.raises(ParityError) as e:
            d.load(str(tmp_path / "missing.py:factory"), device="cpu", calibration=[[1, 2, 3]], workdir=str(tmp_path))
        assert str(e.value) == f"decoder {name}: {why}" and "\n" not in str(e.value)
        refused += 1
    assert refused >= 1  # torch-fp16 runs on a GPU only: on this CPU it must refuse

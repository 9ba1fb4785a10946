"""Every metric test runs twice: through the compiled (numba) fused kernel and through the numpy
chunk path (``PARITY_NO_NUMBA=1``), so both must agree with the independent references."""
from __future__ import annotations

import pytest

from parity.contract import fused


@pytest.fixture(autouse=True, params=["numba", "numpy"])
def kernel_path(request, monkeypatch):
    if request.param == "numpy":
        monkeypatch.setenv("PARITY_NO_NUMBA", "1")
    else:
        pytest.importorskip("numba")
        monkeypatch.delenv("PARITY_NO_NUMBA", raising=False)
        monkeypatch.setattr(fused, "MIN_COMPILED_SIZE", 0)  # small test pairs take the kernel too
    return request.param

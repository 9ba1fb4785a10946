"""Every metric test runs twice: through the compiled (numba) fused kernel and through the numpy
chunk path (``PARITY_NO_NUMBA=1``), so both must agree with the independent references."""
from __future__ import annotations

import pytest

from support import use_metric_path


@pytest.fixture(autouse=True, params=["numba", "numpy"])
def kernel_path(request, monkeypatch):
    use_metric_path(request.param, monkeypatch)
    return request.param

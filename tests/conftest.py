import numpy as np
import pytest

from parity.core import registry as plugins


@pytest.fixture(autouse=True)
def _fresh_registry():
    """Each test sees plugins as installed, whatever an earlier test registered."""
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def only_format_plugins(monkeypatch):
    """Load only the formats plugin, so other plugins' state cannot affect a test."""
    monkeypatch.setenv("PARITY_LOAD_PLUGINS", "formats")
    plugins.reset()
    yield
    plugins.reset()

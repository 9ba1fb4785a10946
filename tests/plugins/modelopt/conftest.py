import sys
from pathlib import Path

import pytest

pytest.importorskip("modelopt", reason="nvidia-modelopt is not installed (pip install 'parity[modelopt]')")
sys.path.insert(0, str(Path(__file__).parent))

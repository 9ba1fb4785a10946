"""The ModelOpt tests' models (mo_models.py) import as a top-level module; each test module skips,
with the reason, where nvidia-modelopt is not installed."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

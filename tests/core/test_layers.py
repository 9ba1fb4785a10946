"""The layers are enforced, not hoped for: import-linter's contracts (pyproject.toml) hold on the
tree, and a forbidden import planted in a copy of the tree breaks the named contract."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support import tool_command

ROOT = Path(__file__).resolve().parents[2]


def _lint(cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run(tool_command("lint-imports"), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_import_contracts_hold_on_the_tree():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "BROKEN" not in r.stdout and r.stdout.count("KEPT") >= 4


@pytest.mark.parametrize("where,line,contract", [
    ("parity/core/engine.py", "import parity_builtin_torch", "imports no plugin"),
    ("parity/contract/records.py", "import parity.core.engine", "Layers:"),
    ("parity/lib/onnx/graph.py", "import parity.core.compare", "Layers:"),
    ("plugins/parity_builtin_tensorrt/config.py", "import parity_builtin_onnxruntime", "No plugin imports another"),
    ("plugins/parity_builtin_formats/text.py", "import parity.core.dumps", "Plugins use only the contract"),
    ("parity/contract/records.py", "import numba", "The contract imports no framework"),
    ("parity/core/fix.py", "import onnx", "Core modules that need no framework"),
    ("parity/core/repro.py", "import parity.lib.onnx.graph", "Core modules that need no framework"),
    ("parity/core/compare.py", "import onnx", "Core modules that read model files"),
])
def test_a_forbidden_import_breaks_its_contract(tmp_path, where, line, contract):
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "parity", tmp_path / "parity", ignore=ignore)
    shutil.copytree(ROOT / "plugins", tmp_path / "plugins", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / where
    target.write_text(target.read_text() + f"\n{line}  # planted by the test\n")
    r = _lint(tmp_path, f"{tmp_path}{os.pathsep}{tmp_path / 'plugins'}")
    assert r.returncode != 0, r.stdout[-3000:]
    broken = [ln for ln in r.stdout.replace("\n", " ").split("KEPT") if "BROKEN" in ln]
    assert any(contract in b for b in broken), r.stdout[-3000:]
    assert line.split()[-1] in r.stdout  # the report names the planted import


def test_architecture_picture_matches_the_code():
    import sys
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_graph.py"), "--check",
                        str(ROOT / "docs" / "architecture.md")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr

"""A dump made elsewhere (Polygraphy, ONNX Runtime with every tensor marked) against parity's own torch
run of the same model on the replayed inputs: matched across the two naming schemes."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support import load_zoo, tool_command


ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "models" / "zoo.py"


def _run(cmd, cwd):
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r


@pytest.mark.parametrize("model", ["encoder", "resnet"])
def test_polygraphy_dump_replayed_against_torch(model, tmp_path):
    zoo = load_zoo()
    from parity.lib.onnx.export import export_onnx

    module = getattr(zoo, model)()
    shape = next(iter(module.parity_input_shapes.values()))
    onnx_path = export_onnx(module, {"x": np.zeros(shape, np.float32)}, tmp_path / "model.onnx")
    cmd = tool_command("polygraphy")
    _run(cmd + ["run", str(onnx_path), "--onnxrt", "--onnx-outputs", "mark", "all", "--save-outputs", "out.json",
                "--save-inputs", "in.json", "--input-shapes", f"x:{list(shape)}"], tmp_path)
    r = _run([sys.executable, "-m", "parity", "compare", f"{ZOO}:{model}", "--ref", "torch",
              "--target-dump", "out.json", "--target-onnx", str(onnx_path), "--inputs", "in.json",
              "--workdir", "cache", "--json", "r.json"], tmp_path)
    rep = json.loads((tmp_path / "r.json").read_text())
    matched = [l for l in rep["layers"] if l["ref_name"] and l["target_name"]]
    assert len(matched) >= 10
    for l in matched:
        assert l["values"]["cosine"] >= 0.99999, l
        assert l["match"] in ("provenance", "output", "exact"), l
        # the two naming schemes really differ: torch module paths vs ONNX tensor names
    assert sum(l["ref_name"] != l["target_name"] for l in matched) >= len(matched) - 2
    assert rep["summary"]["matched_by"].get("provenance", 0) >= len(matched) - 2
    assert "first divergence" not in r.stdout

"""`parity fix` output in the form each tool takes as-is, and the fixed ONNX model it writes."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support import load_zoo

from parity.core.fix import tool_forms

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "models" / "zoo.py"
NODES = ["node_Gemm_3", "/blocks.0/norm/LayerNormalization", "odd name,with:comma"]


def test_trtexec_form_is_its_exact_flags():
    args = shlex.split(tool_forms(NODES[:2])["trtexec"])
    assert args == ["--layerPrecisions=node_Gemm_3:fp32,/blocks.0/norm/LayerNormalization:fp32",
                    "--layerOutputTypes=node_Gemm_3:fp32,/blocks.0/norm/LayerNormalization:fp32",
                    "--precisionConstraints=obey"]


def test_polygraphy_form_parses_with_polygraphys_own_parser():
    from polygraphy.tools.args import util as args_util

    args = shlex.split(tool_forms(NODES)["polygraphy run / convert"])
    assert args[0] == "--layer-precisions" and args[-2:] == ["--precision-constraints", "obey"]
    # the shell hands each name:dtype through whole; Polygraphy splits at the last colon
    assert args_util.parse_arglist_to_dict(args[1:-2], allow_empty_key=False) == {n: "float32" for n in NODES}


def test_modelopt_patterns_name_exactly_their_node():
    text = tool_forms(NODES)["ModelOpt AutoCast"]
    pats = eval(text[text.index("nodes_to_exclude=") + len("nodes_to_exclude="):-1])
    others = ["node_Gemm_30", "x/blocks.0/norm/LayerNormalization", "/blocksX0/norm/LayerNormalization"]
    for p, n in zip(pats, NODES):
        assert re.match(p, n) and re.search(p, n)
        assert not any(re.search(p, o) for o in others + [m for m in NODES if m != n])


def _fp16_hazard_model():
    zoo = load_zoo()
    return zoo.fp16_hazard().eval()


def _cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_fix_writes_a_fixed_model_that_runs_and_meets_the_goal(tmp_path):
    import onnx
    import onnxruntime as ort
    import torch
    from onnxconverter_common import float16  # noqa: F401 - the ORT form's own name, evaluated below

    fixed = tmp_path / "out" / "fixed.onnx"
    r = subprocess.run([sys.executable, "-m", "parity", "fix", f"{ZOO}:fp16_hazard", "--ref", "torch",
                        "--target", "ort-fp16", "--workdir", str(tmp_path / "c"), "--write-model", str(fixed)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "--layerPrecisions=" in r.stdout and "--precisionConstraints=obey" in r.stdout
    assert "--layer-precisions " in r.stdout and ":float32" in r.stdout and "node_block_list=[" in r.stdout
    assert [p.name for p in fixed.parent.iterdir()] == ["fixed.onnx"]  # no temp sibling left

    model = onnx.load(str(fixed))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)  # still an fp16 model
    torch_model = _fp16_hazard_model()
    sess = ort.InferenceSession(str(fixed), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    for _ in range(3):  # inputs the search never saw
        x = rng.standard_normal((4, 16)).astype(np.float32)
        got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        with torch.no_grad():
            want = torch_model(torch.from_numpy(x)).numpy()
        assert np.isfinite(got).all() and _cosine(got, want) >= 0.999

    # the printed ONNX Runtime form, evaluated on the fp32 export, block-lists nodes that exist
    line = next(ln for ln in r.stdout.splitlines() if "convert_float_to_float16(model" in ln)
    nodes = eval(line[line.index("node_block_list=") + len("node_block_list="):-1])
    fp32 = [p for p in (tmp_path / "c").rglob("*.onnx") if "fp16" not in p.name]
    assert fp32
    names = {n.name for n in onnx.load(str(fp32[0])).graph.node}
    assert nodes and set(nodes) <= names


def test_write_model_refuses_a_torch_target(tmp_path):
    pytest.importorskip("torch")
    from parity.contract.errors import ParityError
    from parity.core.compare import CompareSettings
    from parity.core.fix import FixResult, write_fixed_model
    from parity.contract.report import LayerResult

    row = LayerResult(name="boost", ref_name="boost", target_name="boost", order=0)
    res = FixResult("cosine", 0.999, 0.0, 1.0, True, ["boost"], [row])
    s = CompareSettings(model=f"{ZOO}:fp16_hazard", ref="torch", target="torch-fp16", workdir=str(tmp_path))
    with pytest.raises(ParityError, match="--write-model .*not ONNX nodes"):
        write_fixed_model(s, res, str(tmp_path / "x.onnx"))
    assert not (tmp_path / "x.onnx").exists()

"""Where a warm ``parity compare --target ort*`` spends its ONNX Runtime time, step by step (cProfile).

    python benchmarks/ort_fixed_cost.py [--target ort|ort-fp16] [--depth 8] [--seq 512] [--batch 1]

The model is ``_models.build_encoder`` (compare_transformer.py's encoder). A first process runs
``parity compare SPEC --ref torch --target T`` to fill the workdir (export, fp16 model); a second,
fresh process runs the same compare under cProfile and prints, for the ONNX Runtime source, the
cumulative seconds of each step (resolve the fp32 model, convert, shape inference, build
sessions, ``session.run``) and how often each ran. "fixed" is the source's time minus
``session.run``. Run it with ``PYTHONPATH`` at another checkout to measure that one.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: (label, function-name suffix as pstats prints it) of the steps reported
STEPS = [
    ("ort source, all (capture)", "parity_builtin_onnxruntime/runner.py", "capture"),
    ("  plan (models, fetch map, steps)", "parity_builtin_onnxruntime/runner.py", "plan_capture"),
    ("    resolve fp32 model (torch load, export key)", "parity/lib/onnx/models.py", "onnx_model_for"),
    ("    onnx.load", "onnx/__init__.py", "load_model"),
    ("    target model (fp16 conversion / cache key)", "parity_builtin_onnxruntime/loader.py", "target_model"),
    ("    model digest (hash + parse)", "parity/lib/onnx/util.py", "_model_digest"),
    ("    shape inference", "onnx/shape_inference.py", "infer_shapes"),
    ("  build sessions", "parity/lib/onnx/session.py", "make_session"),
    ("  session.run", "parity/lib/onnx/session.py", "run_session"),
]


def _compare_argv(spec: str, target: str, workdir: str, out: str) -> list[str]:
    return ["compare", spec, "--ref", "torch", "--target", target, "--json", out, "--workdir", workdir, "-q"]


def profiled(spec: str, target: str, workdir: str) -> None:
    """In the child: one compare under cProfile; prints the ORT steps."""
    from parity.cli import main as cli

    prof = cProfile.Profile()
    out = os.path.join(workdir, "r.json")
    prof.enable()
    try:
        cli(_compare_argv(spec, target, workdir, out))
    except SystemExit:
        pass
    prof.disable()
    st = pstats.Stats(prof)
    rows = {}
    for (file, _line, fn), (_cc, nc, _tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        for label, suffix, name in STEPS:
            if fn == name and file.endswith(suffix):
                n, t = rows.get(label, (0, 0.0))
                rows[label] = (n + nc, max(t, ct))  # recursion-free here; max guards double listing
    total = rows.get(STEPS[0][0], (0, 0.0))[1]
    run = rows.get("  session.run", (0, 0.0))[1]
    print(f"target {target}: ORT source {total:.3f} s, session.run {run:.3f} s, fixed {total - run:.3f} s")
    for label, _s, _n in STEPS:
        n, t = rows.get(label, (0, 0.0))
        print(f"  {label:<50} {t:7.3f} s  x{n}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="ort")
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    from _models import EncoderShape, write_spec

    root = Path(a.workdir or tempfile.mkdtemp(prefix="ort_fixed_"))
    root.mkdir(parents=True, exist_ok=True)
    spec = write_spec(root, EncoderShape(depth=a.depth, seq=a.seq, batch=a.batch))
    wd = str(root / "wd")
    Path(wd).mkdir(exist_ok=True)
    env = dict(os.environ)
    subprocess.run([sys.executable, "-m", "parity", *_compare_argv(spec, a.target, wd, os.path.join(wd, "r.json"))],
                   env=env, check=False, capture_output=True)
    subprocess.run([sys.executable, __file__, "--child", spec, a.target, wd], env=env, check=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        profiled(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()

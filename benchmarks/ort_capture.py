"""Fixed cost and peak memory of the ONNX Runtime source's capture, per batch, against a bare session.

    python benchmarks/ort_capture.py [--batches 1,8,32] [--depth 6] [--seq 512] [--target fp32]
                                     [--step-bytes 256MiB] [--repeat 2]

The model is ``_models.build_encoder`` (MiniLM-sized at the defaults: 6 blocks, width 384, 6 heads),
given as a Python spec. Per batch, in fresh processes (``os.wait4``: wall and that child's peak RSS):

* **capture**: a process that builds ``OrtSource(target)`` and iterates ``run(cfg, feed)`` over
  one seeded feed, dropping each record as it comes (what the engine does once a pair is scored),
  with the export already cached in the workdir (a first, cold process makes it). It also reports,
  from inside, the seconds spent in ``InferenceSession.run`` and the sessions built: the fixed
  cost is the run's wall time minus that.
  torch, onnx and onnxruntime are imported before the clock starts (a compare run's torch
  reference imports them anyway); building the torch module to key the export cache is counted.
* **bare ORT**: ``_models.bare_ort`` on the same export: one session asked for the model output only.

Run it with ``PYTHONPATH`` pointing at another checkout to measure that one (the figures in
docs/benchmarks.md were taken this way on the commit before and after the change).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import EncoderShape, checked, child_json, machine_line, python_env, run_process, write_spec  # noqa: E402

MODELS_PY = str(Path(__file__).resolve().parent / "_models.py")


def child(spec: str, workdir: str, target: str, step_bytes: str, batch: int, seq: int, width: int) -> None:
    """In the child: one capture, records dropped as they come; prints a JSON line."""
    import numpy as np

    t0 = time.perf_counter()
    # a compare run has these imported by the time the ONNX Runtime source runs (the torch
    # reference imports torch): the fixed cost below is the source's own work, not imports
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401

    import parity_builtin_onnxruntime.runner as runner
    from parity.contract.source import RunConfig
    from parity_builtin_onnxruntime.source import OrtSource

    spent = {"run": 0.0, "runs": 0, "sessions": 0}
    real_run, real_make = runner.run_session, runner.make_session

    def run(*a, **k):
        t = time.perf_counter()
        try:
            return real_run(*a, **k)
        finally:
            spent["run"] += time.perf_counter() - t
            spent["runs"] += 1

    def make(*a, **k):
        spent["sessions"] += 1
        return real_make(*a, **k)

    runner.run_session, runner.make_session = run, make
    kw = {} if step_bytes == "-" else {"step_bytes": runner.parse_bytes(step_bytes)}
    cfg = RunConfig(model=spec, workdir=Path(workdir), **kw)
    feed = {"x": np.random.default_rng(0).standard_normal((batch, seq, width)).astype(np.float32)}
    t1 = time.perf_counter()
    n = nbytes = 0
    for a in OrtSource(target).run(cfg, feed):
        n += 1
        nbytes += a.array.nbytes
        del a
    t2 = time.perf_counter()
    print("BENCH-JSON " + json.dumps({"capture_s": t2 - t1, "import_s": t1 - t0, "session_run_s": spent["run"],
                      "runs": spent["runs"], "sessions": spent["sessions"], "records": n, "bytes": nbytes}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--target", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--step-bytes", default="-", help="RunConfig.step_bytes ('-': the source's default)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="keep exports here between invocations")
    a = ap.parse_args()
    env = python_env()
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    root = Path(a.workdir or tempfile.mkdtemp(prefix="ort_capture_"))
    print(machine_line())
    print(f"encoder depth {a.depth}, width 384, seq {a.seq}; target ort-{a.target}; step_bytes {a.step_bytes}")
    print("batch | capture wall s | session.run s | fixed cost s | sessions/runs | peak RSS MiB | "
          "bare ORT RSS MiB | captured MiB")
    for b in [int(x) for x in a.batches.split(",")]:
        shape = EncoderShape(depth=a.depth, seq=a.seq, batch=b)
        folder = root / f"b{b}"
        folder.mkdir(parents=True, exist_ok=True)
        spec = write_spec(folder, shape)
        wd = str(folder / "wd")
        argv = [sys.executable, __file__, "--child", spec, wd, a.target, a.step_bytes, str(b), str(a.seq), "384"]
        checked(run_process(argv, env=env), "cold capture (export)")
        best = None
        for _ in range(a.repeat):
            r = checked(run_process(argv, env=env), "capture")
            j = child_json(r)
            if best is None or r.maxrss < best[0].maxrss:
                best = (r, j)
        r, j = best
        onnx_path = str(sorted((Path(wd) / "onnx").glob("*.onnx"))[0])
        bo = checked(run_process([sys.executable, MODELS_PY, "bare-ort", onnx_path, "--shape", f"{b},{a.seq},384"],
                                 env=env), "bare ORT")  # without --shape the dynamic batch runs as 1
        print(f"{b} | {j['capture_s']:.2f} | {j['session_run_s']:.2f} | {j['capture_s'] - j['session_run_s']:.2f} | "
              f"{j['sessions']}/{j['runs']} | {r.maxrss / 2**20:.0f} | {bo.maxrss / 2**20:.0f} | {j['bytes'] / 2**20:.0f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7]),
              int(sys.argv[8]))
    else:
        main()

"""Cost of ``parity compare`` against the two bare forward passes it needs, on a transformer-like model.

    python benchmarks/compare_transformer.py [--depths 4,8,16] [--repeat 3] [--output-batch 32] [--no-phases]

The model is a pre-norm transformer encoder written with plain ``nn`` modules (q/k/v/proj
``Linear``, ``Softmax``, ``LayerNorm``, ``GELU`` MLP; width 384, 6 heads, 512 tokens, batch 1,
seeded), given to parity as a Python spec file (``encoder_dN.py:factory``, written to a
temporary folder) that declares its input shape. Every figure is a whole process, started
with ``subprocess`` and measured with ``os.wait4`` (wall clock from start to exit, and that
child's own peak resident set ``ru_maxrss``):

* **parity**: ``python -m parity compare SPEC --ref torch --target ort --json R.json -q
  --workdir W``. The first run in a fresh ``W`` is *cold*: it exports the model to ONNX
  (torch.onnx dynamo) and caches it. The following ``--repeat`` runs are *warm*: they find
  the export in ``W``, so export time is **not** in the warm figures.
* **bare torch**: a process that imports torch, builds the same model and runs one forward
  pass under ``no_grad`` (no hooks, no copies).
* **bare ORT**: a process that imports onnxruntime and runs one ``InferenceSession`` (default
  options, CPU) on parity's cached export from ``W``, asking only for the model output.

Both sides count interpreter start-up, imports and exit, as a user would see them. The ratio
is parity / (bare torch + bare ORT), over medians (and over minima). Per depth, one more
parity run happens in-process with its main steps timed (``_models.phases``; ``--no-phases``
skips it), and ``--output-batch N`` runs parity warm with ``--option ort_output_batch=N``
(ONNX Runtime captures N tensors per session run; 0 skips it).
Activation bytes come from the JSON report: the shapes and dtypes of every row, per side,
and of the rows that were scored (both sides of each matched pair).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import (EncoderShape, Series, checked, child_json, machine_line, mib, print_phase_steps,  # noqa: E402
                     python_env, report_bytes, run_process, versions, write_spec)

MODELS_PY = str(Path(__file__).resolve().parent / "_models.py")


def parity_argv(spec: str, target: str, workdir: Path, json_out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "parity", "compare", spec, "--ref", "torch", "--target", target,
            "--json", str(json_out), "--workdir", str(workdir), "-q", *extra]


def measure_depth(root: Path, shape: EncoderShape, repeat: int, output_batch: int, log) -> dict:
    env = python_env()
    spec = write_spec(root, shape)
    workdir = root / f"wd{shape.depth}"
    rjson = root / f"report{shape.depth}.json"
    log(f"depth {shape.depth}: cold parity run (exports to ONNX) ...")
    cold = checked(run_process(parity_argv(spec, "ort", workdir, rjson, []), env=env), "cold parity run")
    exports = sorted((workdir / "onnx").glob("*.onnx"))
    if len(exports) != 1:
        raise SystemExit(f"expected one cached export in {workdir / 'onnx'}, found {len(exports)}")
    onnx_path = str(exports[0])
    warm, bt, bo, batched = Series(), Series(), Series(), Series()
    bt_inner, bo_inner = [], []
    # interleave the kinds so that machine noise spreads over all of them
    for k in range(repeat):
        log(f"depth {shape.depth}: round {k + 1}/{repeat}")
        warm.runs.append(checked(run_process(parity_argv(spec, "ort", workdir, rjson, []), env=env),
                                 "warm parity run"))
        r = checked(run_process([sys.executable, MODELS_PY, "bare-torch", spec], env=env), "bare torch")
        bt.runs.append(r)
        bt_inner.append(child_json(r))
        r = checked(run_process([sys.executable, MODELS_PY, "bare-ort", onnx_path], env=env), "bare ORT")
        bo.runs.append(r)
        bo_inner.append(child_json(r))
        if output_batch:
            batched.runs.append(checked(run_process(parity_argv(
                spec, "ort", workdir, root / "batched.json",
                ["--option", f"ort_output_batch={output_batch}"]), env=env), "parity with ort_output_batch"))
    rep = json.loads(rjson.read_text())
    return {"shape": shape, "cold": cold, "warm": warm, "bare_torch": bt, "bare_ort": bo, "batched": batched,
            "bytes": report_bytes(rep), "onnx": onnx_path, "onnx_bytes": Path(onnx_path).stat().st_size,
            "bt_inner": bt_inner, "bo_inner": bo_inner, "spec": spec, "workdir": workdir}


def phases_run(res: dict, target: str = "ort", extra: list[str] | None = None) -> dict:
    argv = [sys.executable, MODELS_PY, "phases", res["spec"], "--target", target, "--workdir", str(res["workdir"])]
    for o in extra or []:
        argv += ["--option", o]
    r = checked(run_process(argv, env=python_env()), "in-process phase run")
    out = child_json(r)
    out["wall"] = r.wall
    out["maxrss"] = r.maxrss
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depths", default="4,8,16", help="encoder depths to run (default 4,8,16)")
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="warm runs of each kind per depth (default 3)")
    ap.add_argument("--output-batch", type=int, default=32, metavar="N",
                    help="also run parity with --option ort_output_batch=N at each depth (default 32; 0: skip)")
    ap.add_argument("--no-phases", dest="phases", action="store_false",
                    help="skip the in-process run per depth with per-step timings")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (specs, exports, reports)")
    args = ap.parse_args(argv)

    depths = [int(d) for d in args.depths.split(",") if d.strip()]
    root = Path(tempfile.mkdtemp(prefix="parity-bench-"))
    log = lambda m: print(f"  .. {m}", file=sys.stderr, flush=True)  # noqa: E731
    t_all = time.perf_counter()
    print(f"machine: {machine_line()}")
    print(f"software: {versions()}")
    results = []
    try:
        for d in depths:
            shape = EncoderShape(depth=d, width=args.width, heads=args.heads, seq=args.seq, batch=args.batch)
            res = measure_depth(root, shape, args.repeat, args.output_batch, log)
            if args.phases:
                log(f"depth {d}: in-process phase run")
                res["phases"] = phases_run(res)
            results.append(res)
    finally:
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    s0 = results[0]["shape"]
    print(f"\nmodel: transformer encoder, width {s0.width}, {s0.heads} heads, {s0.seq} tokens, batch {s0.batch}, "
          f"MLP x{s0.mlp_ratio}; target ort (fp32); {args.repeat} warm runs per kind (min / median)")
    print("\nactivations in one run (from the JSON report's shapes and dtypes):")
    print(f"{'depth':>5} {'ref layers':>10} {'ref bytes':>11} {'ort tensors':>11} {'ort bytes':>11} "
          f"{'scored pairs':>12} {'scored bytes':>12} {'onnx file':>10}")
    for r in results:
        b = r["bytes"]
        print(f"{r['shape'].depth:>5} {b['ref_layers']:>10} {mib(b['ref']):>11} {b['target_layers']:>11} "
              f"{mib(b['target']):>11} {b['scored_pairs']:>12} {mib(b['scored']):>12} {mib(r['onnx_bytes']):>10}")

    print("\nwall time, whole processes (seconds, min / median):")
    print(f"{'depth':>5} {'parity cold':>11} {'parity warm':>13} {'bare torch':>13} {'bare ORT':>13} "
          f"{'torch+ORT':>13} {'ratio':>11}" + (f" {'out-batch':>13}" if args.output_batch else ""))
    for r in results:
        w, t, o = r["warm"].wall(), r["bare_torch"].wall(), r["bare_ort"].wall()
        line = (f"{r['shape'].depth:>5} {r['cold'].wall:>11.2f} {w[0]:>6.2f}/{w[1]:<6.2f} {t[0]:>6.2f}/{t[1]:<6.2f} "
                f"{o[0]:>6.2f}/{o[1]:<6.2f} {t[0] + o[0]:>6.2f}/{t[1] + o[1]:<6.2f} "
                f"{w[0] / (t[0] + o[0]):>5.2f}/{w[1] / (t[1] + o[1]):<5.2f}")
        if args.output_batch:
            b = r["batched"].wall()
            line += f" {b[0]:>6.2f}/{b[1]:<6.2f}"
        print(line)
    print("ratio = parity warm / (bare torch + bare ORT); target <= 1.5")

    print("\npeak RSS, whole processes (ru_maxrss, median):")
    print(f"{'depth':>5} {'parity cold':>11} {'parity warm':>11} {'bare torch':>11} {'bare ORT':>11} "
          f"{'ref+ort act.':>12}" + (f" {'out-batch':>11}" if args.output_batch else ""))
    for r in results:
        b = r["bytes"]
        line = (f"{r['shape'].depth:>5} {mib(r['cold'].maxrss):>11} {mib(r['warm'].rss()[1]):>11} "
                f"{mib(r['bare_torch'].rss()[1]):>11} {mib(r['bare_ort'].rss()[1]):>11} "
                f"{mib(b['ref'] + b['target']):>12}")
        if args.output_batch:
            line += f" {mib(r['batched'].rss()[1]):>11}"
        print(line)
    if args.output_batch:
        print(f"out-batch: parity warm with --option ort_output_batch={args.output_batch}")

    print("\ninside the bare processes (seconds, median): import / build or session / forward or run")
    for r in results:
        import statistics as st

        ti = {k: st.median(x[k] for x in r["bt_inner"]) for k in ("import", "load", "forward")}
        oi = {k: st.median(x[k] for x in r["bo_inner"]) for k in ("import", "session", "run")}
        print(f"  depth {r['shape'].depth:>2}: torch {ti['import']:.2f} / {ti['load']:.2f} / {ti['forward']:.2f};  "
              f"ORT {oi['import']:.2f} / {oi['session']:.2f} / {oi['run']:.2f}")

    if args.phases:
        print("\ninside one warm parity run (seconds; indented steps are part of the line above them; "
              "the torch forward runs in a worker thread, so its line is the main thread's wait):")
        for r in results:
            p = r["phases"]
            print(f"  depth {r['shape'].depth}: process {p['wall']:.2f}, imports {p['import']:.2f}, "
                  f"compare() {p['compare']:.2f}, peak RSS {mib(p['maxrss'])}")
            print_phase_steps(p)
    print(f"\n(benchmark took {time.perf_counter() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

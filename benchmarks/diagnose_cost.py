"""Cost of ``parity compare --diagnose`` (local error of every layer) against a plain compare.

    python benchmarks/diagnose_cost.py [--depths 4,8,16] [--repeat 3] [--target ort-fp16] [--no-phases]

Same transformer-like model as ``compare_transformer.py`` (plain ``nn`` modules, width 384,
6 heads, 512 tokens, seeded, given as a Python spec file). Both commands are whole processes
(``subprocess`` + ``os.wait4``: wall clock and the child's peak RSS):

* compare:  ``python -m parity compare SPEC --ref torch --target ort-fp16 --json R.json -q``
* diagnose: the same plus ``--diagnose``: value ranges on every pair, then each layer of the
  fp16 model run alone on the fp32 activations (one fp32 reference session run that captures
  every tensor, one session run of all local subgraphs), scored with the same metrics, then
  culprits and range tracing.

One ``--diagnose`` run first fills the cache (ONNX export and fp16 conversion, in a fresh
workdir) and is reported as *cold*; then ``--repeat`` rounds of (compare, diagnose) are timed
warm, interleaved so machine noise spreads over both. The ratio is diagnose / compare over
medians (and minima). Per depth, one more in-process ``--diagnose`` run has its steps timed
(``--no-phases`` skips it).
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


def argv_for(spec: str, target: str, workdir: Path, out: Path, diagnose: bool) -> list[str]:
    return [sys.executable, "-m", "parity", "compare", spec, "--ref", "torch", "--target", target,
            "--json", str(out), "--workdir", str(workdir), "-q"] + (["--diagnose"] if diagnose else [])


def measure(root: Path, shape: EncoderShape, target: str, repeat: int, phases: bool, log) -> dict:
    env = python_env()
    spec = write_spec(root, shape)
    wd = root / f"wd{shape.depth}"
    rc, rd = root / f"compare{shape.depth}.json", root / f"diagnose{shape.depth}.json"
    log(f"depth {shape.depth}: cold --diagnose run (export + {target} conversion) ...")
    cold = checked(run_process(argv_for(spec, target, wd, rd, True), env=env), "cold diagnose run")
    comp, diag = Series(), Series()
    for k in range(repeat):
        log(f"depth {shape.depth}: round {k + 1}/{repeat}")
        comp.runs.append(checked(run_process(argv_for(spec, target, wd, rc, False), env=env), "compare"))
        diag.runs.append(checked(run_process(argv_for(spec, target, wd, rd, True), env=env), "compare --diagnose"))
    rep_c, rep_d = json.loads(rc.read_text()), json.loads(rd.read_text())
    local_rows = sum(1 for l in rep_d["layers"] if l.get("local"))
    culprits = sorted((l["culprit_rank"], l["name"]) for l in rep_d["layers"] if l.get("culprit_rank"))
    out = {"shape": shape, "cold": cold, "compare": comp, "diagnose": diag, "bytes": report_bytes(rep_c),
           "rows": len(rep_d["layers"]), "local_rows": local_rows, "culprits": culprits,
           "local_unavailable": rep_d.get("summary", {}).get("local_unavailable")}
    if phases:
        log(f"depth {shape.depth}: in-process phase run")
        argv = [sys.executable, MODELS_PY, "phases", spec, "--target", target, "--workdir", str(wd), "--diagnose"]
        r = checked(run_process(argv, env=env), "in-process phase run")
        out["phases"] = {**child_json(r), "wall": r.wall, "maxrss": r.maxrss}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depths", default="4,8,16", help="encoder depths (default 4,8,16)")
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--target", default="ort-fp16", help="target source (default ort-fp16)")
    ap.add_argument("--repeat", type=int, default=3, help="warm rounds of (compare, diagnose) (default 3)")
    ap.add_argument("--no-phases", dest="phases", action="store_false",
                    help="skip the in-process diagnose run per depth with per-step timings")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="parity-bench-diag-"))
    log = lambda m: print(f"  .. {m}", file=sys.stderr, flush=True)  # noqa: E731
    t_all = time.perf_counter()
    print(f"machine: {machine_line()}")
    print(f"software: {versions()}")
    results = []
    try:
        for d in (int(x) for x in args.depths.split(",") if x.strip()):
            shape = EncoderShape(depth=d, width=args.width, seq=args.seq)
            results.append(measure(root, shape, args.target, args.repeat, args.phases, log))
    finally:
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    s0 = results[0]["shape"]
    print(f"\nmodel: transformer encoder, width {s0.width}, {s0.heads} heads, {s0.seq} tokens; target {args.target}; "
          f"{args.repeat} warm rounds (min / median)")
    print(f"{'depth':>5} {'rows':>5} {'with local':>10} {'ref+target act.':>15} {'cold diag':>9} "
          f"{'compare s':>13} {'diagnose s':>13} {'ratio':>11} {'compare RSS':>11} {'diagnose RSS':>12}")
    for r in results:
        c, d = r["compare"].wall(), r["diagnose"].wall()
        b = r["bytes"]
        print(f"{r['shape'].depth:>5} {r['rows']:>5} {r['local_rows']:>10} {mib(b['ref'] + b['target']):>15} "
              f"{r['cold'].wall:>9.2f} {c[0]:>6.2f}/{c[1]:<6.2f} {d[0]:>6.2f}/{d[1]:<6.2f} "
              f"{d[0] / c[0]:>5.2f}/{d[1] / c[1]:<5.2f} {mib(r['compare'].rss()[1]):>11} "
              f"{mib(r['diagnose'].rss()[1]):>12}")
        if r["local_unavailable"]:
            print(f"      note: {r['local_unavailable']}")
        if r["culprits"]:
            print(f"      culprits: {', '.join(f'#{k} {n}' for k, n in r['culprits'][:5])}")
    print("ratio = diagnose / compare (wall, whole processes); target < 3")
    for r in results:
        p = r.get("phases")
        if not p:
            continue
        print(f"\ninside one warm --diagnose run, depth {r['shape'].depth} (seconds; indented steps are part of "
              f"the line above them):")
        print(f"  process {p['wall']:.2f}, imports {p['import']:.2f}, compare() {p['compare']:.2f}, "
              f"peak RSS {mib(p['maxrss'])}")
        print_phase_steps(p)
    print(f"\n(benchmark took {time.perf_counter() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

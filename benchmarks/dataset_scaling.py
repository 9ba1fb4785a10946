"""Feeds per second and peak memory per worker of ``parity compare --inputs FOLDER --workers N`` (issue 12).

    python benchmarks/dataset_scaling.py [--feeds 64] [--workers 1,2] [--depth 4] [--seq 128]
                                         [--device cpu|cuda] [--target ort|torch-fp16] [--ray1]

The model is the benchmark encoder (benchmarks/_models.py: pre-norm transformer, width 384,
6 heads, seeded) given as a Python spec; ``--feeds`` seeded batch-``--batch`` inputs are written to
a temporary folder, one ``.npy`` each. One cold run (``--limit 1``) fills the export cache first,
so no figure contains an export. Then, per worker count, one whole ``parity compare`` process
(started with ``subprocess``, measured with ``os.wait4``):

* ``--workers 1`` runs in the process itself (no Ray); ``--ray1`` adds a Ray run with one worker,
  which isolates what Ray itself costs;
* wall: start to exit, interpreter start-up and Ray start-up included; feeds/s = feeds / wall;
* steady feeds/s: feeds / the longest time a worker spent comparing its blocks (from the report's
  ``summary.worker_usage``; for the in-process run: (wall(N feeds) - wall(1 feed)) per feed),
  i.e. the rate once models are loaded;
* peak RSS: the driver process's own (``ru_maxrss``), and each worker's (its ``getrusage``).

On the GPU machine: ``--device cuda --ref torch --target torch-fp16`` puts one worker on each GPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import EncoderShape, checked, machine_line, python_env, run_process, versions, write_spec  # noqa: E402


def parity_run(spec: str, folder: Path, work: Path, out: Path, a: argparse.Namespace, workers: int,
               extra: list[str] = ()) -> tuple[object, dict]:
    argv = [sys.executable, "-m", "parity", "compare", spec, "--ref", a.ref, "--target", a.target, "--inputs",
            str(folder), "--workdir", str(work), "--device", a.device, "--workers", str(workers), "--json",
            str(out), "-q", "--exit-zero", *extra]
    r = checked(run_process(argv, env=python_env()), f"parity --workers {workers}")
    return r, json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--feeds", type=int, default=64)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ref", default="torch")
    ap.add_argument("--target", default="ort")
    ap.add_argument("--ray1", action="store_true", help="also run Ray with one worker")
    a = ap.parse_args()
    shape = EncoderShape(depth=a.depth, width=a.width, heads=a.heads, seq=a.seq, batch=a.batch)
    print(machine_line())
    print(versions())
    print(f"model: encoder depth {a.depth} width {a.width} heads {a.heads} seq {a.seq} batch {a.batch}; "
          f"{a.feeds} feeds; {a.ref} vs {a.target} on {a.device}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = write_spec(root, shape)
        folder = root / "feeds"
        folder.mkdir()
        for i in range(a.feeds):
            x = np.random.default_rng(i).standard_normal(shape.input_shape).astype(np.float32)
            np.save(folder / f"{i:05d}.npy", x)
        work = root / "work"
        one, _ = parity_run(spec, folder, work, root / "cold.json", a, 1, ["--limit", "1"])
        print(f"cold run, 1 feed (export included): {one.wall:.2f} s")
        one, _ = parity_run(spec, folder, work, root / "one.json", a, 1, ["--limit", "1"])
        counts = [int(w) for w in a.workers.split(",")]
        runs = [(w, False) for w in counts]
        if a.ray1:
            runs.insert(1, (1, True))
        print(f"{'workers':>10} {'wall s':>8} {'feeds/s':>8} {'steady feeds/s':>15} {'driver MiB':>11} "
              f"{'per-worker MiB':>16} {'feeds per worker':>17}")
        base = None
        for w, ray1 in runs:
            extra = ["--ray-address", "local"] if ray1 else []
            r, doc = parity_run(spec, folder, work, root / f"w{w}{ray1}.json", a, w, extra)
            usage = doc["summary"].get("worker_usage")
            if usage:
                busiest = max(u["seconds"] for u in usage)
                steady = a.feeds / busiest if busiest else float("nan")
                per = ", ".join(f"{u['peak_rss_mib']:.0f}" for u in usage)
                fpw = ", ".join(str(u["feeds"]) for u in usage)
            else:
                steady = (a.feeds - 1) / max(1e-9, r.wall - one.wall)
                per, fpw = f"{r.maxrss / 2**20:.0f} (in process)", str(a.feeds)
            label = f"{w}{' (ray)' if ray1 else ''}"
            print(f"{label:>10} {r.wall:8.2f} {a.feeds / r.wall:8.2f} {steady:15.2f} {r.maxrss / 2**20:11.0f} "
                  f"{per:>16} {fpw:>17}")
            base = base or steady
        print("steady feeds/s excludes start-up (imports, Ray, model loading); wall includes it.")


if __name__ == "__main__":
    main()

"""Cost per feed of a folder of batch-1 inputs against the same samples as one batched file (issue 12).

    python benchmarks/folder_feeds.py [--feeds 16] [--repeat 3] [--target ort]

The model is the zoo ``encoder`` (tests/models/zoo.py, input ``x`` of shape (batch, 8, 32)).
``--feeds`` seeded samples are written twice to a temporary folder: as N batch-1 ``.npz`` files
in one folder, and as one ``.npz`` of batch N. Each figure is a whole ``parity compare ... --ref
torch --target ort -q`` process, started and timed by ``_models.run_process``
(start-up, imports and exit included); the median of ``--repeat`` runs is printed, divided by
the number of samples. Cold runs first fill the workdir (one ONNX export per input shape, as the
export cache keys on it), so export time is in no figure. The ratio is folder / batched: what running each sample as its own feed costs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import checked, run_process  # noqa: E402

ZOO = Path(__file__).resolve().parents[1] / "tests" / "models" / "zoo.py"


def run(inputs: Path, workdir: Path, target: str, out: Path) -> float:
    argv = [sys.executable, "-m", "parity", "compare", f"{ZOO}:encoder", "--ref", "torch", "--target", target,
            "--inputs", str(inputs), "--workdir", str(workdir), "--json", str(out), "-q"]
    return checked(run_process(argv), "parity").wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--feeds", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--target", default="ort")
    a = ap.parse_args()
    n = a.feeds
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        x = np.random.default_rng(0).standard_normal((n, 8, 32)).astype(np.float32)
        folder = root / "feeds"
        folder.mkdir()
        for k in range(n):
            np.savez(folder / f"in{k:03d}.npz", x=x[k:k + 1])
        batched = root / "batched.npz"
        np.savez(batched, x=x)
        work = root / "work"
        # cold runs export the model once per input shape (batch 1, batch N): no figure counts them
        run(folder, work, a.target, root / "cold.json")
        run(batched, work, a.target, root / "cold.json")
        per_folder, per_batch = [], []
        for _ in range(a.repeat):  # interleaved, so machine noise spreads over both
            per_folder.append(run(folder, work, a.target, root / "folder.json") / n)
            per_batch.append(run(batched, work, a.target, root / "batched.json") / n)
    f, b = statistics.median(per_folder), statistics.median(per_batch)
    print(f"zoo encoder, {n} samples, --target {a.target}, median of {a.repeat} runs, whole processes")
    print(f"folder of {n} batch-1 feeds: {f:.3f} s per feed ({f * n:.2f} s)")
    print(f"one file of batch {n}:       {b:.3f} s per sample ({b * n:.2f} s)")
    print(f"ratio folder / batched: {f / b:.2f}")


if __name__ == "__main__":
    main()

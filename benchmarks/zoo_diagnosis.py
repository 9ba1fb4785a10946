"""Diagnosis and `parity fix` on real architectures: per zoo model and target, the culprit, the fix
size and the output metric before and after the fix (every value re-measured by parity fix).

Models: tests/models/real_zoo.py (BERT encoder with padding mask, GPT-2 decoder, ViT, ConvNeXt,
ResNet, LSTM/GRU tagger, each with a planted hazard) and the ConvNeXt-style overflow model of
tests/core/test_fix_e2e.py. Run: ``.venv/bin/python benchmarks/zoo_diagnosis.py [--targets ort-fp16,ort-int8]``;
it prints a Markdown table (the one in docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = [f"{REPO}/tests/models/real_zoo.py:{n}" for n in ("bert", "gpt2", "vit", "convnext", "resnet", "rnn")] + \
    [f"{REPO}/tests/core/test_fix_e2e.py:cnx_overflow"]


def row(model: str, target: str, workdir: str, goal: float, max_steps: int) -> str:
    from parity.core.compare import CompareSettings, compare
    from parity.core.fix import fix

    s = CompareSettings(model=model, ref="torch", target=target, workdir=workdir, diagnose=True)
    t0 = time.perf_counter()
    rep = compare(s)
    res = fix(s, rep, "cosine", goal, max_steps=max_steps)
    secs = time.perf_counter() - t0
    name = model.rsplit(":", 1)[1]
    culprit = rep.summary.get("first_culprit") or "—"
    fmt = (lambda v: "nan" if v is None or math.isnan(v) else f"{v:.6f}")
    size = f"{len(res.kept)} of {res.total_layers}" if res.passed else f"none ({res.tried} tried)"
    return (f"| {name} | {target} | {culprit} | {fmt(res.before)} | {fmt(res.after if res.passed else res.best)} | "
            f"{size} | {'yes' if res.passed else 'no: ' + res.stopped.split(';')[0][:60]} | {secs:.0f} s |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="ort-fp16,ort-int8")
    ap.add_argument("--goal", type=float, default=0.999)
    ap.add_argument("--max-steps", type=int, default=8)
    args = ap.parse_args()
    print(f"goal: output cosine >= {args.goal}, --max-steps {args.max_steps}\n")
    print("| model | target | first culprit | output cosine before | after fix | kept in fp32 | verified | time |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as wd:
        for target in args.targets.split(","):
            for m in MODELS:
                try:
                    print(row(m, target, wd, args.goal, args.max_steps), flush=True)
                except Exception as e:  # one model's failure is a row, not the end of the table
                    print(f"| {m.rsplit(':', 1)[1]} | {target} | error: {str(e).splitlines()[0][:80]} | | | | | |",
                          flush=True)


if __name__ == "__main__":
    main()

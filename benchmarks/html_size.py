"""Size of the HTML report for a deep model: bytes per layer and the whole page for 1,000 layers.

    python benchmarks/html_size.py [--layers 1000] [--elements 4096] [--seed 0]

A synthetic, diagnosed report shaped like a real one: ``--layers`` layers of ``--elements`` values
each, scored by the engine with value ranges and the error-vs-magnitude histogram (as
``--diagnose`` does), every layer given a local value, the first culprits ranked and the range facts
of an fp16 target, one layer overflowing. The same report is written as HTML and as JSON; the figures
(docs/reports.md) are the page's size in total, per layer, and what the renderer and the embedded
histograms take, plus how long writing takes. Nothing here is a test: it prints figures.
"""
from __future__ import annotations

import argparse
import io
import json
import re
import time

import numpy as np

from parity import Activation
from parity.core.diagnose import find_culprits, trace_ranges
from parity.core.engine import compare_streams
from parity.core.report import write_report


def synthetic(layers: int, elements: int, seed: int):
    rng = np.random.default_rng(seed)

    def streams():
        ref, tgt = [], []
        for i in range(layers):
            a = (rng.standard_normal(elements) * (1 + i % 7)).astype(np.float32)
            if i == layers // 3:
                a[:8] *= 3e4  # one layer past fp16's range
            with np.errstate(over="ignore"):
                t = a.astype(np.float16).astype(np.float32)
            t += (rng.standard_normal(elements) * 1e-3 * (1 + i / layers)).astype(np.float32)
            ref.append(Activation(f"blocks.{i // 10}.layer{i % 10}.op", a, order=i, op_type="Linear"))
            tgt.append(Activation(f"blocks.{i // 10}.layer{i % 10}.op", t, order=i))
        return ref, tgt

    ref, tgt = streams()
    rep = compare_streams(iter(ref), iter(tgt), ["cosine", "rel-diff", "max-abs", "nonfinite"],
                          options={"ranges": True}, ref_label="torch", target_label="ort-fp16")
    for k, row in enumerate(rep.layers):  # a local value per layer, as a diagnosed run has; every 100th causes
        row.local = {"cosine": 0.99 if k % 100 == 50 else 1 - (1 - row.values["cosine"]) * 0.5}
    find_culprits(rep)
    trace_ranges(rep, "float16")
    return rep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=1000)
    ap.add_argument("--elements", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rep = synthetic(a.layers, a.elements, a.seed)
    out = {}
    for name in ("html", "json"):
        buf = io.StringIO()
        t0 = time.perf_counter()
        write_report(rep, name, "-", stdout=buf)
        out[name] = (len(buf.getvalue().encode()), time.perf_counter() - t0, buf.getvalue())
    page = out["html"][2]
    data = re.search(r'id="parity-data">(.*?)</script>', page, re.S).group(1)
    hist = json.loads(data)["hist"]
    hist_bytes = len(json.dumps(hist, separators=(",", ":")))
    fixed = len(page.encode()) - len(data.encode())
    print(f"{a.layers} layers of {a.elements} values, {len(rep.summary.get('culprits') or [])} culprits, "
          f"{len(hist)} histograms embedded")
    print(f"HTML: {out['html'][0] / 1024:.1f} KiB ({out['html'][0] / a.layers:.0f} B/layer), "
          f"written in {out['html'][1] * 1000:.0f} ms")
    print(f"  renderer and style (fixed): {fixed / 1024:.1f} KiB; data: {len(data) / 1024:.1f} KiB, "
          f"of which histograms {hist_bytes / 1024:.1f} KiB")
    print(f"JSON: {out['json'][0] / 1024:.1f} KiB ({out['json'][0] / a.layers:.0f} B/layer), "
          f"written in {out['json'][1] * 1000:.0f} ms")
    for row in rep.layers:
        row.range.pop("error_vs_magnitude", None)
    buf = io.StringIO()
    write_report(rep, "json", "-", stdout=buf)
    n = len(buf.getvalue().encode())
    print(f"JSON without the error-vs-magnitude histograms: {n / 1024:.1f} KiB ({n / a.layers:.0f} B/layer)")


if __name__ == "__main__":
    main()

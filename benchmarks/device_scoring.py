"""Per-pair cost of scoring on the device against copying to the host and scoring there (issue 19).

    python benchmarks/device_scoring.py --device cuda            # BERT-base activation sizes, fp16 target
    python benchmarks/device_scoring.py --device cpu --shape 8x128x384

For each shape (default: a BERT-base hidden state and MLP activation at batch 32 x 256 tokens) one
fp32 reference tensor and an fp16 target tensor (the reference plus noise) are made on the device;
then, with the default metrics (cosine, rel-diff, max-abs, nonfinite):

* **device**: ``score_pair_device`` on the two tensors (only scalars cross to the host);
* **host**: what ``--device-scoring off`` does per pair: both tensors copied to numpy when captured
  (``tensor_to_numpy``), then ``score_pair``.

Each is timed over ``--repeat`` calls after one warm-up (the GPU synchronized around each), median
printed, beside the **floor**: one device read of both tensors (``ref.sum() + tgt.sum()``, what any
scoring must at least do). The values of both paths are printed side by side.
"""
from __future__ import annotations

import argparse
import statistics as st
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", action="append", help="AxBxC (repeatable); default 32x256x768 and 32x256x3072")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args(argv)

    import torch

    from parity.core.engine import resolve_metrics
    from parity.lib.scoring import score_pair
    from parity.lib.scoring.device import score_pair_device
    from parity_builtin_torch.capture import tensor_to_numpy

    dev = torch.device(args.device)
    ms = resolve_metrics(None)
    shapes = [tuple(int(x) for x in s.split("x")) for s in (args.shape or ["32x256x768", "32x256x3072"])]

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def timed(fn) -> tuple[float, object]:
        out = fn()
        times = []
        for _ in range(args.repeat):
            sync()
            t0 = time.perf_counter()
            out = fn()
            sync()
            times.append(time.perf_counter() - t0)
        return st.median(times), out

    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}), torch "
          f"{torch.__version__}, metrics {', '.join(m.name for m in ms)}, median of {args.repeat}")
    print(f"{'shape':>16} {'MiB (fp32+fp16)':>16} {'floor ms':>9} {'device ms':>10} {'host ms':>9} "
          f"{'host/device':>11} {'device/floor':>12}")
    for shape in shapes:
        g = torch.Generator(device=dev).manual_seed(0)
        ref = torch.randn(shape, device=dev, generator=g)
        tgt = (ref + 0.01 * torch.randn(shape, device=dev, generator=g)).half()
        floor, _ = timed(lambda: float(ref.sum()) + float(tgt.sum()))
        d_s, (dv, _) = timed(lambda: score_pair_device(ref, tgt, ms))

        def host():
            r, _ = tensor_to_numpy(ref)
            t, _ = tensor_to_numpy(tgt)
            return score_pair(r, t, ms)

        h_s, (hv, _) = timed(host)
        mib = (ref.numel() * 4 + tgt.numel() * 2) / 2**20
        print(f"{'x'.join(map(str, shape)):>16} {mib:>16.1f} {floor * 1e3:>9.3f} {d_s * 1e3:>10.3f} "
              f"{h_s * 1e3:>9.3f} {h_s / d_s:>11.1f} {d_s / floor:>12.1f}")
        print("    values device: " + ", ".join(f"{k} {v:.9g}" for k, v in dv.items()))
        print("    values host:   " + ", ".join(f"{k} {v:.9g}" for k, v in hv.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

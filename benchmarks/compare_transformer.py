"""Cost of ``parity compare`` against the two bare forward passes it needs (the floor), on a depth x batch grid.

    python benchmarks/compare_transformer.py --quick                  # 3 depths x 3 batches, small model, ~16 min*
    python benchmarks/compare_transformer.py [--depths 4,8,16] [--batches 1,8,32] [--repeat 3]
    python benchmarks/compare_transformer.py --bert-base --device cuda --target torch-fp16 --batches 1,8,32

(* on the shared 2-core VM of docs/benchmarks.md, under load; the default grid is the old
depth-only one, width 384 and 512 tokens at batch 1.)

The model is a pre-norm transformer encoder written with plain ``nn`` modules (q/k/v/proj
``Linear``, ``Softmax``, ``LayerNorm``, ``GELU`` MLP; by default width 384, 6 heads, 512
tokens, seeded), given to parity as a Python spec file (written to a temporary folder) that
declares its input shape ``(batch, seq, width)``. Every figure is a whole process, started with
``subprocess`` and measured with ``os.wait4`` (wall clock from start to exit, and that child's
own peak resident set ``ru_maxrss``). Per grid cell (depth, batch):

* **parity**: ``python -m parity compare SPEC --ref torch --target T --json R.json -q --workdir W``
  (on CUDA run in-process by ``_models.py parity-cli`` so that its GPU peak can be read). The
  first run in a fresh ``W`` is *cold* (for ``ort`` it exports to ONNX and caches it); the
  ``--repeat`` runs after it are *warm*: export time is **not** in the warm figures.
* **floor** = bare reference + bare target, each its own process: bare torch imports torch,
  builds the same model and runs one forward under ``no_grad`` (``--device``; fp16/bf16 for a
  ``torch-fp16``/``torch-bf16`` target); bare ORT opens one default ``InferenceSession`` on
  parity's cached export and runs it once, asking only for the model output.
* **time ratio** = parity warm / floor, on the minima of the ``--repeat`` runs (the least
  disturbed; the ratio of medians is printed beside it), target <= 1.3 on CPU, <= 1.2 on CUDA.
* **memory ratio** = parity warm peak RSS / floor peak RSS, where the floor's peak is the
  **larger** of the two bare processes (they could run one after the other); target <= 1.5.
  The sum of the two is printed beside it. On CUDA the same is printed for
  ``torch.cuda.max_memory_allocated``.
* **per-feed cost of a warm folder run** (``--folder-feeds F``; at each depth, smallest batch):
  (parity on a folder of F feeds - parity on one feed) / (F - 1), against the warm per-feed
  forward of the bare processes (median of their passes 2..F in one process: torch forward +
  ORT run), minima over the rounds; target <= 1.2.

Both sides count interpreter start-up, imports and exit, as a user would see them. Activation
bytes come from the JSON report. ``--phases`` adds one in-process parity run per cell with its
main steps timed (``_models.phases``); ``--output-batch N`` adds parity warm with ``--option
ort_output_batch=N``. ``--host-scoring`` adds, in the same rounds, parity warm with
``--device-scoring off`` (every captured tensor copied to the host and scored there, as before
issue 19) beside the default (on CUDA: scored on the GPU), and the same for the per-feed cost:
one call measures before and after side by side, against the same floor. BERT-base at 32x256 and
its 24-layer variant on the GPU:

    python benchmarks/compare_transformer.py --bert-base --seq 256 --batches 32 --depths 12,24 \
        --device cuda --target torch-fp16 --repeat 2 --folder-feeds 4 --host-scoring
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics as st
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import (EncoderShape, Series, checked, child_json, machine_line, mib, print_phase_steps,  # noqa: E402
                     python_env, report_bytes, run_process, versions, write_spec)

MODELS_PY = str(Path(__file__).resolve().parent / "_models.py")
TIME_TARGET = {"cpu": 1.3, "cuda": 1.2}
MEM_TARGET = 1.5
FEED_TARGET = 1.2
TORCH_DTYPES = {"torch": "fp32", "torch-fp16": "fp16", "torch-bf16": "bf16"}


def verdict(ratio: float, target: float) -> str:
    return "PASS" if ratio <= target else "FAIL"


class Cell:
    """Everything measured for one (depth, batch) of the grid."""

    def __init__(self, root: Path, shape: EncoderShape, args: argparse.Namespace) -> None:
        self.shape, self.args = shape, args
        self.spec = write_spec(root, shape)
        self.workdir = root / f"wd_d{shape.depth}_b{shape.batch}"
        self.rjson = root / f"report_d{shape.depth}_b{shape.batch}.json"
        self.root = root
        self.env = python_env()
        self.warm, self.ref, self.tgt, self.batched = Series(), Series(), Series(), Series()
        self.host = Series()  # --host-scoring: parity warm with --device-scoring off
        self.host_inner: list[dict] = []
        self.ref_inner: list[dict] = []
        self.tgt_inner: list[dict] = []
        self.parity_inner: list[dict] = []
        self.onnx: str | None = None

    def parity_argv(self, json_out: Path, extra: list[str]) -> list[str]:
        a = self.args
        cmd = ["compare", self.spec, "--ref", "torch", "--target", a.target, "--json", str(json_out),
               "--workdir", str(self.workdir), "-q", *extra]
        if a.device != "cpu":
            cmd += ["--device", a.device]
            return [sys.executable, MODELS_PY, "parity-cli", *cmd]
        return [sys.executable, "-m", "parity", *cmd]

    def run_parity(self, json_out: Path, extra: list[str], what: str, inner: list[dict] | None = None):
        r = checked(run_process(self.parity_argv(json_out, extra), env=self.env), what)
        if self.args.device != "cpu":
            (self.parity_inner if inner is None else inner).append(child_json(r))
        return r

    def run_host_scored(self, json_out: Path, extra: list[str], what: str):
        """parity with every pair scored on host copies (``--device-scoring off``): the before of issue 19."""
        return self.run_parity(json_out, [*extra, "--device-scoring", "off"], what, self.host_inner)

    def bare_ref(self, feeds: int = 1):
        argv = [sys.executable, MODELS_PY, "bare-torch", self.spec, "--device", self.args.device,
                "--feeds", str(feeds)]
        return checked(run_process(argv, env=self.env), "bare torch (reference)")

    def bare_target(self, feeds: int = 1):
        t = self.args.target
        if t in TORCH_DTYPES:
            argv = [sys.executable, MODELS_PY, "bare-torch", self.spec, "--device", self.args.device,
                    "--dtype", TORCH_DTYPES[t], "--feeds", str(feeds)]
        else:
            assert self.onnx is not None
            argv = [sys.executable, MODELS_PY, "bare-ort", self.onnx, "--feeds", str(feeds),
                    "--shape", ",".join(map(str, self.shape.input_shape))]
        return checked(run_process(argv, env=self.env), f"bare {t} (target)")

    def measure(self, log) -> None:
        s, a = self.shape, self.args
        tag = f"depth {s.depth} batch {s.batch}"
        log(f"{tag}: cold parity run")
        self.cold = self.run_parity(self.rjson, [], "cold parity run")
        if a.target == "ort":
            exports = sorted((self.workdir / "onnx").glob("*.onnx"))
            if len(exports) != 1:
                raise SystemExit(f"expected one cached export in {self.workdir / 'onnx'}, found {len(exports)}")
            self.onnx = str(exports[0])
        # interleave the kinds so that machine noise spreads over all of them
        for k in range(a.repeat):
            log(f"{tag}: round {k + 1}/{a.repeat}")
            self.warm.runs.append(self.run_parity(self.rjson, [], "warm parity run"))
            r = self.bare_ref()
            self.ref.runs.append(r)
            self.ref_inner.append(child_json(r))
            r = self.bare_target()
            self.tgt.runs.append(r)
            self.tgt_inner.append(child_json(r))
            if a.host_scoring:
                self.host.runs.append(self.run_host_scored(self.root / "host.json", [], "host-scored parity run"))
            if a.output_batch:
                self.batched.runs.append(self.run_parity(
                    self.root / "batched.json", ["--option", f"ort_output_batch={a.output_batch}"],
                    "parity with ort_output_batch"))
        self.bytes = report_bytes(json.loads(self.rjson.read_text()))
        if a.phases and a.device == "cpu":
            log(f"{tag}: in-process phase run")
            argv = [sys.executable, MODELS_PY, "phases", self.spec, "--target", a.target,
                    "--workdir", str(self.workdir)]
            r = checked(run_process(argv, env=self.env), "in-process phase run")
            self.phases = child_json(r)
            self.phases["wall"], self.phases["maxrss"] = r.wall, r.maxrss

    def measure_feeds(self, feeds: int, log) -> None:
        """Marginal cost of one more feed in a warm folder run, and the bare warm per-feed forward."""
        s = self.shape
        folder = self.root / f"feeds_d{s.depth}_b{s.batch}"
        folder.mkdir(exist_ok=True)
        rng = np.random.default_rng(1)
        for k in range(feeds):
            np.savez(folder / f"in{k:03d}.npz", x=rng.standard_normal(s.input_shape).astype(np.float32))
        one = folder / "in000.npz"
        single = self.root / f"single_d{s.depth}_b{s.batch}"
        single.mkdir(exist_ok=True)
        shutil.copy(one, single / one.name)
        self.f_many, self.f_one, self.f_ref, self.f_tgt = [], [], [], []
        self.fh_many: list[float] = []
        self.fh_one: list[float] = []
        for k in range(self.args.repeat):
            log(f"depth {s.depth} batch {s.batch}: folder of {feeds} feeds, round {k + 1}/{self.args.repeat}")
            self.f_many.append(self.run_parity(self.root / "f.json", ["--inputs", str(folder)], "folder run").wall)
            self.f_one.append(self.run_parity(self.root / "f1.json", ["--inputs", str(single)], "one-feed run").wall)
            if self.args.host_scoring:
                self.fh_many.append(self.run_host_scored(self.root / "fh.json", ["--inputs", str(folder)],
                                                         "host-scored folder run").wall)
                self.fh_one.append(self.run_host_scored(self.root / "fh1.json", ["--inputs", str(single)],
                                                        "host-scored one-feed run").wall)
            self.f_ref.append(st.median(child_json(self.bare_ref(feeds))["forwards"][1:]))
            inner = child_json(self.bare_target(feeds))
            self.f_tgt.append(st.median(inner.get("runs", inner.get("forwards"))[1:]))
        self.feeds = feeds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depths", default=None, help="encoder depths (default 4,8,16)")
    ap.add_argument("--batches", default=None, help="batch sizes (default 1; --quick: 1,8,32)")
    ap.add_argument("--width", type=int, default=None, help="default 384")
    ap.add_argument("--heads", type=int, default=None, help="default 6")
    ap.add_argument("--seq", type=int, default=None, help="default 512")
    ap.add_argument("--repeat", type=int, default=None, help="warm runs of each kind per cell (default 3)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (torch sources and bare torch)")
    ap.add_argument("--ref", default="torch", choices=["torch"], help="reference source (torch only)")
    ap.add_argument("--target", default="ort", choices=["ort", *TORCH_DTYPES],
                    help="target source (default ort; on CUDA use torch-fp16)")
    ap.add_argument("--quick", action="store_true",
                    help="small model for a 2-core CPU: width 256, 4 heads, 128 tokens, depths 4,8,16, "
                         "batches 1,8,32, 2 warm runs, folder of 4 feeds")
    ap.add_argument("--bert-base", action="store_true",
                    help="BERT-base-sized encoder: width 768, 12 heads, depth 12, 128 tokens")
    ap.add_argument("--folder-feeds", type=int, default=None, metavar="F",
                    help="per depth, at the smallest batch: warm folder run of F feeds vs one feed "
                         "(default 8, --quick 4; 0: skip)")
    ap.add_argument("--output-batch", type=int, default=0, metavar="N",
                    help="also run parity with --option ort_output_batch=N per cell (default 0: skip)")
    ap.add_argument("--phases", action="store_true", help="one in-process run per cell with per-step timings")
    ap.add_argument("--host-scoring", action="store_true",
                    help="also run parity with --device-scoring off in the same rounds (before/after issue 19)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (specs, exports, reports)")
    args = ap.parse_args(argv)

    preset = {"depths": "4,8,16", "batches": "1", "width": 384, "heads": 6, "seq": 512, "repeat": 3,
              "folder_feeds": 8}
    if args.quick:
        preset.update(batches="1,8,32", width=256, heads=4, seq=128, repeat=2, folder_feeds=4)
    if args.bert_base:
        preset.update(depths="12", width=768, heads=12, seq=128)
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.target == "ort" and args.device != "cpu":
        raise SystemExit("--target ort measures ONNX Runtime on CPU only here; on CUDA use --target torch-fp16")
    dev = "cuda" if args.device.startswith("cuda") else "cpu"
    t_target = TIME_TARGET[dev]

    depths = [int(d) for d in args.depths.split(",") if d.strip()]
    batches = sorted(int(b) for b in args.batches.split(",") if b.strip())
    root = Path(tempfile.mkdtemp(prefix="parity-bench-"))
    log = lambda m: print(f"  .. {m}", file=sys.stderr, flush=True)  # noqa: E731
    t_all = time.perf_counter()
    print(f"machine: {machine_line()}")
    print(f"software: {versions()}")
    cells: list[Cell] = []
    try:
        for d in depths:
            for b in batches:
                shape = EncoderShape(depth=d, width=args.width, heads=args.heads, seq=args.seq, batch=b)
                c = Cell(root, shape, args)
                c.measure(log)
                if args.folder_feeds > 1 and b == batches[0]:
                    c.measure_feeds(args.folder_feeds, log)
                cells.append(c)
    finally:
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    s0 = cells[0].shape
    print(f"\nmodel: transformer encoder, width {s0.width}, {s0.heads} heads, {s0.seq} tokens, MLP x{s0.mlp_ratio}; "
          f"--ref torch --target {args.target} --device {args.device}; {args.repeat} warm runs per kind "
          f"(min / median)")
    print("\nactivations in one run (from the JSON report's shapes and dtypes):")
    print(f"{'depth':>5} {'batch':>5} {'ref layers':>10} {'ref bytes':>11} {'tgt layers':>10} {'tgt bytes':>11} "
          f"{'scored pairs':>12} {'scored bytes':>12}")
    for c in cells:
        b = c.bytes
        print(f"{c.shape.depth:>5} {c.shape.batch:>5} {b['ref_layers']:>10} {mib(b['ref']):>11} "
              f"{b['target_layers']:>10} {mib(b['target']):>11} {b['scored_pairs']:>12} {mib(b['scored']):>12}")

    print(f"\ntime, whole processes (seconds, min / median); floor = bare torch + bare {args.target}; "
          f"ratio min/median, verdict on the minima, target <= {t_target}:")
    print(f"{'depth':>5} {'batch':>5} {'cold':>6} {'parity warm':>13} {'bare ref':>13} {'bare target':>13} "
          f"{'floor':>13} {'ratio':>11} {'':>4}" + (f" {'out-batch':>13}" if args.output_batch else "")
          + (f" {'host-scored':>13} {'ratio':>11} {'':>4}" if args.host_scoring else ""))
    for c in cells:
        w, r, t = c.warm.wall(), c.ref.wall(), c.tgt.wall()
        ratio = w[0] / (r[0] + t[0])
        line = (f"{c.shape.depth:>5} {c.shape.batch:>5} {c.cold.wall:>6.2f} {w[0]:>6.2f}/{w[1]:<6.2f} "
                f"{r[0]:>6.2f}/{r[1]:<6.2f} {t[0]:>6.2f}/{t[1]:<6.2f} {r[0] + t[0]:>6.2f}/{r[1] + t[1]:<6.2f} "
                f"{ratio:>5.2f}/{w[1] / (r[1] + t[1]):<5.2f} {verdict(ratio, t_target):>4}")
        if args.output_batch:
            bb = c.batched.wall()
            line += f" {bb[0]:>6.2f}/{bb[1]:<6.2f}"
        if args.host_scoring:  # the same floor: what device scoring saves shows as the ratio's drop
            hh = c.host.wall()
            hr = hh[0] / (r[0] + t[0])
            line += (f" {hh[0]:>6.2f}/{hh[1]:<6.2f} {hr:>5.2f}/{hh[1] / (r[1] + t[1]):<5.2f} "
                     f"{verdict(hr, t_target):>4}")
        print(line)

    print(f"\npeak RSS, whole processes (ru_maxrss, median); floor = max(bare ref, bare target); "
          f"target <= {MEM_TARGET}:")
    print(f"{'depth':>5} {'batch':>5} {'parity warm':>11} {'bare ref':>10} {'bare target':>11} {'floor (max)':>11} "
          f"{'ratio':>6} {'':>4} {'sum of bare':>11} {'ratio/sum':>9} {'ref+tgt act.':>12}")
    for c in cells:
        pw, r, t = c.warm.rss()[1], c.ref.rss()[1], c.tgt.rss()[1]
        floor = max(r, t)
        print(f"{c.shape.depth:>5} {c.shape.batch:>5} {mib(pw):>11} {mib(r):>10} {mib(t):>11} {mib(floor):>11} "
              f"{pw / floor:>6.2f} {verdict(pw / floor, MEM_TARGET):>4} {mib(r + t):>11} {pw / (r + t):>9.2f} "
              f"{mib(c.bytes['ref'] + c.bytes['target']):>12}")

    if dev == "cuda":
        print(f"\nGPU peak (torch.cuda.max_memory_allocated, median); floor = max(bare ref, bare target); "
              f"target <= {MEM_TARGET}:")
        for c in cells:
            pg = st.median(x.get("gpu_peak", 0) for x in c.parity_inner[1:] or c.parity_inner)
            rg = st.median(x["gpu_peak"] for x in c.ref_inner)
            tg = st.median(x["gpu_peak"] for x in c.tgt_inner)
            fl = max(rg, tg)
            line = (f"  depth {c.shape.depth:>2} batch {c.shape.batch:>3}: parity {mib(pg)}, bare ref {mib(rg)}, "
                    f"bare target {mib(tg)}, ratio {pg / fl:.2f} {verdict(pg / fl, MEM_TARGET)}")
            if c.host_inner:
                hg = st.median(x.get("gpu_peak", 0) for x in c.host_inner)
                line += f"; host-scored parity {mib(hg)}, ratio {hg / fl:.2f} {verdict(hg / fl, MEM_TARGET)}"
            print(line)

    fcells = [c for c in cells if hasattr(c, "feeds")]
    if fcells:
        print(f"\nper-feed cost of a warm folder run (seconds, min over rounds): (folder of F - one feed) / (F - 1), "
              f"against the bare warm per-feed forward (ref + target, passes 2..F); target <= {FEED_TARGET}:")
        print(f"{'depth':>5} {'batch':>5} {'F':>3} {'folder F':>9} {'one feed':>9} {'per feed':>9} "
              f"{'bare ref':>9} {'bare tgt':>9} {'bare sum':>9} {'ratio':>6}")
        for c in fcells:
            many, one = min(c.f_many), min(c.f_one)
            per = (many - one) / (c.feeds - 1)
            br, bt = min(c.f_ref), min(c.f_tgt)
            ratio = per / (br + bt)
            print(f"{c.shape.depth:>5} {c.shape.batch:>5} {c.feeds:>3} {many:>9.3f} {one:>9.3f} {per:>9.3f} "
                  f"{br:>9.4f} {bt:>9.4f} {br + bt:>9.4f} {ratio:>6.2f} {verdict(ratio, FEED_TARGET)}")
            if c.fh_many:
                hper = (min(c.fh_many) - min(c.fh_one)) / (c.feeds - 1)
                print(f"{'':>11} host-scored (--device-scoring off): folder {min(c.fh_many):.3f}, one feed "
                      f"{min(c.fh_one):.3f}, per feed {hper:.3f}, ratio {hper / (br + bt):.2f} "
                      f"{verdict(hper / (br + bt), FEED_TARGET)}")

    print("\ninside the bare processes (seconds, median): import / build or session / first forward or run")
    for c in cells:
        def med(inner: list[dict], keys: tuple[str, ...]) -> str:
            return " / ".join(f"{st.median(x[k] for x in inner):.2f}" for k in keys if k in inner[0])
        print(f"  depth {c.shape.depth:>2} batch {c.shape.batch:>3}: ref {med(c.ref_inner, ('import', 'load', 'forward'))};"
              f"  target {med(c.tgt_inner, ('import', 'load', 'session', 'forward', 'run'))}")

    if args.phases and dev == "cpu":
        print("\ninside one warm parity run (seconds; indented steps are part of the line above them; "
              "the torch forward runs in a worker thread, so its line is the main thread's wait):")
        for c in cells:
            p = c.phases
            print(f"  depth {c.shape.depth} batch {c.shape.batch}: process {p['wall']:.2f}, imports {p['import']:.2f}, "
                  f"compare() {p['compare']:.2f}, peak RSS {mib(p['maxrss'])}")
            print_phase_steps(p)
    print(f"\n(benchmark took {time.perf_counter() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Memory and transfer arithmetic for comparing a large decoder with parity (docs/scale.md).

    python benchmarks/scale_arithmetic.py [--model llama2-7b] [--seq 4096] [--batch 1] [--gpus 8]

Nothing here is measured: it multiplies shapes. The reference runs fp32 and the target fp16
(e.g. ``--ref torch --target torch-fp16``). "Every tensor" means what an op-level capture (an
ONNX graph, or fx) would see in one decoder layer with eager attention, where the attention
scores exist as a tensor; a module-level torch capture sees only module outputs (no scores,
no rotary or residual tensors), and an SDPA/flash attention kernel never makes the scores at
all. GB = 10**9 bytes (an H200 has 141 GB), GiB = 2**30.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

GB = 1e9
H200 = 141 * GB
#: bytes moved per second between two GPUs: NVLink 4 (H200 SXM, one direction), PCIe 5 x16, 100 Gb/s Ethernet
LINKS = {"NVLink (450 GB/s)": 450 * GB, "PCIe 5 x16 (~55 GB/s)": 55 * GB, "100 Gb/s network (12.5 GB/s)": 12.5 * GB}


@dataclass(frozen=True)
class Decoder:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    mlp: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def params(self) -> dict[str, int]:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        attn = h * h + 2 * h * kv + h * h  # q, k, v, o (no biases in Llama)
        mlp = 3 * h * self.mlp  # gate, up, down
        per_layer = attn + mlp + 2 * h  # two RMSNorm weights
        embed = self.vocab * h
        return {"embedding": embed, "per layer": per_layer, "layers": self.layers * per_layer,
                "final norm": h, "lm head": embed,
                "total": 2 * embed + self.layers * per_layer + h}


MODELS = {
    "llama2-7b": Decoder("Llama-2-7B", 32, 4096, 32, 32, 11008, 32000),
    "llama2-13b": Decoder("Llama-2-13B", 40, 5120, 40, 40, 13824, 32000),
    "llama2-70b": Decoder("Llama-2-70B", 80, 8192, 64, 8, 28672, 32000),
}


def layer_tensors(m: Decoder, seq: int, batch: int) -> list[tuple[str, int, int, bool]]:
    """(name, elements, count per layer, seen by a module-level capture) for one decoder layer."""
    s = batch * seq
    kv = m.kv_heads * m.head_dim
    return [
        ("input RMSNorm out", s * m.hidden, 1, True),
        ("q projection", s * m.hidden, 1, True),
        ("k, v projections", s * kv, 2, True),
        ("q, k after rotary", s * m.hidden + s * kv, 1, False),
        ("attention scores QK^T/sqrt(d) (+mask)", batch * m.heads * seq * seq, 1, False),
        ("attention probabilities (softmax)", batch * m.heads * seq * seq, 1, False),
        ("attention context (probs @ v)", s * m.hidden, 1, False),
        ("o projection (= self_attn out)", s * m.hidden, 2, True),
        ("residual add after attention", s * m.hidden, 1, False),
        ("post-attention RMSNorm out", s * m.hidden, 1, True),
        ("gate, up projections", s * m.mlp, 2, True),
        ("SiLU(gate), SiLU(gate) * up", s * m.mlp, 2, True),
        ("down projection (= mlp out)", s * m.hidden, 2, True),
        ("layer output (residual add)", s * m.hidden, 1, True),
    ]


def fmt(n: float) -> str:
    return f"{n / GB:,.2f} GB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama2-7b", choices=sorted(MODELS))
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--headroom", type=float, default=10.0,
                    help="GB per GPU kept for the CUDA context, allocator slack and one layer's working set (default 10)")
    a = ap.parse_args(argv)
    m, seq, b = MODELS[a.model], a.seq, a.batch

    print(f"{m.name}: {m.layers} layers, hidden {m.hidden}, {m.heads} heads ({m.kv_heads} kv), MLP {m.mlp}, "
          f"vocab {m.vocab}; sequence {seq}, batch {b}")
    p = m.params()
    print("\n1. weights")
    for k in ("embedding", "per layer", "layers", "lm head", "total"):
        print(f"   {k:<10} {p[k]:>15,} params   fp32 {fmt(4 * p[k]):>11}   fp16 {fmt(2 * p[k]):>11}")
    w32, w16 = 4 * p["total"], 2 * p["total"]
    print(f"   reference fp32 + target fp16 = {fmt(w32)} + {fmt(w16)} = {fmt(w32 + w16)}")

    print("\n2. activations of one decoder layer, per captured tensor (elements x 4 bytes fp32 / x 2 fp16)")
    rows = layer_tensors(m, seq, b)
    every = module = 0
    for name, n, count, mod in rows:
        every += n * count
        module += n * count if mod else 0
        print(f"   {name:<40} {count} x {n:>13,}   fp32 {fmt(4 * n * count):>10}   fp16 {fmt(2 * n * count):>10}"
              f"{'' if mod else '   (not a module output)'}")
    scores = 2 * b * m.heads * seq * seq
    print(f"   per layer, every tensor:   {every:>15,} elements   fp32 {fmt(4 * every):>10}   fp16 {fmt(2 * every):>10}")
    print(f"     of which scores + probs: {scores:>15,} elements   fp32 {fmt(4 * scores):>10} "
          f"({100 * scores / every:.0f}%)")
    print(f"   per layer, module outputs: {module:>15,} elements   fp32 {fmt(4 * module):>10}   fp16 {fmt(2 * module):>10}")

    logits = b * seq * m.vocab
    emb = b * seq * m.hidden
    tot_every = m.layers * every + logits + emb
    tot_module = m.layers * module + logits + emb
    print("\n3. one forward, every layer captured (plus embedding output and logits)")
    pair_every = 4 * tot_every + 2 * tot_every
    pair_module = 4 * tot_module + 2 * tot_module
    print(f"   every tensor:   ref fp32 {fmt(4 * tot_every)}, target fp16 {fmt(2 * tot_every)}, both {fmt(pair_every)}")
    print(f"   module outputs: ref fp32 {fmt(4 * tot_module)}, target fp16 {fmt(2 * tot_module)}, both {fmt(pair_module)}")

    free1 = H200 - w32 - w16 - a.headroom * GB
    print(f"\n4. one H200 (141 GB): weights of both sides {fmt(w32 + w16)}, headroom {a.headroom:.0f} GB "
          f"-> {fmt(free1)} left for captured activations")
    per_layer_pair_every = 6 * every
    per_layer_pair_module = 6 * module
    for label, per, total in (("every tensor", per_layer_pair_every, pair_every),
                              ("module outputs", per_layer_pair_module, pair_module)):
        k = min(m.layers, max(0, math.floor(free1 / per)))
        slices = math.ceil(m.layers / k) if k else float("inf")
        print(f"   {label}: all layers resident needs {fmt(total)}: {'fits' if total <= free1 else 'does not fit'}; "
              f"{k} layers (ref + target) fit at once -> {slices} --layers slices of <= {k} layers, "
              f"each slice one full forward of both sides")
    big = 4 * b * m.heads * seq * seq
    print(f"   streaming instead (each pair scored as the target yields it; the reference parked in host "
          f"memory or spilled): GPU holds weights + one capture step; step_bytes must be >= the largest "
          f"tensor, {fmt(big)} (one fp32 score tensor)")

    print(f"\n5. pipeline stages on {a.gpus} H200 (each stage: a contiguous block of layers, reference and target)")
    print(f"   {'stages':>6} {'layers/stage':>12} {'weights/GPU':>12} {'every tensor/GPU':>17} {'total/GPU':>11} "
          f"{'fits':>5} {'modules only/GPU':>17} {'fits':>5}")
    for st in (1, 2, 3, 4, 8):
        if st > a.gpus:
            break
        lps = math.ceil(m.layers / st)
        wg = (w32 + w16) * lps / m.layers  # embedding/lm head spread for simplicity
        ae, am = lps * per_layer_pair_every, lps * per_layer_pair_module
        te, tm = wg + ae + a.headroom * GB, wg + am + a.headroom * GB
        print(f"   {st:>6} {lps:>12} {fmt(wg):>12} {fmt(ae):>17} {fmt(te):>11} {'yes' if te <= H200 else 'no':>5} "
              f"{fmt(tm):>17} {'yes' if tm <= H200 else 'no':>5}")

    total8 = a.gpus * H200
    print(f"   {a.gpus} GPUs hold {fmt(total8)} in all: every tensor of one forward with weights per stage needs "
          f"{fmt(w32 + w16 + pair_every)}; or {a.gpus} data-parallel workers (--workers), each with both models "
          f"({fmt(w32 + w16)}) and streaming, for {a.gpus}x the feeds per second")

    hand = b * seq * m.hidden * (4 + 2)
    print(f"\n6. transfer per forward between two stages (the hidden state at the boundary, ref fp32 + target fp16):"
          f" {b}x{seq}x{m.hidden} x 6 bytes = {fmt(hand)}")
    for link, bw in LINKS.items():
        print(f"   {link:<30} {1e3 * hand / bw:8.2f} ms per boundary per forward")
    one_side = 2 * tot_every
    print(f"   against one GPU per side (reference on one, target on the other): every target tensor "
          f"({fmt(one_side)} fp16) must cross to be scored:")
    for link, bw in LINKS.items():
        print(f"   {link:<30} {one_side / bw:8.2f} s per forward")
    print(f"   per-layer statistics sent back per forward: ~{m.layers * 16} rows x a few metrics x 8 bytes (kB, negligible)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

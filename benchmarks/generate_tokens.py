"""Tokens per second of ``parity generate``'s teacher-forced comparison against the bare generation (the floor).

    python benchmarks/generate_tokens.py --tiny                                   # CPU, small Llama, seconds
    python benchmarks/generate_tokens.py --device cuda --ref torch-bf16 --target torch-fp16   # ~1.2B Llama, H100/H200

The model is a random-init Llama-style causal LM built by a factory (no download, nothing written
but a small Python spec file): by default the Llama-3.2-1B shape (hidden 2048, 16 layers, 32 heads,
8 KV heads, MLP 8192, vocabulary 128256: 1.24 B parameters), ``--tiny`` a 2-layer one for the CPU.
Both decoders are loaded once; then, per repeat, on one prompt of ``--prompt-len`` random tokens:

* **floor** = the bare greedy generation of ``--new-tokens`` tokens by the reference decoder alone,
  token by token with its KV cache (what the user runs anyway);
* **parity** = :func:`parity.core.generate.run_prompt` without diagnosis: the same reference
  generation, the target's teacher-forced pass over the reference's tokens, the per-step figures
  (KL, cosine, argmax, margins) and the per-layer KV-cache comparison;
* **ratio** = parity / floor on the minima of the repeats (median ratio beside it); target <= 1.5.

``--diagnose`` also times the per-layer diagnosis of one position (each layer alone in the target),
reported on its own line: it runs once per diverging step, not per token. CUDA times are taken
after ``torch.cuda.synchronize``. Weights are in the decoders' precisions (``torch-bf16``: bf16).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

FACTORY = '''
import torch
from transformers import LlamaConfig, LlamaForCausalLM

def make():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size={vocab}, hidden_size={hidden}, intermediate_size={mlp}, num_hidden_layers={layers},
                      num_attention_heads={heads}, num_key_value_heads={kv}, max_position_embeddings=4096,
                      tie_word_embeddings=True)
    with torch.device({init!r}):
        m = LlamaForCausalLM(cfg)
    return m
'''

SHAPES = {"1b": dict(vocab=128256, hidden=2048, mlp=8192, layers=16, heads=32, kv=8),
          "tiny": dict(vocab=512, hidden=128, mlp=256, layers=2, heads=4, kv=2)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU (a quick check of the script)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda, or cpu with --tiny)")
    ap.add_argument("--ref", default=None, help="reference decoder (default torch-bf16 on cuda, torch on cpu)")
    ap.add_argument("--target", default=None, help="target decoder (default torch-fp16 on cuda, torch-bf16 on cpu)")
    ap.add_argument("--new-tokens", type=int, default=None, help="tokens generated (default 128; 32 with --tiny)")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--diagnose", action="store_true", help="also time the per-layer diagnosis of one position")
    a = ap.parse_args(argv)
    device = a.device or ("cpu" if a.tiny else "cuda")
    cuda = device.startswith("cuda")
    ref_name = a.ref or ("torch-bf16" if cuda else "torch")
    tgt_name = a.target or ("torch-fp16" if cuda else "torch-bf16")
    n = a.new_tokens or (32 if a.tiny else 128)
    shape = SHAPES["tiny" if a.tiny else "1b"]

    import numpy as np

    from parity.core.generate import GenerateSettings, _diagnose_position, _greedy, run_prompt
    from parity.core.registry import get_decoder

    with tempfile.TemporaryDirectory() as d:
        spec = Path(d) / "bench_llm.py"
        spec.write_text(FACTORY.format(init="cuda" if cuda else "cpu", **shape))  # no 5 GB fp32 init on the host
        t0 = time.perf_counter()
        ref = get_decoder(ref_name).load(f"{spec}:make", device=device, workdir=d)
        target = get_decoder(tgt_name).load(f"{spec}:make", device=device, workdir=d)
        load_s = time.perf_counter() - t0
        params = sum(p.numel() for p in ref.model.parameters()) if hasattr(ref, "model") else None
        prompt = np.random.default_rng(0).integers(0, shape["vocab"], a.prompt_len).tolist()
        s = GenerateSettings(model=str(spec), ref=ref_name, target=tgt_name, max_new_tokens=n, diagnose=False)
        run_prompt(ref, target, prompt, s)  # warm-up: kernels, allocator, caches
        floors, runs = [], []
        for _ in range(a.repeat):
            _sync(device)
            t = time.perf_counter()
            _greedy(ref, prompt, n)
            _sync(device)
            floors.append(time.perf_counter() - t)
            t = time.perf_counter()
            r = run_prompt(ref, target, prompt, s)
            _sync(device)
            runs.append(time.perf_counter() - t)
        print(f"model: random-init Llama, {params / 1e6 if params else float('nan'):.1f} M parameters, "
              f"{shape['layers']} layers, vocabulary {shape['vocab']}; device {device}; reference {ref_name}, "
              f"target {tgt_name}; prompt {a.prompt_len} tokens, {n} new tokens; {a.repeat} repeats; "
              f"load {load_s:.1f} s")
        fl, pr = min(floors), min(runs)
        ratio_med = statistics.median(p / f for p, f in zip(runs, floors))
        print(f"floor  (bare generation of the reference): {n / fl:9.1f} tokens/s  ({fl:.3f} s min, "
              f"{statistics.median(floors):.3f} s median)")
        print(f"parity (teacher-forced comparison):        {n / pr:9.1f} tokens/s  ({pr:.3f} s min, "
              f"{statistics.median(runs):.3f} s median)")
        print(f"ratio parity / floor: {pr / fl:.3f} (min / min; median of ratios {ratio_med:.3f}); target <= 1.5")
        print(f"figures: top-1 agreement {r['top1_agreement']:.4f}, mean KL {r['mean_kl']:.3g} nats, first divergence "
              f"at step {(r['first_divergence'] or {}).get('step')}")
        if a.diagnose:
            seq = prompt + r["ref_tokens"]
            t = time.perf_counter()
            _diagnose_position(ref, target, seq, len(seq) - 2, "benchmark", n - 1)
            _sync(device)
            dt = time.perf_counter() - t
            print(f"diagnosis of one position ({shape['layers']} layers alone + traces): {dt:.3f} s "
                  f"(= {dt / fl * n:.1f} tokens of the floor's generation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

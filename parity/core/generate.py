"""``parity generate``: token-level parity of a language model, and the layer that flipped a token.

Why teacher forcing is the default: once the target picks another token, the two runs see different
prefixes and every later step compares apples with pears. Fed the reference's tokens, the target is
asked at every step the same question, so a per-step KL, logit cosine and top-1 agreement mean
something for the whole continuation, and the *first* step where its argmax differs is a fact about
the target, not about an earlier divergence. Free-running mode (each side feeds its own tokens)
then shows what a user sees: where the two texts part.

The reference generates greedily, token by token with its KV cache (the bare generation); the
target scores the reference's whole sequence in **one** forward pass (``incremental=False``, the
default, as perplexity is measured) or steps through it with its own cache (``incremental=True``,
the deployed path, slower). At the first diverging step and the worst ``worst`` steps (by KL), each
decoder layer's hidden state at that position is compared end to end and, where the target can run
one layer alone, locally on the reference's input: the culprit is named by
:func:`parity.core.culprits.find_culprits`, the rule of ``--diagnose``. The KV cache is compared per
layer (keys and values of every cached position), where long-context drift accumulates.

Over many prompts, :class:`GenerateStats` folds per-position divergence counts and perplexity sums
that merge exactly, so ``--workers`` (Ray, one actor per worker loading both models once) gives the
report one process gives. docs/generation.md documents the JSON schema.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from parity.contract.errors import ParityError, UsageError, first_line

__all__ = ["GenerateSettings", "GenerateStats", "compare_logits", "generate", "load_prompts", "SCHEMA"]

SCHEMA = "parity-generate/1"
#: cosine bound below which a layer's hidden state (or cache) counts as failing, as the cosine metric's default
COSINE_THRESHOLD = 0.999


@dataclass
class GenerateSettings:
    """One ``parity generate`` run (the CLI fills it; the Python API may build it directly)."""

    model: str
    ref: str = "torch"
    target: str = "torch-bf16"
    target_model: str | None = None
    prompts: list[list[int]] = field(default_factory=list)
    tokenizer: str | None = None
    max_new_tokens: int = 32
    free: bool = False
    incremental: bool = False
    diagnose: bool = True
    worst: int = 3
    device: str = "cpu"
    workers: int = 1
    ray_address: str | None = None
    perplexity_text: str | None = None
    perplexity_window: int = 128
    workdir: str | None = None


# ---------------------------------------------------------------- prompts

def load_prompts(*, text_file: str | None = None, tokenizer: str | None = None,
                 token_files: Iterable[str] = ()) -> list[list[int]]:
    """Prompts as token ids: one per non-empty line of ``text_file`` encoded by ``tokenizer``, and one
    per token file (``.npy`` of integers, or text of whitespace-separated integers)."""
    out: list[list[int]] = []
    if text_file is not None:
        if tokenizer is None:
            raise UsageError("--prompts needs --tokenizer (a tokenizer.json or a folder holding one). "
                             "Note: or give token id files with --tokens")
        from parity.lib.causal_lm import load_tokenizer

        tok = load_tokenizer(tokenizer)
        lines = _read_text(text_file).splitlines()
        for line in lines:
            if line.strip():
                ids = tok.encode(line.rstrip("\n")).ids
                if ids:
                    out.append(list(map(int, ids)))
        if not out:
            raise ParityError(f"prompts file {text_file}: no non-empty line. Note: one prompt per line")
    for f in token_files:
        out.append(_read_tokens(f))
    return out


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParityError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ParityError(f"{path}: cannot be read as UTF-8 text: {first_line(e, typed=True)}") from None


def _read_tokens(path: str) -> list[int]:
    if path.endswith(".npy"):
        try:
            a = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise ParityError(f"token file {path}: no such file") from None
        except Exception as e:
            raise ParityError(f"token file {path}: not a .npy array: {first_line(e, typed=True)}") from None
        if a.dtype.kind not in "iu" or a.size == 0:
            raise ParityError(f"token file {path}: holds {a.dtype} of size {a.size}; token ids are a non-empty "
                              f"integer array")
        return [int(x) for x in a.reshape(-1)]
    text = _read_text(path)
    try:
        ids = [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise ParityError(f"token file {path}: not whitespace-separated integers. Note: a .npy integer array "
                          f"also works") from None
    if not ids:
        raise ParityError(f"token file {path}: no token ids in it")
    return ids


# ---------------------------------------------------------------- per-step figures

def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def compare_logits(ref: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row figures of two ``[steps, vocab]`` logit arrays: reference and target argmax, top-1
    agreement, KL(ref ‖ target) of the next-token distributions (nats), logit cosine, and the margins:
    how far the target prefers its own token over the reference's (``target_margin``) and how far
    the reference prefers its token over the target's (``ref_margin``), in logits."""
    ref = np.asarray(ref, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    lp, lq = _log_softmax(ref), _log_softmax(target)
    kl = np.maximum((np.exp(lp) * (lp - lq)).sum(axis=-1), 0.0)
    num = (ref * target).sum(axis=-1)
    den = np.linalg.norm(ref, axis=-1) * np.linalg.norm(target, axis=-1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
    ra, ta = ref.argmax(axis=-1), target.argmax(axis=-1)
    rows = np.arange(len(ref))
    return {"ref_token": ra, "target_token": ta, "agree": ra == ta, "kl": kl, "cosine": cos,
            "target_margin": target[rows, ta] - target[rows, ra], "ref_margin": ref[rows, ra] - ref[rows, ta]}


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).reshape(-1)
    b = np.asarray(b, np.float64).reshape(-1)
    d = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / d) if d > 0 else (1.0 if not a.any() and not b.any() else 0.0)


# ---------------------------------------------------------------- running one prompt

def _greedy(sess: Any, prompt: list[int], n: int) -> tuple[list[int], np.ndarray, Any]:
    """``n`` greedy tokens from ``prompt`` with the session's cache: tokens, logits ``[n, vocab]``, cache
    (holding the prompt and the first ``n - 1`` tokens: the last one is picked, never fed)."""
    step = sess.forward(prompt)
    rows, toks = [], []
    logits, cache = step.logits[-1], step.cache
    for i in range(n):
        rows.append(logits)
        t = int(np.argmax(logits))
        toks.append(t)
        if i + 1 < n:
            step = sess.forward([t], cache)
            logits, cache = step.logits[-1], step.cache
    return toks, np.stack(rows), cache


def _teacher_forced(sess: Any, prompt: list[int], tokens: list[int], incremental: bool) -> tuple[np.ndarray, Any]:
    """The target's logits for each generated position, fed the reference's tokens, and its cache."""
    if not incremental:
        step = sess.forward(prompt + tokens[:-1])
        return step.logits[len(prompt) - 1:], step.cache
    step = sess.forward(prompt)
    rows, cache = [step.logits[-1]], step.cache
    for t in tokens[:-1]:
        step = sess.forward([t], cache)
        rows.append(step.logits[-1])
        cache = step.cache
    return np.stack(rows), cache


def _kv_compare(ref: Any, target: Any, ref_cache: Any, target_cache: Any, upto: int | None = None) -> list[dict]:
    out = []
    ra, ta = ref.cache_arrays(ref_cache), target.cache_arrays(target_cache)
    for i, ((rk, rv), (tk, tv)) in enumerate(zip(ra, ta)):
        sl = slice(None) if upto is None else slice(0, upto)
        k_r, k_t, v_r, v_t = rk[:, sl], tk[:, sl], rv[:, sl], tv[:, sl]
        row = {"layer": ref.layers[i] if i < len(ref.layers) else f"layers.{i}",
               "key_cosine": _cos(k_r, k_t), "value_cosine": _cos(v_r, v_t),
               "key_max_abs": float(np.abs(k_r.astype(np.float64) - k_t).max()) if k_r.size else 0.0,
               "value_max_abs": float(np.abs(v_r.astype(np.float64) - v_t).max()) if v_r.size else 0.0}
        out.append(row)
    return out


def _diagnose_position(ref: Any, target: Any, seq: list[int], pos: int, why: str, step: int) -> dict:
    """Per-layer comparison at position ``pos`` of ``seq`` (the prefix both saw), with the culprit."""
    from parity.contract.report import LayerResult, MetricInfo, Report
    from parity.core.culprits import find_culprits

    prefix = seq[:pos + 1]
    rt = ref.trace(prefix)
    tt = target.trace(prefix)
    layers: list[dict[str, Any]] = []
    kv = {r["layer"]: r for r in _kv_compare(ref, target, ref.forward(prefix).cache, target.forward(prefix).cache)}
    names = ref.layers
    for i, name in enumerate(names):
        row: dict[str, Any] = {"layer": name}
        if rt is not None and tt is not None and i < len(tt):
            row["cosine"] = _cos(rt[i].output[pos], tt[i].output[pos])
            alone = target.run_layer(prefix, i, rt[i].input)
            if alone is not None:
                row["local_cosine"] = _cos(rt[i].output[pos], alone[pos])
        k = kv.get(name) or (list(kv.values())[i] if i < len(kv) else None)
        if k is not None:
            row.update({kk: v for kk, v in k.items() if kk != "layer"})
        layers.append(row)
    culprit, method = None, None
    if layers and all("local_cosine" in r for r in layers):
        info = MetricInfo("cosine", True, False, COSINE_THRESHOLD)
        rows = [LayerResult(r["layer"], r["layer"], r["layer"], float(i), values={"cosine": r["cosine"]},
                            local={"cosine": r["local_cosine"]}) for i, r in enumerate(layers)]
        found = find_culprits(Report(rows, [info]))
        if found:
            culprit, method = found[0].name, "local"
    elif layers and all("key_cosine" in r for r in layers):
        # no layer alone: the layer whose cache error grows most over the previous layer's
        err = [1.0 - min(r["key_cosine"], r["value_cosine"]) for r in layers]
        jumps = [e - (err[i - 1] if i else 0.0) for i, e in enumerate(err)]
        j = int(np.argmax(jumps))
        if err[j] > 1.0 - COSINE_THRESHOLD:
            culprit, method = layers[j]["layer"], "cache-jump"
    return {"step": step, "position": pos, "why": why, "layers": layers, "culprit": culprit,
            "culprit_method": method}


def run_prompt(ref: Any, target: Any, prompt: list[int], s: GenerateSettings, index: int = 0) -> dict[str, Any]:
    """One prompt: teacher-forced figures per step, first divergence, diagnosis, free-running texts."""
    n = s.max_new_tokens
    toks, rlog, rcache = _greedy(ref, prompt, n)
    tlog, tcache = _teacher_forced(target, prompt, toks, s.incremental)
    f = compare_logits(rlog, tlog)
    p0 = len(prompt)
    steps = [{"step": i, "position": p0 + i, "ref_token": int(f["ref_token"][i]),
              "target_token": int(f["target_token"][i]), "agree": bool(f["agree"][i]), "kl": float(f["kl"][i]),
              "cosine": float(f["cosine"][i]), "target_margin": float(f["target_margin"][i]),
              "ref_margin": float(f["ref_margin"][i])} for i in range(n)]
    first = next((st for st in steps if not st["agree"]), None)
    res: dict[str, Any] = {
        "index": index, "prompt_tokens": list(prompt), "ref_tokens": toks, "steps": steps,
        "first_divergence": None if first is None else {
            k: first[k] for k in ("step", "position", "ref_token", "target_token", "target_margin", "ref_margin")},
        "top1_agreement": float(np.mean(f["agree"])), "mean_kl": float(np.mean(f["kl"])),
        "max_kl": float(np.max(f["kl"])), "min_cosine": float(np.min(f["cosine"])),
        "kv_cache": _kv_compare(ref, target, rcache, tcache), "diagnosis": [], "free": None}
    if s.diagnose:
        seq = prompt + toks
        picks: list[tuple[int, str]] = []
        if first is not None:
            picks.append((first["step"], "first divergence"))
        for i in np.argsort(-f["kl"], kind="stable")[:s.worst]:
            if all(int(i) != p for p, _ in picks):
                picks.append((int(i), "worst kl"))
        for i, why in picks:
            res["diagnosis"].append(_diagnose_position(ref, target, seq, p0 + i - 1, why, i))
    if s.free:
        ttoks, _, _ = _greedy(target, prompt, n)
        part = next((i for i, (a, b) in enumerate(zip(toks, ttoks)) if a != b), None)
        res["free"] = {"part_step": part, "ref_tokens": toks, "target_tokens": ttoks}
    return res


# ---------------------------------------------------------------- statistics over prompts

@dataclass
class GenerateStats:
    """Mergeable statistics over prompts: sums and counts only, so shards merge exactly."""

    prompts: int = 0
    steps: int = 0
    agree: int = 0
    kl_sum: float = 0.0
    #: per step index: prompts that reached it, prompts whose argmax differs there, prompts diverged by then
    reached: list[int] = field(default_factory=list)
    disagree: list[int] = field(default_factory=list)
    diverged_by: list[int] = field(default_factory=list)
    nll_ref: float = 0.0
    nll_target: float = 0.0
    ppl_tokens: int = 0

    def add(self, r: dict[str, Any]) -> None:
        self.prompts += 1
        n = len(r["steps"])
        for lst in (self.reached, self.disagree, self.diverged_by):
            lst.extend([0] * (n - len(lst)))
        first = r["first_divergence"]["step"] if r["first_divergence"] else None
        for st in r["steps"]:
            i = st["step"]
            self.reached[i] += 1
            self.disagree[i] += 0 if st["agree"] else 1
            self.diverged_by[i] += 1 if first is not None and i >= first else 0
            self.agree += 1 if st["agree"] else 0
            self.kl_sum += st["kl"]
        self.steps += n

    def merge(self, o: "GenerateStats") -> "GenerateStats":
        m = GenerateStats(self.prompts + o.prompts, self.steps + o.steps, self.agree + o.agree,
                          self.kl_sum + o.kl_sum, nll_ref=self.nll_ref + o.nll_ref,
                          nll_target=self.nll_target + o.nll_target, ppl_tokens=self.ppl_tokens + o.ppl_tokens)
        for name in ("reached", "disagree", "diverged_by"):
            a, b = getattr(self, name), getattr(o, name)
            n = max(len(a), len(b))
            setattr(m, name, [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)])
        return m

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompts": self.prompts, "steps": self.steps,
            "top1_agreement": self.agree / self.steps if self.steps else None,
            "mean_kl": self.kl_sum / self.steps if self.steps else None,
            "divergence_rate_by_step": [d / r if r else None for d, r in zip(self.disagree, self.reached)],
            "diverged_by_step": [d / r if r else None for d, r in zip(self.diverged_by, self.reached)],
            "perplexity": None}
        if self.ppl_tokens:
            pr, pt = math.exp(self.nll_ref / self.ppl_tokens), math.exp(self.nll_target / self.ppl_tokens)
            out["perplexity"] = {"tokens": self.ppl_tokens, "ref": pr, "target": pt, "delta": pt - pr}
        return out


def perplexity_sums(ref: Any, target: Any, ids: list[int], window: int) -> tuple[float, float, int]:
    """Summed next-token negative log-likelihood of ``ids`` under both sides, in windows of ``window``
    tokens (each window scored in one pass, no context carried over)."""
    nr = nt = 0.0
    n = 0
    for a in range(0, max(len(ids) - 1, 0), window):
        chunk = ids[a:a + window + 1]
        if len(chunk) < 2:
            break
        y = np.asarray(chunk[1:])
        for sess, acc in ((ref, "r"), (target, "t")):
            lp = _log_softmax(sess.forward(chunk[:-1]).logits)
            v = float(-lp[np.arange(len(y)), y].sum())
            if acc == "r":
                nr += v
            else:
                nt += v
        n += len(y)
    return nr, nt, n


# ---------------------------------------------------------------- driver

#: a calibrated target (``Decoder.uses_calibration``: ort-int8, modelopt-*) calibrates on this many first prompts
CALIBRATION_PROMPTS = 16


def _load(s: GenerateSettings) -> tuple[Any, Any]:
    from parity.core.registry import get_decoder

    calib = s.prompts[:CALIBRATION_PROMPTS]
    ref_dec, tgt_dec = get_decoder(s.ref), get_decoder(s.target)
    for d in (ref_dec, tgt_dec):
        d.require(s.device)
    ref = ref_dec.load(s.model, device=s.device, workdir=s.workdir)
    target = tgt_dec.load(s.target_model or s.model, device=s.device, calibration=calib, workdir=s.workdir)
    if ref.vocab_size and target.vocab_size and ref.vocab_size != target.vocab_size:
        raise ParityError(f"the reference's vocabulary has {ref.vocab_size} tokens and the target's "
                          f"{target.vocab_size}: they are not the same model")
    return ref, target


def _run_block(s: GenerateSettings, items: list[tuple[int, list[int]]], ppl_ids: list[int] | None,
               sessions: tuple[Any, Any] | None = None) -> tuple[list[dict], GenerateStats]:
    ref, target = sessions or _load(s)
    vocab = ref.vocab_size or target.vocab_size
    for i, p in items:
        bad = [t for t in p if t < 0 or (vocab and t >= vocab)]
        if bad:
            raise ParityError(f"prompt {i}: token id {bad[0]} is outside the model's vocabulary (0..{vocab - 1}). "
                              f"Note: the tokenizer or token file must be the model's")
    stats, results = GenerateStats(), []
    for i, p in items:
        r = run_prompt(ref, target, p, s, i)
        stats.add(r)
        results.append(r)
    if ppl_ids:
        nr, nt, n = perplexity_sums(ref, target, ppl_ids, s.perplexity_window)
        stats.nll_ref, stats.nll_target, stats.ppl_tokens = nr, nt, n
    return results, stats


class _Worker:
    """A Ray actor: both decoders loaded once, then blocks of prompts on request."""

    def __init__(self, s: GenerateSettings, cwd: str, threads: dict[str, str | None]) -> None:
        for k, v in threads.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if os.path.isdir(cwd):
            os.chdir(cwd)
        self.s = s
        self.sessions = _load(s)

    def run(self, items: list[tuple[int, list[int]]], ppl_ids: list[int] | None) -> tuple[list[dict], GenerateStats]:
        return _run_block(self.s, items, ppl_ids, self.sessions)


def _sharded(s: GenerateSettings, items: list[tuple[int, list[int]]], ppl_ids: list[int] | None
             ) -> tuple[list[dict], GenerateStats]:
    import logging

    from parity.core.workers import thread_env

    try:
        import ray
    except ImportError:
        raise ParityError("--workers needs Ray. Note: pip install 'parity[ray]', or run with --workers 1") from None
    started = False
    if not ray.is_initialized():
        try:
            if s.ray_address and s.ray_address != "local":
                ray.init(address=s.ray_address, logging_level=logging.ERROR, log_to_driver=False)
            else:
                ray.init(num_cpus=max(s.workers, os.cpu_count() or 1),
                         num_gpus=None if s.device.startswith("cuda") else 0, include_dashboard=False,
                         log_to_driver=False, logging_level=logging.ERROR)
        except Exception as e:
            raise ParityError(f"cannot start or reach Ray: {first_line(e, typed=True)}") from None
        started = True
    try:
        res = {"num_gpus": 1} if s.device.startswith("cuda") else {"num_cpus": 1}
        Actor = ray.remote(max_restarts=2, max_task_retries=2, **res)(_Worker)
        actors = [Actor.remote(s, os.getcwd(), thread_env()) for _ in range(s.workers)]
        chunks = [items[w::s.workers] for w in range(s.workers)]
        refs = [a.run.remote(c, ppl_ids if w == 0 else None) for w, (a, c) in enumerate(zip(actors, chunks))]
        results: list[dict] = []
        stats = GenerateStats()
        for ref in refs:
            try:
                r, st = ray.get(ref)
            except Exception as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, ParityError):
                    raise ParityError(str(cause)) from None
                raise ParityError(f"a generate worker failed: {first_line(e, typed=True)}") from None
            results += r
            stats = stats.merge(st)
        results.sort(key=lambda r: r["index"])
        return results, stats
    finally:
        if started:
            ray.shutdown()


def generate(s: GenerateSettings) -> dict[str, Any]:
    """Run ``s`` and return the result as the JSON document docs/generation.md describes."""
    if s.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1 (got {s.max_new_tokens})")
    if s.workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {s.workers})")
    if not s.prompts:
        raise UsageError("no prompts: give --prompts FILE with --tokenizer, or --tokens FILE ...")
    from parity.core.registry import get_decoder

    ref_dec, tgt_dec = get_decoder(s.ref), get_decoder(s.target)
    ppl_ids: list[int] | None = None
    tok = None
    if s.tokenizer:
        from parity.lib.causal_lm import load_tokenizer

        tok = load_tokenizer(s.tokenizer)
    if s.perplexity_text:
        if tok is None:
            raise UsageError("--perplexity-text needs --tokenizer")
        ppl_ids = list(tok.encode(_read_text(s.perplexity_text)).ids)
    items = list(enumerate(s.prompts))
    if s.workers > 1 or s.ray_address:
        results, stats = _sharded(s, items, ppl_ids)
    else:
        results, stats = _run_block(s, items, ppl_ids)
    if tok is not None:
        for r in results:
            r["prompt_text"] = tok.decode(r["prompt_tokens"])
            r["ref_text"] = tok.decode(r["ref_tokens"])
            r["pieces"] = {str(t): tok.decode([t]) for t in set(r["ref_tokens"]) | {st["target_token"] for st in r["steps"]}
                           | set((r["free"] or {}).get("target_tokens", []))}
            if r["free"]:
                r["free"]["ref_text"] = tok.decode(r["free"]["ref_tokens"])
                r["free"]["target_text"] = tok.decode(r["free"]["target_tokens"])
    summary = stats.summary()
    worst = sorted(results, key=lambda r: (r["first_divergence"]["step"] if r["first_divergence"] else math.inf,
                                           -r["mean_kl"]))[:max(s.worst, 1)]
    summary["worst_prompts"] = [{"index": r["index"], "first_divergence_step": (r["first_divergence"] or {}).get("step"),
                                 "mean_kl": r["mean_kl"], "top1_agreement": r["top1_agreement"]} for r in worst]
    firsts = [r["first_divergence"]["step"] for r in results if r["first_divergence"]]
    summary["first_divergence_step"] = min(firsts) if firsts else None
    summary["diverged_prompts"] = len(firsts)
    cul = [d["culprit"] for r in results for d in r["diagnosis"] if d["why"] == "first divergence" and d["culprit"]]
    summary["culprits"] = sorted(set(cul), key=cul.index)
    calibration = ({"from": "prompts", "sequences": min(len(s.prompts), CALIBRATION_PROMPTS)}
                   if tgt_dec.uses_calibration else None)
    return {"schema": SCHEMA, "ref": s.ref, "target": s.target, "model": s.model,
            "target_model": s.target_model or s.model, "ref_format": str(ref_dec.number_format),
            "target_format": str(tgt_dec.number_format), "calibration": calibration, "mode": "teacher-forced" + (" + free-running" if s.free else ""),
            "incremental": s.incremental, "max_new_tokens": s.max_new_tokens, "device": s.device,
            "summary": summary, "prompts": results}

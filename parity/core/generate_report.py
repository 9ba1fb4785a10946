"""The outputs of ``parity generate``: a terminal table, the JSON document, and one offline HTML page.

Why not the reporters of ``compare``: those render a :class:`parity.contract.report.Report` (one row
per layer); a generation result is per step and per prompt, with texts. The page has no script and
no network: the per-step plot is inline SVG, the texts are spans with the first divergence marked.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from parity.contract.atomic import atomic_path
from parity.contract.errors import ParityError, first_line

__all__ = ["render_html", "render_table", "write"]


def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            return str(v)
        return f"{v:.{digits}g}"
    return str(v)


def _piece(r: dict, t: int) -> str:
    p = (r.get("pieces") or {}).get(str(t))
    return repr(p) if p is not None else f"<{t}>"


def render_table(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    fmt = f", {doc['target_format']}" if doc.get("target_format") else ""
    lines = [f"parity generate: {doc['ref']} (reference) vs {doc['target']} (target{fmt}), {doc['mode']}, "
             f"{doc['max_new_tokens']} new tokens, {s['prompts']} prompt(s)"]
    if doc.get("calibration"):
        lines.append(f"target calibrated on the first {doc['calibration']['sequences']} prompt(s)")
    lines += [f"top-1 agreement {_f(s['top1_agreement'])}   mean KL {_f(s['mean_kl'])} nats   "
             f"diverged prompts {s['diverged_prompts']}/{s['prompts']}   first divergence at step "
             f"{_f(s['first_divergence_step'])}"]
    if s.get("perplexity"):
        p = s["perplexity"]
        lines.append(f"perplexity over {p['tokens']} tokens: reference {_f(p['ref'])}, target {_f(p['target'])} "
                     f"(delta {_f(p['delta'])})")
    if s["culprits"]:
        lines.append("culprit layer(s) at the first divergence: " + ", ".join(s["culprits"]))
    for r in doc["prompts"]:
        fd = r["first_divergence"]
        head = f"\nprompt {r['index']}: top-1 {_f(r['top1_agreement'])}, mean KL {_f(r['mean_kl'])}, min cosine " \
               f"{_f(r['min_cosine'], 6)}"
        if fd:
            head += (f"; first divergence at step {fd['step']}: reference {_piece(r, fd['ref_token'])}, target "
                     f"{_piece(r, fd['target_token'])} (target prefers its token by {_f(fd['target_margin'])} logits)")
        else:
            head += "; no divergence"
        lines.append(head)
        if r.get("ref_text") is not None:
            lines.append(f"  reference: {r.get('prompt_text', '')!r} + {r['ref_text']!r}")
        if r["free"]:
            fr = r["free"]
            lines.append(f"  free-running: texts part at step {_f(fr['part_step'])}")
            if "target_text" in fr:
                lines.append(f"    reference: {fr['ref_text']!r}")
                lines.append(f"    target:    {fr['target_text']!r}")
        for d in r["diagnosis"]:
            lines.append(f"  step {d['step']} ({d['why']}): culprit {d['culprit'] or 'none named'}"
                         + (f" ({d['culprit_method']})" if d["culprit_method"] else ""))
            lines.append(f"    {'layer':<24} {'cosine':>10} {'local':>10} {'key cos':>10} {'value cos':>10}")
            for row in d["layers"]:
                lines.append(f"    {row['layer']:<24} {_f(row.get('cosine'), 6):>10} {_f(row.get('local_cosine'), 6):>10} "
                             f"{_f(row.get('key_cosine'), 6):>10} {_f(row.get('value_cosine'), 6):>10}")
    return "\n".join(lines) + "\n"


def _plot(r: dict[str, Any]) -> str:
    """Per-step KL (bars, log scale) with the disagreeing steps in red: one inline SVG."""
    steps = r["steps"]
    w, h, pad = 640, 160, 30
    n = max(len(steps), 1)
    kls = [max(st["kl"], 1e-12) for st in steps]
    lo, hi = math.log10(min(kls + [1e-6])), math.log10(max(kls + [1e-3]))
    hi = hi if hi > lo else lo + 1
    bw = (w - 2 * pad) / n
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
           f'aria-label="KL divergence per step">', f'<text x="{pad}" y="12" font-size="11">KL(ref || target) per step, '
           f'log scale {lo:.1f}..{hi:.1f}; red: argmax differs</text>']
    for i, (st, kl) in enumerate(zip(steps, kls)):
        frac = (math.log10(kl) - lo) / (hi - lo)
        bh = max(1.0, frac * (h - 2 * pad))
        color = "#c0392b" if not st["agree"] else "#2e86c1"
        out.append(f'<rect class="step{" diverged" if not st["agree"] else ""}" x="{pad + i * bw:.1f}" '
                   f'y="{h - pad - bh:.1f}" width="{max(bw - 1, 1):.1f}" height="{bh:.1f}" fill="{color}">'
                   f'<title>step {st["step"]}: KL {st["kl"]:.3g}, cosine {st["cosine"]:.6f}</title></rect>')
    out.append(f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#555"/>')
    out.append(f'<text x="{pad}" y="{h - 8}" font-size="11">step 0</text>'
               f'<text x="{w - pad - 40}" y="{h - 8}" font-size="11">step {n - 1}</text></svg>')
    return "".join(out)


def _text(r: dict[str, Any], tokens: list[int], part: int | None, cls: str) -> str:
    spans = []
    for i, t in enumerate(tokens):
        piece = (r.get("pieces") or {}).get(str(t))
        piece = f"⟨{t}⟩" if piece is None else piece
        mark = ' class="first-divergence"' if part is not None and i == part else (
            ' class="after"' if part is not None and i > part else "")
        spans.append(f'<span{mark} title="step {i}, token {t}">{html.escape(piece)}</span>')
    return f'<div class="text {cls}">{"".join(spans)}</div>'


def render_html(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>parity generate</title><style>",
             "body{font-family:sans-serif;margin:2em;max-width:60em}.text{white-space:pre-wrap;font-family:monospace;"
             "border:1px solid #ccc;padding:.5em;margin:.3em 0}.first-divergence{background:#f5b7b1;"
             "outline:1px solid #c0392b}.after{color:#7f8c8d}table{border-collapse:collapse}td,th{border:1px solid #ddd;"
             "padding:2px 6px;font-size:90%}</style></head><body>",
             f"<h1>parity generate: {html.escape(doc['ref'])} vs {html.escape(doc['target'])}</h1>",
             f"<p id='verdict'>{html.escape(doc['mode'])}, {doc['max_new_tokens']} new tokens, {s['prompts']} prompt(s). "
             f"Top-1 agreement {_f(s['top1_agreement'])}, mean KL {_f(s['mean_kl'])} nats, diverged prompts "
             f"{s['diverged_prompts']}/{s['prompts']}, first divergence at step {_f(s['first_divergence_step'])}."]
    if s["culprits"]:
        parts.append(" Culprit layer(s): " + html.escape(", ".join(s["culprits"])) + ".")
    if s.get("perplexity"):
        p = s["perplexity"]
        parts.append(f" Perplexity: reference {_f(p['ref'])}, target {_f(p['target'])} (delta {_f(p['delta'])}).")
    parts.append("</p>")
    for r in doc["prompts"]:
        fd = r["first_divergence"]
        parts.append(f"<section class='prompt'><h2>prompt {r['index']}</h2>")
        if r.get("prompt_text") is not None:
            parts.append(f"<p>prompt: <code>{html.escape(r['prompt_text'])}</code></p>")
        parts.append(_plot(r))
        part = fd["step"] if fd else None
        parts.append("<p>Teacher-forced: the reference's continuation, and the target's argmax at each step "
                     "(first divergence highlighted)</p>")
        parts.append(_text(r, r["ref_tokens"], part, "ref"))
        parts.append(_text(r, [st["target_token"] for st in r["steps"]], part, "target"))
        if r["free"]:
            fr = r["free"]
            parts.append(f"<p>Free-running (each side feeds its own tokens): the texts part at step "
                         f"{_f(fr['part_step'])}</p>")
            parts.append(_text(r, fr["ref_tokens"], fr["part_step"], "ref free"))
            parts.append(_text(r, fr["target_tokens"], fr["part_step"], "target free"))
        for d in r["diagnosis"]:
            parts.append(f"<h3>step {d['step']} ({html.escape(d['why'])}): culprit "
                         f"{html.escape(d['culprit'] or 'none named')}</h3><table><tr><th>layer</th><th>cosine</th>"
                         f"<th>local cosine</th><th>key cosine</th><th>value cosine</th></tr>")
            for row in d["layers"]:
                parts.append("<tr>" + "".join(f"<td>{html.escape(_f(row.get(k), 6))}</td>" for k in
                                              ("layer", "cosine", "local_cosine", "key_cosine", "value_cosine")) + "</tr>")
            parts.append("</table>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "".join(parts)


def write(doc: dict[str, Any], path: str, kind: str) -> None:
    """Write ``doc`` as ``kind`` (json, html, table) to ``path`` atomically (``-``: standard output)."""
    text = {"json": lambda: json.dumps(doc, indent=1, default=float) + "\n", "html": lambda: render_html(doc),
            "table": lambda: render_table(doc)}[kind]()
    if path == "-":
        print(text, end="")
        return
    try:
        with atomic_path(Path(path)) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
    except OSError as e:
        raise ParityError(f"cannot write the {kind} report {path}: {first_line(e, typed=True)}") from None

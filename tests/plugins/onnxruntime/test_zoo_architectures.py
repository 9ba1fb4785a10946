"""Real architectures (tests/models/real_zoo.py) through torch vs ONNX Runtime: fp32 parity, and the
culprit an expert names for each planted hazard."""
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from parity.core.compare import CompareSettings, compare  # noqa: E402

ZOO = Path(__file__).resolve().parents[2] / "models" / "real_zoo.py"
#: leaf modules that leave nothing behind in the exported graph: dropout is the identity in eval,
#: constant position embeddings are folded, a conv followed by batch norm is fused into it
VANISH = (nn.Dropout, nn.Embedding, nn.Conv2d)


def _zoo(name):
    spec = importlib.util.spec_from_file_location("real_zoo", ZOO)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)()


def _run(name, target, tmp_path, **kw):
    return compare(CompareSettings(model=f"{ZOO}:{name}", ref="torch", target=target,
                                   workdir=str(tmp_path / "c"), **kw))


def _dead_leaves(model: nn.Module) -> set[str]:
    """Leaf modules whose output the model's output does not depend on (the pooled features of an
    HF base model when the wrapper returns last_hidden_state): the exporter removes them as dead code.
    Read from torch's autograd graph, independently of the exporter and the matcher."""
    outs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, p=p: outs.__setitem__(p, o[0] if isinstance(o, tuple) else o))
             for p, m in model.named_modules() if p and not any(True for _ in m.children())]
    g = torch.Generator().manual_seed(0)
    dtypes = getattr(model, "parity_input_dtypes", {})
    feed = {k: torch.randint(0, 100, v, generator=g) if dtypes.get(k) == "int64" else torch.randn(v, generator=g)
            for k, v in model.parity_input_shapes.items()}
    with torch.enable_grad():
        out = model(**feed)
    for h in hooks:
        h.remove()
    live, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in live:
            continue
        live.add(fn)
        stack.extend(f for f, _ in fn.next_functions)
    return {p for p, o in outs.items() if isinstance(o, torch.Tensor) and o.grad_fn is not None and o.grad_fn not in live}


@pytest.mark.parametrize("name", ["bert", "gpt2", "vit", "convnext", "resnet", "rnn"])
def test_fp32_passes_with_every_surviving_leaf_matched(name, tmp_path):
    rep = _run(name, "ort", tmp_path)
    failing = [r.name for r in rep.layers if r.failing]
    assert not failing, failing
    model = _zoo(name)
    leaves = {p: m for p, m in model.named_modules() if p and not any(True for _ in m.children())}
    dead = _dead_leaves(model)
    unmatched = [r.name for r in rep.layers if r.status == "ref-only" and r.name in leaves
                 and not isinstance(leaves[r.name], VANISH) and r.name not in dead]
    assert not unmatched, unmatched
    # the sequence-first ONNX LSTM output is read in torch's batch_first layout, not flat
    if name == "rnn":
        lstm = {r.name: r for r in rep.layers}["lstm"]
        assert lstm.target_name and lstm.values["cosine"] > 0.9999, lstm.values


def test_dead_leaves_are_the_unused_poolers():
    """The exclusion above is narrow: only the pooled-feature modules the wrapper discards."""
    assert _dead_leaves(_zoo("convnext")) == {"convnext.layernorm"}
    assert _dead_leaves(_zoo("resnet")) == {"resnet.pooler"}
    assert _dead_leaves(_zoo("rnn")) == set()


def test_gpt2_residual_overflow_names_the_projection_that_writes_it(tmp_path):
    """Strict fp16 storage (as on a GPU): the projection's output is stored in fp16 where it is written."""
    rep = _run("gpt2", "ort-fp16-strict", tmp_path, diagnose=True)
    by = {r.name: r for r in rep.layers}
    first = by[rep.summary["first_culprit"]]
    # c_proj itself, or its Gemm (a target-only row inside it: the exported Conv1D is Gemm + Reshape)
    assert "gpt2.h.0.mlp.c_proj" in (first.name, first.meta.get("module")), first.name
    assert "gpt2.h.0.mlp.c_proj" in rep.summary["overflow_layers"]
    assert "no longer matches" in rep.summary["first_culprit_cause"]
    # the LayerNorm of the next block only inherits the infinities
    ln = {r.name: r for r in rep.layers}["gpt2.h.1.ln_1"]
    assert ln.order > {r.name: r for r in rep.layers}["gpt2.h.0.mlp.c_proj"].order


def test_gpt2_residual_overflow_on_the_cpu_provider_shows_where_it_is_stored_in_fp16(tmp_path):
    """As deployed on the CPU provider, the projection and the residual Add run in float32 (no fp16
    kernel): the 9e4 residual first becomes Inf where it is stored in fp16, at the input of the next
    block's LayerNorm (an op with an fp16 kernel). The diagnosis names that LayerNorm, says that its
    input holds the out-of-range value and which layer wrote it."""
    from parity.lib.onnx.asrun import cpu_fp32_only_ops

    rep = _run("gpt2", "ort-fp16", tmp_path, diagnose=True)
    assert "LayerNormalization" not in cpu_fp32_only_ops(("LayerNormalization",))
    assert rep.summary["first_culprit"] == "gpt2.h.1.ln_1"
    assert "gpt2.h.0.mlp.c_proj" in rep.summary["overflow_layers"]
    assert rep.summary["deployed"]["perturbed"] is False and rep.summary["deployed"]["outputs"][0]["nonfinite"] > 0


def test_resnet_dead_channel_batch_norm_overflows_fp16(tmp_path):
    """Strict fp16 storage (as on a GPU): the batch norm's output is stored in fp16."""
    rep = _run("resnet", "ort-fp16-strict", tmp_path, diagnose=True)
    first = {r.name: r for r in rep.layers}[rep.summary["first_culprit"]]
    assert first.name == "resnet.embedder.embedder.normalization"
    assert first.range["ref"]["absmax"] > 65504


def test_convnext_outlier_channel_names_the_per_tensor_quantizer(tmp_path):
    rep = _run("convnext", "ort-int8", tmp_path, diagnose=True)
    first = {r.name: r for r in rep.layers}[rep.summary["first_culprit"]]
    assert first.name == "convnext.encoder.stages.0.layers.0.dwconv"
    q = first.meta["local_quantizer"]
    # channel 5 sets the step; the other 15 channels' values are a fraction of one step
    assert q["levels"] < 1.0 and q["node"] in rep.summary["first_culprit_cause"]
    assert first.local["cosine"] < 0.5 < first.meta["local_whole"]["cosine"]

"""torch -> ONNX export for parity, with provenance kept on every node and a disk cache.

The dynamo exporter is preferred because it writes each node's module path into the node
metadata (``namespace``). parity adds one thing it lacks: which *call* of a module a node
belongs to (``parity.module_calls``, from ``torch.export``'s module stack), so that a
module run twice yields two distinguishable outputs. When dynamo export fails, the
TorchScript exporter is used; its node names (``/layer1/layer1.0/conv1/Conv``) still carry
the module scope. Both paths write through a temporary file, so a crash never leaves a
half-written model in the cache, and both save the model at an IR version the installed
onnxruntime reads (:func:`parity.lib.onnx.convert.clamp_ir_version`).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from parity.contract.atomic import atomic_path
from parity.contract.errors import ParityError, first_line
from parity.contract.progress import log, step

from parity.lib.onnx.convert import clamp_ir_version, max_ir_version
from parity.lib.onnx.util import file_digest, key_of
from parity.lib.onnx.provenance import CALLS_KEY

DEFAULT_OPSET = 18
EXPORTER_KEY = "parity.exporter"

_CALL_AT = re.compile(r"@(\d+)$")
_FX_NAME = re.compile(r"^%(\S+) :")
_PY_SPEC = re.compile(r"^(.+\.py):([A-Za-z_][A-Za-z0-9_.]*)$")


def _ordered_args(module: Any, example_feed: dict[str, np.ndarray],
                  input_order: Sequence[str] | None = None) -> list[str]:
    """Input names in the order ``forward`` takes them (feed order when names do not match)."""
    names = list(example_feed)
    if input_order and set(names) <= set(input_order):
        order = list(input_order)
        return sorted(names, key=order.index)
    try:
        params = [p.name for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    if params and set(names) <= set(params):
        return sorted(names, key=params.index)
    return names


def _annotate_calls(prog: Any) -> int:
    """Write ``parity.module_calls`` on each node from the exported program's module stacks.

    Returns how many nodes were annotated. A node whose stack does not agree with its
    ``namespace`` is left alone (provenance then falls back to the namespace).
    """
    from parity.lib.onnx.provenance import parse_namespace

    stacks: dict[str, list[tuple[str, int]]] = {}
    for fx in prog.exported_program.graph.nodes:
        st = fx.meta.get("nn_module_stack")
        if not st:
            continue
        chain: list[tuple[str, int]] = []
        for key, val in st.items():
            path = val[0] if isinstance(val, tuple) else ""
            if not path:
                continue
            m = _CALL_AT.search(str(key))
            chain.append((str(path), int(m.group(1)) if m else 0))
        stacks[fx.name] = chain
    done = 0
    for node in prog.model.graph.all_nodes():
        md = node.metadata_props
        fxs = md.get("pkg.torch.onnx.fx_node", "")
        m = _FX_NAME.match(fxs)
        ns = md.get("namespace")
        if not m or ns is None or m.group(1) not in stacks:
            continue
        chain = stacks[m.group(1)]
        if [p for p, _ in chain] != parse_namespace(ns):
            continue
        md[CALLS_KEY] = json.dumps(chain)
        done += 1
    return done


def export_onnx(module: Any, example_feed: dict[str, np.ndarray], out_path: str | Path,
                opset: int | None = None, *, dynamic_batch: bool = True, optimize: bool = True,
                dynamo: bool = True, input_order: Sequence[str] | None = None) -> Path:
    """Export ``module`` to ``out_path`` and return it; dynamo first, TorchScript if that fails.

    ``example_feed`` maps input names to arrays, in ``forward`` argument order (names that
    match ``forward`` parameters, or ``input_order``, are reordered to it). With
    ``dynamic_batch``, dimension 0 of every input is exported as the symbolic ``batch``
    (retried static if the model fixes it). The model's ``metadata_props`` says which
    exporter ran (``parity.exporter``) and, after a fallback, why dynamo failed.
    """
    import torch

    out = Path(out_path)
    opset = int(opset or DEFAULT_OPSET)
    names = _ordered_args(module, example_feed, input_order)
    args = tuple(torch.from_numpy(np.ascontiguousarray(example_feed[n])) for n in names)
    try:
        module.eval()
    except Exception:  # ExportedProgram modules refuse eval(); they are inference graphs already
        pass
    errors: list[str] = []
    if isinstance(module, torch.jit.ScriptModule):
        dynamo = False  # torch.export cannot trace TorchScript; skip the doomed attempts
        errors.append("skipped: the model is TorchScript")
    if dynamo:
        # the exporter logs one warning per torchvision op it cannot register when torchvision is
        # absent: noise for every model that does not use torchvision
        import logging

        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
        attempts = [True, False] if dynamic_batch else [False]
        for dyn in attempts:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    shapes = None
                    if dyn:
                        batch = torch.export.Dim("batch")
                        shapes = tuple({0: batch} if a.ndim >= 1 else {} for a in args)
                    prog = torch.onnx.export(module, args, None, dynamo=True, opset_version=opset,
                                             input_names=names, dynamic_shapes=shapes,
                                             optimize=optimize, verbose=False, report=False)
                try:
                    _annotate_calls(prog)
                except Exception as e:  # provenance extras must never break an export
                    errors.append(f"call annotation skipped: {e}")
                prog.model.metadata_props[EXPORTER_KEY] = (
                    f"torch.onnx dynamo (torch {torch.__version__}, opset {opset}, "
                    f"{'dynamic' if dyn else 'static'} batch)")
                clamp_ir_version(prog.model)  # an IR version the installed onnxruntime reads
                with atomic_path(out) as tmp:
                    prog.save(str(tmp))
                return out
            except Exception as e:  # any exporter failure: try the next way
                errors.append(f"dynamo ({'dynamic' if dyn else 'static'} batch): "
                              f"{first_line(e, typed=True)}")
    try:
        import onnx

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            axes = {n: {0: "batch"} for n, a in zip(names, args) if a.ndim >= 1} if dynamic_batch else None
            with atomic_path(out) as tmp:
                # PRESERVE (the module is in eval mode) keeps BatchNorm its own node: the EVAL
                # default folds it into the preceding Conv, which then carries the conv's scope
                # name while computing the batch norm's output
                torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=min(opset, 20),
                                  input_names=names, dynamic_axes=axes, do_constant_folding=True,
                                  training=torch.onnx.TrainingMode.PRESERVE)
                m = onnx.load(str(tmp))
                if not _outputs_depend_on_inputs(m):
                    raise ValueError("the traced graph's outputs do not depend on its inputs (the model "
                                     "leaves torch, e.g. through numpy or .item(), and the trace froze it)")
                tracer = sorted({str(w.message).splitlines()[0][:160] for w in caught
                                 if type(w.message).__name__ == "TracerWarning"})
                desc = f"torch.onnx TorchScript (torch {torch.__version__}, opset {min(opset, 20)})"
                if errors:
                    desc += f"; dynamo failed: {' | '.join(errors)[:500]}"
                if tracer:
                    desc += f"; tracer warnings: {' | '.join(tracer)[:500]}"
                entry = m.metadata_props.add()
                entry.key, entry.value = EXPORTER_KEY, desc
                clamp_ir_version(m)
                onnx.save(m, str(tmp))
        return out
    except Exception as e:
        why = " | ".join(errors + [f"torchscript: {first_line(e, typed=True)}"])
        raise ParityError(f"cannot export the torch model to ONNX for {out.name}. Note: {why[:800]}; "
                          f"export it yourself with torch.onnx.export and pass the .onnx file") from e




def _outputs_depend_on_inputs(model: Any) -> bool:
    """False when no graph output is reachable from a graph input: a trace that froze constants."""
    live = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    for n in model.graph.node:
        if any(x in live for x in n.input):
            live.update(n.output)
    return any(o.name in live for o in model.graph.output)


def _attr_repr(value: Any) -> str | None:
    """A stable text for an attribute value, or None for modules, tensors and reprs with a memory address."""
    import torch

    if isinstance(value, (torch.nn.Module, torch.Tensor)):
        return None  # covered by the structure and the state dict
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return repr(value)
    if isinstance(value, (tuple, list, frozenset, set, dict)) or type(value).__repr__ is not object.__repr__:
        try:  # a set's order changes with hash randomization: sort it so the key is stable across runs
            r = repr(sorted(value, key=repr)) if isinstance(value, (set, frozenset)) else repr(value)
        except Exception:  # noqa: BLE001 - an attribute that cannot print does not enter the key
            return None
        return None if " at 0x" in r else r[:100_000]
    return None


def _module_digest(module: Any) -> str:
    """Hash of what defines the exported graph: weights, structure and forward's source file."""
    import torch

    h = hashlib.sha256()
    h.update(type(module).__qualname__.encode())
    h.update(repr(module).encode())
    for cls in {type(m) for m in module.modules()} if hasattr(module, "modules") else {type(module)}:
        try:
            src = inspect.getsourcefile(cls)
        except (TypeError, OSError):
            src = None
        if src and Path(src).is_file() and "site-packages" not in src:
            h.update(file_digest(src).encode())
    if hasattr(module, "named_modules"):
        # plain attributes a forward may branch on (``self.negate = True``) are in neither repr nor weights
        for path, m in module.named_modules():
            for k, v in sorted(vars(m).items()):
                r = _attr_repr(v) if not k.startswith("_") and k != "training" else None
                if r is not None:
                    h.update(f"{path}.{k}={r}".encode())
    if hasattr(module, "state_dict"):
        for name, t in module.state_dict().items():
            h.update(name.encode())
            if isinstance(t, torch.Tensor):
                t = t.detach().cpu().contiguous()
                h.update(f"{t.dtype}{tuple(t.shape)}".encode())
                try:
                    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
                except Exception:
                    h.update(repr(t).encode())
    return h.hexdigest()


def cached_export(module: Any, example_feed: dict[str, np.ndarray], workdir: str | Path,
                  model_file: str | Path | None = None, opset: int | None = None, *,
                  dynamic_batch: bool = True, optimize: bool = True, dynamo: bool = True,
                  input_order: Sequence[str] | None = None) -> Path:
    """:func:`export_onnx` into ``workdir/onnx/``, reusing an earlier export of the same thing.

    The key covers the model file's bytes (if any; for a ``file.py:factory`` spec the file's
    bytes and the factory name), the module's weights, structure, plain attributes and class
    source files, input names/dtypes/shapes, export options and the torch version.
    """
    import torch

    src = Path(model_file) if model_file else None
    spec = None  # a Python spec file.py:factory: two factories of one file are two models
    if src is not None and not src.is_file():
        m = _PY_SPEC.match(str(model_file))
        if m and Path(m.group(1)).is_file():
            src, spec = Path(m.group(1)), m.group(2)
        elif ":" in str(model_file):  # package.module:factory
            spec = str(model_file)
    fdig = file_digest(src) if src is not None and src.is_file() else None
    sig = [(n, str(np.asarray(a).dtype), tuple(np.shape(a)))
           for n, a in ((n, example_feed[n]) for n in _ordered_args(module, example_feed, input_order))]
    key = key_of("export", torch.__version__, fdig, spec, _module_digest(module), sig,
                  int(opset or DEFAULT_OPSET), dynamic_batch, optimize, dynamo, max_ir_version())
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", src.stem if src is not None else type(module).__name__)[:60]
    out = Path(workdir) / "onnx" / f"{stem}-{key}.onnx"
    if out.is_file():
        log.info("ONNX export of %s: cached %s", type(module).__name__, out)
        return out
    with step(f"export {type(module).__name__} to ONNX (opset {int(opset or DEFAULT_OPSET)})"):
        made = export_onnx(module, example_feed, out, opset, dynamic_batch=dynamic_batch,
                           optimize=optimize, dynamo=dynamo, input_order=input_order)
    log.info("ONNX export of %s: %s", type(module).__name__, made)
    return made

"""Local runs for ``--diagnose``: each leaf module (or fx node) alone in the target precision.

*Local* error is what one layer adds on its own (see ``parity.core.diagnose``). Here it is measured
inside one fp32 forward: a forward pre-hook on every leaf module casts that call's inputs to
the target dtype (a copy, taken before the module can change them in place), and the forward
hook runs the target model's own module at the same path on them and hands the fp32 output
and the low-precision output out at once, through the same bounded queue ``run()`` uses. So
only one leaf call's inputs and outputs exist at a time, whatever the model's size.

:func:`local_results` is what ``TorchSource.local_errors`` does. ``keep_high_precision`` (the
fix ``parity fix`` searches) is applied when the model is prepared, in :mod:`.loader`.
"""
from __future__ import annotations

import operator
from collections import Counter
from dataclasses import replace
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from parity.contract.errors import ParityError, first_line
from parity.contract.source import RunConfig

from . import capture
from .loader import PreparedCache, module_of_key, torch_dtype
from .runner import graph_module, inputs

__all__ = ["local_results", "module_of_key", "run_local_fx", "run_local_modules"]


def local_results(target: PreparedCache, reference: PreparedCache, cfg: RunConfig,
                  feed: dict[str, np.ndarray], skipped: list[dict[str, str]]) -> Iterator[Any]:
    """Each layer of ``target``'s model alone in its precision on the fp32 (``reference``) inputs.

    Yields ``parity.contract.records.LocalResult`` keyed like ``run()``'s records; layers that
    fail alone are appended to ``skipped`` as ``{"key", "why"}``.
    """
    import torch

    with target.hold(cfg) as tgt:
        if tgt.loaded.kind == "torchscript":
            raise ParityError(f"local runs (--diagnose) of {target.name} need forward hooks, which TorchScript "
                              f"model {tgt.loaded.path} does not run. Note: give the model as a Python spec "
                              f"(file.py:factory) or an ExportedProgram (.pt2)")
        ref_cfg = replace(cfg, keep_high_precision=(), outputs_only=False)
        with reference.hold(ref_cfg) as ref:
            args, kwargs = inputs(reference.precision, ref, ref_cfg, feed)
            dtype = torch_dtype(target.precision)

            def skip(key: str, why: str) -> None:
                skipped.append({"key": key, "why": why})

            def work(emit: capture.Emit) -> None:
                with torch.no_grad():
                    if ref.mode == "modules":
                        run_local_modules(ref.module, tgt.module, args, kwargs, dtype, emit, skip,
                                          ref.type_names)
                    else:
                        gm = graph_module(ref, args, kwargs)
                        run_local_fx(gm, args, kwargs, dtype, emit, skip, tgt.keep)

            yield from capture.stream(work, f"local runs of {cfg.model} with source {target.name}",
                                      thread_name="parity-torch-local")


def _fresh_tree(value: Any, to: Any) -> Any:
    """Inputs for a local run: float32 tensors cast to ``to``, other tensors copied, so in-place
    work in either forward cannot change the other's inputs."""
    import torch

    if isinstance(value, torch.Tensor):
        if value.dtype == torch.float32:
            return value.to(to, copy=True)
        return value.clone()
    if isinstance(value, tuple):
        items = [_fresh_tree(v, to) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        return [_fresh_tree(v, to) for v in value]
    if isinstance(value, dict):
        items = {k: _fresh_tree(v, to) for k, v in value.items()}
        try:
            return type(value)(items)
        except Exception:
            return items
    return value


# --------------------------------------------------------------------------- local runs

Skip = Callable[[str, str], None]


def _emit_pairs(emit: Callable[[Any], None], name: str, ref: Any, low: Any, op_type: str | None,
                meta: dict[str, Any], only_indices: set[int] | None = None) -> None:
    """One LocalResult per floating tensor leaf, keyed like the target record of that leaf."""
    from parity.contract.records import LocalResult

    rl = list(capture.flatten_tensors(ref))
    ll = list(capture.flatten_tensors(low))
    if len(rl) != len(ll):
        return
    for index, ((kpath, rt), (_, lt)) in enumerate(zip(rl, ll)):
        if only_indices is not None and (not kpath or int(kpath.split(".")[0]) not in only_indices):
            continue
        if not rt.is_floating_point() or not lt.is_floating_point() or rt.shape != lt.shape:
            continue
        r, _ = capture.tensor_to_numpy(rt)
        t, dt = capture.tensor_to_numpy(lt)
        m = dict(meta)
        m["dtype"] = dt
        emit(LocalResult(key=name if index == 0 else f"{name}:{index}", ref=r, target=t, op_type=op_type, meta=m))


def run_local_modules(ref_module: Any, low_module: Any, args: tuple, kwargs: dict, dtype: Any,
                      emit: Callable[[Any], None], skip: Skip, type_names: dict[str, str] | None = None) -> None:
    """The fp32 forward with every leaf module's call re-run, right there, by the target's module."""
    low_by_path = dict(low_module.named_modules())
    calls: Counter[str] = Counter()
    pending: dict[str, list[tuple[tuple, dict]]] = {}
    handles = []

    def make(path: str, low: Any) -> tuple[Callable[..., None], Callable[..., None]]:
        def pre(_m: Any, a: tuple, kw: dict) -> None:
            pending.setdefault(path, []).append((_fresh_tree(a, dtype), _fresh_tree(kw, dtype)))

        def post(mod: Any, _a: tuple, _kw: dict, out: Any) -> None:
            k = calls[path]
            calls[path] += 1
            name = path if k == 0 else f"{path}#{k}"
            la, lkw = pending[path].pop()
            if low is None:
                skip(name, "the target model has no module at this path")
                return
            try:
                lout = low(*la, **lkw)
            except capture._Cancelled:
                raise
            except Exception as e:
                skip(name, f"running it alone in the target failed: {first_line(e, typed=True)}")
                return
            del la, lkw
            qual = (type_names or {}).get(path) or capture.qualified_type(type(mod))
            _emit_pairs(emit, name, out, lout, qual.rsplit(".", 1)[-1],
                        {"module_path": path, "module_type": qual, "call_index": k})
        pre._parity_hook = True  # type: ignore[attr-defined]
        post._parity_hook = True  # type: ignore[attr-defined]
        return pre, post

    try:
        for path, sub in ref_module.named_modules():
            if not path or next(iter(sub.children()), None) is not None:
                continue  # the root and containers: their work is their leaves'
            pre, post = make(path, low_by_path.get(path))
            handles.append(sub.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(sub.register_forward_hook(post, with_kwargs=True))
        ref_module(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()


def run_local_fx(gm: Any, args: tuple, kwargs: dict, dtype: Any, emit: Callable[[Any], None],
                 skip: Skip, keep: Iterable[str] = ()) -> None:
    """Interpret the fp32 graph; re-run each ``call_function`` node on its inputs cast to ``dtype``.

    Nodes inside modules the target keeps in fp32 (``keep``) are re-run in fp32, as the target does.
    """
    import torch
    import torch.fx

    kept = tuple(keep)

    rec = capture.Recorder(lambda _a: None, {})

    class _Local(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            if n.op != "call_function" or n.target is operator.getitem:
                return super().run_node(n)
            a, kw = self.fetch_args_kwargs_from_env(n)
            path = capture._module_of(n)[0]
            to = torch.float32 if any(path == k or path.startswith(k + ".") for k in kept) else dtype
            la, lkw = _fresh_tree(a, to), _fresh_tree(kw, to)  # before an in-place op runs
            out = super().run_node(n)
            name, k, meta, used = capture.fx_record_name(n, out, rec)
            try:
                lout = n.target(*la, **lkw)
            except Exception as e:
                skip(name, f"running it alone in the target failed: {first_line(e, typed=True)}")
                return out
            del la, lkw
            _emit_pairs(emit, name, out, lout, meta["op"], meta, only_indices=used)
            return out

    interp = _Local(gm)
    in_spec = getattr(gm, "_in_spec", None)
    if in_spec is None:
        interp.run(*args, *kwargs.values())
        return
    import torch.fx._pytree as fx_pytree

    flat = fx_pytree.tree_flatten_spec((tuple(args), dict(kwargs)), in_spec)
    interp.run(*flat, enable_io_processing=False)


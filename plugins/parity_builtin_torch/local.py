"""Diagnosis support for the torch sources: local runs, keep-in-fp32, output-only runs.

*Local* error is what one layer adds on its own (see ``parity.core.diagnose``). Here it is measured
inside one fp32 forward: a forward pre-hook on every leaf module casts that call's inputs to
the target dtype (a copy, taken before the module can change them in place), and the forward
hook runs the target model's own module at the same path on them and hands the fp32 output
and the low-precision output out at once, through the same bounded queue ``run()`` uses. So
only one leaf call's inputs and outputs exist at a time, whatever the model's size.

``keep_high_precision`` is the torch-autocast-style fix that ``parity fix`` searches: the named
modules keep their fp32 weights (cast from the loaded model, never from the rounded fp16 ones)
and cast their float inputs to fp32 on entry; they pass fp32 outputs on, and the next
low-precision module with weights casts them down on entry (as autocast does).
"""
from __future__ import annotations

import operator
import re
from collections import Counter
from typing import Any, Callable, Iterable

from parity.contract.errors import ParityError, first_line

from . import capture

_INDEX_RE = re.compile(r":\d+$")
_CALL_RE = re.compile(r"#\d+$")


# --------------------------------------------------------------------------- options

# --------------------------------------------------------------------------- tensors

def cast_tree(value: Any, to: Any, only: tuple = ()) -> Any:
    """``value`` with its floating tensors cast to ``to`` (those of dtype in ``only`` when given).

    Tuples, named tuples, lists and dicts are rebuilt; other objects pass through as they are.
    """
    import torch

    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and (not only or value.dtype in only):
            return value.to(to)
        return value
    if isinstance(value, tuple):
        items = [cast_tree(v, to, only) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        return [cast_tree(v, to, only) for v in value]
    if isinstance(value, dict):
        items = {k: cast_tree(v, to, only) for k, v in value.items()}
        try:
            return type(value)(items)
        except Exception:
            return items
    return value


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


# --------------------------------------------------------------------------- keep_high_precision

def module_of_key(key: str, fx: bool = False) -> str:
    """The module path a record key names: ``block#1:2`` -> ``block``; fx ``a.b#1/linear#2`` -> ``a.b``."""
    k = _INDEX_RE.sub("", key.strip())
    if fx:
        if "/" not in k:
            return ""
        k = k.split("/", 1)[0]
    return _CALL_RE.sub("", k)


def resolve_keep(module: Any, names: Iterable[str], where: str, fx: bool = False) -> list[str]:
    """Module paths to keep in fp32 for record keys / module paths; the outermost of nested ones."""
    paths = {p for p, _ in module.named_modules() if p}
    wanted: list[str] = []
    unknown: list[str] = []
    for n in names:
        p = n if n in paths else module_of_key(n, fx)
        if p in paths:
            if p not in wanted:
                wanted.append(p)
        else:
            unknown.append(n)
    if unknown:
        valid = sorted(paths, key=lambda s: (s.count("."), s))
        more = f", … ({len(valid)} in all)" if len(valid) > 12 else ""
        why = (" 'output' is the model's output record, not a layer;" if "output" in unknown else "")
        if fx and any("/" not in _INDEX_RE.sub("", u) and u != "output" for u in unknown):
            why += " ops in the model's own forward (no submodule) cannot be kept;"
        raise ParityError(f"keep_high_precision names {', '.join(map(repr, unknown))}, which are not modules of "
                          f"{where}.{why} Note: give module paths or record keys (a '#k' call suffix and ':N' "
                          f"output index are accepted); modules there: {', '.join(valid[:12]) or 'none'}{more}")
    wanted.sort(key=lambda s: s.count("."))
    outer: list[str] = []
    for p in wanted:
        if not any(p.startswith(o + ".") for o in outer):
            outer.append(p)
    return outer


def cast_keeping(module: Any, device: Any, dtype: Any, keep: list[str], where: str) -> None:
    """Move ``module`` to ``device`` and cast it to ``dtype``, except the ``keep`` subtrees (fp32).

    Each module's own tensors are cast once from their loaded values, so kept weights are the
    original fp32 ones. A parameter shared across the boundary cannot be both: refused.
    """
    import torch

    kept = {id(m) for p in keep for m in module.get_submodule(p).modules()}
    side: dict[int, tuple[bool, str]] = {}
    for path, sub in module.named_modules(remove_duplicate=False):
        k = id(sub) in kept
        for tname, t in list(sub._parameters.items()) + list(sub._buffers.items()):
            if t is None or not t.is_floating_point():
                continue
            prev = side.setdefault(id(t), (k, f"{path}.{tname}" if path else tname))
            if prev[0] != k:
                raise ParityError(f"keep_high_precision: {where} shares the tensor {prev[1]} with "
                                  f"{path + '.' + tname if path else tname}, one inside a kept module and one "
                                  f"outside. Note: keep both modules in fp32, or neither")
    module.to(device=device)
    for sub in module.modules():
        want = torch.float32 if id(sub) in kept else dtype
        sub._apply(lambda t, w=want: t.to(w) if t.is_floating_point() else t, recurse=False)
    low = (torch.float16, torch.bfloat16)
    for p in keep:
        top = module.get_submodule(p)
        for sub in top.modules():  # inner ones too, in case something outside calls them directly
            def enter(_m: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
                return cast_tree(args, torch.float32, low), cast_tree(kwargs, torch.float32, low)
            enter._parity_hook = True  # type: ignore[attr-defined]
            sub.register_forward_pre_hook(enter, with_kwargs=True)
    # Kept modules hand their outputs on in fp32, as autocast does: casting them back on exit would
    # re-create the very overflow they are kept for (an output beyond 65504 becomes inf in fp16).
    # Each low-precision module with weights instead casts fp32 inputs to its own dtype on entry.
    if keep:
        for sub in module.modules():
            if id(sub) in kept:
                continue
            own = [t for t in list(sub._parameters.values()) + list(sub._buffers.values())
                   if t is not None and t.is_floating_point()]
            if not own:
                continue

            def to_low(_m: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
                return cast_tree(args, dtype, (torch.float32,)), cast_tree(kwargs, dtype, (torch.float32,))
            to_low._parity_hook = True  # type: ignore[attr-defined]
            sub.register_forward_pre_hook(to_low, with_kwargs=True)


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


"""Capturing intermediate tensors from a PyTorch forward pass, streamed to the consumer.

Three capture paths share one :class:`Recorder`:

* ``modules``: forward hooks on every submodule of an eager module;
* ``fx``: an FX interpreter over a ``torch.export`` graph, one record per ``call_function`` node;
* TorchScript: Python hooks do not fire inside scripted code, so every submodule call in the
  scripted graphs is wrapped by two side-effecting custom ops (``parity_capture::enter`` and
  ``::exit``) whose Python kernels keep a module-path stack and record the submodule's result.

A layer selection (``--layers``, ``RunConfig.layers``) is honoured where the capture happens:
hooks go only on modules it may select, and a record it does not select is never copied off the
model (model outputs are always kept). The core filters with the same rule afterwards.

Records are copied off the device at capture time (so later in-place ops cannot change them),
or cloned where they are when the core takes device records (``RunConfig.device_records``), and handed to the consumer through a bounded queue from a worker thread that runs the forward:
the forward waits while the consumer scores, so only a couple of activations live at once.
"""
from __future__ import annotations

import collections
import operator
import re
import threading
from collections import Counter
from typing import Any, Callable, Iterator

import numpy as np

from parity.contract.errors import ParityError, first_line
from parity.contract.records import Activation, to_host
from parity.contract.source import LayerSelection

Emit = Callable[[Activation], None]

class _Cancelled(BaseException):
    """Raised inside the forward when the consumer stopped reading; BaseException so model code's
    ``except Exception`` cannot swallow it."""


# --------------------------------------------------------------------------- tensors to records

def flatten_tensors(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every tensor leaf of a (nested) tuple/list/dict output with its key path, in order."""
    import torch

    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from flatten_tensors(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            yield from flatten_tensors(v, f"{path}.{i}" if path else str(i))
    # anything else (None, ints, strings, custom objects) carries no activation


def _plain(t: Any) -> Any:
    """``t`` detached, dense, dequantized, with conjugate and negative bits resolved."""
    import torch

    t = t.detach()
    if t.is_quantized:
        t = t.dequantize()
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return t


def tensor_clone(t: Any) -> tuple[Any, str]:
    """A detached clone of ``t`` where it is (a device record: ``RunConfig.device_records``), and the
    torch dtype name. A clone, not ``t`` itself: a later in-place op of the model must not change it."""
    t = _plain(t)
    return t.clone(), str(t.dtype).replace("torch.", "")


def tensor_to_numpy(t: Any) -> tuple[np.ndarray, str]:
    """A CPU numpy copy of ``t`` in its own dtype, and the torch dtype name.

    Types numpy lacks (bfloat16, float8) become float32 (:func:`parity.contract.records.to_host`, the
    host copy every device record gets too); the name keeps the truth.
    """
    t = _plain(t)
    return to_host(t), str(t.dtype).replace("torch.", "")


class Recorder:
    """Names, numbers and converts captured tensors; runs in the forward's thread.

    Naming rule (streaming, so decided at capture time): the first call of a module is its
    plain path, later calls are ``path#1``, ``path#2`` ...; ``meta["call_index"]`` is k.
    With ``layers``, a record is kept when the selection selects its name, key, module path or
    fx node (what the core's filter may look at), and model outputs always.
    """

    def __init__(self, emit: Emit, base_meta: dict[str, Any], include_integer: bool = False,
                 layers: LayerSelection | None = None, device_records: bool = False) -> None:
        self.emit = emit
        #: records are device clones (the core scores them where they are), not host copies
        self.copy = tensor_clone if device_records else tensor_to_numpy
        self.base_meta = base_meta
        self.include_integer = include_integer
        self.layers = layers
        self.order = 0
        self._calls: Counter[str] = Counter()

    def call_name(self, path: str) -> tuple[str, int]:
        k = self._calls[path]
        self._calls[path] += 1
        return (path if k == 0 else f"{path}#{k}"), k

    def record(self, name: str, value: Any, op_type: str | None, meta: dict[str, Any],
               only_indices: set[int] | None = None) -> None:
        """Emit one Activation per tensor in ``value``; output_index counts all tensor leaves.

        ``only_indices`` keeps the leaves under those top-level positions of a tuple/list.
        """
        leaves = list(flatten_tensors(value))
        container = not (len(leaves) == 1 and leaves[0][0] == "")
        for index, (key, t) in enumerate(leaves):
            if only_indices is not None and (not key or int(key.split(".")[0]) not in only_indices):
                continue
            if not (t.is_floating_point() or t.is_complex()) and not self.include_integer:
                continue
            if self.layers is not None and not meta.get("is_output") and not self.layers.selects(
                    name, name if index == 0 else f"{name}:{index}", meta.get("module_path"), meta.get("node")):
                continue  # not selected: never copied off the model
            arr, dtype_name = self.copy(t)
            m = dict(self.base_meta)
            m.update(meta)
            m["dtype"] = dtype_name
            m["device"] = str(t.device)
            if container:
                m["output_key"] = key
            act = Activation(name=name, array=arr, output_index=index, order=self.order, op_type=op_type, meta=m)
            self.order += 1
            self.emit(act)

    def record_outputs(self, value: Any) -> None:
        self.record("output", value, "output", {"is_output": True})


# --------------------------------------------------------------------------- streaming

class _Done:
    pass


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


#: bytes of captured records the forward may run ahead of the consumer (when no step_bytes is given)
QUEUE_BYTES = 32 << 20


def _nbytes(item: Any) -> int:
    arr = getattr(item, "array", None)
    return int(getattr(arr, "nbytes", 0) or 0)


def stream(work: Callable[[Emit], None], what: str, thread_name: str = "parity-torch-forward",
           max_bytes: int | None = None) -> Iterator[Activation]:
    """Run ``work(emit)`` in a worker thread and yield what it emits, holding at most ``max_bytes`` queued.

    Why bytes, not one record: with one record at a time, producer and consumer hand the GIL to each
    other on every record, and each hand-over waits out the interpreter's switch interval (~10 ms a
    record: 0.25 s a feed for a small model); letting the forward run ahead within a byte budget
    keeps memory bounded and the hand-overs few. A record bigger than the budget is queued alone.

    Closing the generator early cancels the worker at its next emit and joins it. An exception
    in the worker is re-raised here: ParityError as is, anything else as a one-line ParityError
    naming ``what`` with the original chained.
    """
    budget = QUEUE_BYTES if max_bytes is None else max(1, int(max_bytes))
    cv = threading.Condition()
    items: collections.deque[tuple[Any, int]] = collections.deque()
    held = [0]
    cancel = threading.Event()

    def put(item: Any) -> None:
        n = _nbytes(item)
        with cv:
            while items and held[0] + n > budget:
                if cancel.is_set():
                    raise _Cancelled()
                cv.wait(0.05)
            if cancel.is_set():
                raise _Cancelled()
            items.append((item, n))
            held[0] += n
            cv.notify_all()

    def get() -> Any:
        with cv:
            while not items:
                cv.wait()
            item, n = items.popleft()
            held[0] -= n
            cv.notify_all()
            return item

    def target() -> None:
        try:
            work(put)
            put(_Done())
        except _Cancelled:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            if cancel.is_set():
                return  # a cancel surfacing through C++ as RuntimeError
            try:
                put(_Failed(e))
            except _Cancelled:
                pass

    th = threading.Thread(target=target, name=thread_name, daemon=True)
    th.start()
    try:
        while True:
            item = get()
            if isinstance(item, _Done):
                return
            if isinstance(item, _Failed):
                e = item.exc
                if isinstance(e, ParityError):
                    raise e
                detail = first_line(e, typed=True)
                raise ParityError(f"{what} failed. Note: {detail}") from e
            yield item
    finally:
        cancel.set()
        while th.is_alive():
            with cv:  # drop what is queued and wake a put in progress
                items.clear()
                held[0] = 0
                cv.notify_all()
            th.join(0.05)


# --------------------------------------------------------------------------- modules mode (hooks)

def qualified_type(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def may_select(layers: LayerSelection | None, path: str) -> bool:
    """Whether ``layers`` can select a record of the module at ``path`` (so it needs a hook).

    True when it selects the path itself, names one of its calls or outputs exactly
    (``path#1``, ``path:1``), or has a pattern about call or output suffixes (``#``, ``:``), which
    only the record's name can answer: those modules are hooked and each record is checked.
    """
    if layers is None or layers.selects(path):
        return True
    if any(re.split(r"[#:]", n, maxsplit=1)[0] == path for n in layers.names):
        return True
    return layers.pattern is not None and ("#" in layers.pattern or ":" in layers.pattern)


def run_with_hooks(module: Any, args: tuple, kwargs: dict, rec: Recorder,
                   type_names: dict[str, str] | None = None) -> Any:
    """Call ``module`` with a forward hook on every submodule (root excluded) and return its output.

    With a layer selection on ``rec``, only modules it may select are hooked (:func:`may_select`).

    ``type_names`` overrides the reported class for a path (unflattened ExportedPrograms, whose
    submodules are InterpreterModules standing in for the original classes).
    """
    handles = []

    def make_hook(path: str, sub: Any) -> Callable[..., None]:
        # the names are fixed per submodule: work them out once, not on every call
        qual = (type_names or {}).get(path) or qualified_type(type(sub))
        op_type = qual.rsplit(".", 1)[-1]

        def hook(mod: Any, inputs: Any, output: Any) -> None:
            name, k = rec.call_name(path)
            rec.record(name, output, op_type, {"module_path": path, "module_type": qual, "call_index": k})
        hook._parity_hook = True  # type: ignore[attr-defined]
        return hook

    try:
        for path, sub in module.named_modules():
            if path and may_select(rec.layers, path):
                handles.append(sub.register_forward_hook(make_hook(path, sub)))
        return module(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()


def strip_capture_hooks(module: Any) -> None:
    """Remove this plugin's hooks from a module copied while another run had them attached.

    ``copy.deepcopy`` copies hook dictionaries too, and a copied hook would feed the other run's
    queue (or keep another run's modules in fp32); the model's own hooks (weight norm, user
    hooks) are kept.
    """
    for m in module.modules():
        for attr, extras in (("_forward_hooks", ("_forward_hooks_with_kwargs", "_forward_hooks_always_called")),
                             ("_forward_pre_hooks", ("_forward_pre_hooks_with_kwargs",))):
            hooks = getattr(m, attr, None) or {}
            for hid in [h for h, fn in list(hooks.items()) if getattr(fn, "_parity_hook", False)]:
                hooks.pop(hid, None)
                for extra in extras:
                    getattr(m, extra, {}).pop(hid, None)


# --------------------------------------------------------------------------- fx mode

_AT_RE = re.compile(r"@(\d+)$")


def _op_name(target: Any) -> str:
    name = getattr(target, "_opname", None) or getattr(target, "__name__", None) or str(target)
    return str(name)


def _module_of(node: Any) -> tuple[str, str, int]:
    """(module path, module type, module call index) of the innermost module a node ran in."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", "", 0
    key, (path, typ) = list(stack.items())[-1]
    m = _AT_RE.search(str(key))
    typ_name = typ if isinstance(typ, str) else qualified_type(typ)
    return str(path), typ_name, int(m.group(1)) if m else 0


def fx_record_name(n: Any, out: Any, rec: Recorder) -> tuple[str, int, dict[str, Any], set[int] | None]:
    """Record name, call index, meta (with ``op``) and used output positions of one call_function node.

    Shared by the capture run and the local runs, so both name a node's records alike.
    """
    path, typ, mk = _module_of(n)
    label = path if mk == 0 else f"{path}#{mk}"
    op = _op_name(n.target)
    name, k = rec.call_name(f"{label}/{op}" if path else op)
    used = None
    if isinstance(out, (tuple, list)):
        used = {u.args[1] for u in n.users if u.target is operator.getitem
                and isinstance(u.args[1], int)} or None
    meta = {"module_path": path, "module_type": typ, "call_index": k, "module_call_index": mk,
            "node": n.name, "target": str(n.target), "op": op}
    return name, k, meta, used


def run_fx(gm: Any, args: tuple, kwargs: dict, rec: Recorder) -> Any:
    """Interpret ``gm`` (an ExportedProgram's module) and record every call_function node's tensors.

    Names are ``module.path/op`` (``op`` alone at the top level); a module's later calls carry
    ``#k`` on the module part and repeated ops in one module call carry ``#k`` on the whole name.
    Multi-output ops record only the outputs the graph reads (their ``getitem`` users).
    """
    import torch.fx

    class _Capture(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            out = super().run_node(n)
            if n.op == "call_function" and n.target is not operator.getitem:
                name, _k, meta, used = fx_record_name(n, out, rec)
                op = meta.pop("op")
                rec.record(name, out, op, meta, only_indices=used)
            return out

    interp = _Capture(gm)
    in_spec = getattr(gm, "_in_spec", None)
    if in_spec is None:
        return interp.run(*args, *kwargs.values())
    import torch.fx._pytree as fx_pytree

    # What the exported module's own forward does: flatten (args, kwargs) by its input spec.
    flat = fx_pytree.tree_flatten_spec((tuple(args), dict(kwargs)), in_spec)
    out = interp.run(*flat, enable_io_processing=False)
    return gm.graph.process_outputs(out)


# --------------------------------------------------------------------------- TorchScript

_LIB: Any = None
_LIB_LOCK = threading.Lock()
_TLS = threading.local()
_OPS_NS = "parity_capture"
_FORWARD_RE = re.compile(r"^forward\d*$")


class _TSState:
    def __init__(self, rec: Recorder, types: dict[str, str]) -> None:
        self.rec = rec
        self.types = types
        self.stack: list[str] = []


def _ts_enter(name: str) -> None:
    st = getattr(_TLS, "state", None)
    if st is not None:
        st.stack.append(name)


def _ts_exit(out: Any, record: bool) -> None:
    st = getattr(_TLS, "state", None)
    if st is None:
        return
    path = ".".join(st.stack)
    if st.stack:
        st.stack.pop()
    if record and path:
        name, k = st.rec.call_name(path)
        qual = st.types.get(path, "")
        st.rec.record(name, out, qual.rsplit(".", 1)[-1] or None,
                      {"module_path": path, "module_type": qual, "call_index": k})


def _ensure_ts_ops() -> None:
    """Define the two capture ops once per process (CONSERVATIVE: the JIT must not drop or move them)."""
    global _LIB
    with _LIB_LOCK:
        if _LIB is not None:
            return
        import torch

        lib = torch.library.Library(_OPS_NS, "DEF")
        lib.define("enter(str name) -> ()", alias_analysis="CONSERVATIVE")
        lib.define("exit(Any out, bool record) -> ()", alias_analysis="CONSERVATIVE")
        lib.impl("enter", _ts_enter, "CompositeExplicitAutograd")
        lib.impl("exit", _ts_exit, "CompositeExplicitAutograd")
        _LIB = lib


def ts_type_name(script_module: Any) -> str:
    """Qualified class of a scripted module without TorchScript's ``__torch__.`` and mangling."""
    try:
        q = script_module._c._type().qualified_name()
    except Exception:
        return type(script_module).__name__
    q = re.sub(r"^__torch__\.", "", q)
    return re.sub(r"___torch_mangle_\d+\.", "", q)


def instrument_torchscript(module: Any) -> dict[str, str]:
    """Wrap every submodule call in every scripted method with enter/exit ops; return path -> type.

    Graphs belong to types, which instances share, so the ops carry only the attribute name and
    the full path is rebuilt at run time from the call stack. Must run before the first call
    (the executor snapshots the graph then).
    """
    _ensure_ts_ops()
    types: dict[str, str] = {}
    module_types: set[str] = set()
    seen: set[str] = set()
    methods = []
    for path, sub in module.named_modules():
        try:
            t = sub._c._type()
        except AttributeError:
            continue
        q = t.qualified_name()
        module_types.add(q)
        if path:
            types[path] = ts_type_name(sub)
        if q in seen:
            continue
        seen.add(q)
        for mname in t.method_names():
            try:
                methods.append(sub._c._get_method(mname).graph)
            except Exception:
                continue
    for g in methods:
        if g.findNode(f"{_OPS_NS}::enter") is not None:  # already instrumented
            continue
        _instrument_graph(g, module_types)
    return types


def _attr_chain(value: Any, self_value: Any, module_types: set[str]) -> str | None:
    """``a.b`` for a value produced by GetAttr chains from ``self`` ending on a module, else None."""
    parts: list[str] = []
    v = value
    while v is not self_value:
        node = v.node()
        if node.kind() != "prim::GetAttr":
            return None
        parts.append(node.s("name"))
        v = node.inputsAt(0)
    try:
        if value.type().qualified_name() not in module_types:
            return None
    except Exception:
        return None
    return ".".join(reversed(parts)) if parts else ""


def _instrument_graph(g: Any, module_types: set[str]) -> None:
    self_value = next(iter(g.inputs()))

    def walk(block: Any) -> None:
        for n in list(block.nodes()):
            for b in n.blocks():
                walk(b)
            if n.kind() != "prim::CallMethod":
                continue
            rel = _attr_chain(n.inputsAt(0), self_value, module_types)
            if not rel:  # a call on self (helper method) keeps the path; unknown receivers are skipped
                continue
            # torch.jit.trace names a module's second, third... call forward1, forward2...
            record = _FORWARD_RE.match(n.s("name")) is not None
            with g.insert_point_guard(n):
                name_c = g.insertConstant(rel)
                g.insertNode(g.create(f"{_OPS_NS}::enter", [name_c], 0))
                rec_c = g.insertConstant(record)
                out_v = n.output() if n.outputsSize() == 1 else g.insertConstant(None)
            exit_node = g.create(f"{_OPS_NS}::exit", [out_v, rec_c], 0)
            exit_node.insertAfter(n)

    walk(g.block())


def run_torchscript(module: Any, args: tuple, kwargs: dict, rec: Recorder, types: dict[str, str]) -> Any:
    """Call an instrumented scripted module with this thread's recorder active."""
    prev = getattr(_TLS, "state", None)
    _TLS.state = _TSState(rec, types)
    try:
        return module(*args, **kwargs)
    finally:
        _TLS.state = prev

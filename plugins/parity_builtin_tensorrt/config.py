"""What a TensorRT engine is built with, parsed from a target name and plain options.

No TensorRT here: this module turns ``trt-fp16`` (or ``trt-rtx-fp16``) plus ``cfg.options`` into an
:class:`EngineConfig` (builder flags by *name*, so they can be checked and hashed without
TensorRT), parses the per-layer precision spelling trtexec and Polygraphy use
(``--layerPrecisions=name:fp32,other*:fp16``), applies ``outputs_only`` and ``keep_high_precision``
(:func:`run_engine_config`), and derives the engine cache key (model digests from
:mod:`parity.lib.onnx.util`).

Two libraries go through this one code path; what differs is named in :class:`Library`:
TensorRT 10 (``trt-*``: builder flags choose precisions, layers can be pinned with
``ILayer.precision``) and TensorRT for RTX (``trt-rtx-*``: every network is strongly typed and
there is no FP16/BF16/INT8 builder flag, so the ONNX model is cast to the target's type first
(:attr:`EngineConfig.cast`) and layers kept in fp32 are nodes the cast leaves in fp32,
:func:`fp32_nodes`).

Option keys read from ``RunConfig.options`` (the CLI spells them ``--trt-capture`` etc.):

``trt_capture``            ``debug`` (default) | ``mark`` | ``outputs``
``trt_debug_strategy``     ``auto`` (default) | ``unfused`` | ``marked`` (how ``debug`` marks tensors)
``trt_mark``               regular expression: capture only tensors/layers whose name matches
``trt_mark_names``         list (or comma string) of tensor or layer names to capture
``trt_layer_precisions``   ``name:fp32,other:fp16`` (trtexec ``--layerPrecisions`` spelling;
                           ``layer_precisions``, as ``--layer-precisions`` sets it, is read too)
``trt_precision_constraints`` ``obey`` | ``prefer`` | ``none`` (default ``obey`` when overrides are given)
``trt_workspace``          workspace pool limit: ``4096`` (MiB, as trtexec), ``2G``, ``512MiB``
``trt_strongly_typed``     build a strongly typed network (precision from the ONNX types)
``trt_int8_fallback``      ``fp32`` (default) | ``fp16``: what int8 layers that cannot be int8 run in
``trt_engine_cache``       reuse engines from ``workdir/trt`` (default true)
``trt_queue_size``         debug tensors held between TensorRT and the scorer (default 4)
``outputs_only``           capture the network outputs only (``trt_capture outputs``; what ``parity fix`` runs)
``keep_high_precision``    ONNX tensor names whose producing layers are built in fp32 (``parity fix``)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from parity.contract.errors import ParityError
from parity.contract.options import as_bool, as_list
from parity.lib.onnx.util import model_digest

if TYPE_CHECKING:  # pragma: no cover
    import onnx

@dataclass(frozen=True)
class Library:
    """One TensorRT library parity drives, and its small named differences from the others."""

    module: str                  # what ``import`` names
    label: str                   # the library in messages, build notes and the engine cache key
    prefix: str                  # target names are ``<prefix>-<precision>``
    precisions: tuple[str, ...]  # the targets it offers
    #: every network is strongly typed: precision comes from the ONNX types (the model is cast
    #: first), there are no precision builder flags and no ``ILayer.precision``
    strongly_typed: bool
    min_major: int               # oldest major version parity drives
    install: str                 # how to get it


TENSORRT = Library("tensorrt", "TensorRT", "trt", ("fp32", "fp16", "bf16", "int8", "tf32"), False, 10,
                   "pip install tensorrt on a machine with an NVIDIA GPU, or use NVIDIA's TensorRT container")
TENSORRT_RTX = Library("tensorrt_rtx_bindings", "TensorRT-RTX", "trt-rtx", ("fp32", "fp16", "bf16"), True, 1,
                       "pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings (engines run on "
                       "compute capability 8.0, 8.6, 8.9 and 12.0+: RTX, Ampere, Ada, Blackwell)")
#: module name -> library
LIBRARIES: dict[str, Library] = {lib.module: lib for lib in (TENSORRT, TENSORRT_RTX)}

#: target name -> precision
TARGETS: dict[str, str] = {f"{lib.prefix}-{p}": p for lib in (TENSORRT, TENSORRT_RTX) for p in lib.precisions}
#: target name -> the library that builds it
TARGET_LIBRARY: dict[str, Library] = {f"{lib.prefix}-{p}": lib for lib in (TENSORRT, TENSORRT_RTX)
                                      for p in lib.precisions}
CAPTURE_MODES = ("debug", "mark", "outputs")
DEBUG_STRATEGIES = ("auto", "unfused", "marked")
#: precisions trtexec accepts in --layerPrecisions (samples/common/sampleOptions.cpp, TensorRT 10)
LAYER_PRECISIONS = ("fp32", "fp16", "bf16", "int32", "int8")
#: Polygraphy's --layer-precisions spells them as TensorRT data type aliases
_PRECISION_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16",
                      "bfloat16": "bf16", "int32": "int32", "int8": "int8"}
CONSTRAINTS = ("obey", "prefer", "none")
#: trt_precision_constraints value -> the tensorrt.BuilderFlag it sets ("none" sets neither)
_CONSTRAINT_FLAGS = {"obey": "OBEY_PRECISION_CONSTRAINTS", "prefer": "PREFER_PRECISION_CONSTRAINTS"}

_UNITS = {"": 1 << 20, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


@dataclass(frozen=True)
class LayerPrecision:
    """One ``--layerPrecisions`` entry; ``pattern`` may hold one ``*`` as trtexec allows."""

    pattern: str
    precision: str

    def matches(self, layer_name: str) -> bool:
        if "*" not in self.pattern:
            return self.pattern == layer_name
        head, tail = self.pattern.split("*", 1)
        return (len(layer_name) >= len(head) + len(tail) and layer_name.startswith(head)
                and layer_name.endswith(tail))


@dataclass(frozen=True)
class EngineConfig:
    """Everything that decides what engine TensorRT builds and how it is observed.

    ``builder_flags`` are ``tensorrt.BuilderFlag`` member names to set and
    ``cleared_flags`` names to clear (TF32 is on by default in TensorRT, so an honest
    fp32 engine clears it). ``library`` is the module that builds it (:data:`LIBRARIES`);
    ``cast`` the type the ONNX model is cast to before a strongly typed build (TensorRT-RTX).
    """

    precision: str = "fp32"
    library: str = "tensorrt"
    cast: str | None = None
    builder_flags: tuple[str, ...] = ()
    cleared_flags: tuple[str, ...] = ()
    strongly_typed: bool = False
    workspace_bytes: int | None = None
    layer_precisions: tuple[LayerPrecision, ...] = ()
    precision_constraints: str = "none"
    capture: str = "debug"
    debug_strategy: str = "auto"
    mark_regex: str | None = None
    mark_names: tuple[str, ...] = ()
    int8_fallback: str = "fp32"
    #: the run's ``--layers`` (a regex and names): only selected tensors are marked (model outputs stay)
    layers_pattern: str | None = None
    layers_names: tuple[str, ...] = ()
    #: per ONNX tensor, other names ``--layers`` may use for it (producing node, torch module paths);
    #: not a build field: it only widens what the selection recognises
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    use_cache: bool = True
    queue_size: int = 4
    extra: Mapping[str, Any] = field(default_factory=dict)

    # -- what the capture selection and the cache need -------------------------------
    def build_fields(self) -> dict[str, Any]:
        """The fields that change the built engine (capture mode included: it marks tensors)."""
        d = asdict(self)
        for k in ("use_cache", "queue_size", "aliases"):
            d.pop(k)
        d["layer_precisions"] = [[lp.pattern, lp.precision] for lp in self.layer_precisions]
        d["extra"] = dict(self.extra)
        return d

    def selection(self) -> Any:
        """The ``--layers`` selection as the contract's :class:`LayerSelection` (None: every tensor)."""
        if self.layers_pattern is None and not self.layers_names:
            return None
        from parity.contract.source import LayerSelection

        return LayerSelection(self.layers_pattern, frozenset(self.layers_names))

    @property
    def target(self) -> str:
        """The target name, e.g. ``trt-fp16`` or ``trt-rtx-bf16``."""
        return f"{LIBRARIES[self.library].prefix}-{self.precision}"

    def selects(self, *names: str | None) -> bool:
        """Whether the user's ``trt_mark`` / ``trt_mark_names`` keep a tensor known by these names."""
        given = [n for n in names if n]
        if self.mark_names and any(n in self.mark_names for n in given):
            return True
        if self.mark_regex is not None:
            rx = re.compile(self.mark_regex)
            if any(rx.search(n) for n in given):
                return True
        return not self.mark_names and self.mark_regex is None


def parse_target(name: str) -> str:
    """Precision of a ``trt-*`` or ``trt-rtx-*`` target name."""
    if name not in TARGETS:
        raise ParityError(f"unknown TensorRT target {name!r}. Note: use one of {', '.join(TARGETS)}")
    return TARGETS[name]


def parse_size(value: Any, what: str = "trt_workspace") -> int:
    """Bytes from ``4096`` (MiB, trtexec's unit), ``2G``, ``512MiB``, ``1.5GiB``."""
    if isinstance(value, bool):
        raise ParityError(f"{what} {value!r} is not a size. Note: give e.g. 4096 (MiB), 2G or 512MiB")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ParityError(f"{what} {value!r} must be positive. Note: give e.g. 4096 (MiB) or 2G")
        return int(value * (1 << 20))
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ParityError(f"{what} {value!r} is not a size. Note: give e.g. 4096 (MiB), 2G, 512MiB or 1.5GiB")
    n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if n <= 0:
        raise ParityError(f"{what} {value!r} must be positive. Note: give e.g. 4096 (MiB) or 2G")
    return int(n)


def _split_name_value(item: str, where: str) -> tuple[str, str]:
    """trtexec's rule: ``'name:with:colons':fp16`` quoted, else split on the last ``:``."""
    if "'" in item:
        parts = item.split("'")
        if len(parts) != 3 or not parts[2].startswith(":"):
            raise ParityError(f"{where}: entry {item!r} has unbalanced quotes. Note: quote a name holding "
                              f"':' like 'a:b':fp16")
        return parts[1], parts[2][1:]
    if ":" not in item:
        raise ParityError(f"{where}: entry {item!r} has no precision. Note: write name:precision, "
                          f"e.g. /conv1/Conv:fp32")
    name, value = item.rsplit(":", 1)
    return name, value


def parse_layer_precisions(spec: str | Iterable[str] | None, where: str = "trt_layer_precisions"
                           ) -> tuple[LayerPrecision, ...]:
    """Parse ``name:fp32,other*:fp16`` (trtexec spelling; Polygraphy's ``name:float16`` too) in order.

    Later entries override earlier ones; a name may hold one ``*`` wildcard. A list (as
    Polygraphy's space-separated ``--layer-precisions a:float32 b:float16``) is accepted.
    """
    if spec is None:
        return ()
    items = [item for part in as_list(spec) for item in as_list(part)]  # a list of "a:fp32,b:fp16" strings too
    out: list[LayerPrecision] = []
    for item in items:
        name, prec = _split_name_value(item, where)
        prec = prec.strip().lower()
        prec = _PRECISION_ALIASES.get(prec, prec)
        if not name:
            raise ParityError(f"{where}: entry {item!r} has an empty layer name. Note: write name:precision")
        if prec not in LAYER_PRECISIONS:
            raise ParityError(f"{where}: precision {prec!r} in {item!r} is not known. "
                              f"Note: use one of {', '.join(LAYER_PRECISIONS)}")
        if name.count("*") > 1:
            raise ParityError(f"{where}: name {name!r} has more than one '*'. Note: trtexec allows one wildcard")
        out.append(LayerPrecision(name, prec))
    return tuple(out)


def resolve_layer_precision(overrides: Iterable[LayerPrecision], layer_name: str) -> str | None:
    """The precision the overrides give one layer: an exact name wins, then the last matching wildcard."""
    exact = None
    wild = None
    for lp in overrides:
        if lp.pattern == layer_name:
            exact = lp.precision
        elif "*" in lp.pattern and lp.matches(layer_name):
            wild = lp.precision
    return exact if exact is not None else wild


def flags_for(precision: str, int8_fallback: str = "fp32") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Builder flags to set and to clear for a precision (``tensorrt.BuilderFlag`` names)."""
    if precision == "fp32":
        return (), ("TF32",)
    if precision == "tf32":
        return ("TF32",), ()
    if precision == "fp16":
        return ("FP16",), ("TF32",)
    if precision == "bf16":
        return ("BF16",), ("TF32",)
    if precision == "int8":
        return (("INT8", "FP16") if int8_fallback == "fp16" else ("INT8",)), ("TF32",)
    raise ParityError(f"unknown TensorRT precision {precision!r}. Note: use one of {', '.join(TARGETS.values())}")


def engine_config(precision: str, options: Mapping[str, Any] | None = None,
                  library: Library = TENSORRT) -> EngineConfig:
    """Build the :class:`EngineConfig` for a precision of ``library`` from ``RunConfig.options``."""
    o = dict(options or {})
    if precision not in library.precisions:
        raise ParityError(f"unknown {library.label} precision {precision!r}. Note: use one of "
                          f"{', '.join(f'{library.prefix}-{p}' for p in library.precisions)}")
    capture = str(o.get("trt_capture") or "debug").lower()
    if capture not in CAPTURE_MODES:
        raise ParityError(f"trt_capture {capture!r} is not known. Note: use one of {', '.join(CAPTURE_MODES)}")
    strategy = str(o.get("trt_debug_strategy") or "auto").lower()
    if strategy not in DEBUG_STRATEGIES:
        raise ParityError(f"trt_debug_strategy {strategy!r} is not known. "
                          f"Note: use one of {', '.join(DEBUG_STRATEGIES)}")
    regex = o.get("trt_mark")
    if regex is not None:
        regex = str(regex)
        try:
            re.compile(regex)
        except re.error as e:
            raise ParityError(f"trt_mark {regex!r} is not a valid regular expression: {e}. "
                              f"Note: e.g. 'conv|attn' or '^/layer1/'") from None
    names = tuple(as_list(o.get("trt_mark_names")))
    fallback = str(o.get("trt_int8_fallback") or "fp32").lower()
    if fallback not in ("fp32", "fp16"):
        raise ParityError(f"trt_int8_fallback {fallback!r} is not known. Note: use fp32 or fp16")
    strongly = as_bool(o.get("trt_strongly_typed", False), "trt_strongly_typed")
    # the CLI's --layer-precisions arrives as "layer_precisions"; --option trt_layer_precisions=... also works
    spec = o.get("trt_layer_precisions", o.get("layer_precisions"))
    overrides = parse_layer_precisions(spec)
    if library.strongly_typed:
        return _strongly_typed_config(precision, o, library, overrides, capture=capture, debug_strategy=strategy,
                                      mark_regex=regex, mark_names=names)
    constraints = o.get("trt_precision_constraints")
    constraints = str(constraints).lower() if constraints is not None else ("obey" if overrides else "none")
    if constraints not in CONSTRAINTS:
        raise ParityError(f"trt_precision_constraints {constraints!r} is not known. "
                          f"Note: use one of {', '.join(CONSTRAINTS)}")
    if overrides and constraints == "none":
        raise ParityError("trt_layer_precisions has no effect with trt_precision_constraints none. "
                          "Note: use obey (fail if TensorRT cannot honour it) or prefer")
    if strongly and precision not in ("fp32",):
        raise ParityError(f"trt-{precision} cannot be strongly typed: a strongly typed network takes its "
                          f"precision from the ONNX types. Note: use trt-fp32 with trt_strongly_typed on an "
                          f"ONNX model already in {precision}, or drop trt_strongly_typed")
    if strongly and overrides:
        raise ParityError("trt_layer_precisions cannot be used with trt_strongly_typed: a strongly typed "
                          "network takes each layer's precision from its ONNX types. Note: drop one of them")
    workspace = o.get("trt_workspace")
    ws = parse_size(workspace) if workspace not in (None, "") else None
    queue = _queue_size(o)
    set_flags, cleared = flags_for(precision, fallback) if not strongly else ((), ())
    if constraints in _CONSTRAINT_FLAGS:
        set_flags = set_flags + (_CONSTRAINT_FLAGS[constraints],)
    return EngineConfig(
        precision=precision, builder_flags=set_flags, cleared_flags=cleared, strongly_typed=strongly,
        workspace_bytes=ws, layer_precisions=overrides, precision_constraints=constraints, capture=capture,
        debug_strategy=strategy, mark_regex=regex, mark_names=names, int8_fallback=fallback,
        use_cache=as_bool(o.get("trt_engine_cache", True), "trt_engine_cache"), queue_size=queue)


def _queue_size(o: Mapping[str, Any]) -> int:
    queue = o.get("trt_queue_size", 4)
    try:
        queue = int(queue)
    except (TypeError, ValueError):
        raise ParityError(f"trt_queue_size {queue!r} is not a whole number. Note: e.g. 4") from None
    if queue < 1:
        raise ParityError(f"trt_queue_size {queue} must be at least 1. Note: e.g. 4")
    return queue


def _strongly_typed_config(precision: str, o: Mapping[str, Any], library: Library,
                           overrides: tuple[LayerPrecision, ...], **capture: Any) -> EngineConfig:
    """The config of a library whose networks are always strongly typed (TensorRT-RTX).

    Its differences, by name: no precision builder flags (the cast ONNX model carries the
    precision, ``cast``); ``trt_strongly_typed`` cannot be turned off; layer precision overrides
    may only keep layers in fp32 (the cast leaves those nodes in fp32); precision constraints and
    int8 do not exist. TF32 is cleared, as for ``trt-fp32``, so fp32 layers compute in fp32.
    """
    target = f"{library.prefix}-{precision}"
    if "trt_strongly_typed" in o and not as_bool(o["trt_strongly_typed"], "trt_strongly_typed"):
        raise ParityError(f"trt_strongly_typed false is not possible with {target}: {library.label} networks "
                          f"are always strongly typed. Note: drop the option")
    if o.get("trt_precision_constraints") is not None:
        raise ParityError(f"trt_precision_constraints does not apply to {target}: {library.label} networks are "
                          f"strongly typed, each layer runs in its ONNX type. Note: drop the option; keep layers "
                          f"in fp32 with --layer-precisions NAME:fp32")
    wrong = [f"{lp.pattern}:{lp.precision}" for lp in overrides if lp.precision != "fp32"]
    if wrong:
        raise ParityError(f"trt_layer_precisions asks {', '.join(wrong[:3])} of {target}, whose layers run in "
                          f"their ONNX type ({precision}, or fp32 for layers kept). Note: only NAME:fp32 "
                          f"entries are possible (nodes the cast leaves in fp32)")
    workspace = o.get("trt_workspace")
    return EngineConfig(
        precision=precision, library=library.module, cast=precision if precision in ("fp16", "bf16") else None,
        builder_flags=(), cleared_flags=("TF32",), strongly_typed=True,
        workspace_bytes=parse_size(workspace) if workspace not in (None, "") else None,
        layer_precisions=overrides, precision_constraints="none",
        use_cache=as_bool(o.get("trt_engine_cache", True), "trt_engine_cache"), queue_size=_queue_size(o),
        **capture)


def with_constraints(ecfg: EngineConfig, constraints: str, **changes: Any) -> EngineConfig:
    """``ecfg`` with ``changes`` and ``constraints``, its builder flags kept in step with them."""
    flags = tuple(f for f in ecfg.builder_flags if f not in _CONSTRAINT_FLAGS.values())
    if constraints in _CONSTRAINT_FLAGS:
        flags += (_CONSTRAINT_FLAGS[constraints],)
    return dataclasses.replace(ecfg, precision_constraints=constraints, builder_flags=flags, **changes)


def run_options(cfg: Any) -> dict[str, Any]:
    """``cfg.options`` plus the run configuration's typed ``outputs_only`` and ``keep_high_precision``,
    the one dict :func:`run_engine_config` reads (it also serves tests and callers holding plain options)."""
    return {**cfg.options, "outputs_only": cfg.outputs_only, "keep_high_precision": list(cfg.keep_high_precision)}


def config_for_target(target: str, options: Mapping[str, Any] | None = None) -> EngineConfig:
    return engine_config(parse_target(target), options, TARGET_LIBRARY[target])


# --------------------------------------------------------------------------- outputs only, keeping layers

def layer_name(node: "onnx.NodeProto") -> str:
    """The network layer TensorRT's ONNX parser makes for ``node`` (``node_of_<out>`` when unnamed)."""
    return node.name or (f"node_of_{node.output[0]}" if node.output else "")


def keep_to_layer_precisions(model: "onnx.ModelProto", keys: Iterable[str],
                             existing: Mapping[str, str] | Iterable[LayerPrecision] | str | None = None,
                             label: str = "the model") -> dict[str, str]:
    """Layer precision overrides (name or pattern -> precision) keeping ``keys``' producers in fp32.

    ``existing`` (a ``layer_precisions`` spec, parsed entries, or a dict) comes first, in its
    order; each kept node is then set to ``fp32``, overriding an earlier entry for the same name.
    A key that no top-level node produces is an error naming it.
    """
    out: dict[str, str] = {}
    if isinstance(existing, Mapping):
        out.update((str(k), str(v)) for k, v in existing.items())
    elif isinstance(existing, str) or existing is None:
        out.update((lp.pattern, lp.precision) for lp in parse_layer_precisions(existing))
    else:
        for lp in existing:
            if isinstance(lp, LayerPrecision):
                out[lp.pattern] = lp.precision
            else:
                out.update((p.pattern, p.precision) for p in parse_layer_precisions(str(lp)))
    producer = {o: n for n in model.graph.node for o in n.output if o}
    keys = list(dict.fromkeys(str(k) for k in keys))
    unknown = [k for k in keys if k not in producer]
    if unknown:
        inputs = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
        why = ("a graph input or weight, not computed by a layer" if all(k in inputs for k in unknown)
               else "not a tensor computed by a node")
        example = next(iter(producer), "")
        raise ParityError(f"keep_high_precision names {', '.join(map(repr, unknown[:5]))}, {why} of {label}. "
                          f"Note: give record keys named after ONNX tensors (e.g. {example!r}); records "
                          f"named after engine tensors cannot be kept")
    for k in keys:
        name = layer_name(producer[k])
        out.pop(name, None)  # re-insert so the keep entry comes last
        out[name] = "fp32"
    return out


def run_engine_config(precision: str, options: Mapping[str, Any] | None,
                      model: "onnx.ModelProto | None" = None, label: str = "the model",
                      library: Library = TENSORRT) -> EngineConfig:
    """The :class:`EngineConfig` for a run, with ``outputs_only`` and ``keep_high_precision`` applied.

    *Outputs only* (``outputs_only``): capture mode ``outputs``, no debug tensors, no marking.
    *Keeping layers* (``keep_high_precision``, what ``parity fix`` searches): record keys are ONNX
    tensor names; without ``model`` the keep set is only checked for shape; with it, their
    producing nodes become per-layer ``fp32`` overrides (TensorRT's ONNX parser names network
    layers after ONNX nodes) merged after ``trt_layer_precisions`` / ``layer_precisions``, and
    precision constraints are obeyed (``prefer`` when the user asked for it). The overrides are
    build fields, so they are part of the engine cache key. For a library whose networks are always
    strongly typed (TensorRT-RTX) the overrides are fp32 entries only, applied by the cast
    (:func:`fp32_nodes`), with no constraints.
    """
    o = dict(options or {})
    only = as_bool(o.pop("outputs_only", False), "outputs_only")
    keep = tuple(as_list(o.pop("keep_high_precision", None)))
    if only:
        o["trt_capture"] = "outputs"
    ecfg = engine_config(precision, o, library)
    if not keep:
        return ecfg
    if library.strongly_typed:
        if model is None:
            return ecfg
        merged = keep_to_layer_precisions(model, keep, ecfg.layer_precisions, label)
        return dataclasses.replace(ecfg, layer_precisions=tuple(LayerPrecision(n, p) for n, p in merged.items()))
    if ecfg.strongly_typed:
        raise ParityError("keep_high_precision cannot be used with trt_strongly_typed: a strongly typed "
                          "network takes each layer's precision from its ONNX types. Note: drop one of them")
    asked = o.get("trt_precision_constraints")
    if asked is not None and str(asked).lower() == "none":
        raise ParityError("keep_high_precision has no effect with trt_precision_constraints none. "
                          "Note: use obey (the default) or prefer")
    if model is None:
        return ecfg
    merged = keep_to_layer_precisions(model, keep, ecfg.layer_precisions, label)
    constraints = "prefer" if ecfg.precision_constraints == "prefer" else "obey"
    return with_constraints(ecfg, constraints,
                            layer_precisions=tuple(LayerPrecision(n, p) for n, p in merged.items()))


def fp32_nodes(model: "onnx.ModelProto", ecfg: EngineConfig, label: str = "the model"
               ) -> tuple[list[str], list[str]]:
    """What the cast of a strongly typed build leaves in fp32: (node names, output tensors of unnamed nodes).

    Each top-level node whose network layer name (:func:`layer_name`) the overrides resolve to
    ``fp32`` is kept; unnamed nodes are given by their outputs (the converter names them). An
    override that matches no node is an error listing real names, as for ``ILayer.precision``.
    """
    overrides = ecfg.layer_precisions
    if not overrides:
        return [], []
    nodes, tensors = [], []
    used: set[str] = set()
    for n in model.graph.node:
        name = layer_name(n)
        for lp in overrides:
            if lp.matches(name):
                used.add(lp.pattern)
        if resolve_layer_precision(overrides, name) != "fp32":
            continue
        if n.name:
            nodes.append(n.name)
        else:
            tensors.extend(o for o in n.output if o)
    unknown = [lp.pattern for lp in overrides if lp.pattern not in used]
    if unknown:
        sample = ", ".join(repr(layer_name(n)) for n in list(model.graph.node)[:3])
        raise ParityError(f"trt_layer_precisions names {', '.join(map(repr, unknown[:5]))}, which match no node "
                          f"of {label}. Note: use ONNX node names, e.g. {sample}")
    return nodes, tensors


# --------------------------------------------------------------------------- cache key

#: model digests already checked for missing external-data files (a digest names one set of files)
_COMPLETE: set[str] = set()


def onnx_digest(model: str | Path | bytes) -> str:
    """The engine cache's model digest: :func:`parity.lib.onnx.util.model_digest` (the file plus its
    external-data files), or sha256 of the bytes given.

    TensorRT's ONNX parser reads the external weights beside the file, so one that is missing is
    a ParityError naming it here, before anything is built.
    """
    if isinstance(model, (bytes, bytearray, memoryview)):
        return hashlib.sha256(bytes(model)).hexdigest()
    path = Path(model)
    try:
        digest = model_digest(path)
    except OSError as e:
        raise ParityError(f"cannot read ONNX model {path}: {e.strerror or e}") from e
    if digest not in _COMPLETE:
        missing = [p for p in _external_files(path) if not p.is_file()]
        if missing:
            raise ParityError(f"ONNX model {path} names external weights {', '.join(p.name for p in missing)}, "
                              f"which cannot be read. Note: keep the data files beside the model")
        _COMPLETE.add(digest)
    return digest


def _external_files(path: Path) -> list[Path]:
    try:
        import onnx
    except ImportError:  # without onnx the model bytes alone are hashed
        return []
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - a file onnx cannot read is reported when it is parsed
        return []
    seen: list[Path] = []
    for init in m.graph.initializer:
        for kv in init.external_data:
            if kv.key == "location":
                p = path.parent / kv.value
                if p not in seen:
                    seen.append(p)
    return seen


def cache_key(model_digest: str, cfg: EngineConfig, trt_version: str,
              extra: Mapping[str, Any] | None = None) -> str:
    """sha256 over the model digest, the build fields of ``cfg``, the TensorRT version and ``extra``.

    ``extra`` holds what else shapes the engine: input shapes and dtypes, the calibration
    data digest for int8, the GPU name (engines are not portable across GPUs).
    """
    doc = {"model": model_digest, "config": cfg.build_fields(), "tensorrt": str(trt_version),
           "extra": dict(extra or {})}
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


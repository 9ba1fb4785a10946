"""Plugin discovery: entry points of the ``parity`` group, built-ins included.

Environment variables:

``PARITY_LOAD_PLUGINS``
    Comma-separated entry-point names to load (others are skipped). Set it to an empty
    string to load none. Unset: load all. Useful in tests and for isolating a bad plugin.
``PARITY_DEBUG_HOOKS``
    When set, print every hook call, its arguments and results to stderr.
"""
from __future__ import annotations

import importlib.metadata
import os
import sys
from dataclasses import dataclass
from typing import Any

import pluggy

from parity.contract import hookspecs
from parity.contract.errors import ParityError, UsageError

GROUP = "parity"
#: hook -> the kind of object it registers (the keys of :func:`registry`)
KINDS = {"register_metrics": "metric", "register_dump_formats": "dump-format",
         "register_sources": "source", "register_matchers": "matcher", "register_reporters": "reporter",
         "register_input_readers": "input-reader", "register_dump_annotators": "dump-annotator",
         "register_decoders": "decoder"}


@dataclass(frozen=True)
class Registered:
    """One named object a plugin contributed, with where it came from."""

    kind: str
    name: str
    obj: Any
    plugin: str
    package: str


_pm: pluggy.PluginManager | None = None
_dists: dict[str, str] = {}  # plugin name -> "package version"
#: entry points that failed to import, with why (shown by `parity plugins` and `parity doctor`)
broken: dict[str, str] = {}
_registry: dict[str, dict[str, Registered]] | None = None


def _load_entrypoints(pm: pluggy.PluginManager) -> None:
    allowed = os.environ.get("PARITY_LOAD_PLUGINS")
    allow = None if allowed is None else {s.strip() for s in allowed.split(",") if s.strip()}
    for ep in importlib.metadata.entry_points(group=GROUP):
        if allow is not None and ep.name not in allow:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as e:  # a broken plugin must not take the working ones down with it
            dist = ep.dist.name if ep.dist else "?"
            broken[ep.name] = f"package {dist}: {type(e).__name__}: {e}"
            sys.stderr.write(f"parity: warning: plugin {ep.name!r} ({dist}) failed to import and is skipped: "
                             f"{type(e).__name__}: {e}\n")
            continue
        pm.register(plugin, name=ep.name)
        if ep.dist is not None:
            _dists[ep.name] = f"{ep.dist.metadata['name']} {ep.dist.version}"


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created and loaded on first use."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager(GROUP)
        pm.add_hookspecs(hookspecs)
        _load_entrypoints(pm)
        pm.check_pending()
        if os.environ.get("PARITY_DEBUG_HOOKS"):
            pm.trace.root.setwriter(sys.stderr.write)
            pm.enable_tracing()
        _pm = pm
    return _pm


def _package_of(plugin_name: str, plugin: Any) -> str:
    if plugin_name in _dists:
        return _dists[plugin_name]
    mod = getattr(plugin, "__name__", type(plugin).__module__)
    return str(mod).split(".")[0]


def registry() -> dict[str, dict[str, Registered]]:
    """Every registered object by kind (the values of :data:`KINDS`) and name.

    Each plugin's hook is called on its own so that every name is attributed to the plugin
    that registered it, and a name claimed twice fails with both claimants named.
    """
    global _registry
    if _registry is not None:
        return _registry
    pm = get_plugin_manager()
    reg: dict[str, dict[str, Registered]] = {k: {} for k in KINDS.values()}
    for hook_name, kind in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin_name = impl.plugin_name
            package = _package_of(plugin_name, impl.plugin)

            def register(obj: Any, name: str | None = None, *, _k=kind, _p=plugin_name, _pkg=package) -> None:
                nm = name or getattr(obj, "name", None)
                if not nm:
                    raise ParityError(f"plugin {_p!r} registered a {_k} without a name: {obj!r}")
                if name:
                    try:
                        obj.name = nm
                    except AttributeError:
                        pass
                prev = reg[_k].get(nm)
                if prev is not None:
                    raise ParityError(f"{_k} {nm!r} is registered twice: by plugin {prev.plugin!r} "
                                      f"({prev.package}) and by plugin {_p!r} ({_pkg}). "
                                      f"Uninstall one, or restrict loading with PARITY_LOAD_PLUGINS.")
                reg[_k][nm] = Registered(_k, nm, obj, _p, _pkg)

            # Call this one implementation directly so the registration is attributed to it.
            if os.environ.get("PARITY_DEBUG_HOOKS"):
                before = set(reg[kind])
                impl.function(register=register)
                added = ", ".join(sorted(set(reg[kind]) - before)) or "nothing"
                sys.stderr.write(f"parity: hook {hook_name}(register) in plugin {plugin_name!r} ({package}) "
                                 f"registered {kind}s: {added}\n")
            else:
                impl.function(register=register)
    _registry = reg
    return reg


def reset() -> None:
    """Forget loaded plugins (tests use this after registering or unregistering a plugin)."""
    global _pm, _registry
    _pm = None
    _registry = None
    _VARIANTS.clear()


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Register an in-process plugin object (tests, notebooks); its names join the registry."""
    global _registry
    get_plugin_manager().register(plugin, name=name)
    _registry = None


def unregister_plugin(plugin: Any = None, name: str | None = None) -> None:
    global _registry
    get_plugin_manager().unregister(plugin, name=name)
    _registry = None


def _lookup(kind: str, name: str) -> Any:
    reg = registry()[kind]
    if name not in reg:
        known = ", ".join(sorted(reg)) or "none"
        what = kind.replace("-", " ")
        raise ParityError(f"unknown {what} {name!r}. Known {what}s: {known}. "
                          f"Run 'parity plugins' to see what is installed.")
    return reg[name].obj


def get_metric(name: str) -> Any:
    return _lookup("metric", name)


def get_dump_format(name: str) -> Any:
    return _lookup("dump-format", name)


def get_reporter(name: str) -> Any:
    return _lookup("reporter", name)


#: sources made from a family and an argument (``modelopt:INT8_SMOOTHQUANT_CFG``), one object per name
_VARIANTS: dict[str, Any] = {}


def get_source(name: str) -> Any:
    """The source registered as ``name``; ``FAMILY:ARG`` asks the source registered as ``FAMILY`` for its
    ``variant(ARG)`` (a source whose name takes an argument, as ``modelopt:CONFIG``), made once per name."""
    reg = registry()["source"]
    if name not in reg and ":" in name:
        family, arg = name.split(":", 1)
        base = reg[family].obj if family in reg else None
        if base is not None and callable(getattr(base, "variant", None)) and arg:
            if name not in _VARIANTS:
                _VARIANTS[name] = base.variant(arg)
            return _VARIANTS[name]
    return _lookup("source", name)


def get_decoder(name: str) -> Any:
    return _lookup("decoder", name)


def get_matcher(name: str) -> Any:
    return _lookup("matcher", name)


def all_of(kind: str) -> dict[str, Any]:
    return {n: r.obj for n, r in registry()[kind].items()}




def source_schema(source: Any) -> list[Any]:
    """The options ``source`` (an object or a registered name) declares (``Source.option_schema``)."""
    src = get_source(source) if isinstance(source, str) else source
    return list(getattr(src, "option_schema", ()) or ())


def check_source_options(target: Any, options: Any, reference: Any = None) -> dict[str, Any]:
    """``options`` checked against the schemas of ``target`` (and ``reference``), values converted.

    One options dict reaches both sides of a comparison, so a key is valid when either side
    declares it, plus the run configuration's own keys (``outputs_only``, ``keep_high_precision``).
    An unknown key or a bad value is a :class:`UsageError` (exit 2) naming the source(s), the
    closest valid key and every valid key: ``--option trt_captur=mark`` once did nothing at all.
    Returns the given keys only, typed, under each option's own name (an alias is renamed).
    """
    from parity.contract.options import RUN_OPTIONS, check_options

    sides = [s for s in (target, reference) if s is not None]
    srcs = [get_source(s) if isinstance(s, str) else s for s in sides]
    names = list(dict.fromkeys(str(getattr(s, "name", s)) for s in srcs))
    owner = " or ".join(f"source {n!r}" for n in names) or "the sources"
    # the target's declaration first: where both sides declare a key, the target's type converts it
    schema = [o for s in srcs for o in source_schema(s)]
    known = {k for o in (*schema, *RUN_OPTIONS) for k in (o.name, *o.aliases)}
    elsewhere: dict[str, list[str]] = {}
    for key in options or {}:
        if key not in known:
            elsewhere[key] = [n for n, s in all_of("source").items()
                              if any(key in (o.name, *o.aliases) for o in source_schema(s))]
    return check_options(schema, options, owner, extra=RUN_OPTIONS, elsewhere=elsewhere)


def check_run_fields(source: Any, cfg: Any, role: str = "target") -> None:
    """Refuse (exit 2) a run configuration ``source`` cannot honour, instead of measuring nothing.

    ``keep_high_precision`` needs ``supports_keep_high_precision``; ``outputs_only`` needs
    ``supports_outputs_only`` (the core only asks a source that declares it).
    """
    name = getattr(source, "name", source)
    if cfg.keep_high_precision and not getattr(source, "supports_keep_high_precision", False):
        raise UsageError(f"{role} {name!r} cannot keep layers in high precision (keep_high_precision, a --config "
                         f"[precision] keep_fp32 or parity fix). Note: sources that can: "
                         f"{', '.join(n for n, s in all_of('source').items() if s.supports_keep_high_precision)}")
    if cfg.outputs_only and not getattr(source, "supports_outputs_only", False):
        raise UsageError(f"{role} {name!r} cannot run outputs only (outputs_only). Note: drop the option")

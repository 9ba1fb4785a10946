"""Build the ModelOpt fake-quantized twin of a torch model: configs, calibration, determinism, cache.

Why its own module: every part of the plugin (capture, local runs, ``parity fix`` re-runs) needs the
same quantized model, and quantizing is the slow, stateful step. A quantized model is identified by
the model's digest (its class and every parameter and buffer), the configuration (as JSON) and the
calibration feeds' digest; it is kept in memory for the process and its state (amax, pre-quant
scales, any weights the algorithm changed) is written to ``<workdir>/modelopt/<digest>.npz``
(numpy arrays, never a pickle), so a second run restores it without calibrating again.
"""
from __future__ import annotations

import copy
import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from parity.contract.atomic import atomic_path
from parity.contract.errors import ParityError, first_line
from parity.contract.source import RunConfig
from parity.lib.torch_loader import LoadedModel, import_spec, load_torch_model

#: preset target name suffix -> ModelOpt config attribute of ``modelopt.torch.quantization``
PRESETS = {
    "int8": "INT8_DEFAULT_CFG",
    "fp8": "FP8_DEFAULT_CFG",
    "int4-awq": "INT4_AWQ_CFG",
    "w4a8-awq": "W4A8_AWQ_BETA_CFG",
    "nvfp4": "NVFP4_DEFAULT_CFG",
}
#: presets whose exported Q/DQ ONNX Runtime's CPU provider runs (int8 QuantizeLinear/DequantizeLinear)
ONNX_PRESETS = ("int8",)
#: presets whose quantizers only run on CUDA tensors (ModelOpt asserts "amax must be a CUDA tensor")
CUDA_ONLY = frozenset({"nvfp4"})


def import_mtq() -> Any:
    """``modelopt.torch.quantization``, quietly (it warns about untested transformers versions)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import modelopt.torch.quantization as mtq
    return mtq


def resolve_config(spec: str) -> dict[str, Any]:
    """A ModelOpt quantization config from a name or a file.

    ``spec`` is a config name of ``modelopt.torch.quantization`` (``INT8_SMOOTHQUANT_CFG``), a Python
    file or module with the attribute (``path/cfg.py:MY_CFG``), or a ``.json`` / ``.toml`` file holding
    the config (``{"quant_cfg": [...], "algorithm": "max"}``; TOML has no null: leave ``axis`` out).
    """
    spec = str(spec).strip()
    p = Path(spec)
    if p.suffix.lower() in (".json", ".toml"):
        try:
            if p.suffix.lower() == ".json":
                config = json.loads(p.read_text(encoding="utf-8"))
            else:
                import tomllib

                config = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ParityError(f"quant_cfg {spec}: file not found. Note: give a ModelOpt config name "
                              f"(INT8_DEFAULT_CFG), path.py:NAME, or a .json/.toml file") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ParityError(f"quant_cfg {spec}: cannot read it ({first_line(e)})") from None
    elif ":" in spec:
        config = import_spec(spec, "quant_cfg")
    else:
        mtq = import_mtq()
        config = getattr(mtq, spec, None)
        if not spec.endswith("_CFG") or not isinstance(config, dict):
            known = ", ".join(sorted(n for n in dir(mtq) if n.endswith("_CFG")))
            raise ParityError(f"quant_cfg {spec!r}: not a ModelOpt config name. Note: known names: {known}; "
                              f"or give path.py:NAME or a .json/.toml file")
    if not isinstance(config, dict) or "quant_cfg" not in config:
        raise ParityError(f"quant_cfg {spec}: not a ModelOpt quantization config. Note: a config is a dict "
                          f"with a 'quant_cfg' list (and optionally 'algorithm'), as mtq.INT8_DEFAULT_CFG")
    return copy.deepcopy(config)


def config_text(config: dict[str, Any]) -> str:
    """The config as canonical text for the cache key (block_sizes mixes int and str keys: {-1: 128, "type": ...})."""
    def canon(v: Any) -> Any:
        if isinstance(v, dict):
            return {repr(k): canon(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [canon(x) for x in v]
        return v
    return json.dumps(canon(config), sort_keys=True, default=repr)


def call_args(loaded: LoadedModel, feed: dict[str, Any], device: str = "cpu") -> tuple[tuple, dict]:
    """A feed (input name -> array) as the forward's arguments, in the forward's order."""
    import torch

    def t(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return torch.from_numpy(np.array(v, copy=True)).to(device)
        return v

    names = loaded.input_names
    if names is None:
        return tuple(t(v) for v in feed.values()), {}
    extra = [k for k in feed if k not in names]
    if extra:
        raise ParityError(f"feed has inputs {', '.join(map(repr, extra))} that model {loaded.path} does not "
                          f"take. Note: its inputs are {', '.join(names)}")
    args, kwargs = [], {}
    for n in names:
        if n not in feed:
            continue
        if n in loaded.keyword_inputs:
            kwargs[n] = t(feed[n])
        else:
            args.append(t(feed[n]))
    return tuple(args), kwargs


_LOADED: dict[tuple, LoadedModel] = {}


def loaded_model(cfg: RunConfig) -> LoadedModel:
    """``load_torch_model`` once per model, weights file and their modification times in this process:
    a factory that builds (or trains) its model is not called again by every stage and every question."""
    import os

    def stamp(p: Any) -> float | None:
        try:
            return os.stat(str(p).split(":", 1)[0] if not os.path.exists(str(p)) else str(p)).st_mtime
        except OSError:
            return None
    sd = cfg.options.get("state_dict")
    key = (str(cfg.model), stamp(cfg.model), str(sd), stamp(sd) if sd else None,
           bool(cfg.options.get("trust_model")))
    hit = _LOADED.get(key)
    if hit is None:
        hit = _LOADED[key] = load_torch_model(cfg)
    return hit


def model_digest(module: Any, model: str) -> str:
    # an in-memory model's reference (memory://label-N) changes with every registration: its content names it
    where = "" if model.startswith("memory://") else model
    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}|{where}".encode())
    for k, v in module.state_dict().items():
        a = v.detach().cpu().contiguous()
        h.update(f"{k}|{a.dtype}|{tuple(a.shape)}".encode())
        h.update(a.view(-1).view(__import__("torch").uint8).numpy().tobytes() if a.numel() else b"")
    return h.hexdigest()


def feeds_digest(feeds: list[dict[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for f in feeds:
        for k, v in f.items():
            a = np.ascontiguousarray(v)
            h.update(f"{k}|{a.dtype}|{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def calibration_digest(module: Any, model: str, config: dict[str, Any], calib: list[dict[str, np.ndarray]],
                       device: Any) -> str:
    """What names a calibration (in memory and on disk): the model's weights, the config, the
    calibration feeds and the device; the same for a compare source and a generate decoder."""
    return hashlib.sha256("|".join((model_digest(module, model), config_text(config), feeds_digest(calib),
                                    str(device))).encode()).hexdigest()[:24]


@dataclass
class Quantized:
    """The fp32 model and its quantized twin (same module names, quantizers inserted)."""

    loaded: LoadedModel
    reference: Any
    quantized: Any
    digest: str
    restored: bool  # from the disk cache, not calibrated in this process


_MEMORY: dict[str, Quantized] = {}
_LOCK = threading.Lock()


def cache_clear() -> None:
    """Forget the in-process quantized models (tests: prove the disk cache restores them)."""
    with _LOCK:
        _MEMORY.clear()


def quantize(cfg: RunConfig, config: dict[str, Any], *, cuda_only: bool = False) -> Quantized:
    """Quantize ``cfg.model`` with ``config``, calibrated on ``cfg.calibration`` (deterministic, cached)."""
    import torch

    loaded = loaded_model(cfg)
    module = loaded.module
    if not isinstance(module, torch.nn.Module) or isinstance(module, torch.jit.ScriptModule):
        raise ParityError(f"model {cfg.model}: ModelOpt quantizes a torch.nn.Module; this is a "
                          f"{loaded.kind} model. Note: give a Python spec pkg.module:factory or an "
                          f"ExportedProgram .pt2")
    device = cfg.device
    if cuda_only and not str(device).startswith("cuda"):
        raise ParityError("this ModelOpt format (NVFP4) runs only on CUDA tensors. Note: run with "
                          "--device cuda on a machine with a GPU")
    module = module.to(device).float().eval()
    calib = list(cfg.calibration or [])
    if not calib:
        raise ParityError("ModelOpt targets need calibration feeds. Note: give --calibration FILE|FOLDER, or "
                          "inputs to compare (their first feeds calibrate)")
    digest = calibration_digest(module, str(cfg.model), config, calib, device)
    with _LOCK:
        hit = _MEMORY.get(digest)
        if hit is not None:
            return hit
        def forward_loop(m: Any) -> None:
            with torch.no_grad():
                for feed in calib:
                    args, kwargs = call_args(loaded, feed, device)
                    m(*args, **kwargs)

        qmodel, restored = quantize_or_restore(copy.deepcopy(module), config, forward_loop,
                                               Path(cfg.workdir) / "modelopt" / f"{digest}.npz", str(cfg.model))
        out = Quantized(loaded, module, qmodel, digest, restored)
        _MEMORY[digest] = out
        return out


def quantize_or_restore(qmodel: Any, config: dict[str, Any], forward_loop: Any, path: Path | None,
                        what: str) -> tuple[Any, bool]:
    """``mtq.quantize(qmodel, config, forward_loop)`` (in place), or, when ``path`` holds the state a
    calibration with the same digest saved, the config's quantizers with that state put back (True).

    ``path`` None: no disk cache. The seed is fixed first: an algorithm that samples (AWQ's search)
    picks the same every run, so a calibration is a function of its digest.
    """
    import torch

    mtq = import_mtq()
    try:
        if path is not None and path.is_file():
            with _quiet():
                qmodel = mtq.quantize(qmodel, config, None)
            _restore(qmodel, path)
            return qmodel.eval(), True
        torch.manual_seed(0)
        with _quiet():
            qmodel = mtq.quantize(qmodel, config, forward_loop)
        if path is not None:
            _save(qmodel, path)
    except ParityError:
        raise
    except Exception as e:
        raise ParityError(f"ModelOpt could not quantize {what}: {first_line(e)}") from None
    return qmodel.eval(), False


def _quiet() -> Any:
    """ModelOpt prints "Inserted N quantizers" to stdout: a report on stdout (--json -) must stay parseable."""
    import contextlib
    import io

    return contextlib.redirect_stdout(io.StringIO())


def _save(qmodel: Any, path: Path) -> None:
    """The quantized model's whole state as plain arrays (np.savez: nothing to unpickle on restore)."""
    arrays = {}
    for k, v in qmodel.state_dict().items():
        a = v.detach().cpu()
        if a.dtype.is_floating_point and a.dtype != __import__("torch").float32:
            a = a.float()
        arrays[k] = a.numpy()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    except OSError:
        pass  # a cache that cannot be written costs a calibration next time, nothing else


def _restore(qmodel: Any, path: Path) -> None:
    """Put a saved state back: existing entries copied, quantizer buffers (``_amax``, ``_pre_quant_scale``)
    a config-only quantize leaves unset registered as ModelOpt's own setters would."""
    import torch

    with np.load(path, allow_pickle=False) as z:
        saved = {k: z[k] for k in z.files}
    state = qmodel.state_dict()
    mods = dict(qmodel.named_modules())
    for k, a in saved.items():
        t = torch.from_numpy(a)
        if k in state:
            with torch.no_grad():
                state[k].copy_(t.to(state[k].dtype))
            continue
        owner, _, attr = k.rpartition(".")
        mod = mods.get(owner)
        if mod is None:
            raise ParityError(f"ModelOpt cache {path} does not fit the model ({k}). Note: delete it")
        mod.register_buffer(attr, t.to(next((p.device for p in qmodel.parameters()), "cpu")))

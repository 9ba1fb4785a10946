"""Run and capture: one forward of a prepared torch model, streamed as ``Activation`` records.

:func:`capture` is what ``TorchSource.run`` does: borrow the prepared model from the source's
cache (:mod:`.loader`), turn the feed into call arguments (:func:`inputs`), and run the forward
in a worker thread (:func:`work`) whose records reach the consumer one at a time through the
bounded queue of :func:`.capture.stream`. The capture paths themselves (forward hooks, the fx
interpreter over :func:`graph_module`, instrumented TorchScript) are in :mod:`.capture`.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from parity.contract.errors import ParityError, first_line
from parity.contract.options import option_bool
from parity.contract.records import Activation
from parity.contract.source import LayerSelection, RunConfig

from . import capture as cap
from .loader import Prepared, PreparedCache, torch_dtype, true_fp32


def inputs(precision: str, prepared: Prepared, cfg: RunConfig, feed: dict[str, Any]) -> tuple[tuple, dict]:
    """Feed arrays as tensors in call order: float inputs cast to the precision, others untouched."""
    import torch

    loaded = prepared.loaded
    device = torch.device(cfg.device)
    fdtype = torch_dtype(precision)

    def convert(name: str, value: Any) -> Any:
        if isinstance(value, (np.ndarray, np.generic)):
            arr = np.array(value, copy=True)  # the model may write into its input
            if arr.dtype.kind in "OUSV":
                raise ParityError(f"input {name!r} has dtype {arr.dtype}, which torch cannot take. Note: "
                                  f"feed numeric arrays")
            t = torch.from_numpy(arr)
        elif isinstance(value, torch.Tensor):
            t = value.detach().clone()
        else:
            return value
        if t.is_floating_point():
            t = t.to(fdtype)
        return t.to(device)

    names = loaded.input_names
    if names is None:
        return tuple(convert(k, v) for k, v in feed.items()), {}
    extra = [k for k in feed if k not in names]
    if extra:
        raise ParityError(f"feed has inputs {', '.join(map(repr, extra))} that model {loaded.path} does "
                          f"not take. Note: its inputs are {', '.join(names)}")
    missing = [n for n in names if n not in feed and n not in loaded.optional_inputs]
    if missing:
        raise ParityError(f"feed lacks inputs {', '.join(map(repr, missing))} of model {loaded.path}. "
                          f"Note: its inputs are {', '.join(names)}")
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for n in names:
        if n not in feed:
            continue
        # by keyword: after a skipped optional input, and a keyword input of an ExportedProgram's
        # unflattened module (ep.module() itself takes them by position: see parity.lib.torch_loader)
        if kwargs or len(args) < names.index(n) or (n in loaded.keyword_inputs and prepared.mode == "modules"):
            kwargs[n] = convert(n, feed[n])
        else:
            args.append(convert(n, feed[n]))
    return tuple(args), kwargs


def graph_module(prepared: Prepared, args: tuple, kwargs: dict) -> Any:
    """The FX graph to interpret: the ExportedProgram's own, or one exported for these inputs."""
    import torch

    if prepared.loaded.kind == "exported":
        return prepared.module
    sig = tuple((k, tuple(v.shape), str(v.dtype)) if isinstance(v, torch.Tensor) else (k, repr(v))
                for k, v in list(enumerate(args)) + sorted(kwargs.items()))
    gm = prepared.exported.get(sig)
    if gm is None:
        try:
            ep = torch.export.export(prepared.module, tuple(args), dict(kwargs))
        except Exception as e:
            raise ParityError(f"torch.export could not capture {prepared.loaded.path} for "
                              f"torch_capture=fx: {first_line(e, typed=True)}. Note: use torch_capture=modules "
                              f"(forward hooks) for models torch.export cannot trace") from None
        gm = ep.module()
        prepared.exported = {sig: gm}  # one entry: shapes rarely change between runs
    return gm


def work(prepared: Prepared, args: tuple, kwargs: dict, base_meta: dict[str, Any],
         include_int: bool, outputs_only: bool = False,
         layers: LayerSelection | None = None, device_records: bool = False) -> Callable[[cap.Emit], None]:
    """The forward as ``work(emit)`` for :func:`.capture.stream`: each record emitted as it is captured.

    ``layers``: only the selected records (and the model outputs) are captured.
    """
    def run_forward(emit: cap.Emit) -> None:
        import torch

        rec = cap.Recorder(emit, base_meta, include_int, layers, device_records)
        with torch.no_grad():
            if outputs_only:  # no hooks, no interpreter: the plain forward
                if prepared.mode == "fx" and prepared.loaded.kind != "torchscript":
                    out = graph_module(prepared, args, kwargs)(*args, **kwargs)
                else:
                    out = prepared.module(*args, **kwargs)
            elif prepared.loaded.kind == "torchscript":
                out = cap.run_torchscript(prepared.module, args, kwargs, rec, prepared.ts_types)
            elif prepared.mode == "modules":
                out = cap.run_with_hooks(prepared.module, args, kwargs, rec, prepared.type_names)
            else:
                gm = graph_module(prepared, args, kwargs)
                out = cap.run_fx(gm, args, kwargs, rec)
        rec.record_outputs(out)
    return run_forward


def capture(cache: PreparedCache, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Activation]:
    """Every captured tensor of one forward of ``cache``'s source on ``feed``, in execution order.

    Options: ``torch_include_integer`` (also integer/bool tensors), ``outputs_only`` (no hooks,
    only the model outputs), ``torch_allow_tf32``, and the model options of :mod:`.loader`.
    ``cfg.layers`` (``--layers``): only the selected layers are hooked and copied, outputs always.
    ``cfg.device_records``: records are detached clones where the model ran, not host copies.
    """
    precision, name = cache.precision, cache.name
    with cache.hold(cfg) as prepared:
        args, kwargs = inputs(precision, prepared, cfg, feed)
        rec_meta = {"source": name, "precision": precision, "capture": prepared.mode}
        include_int = option_bool(cfg.options, "torch_include_integer", False)
        only = cfg.outputs_only
        run_forward = work(prepared, args, kwargs, rec_meta, include_int, only, cfg.layers,
                           bool(getattr(cfg, "device_records", False)))
        with true_fp32(precision, cfg):
            yield from cap.stream(run_forward, f"running {cfg.model} with source {name}", max_bytes=cfg.step_bytes)

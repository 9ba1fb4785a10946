"""The ONNX Runtime source: every intermediate tensor of one session run, fp32, fp16 or int8.

Model input is an ``.onnx`` file, or a torch model (anything else) that is exported to
ONNX first (see :mod:`.export`). Records carry the tensor names of the fp32 graph for
every precision, so ``ort``, ``ort-fp16`` and ``ort-int8`` records of one model pair by
name, and each record says which torch module output it is (see :mod:`.provenance`).
"""
from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from parity.contract.errors import ParityError
from parity.contract.records import Activation
from parity.contract.source import InputSpec, RunConfig, Source

from parity.contract.options import option_bool, option_int, option_list
from parity.lib.onnx.models import onnx_input_specs, onnx_model_for
from parity.lib.onnx.util import ort_message, run_session

PRECISIONS = {"fp32": "ort", "fp16": "ort-fp16", "int8": "ort-int8"}
#: tensors captured per step on graphs with more than twice as many (``ort_output_batch=0``: one session)
DEFAULT_OUTPUT_BATCH = 64
_LEVELS = ("disable", "basic", "extended", "all")


def _fmt_dims(dims: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


class OrtSource(Source):
    """One class for ``ort`` (fp32), ``ort-fp16`` and ``ort-int8``.

    Options read from ``cfg.options``: ``ort_providers`` (list or comma string),
    ``ort_threads``, ``ort_graph_optimization`` (disable|basic|extended|all),
    ``ort_all_dtypes`` (also capture integer/bool tensors), ``ort_output_batch`` (capture
    at most N tensors per session run), ``opset``, ``export_dynamo``,
    ``export_dynamic_batch``, ``export_optimize``, ``keep_fp32_ops``, ``keep_fp32_nodes``
    and the ``int8_*`` options of :func:`parity.lib.onnx.convert.to_int8`.
    For ``parity fix``: ``keep_high_precision`` (fp32 tensor names whose producing nodes stay
    fp32 / unquantized) and ``outputs_only`` (capture only the model outputs).
    """

    description = "ONNX Runtime session capturing every intermediate tensor (fp32 / fp16 / int8 QDQ)"

    def __init__(self, precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
        self.precision = precision
        self.name = PRECISIONS[precision]  # type: ignore[misc]
        #: layers the last ``local_errors`` call could not run alone: ``{key, onnx_node, reason}``
        self.last_local_skipped: list[dict[str, str]] = []

    # -- capability ---------------------------------------------------------------------
    def check(self) -> str | None:
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if self.precision == "fp16" and importlib.util.find_spec("onnxconverter_common") is None:
            missing.append("onnxconverter-common")
        if missing:
            return f"needs {', '.join(missing)} (pip install 'parity[onnx]')"
        return None

    # -- model resolution and inputs: the shared ONNX library does both for every ONNX consumer
    def input_specs(self, cfg: RunConfig) -> list[InputSpec]:
        return onnx_input_specs(cfg)

    @staticmethod
    def _check_feed(model: Any, feed: dict[str, np.ndarray], path: Path, what: str = "feed") -> None:
        from parity.lib.onnx.graph import elem_dtype, model_inputs, value_dims

        inputs = model_inputs(model)
        expected = [vi.name for vi in inputs]
        if set(feed) != set(expected):
            missing = [n for n in expected if n not in feed]
            extra = [n for n in feed if n not in expected]
            raise ParityError(f"{what} does not match the inputs of {path.name}. Note: the model expects "
                              f"{expected}; missing {missing}, unexpected {extra}")
        for vi in inputs:
            a = np.asarray(feed[vi.name])
            dims = value_dims(vi)
            if dims is not None and (len(dims) != a.ndim or any(d is not None and d != s
                                                                 for d, s in zip(dims, a.shape))):
                raise ParityError(f"{what} input {vi.name!r} of {path.name} has shape {list(a.shape)}. "
                                  f"Note: the model expects {_fmt_dims(dims)} (? = any size)")
            want = elem_dtype(vi.type.tensor_type.elem_type)
            if want and str(a.dtype) != want:
                raise ParityError(f"{what} input {vi.name!r} of {path.name} has dtype {a.dtype}. "
                                  f"Note: the model expects {want}")

    # -- session ------------------------------------------------------------------------
    @staticmethod
    def _session_options(cfg: RunConfig) -> tuple[Any, list[str]]:
        import onnxruntime as ort

        o = cfg.options
        providers = option_list(o, "ort_providers")
        available = ort.get_available_providers()
        if not providers:
            providers = (["CUDAExecutionProvider", "CPUExecutionProvider"]
                         if str(cfg.device).startswith("cuda") and "CUDAExecutionProvider" in available
                         else ["CPUExecutionProvider"])
        bad = [p for p in providers if p not in available]
        if bad:
            raise ParityError(f"ort_providers asks for {bad}, which this onnxruntime does not have. "
                              f"Note: available providers are {available}")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        level = str(o.get("ort_graph_optimization", "all")).lower()
        if level not in _LEVELS:
            raise ParityError(f"ort_graph_optimization {level!r} is not known. "
                              f"Note: use one of {', '.join(_LEVELS)}")
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
        threads = option_int(o, "ort_threads", None)
        if threads:
            so.intra_op_num_threads = threads
        return so, providers

    @staticmethod
    def _session(model: Any, so: Any, providers: list[str], workdir: Path, label: str) -> Any:
        import onnx
        import onnxruntime as ort
        from google.protobuf.message import EncodeError

        try:
            try:  # ByteSize() costs as much as serializing; let protobuf refuse > 2 GB instead
                data: bytes | None = model.SerializeToString()
            except EncodeError:
                data = None
            if data is not None:
                return ort.InferenceSession(data, so, providers=providers)
            # protobuf cannot serialize >2 GB: go through a file with external weights
            workdir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=workdir) as d:
                p = Path(d) / "instrumented.onnx"
                onnx.save(model, str(p), save_as_external_data=True, location="instrumented.onnx.data")
                return ort.InferenceSession(str(p), so, providers=providers)
        except Exception as e:
            raise ParityError(f"onnxruntime cannot load {label}. Note: {ort_message(e)}") from e

    # -- target model -------------------------------------------------------------------
    def _target_model(self, cfg: RunConfig, src: Path, orig: Any, feed: dict[str, np.ndarray]
                      ) -> tuple[Path, dict[str, Any]]:
        """The model this precision runs (converted and cached), plus record meta about it.

        ``keep_high_precision`` (fp32 tensor names, e.g. from ``parity fix``) is checked against
        ``orig`` here, for every precision, so an unknown name fails before any conversion.
        """
        from parity.lib.onnx.convert import keep_producers, to_fp16, to_int8

        workdir = Path(cfg.workdir)
        opts = cfg.options
        keep = option_list(opts, "keep_high_precision")
        if keep:
            keep_producers(orig, keep, src.name, name_unnamed=True)  # int8 refuses unnamed ones later
        extra: dict[str, Any] = {}
        if self.precision == "fp32":
            return src, extra
        if self.precision == "fp16":
            return to_fp16(src, workdir, option_list(opts, "keep_fp32_ops"), option_list(opts, "keep_fp32_nodes"),
                           keep_tensors=keep), extra
        calib = list(cfg.calibration)
        if not calib:
            calib = [feed]
            extra["calibration"] = "run feed (no calibration feeds were given)"
            extra["warning"] = ("int8 calibrated on the compared input itself: scales fit this input "
                                "and the error is optimistic; pass calibration data")
        for k, c in enumerate(calib):
            self._check_feed(orig, c, src, what=f"calibration feed #{k}")
        extra["calibration_feeds"] = len(calib)
        return to_int8(src, workdir, calib, opts), extra

    # -- diagnosis ------------------------------------------------------------------------
    supports_local = True

    def local_errors(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Any]:
        """Each captured layer run alone in this precision on the fp32 activations (see :mod:`.local`).

        Yields ``parity.contract.records.LocalResult`` one at a time, keyed like ``run()``'s records.
        ``ort`` (fp32) yields nothing: its layer alone on fp32 inputs is the reference itself.
        Layers that cannot run alone are listed afterwards in ``self.last_local_skipped``.
        """
        self.last_local_skipped = []
        if self.precision == "fp32":
            return
        from .local import local_results

        yield from local_results(self, cfg, feed)

    def _run_whole(self, model: Any, names: list[str], feed: dict[str, np.ndarray], so: Any,
                   providers: list[str], workdir: Path, label: str) -> Iterator[list[Any]]:
        """One session with every captured tensor as an output (ONNX Runtime returns them all at once)."""
        from parity.lib.onnx.graph import with_outputs

        sess = self._session(with_outputs(model, names), so, providers, workdir, label)
        del model  # with the caller's references gone, the proto and its weights are freed here
        results = run_session(sess, names, feed, label)
        del sess
        yield results

    def _run_steps(self, model: Any, batches: list[list[str]], feed: dict[str, np.ndarray], so: Any,
                   providers: list[str], workdir: Path, label: str) -> Iterator[list[Any]]:
        """``ort_output_batch``: consecutive sessions over the graph cut into steps, none recomputed.

        Each step's session holds only its own nodes and weights and returns its batch plus the
        tensors later steps read, so peak memory is one batch plus what crosses the cuts.
        """
        from parity.lib.onnx.graph import plan_capture_steps, step_model

        live: dict[str, Any] = dict(feed)
        for step in plan_capture_steps(model, batches):
            got: dict[str, Any] = {}
            if step.nodes:
                sess = self._session(step_model(model, step, live), so, providers, workdir, label)
                vals = run_session(sess, step.outputs, {x: live[x] for x in step.inputs}, label)
                del sess
                got = dict(zip(step.outputs, vals))
                del vals
                live.update((o, got[o]) for o in step.hand_on)
            results = [got[t] if t in got else live.get(t) for t in step.wanted]
            del got
            for x in step.release:
                live.pop(x, None)
            yield results

    # -- run ----------------------------------------------------------------------------
    def run(self, cfg: RunConfig, feed: dict[str, np.ndarray]) -> Iterator[Activation]:
        import onnx

        from parity.lib.onnx.convert import fetch_map
        from parity.lib.onnx.graph import FLOAT_TYPES, captured_sites, inferred_types, load_model
        from parity.lib.onnx.provenance import module_output_calls, node_scopes

        workdir = Path(cfg.workdir)
        opts = cfg.options
        src, module_names = onnx_model_for(cfg, feed)
        orig = load_model(src, what="model")
        self._check_feed(orig, feed, src)

        exporter = next((p.value for p in orig.metadata_props if p.key == "parity.exporter"), None)
        graph_outputs = [o.name for o in orig.graph.output]
        out_pos = {n: i for i, n in enumerate(graph_outputs)}
        sites = captured_sites(orig)
        calls = module_output_calls(orig, module_names)
        within = [chain[-1][0] if chain else "" for chain in node_scopes(orig, module_names)]

        common: dict[str, Any] = {"precision": self.precision, "model_file": str(src)}
        if exporter:
            common["exporter"] = exporter
        if option_bool(opts, "outputs_only", False):
            sites = [s for s in sites if s.name in out_pos]
        run_path, extra = self._target_model(cfg, src, orig, feed)
        common.update(extra)
        if self.precision == "fp32":
            runnable = orig
            fetch = {s.name: (s.name, False) for s in sites}
        else:
            del orig.graph.node[:]  # provenance is computed; free the fp32 weights early
            del orig.graph.initializer[:]
            runnable = onnx.load(str(run_path))
            fetch = fetch_map(runnable, [s.name for s in sites], quantized=self.precision == "int8")
        common["run_model_file"] = str(run_path)

        all_dtypes = option_bool(opts, "ort_all_dtypes", False)
        types = inferred_types(runnable) if not all_dtypes else {}
        items: list[tuple[Any, str, bool]] = []
        for s in sites:
            if s.name not in fetch:
                continue
            fname, quant = fetch[s.name]
            t = types.get(fname)
            if not all_dtypes and s.name not in out_pos and t is not None and t not in FLOAT_TYPES:
                continue
            items.append((s, fname, quant))

        so, providers = self._session_options(cfg)
        # Large graphs are captured in consecutive steps by default, so that ONNX Runtime never holds
        # every activation at once (it frees an output block only when the last output is released).
        batch = option_int(opts, "ort_output_batch", None)
        if batch is None:
            batch = DEFAULT_OUTPUT_BATCH if len(items) > 2 * DEFAULT_OUTPUT_BATCH else 0
        chunks = ([items[i:i + batch] for i in range(0, len(items), batch)]
                  if batch > 0 and len(items) > batch else [items])
        feed = {k: np.asarray(v) for k, v in feed.items()}
        label = f"{Path(run_path).name} (from {src.name})" if run_path != src else src.name
        if len(chunks) == 1:
            runs = self._run_whole(runnable, [f for _, f, _ in items], feed, so, providers, workdir, label)
            del runnable, orig  # the session has its own copy of the weights
        else:
            runs = self._run_steps(runnable, [[f for _, f, _ in c] for c in chunks], feed, so, providers,
                                   workdir, label)
        for chunk, results in zip(chunks, runs):
            for k, (site, fname, quant) in enumerate(chunk):
                arr = results[k]
                results[k] = None  # the caller holds the only reference from here on
                if not isinstance(arr, np.ndarray):
                    continue
                if not all_dtypes and site.name not in out_pos and str(arr.dtype) not in FLOAT_TYPES:
                    continue
                scopes = calls.get(site.name, [])
                meta: dict[str, Any] = {
                    "onnx_node": site.node_name,
                    "onnx_op": site.op_type,
                    "onnx_output_index": site.output_index,
                    "module_path": scopes[0][0] if scopes else None,
                    "scopes": [p for p, _ in scopes],
                    "module_calls": [[p, c] for p, c in scopes],
                    "within": within[site.node_index],
                    "is_output": site.name in out_pos,
                    **common,
                }
                if site.name in out_pos:
                    meta["output_position"] = out_pos[site.name]
                if self.precision == "int8":
                    meta["quantized"] = quant
                if fname != site.name:
                    meta["onnx_tensor"] = fname
                yield Activation(name=site.name, array=arr, order=site.node_index,
                                 op_type=site.op_type, meta=meta)
                del arr
            del results

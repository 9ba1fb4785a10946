"""`parity view`: a report as Model Explorer overlays on the ONNX graph the target ran.

Why Model Explorer: a table lists layers, a graph shows where in the model the error starts and
how it spreads. parity writes per-node values keyed by the ONNX node names its rows already carry
(``target_onnx_node``; a fused TensorRT layer's ``covers``): the accumulated error and the local
error of the primary metric (its own error, larger is worse) and the culprit flag. A node is
coloured by the metric's threshold as the table judges it (pass / near / fail, NaN/Inf apart), never
scaled min-to-max: a report whose worst error is 3e-8 must not show a single red node. The overlays
are built with Model Explorer's own ``node_data_builder`` and opened with the ``model-explorer-onnx``
adapter (``pip install 'parity[view]'``); both are optional and imported only here.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from parity.contract.atomic import write_text
from parity.contract.errors import ParityError, first_line
from parity.contract.report import LayerResult, MetricInfo, Report, made_nonfinite

__all__ = ["INSTALL", "graph_nodes", "node_data", "report_from_json", "serve", "write_node_data", "write_view"]

INSTALL = ("pip install 'parity[view]' (or: pip install ai-edge-model-explorer model-explorer-onnx)")

#: the ONNX adapter as Model Explorer names its extension
EXTENSION = "model_explorer_onnx"

#: node colours by verdict: within the threshold by more than a decade of error, within it by less, past it
PASS, NEAR, FAIL, NONFINITE_COLOR = "#c8e6c9", "#ffe082", "#e53935", "#6a1b9a"
#: "near": an error within this factor of the threshold's error (one decade on the log scale the plots use)
NEAR_FACTOR = 10.0


def _builder() -> Any:
    try:
        from model_explorer import node_data_builder
    except ImportError:
        raise ParityError(f"parity view needs Model Explorer, which is not installed. Note: {INSTALL}") from None
    return node_data_builder


def _num(v: Any) -> float | None:
    """A JSON report value: numbers, and the strings "nan", "inf", "-inf" it writes for NaN/Inf."""
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _metric(name: str) -> Any:
    """The registered metric of that name (its own error and format), else None: the report's fields decide."""
    from parity.core.registry import get_metric

    try:
        return get_metric(name)
    except ParityError:
        return None


def report_from_json(path: str | Path) -> Report:
    """The rows and metrics of a JSON report (docs/report-schema.md) that the overlays need."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParityError(f"{p}: report not found.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ParityError(f"{p}: not a readable JSON report ({first_line(e)}). Note: write one with "
                          f"parity compare ... --json PATH") from None
    if not isinstance(doc, dict) or doc.get("schema") != "parity.report" or not isinstance(doc.get("layers"), list):
        raise ParityError(f"{p}: not a parity JSON report (no \"schema\": \"parity.report\" with layers). Note: write "
                          f"one with parity compare ... --json PATH")
    try:
        metrics = [MetricInfo(m["name"], bool(m["higher_is_better"]), bool(m.get("percent")), _num(m.get("threshold")),
                              m.get("description", ""), metric=_metric(m["name"])) for m in doc.get("metrics", [])]
        rows = [LayerResult(name=str(r["name"]), ref_name=r.get("ref_name"), target_name=r.get("target_name"),
                            order=float(r.get("order") or 0), op_type=r.get("op_type"),
                            target_op_type=r.get("target_op_type"), status=r.get("status", "ok"),
                            values={k: _num(v) for k, v in (r.get("values") or {}).items()},
                            worst={k: _num(v) for k, v in (r.get("worst") or {}).items()},
                            local={k: _num(v) for k, v in (r.get("local") or {}).items()},
                            culprit_rank=r.get("culprit_rank"), caused_by=r.get("caused_by"),
                            meta=dict(r.get("meta") or {}))
                for r in doc["layers"]]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ParityError(f"{p}: a layer or metric entry is malformed ({type(e).__name__}: {e}).") from None
    return Report(rows, metrics, doc.get("reference", "reference"), doc.get("target", "target"),
                  dict(doc.get("summary") or {}))


def graph_nodes(onnx_path: str | Path) -> tuple[str, list[str]]:
    """The main graph's id and node ids as the ONNX adapter names them (the graph's name, else
    ``<main>``; a node's name, else ``<node_N>``)."""
    from parity.lib.onnx.graph import load_model

    m = load_model(onnx_path, what="model")
    return m.graph.name or "<main>", [n.name or f"<node_{i}>" for i, n in enumerate(m.graph.node)]


def _nodes_of(row: LayerResult) -> list[str]:
    covers = row.meta.get("target_covers")
    if isinstance(covers, list) and covers:
        return [str(c) for c in covers]
    node = row.meta.get("target_onnx_node")
    return [str(node)] if node else []


def _errors(report: Report, p: MetricInfo, values: str, known: set[str]) -> dict[str, float]:
    """Per ONNX node, the worst error of the rows it produced (NaN/Inf made by the target: +inf)."""
    out: dict[str, float] = {}
    for r in report.layers:
        if values == "local":
            v = r.local.get(p.name)
        else:
            v = r.worst.get(p.name, r.values.get(p.name))
        if made_nonfinite(r, local=values == "local"):
            e = math.inf
        elif v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        else:
            e = float(p.error(v))
        for node in _nodes_of(r):
            if node in known and (node not in out or e > out[node]):
                out[node] = e
    return out


def band(error: float, limit: float | None) -> str | None:
    """The colour of a node whose worst error is ``error`` against the threshold's error ``limit``:
    FAIL past it, NEAR within a decade of it, PASS below; NaN/Inf its own colour; no threshold: none."""
    if not math.isfinite(error):
        return NONFINITE_COLOR
    if limit is None or not math.isfinite(limit):
        return None
    if error > limit:
        return FAIL
    return NEAR if error * NEAR_FACTOR > limit else PASS


def node_data(report: Report, onnx_path: str | Path) -> dict[str, Any]:
    """Overlay name -> ``node_data_builder.ModelNodeData`` for the graph of ``onnx_path``.

    Only nodes that exist in that graph are keyed (rows of another graph, or a model that changed
    since the report, key nothing); an overlay with no node is left out.
    """
    ndb = _builder()
    p = report.primary
    if p is None:
        raise ParityError("the report has no metric, so there is nothing to show on the graph.")
    graph_id, nodes = graph_nodes(onnx_path)
    known = set(nodes)
    out: dict[str, Any] = {}
    # the threshold on the error scale; colours by verdict (the table's), not min-max over the graph
    limit = float(p.error(p.threshold)) if p.threshold is not None else None
    legend = [] if limit is None else [ndb.ThresholdItem(value=limit / NEAR_FACTOR, bgColor=PASS),
                                       ndb.ThresholdItem(value=limit, bgColor=NEAR),
                                       ndb.ThresholdItem(value=1e300, bgColor=FAIL)]
    for kind in ("accumulated", "local"):
        errs = _errors(report, p, kind, known)
        if not errs:
            continue
        finite = [e for e in errs.values() if math.isfinite(e)]
        top = max(finite, default=1.0)
        results = {}
        for n, e in errs.items():
            color = band(e, limit)
            text = "#ffffff" if color in (FAIL, NONFINITE_COLOR) else None
            results[n] = ndb.NodeDataResult(value=e if math.isfinite(e) else top, bgColor=color, textColor=text)
        name = f"{kind} {p.name} error"
        out[name] = ndb.ModelNodeData(graphsData={graph_id: ndb.GraphNodeData(
            results=results, name=name, thresholds=legend)})
    ranks: dict[str, int] = {}
    scored: set[str] = set()
    for r in report.layers:
        for node in _nodes_of(r):
            if node in known:
                scored.add(node)
                if r.culprit_rank is not None:
                    ranks[node] = min(ranks.get(node, r.culprit_rank), int(r.culprit_rank))
    if scored:
        results = {n: (ndb.NodeDataResult(value=1, bgColor="#d32f2f", textColor="#ffffff") if n in ranks
                       else ndb.NodeDataResult(value=0)) for n in sorted(scored)}
        out["culprit"] = ndb.ModelNodeData(graphsData={graph_id: ndb.GraphNodeData(results=results, name="culprit")})
    if not out:
        raise ParityError(f"no row of the report names a node of {Path(onnx_path).name}. Note: give the ONNX model "
                          f"the target ran (for a torch model, parity's export: parity -v compare prints its path)")
    return out


def write_node_data(report: Report, onnx_path: str | Path, folder: str | Path) -> list[Path]:
    """Each overlay as a Model Explorer node-data JSON file in ``folder`` (written whole, then renamed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in node_data(report, onnx_path).items():
        path = folder / (name.replace(" ", "-") + ".json")
        write_text(path, data.to_json_string(indent=2))
        written.append(path)
    return written


def onnx_for(report: Report, given: str | None, report_path: str) -> Path:
    """The ONNX graph to show: ``--onnx``; else the graph the target ran, which the report records
    (``summary.target_onnx``: an ``.onnx`` model itself, or parity's export of a torch model); else
    the report's model when it is an ``.onnx`` file (reports written before the record existed)."""
    if given:
        p = Path(given)
        if not p.is_file():
            raise ParityError(f"--onnx {given}: file not found.")
        return p
    recorded = str(report.summary.get("target_onnx") or "")
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    model = str(report.summary.get("model") or "")
    if model.lower().endswith(".onnx") and Path(model).is_file():
        return Path(model)
    if recorded:
        raise ParityError(f"{report_path}: the ONNX graph the target ran, {recorded}, is gone (a cleared cache, or "
                          f"another machine). Note: run the comparison again, or give --onnx PATH")
    raise ParityError(f"{report_path}: made from model {model or '(unknown)'}, and it records no ONNX graph (its "
                      f"target ran none, or the report predates the record); Model Explorer shows ONNX graphs. "
                      f"Note: give --onnx PATH, the ONNX model the target ran")


def write_view(report_path: str, onnx: str | None = None, out: str | None = None) -> tuple[Path, list[Path]]:
    """The ONNX graph of ``report_path`` and its overlays, written beside the report (or in ``out``)."""
    _builder()  # say how to install before reading anything
    report = report_from_json(report_path)
    model = onnx_for(report, onnx, report_path)
    rp = Path(report_path)
    folder = Path(out) if out else rp.with_name(rp.stem + ".model-explorer")
    return model, write_node_data(report, model, folder)


def serve(model: Path, files: list[Path], port: int = 8080) -> None:
    """Open Model Explorer on ``model`` with the overlays ``files``; its server runs until interrupted."""
    try:
        import model_explorer
        import model_explorer_onnx  # noqa: F401 - the extension Model Explorer loads by this name
    except ImportError:
        raise ParityError(f"parity view needs Model Explorer and its ONNX adapter, which are not installed. "
                          f"Note: {INSTALL}") from None
    model_explorer.visualize(model_paths=str(model), port=port, extensions=[EXTENSION],
                             node_data=[{"name": f.stem, "node_data_path": str(f)} for f in files])

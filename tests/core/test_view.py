"""parity view: Model Explorer node data keyed by ONNX node names, checked against the ONNX adapter's own graph."""
import json
import sys
from pathlib import Path

import pytest
import torch

import parity
from parity.cli import main
from parity.core.view import node_data

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "models"))
import zoo  # noqa: E402

pytest.importorskip("model_explorer")
adapter = pytest.importorskip("model_explorer_onnx.main")


def _adapter_graphs(onnx_path):
    """Graph id -> node ids, as Model Explorer's ONNX adapter builds the graph it shows."""
    graphs = adapter.ONNXAdapter().convert(str(onnx_path), {})["graphs"]
    return {g.id: {n.id for n in g.nodes} for g in graphs}


@pytest.fixture(scope="module")
def hazard(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("view")
    rep = parity.compare(zoo.fp16_hazard(), torch.randn(4, 16, generator=torch.Generator().manual_seed(0)),
                         target="ort-fp16", workdir=tmp / "c")
    return rep, rep.onnx_model(), tmp


def test_node_data_keys_exist_in_the_adapter_graph(hazard):
    rep, onnx_path, tmp = hazard
    files = rep.node_data(tmp / "nd")
    assert {f.name for f in files} == {"accumulated-cosine-error.json", "local-cosine-error.json", "culprit.json"}
    graphs = _adapter_graphs(onnx_path)
    for f in files:
        doc = json.loads(f.read_text())
        assert doc and set(doc) <= set(graphs), (f.name, set(doc), set(graphs))
        for gid, data in doc.items():
            missing = set(data["results"]) - graphs[gid]
            assert not missing and data["results"], (f.name, missing)
    # the values are the rows' own: 1 - cosine per ONNX node (worst row of the node), culprits flagged
    acc = json.loads((tmp / "nd" / "accumulated-cosine-error.json").read_text())
    (results,) = [d["results"] for d in acc.values()]
    for r in rep.layers:
        node = r.meta.get("target_onnx_node")
        if node in results and r.status == "ok" and "cosine" in r.values:
            assert results[node]["value"] >= 1 - r.values["cosine"] - 1e-12
    flags = next(iter(json.loads((tmp / "nd" / "culprit.json").read_text()).values()))["results"]
    assert {n for n, v in flags.items() if v["value"] == 1} == \
        {r.meta["target_onnx_node"] for r in rep.culprits if r.meta.get("target_onnx_node")}
    assert any(v["value"] == 0 for v in flags.values())


def test_cli_view_from_a_json_report_writes_the_same_node_data(hazard, tmp_path, capsys):
    from parity.core.report import write_report

    rep, onnx_path, _ = hazard
    out = tmp_path / "r.json"
    write_report(rep, "json", str(out))
    rc = main(["view", str(out), "--no-serve", "--onnx", str(onnx_path)])
    assert rc == 0, capsys.readouterr().err
    folder = tmp_path / "r.model-explorer"
    assert sorted(p.name for p in folder.iterdir()) == \
        ["accumulated-cosine-error.json", "culprit.json", "local-cosine-error.json"]
    assert "node data written to" in capsys.readouterr().out
    # read back from the JSON report, the overlays are those of the report in memory, value for value
    direct = {k: json.loads(v.to_json_string()) for k, v in node_data(rep, onnx_path).items()}
    for name, doc in direct.items():
        assert json.loads((folder / (name.replace(" ", "-") + ".json")).read_text()) == doc


def test_cli_view_of_an_onnx_report_needs_no_onnx_option(hazard, tmp_path, capsys):
    _, onnx_path, _ = hazard
    out = tmp_path / "o.json"
    rc = main(["compare", str(onnx_path), "--ref", "ort", "--target", "ort-fp16", "--diagnose", "--json", str(out),
               "--input-shape", "x:4x16", "--workdir", str(tmp_path / "c"), "--exit-zero", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert main(["view", str(out), "--no-serve", "--out", str(tmp_path / "nd")]) == 0
    graphs = _adapter_graphs(onnx_path)
    doc = json.loads((tmp_path / "nd" / "accumulated-cosine-error.json").read_text())
    assert doc and all(set(d["results"]) <= graphs[g] for g, d in doc.items())


def test_view_of_a_torch_report_finds_the_onnx_it_compared(hazard, tmp_path, capsys):
    """A torch model's report records the ONNX graph the target ran (parity's export); the view opens it
    without --onnx, and its overlays key nodes of that graph as the adapter builds it."""
    out = tmp_path / "t.json"
    rc = main(["compare", f"{ROOT / 'tests' / 'models' / 'zoo.py'}:fp16_hazard", "--target", "ort-fp16",
               "--input-shape", "x:4x16", "--diagnose", "--json", str(out), "--workdir", str(tmp_path / "c"),
               "--exit-zero", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    recorded = Path(json.loads(out.read_text())["summary"]["target_onnx"])
    assert recorded.is_file() and recorded.is_relative_to(tmp_path / "c")  # parity's export, in this cache
    assert main(["view", str(out), "--no-serve", "--out", str(tmp_path / "nd")]) == 0, capsys.readouterr().err
    graphs = _adapter_graphs(recorded)
    doc = json.loads((tmp_path / "nd" / "culprit.json").read_text())
    keyed = {n for d in doc.values() for n in d["results"]}
    assert keyed and all(set(d["results"]) <= graphs[g] for g, d in doc.items())
    flagged = {n for d in doc.values() for n, v in d["results"].items() if v["value"] == 1}
    rows = json.loads(out.read_text())["layers"]
    assert flagged == {r["meta"]["target_onnx_node"] for r in rows
                       if r.get("culprit_rank") is not None and r["meta"].get("target_onnx_node")}
    # the API's report records the same kind of path, and onnx_model() returns it
    assert hazard[0].summary["target_onnx"] == str(hazard[1])
    # the recorded graph gone (a cleared cache): one line saying so, and --onnx still works
    moved = recorded.rename(tmp_path / "moved.onnx")
    capsys.readouterr()
    assert main(["view", str(out), "--no-serve"]) == 1
    err = capsys.readouterr().err
    assert "is gone" in err and str(recorded) in err and len(err.strip().splitlines()) == 1
    assert main(["view", str(out), "--no-serve", "--onnx", str(moved)]) == 0


def test_view_of_a_report_without_onnx_asks_for_one(tmp_path, capsys):
    from parity.core.report import write_report

    rep = parity.compare(zoo.fp16_hazard(), torch.randn(4, 16, generator=torch.Generator().manual_seed(0)),
                         ref="torch", target="torch-fp16", workdir=tmp_path / "c", diagnose=False, quiet=True)
    assert "target_onnx" not in rep.summary  # torch-fp16 runs no ONNX graph
    write_report(rep, "json", str(tmp_path / "r.json"))
    assert main(["view", str(tmp_path / "r.json"), "--no-serve"]) == 1
    err = capsys.readouterr().err
    assert "records no ONNX graph" in err and "give --onnx PATH" in err and len(err.strip().splitlines()) == 1


def test_view_without_model_explorer_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "model_explorer", None)  # as if not installed: import fails
    assert main(["view", str(tmp_path / "any.json")]) == 1
    err = capsys.readouterr().err
    assert "parity view needs Model Explorer, which is not installed" in err
    assert "pip install 'parity[view]'" in err and "ai-edge-model-explorer model-explorer-onnx" in err


def test_not_a_report_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"layers": []}')
    assert main(["view", str(bad), "--no-serve"]) == 1
    assert "not a parity JSON report" in capsys.readouterr().err


def test_nodes_are_coloured_by_the_threshold_not_scaled_min_to_max(hazard, tmp_path):
    """A node's colour is the table's verdict (pass / near / fail against the metric's threshold, NaN/Inf
    apart), recomputed here from the rows' cosine: a tiny error is green, however small the largest one."""
    from parity.core.view import FAIL, NEAR, NONFINITE_COLOR, PASS

    rep, onnx_path, _ = hazard
    thr = rep.primary.threshold
    worst: dict[str, float] = {}
    for r in rep.layers:
        node = r.meta.get("target_onnx_node")
        cos = r.worst.get("cosine", r.values.get("cosine"))
        if node and (r.status == "nonfinite" or cos is not None):
            e = float("inf") if r.status == "nonfinite" else 1.0 - cos
            worst[node] = max(worst.get(node, 0.0), e)
    doc = json.loads(node_data(rep, onnx_path)["accumulated cosine error"].to_json_string())
    (data,) = doc.values()
    assert not data["gradient"] and data["thresholds"]  # bands, not a min-max gradient
    seen = set()
    for node, res in data["results"].items():
        e = worst[node]
        want = (NONFINITE_COLOR if e == float("inf") else FAIL if e > 1 - thr else
                NEAR if e > (1 - thr) / 10 else PASS)
        assert res["bgColor"] == want, (node, e, res)
        seen.add(want)
    assert PASS in seen and (FAIL in seen or NONFINITE_COLOR in seen)  # both ends on one graph


def test_a_passing_report_has_no_red_node(tmp_path):
    """Errors of 1e-8 (fp32 against fp32) stay green: min-max scaling painted the largest one red."""
    rep = parity.compare(zoo.lenet(), torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1)),
                         target="ort", workdir=tmp_path / "c")
    from parity.core.view import FAIL, PASS

    for name, nd in node_data(rep, rep.onnx_model()).items():
        if name == "culprit":
            continue
        (data,) = json.loads(nd.to_json_string()).values()
        colours = {v["bgColor"] for v in data["results"].values()}
        assert colours == {PASS}, (name, colours)


def test_a_layer_that_overflows_alone_is_not_green_on_the_local_overlay():
    """The local overlay, like the HTML depth plot, counts a layer that makes NaN/Inf alone as infinite
    error, not by the cosine of its finite part (an overflowing Linear reads 1 - 1e-7 there)."""
    import math

    from parity.contract.report import NEW_NONFINITE, LayerResult, Report
    from parity.core.engine import metric_infos, resolve_metrics
    from parity.core.view import _errors

    p = metric_infos(resolve_metrics(["cosine"]), {})[0]
    fc = LayerResult(name="fc", ref_name="fc", target_name="linear", order=0, values={"cosine": 0.9999999},
                     local={"cosine": 0.9999999, NEW_NONFINITE: 12}, meta={"target_onnx_node": "node_linear"})
    ok = LayerResult(name="head", ref_name="head", target_name="y", order=1, values={"cosine": 0.9999999},
                     local={"cosine": 0.9999999}, meta={"target_onnx_node": "node_head"})
    rep = Report([fc, ok], [p], "torch", "t")
    local = _errors(rep, p, "local", {"node_linear", "node_head"})
    assert local["node_linear"] == math.inf
    assert local["node_head"] == pytest.approx(1e-7, rel=0.01)

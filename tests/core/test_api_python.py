"""Issue 17: the Python API feels like Python.

Positional inputs as a tuple, errors naming the API's parameters (the CLI's naming its flags), input
dtypes given or inferred from an embedding, print(report) as a short summary, one seed rule, and an
ONNX model compared without naming a reference.
"""
import importlib.util
import json
import math

import numpy as np
import pytest
import torch

import parity
from parity.cli import main
from parity.contract.frontend import front_end
from support import ZOO, load_zoo

zoo = load_zoo()

NETS = '''
import torch
from torch import nn


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x, y):
        return torch.relu(self.a(x)) + self.b(y)


class Tokens(nn.Module):
    """An embedding whose row i holds the value i: its output shows the ids it was fed."""

    def __init__(self, rows=30, width=4):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(rows, width)
        with torch.no_grad():
            self.emb.weight.copy_(torch.arange(rows, dtype=torch.float32)[:, None].expand(rows, width))
        self.fc = nn.Linear(width, 3)

    def forward(self, input_ids):
        return self.fc(self.emb(input_ids))


class FlatTokens(Tokens):
    """The ids reach the embedding reshaped, beside a float input that must stay float."""

    def forward(self, scale, input_ids):
        return self.fc(self.emb(input_ids.reshape(-1))) * scale.reshape(-1, 1)


def two_inputs():
    return TwoInputs().eval()


def tokens():
    return Tokens().eval()


def flat_tokens():
    return FlatTokens().eval()
'''


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """The models above as a file (for the CLI's ``nets.py:factory``) and as an imported module."""
    path = tmp_path_factory.mktemp("nets") / "nets.py"
    path.write_text(NETS)
    spec = importlib.util.spec_from_file_location("parity_test_nets", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.PATH = path
    return mod


def _xy(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)


def test_a_tuple_is_one_call_of_positional_inputs(nets, tmp_path):
    net = nets.two_inputs()
    x, y = _xy()
    kw = dict(ref="torch", target="torch-fp16", workdir=tmp_path / "c", quiet=True)
    by_tuple = parity.compare(net, (x, y), **kw)
    by_name = parity.compare(net, {"x": x, "y": y}, **kw)
    by_spec = parity.compare(f"{nets.PATH}:two_inputs", (x, y), **kw)  # names from the sources, not a module
    assert by_tuple.summary["inputs"] == 1
    # x went to forward's x and y to y: the reference's value range of each layer is that of the known forward
    with torch.no_grad():
        known = {"a": net.a(x), "b": net.b(y)}
    for rep in (by_tuple, by_name, by_spec):
        rows = {r.name: r for r in rep.layers}
        for name, t in known.items():
            got = rows[name].range["ref"]
            assert got["min"] == pytest.approx(float(t.min()), rel=1e-6)
            assert got["max"] == pytest.approx(float(t.max()), rel=1e-6)
    # a list of tuples is several feeds
    many = parity.compare(net, [(x, y), _xy(1)], diagnose=False, **kw)
    assert many.summary["inputs"] == 2
    with pytest.raises(parity.ParityError, match=r"a tuple of 3 positional inputs .* the model takes 2: x, y"):
        parity.compare(net, (x, y, x), **kw)


def test_errors_name_the_parameters_of_the_front_end_used(nets, tmp_path, capsys):
    net = nets.two_inputs()
    with pytest.raises(parity.ParityError) as e:
        parity.compare(net, None, target="ort", workdir=tmp_path / "c")
    msg = str(e.value)
    assert "input_shapes={'x': (1, 3, 224, 224), 'y': (1, 3, 224, 224)}" in msg and "--input-shape" not in msg
    with pytest.raises(parity.ParityError) as e:
        parity.compare(net, None, target="ort", input_shapes={"x": (2, 8), "y": (2, 8), "z": (2, 8)},
                       workdir=tmp_path / "c")
    assert "input_shapes names 'z'" in str(e.value) and "--input-shape" not in str(e.value)
    with pytest.raises(parity.ParityError, match=r"^inputs_path='/no/such/feeds': file or folder not found"):
        parity.compare(net, inputs_path="/no/such/feeds", workdir=tmp_path / "c")
    with pytest.raises(parity.ParityError, match=r"^layers '\(': not a regular expression"):
        parity.compare(net, _xy(), layers="(", workdir=tmp_path / "c")
    assert front_end() == "cli"  # the API's wording ends with its call
    model = f"{nets.PATH}:two_inputs"
    assert main(["compare", model, "--target", "ort", "--workdir", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "--input-shape x:1x3x224x224 --input-shape y:1x3x224x224" in err and "input_shapes=" not in err
    assert main(["compare", model, "--target", "ort", "--workdir", str(tmp_path / "c"), "--input-shape", "x:2x8",
                 "--input-shape", "y:2x8", "--input-shape", "z:2x8"]) == 1
    err = capsys.readouterr().err
    assert "--input-shape names 'z'" in err and "input_shapes=" not in err
    assert main(["compare", model, "--inputs", "/no/such/feeds", "--workdir", str(tmp_path / "c")]) == 1
    assert "--inputs /no/such/feeds: file or folder not found" in capsys.readouterr().err


def test_an_input_that_indexes_an_embedding_is_int64_below_its_rows(nets, tmp_path, capsys):
    from parity.contract.source import RunConfig
    from parity.core.inputs import random_feed
    from parity.lib.torch_loader import load_torch_model, resolve_input_specs

    # in memory: floats would make nn.Embedding raise, and ids >= 30 would be out of its range
    rep = parity.compare(nets.tokens(), input_shapes={"input_ids": (2, 16)}, target="ort", diagnose=False,
                         workdir=tmp_path / "c", quiet=True)
    assert rep and rep.matched
    # through the CLI: the embedding's output (row i holds i) shows the ids fed, which are numpy's
    # integers below the 30 rows for seed 3, as random_feed promises
    out = tmp_path / "ref"
    assert main(["compare", f"{nets.PATH}:tokens", "--target", "ort", "--input-shape", "input_ids:2x16",
                 "--seed", "3", "--save-ref", str(out), "--workdir", str(tmp_path / "c"), "--quiet"]) == 0, \
        capsys.readouterr().err
    emb = [f for f in out.rglob("*.npy") if "emb" in f.name]
    assert emb, sorted(p.name for p in out.rglob("*"))
    fed = np.load(emb[0])
    expected = np.random.default_rng(3).integers(0, 30, size=(2, 16))
    np.testing.assert_array_equal(fed[..., 0], expected)
    # reshaped on its way, the ids are still found; the float input beside them stays undeclared (float32)
    loaded = load_torch_model(RunConfig(model=f"{nets.PATH}:flat_tokens"))
    specs = {s.name: s for s in resolve_input_specs(loaded, {"scale": (2, 16), "input_ids": (2, 16)})}
    assert (specs["input_ids"].dtype, specs["input_ids"].high) == ("int64", 30)
    assert specs["scale"].dtype is None
    feed = random_feed(list(specs.values()), 0)
    assert feed["input_ids"].dtype == np.int64 and feed["input_ids"].max() < 30
    assert feed["scale"].dtype == np.float32


def test_dtypes_given_in_the_api_and_on_the_command_line(nets, tmp_path, capsys):
    from parity.core.inputs import parse_input_dtypes, resolve_specs
    from parity.contract.source import InputSpec

    kw = dict(target="ort", diagnose=False, workdir=tmp_path / "c", quiet=True)
    assert parity.compare(nets.tokens(), input_shapes={"input_ids": ((2, 16), "int32")}, **kw)
    assert parity.compare(nets.tokens(), input_shapes={"input_ids": (2, 16)}, input_dtypes={"input_ids": torch.int32},
                          **kw)
    assert parse_input_dtypes(["input_ids:2x16:int32", "x:1x3"]) == {"input_ids": "int32"}
    spec = [InputSpec("input_ids", (None, 16), None)]
    assert resolve_specs(spec, {"input_ids": (2, 16)}, "m", {"input_ids": "int32"})[0].dtype == "int32"
    with pytest.raises(parity.UsageError, match=r"input_dtypes: 'text' for input 'input_ids' is not a dtype"):
        parity.compare(nets.tokens(), input_shapes={"input_ids": (2, 16)}, input_dtypes={"input_ids": "text"}, **kw)
    assert main(["compare", f"{nets.PATH}:tokens", "--input-shape", "input_ids:2x16:text"]) == 2
    err = capsys.readouterr().err
    assert "--input-shape: 'text' for input 'input_ids' is not a dtype" in err and len(err.strip().splitlines()) == 1
    assert main(["compare", f"{nets.PATH}:tokens", "--target", "ort", "--input-shape", "input_ids:2x16:int32",
                 "--workdir", str(tmp_path / "c"), "--quiet"]) == 0, capsys.readouterr().err


def test_print_report_is_a_short_summary(nets, tmp_path):
    rep = parity.compare(zoo.fp16_hazard(), torch.randn(4, 16, generator=torch.Generator().manual_seed(0)),
                         target="ort-fp16", workdir=tmp_path / "c", quiet=True)
    text = str(rep)
    lines = text.splitlines()
    assert len(lines) <= 6 and "LayerResult(" not in text and "MetricInfo(" not in repr(rep)
    assert lines[0] == "parity report: torch vs ort-fp16 on Fp16Hazard (nn.Module in memory)"
    assert not rep and lines[2].startswith("FAIL: ") and rep.first_divergent.name in lines[2]
    culprits = [r.name for r in rep.culprits]
    culprit_line = [ln for ln in lines if ln.startswith("culprits: ")]
    assert bool(culprit_line) == bool(culprits)
    if culprits:  # named in the report's one order (rep.culprits), each with its op
        at = [culprit_line[0].index(f"{r.name} ({r.op_type or r.target_op_type or 'layer'}") for r in rep.culprits[:5]]
        assert at == sorted(at)
    # the worst layers, computed here apart: layers gaining NaN/Inf first, then by 1 - cosine (worst over
    # inputs; NaN worst)
    def err(r):
        v = r.worst.get("cosine", r.values.get("cosine"))
        return (r.status == "nonfinite", math.inf if v is None or math.isnan(v) else 1 - v)
    expected = [r.name for r in sorted((r for r in rep.matched if "cosine" in r.values), key=err, reverse=True)][:5]
    worst = lines[-1].removeprefix("worst layers by cosine: ").split(", ")
    assert lines[-1].startswith("worst layers by cosine: ") and [w.split(" ")[0] for w in worst] == expected
    one = repr(rep)
    assert "\n" not in one and one.startswith("<ComparisonReport Fp16Hazard") and one.endswith("FAIL>")
    ok = parity.compare(nets.two_inputs(), _xy(), ref="torch", target="ort", diagnose=False,
                        workdir=tmp_path / "c", quiet=True)
    assert ok and str(ok).splitlines()[2] == "PASS: no layer fails cosine threshold 0.999" and repr(ok).endswith("PASS>")


def test_seed_is_checked_by_one_rule_in_api_and_cli(nets, tmp_path, capsys):
    from parity.contract.options import check_seed

    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(parity.UsageError) as e:
            parity.compare(nets.two_inputs(), None, input_shapes={"x": (2, 8), "y": (2, 8)}, seed=bad,
                           workdir=tmp_path / "c")
        assert str(e.value) == f"seed={bad!r}: the seed of random inputs must be an integer >= 0. " \
                               f"Note: e.g. 0 (the default)"
    assert check_seed(np.int64(3)) == 3 and check_seed(0) == 0
    assert main(["compare", f"{nets.PATH}:two_inputs", "--seed", "-1"]) == 2
    assert capsys.readouterr().err.strip() == ("parity: error: --seed -1: the seed of random inputs must be an "
                                               "integer >= 0. Note: e.g. 0 (the default)")


def test_an_onnx_model_needs_no_ref(nets, tmp_path, capsys):
    import onnx

    first = parity.compare(nets.two_inputs(), _xy(), target="ort", diagnose=False, workdir=tmp_path / "c", quiet=True)
    path = first.onnx_model()
    out = tmp_path / "r.json"
    rc = main(["compare", str(path), "--target", "ort-fp16", "--input-shape", "x:4x8", "--input-shape", "y:4x8",
               "--json", str(out), "--workdir", str(tmp_path / "c"), "--quiet", "--exit-zero"])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["reference"] == "ort" and doc["layers"]
    for model in (str(path), onnx.load(str(path))):
        rep = parity.compare(model, _xy(), target="ort-fp16", diagnose=False, workdir=tmp_path / "c", quiet=True)
        assert rep.ref_label == "ort" and rep.matched
    # a reference named on the command line still wins (torch cannot read ONNX: one line says so)
    assert main(["compare", str(path), "--ref", "torch", "--target", "ort", "--input-shape", "x:4x8",
                 "--input-shape", "y:4x8", "--workdir", str(tmp_path / "c")]) == 1
    assert "looks like an ONNX model" in capsys.readouterr().err


def _real_zoo():
    """tests/models/real_zoo.py, imported by file as support.load_zoo imports zoo.py."""
    spec = importlib.util.spec_from_file_location("real_zoo", ZOO.parent / "real_zoo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("arch", ["BertEncoder", "Gpt2Decoder"])
def test_token_ids_of_real_transformers_are_found_without_a_declaration(arch, tmp_path):
    """Hugging Face BERT and GPT-2 layouts (tests/models/real_zoo.py), undeclared: the probe finds
    input_ids through their embedding modules, bounded by the vocabulary; the ONNX export then takes
    int64 ids, as the graph's input type shows."""
    import onnx

    pytest.importorskip("transformers")
    from parity.contract.source import RunConfig
    from parity.lib.torch_loader import load_torch_model, register_memory_model, resolve_input_specs

    real_zoo = _real_zoo()
    model = getattr(real_zoo, arch)().eval()
    assert not hasattr(model, "parity_input_shapes")  # nothing declared: only the probe can tell
    loaded = load_torch_model(RunConfig(model=register_memory_model(model, arch)))
    (spec,) = resolve_input_specs(loaded, {"input_ids": (2, real_zoo.SEQ)})
    assert (spec.dtype, spec.high) == ("int64", real_zoo.VOCAB)
    rep = parity.compare(model, input_shapes={"input_ids": (2, real_zoo.SEQ)}, ref="torch", target="ort",
                         diagnose=False, workdir=tmp_path / "c", quiet=True)
    assert rep.matched
    (inp,) = [i for i in onnx.load(str(rep.onnx_model())).graph.input if i.name == "input_ids"]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.INT64

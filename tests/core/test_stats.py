"""Dataset statistics: one process and any sharding give the same report; values checked by hand."""
import math
import pickle
import random

import numpy as np
import pytest

from parity.contract.records import Activation, Pair
from parity.core.compare import CompareSettings, compare, finish, prepare, run_feeds
from parity.core.engine import metric_infos, resolve_metrics, run_engine
from parity.core.stats import DatasetStats

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

ZOO = ROOT / "tests" / "models" / "zoo.py"
METRICS = ["cosine", "rel-diff", "max-abs", "sqnr", "nonfinite"]


def _feed_report(ref: np.ndarray, tgt: np.ndarray):
    pairs = [Pair(Activation("a", ref, order=0), Activation("a", tgt, order=0), "exact"),
             Pair(Activation("b", ref * 2, order=1), Activation("b", tgt * 2 + 0.01, order=1), "exact")]
    return run_engine(iter(pairs), METRICS)


def test_quantiles_worst_inputs_mean_and_pooled_match_a_hand_computation():
    rng = np.random.default_rng(0)
    n = 23
    refs = [rng.standard_normal(500 + 37 * i).astype(np.float32) for i in range(n)]
    tgts = [(r + rng.standard_normal(r.size).astype(np.float32) * (0.001 * (1 + i % 7))).astype(np.float16)
            for i, r in enumerate(refs)]
    stats = DatasetStats()
    for i in range(n):
        stats.add(i, f"f{i}", _feed_report(refs[i], tgts[i]))
    infos = metric_infos(resolve_metrics(METRICS), {})
    row = stats.report(infos, "ref", "tgt").layers[0]
    # per-input cosine by hand
    cos = np.array([float(np.dot(r.astype(np.float64), t.astype(np.float64))
                          / (np.linalg.norm(r.astype(np.float64)) * np.linalg.norm(t.astype(np.float64))))
                    for r, t in zip(refs, tgts)])
    assert row.n_inputs == n
    assert row.values["cosine"] == pytest.approx(cos.mean(), rel=1e-12)
    worst_first = np.argsort(cos, kind="stable")
    assert [i for i, _ in row.worst_inputs["cosine"]] == worst_first[:5].tolist()
    assert row.worst_input["cosine"] == int(worst_first[0]) and row.worst["cosine"] == pytest.approx(cos.min())
    best_first = np.sort(cos)[::-1]
    for q in (0.5, 0.9, 0.99):  # nearest rank, counted from the best
        assert row.quantiles["cosine"][f"q{int(q * 100)}"] == pytest.approx(best_first[math.ceil(q * n) - 1],
                                                                           rel=1e-12)
    # pooled: the metric over every element of every input at once
    R = np.concatenate(refs).astype(np.float64)
    T = np.concatenate(tgts).astype(np.float64)
    assert row.pooled["cosine"] == pytest.approx(R @ T / (np.linalg.norm(R) * np.linalg.norm(T)), rel=1e-12)
    assert row.pooled["max-abs"] == pytest.approx(np.abs(T - R).max(), rel=1e-12)
    assert row.pooled["sqnr"] == pytest.approx(10 * np.log10((R @ R) / ((T - R) @ (T - R))), rel=1e-12)


def test_any_sharding_and_merge_order_gives_the_same_statistics():
    rng = np.random.default_rng(1)
    reports = []
    for i in range(17):
        r = rng.standard_normal(300).astype(np.float32)
        t = r + rng.standard_normal(300).astype(np.float32) * 0.01 * (i % 5)
        if i == 6:
            t[3] = np.inf  # one input with a new Inf
        reports.append(_feed_report(r, t))
    infos = metric_infos(resolve_metrics(METRICS), {})
    one = DatasetStats()
    for i, rep in enumerate(reports):
        one.add(i, f"f{i}", rep)
    shards = [DatasetStats() for _ in range(4)]
    order = list(range(17))
    random.Random(3).shuffle(order)
    for k, i in enumerate(order):
        shards[k % 4].add(i, f"f{i}", reports[i])
    shards = [pickle.loads(pickle.dumps(s)) for s in shards]  # as they cross from Ray workers
    merged = shards[2].merge(shards[0], infos).merge(shards[3], infos).merge(shards[1], infos)
    a = one.report(infos, "r", "t")
    b = merged.report(infos, "r", "t")
    assert [l.name for l in a.layers] == [l.name for l in b.layers]
    for la, lb in zip(a.layers, b.layers):
        assert la.values == lb.values and la.quantiles == lb.quantiles and la.worst_inputs == lb.worst_inputs
        assert la.target_inf == lb.target_inf == 1 and la.status == lb.status == "nonfinite"
        assert la.pooled == lb.pooled and la.pooled  # bit for bit: the pooled sums are exact
    assert a.summary == b.summary


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("feeds")
    for i in range(12):
        np.save(d / f"{i:03d}.npy", np.random.default_rng(i).standard_normal((1, 1, 28, 28)).astype(np.float32))
    return d


def test_shards_of_a_real_comparison_merge_into_the_one_process_report(folder, tmp_path):
    s = CompareSettings(model=f"{ZOO}:lenet", target="ort-fp16", inputs=str(folder), metrics=METRICS,
                        workdir=str(tmp_path / "cache"))
    prep = prepare(s)
    whole = finish(s, run_feeds(prep, s, prep.feeds.iter(), total=12))
    infos = metric_infos(resolve_metrics(METRICS), {})
    parts = [run_feeds(prepare(s), s, prep.feeds.iter(w, None, 3), total=12) for w in range(3)]
    total = DatasetStats()
    for p in reversed(parts):
        total.merge(pickle.loads(pickle.dumps(p)), infos)
    sharded = finish(s, total)
    assert whole.summary == sharded.summary and whole.summary["inputs"] == 12
    assert len(whole.layers) == len(sharded.layers) > 5
    for la, lb in zip(whole.layers, sharded.layers):
        assert (la.name, la.status, la.n_inputs) == (lb.name, lb.status, lb.n_inputs)
        assert la.values == lb.values and la.worst_inputs == lb.worst_inputs and la.quantiles == lb.quantiles
        assert la.pooled == lb.pooled  # bit for bit, though the strided shards merged in reverse


def test_exact_sums_do_not_depend_on_the_order_and_round_the_exact_sum():
    """ExactSum against Fraction arithmetic: values spanning 60 orders of magnitude (where float
    addition loses the small ones in an order-dependent way), split and merged in random orders."""
    from fractions import Fraction

    from parity.core.stats import ExactSum

    rng = random.Random(5)
    xs = [rng.choice((-1, 1)) * rng.random() * 10.0 ** rng.randint(-30, 30) for _ in range(400)]
    exact = float(sum(Fraction(x) for x in xs))  # Fraction -> float rounds to nearest
    seen = set()
    for trial in range(6):
        order = xs[:]
        rng.shuffle(order)
        cuts = sorted(rng.sample(range(1, len(order)), 5))
        parts = [order[a:b] for a, b in zip([0] + cuts, cuts + [len(order)])]
        sums = [ExactSum() for _ in parts]
        for s_, part in zip(sums, parts):
            for x in part:
                s_.add(x)
        sums = [pickle.loads(pickle.dumps(s_)) for s_ in sums]
        rng.shuffle(sums)
        total = sums[0]
        for s_ in sums[1:]:
            total.merge(s_)
        seen.add(total.value())
        assert total.value() == exact
    naive = {sum(rng.sample(xs, len(xs))) for _ in range(6)}
    assert len(seen) == 1 and len(naive) > 1  # plain float sums of these values do depend on the order
    inf = ExactSum(1.0).add(math.inf).add(-2.0)
    assert inf.value() == math.inf and math.isnan(ExactSum(math.inf).add(-math.inf).value())


def test_the_verdict_says_how_many_inputs_fail_and_which_are_worst():
    from parity.contract.report import summary_lines

    rng = np.random.default_rng(5)
    stats = DatasetStats()
    for i in range(10):
        r = rng.standard_normal(400).astype(np.float32)
        noise = 0.5 if i in (3, 8) else 1e-4  # two inputs of ten are ruined
        stats.add(i, f"img{i}.npy", _feed_report(r, r + noise * rng.standard_normal(400).astype(np.float32)))
    infos = metric_infos(resolve_metrics(METRICS), {})
    rep = stats.report(infos, "ref", "tgt")
    rep.summary["inputs"] = 10
    assert rep.layers[0].meta["failing_inputs"] == 2
    line = next(ln for ln in summary_lines(rep) if ln.startswith("Inputs:"))
    assert line.startswith("Inputs: 2 of 10 fail cosine") and " at a " in line
    assert "img3.npy" in line and "img8.npy" in line and "img0.npy" not in line


def test_the_csv_report_carries_q90_pooled_and_failing_inputs():
    import csv
    import io

    from parity_builtin_reporters.csv_report import csv_text

    rng = np.random.default_rng(9)
    stats = DatasetStats()
    for i in range(6):
        r = rng.standard_normal(300).astype(np.float32)
        stats.add(i, f"f{i}", _feed_report(r, r + (0.3 if i == 2 else 1e-4) * rng.standard_normal(300).astype(np.float32)))
    infos = metric_infos(resolve_metrics(METRICS), {})
    rep = stats.report(infos, "ref", "tgt")
    rows = list(csv.DictReader(io.StringIO(csv_text(rep))))
    first = rep.layers[0]
    assert float(rows[0]["cosine_q90"]) == pytest.approx(first.quantiles["cosine"]["q90"])
    assert float(rows[0]["cosine_pooled"]) == pytest.approx(first.pooled["cosine"])
    assert rows[0]["failing_inputs"] == "1"


def test_the_table_shows_q90_worst_and_inputs_failing():
    import io

    from parity_builtin_reporters.table import render_table

    rng = np.random.default_rng(9)
    stats = DatasetStats()
    for i in range(6):
        r = rng.standard_normal(300).astype(np.float32)
        stats.add(i, f"f{i}", _feed_report(r, r + (0.3 if i == 2 else 1e-4) * rng.standard_normal(300).astype(np.float32)))
    rep = stats.report(metric_infos(resolve_metrics(METRICS), {}), "ref", "tgt")
    out = io.StringIO()
    render_table(rep, file=out)
    text = out.getvalue()
    assert "cosine q90" in text and "cosine worst" in text and "inputs failing" in text
    assert "1/6" in text and rep.primary.format(rep.layers[0].quantiles["cosine"]["q90"]) in text


def test_a_dump_target_keeps_its_own_name_over_several_feeds(folder, tmp_path):
    """The report names the target source as it names itself (``dump:<file>``), not the --target setting."""
    cache = str(tmp_path / "cache")
    base = CompareSettings(model=f"{ZOO}:lenet", target="ort-fp16", inputs=str(folder), workdir=cache,
                           save_target=str(tmp_path / "t"), limit=2)
    compare(base)
    from parity.core.dumps import feed_dumps

    first = feed_dumps(tmp_path / "t")[0]  # one dump of the 2 feeds, a dump per feed inside it
    s = CompareSettings(model=f"{ZOO}:lenet", target="dump", target_dump=str(first.path),
                        inputs=str(folder), workdir=cache)
    prep = prepare(s)
    rep = finish(s, run_feeds(prep, s, prep.feeds.iter(), total=1))
    assert rep.target_label == f"dump:{first.path.name}" and rep.ref_label == "torch"

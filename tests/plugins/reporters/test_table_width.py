"""The terminal table at 80, 100, 120 and 200 columns: no number is ever cut, no word folded, and
the columns that had to go are named under the table with how to see them (--columns, JSON/HTML).
"""
import io
import re

import numpy as np
import pytest
from rich.cells import cell_len

from parity import Activation
from parity.contract.errors import UsageError
from parity.core.engine import compare_streams
from parity_builtin_reporters.table import column_keys, render_table

NAMES = ["encoder.layers.0.self_attn.q_proj", "encoder.layers.0.self_attn.out_proj", "encoder.layers.0.mlp.fc1",
         "encoder.layers.0.mlp.act", "encoder.layers.0.mlp.fc2", "head.分类"]  # a wide character counts two cells


def _report():
    """A report with every kind of column: four metrics, local values, ranges, match methods, NaN/Inf."""
    rng = np.random.default_rng(3)
    ref, tgt, alone = [], [], []
    for k, n in enumerate(NAMES):
        a = (rng.standard_normal((2, 64, 48)) * 10 ** (k - 2)).astype(np.float32)
        noise = rng.standard_normal(a.shape).astype(np.float32) * 1e-3 * (k + 1) * float(np.abs(a).mean())
        b = a + noise
        if n.startswith("head"):
            b = b.copy()
            b[0, 0, :3] = np.inf  # NaN/Inf in the target: the NaN/Inf column appears
        ref.append(Activation(n, a, order=k, op_type="Linear" if "proj" in n or "fc" in n else "GELU"))
        tgt.append(Activation(n, b, order=k))
        alone.append(Activation(n, a + noise / 2, order=k))
    metrics = ["cosine", "rel-diff", "max-abs", "nonfinite"]
    rep = compare_streams(iter(ref), iter(tgt), metrics, thresholds={"cosine": 0.9999999},
                          options={"ranges": True}, ref_label="torch", target_label="ort-fp16")
    local = compare_streams(iter(ref), iter(alone), metrics)  # the layers alone: real metric values
    for row, loc in zip(rep.layers, local.layers):
        row.local = dict(loc.values)
        row.match = "provenance"
    return rep


def _render(rep, width, columns=None):
    out = io.StringIO()
    render_table(rep, file=out, width=width, columns_shown=columns)
    return out.getvalue()


def _shown_and_hidden(text):
    m = re.search(r"Hidden to fit \d+ columns: ([^.]+)\.", text.replace("\n", " "))
    return [h.strip() for h in m.group(1).split(",")] if m else []


def _row_line(text, order):
    """The first line of the table row numbered ``order`` (values sit on a row's first line)."""
    return next(l for l in text.splitlines() if re.match(rf"│ +{int(order)} │", l))


@pytest.mark.parametrize("width", [80, 100, 120, 200])
def test_the_table_fits_the_width_and_never_cuts_a_number(width):
    rep = _report()
    text = _render(rep, width)
    table = text.split("\n└")[0]
    assert all(cell_len(l) <= width for l in text.splitlines()), [l for l in text.splitlines() if cell_len(l) > width]
    assert "…" not in table  # nothing shortened with an ellipsis
    hidden = _shown_and_hidden(text)
    keys = column_keys(rep)
    assert set(hidden) <= set(keys) and "cosine" not in hidden  # the primary metric is never hidden
    shown = [m for m in rep.metrics if m.name not in hidden]
    for layer in rep.layers:
        line = _row_line(text, layer.order)
        for m in shown:  # each shown value whole, as its metric formats it
            assert m.format(layer.values.get(m.name)) in line, (m.name, line)
        if "local" not in hidden:
            assert rep.primary.format(layer.local["cosine"]) in line
        if "matched" not in hidden:
            assert "provenance" in line  # a word is never folded ("prove/nance")
    assert "divergence" in text  # the marker wraps at spaces, never inside a word
    if width == 200:
        assert hidden == []
    else:
        assert hidden, "at this width the table cannot hold every column"
        assert "--columns" in text and "JSON/HTML" in text


def test_narrower_hides_more_in_priority_order():
    rep = _report()
    hidden = [set(_shown_and_hidden(_render(rep, w))) for w in (200, 120, 100, 80)]
    assert all(a <= b for a, b in zip(hidden, hidden[1:]))  # a column hidden at a width stays hidden below it
    assert "matched" in hidden[1]  # the match method goes before the values
    assert "local" not in hidden[3]  # the layer alone (--diagnose) stays at 80 columns


def test_columns_option_shows_the_chosen_columns_whole():
    rep = _report()
    text = _render(rep, 80, "shape,matched")
    assert _shown_and_hidden(text) == []  # chosen: nothing was hidden for lack of room
    line = _row_line(text, 0)
    assert "2x64x48" in line and "provenance" in line
    assert rep.metrics[1].format(rep.layers[0].values["rel-diff"]) not in line  # not chosen
    wide = _render(rep, 80, "all")
    line = _row_line(wide, 0)
    for m in rep.metrics:  # all: every value whole, the table wider than 80 rather than a number cut
        assert m.format(rep.layers[0].values[m.name]) in line
    assert "…" not in wide.split("\n└")[0]
    with pytest.raises(UsageError, match="--columns: no column 'nosuch'"):
        _render(rep, 80, "nosuch")


def test_a_known_column_this_report_lacks_shows_nothing_and_an_unknown_one_fails_before_the_run(tmp_path, capsys):
    from pathlib import Path

    from support import cli

    rep = _report()
    for row in rep.layers:
        row.local = {}  # no --diagnose: no local column
    text = _render(rep, 200, "local,shape")
    assert "local" not in text.splitlines()[2] and "2x64x48" in _row_line(text, 0)
    zoo = Path(__file__).resolve().parents[2] / "models" / "zoo.py"
    rc, out, err = cli(capsys, "compare", f"{zoo}:lenet", "--ref", "torch", "--target", "ort", "--columns",
                       "shape,nosuch", "--workdir", tmp_path / "cache")
    assert rc == 2 and len(err) == 1 and "--columns: no column 'nosuch'" in err[0] and "naninf" in err[0]
    assert not (tmp_path / "cache").exists()  # refused before any model ran


def test_columns_go_in_the_documented_order_and_a_file_gets_them_all():
    """docs/reports.md, "The terminal table": the order in which secondary columns are dropped, and a file
    or pipe (no terminal width) gets every column."""
    from parity_builtin_reporters.table import columns, fit

    rep = _report()
    documented = ["matched", "nonfinite", "max-abs", "rel-diff", "shape", "cosine-q90", "op", "absmax", "cosine",
                  "failing", "local", "naninf"]  # "cosine": its mean over several inputs (its worst stays)
    cols = columns(rep, rep.layers)
    droppable = [c.key for c in cols if c.drop]
    order = [k for k in documented if k in droppable]
    assert sorted(order) == sorted(droppable)
    for width in range(20, 201, 5):
        hidden = [c.key for c in fit(cols, width)[2]]
        assert set(hidden) == set(order[:len(hidden)]), (width, hidden)  # always the first ones of the order
    assert {c.key for c in fit(cols, 20)[2]} == set(order)
    text = _render(rep, None)  # a StringIO: not a terminal
    assert _shown_and_hidden(text) == [] and "Hidden" not in text
    line = _row_line(text, 0)
    for m in rep.metrics:
        assert m.format(rep.layers[0].values[m.name]) in line

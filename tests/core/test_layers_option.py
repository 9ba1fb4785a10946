"""--layers end to end: only the selected layers (and the model outputs) are compared, with the values
and the local errors (--diagnose) a full run gives them."""
from pathlib import Path

import pytest

from parity.contract.errors import ParityError
from parity.core.compare import CompareSettings, compare

ZOO = Path(__file__).resolve().parents[1] / "models" / "zoo.py"


def test_selected_layers_keep_their_values_and_local_errors(tmp_path):
    base = dict(model=f"{ZOO}:int8_outlier", target="ort-int8", random_inputs=2, diagnose=True,
                workdir=str(tmp_path / "cache"))
    full = compare(CompareSettings(**base))
    part = compare(CompareSettings(**base, layers=r"^act2$|^head$"))
    rows = {l.name: l for l in part.matched}
    outputs = {l.name for l in full.matched if l.meta.get("ref_is_output") or l.match == "output"}
    assert {"act2", "head"} <= set(rows) and set(rows) <= {"act2", "head"} | outputs
    for l in full.matched:
        if l.name in rows:
            assert rows[l.name].values == pytest.approx(l.values, rel=1e-12)
            assert rows[l.name].local == pytest.approx(l.local, rel=1e-12)
    assert rows["act2"].local  # the local run of a selected layer was scored
    assert part.summary.get("first_culprit") == full.summary.get("first_culprit") == "act2"


def test_a_file_of_names_and_a_bad_regex(tmp_path):
    names = tmp_path / "layers.txt"
    names.write_text("# the one layer\nact2\n")
    rep = compare(CompareSettings(model=f"{ZOO}:int8_outlier", target="ort", layers=f"@{names}",
                                  workdir=str(tmp_path / "cache")))
    assert "act2" in {l.name for l in rep.matched} and "act1" not in {l.name for l in rep.layers}
    with pytest.raises(ParityError, match=r"--layers '\(': not a regular expression"):
        compare(CompareSettings(model=f"{ZOO}:int8_outlier", target="ort", layers="(",
                                workdir=str(tmp_path / "cache")))


def test_sizes_read_one_vocabulary_and_a_bad_one_is_a_usage_line(capsys, tmp_path):
    from parity.contract.options import parse_bytes
    from support import cli

    assert parse_bytes("2G") == parse_bytes("2GiB") == 2 << 30 and parse_bytes("0.5GB") == 5 * 10**8
    rc, _, err = cli(capsys, "compare", f"{ZOO}:lenet", "--max-memory", "lots", "--workdir", tmp_path)
    assert rc == 2 and err == ["parity: error: --max-memory='lots' is not a size. Note: write e.g. 268435456, "
                               "256MiB or 1G"]

"""The pytest plugin (entry point pytest11): assert_parity and the parity_assert fixture in a user's test suite."""
import sys
from pathlib import Path

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "models" / "zoo.py"


def test_assert_parity_passes_and_fails_with_the_worst_layers(pytester, tmp_path):
    pytester.makepyfile(test_user=f'''
        import numpy as np
        from parity.testing import assert_parity

        def test_fp32_export_matches(parity_assert):  # the fixture, registered by the entry point
            rep = parity_assert("{ZOO}:lenet", np.zeros((2, 1, 28, 28), np.float32) + 0.5, target="ort",
                                min_cosine=0.9999, workdir=r"{tmp_path / 'c'}")
            assert rep.matched

        def test_fp16_overflow():
            assert_parity("{ZOO}:fp16_hazard", target="ort-fp16-strict", min_cosine=0.999, workdir=r"{tmp_path / 'c'}")

        def test_int8_outlier():
            assert_parity("{ZOO}:int8_outlier", target="ort-int8", min_cosine=0.9999, workdir=r"{tmp_path / 'c'}")
    ''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1, failed=2)
    # pytest prints whole messages again in the short summary when CI is set: read the failure sections only
    out = result.stdout.str().split("short test summary info")[0]
    assert "parity: torch vs ort-fp16-strict on " in out and "fails:" in out
    assert "layers produce NaN/Inf where the reference is finite, first boost" in out
    assert "parity: torch vs ort-int8 on " in out and "have cosine below min_cosine 0.9999" in out
    assert out.count("worst layers by cosine:") == 2
    # the worst layers are listed, NaN/Inf-producing ones first, one line each with the cosine
    listed = [ln for ln in out.splitlines() if ln.strip().startswith(("E     ", "E   ")) and ": cosine " in ln]
    assert 2 <= len(listed) <= 10 and "[nonfinite]" in listed[0]
    assert "Traceback" not in out and "parity/core" not in out  # the helper hides its own frames


def test_the_plugin_is_registered_by_entry_point():
    from importlib.metadata import entry_points

    eps = [e for e in entry_points(group="pytest11") if e.name == "parity"]
    assert [e.value for e in eps] == ["parity.testing"]
    assert "parity.testing" in sys.modules  # loaded by pytest itself, as in any suite where parity is installed

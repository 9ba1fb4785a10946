"""Progress and -v logging: nothing when output is no terminal or --quiet; the steps on a terminal."""
import io
import logging
import re
from pathlib import Path

from rich.console import Console
from support import load_zoo

from parity.cli import main
from parity.contract import progress
from parity.core.compare import CompareSettings, compare
from parity.core.progress import showing

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "models" / "zoo.py"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _run(tmp_path, target="ort-fp16", **kw):
    return compare(CompareSettings(model=f"{ZOO}:lenet", ref="torch", target=target,
                                   workdir=str(tmp_path / "cache"), **kw))


def test_terminal_shows_export_conversion_capture_and_local_steps(tmp_path):
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=160)
    with showing(console=console):
        rep = _run(tmp_path, diagnose=True, random_inputs=2)
    assert rep.matched
    text = ANSI.sub("", buf.getvalue())
    for words in ("export LeNet to ONNX", "convert", "to fp16", "capture input 1 of 2", "capture input 2 of 2",
                  "layers run alone (input 1)", "layers run alone (input 2)"):
        assert words in text, (words, text[-2000:])
    # every step has ended: the display is gone and the default (silent) one is back
    assert type(progress._display) is progress.Display


def test_not_a_terminal_and_quiet_write_nothing(tmp_path):
    pipe = io.StringIO()  # not a terminal
    with showing(console=Console(file=pipe)):
        _run(tmp_path, target="ort")
    assert pipe.getvalue() == ""
    forced = io.StringIO()
    with showing(quiet=True, console=Console(file=forced, force_terminal=True)):
        _run(tmp_path, target="ort")
    assert forced.getvalue() == ""


def test_cli_stderr_without_terminal_has_no_progress(tmp_path, capsys):
    rc = main(["compare", f"{ZOO}:lenet", "--target", "ort", "--workdir", str(tmp_path / "c"), "--exit-zero"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "capture input" not in err and "\x1b[" not in err


def test_a_failing_step_is_closed_and_logged(caplog):
    shown = []

    class Recorder(progress.Display):
        def start(self, text, total):
            shown.append(("start", text))
            return progress.Task()

        def finish(self, task):
            shown.append(("finish",))

    old = progress.install(Recorder())
    try:
        with caplog.at_level(logging.INFO, logger="parity"):
            try:
                with progress.step("build engine"):
                    raise KeyError("x")
            except KeyError:
                pass
            assert list(progress.track(iter([1, 2, 3]), "feed")) == [1, 2, 3]
    finally:
        progress.install(old)
    assert shown == [("start", "build engine"), ("finish",), ("start", "feed"), ("finish",)]
    assert any("build engine: stopped" in r.getMessage() for r in caplog.records)
    assert any("feed: done" in r.getMessage() for r in caplog.records)


def test_verbose_logs_cache_folder_and_steps(tmp_path, capsys):
    rc = main(["-v", "compare", f"{ZOO}:lenet", "--target", "ort-fp16", "--workdir", str(tmp_path / "c"),
               "--exit-zero", "--quiet"])
    assert rc == 0
    err = capsys.readouterr().err
    assert f"cache folder (exports, converted models, engines): {tmp_path / 'c'}" in err
    assert f"ONNX export of LeNet: {tmp_path / 'c' / 'onnx'}" in err
    assert "export LeNet to ONNX (opset 18): done in" in err
    assert "convert zoo-" in err and "to fp16: done in" in err  # named after the exported file
    rc = main(["compare", f"{ZOO}:lenet", "--target", "ort", "--workdir", str(tmp_path / "c"), "--exit-zero",
               "--quiet"])
    assert "export LeNet" not in capsys.readouterr().err  # without -v: no log lines


def test_terminal_shows_each_fix_step(tmp_path):

    import torch

    import parity

    zoo = load_zoo()

    rep = parity.compare(zoo.fp16_hazard(), torch.randn(4, 16, generator=torch.Generator().manual_seed(0)),
                         target="ort-fp16", workdir=tmp_path / "c", quiet=True)
    buf = io.StringIO()
    lines = []
    with showing(console=Console(file=buf, force_terminal=True, width=200)):
        res = rep.fix("cosine=0.999", log=lines.append)
    text = ANSI.sub("", buf.getvalue())
    assert res.passed and lines
    assert "fix: search layers to keep in fp32 for cosine 0.999" in text
    for line in lines:  # every step the search logged was shown while it ran
        assert f"fix: {line}" in text, (line, text[-1500:])

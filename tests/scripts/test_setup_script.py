"""scripts/setup.sh says what it installs and lets a user choose: the torch index (PyPI's wheel is the
CUDA build on Linux x86_64), Chromium only when asked, a line per step. Run as a dry run
(PARITY_SETUP_DRY_RUN=1: every command printed, nothing installed), so the test reads the real
commands the script would run."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CPU = "https://download.pytorch.org/whl/cpu"


def setup(**env):
    e = {k: v for k, v in os.environ.items() if not k.startswith("PARITY_")}
    e.update({"PARITY_SETUP_DRY_RUN": "1", "PARITY_CHROMIUM": "/nonexistent/chromium", **env})
    r = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], capture_output=True, text=True, env=e)
    assert r.returncode == 0, r.stderr
    cmds = [l[2:] for l in r.stdout.splitlines() if l.startswith("+ ")]
    return cmds, r.stderr.splitlines()


def pip_torch(cmds):
    (line,) = [c for c in cmds if c.endswith(" torch")]
    return line


def test_default_installs_torch_from_the_pip_index_and_says_it_is_the_cuda_build_there():
    cmds, said = setup()
    assert "--index-url" not in pip_torch(cmds) and "-c constraints.txt" in pip_torch(cmds)
    text = "\n".join(said)
    assert "CUDA build" in text and f"PARITY_TORCH_INDEX={CPU}" in text  # what it installs, and how to choose
    steps = [l for l in said if l.startswith("setup: ") and "/3 " in l]
    assert len(steps) == 3  # a line per step: no silent minutes
    assert not any(" -q " in c for c in cmds if "-e " in c or c.endswith(" torch"))  # pip shows its progress


def test_torch_index_applies_to_the_torch_step_only():
    cmds, said = setup(PARITY_TORCH_INDEX=CPU)
    assert f"--index-url {CPU}" in pip_torch(cmds)
    assert not any("--index-url" in c for c in cmds if c != pip_torch(cmds))  # the rest: the usual index
    assert any(CPU in l for l in said)


def test_chromium_is_installed_only_when_asked_and_says_why():
    cmds, said = setup()
    assert not any("apt-get" in c for c in cmds)
    (line,) = [l for l in said if "chromium" in l]
    assert "PARITY_BROWSER=1" in line and "browser test" in line
    if os.geteuid() == 0 and subprocess.run(["bash", "-c", "command -v apt-get"], capture_output=True).returncode == 0:
        cmds, said = setup(PARITY_BROWSER="1")
        assert any("apt-get install" in c and "chromium" in c for c in cmds)
        assert sum("chromium" in l for l in said) == 1  # one line: what and why


def test_ci_asks_for_the_browser_and_the_readme_tells_the_torch_truth():
    """CI ran the browser test before chromium became opt-in: it still asks for it. The README says
    what setup installs, and how to get the CPU wheel."""
    assert "PARITY_BROWSER=1 bash scripts/setup.sh" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert f"PARITY_TORCH_INDEX={CPU}" in readme and "CUDA" in readme and "PARITY_BROWSER=1" in readme

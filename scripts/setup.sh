#!/usr/bin/env bash
# Set up a virtual environment in .venv with parity and everything its tests and example need.
# Idempotent: a second run only checks. Versions are pinned through constraints.txt.
#
# What it installs, and how to choose (README.md, "Two commands"):
#   torch 2.13.0 from your pip index (PyPI by default). On Linux x86_64, PyPI's torch wheel is the CUDA
#   build (several GB with its nvidia-* libraries) even where no GPU is used. For the CPU-only wheel:
#     PARITY_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
#   (passed to pip as --index-url for the torch step only; every other package comes from your index).
#   Chromium, for the HTML report's browser test only, when asked: PARITY_BROWSER=1 (Debian's package,
#   apt-get as root; CI's .ci/run asks for it). Without it, that one test module skips and says so.
#   PARITY_SETUP_DRY_RUN=1 prints every command instead of running it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DRY=${PARITY_SETUP_DRY_RUN:-}
CHROMIUM=${PARITY_CHROMIUM:-/usr/bin/chromium}
step() { echo "setup: $*" >&2; }
run() {
  if [ -n "$DRY" ]; then echo "+ $*"; else "$@"; fi
}
pip_install() { run .venv/bin/python -m pip install --disable-pip-version-check "$@"; }  # not -q: its lines are the progress

if [ ! -x .venv/bin/python ] || [ -n "$DRY" ]; then
  step "creating .venv with $PY"
  run "$PY" -m venv .venv
fi

if [ -x "$CHROMIUM" ]; then
  :
elif [ -n "${PARITY_BROWSER:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  step "installing chromium with apt-get (PARITY_BROWSER=1), for the HTML report's browser test"
  DEBIAN_FRONTEND=noninteractive run apt-get update -q
  DEBIAN_FRONTEND=noninteractive run apt-get install -y -q --no-install-recommends chromium
elif [ -n "${PARITY_BROWSER:-}" ]; then
  step "PARITY_BROWSER=1 but chromium can only be installed here as root with apt-get: install it yourself ($CHROMIUM)"
else
  step "not installing chromium (only the HTML report's browser test needs it; it skips): PARITY_BROWSER=1 installs it"
fi

stamp=.venv/.parity-setup
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -z "$DRY" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  step ".venv is up to date (pyproject.toml and constraints.txt unchanged)"
  exit 0
fi
torch=$(grep -E '^torch==' constraints.txt | head -n1)
step "1/3 upgrading pip"
run .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip || true
# torch first and alone, pinned, so no other requirement can pull a different build
if [ -n "${PARITY_TORCH_INDEX:-}" ]; then
  step "2/3 installing $torch from $PARITY_TORCH_INDEX (PARITY_TORCH_INDEX)"
  pip_install -c constraints.txt --index-url "$PARITY_TORCH_INDEX" torch
else
  step "2/3 installing $torch from your pip index (PyPI by default: on Linux x86_64 the CUDA build, several GB;"
  step "    the CPU-only wheel: PARITY_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/setup.sh)"
  pip_install -c constraints.txt torch
fi
step "3/3 installing parity with its extras (torch, onnx, modelopt, dev), pinned by constraints.txt"
pip_install -c constraints.txt -e '.[torch,onnx,modelopt,dev]'
if [ -z "$DRY" ]; then
  echo "$want" > "$stamp"
  step "done: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__, "CUDA build" if torch.version.cuda else "CPU build")')"
fi

#!/usr/bin/env bash
# Set up a virtual environment in .venv with parity and everything its tests and example need.
# Idempotent: a second run only checks. Versions are pinned through constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.parity-setup
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
# torch first and alone, pinned, so no other requirement can pull a different (CUDA) build
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt torch
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[torch,onnx,dev]'
echo "$want" > "$stamp"

#!/usr/bin/env bash
# Set up a virtual environment in .venv with parity and everything its tests and example need.
# Idempotent: a second run only checks. Versions are pinned through constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Chromium for the HTML report's browser test (tests/plugins/reporters/test_html_browser.py): Debian's
# package, installed once when running as root with apt (CI's fresh machines); skipped when present,
# or with PARITY_NO_BROWSER=1. Playwright drives it; it never downloads a browser of its own.
if [ ! -x /usr/bin/chromium ] && [ -z "${PARITY_NO_BROWSER:-}" ] && [ "$(id -u)" = 0 ] \
   && command -v apt-get >/dev/null; then
  echo "setup: installing chromium (apt-get) for the HTML report's browser test" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null
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

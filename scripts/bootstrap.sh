#!/usr/bin/env bash
# Create .venv and install winnow into it (torch first, pinned to the CPU build the machine
# carries; any other torch request would pull a multi-GB CUDA build). Re-running is cheap:
# a stamp keyed on pyproject.toml skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
stamp=".venv/.winnow-installed-$(sha256sum pyproject.toml | cut -c1-12)${extras:+-$extras}"
if [ ! -f "$stamp" ]; then
  echo "winnow: installing into .venv (first run takes a few minutes)..." >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # This machine's pip config lists index folders that are absent; pip warns once per package.
  quiet() { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }
  .venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | quiet
  .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}" 2>&1 | quiet
  touch "$stamp"
fi

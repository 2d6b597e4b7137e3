#!/usr/bin/env bash
# The README's test command: set up .venv with the test extras if needed, then run pytest.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/scripts/bootstrap.sh" test >&2
cd "$here"
exec .venv/bin/python -m pytest "$@"

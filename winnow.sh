#!/usr/bin/env bash
# The README's main command: set up .venv if needed, then run the `winnow` CLI with your arguments.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/scripts/bootstrap.sh" >&2
exec "$here/.venv/bin/winnow" "$@"

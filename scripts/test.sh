#!/usr/bin/env bash
# Set up, then run every check: lint, format, types, and the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not e2e" for the quick loop.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
VENV=${VENV:-.venv}
"$VENV/bin/ruff" check src tests bench examples
"$VENV/bin/ruff" format --check src tests bench examples
"$VENV/bin/mypy"
exec "$VENV/bin/pytest" -n 2 "$@"

#!/usr/bin/env bash
# Set up everything the project needs on this machine (idempotent).
#   scripts/setup.sh          Python venv with the package (for the demo)
#   scripts/setup.sh --dev    + test tools, and Debian packages the tests use
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

need_python() {
  "$PYTHON" - <<'PY' || { echo "error: Python >= 3.11 is required (found $("$PYTHON" -V 2>&1))" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
}

apt_install() {
  # Install Debian packages when missing (needs root or sudo).
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "error: missing Debian packages: ${missing[*]} (install them as root)" >&2; exit 1
    fi
  fi
  echo "installing Debian packages: ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

need_python
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
if [ "${1:-}" = "--dev" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
  # Headless Chromium for the page tests (Playwright drives Debian's build), and the
  # Redis server the backplane tests start on a free port of their own.
  apt_install chromium redis-server
  # Node.js and the pinned JavaScript SDKs (tests/js) for the JS client tests.
  command -v node >/dev/null 2>&1 || apt_install nodejs npm
  if [ ! -e tests/js/node_modules/.package-lock.json ] \
    || [ tests/js/package-lock.json -nt tests/js/node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error --prefix tests/js
  fi
else
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e .
fi

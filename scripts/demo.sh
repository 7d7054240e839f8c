#!/usr/bin/env bash
# Set up, then run the service and the tutorial's chat app together.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec "${VENV:-.venv}/bin/webpubsub" demo "$@"

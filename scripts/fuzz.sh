#!/usr/bin/env bash
# The long Hypothesis profile ("fuzz", tests/support/fuzz.py) over the fuzzed suites, in one
# process at low priority; prints the inputs each suite ran and the total (docs/testing.md).
# Extra arguments go to pytest.  Needs the dev venv (scripts/setup.sh --dev).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/pytest" ] || { echo "error: no $VENV/bin/pytest: run scripts/setup.sh --dev" >&2; exit 1; }
SUITES=(
  tests/protocol/test_json_protocol.py  # the JSON subprotocol frame codec
  tests/protocol/test_odata.py          # OData filters
  tests/protocol/test_tokens.py         # client and REST tokens
  tests/protocol/test_cloudevents.py    # CloudEvents responses
  tests/server/test_rest_routing.py     # REST routing, and the REST boundary over HTTP
)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
started=$(date +%s)
status=0
HYPOTHESIS_PROFILE=fuzz nice -n 10 "$VENV/bin/pytest" -p no:cacheprovider -q --timeout=3600 \
  --hypothesis-show-statistics "${SUITES[@]}" "$@" | tee "$log" || status=$?
echo
echo "inputs run (passing test cases, every phase), per suite:"
awk '/^tests\/.*::.*:$/ { suite = $0; sub(/::.*/, "", suite) }
     / passing, .* failing, / { n[suite] += $2; total += $2 }
     END { for (s in n) printf "%9d  %s\n", n[s], s; printf "%9d  total\n", total }' "$log" | sort -k2
echo "wall time: $(( $(date +%s) - started )) s"
exit "$status"

#!/usr/bin/env bash
# Instructions per operation of the hot paths (benches/instructions.rs), counted by callgrind:
# each case runs twice, N and N + 10,000 iterations, and the difference / 10,000 is printed, so
# process start-up and set-up cancel out. Counts do not depend on machine load; keep them in
# docs/benchmarks.md and compare before/after a change.
#
# Usage: bash scripts/callgrind.sh [CASE...]      (default: every case)
# Needs: valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; }
BIN=$(cargo bench --bench instructions --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("target",{}).get("name")=="instructions" and m.get("executable"):
        print(m["executable"])' | tail -1)
[ -x "$BIN" ] || { echo "could not build benches/instructions.rs" >&2; exit 1; }
if [ "$#" -eq 0 ]; then
  set -- $("$BIN" | awk '{print $1}')
fi
BASE=1000; EXTRA=10000
count() { # case iterations -> Ir
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" "$1" "$2" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
echo "| hot path | instructions / op |"
echo "|---|---|"
for c in "$@"; do
  a=$(count "$c" $BASE); b=$(count "$c" $((BASE + EXTRA)))
  echo "| \`$c\` | $(( (b - a) / EXTRA )) |"
done

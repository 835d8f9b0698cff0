#!/usr/bin/env bash
# The cost of measurement: simgate with its per-destination latency histograms and per-SIM usage
# metering on (the defaults) against simgate with both off (`[metrics] histograms = false`,
# `[usage] enabled = false`), HTTP and MQTT. A thin wrapper around `simgate-load compare --only
# <row>,<row>-unmeasured --rounds N --cpu-csv` (see loadtest/README.md): each round runs both
# rows back to back, pinned the same way, and this script prints, per pair, the proxy CPU µs per
# message of each round, the on/off ratio of each round and the median of those ratios.
#
# Usage: bash loadtest/compare-measurement.sh [rounds=5] [duration_s=15] [extra compare args...]
#
# Pairs (scenario: measured row vs unmeasured row):
#   http-1k-keepalive:   simgate           vs simgate-unmeasured
#   mqtt-qos0-aggregate: simgate-aggregate vs simgate-aggregate-unmeasured (usage only: QoS 0
#                        has no per-message latency to record)
#   mqtt-qos1-session:   simgate-session   vs simgate-session-unmeasured
#
# Environment: PROFILE=release (default) or debug — which build of simgate and simgate-load to
# use (release for figures; debug only to check that the script runs). CARGO_TARGET_DIR is
# honoured. PAIRS="http aggregate session" picks pairs. Only simgate runs: no peer packages.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
DUR=${2:-15}
shift $(( $# > 2 ? 2 : $# ))
PROFILE=${PROFILE:-release}
PAIRS=${PAIRS:-"http aggregate session"}
TARGET=${CARGO_TARGET_DIR:-target}
case "$PROFILE" in
  release) cargo build --release -q -p simgate -p simgate-load ;;
  debug) cargo build -q -p simgate -p simgate-load ;;
  *) echo "PROFILE must be release or debug, not $PROFILE" >&2; exit 2 ;;
esac
LOAD="$TARGET/$PROFILE/simgate-load"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
WORK=$(mktemp -d -t simgate-measurement-XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# ratio_table CSV MEASURED UNMEASURED: per round, both CPU µs/msg and on/off; then the median.
ratio_table() {
  awk -F, -v on="$2" -v off="$3" '
    NR == 1 { next }
    $2 == on  && $3 != "" { a[$1] = $3 }
    $2 == off && $3 != "" { b[$1] = $3 }
    END {
      printf "| round | %s µs/msg | %s µs/msg | on/off |\n|---|---|---|---|\n", on, off
      n = 0
      for (r = 1; r in a || r in b; r++) {
        if ((r in a) && (r in b) && b[r] > 0) {
          q = a[r] / b[r]; ratios[++n] = q
          printf "| %d | %.2f | %.2f | %.3f |\n", r, a[r], b[r], q
        } else {
          printf "| %d | %s | %s | - |\n", r, (r in a) ? a[r] : "-", (r in b) ? b[r] : "-"
        }
      }
      if (n == 0) { print "\nno round measured both rows"; exit 1 }
      # insertion sort, then the median (mean of the middle two for an even count)
      for (i = 2; i <= n; i++) { v = ratios[i]; j = i - 1
        while (j >= 1 && ratios[j] > v) { ratios[j + 1] = ratios[j]; j-- } ratios[j + 1] = v }
      m = (n % 2) ? ratios[(n + 1) / 2] : (ratios[n / 2] + ratios[n / 2 + 1]) / 2
      printf "\nCPU per message, measurement on / off (median of %d rounds): %.3f (%+.1f %%)\n", n, m, (m - 1) * 100
    }' "$1"
}

status=0
for pair in $PAIRS; do
  case "$pair" in
    http) scenario=http-1k-keepalive; on="simgate" ;;
    aggregate) scenario=mqtt-qos0-aggregate; on="simgate aggregate" ;;
    session) scenario=mqtt-qos1-session; on="simgate session" ;;
    *) echo "unknown pair $pair (http, aggregate, session)" >&2; exit 2 ;;
  esac
  off="$on unmeasured"
  slug_on=${on// /-}
  csv="$WORK/$pair.csv"
  echo "## $scenario: $on (measurement on) vs $off"
  "$LOAD" compare "loadtest/scenarios/$scenario.toml" --duration "$DUR" --rounds "$ROUNDS" \
    --only "$slug_on,$slug_on-unmeasured" --cpu-csv "$csv" --work-dir "$WORK/$pair" "$@" \
    > "$WORK/$pair.out" || { cat "$WORK/$pair.out"; status=1; continue; }
  echo
  ratio_table "$csv" "$on" "$off" || status=1
  echo
done
exit $status

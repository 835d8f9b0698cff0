#!/usr/bin/env bash
# MQTT -> MQTTS peer comparison: a thin wrapper around `simgate-load compare` (see
# loadtest/README.md), run on the QoS 0 aggregate and the QoS 1 session scenarios: direct,
# simgate aggregate, simgate session, mosquitto's bridge and stunnel in turn, pinned the same
# way. The version of this script that made the MQTT table in docs/benchmarks.md (a TLS
# mosquitto as the cloud) is in git history (commit 992bace).
#
# Usage: bash loadtest/compare-mqtt.sh [duration_s=15] [extra compare args...]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-15}
shift $(( $# > 0 ? 1 : 0 ))
bash loadtest/install-peers.sh
cargo build --release -q -p simgate -p simgate-load
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
for s in mqtt-qos0-aggregate mqtt-qos1-session; do
  target/release/simgate-load compare "loadtest/scenarios/$s.toml" --duration "$DUR" "$@"
  echo
done

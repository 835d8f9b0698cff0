#!/usr/bin/env bash
# HTTP -> HTTPS peer comparison: a thin wrapper around `simgate-load compare` (see
# loadtest/README.md), which starts direct, simgate, nginx, haproxy and stunnel in turn, pinned
# the same way, and prints the markdown table. The wrk-based version of this script that made
# the first table in docs/benchmarks.md is in git history (commit 992bace).
#
# Usage: bash loadtest/compare-http.sh [duration_s=15] [scenario=loadtest/scenarios/http-1k-keepalive.toml] [extra compare args...]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-15}
SCENARIO=${2:-loadtest/scenarios/http-1k-keepalive.toml}
shift $(( $# > 2 ? 2 : $# ))
bash loadtest/install-peers.sh
cargo build --release -q -p simgate -p simgate-load
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
exec target/release/simgate-load compare "$SCENARIO" --duration "$DUR" "$@"

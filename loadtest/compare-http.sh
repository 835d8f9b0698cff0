#!/usr/bin/env bash
# HTTP -> HTTPS peer comparison in one run: wrk drives 1 KiB keep-alive POSTs
#   (a) directly at the HTTPS sink (baseline: wrk does TLS itself),
#   (b) through simgate (1 shard),
#   (c) through nginx (1 worker, proxy_pass https with upstream keepalive, verify on),
# then measures RSS of simgate and nginx holding 10,000 idle keep-alive device connections.
#
# CPU: the proxy under test is pinned to CPU 0; wrk and the sink share CPU 1. Both proxies get
# exactly one core ("equal CPU"). Prints a markdown table for docs/benchmarks.md.
#
# Usage: bash loadtest/compare-http.sh [duration_seconds=15] [connections=64]
# Needs: wrk, nginx (apt-get install wrk nginx-light); installs them if missing and root.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-15}
CONNS=${2:-64}
WORK=$(mktemp -d /tmp/simgate-compare.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

for tool in wrk nginx; do
  if ! command -v "$tool" >/dev/null && ! [ -x /usr/sbin/nginx ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light
  fi
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release -q -p simgate -p simgate-load
BIN=target/release

$BIN/simgate-load pki --dir "$WORK/pki" >/dev/null
SINK_PORT=19443; SIMGATE_PORT=18081; NGINX_PORT=18082
taskset -c 1 $BIN/simgate-load sink --bind 127.0.0.1:$SINK_PORT --pki-dir "$WORK/pki" --workers 1 > "$WORK/sink.out" &
PIDS+=($!)
until grep -q listening "$WORK/sink.out" 2>/dev/null; do sleep 0.1; done

cat > "$WORK/simgate.toml" <<TOML
[gateway]
shards = 1
pin_shards = false
admin = "127.0.0.1:19180"
[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:$SIMGATE_PORT"
[[destination]]
name = "sink"
adapter = "https"
endpoint = "127.0.0.1:$SINK_PORT"
server_name = "localhost"
ca = "$WORK/pki/ca.pem"
[destination.pool]
warm = 8
max_idle = 256
[[group]]
name = "default"
routes = [ { listener = "http", path = "/", destination = "sink" } ]
TOML
taskset -c 0 $BIN/simgate run --config "$WORK/simgate.toml" > "$WORK/simgate.out" 2> "$WORK/simgate.err" &
SIMGATE_PID=$!; PIDS+=($SIMGATE_PID)
until grep -q ready "$WORK/simgate.out" 2>/dev/null; do sleep 0.1; done

mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<NGX
worker_processes 1;
master_process off;   # one process: its CPU and RSS are the proxy's
daemon off;
user root;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 30000; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  upstream sink { server 127.0.0.1:$SINK_PORT; keepalive 256; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    location / {
      proxy_pass https://sink;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host localhost;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_ssl_server_name on;
      proxy_ssl_name localhost;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $WORK/pki/ca.pem;
      proxy_ssl_session_reuse on;
    }
  }
}
NGX
taskset -c 0 "$NGINX" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" &
NGINX_PID=$!; PIDS+=($NGINX_PID)
until (exec 3<>/dev/tcp/127.0.0.1/$NGINX_PORT) 2>/dev/null; do sleep 0.1; done

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
run_wrk() { # name url pid-or-empty
  # warm-up (not measured), then the measured run with the proxy's CPU time read around it
  taskset -c 1 wrk -t1 -c"$CONNS" -d3s -s loadtest/post-1k.lua "$2" >/dev/null 2>&1 || true
  local t0=0 t1=0
  [ -n "$3" ] && t0=$(cpu_ticks "$3")
  taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -s loadtest/post-1k.lua "$2" > "$WORK/wrk-$1.txt" 2>&1
  [ -n "$3" ] && t1=$(cpu_ticks "$3")
  local rps p50 p99 errs reqs cpu us_per_req
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk-$1.txt")
  reqs=$(awk '/requests in/ {print $1}' "$WORK/wrk-$1.txt")
  p50=$(awk '$1=="50%" {print $2}' "$WORK/wrk-$1.txt")
  p99=$(awk '$1=="99%" {print $2}' "$WORK/wrk-$1.txt")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' "$WORK/wrk-$1.txt" | tr '\n' ' ')
  if [ -n "$3" ]; then
    cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$HZ" 'BEGIN{printf "%.1f", (b-a)/hz}')
    us_per_req=$(awk -v a="$t0" -v b="$t1" -v hz="$HZ" -v n="$reqs" 'BEGIN{printf "%.1f", (b-a)/hz*1e6/n}')
  else
    cpu="-"; us_per_req="-"
  fi
  echo "$1|$rps|$p50|$p99|${errs:-none}|$cpu|$us_per_req"
}
cpu_ticks() { awk '{print $14+$15}' /proc/$1/stat; }
HZ=$(getconf CLK_TCK)

echo "== wrk: $CONNS connections, ${DUR}s, 1 KiB POST, keep-alive" >&2
direct=$(run_wrk direct "https://127.0.0.1:$SINK_PORT/telemetry" "")
simgate=$(run_wrk simgate "http://127.0.0.1:$SIMGATE_PORT/telemetry" $SIMGATE_PID)
nginx=$(run_wrk nginx "http://127.0.0.1:$NGINX_PORT/telemetry" $NGINX_PID)

rss_kib() { awk '/VmRSS/ {print $2}' /proc/$1/status; }
idle_rss() { # pid port
  local before after
  before=$(rss_kib "$1")
  $BIN/simgate-load idle --target "127.0.0.1:$2" --connections 10000 --hold 5 --warm-request > "$WORK/idle-$2.out" &
  local ip=$!
  until grep -q '^open' "$WORK/idle-$2.out" 2>/dev/null; do sleep 0.2; done
  sleep 2
  after=$(rss_kib "$1")
  wait $ip || true
  echo "$before|$after|$(( (after - before) * 1024 / 10000 ))"
}
s_idle=$(idle_rss $SIMGATE_PID $SIMGATE_PORT)
n_idle=$(idle_rss $NGINX_PID $NGINX_PORT)

rps_of() { echo "$1" | cut -d'|' -f2; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo
echo "| path | requests/s | vs nginx | p50 | p99 | proxy CPU s | proxy CPU µs/request | errors |"
echo "|---|---|---|---|---|---|---|---|"
for row in "$direct" "$simgate" "$nginx"; do
  IFS='|' read -r name rps p50 p99 errs cpu uspr <<< "$row"
  echo "| $name | $rps | $(ratio "$rps" "$(rps_of "$nginx")") | $p50 | $p99 | $cpu | $uspr | $errs |"
done
echo
echo "| 10,000 idle keep-alive device connections | RSS before (KiB) | RSS after (KiB) | bytes per connection |"
echo "|---|---|---|---|"
echo "| simgate | $(echo "$s_idle" | tr '|' ' ' | awk '{print $1" | "$2" | "$3}') |"
echo "| nginx | $(echo "$n_idle" | tr '|' ' ' | awk '{print $1" | "$2" | "$3}') |"

#!/usr/bin/env bash
# MQTT -> MQTTS peer comparison in one run. simgate-load devices (plaintext MQTT 3.1.1, 100 B
# payloads, open-loop constant rate) publish through each system under test to a TLS mosquitto
# standing in for the cloud:
#   simgate aggregate mode, simgate session mode, mosquitto's own bridge (a local mosquitto
#   bridging `devices/#` to the TLS broker), and "direct" (devices to the cloud broker's
#   plaintext listener, no gateway: the floor for latency).
# CPU: the system under test runs alone on CPU 0; the cloud broker and the load generator share
# CPU 1. At equal offered load, "CPU µs/msg" of the system under test is the per-core cost.
#
# Usage: bash loadtest/compare-mqtt.sh [duration_s=15] [qos0_rate=20000] [qos1_rate=5000] [devices=200]
# Needs: mosquitto (apt-get install mosquitto); installs it if missing and root.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-15}; R0=${2:-20000}; R1=${3:-5000}; DEV=${4:-200}
WORK=$(mktemp -d /tmp/simgate-mqtt-compare.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
[ -x /usr/sbin/mosquitto ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto; }

cargo build --release -q -p simgate -p simgate-load
BIN=target/release
$BIN/simgate-load pki --dir "$WORK/pki" >/dev/null
CLOUD_TLS=18883; CLOUD_PLAIN=18884; AGG=11883; SESS=11884; BRIDGE=11885

cat > "$WORK/cloud.conf" <<CONF
per_listener_settings true
user root
log_dest none
max_queued_messages 100000
listener $CLOUD_TLS 127.0.0.1
cafile $WORK/pki/ca.pem
certfile $WORK/pki/sink.pem
keyfile $WORK/pki/sink.key
allow_anonymous true
listener $CLOUD_PLAIN 127.0.0.1
allow_anonymous true
CONF
taskset -c 1 /usr/sbin/mosquitto -c "$WORK/cloud.conf" & PIDS+=($!)
until (exec 3<>/dev/tcp/127.0.0.1/$CLOUD_PLAIN) 2>/dev/null; do sleep 0.1; done

cat > "$WORK/simgate.toml" <<TOML
[gateway]
shards = 1
pin_shards = false
admin = "off"
[[listener]]
name = "mqtt-agg"
protocol = "mqtt"
bind = "127.0.0.1:$AGG"
[[listener]]
name = "mqtt-sess"
protocol = "mqtt"
bind = "127.0.0.1:$SESS"
[[destination]]
name = "cloud-agg"
adapter = "mqtts"
endpoint = "127.0.0.1:$CLOUD_TLS"
server_name = "localhost"
ca = "$WORK/pki/ca.pem"
[destination.mqtt]
mode = "aggregate"
topic = "{topic}"
[[destination]]
name = "cloud-sess"
adapter = "mqtts"
endpoint = "127.0.0.1:$CLOUD_TLS"
server_name = "localhost"
ca = "$WORK/pki/ca.pem"
[destination.pool]
warm = 16
max_idle = 256
[destination.mqtt]
mode = "session"
[[group]]
name = "default"
routes = [ { listener = "mqtt-agg", destination = "cloud-agg" },
           { listener = "mqtt-sess", destination = "cloud-sess" } ]
TOML
taskset -c 0 $BIN/simgate run --config "$WORK/simgate.toml" > "$WORK/simgate.out" 2> "$WORK/simgate.err" &
SIMGATE=$!; PIDS+=($SIMGATE)
until grep -q ready "$WORK/simgate.out" 2>/dev/null; do sleep 0.1; done

cat > "$WORK/bridge.conf" <<CONF
user root
log_dest none
max_queued_messages 100000
listener $BRIDGE 127.0.0.1
allow_anonymous true
connection cloud
address 127.0.0.1:$CLOUD_TLS
bridge_cafile $WORK/pki/ca.pem
bridge_insecure false
bridge_protocol_version mqttv311
cleansession true
topic devices/# out 1
CONF
taskset -c 0 /usr/sbin/mosquitto -c "$WORK/bridge.conf" & BRIDGE_PID=$!; PIDS+=($BRIDGE_PID)
until (exec 3<>/dev/tcp/127.0.0.1/$BRIDGE) 2>/dev/null; do sleep 0.1; done
CLOUD_PID=$(pgrep -f "mosquitto -c $WORK/cloud.conf")

scenario() { # qos rate
  cat <<S
name = "compare-qos$1"
description = "compare"
target = "127.0.0.1:1"
duration_s = $DUR
[fleet]
devices = $DEV
protocol = "mqtt"
ramp_per_s = 2000
[traffic]
rate_per_s = $2
arrival = "constant"
body_bytes = 100
timeout_ms = 5000
[mqtt]
version = "3.1.1"
qos = $1
topic = "devices/{device}/telemetry"
keep_alive_s = 60
S
}
scenario 0 "$R0" > "$WORK/qos0.toml"
scenario 1 "$R1" > "$WORK/qos1.toml"

row() { # label qos port pid
  local json="$WORK/$1-qos$2.json"
  taskset -c 1 $BIN/simgate-load run "$WORK/qos$2.toml" --target "127.0.0.1:$3" --pid "$4" --json "$json" --quiet > "$WORK/$1-qos$2.txt" 2>&1 || true
  python3 - "$json" "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
c, l, g = d["counts"], d["latency_us"], d["gateway"]
answered = max(c["answered"], 1)
us = g["cpu_seconds"] * 1e6 / answered
errs = c["failed"] + sum(c["errors"].values())
print(f"| {sys.argv[2]} | {sys.argv[3]} | {d['target_rate_per_s']:.0f} | {d['achieved_rate_per_s']:.0f} | {l['p50']/1000:.2f} ms | {l['p99']/1000:.2f} ms | {g['cpu_seconds']:.1f} | {us:.1f} | {errs} |")
PY
}
echo "| path | QoS | offered msg/s | achieved msg/s | p50 | p99 | CPU s (SUT) | CPU µs/msg (SUT) | errors |"
echo "|---|---|---|---|---|---|---|---|---|"
for q in 0 1; do
  row "direct (cloud broker, plaintext)" $q $CLOUD_PLAIN "$CLOUD_PID"
  row "simgate aggregate" $q $AGG $SIMGATE
  row "simgate session" $q $SESS $SIMGATE
  row "mosquitto bridge" $q $BRIDGE $BRIDGE_PID
done
echo
echo "QoS 0 latency is until the PUBLISH is written (no acknowledgement); QoS 1 latency is to the PUBACK,"
echo "which through simgate means after the cloud broker's PUBACK; through the mosquitto bridge the local"
echo "broker acknowledges on receipt. For 'direct' the CPU column is the cloud broker's."

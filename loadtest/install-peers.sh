#!/usr/bin/env bash
# Install the Debian packages of the peers `simgate-load compare` runs against (nginx, haproxy,
# mosquitto, stunnel, taskset) when any is missing. Called by compare-http.sh and compare-mqtt.sh;
# safe to run again (installs nothing when all are present).
#
# Needs root for apt-get; without it, prints the command to run and fails, so a comparison never
# starts with a row silently missing.
set -euo pipefail
# executable:package pairs, as `simgate-load compare` looks them up (PATH plus the sbin dirs).
peers=(nginx:nginx-light haproxy:haproxy mosquitto:mosquitto stunnel4:stunnel4 taskset:util-linux)
missing=()
for pair in "${peers[@]}"; do
  exe=${pair%%:*}
  pkg=${pair#*:}
  if ! PATH="$PATH:/usr/sbin:/sbin:/usr/local/sbin" command -v "$exe" >/dev/null 2>&1; then
    missing+=("$pkg")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing comparison peers: ${missing[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then
  echo "not root: run  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
# Debian starts some of these as services on install; the comparison starts its own instances.
for svc in nginx haproxy mosquitto stunnel4; do
  systemctl stop "$svc" 2>/dev/null || service "$svc" stop 2>/dev/null || true
done

#!/usr/bin/env bash
# The full test suite, as README's "run all tests" command and CI run it.
# Installs what the tests need on a fresh Debian machine (needs root or sudo), then runs:
# format check, clippy (warnings are errors), unit + integration tests (which start real servers:
# the built-in HTTPS sink, curl as a device, nginx as an upstream, mosquitto as an MQTTS broker
# with mosquitto_pub/sub and Eclipse Paho (paho-mqtt 2.x for Python 3) as devices, promtool and
# a real Prometheus scraping /metrics, FreeRADIUS's radclient as a RADIUS accounting client), the
# live view of `simgate top` under tmux, the status page in headless Chromium, the self-tests of the cloud contract sink (tests/python/cloud_sink.py) and of the MQTT cloud contract
# front (tests/python/mqtt_cloud_front.py, in front of a real mosquitto), and the fuzz corpus replay.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# Debian packages the integration tests use. Installed only when missing.
need_pkgs=()
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need_pkgs+=(nginx-light)
[ -x /usr/sbin/mosquitto ] || need_pkgs+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_pkgs+=(mosquitto-clients)
command -v promtool >/dev/null 2>&1 || need_pkgs+=(prometheus)
# radclient (FreeRADIUS) as the real RADIUS accounting client of tests/radius_radclient.rs; the
# package brings FreeRADIUS's dictionaries (3GPP attributes included).
command -v radclient >/dev/null 2>&1 || need_pkgs+=(freeradius-utils)
# tmux, the terminal `simgate top`'s live view is driven in by tests/top.rs (capture-pane).
command -v tmux >/dev/null 2>&1 || need_pkgs+=(tmux)
# Debian's headless Chromium, which loads the status page (`GET /`) in tests/status_page.rs.
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
# Python 3 with pip, for the paho-mqtt devices (tests/mqtt_paho.rs). A python3 already on PATH
# (pyenv, a venv) is used as it is, as long as it has pip.
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3 python3-pip)
if command -v python3 >/dev/null 2>&1 && ! python3 -m pip --version >/dev/null 2>&1; then
  need_pkgs+=(python3-pip)
fi
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "== installing ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi

# Python packages from PyPI, each group only when missing. Debian's own python3 is "externally
# managed" (PEP 668): pip refuses there unless told --break-system-packages, so that flag is added
# only when pip asks for it.
pip_install() {
  export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
  if ! pip_out=$(python3 -m pip install -q --upgrade "$@" 2>&1); then
    if grep -q externally-managed-environment <<<"$pip_out"; then
      python3 -m pip install -q --upgrade --break-system-packages "$@"
    else
      echo "$pip_out" >&2
      exit 1
    fi
  fi
}


# The vendors' own libraries, with which tests/python/cloud_sink.py (the HTTPS contract sink the
# cloud adapter tests start) recomputes each cloud's auth: botocore (SigV4), azure-iot-device and
# azure-eventhub (SAS tokens), google-auth with cryptography (service-account JWT grant; also
# tests/google_jwt_python.rs), and
# requests (google-auth's transport in the sink's self-test).
if ! python3 -c 'import botocore, azure.iot.device, azure.eventhub, google.auth, cryptography, requests' \
    >/dev/null 2>&1; then
  echo "== installing botocore azure-iot-device azure-eventhub google-auth cryptography requests (pip)"
  pip_install botocore azure-iot-device azure-eventhub google-auth cryptography requests
fi

# paho-mqtt 2.x (the tests use its VERSION2 callback API). After the vendors' libraries on purpose:
# azure-iot-device pins paho-mqtt<2 and pip downgrades it when installing them; the sink uses only
# azure-iot-device's SAS helpers, which import fine beside paho-mqtt 2.
if ! python3 -c 'import paho.mqtt.client as m; m.CallbackAPIVersion.VERSION2' >/dev/null 2>&1; then
  echo "== installing paho-mqtt (pip)"
  pip_install 'paho-mqtt>=2'
fi

# HdrHistogram_py (the HdrHistogram project's Python port), the independent reader of simgate's
# interval logs in tests/histogram_interval_log.rs (tests/python/read_interval_log.py).
if ! python3 -c 'import hdrh.log' >/dev/null 2>&1; then
  echo "== installing hdrhistogram (pip)"
  pip_install hdrhistogram
fi

# Builds are not incremental here (a one-shot run gains nothing from it and its cache doubles the
# target dir); free disk is printed so a "No space left on device" failure explains itself.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "== free disk where target/ goes: $(df -h --output=avail . | tail -1 | tr -d ' ')"

echo "== cloud contract sink self-test (tests/python/test_cloud_sink.py)"
if ! sink_out=$(python3 tests/python/test_cloud_sink.py 2>&1); then
  echo "$sink_out" >&2
  exit 1
fi
tail -n 1 <<<"$sink_out"

echo "== MQTT cloud contract front self-test (tests/python/test_mqtt_cloud_front.py)"
if ! front_out=$(python3 tests/python/test_mqtt_cloud_front.py 2>&1); then
  echo "$front_out" >&2
  exit 1
fi
tail -n 1 <<<"$front_out"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test (unit, integration, fuzz corpus replay)"
cargo test --workspace --all-targets

echo "== all tests passed"

#!/usr/bin/env bash
# The full test suite, as README's "run all tests" command and CI run it.
# Installs what the tests need on a fresh Debian machine (needs root or sudo), then runs:
# format check, clippy (warnings are errors), unit + integration tests (which start real servers:
# the built-in HTTPS sink, curl as a device, nginx as an upstream, mosquitto as an MQTTS broker
# with mosquitto_pub/sub as devices, promtool and a real Prometheus scraping /metrics), and the
# fuzz corpus replay.
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
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "== installing ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test (unit, integration, fuzz corpus replay)"
cargo test --workspace --all-targets

echo "== all tests passed"

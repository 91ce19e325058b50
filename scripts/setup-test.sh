#!/usr/bin/env bash
# What only the tests need, on top of scripts/setup.sh (which scripts/demo.sh uses too): Prometheus,
# the chart suite's Python packages, npm for the dashboard type check. Idempotent. Sourced by
# scripts/test.sh after scripts/setup.sh.
set -euo pipefail

log() { printf '[setup-test] %s\n' "$*" >&2; }

# Prometheus (charts/tests/test_prometheus.py and tests/tests/local_prometheus.rs scrape end-to-end
# runs with it; promtool checks and unit-tests the alert rules) and the chart suite's Python packages.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  log "installing prometheus (prometheus and promtool)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq prometheus >/dev/null
fi
python3 -m pip install -q -r charts/tests/requirements.txt >/dev/null 2>&1 || python3 -m pip install -q -r charts/tests/requirements.txt

# The Grafana dashboard type check (charts/tests/grafana: @grafana/schema + TypeScript, pinned by
# its package-lock.json).
if ! command -v npm >/dev/null 2>&1; then
  log "installing nodejs and npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -d charts/tests/grafana/node_modules/@grafana/schema ] || [ ! -d charts/tests/grafana/node_modules/typescript ]; then
  log "installing the dashboard schema check (npm ci)"
  npm ci --prefix charts/tests/grafana --no-audit --no-fund --loglevel=error >/dev/null
fi

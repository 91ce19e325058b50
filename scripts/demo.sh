#!/usr/bin/env bash
# Runs Warren locally and applies examples/: watch the WorkerPool and the Jobs run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --workspace --bins --quiet
STATE=.warren-local
rm -rf "$STATE"
./target/debug/warren local up --state-dir "$STATE" &
WARREN_PID=$!
trap 'kill $WARREN_PID 2>/dev/null; wait $WARREN_PID 2>/dev/null' EXIT
for _ in $(seq 1 60); do [ -f "$STATE/kubeconfig" ] && break; sleep 0.5; done
export KUBECONFIG="$PWD/$STATE/kubeconfig"
sleep 1
kubectl apply -f examples/
echo "--- watching the pool scale up and back to zero, and the Jobs (Ctrl-C to stop)"
kubectl get wp -w &
WATCH_PID=$!
trap 'kill $WATCH_PID $WARREN_PID 2>/dev/null; wait $WARREN_PID 2>/dev/null' EXIT
kubectl get wjob -w

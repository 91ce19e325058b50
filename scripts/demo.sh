#!/usr/bin/env bash
# Runs Warren locally and applies examples/: a live view of the pool scaling and the Jobs and
# Workflows running, then a summary. Logs go to .warren-local/logs/, not to the terminal.
#   scripts/demo.sh [--prometheus] [--exit]
#     --prometheus  also start a Prometheus (when installed) with Warren's alert rules
#     --exit        stop Warren after the summary (default: keep it running until Ctrl-C)
set -euo pipefail
cd "$(dirname "$0")/.."
UP_ARGS=()
EXIT_AFTER=0
for arg in "$@"; do
  case "$arg" in
    --prometheus) UP_ARGS+=(--prometheus) ;;
    --exit) EXIT_AFTER=1 ;;
    *) echo "usage: scripts/demo.sh [--prometheus] [--exit]" >&2; exit 2 ;;
  esac
done
# Only what running needs: RabbitMQ and kubectl (the tests' tools: scripts/setup-test.sh).
source scripts/setup.sh
echo "[demo] building warren and warren-worker" >&2
cargo build --quiet -p warren-cli -p warren-worker
STATE=.warren-local
LOGS="$STATE/logs"
WARREN=./target/debug/warren
rm -rf "$STATE"
mkdir -p "$LOGS"
# The operator and the runner run inside `warren local up`: its output is their log. Each
# worker's output: $LOGS/<namespace>_<pod>.log (the runner writes it).
"$WARREN" local up --state-dir "$STATE" "${UP_ARGS[@]}" >"$LOGS/warren.log" 2>&1 &
WARREN_PID=$!
WATCH_PIDS=()
cleanup() {
  if [ "${#WATCH_PIDS[@]}" -gt 0 ]; then kill "${WATCH_PIDS[@]}" 2>/dev/null || true; fi
  kill -INT "$WARREN_PID" 2>/dev/null || true
  wait "$WARREN_PID" 2>/dev/null || true
}
trap cleanup EXIT
export KUBECONFIG="$PWD/$STATE/kubeconfig"

died() { echo "[demo] warren local up stopped; the end of $LOGS/warren.log:" >&2; tail -n 20 "$LOGS/warren.log" >&2; exit 1; }
for _ in $(seq 1 120); do
  kill -0 "$WARREN_PID" 2>/dev/null || died
  if [ -f "$KUBECONFIG" ] && kubectl get wjob >/dev/null 2>&1; then break; fi
  sleep 0.5
done
kubectl get wjob >/dev/null 2>&1 || { echo "[demo] the local API server did not come up; see $LOGS/warren.log" >&2; exit 1; }
kubectl apply -f examples/

# The Jobs of examples/02-jobs.yaml (not the Workflows' steps, nor the Schedule's runs).
TOP_JOBS='!warren.dev/workflow,!warren.dev/schedule'
# Done: every Job finished, every Workflow finished or waiting for an approval with nothing running.
all_done() {
  local jobs flows
  jobs="$(kubectl get wjob -l "$TOP_JOBS" -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}')" || return 1
  [ -n "$jobs" ] || return 1
  while read -r phase; do
    case "$phase" in Succeeded|Failed) ;; *) return 1 ;; esac
  done <<<"$jobs"
  flows="$(kubectl get wf -o jsonpath='{range .items[*]}{.status.phase} {.status.steps.*.phase}{"\n"}{end}')" || return 1
  while read -r phase steps; do
    case "$phase" in
      Succeeded|Failed) ;;
      *) [[ " $steps " == *" Waiting "* && " $steps " != *" Running "* ]] || return 1 ;;
    esac
  done <<<"$flows"
}

DEADLINE=$((SECONDS + 300))
if "$WARREN" top --help >/dev/null 2>&1; then
  # `warren top`, one frame every 2 s, until the examples are done.
  last=""
  while kill -0 "$WARREN_PID" 2>/dev/null && ! all_done && [ "$SECONDS" -lt "$DEADLINE" ]; do
    frame="$("$WARREN" top -A --once 2>&1 || true)"
    if [ -t 1 ]; then
      printf '\033[H\033[2J%s\n\n(warren top -A --once, every 2 s; the demo ends when the examples are done)\n' "$frame"
    elif [ "$frame" != "$last" ]; then
      printf '%s\n\n' "$frame"
    fi
    last="$frame"
    sleep 2
  done
else
  echo "--- watching the pool scale up and back to zero, and the Jobs"
  kubectl get wp -w &
  WATCH_PIDS+=($!)
  kubectl get wjob -l "$TOP_JOBS" -w &
  WATCH_PIDS+=($!)
  while kill -0 "$WARREN_PID" 2>/dev/null && ! all_done && [ "$SECONDS" -lt "$DEADLINE" ]; do sleep 1; done
  kill "${WATCH_PIDS[@]}" 2>/dev/null || true
  wait "${WATCH_PIDS[@]}" 2>/dev/null || true
  WATCH_PIDS=()
fi
kill -0 "$WARREN_PID" 2>/dev/null || died

echo
if all_done; then echo "=== Done"; else echo "=== Not done after 5 minutes (see the logs)"; fi
echo
kubectl get wjob -l "$TOP_JOBS"
echo
kubectl get wf
waiting="$(kubectl get wf -o jsonpath='{range .items[*]}{.metadata.name} {.status.steps.review.phase}{"\n"}{end}' | awk '$2 == "Waiting" {print $1}')"
for wf in $waiting; do echo "  $wf waits for its review approval"; done
PROMETHEUS_URL="$(sed -n 's/^Prometheus: *//p' "$LOGS/warren.log")"
cat <<EOF

Logs:       $LOGS/  (warren.log: operator and runner; <namespace>_<pod>.log: each worker)
kubeconfig: $KUBECONFIG
${PROMETHEUS_URL:+Prometheus: $PROMETHEUS_URL
}
Try next, in another shell:
  export KUBECONFIG=$KUBECONFIG
  $WARREN top -A                               # live view (q quits)
  kubectl get wjob nightly-thumbnails -o yaml                  # counts, indexes, conditions
  kubectl annotate wf order-1002 warren.dev/approve-review=true  # approve the review
  $WARREN wait wf/order-1002                   # ... and wait for it to finish
  tail -f $LOGS/warren.log
EOF
if [ "$EXIT_AFTER" = 1 ]; then exit 0; fi
echo
echo "Warren keeps running (state in memory). Ctrl-C stops it."
wait "$WARREN_PID" || true

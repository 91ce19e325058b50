"""Every value set the chart tests render applies with `kubectl apply --server-side` to an API
server: the local control plane of `warren local up` (built binaries in target/debug), as a user
would install the rendered chart on a cluster — the CRDs first (as Helm installs `crds/`), then
the release namespace and every object, each value set after the other (like upgrades), and each
set twice (a second apply of the same objects must succeed too).

ServiceMonitor and PrometheusRule need the Prometheus Operator's CRDs on a real cluster; here
minimal stand-ins of those CRDs (no schema) are applied first, as a cluster running it has them.

Needs: `cargo build --bins`, RabbitMQ (the operator of `warren local up` connects to it), kubectl.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess

import pytest
import yaml

from test_chart import CHART, NAMESPACE, URL, VALUE_SETS, ALERTING, render
from test_prometheus import Kubectl, binary, delete_exchange, free_port, rabbitmqctl, stop, wait_for

# The monitoring kinds the chart may render, as the Prometheus Operator's CRDs name them.
MONITORING_CRDS = [("servicemonitors", "ServiceMonitor"), ("prometheusrules", "PrometheusRule")]


def monitoring_crd(plural: str, kind: str) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                 "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List"},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
    }


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server-side-apply")
    suffix = secrets.token_hex(4)
    reports_queue = f"warren.reports.ssa-{suffix}"
    env = dict(os.environ, WARREN_REPORTS_QUEUE=reports_queue)
    state = tmp / "warren"
    log = open(tmp / "warren.log", "w")
    warren = subprocess.Popen(
        [binary("warren"), "local", "up", "--port", str(free_port()), "--metrics-addr", f"127.0.0.1:{free_port()}",
         "--state-dir", state],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        kubectl = Kubectl(state / "kubeconfig")
        wait_for("warren local up to serve the CRDs", lambda: kubectl("get", "wjob") is not None, timeout=90)
        yield kubectl
    finally:
        stop(warren)
        log.close()
        rabbitmqctl("delete_queue", reports_queue)
        delete_exchange(f"{reports_queue}.control")


def apply(kubectl: Kubectl, objects: list[dict], *flags: str) -> list[str]:
    out = kubectl("apply", "--server-side", "--field-manager", "helm-test", *flags, "-f", "-",
                  stdin=yaml.safe_dump_all(objects, sort_keys=False))
    return [line for line in out.splitlines() if line.strip()]


def test_the_crds_apply_server_side(kubectl):
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        crds = [doc for crd in chart.crds for doc in yaml.safe_load_all(crd["data"]) if doc]
    # `warren local up` installed them already (field manager `warren-installer`): taking them
    # over is a conflict on a real API server too, unless forced, as upgrading CRDs one installed
    # another way is.
    with pytest.raises(RuntimeError, match="conflict"):
        apply(kubectl, crds)
    lines = apply(kubectl, crds, "--force-conflicts")
    assert len(lines) == len(crds) == 4, lines
    assert all(line.endswith("serverside-applied") for line in lines), lines


def test_every_value_set_applies_server_side(kubectl):
    import helm_python as helm

    apply(kubectl, [monitoring_crd(p, k) for p, k in MONITORING_CRDS])
    wait_for("the monitoring CRDs to be served", lambda: kubectl("get", "servicemonitors", "-A") is not None, timeout=30)
    cases = dict(VALUE_SETS, alerting=ALERTING, admission_policy={"rabbitmq": {"url": URL}, "admissionPolicy": {"enabled": True}})
    kinds = set()
    with helm.Chart.load(CHART) as chart:
        for case, values in cases.items():
            objects = render(chart, values)
            # The namespaces the objects go to exist on a cluster (the release's, `watchNamespace`,
            # the dashboard's).
            for namespace in {o["metadata"].get("namespace", NAMESPACE) for o in objects}:
                kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}))
            for attempt in (1, 2):
                lines = apply(kubectl, objects)
                assert len(lines) == len(objects), f"{case} (apply {attempt}): {lines}"
                assert all(line.endswith("serverside-applied") for line in lines), f"{case} (apply {attempt}): {lines}"
            # What was applied is there, as applied.
            for obj in objects:
                namespace = ["-n", obj["metadata"].get("namespace", NAMESPACE)]
                kind = f"{obj['kind'].lower()}.{obj['apiVersion'].split('/')[0]}" if "/" in obj["apiVersion"] else obj["kind"].lower()
                stored = json.loads(kubectl("get", kind, obj["metadata"]["name"], *namespace, "-o", "json"))
                assert stored["metadata"].get("labels", {}) == obj["metadata"].get("labels", {}), f"{case}: {obj['kind']}"
                kinds.add(obj["kind"])
    # The chart's whole range of kinds was applied at least once.
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Secret",
            "ServiceMonitor", "PrometheusRule", "PodDisruptionBudget", "Role", "RoleBinding", "ConfigMap",
            "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} <= kinds, kinds

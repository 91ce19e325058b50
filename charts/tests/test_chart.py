"""Tests of the Helm chart charts/warren, offline: render, lint, schema, Kubernetes OpenAPI
validation, RBAC and security posture, alert rules (promtool) and the Grafana dashboard.

Run: python3 -m pytest charts/tests -q
Needs: pip install -r charts/tests/requirements.txt, and promtool (apt-get install -y prometheus).
test_prometheus.py (same directory) also needs the built binaries and RabbitMQ.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "warren"
TESTS = Path(__file__).resolve().parent
RELEASE = "warren"
NAMESPACE = "warren-system"
URL = "amqp://warren:s3cret@rabbitmq.rabbitmq.svc:5672/%2f"

# The chart needs a broker: "default values" are the defaults plus the one required value.
DEFAULT = {"rabbitmq": {"url": URL}}
FULL = {
    "replicaCount": 2,
    "watchNamespace": "media",
    "maxJobBytes": 5000000000,
    "notify": {"allowedHosts": ["hooks.example.com", "*.corp.example", "10.20.0.0/16", "fd00::/8"], "maxAttempts": 5, "exchange": "warren.events"},
    "rabbitmq": {
        "existingSecret": "rabbitmq-credentials",
        "secretKey": "amqp-uri",
        "workerSecretKey": "worker-uri",
        "reportsQueueType": "quorum",
    },
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True, "alertLabels": {"team": "jobs"}},
    },
    "grafana": {"dashboard": {"enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "Warren"}}},
    "image": {"repository": "registry.example/warren-operator", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
    "workerImage": {"repository": "registry.example/warren-worker", "tag": "0.1.0-rc1"},
    "logFormat": "text",
    "extraEnv": [{"name": "EXTRA", "value": "1"}],
    "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
}
ALERTING = {"rabbitmq": {"url": URL}, "metrics": {"prometheusRule": {"enabled": True}}}
VALUE_SETS = {
    "default": DEFAULT,
    "full": FULL,
    "worker-url": {"rabbitmq": {"url": URL, "workerUrl": "amqp://worker:pw@rabbit.example:5672/%2f"}},
    "existing-secret-worker-url": {"rabbitmq": {"existingSecret": "creds", "workerUrl": "amqp://w:pw@rabbit:5672/%2f"}},
    "leader-election-one-replica": {"rabbitmq": {"url": URL}, "leaderElection": {"enabled": True}},
    "external-service-account": {"rabbitmq": {"url": URL}, "serviceAccount": {"create": False, "name": "ops"}},
    "broker-tls": {"rabbitmq": {"url": "amqps://warren:s3cret@rabbitmq.rabbitmq.svc:5671/%2f", "tls": {"secretName": "rabbitmq-tls"}}},
    "broker-mutual-tls": {
        "rabbitmq": {
            "url": "amqps://warren:s3cret@rabbitmq.rabbitmq.svc:5671/%2f",
            "tls": {"secretName": "warren-operator-tls", "clientCertificate": True, "workerSecretName": "warren-worker-tls"},
        }
    },
}
# The chart-testing values files (`ct lint` lints the chart once per file, as
# `helm lint charts/warren -f <file>`): every rendering test below covers them too.
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
VALUE_SETS.update({f"ci/{path.name}": helm.values_from_yaml(path.read_text()) for path in CI_VALUES})

# Monitoring CRDs that kubernetes-validate has no schema for: checked by structure instead.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
# Metrics of other software the dashboard and alerts may use (Prometheus itself). Queue depths
# come from the operator, so no RabbitMQ exporter is needed.
EXTERNAL_METRICS = {"up"}


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render_files(chart, values) -> dict[str, str]:
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(chart, values) -> list[dict]:
    """Every object the chart renders (NOTES.txt excluded)."""
    objects = []
    for name, text in sorted(render_files(chart, values).items()):
        if name.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def find(objects, kind, name=None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects, kind, name=None) -> dict:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def operator_container(objects) -> dict:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container


def env_of(container) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install it with `apt-get install -y prometheus`")
    return path


def run(cmd, cwd=None) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout}\n{done.stderr}"
    return done


def rule_groups(chart) -> list[dict]:
    rule = one(render(chart, ALERTING), "PrometheusRule")
    return rule["spec"]["groups"]


def dashboard() -> dict:
    return json.loads((CHART / "dashboards" / "warren.json").read_text())


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, Grafana's variables replaced by durations."""
    exprs = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in (("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h")):
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"panel {panel['title']!r}: unknown Grafana variable in {expr!r}"
            exprs.append((panel["title"], expr))
    return exprs


def metric_names_of(module: str) -> set[str]:
    """The series names a metrics.rs exposes (prometheus-client appends _total to counters;
    histograms expose _bucket, _sum and _count)."""
    source = (ROOT / module).read_text()
    prefix = re.search(r'Registry::with_prefix\("([a-z_]+)"\)', source).group(1)
    fields = dict(re.findall(r"pub (\w+): (?:Family<\w+, )?(Counter|Gauge|Histogram)", source))
    names = set()
    for name, field in re.findall(r'registry\.register\(\s*"(\w+)",\s*"[^"]*",\s*(\w+)\.clone\(\)', source):
        base = f"{prefix}_{name}"
        kind = fields[field]
        if kind == "Counter":
            names.add(f"{base}_total")
        elif kind == "Gauge":
            names.add(base)
        else:
            names.update({f"{base}_bucket", f"{base}_sum", f"{base}_count"})
    return names


def operator_metric_names() -> set[str]:
    names = metric_names_of("operator/src/metrics.rs")
    assert len(names) >= 20, f"could not read the metrics of operator/src/metrics.rs: {names}"
    return names


def worker_metric_names() -> set[str]:
    names = metric_names_of("worker/src/metrics.rs")
    assert len(names) >= 8, f"could not read the metrics of worker/src/metrics.rs: {names}"
    return names


def metric_names_in(expr: str) -> set[str]:
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"\b(warren_[a-z_]+|rabbitmq_[a-z_]+|up)\b(?=\s*[{\[)]|\s*$|\s*[=!<>])", without_strings))


# --- rendering -----------------------------------------------------------------------------------


def oldest_supported_version() -> str:
    """The oldest Kubernetes the chart supports: `kubeVersion` of Chart.yaml (`>=1.27.0-0`)."""
    chart_yaml = yaml.safe_load((CHART / "Chart.yaml").read_text())
    match = re.fullmatch(r">=\s*(\d+)\.(\d+)(?:\.\d+)?(?:-0)?", chart_yaml["kubeVersion"].strip())
    assert match, f"kubeVersion {chart_yaml['kubeVersion']!r} is not a lower bound"
    return f"{match.group(1)}.{match.group(2)}.0"


# Objects that exist only from a later Kubernetes than the oldest supported, and the version
# their values document (admissionPolicy.enabled: "Kubernetes 1.30+").
LATER_KINDS = {("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"): "1.30.0",
               ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"): "1.30.0"}


@pytest.mark.parametrize("case", VALUE_SETS)
def test_renders_and_validates_against_the_kubernetes_openapi_schemas(chart, case):
    """Strictly (unknown fields are errors), against the oldest Kubernetes the chart supports and
    the newest kubernetes-validate knows."""
    objects = render(chart, VALUE_SETS[case])
    checked = 0
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        oldest = LATER_KINDS.get((obj["apiVersion"], obj["kind"]), oldest_supported_version())
        for version in (oldest, kubernetes_validate.latest_version()):
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{obj['kind']} {obj['metadata']['name']} is not a valid Kubernetes {version} object: {error}")
        checked += 1
    assert checked >= 5


def test_the_oldest_supported_kubernetes_is_one_kubernetes_validate_knows():
    assert oldest_supported_version() == "1.27.0"
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}, oldest_supported_version(), strict=True)


def test_chart_crds_validate_against_the_kubernetes_openapi_schemas(chart):
    crds = chart.crds
    assert {c["filename"] for c in crds} == {f"warren/crds/{p.name}" for p in (ROOT / "crds").glob("*.yaml")}
    for crd in crds:
        for obj in yaml.safe_load_all(crd["data"]):
            for version in (oldest_supported_version(), kubernetes_validate.latest_version()):
                kubernetes_validate.validate(obj, version, strict=True)


def test_chart_crds_are_identical_to_the_generated_crds():
    generated = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    shipped = sorted(p.name for p in (CHART / "crds").glob("*"))
    assert generated and shipped == generated, f"charts/warren/crds {shipped} != crds {generated}"
    for name in generated:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/warren/crds/{name} differs from crds/{name}: cp crds/*.yaml charts/warren/crds/"
        )


@pytest.mark.parametrize("case", ["default", "full"])
def test_helm_lint_passes(case):
    report = helm.lint(CHART, VALUE_SETS[case], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_ci_values_files_cover_the_default_and_a_full_install():
    names = [path.name for path in CI_VALUES]
    assert {"default-values.yaml", "full-values.yaml"} <= set(names), f"charts/warren/ci has {names}"


@pytest.mark.parametrize("path", CI_VALUES, ids=[path.name for path in CI_VALUES])
def test_helm_lint_passes_with_each_ci_values_file(path):
    # As `helm lint --strict charts/warren -f <path>`: the file is parsed as Helm parses -f.
    report = helm.lint(CHART, helm.values_from_yaml(path.read_text()), strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_the_broker_stays_required_and_is_named_when_missing(chart):
    # Plain `helm lint charts/warren` fails on purpose: no broker address is a safe default.
    report = helm.lint(CHART, None, strict=True, namespace=NAMESPACE)
    text = json.dumps(report)
    assert report["errors"], report
    assert "at '/rabbitmq'" in text and "missing property 'url'" in text and "missing property 'existingSecret'" in text, report
    with pytest.raises(helm.HelmError) as raised:
        render(chart, {})
    message = str(raised.value)
    assert "missing property 'url'" in message and "missing property 'existingSecret'" in message, message


def test_chart_description_names_every_crd_it_ships(chart):
    kinds = sorted(yaml.safe_load(c["data"])["spec"]["names"]["kind"] for c in chart.crds)
    assert kinds == ["Job", "Schedule", "WorkerPool", "Workflow"], kinds
    description = " ".join(chart.metadata["description"].split())
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    for kind in kinds:
        assert re.search(rf"\b{kind}\b", description), f"Chart.yaml's description does not name the {kind} CRD: {description!r}"
        assert re.search(rf"\b{kind}\b", notes.split("\n", 1)[0]), f"NOTES.txt's first line does not name the {kind} CRD"


def test_default_install(chart):
    objects = render(chart, DEFAULT)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Secret", "Service", "ServiceAccount"]
    deployment = one(objects, "Deployment")
    assert deployment["metadata"]["namespace"] == NAMESPACE
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}, "one operator without a Lease: never two at once"
    container = operator_container(objects)
    assert container["image"] == "warren-operator:0.1.0", "tag defaults to appVersion"
    assert container["args"] == ["--log-json"]
    env = env_of(container)
    assert env["WARREN_METRICS_ADDR"]["value"] == "0.0.0.0:9464"
    secret = one(objects, "Secret")
    assert secret["stringData"] == {"url": URL}
    assert env["WARREN_AMQP_URL"]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "url"}
    assert "WARREN_WORKER_AMQP_URL" not in env, "workers default to the operator's URI"
    assert "WARREN_LEADER_ELECTION" not in env and "WARREN_WATCH_NAMESPACE" not in env
    assert env["WARREN_MAX_JOB_BYTES"]["value"] == "1073741824", "1 GiB of task payload per Job"
    assert env["WARREN_NOTIFY_ALLOWED_HOSTS"]["value"] == "", "any host, never a cluster-internal address"
    assert env["WARREN_NOTIFY_MAX_ATTEMPTS"]["value"] == "12"
    assert "WARREN_NOTIFY_EXCHANGE" not in env, "no exchange unless one is named"
    assert env["WARREN_REPORTS_QUEUE_TYPE"]["value"] == "classic", "what every Warren before the setting declared"
    assert env["WARREN_WORKER_IMAGE"]["value"] == "warren-worker:0.1.0", "workers of the operator's version, never untagged"
    assert not find(objects, "Role") and not find(objects, "PodDisruptionBudget")
    service = one(objects, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_operator_pod_is_locked_down(chart):
    for case in ("default", "full"):
        objects = render(chart, VALUE_SETS[case])
        pod = one(objects, "Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 65532
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        container = operator_container(objects)
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
        resources = container["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert container["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]


RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(pod: dict) -> list[str]:
    """Every rule of the "restricted" Pod Security Standard (baseline + restricted) the pod spec
    breaks; the same rules as operator/src/pod_security.rs checks for the worker pods."""
    out = []
    psc = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            out.append(f"spec.{flag}")
    if psc.get("windowsOptions", {}).get("hostProcess"):
        out.append("hostProcess")
    if psc.get("runAsUser") == 0:
        out.append("spec.securityContext.runAsUser 0")
    if psc.get("seccompProfile", {}).get("type") == "Unconfined":
        out.append("spec.securityContext.seccompProfile Unconfined")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volume {volume['name']}: {kinds - RESTRICTED_VOLUMES}")
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext", {})
        at = f"container {c['name']}"
        if sc.get("privileged"):
            out.append(f"{at}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{at}: allowPrivilegeEscalation")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            out.append(f"{at}: capabilities.drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{at}: capabilities.add")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            out.append(f"{at}: runAsNonRoot")
        if sc.get("runAsUser") == 0:
            out.append(f"{at}: runAsUser 0")
        if sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") not in ("RuntimeDefault", "Localhost"):
            out.append(f"{at}: seccompProfile")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{at}: procMount")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{at}: hostPort")
    return out


def test_operator_pod_meets_the_restricted_pod_security_standard(chart):
    for case in VALUE_SETS:
        objects = render(chart, VALUE_SETS[case])
        pod = one(objects, "Deployment")["spec"]["template"]["spec"]
        assert restricted_violations(pod) == [], case
    # The checker itself catches a broken pod.
    broken = {"hostNetwork": True, "containers": [{"name": "c", "securityContext": {"privileged": True}}]}
    assert len(restricted_violations(broken)) >= 5


def test_non_default_install(chart):
    objects = render(chart, FULL)
    assert not find(objects, "Secret"), "the URIs come from the existing Secret"
    container = operator_container(objects)
    env = env_of(container)
    assert env["WARREN_AMQP_URL"]["valueFrom"]["secretKeyRef"] == {"name": "rabbitmq-credentials", "key": "amqp-uri"}
    assert env["WARREN_WORKER_AMQP_URL"]["valueFrom"]["secretKeyRef"] == {"name": "rabbitmq-credentials", "key": "worker-uri"}
    assert env["WARREN_WATCH_NAMESPACE"]["value"] == "media"
    assert env["WARREN_MAX_JOB_BYTES"]["value"] == "5000000000"
    assert env["WARREN_NOTIFY_ALLOWED_HOSTS"]["value"] == "hooks.example.com,*.corp.example,10.20.0.0/16,fd00::/8"
    assert env["WARREN_NOTIFY_MAX_ATTEMPTS"]["value"] == "5"
    assert env["WARREN_NOTIFY_EXCHANGE"]["value"] == "warren.events"
    assert env["WARREN_REPORTS_QUEUE_TYPE"]["value"] == "quorum", "a cluster's reports queue is replicated"
    assert env["WARREN_WORKER_IMAGE"]["value"] == "registry.example/warren-worker:0.1.0-rc1"
    assert env["WARREN_LEASE_NAME"]["value"] == "warren-operator"
    assert env["WARREN_LEASE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["EXTRA"]["value"] == "1"
    assert "args" not in container, "logFormat text: no --log-json"
    assert container["image"] == "registry.example/warren-operator:0.1.0-rc1"
    assert container["resources"] == FULL["resources"]
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert one(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1

    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True, "keeps the WorkerPool namespace label of per-pool metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= one(objects, "Service")["metadata"]["labels"].items()

    rule = one(objects, "PrometheusRule")
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert r["labels"]["team"] == "jobs" and r["labels"]["severity"] in {"warning", "critical"}
            assert r["annotations"]["summary"] and r["annotations"]["description"]

    configmap = one(objects, "ConfigMap")
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Warren"}
    assert json.loads(configmap["data"]["warren.json"]) == dashboard()


def test_worker_url_from_values_goes_to_the_chart_secret(chart):
    objects = render(chart, VALUE_SETS["worker-url"])
    secret = one(objects, "Secret")
    assert set(secret["stringData"]) == {"url", "workerUrl"}
    env = env_of(operator_container(objects))
    assert env["WARREN_WORKER_AMQP_URL"]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "workerUrl"}

    objects = render(chart, VALUE_SETS["existing-secret-worker-url"])
    secret = one(objects, "Secret")
    assert secret["stringData"] == {"workerUrl": "amqp://w:pw@rabbit:5672/%2f"}
    env = env_of(operator_container(objects))
    assert env["WARREN_AMQP_URL"]["valueFrom"]["secretKeyRef"] == {"name": "creds", "key": "url"}
    assert env["WARREN_WORKER_AMQP_URL"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]


def test_secret_change_restarts_the_operator(chart):
    def checksum(values):
        return one(render(chart, values), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/rabbitmq"]

    assert checksum(DEFAULT) != checksum({"rabbitmq": {"url": "amqp://other:pw@rabbit:5672/%2f"}})


# --- RBAC ----------------------------------------------------------------------------------------


def rules_by_resource(role) -> dict[str, set[str]]:
    granted: dict[str, set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault(f"{group}/{resource}" if group else resource, set()).update(rule["verbs"])
    return granted


def test_cluster_rbac_is_least_privilege(chart):
    objects = render(chart, DEFAULT)
    role = one(objects, "ClusterRole")
    assert rules_by_resource(role) == {
        "warren.dev/workerpools": {"get", "list", "watch", "patch"},
        "warren.dev/workerpools/status": {"patch"},
        "warren.dev/workerpools/finalizers": {"update"},
        "warren.dev/jobs": {"get", "list", "watch", "create", "delete"},
        "warren.dev/jobs/status": {"patch"},
        "warren.dev/workflows": {"get", "list", "watch", "create", "delete"},
        "warren.dev/workflows/status": {"patch"},
        "warren.dev/workflows/finalizers": {"update"},
        "warren.dev/schedules": {"get", "list", "watch"},
        "warren.dev/schedules/status": {"patch"},
        "warren.dev/schedules/finalizers": {"update"},
        "apps/deployments": {"get", "list", "watch", "create", "patch"},
        "events.k8s.io/events": {"create", "patch"},
        "pods": {"get", "list", "patch"},
        "secrets": {"get", "create", "patch"},
    }
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    sa = one(objects, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]


@pytest.mark.parametrize("case", VALUE_SETS)
def test_every_rbac_rule_says_why_and_workers_get_none(chart, case):
    files = render_files(chart, VALUE_SETS[case])
    rbac = files.get(f"{CHART.name}/templates/rbac.yaml", "")
    lines = rbac.splitlines()
    rule_lines = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert rule_lines
    for i in rule_lines:
        assert lines[i - 1].strip().startswith("#"), f"RBAC rule without a comment saying why: {lines[i]!r}"
    objects = render(chart, VALUE_SETS[case])
    operator_sa = one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    for binding in find(objects, "ClusterRoleBinding") + find(objects, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": operator_sa, "namespace": NAMESPACE}]
    for role in find(objects, "ClusterRole") + find(objects, "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            assert not {"pods/exec", "customresourcedefinitions"} & set(rule["resources"])
            if "secrets" in rule["resources"] and role["metadata"]["name"].endswith("-control-key"):
                # The control-message key of a namespaced install: read by name, created once.
                assert rule in ({"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["warren-control-key"], "verbs": ["get"]},
                                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}), rule
                assert role["metadata"]["namespace"] == NAMESPACE
            elif "secrets" in rule["resources"]:
                # Only the pools' broker Secrets, by name: never list, watch, update or delete.
                assert set(rule["verbs"]) == {"get", "create", "patch"}, rule
            if "pods" in rule["resources"]:
                # Only the autoscaler's pod-deletion-cost annotation: never create or delete.
                assert set(rule["verbs"]) == {"get", "list", "patch"}, rule


def test_the_rbac_table_of_docs_helm_md_lists_every_rule(chart):
    """docs/helm.md's RBAC table says, per resource, the verbs the chart's roles grant: all of
    them, and no others."""
    granted = rules_by_resource(one(render(chart, DEFAULT), "ClusterRole"))
    (lease_role,) = [r for r in find(render(chart, VALUE_SETS["leader-election-one-replica"]), "Role")
                     if r["metadata"]["name"].endswith("-leader-election")]
    granted.update(rules_by_resource(lease_role))
    verbs = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
    table = (ROOT / "docs" / "helm.md").read_text().split("| Resource | Verbs | Why |", 1)[1].split("\n\n", 1)[0]
    documented: dict[str, set[str]] = {}
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        resource = re.match(r"`([^`]+)`", cells[0]).group(1)
        if resource.split("/")[0] in {"workerpools", "jobs", "workflows", "schedules"}:
            resource = f"warren.dev/{resource}"
        assert cells[2], f"docs/helm.md RBAC row {resource} does not say why"
        documented.setdefault(resource, set()).update(w for w in re.findall(r"[a-z]+", re.sub(r"`[^`]*`", "", cells[1])) if w in verbs)
    assert documented == granted


def test_watch_namespace_uses_a_namespaced_role(chart):
    objects = render(chart, FULL)
    assert not find(objects, "ClusterRole") and not find(objects, "ClusterRoleBinding")
    role = one(objects, "Role", "warren")
    assert role["metadata"]["namespace"] == "media"
    assert "warren.dev/jobs/status" in rules_by_resource(role)
    # Its own namespace's control-message key, and nothing else there.
    key_role = one(objects, "Role", "warren-control-key")
    assert key_role["metadata"]["namespace"] == NAMESPACE
    assert rules_by_resource(key_role) == {"secrets": {"get", "create"}}
    binding = one(objects, "RoleBinding", "warren")
    assert binding["metadata"]["namespace"] == "media" and binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "warren"}


def test_leader_election_rbac_only_with_a_lease(chart):
    lease_roles = lambda objects: [r for r in find(objects, "Role") if r["metadata"]["name"].endswith("-leader-election")]  # noqa: E731
    assert lease_roles(render(chart, DEFAULT)) == []
    for values in (FULL, VALUE_SETS["leader-election-one-replica"]):
        objects = render(chart, values)
        (role,) = lease_roles(objects)
        assert role["metadata"]["namespace"] == NAMESPACE
        named = [r for r in role["rules"] if r.get("resourceNames")]
        assert named == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                          "resourceNames": ["warren-operator"], "verbs": ["get", "watch", "update", "patch"]}]
        assert rules_by_resource(role) == {"coordination.k8s.io/leases": {"get", "watch", "update", "patch", "create"}}
        assert one(objects, "RoleBinding", role["metadata"]["name"])["metadata"]["namespace"] == NAMESPACE
        assert env_of(operator_container(objects))["WARREN_LEADER_ELECTION"]["value"] == "true"


def test_external_service_account(chart):
    objects = render(chart, VALUE_SETS["external-service-account"])
    assert not find(objects, "ServiceAccount")
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert one(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "ops"


def test_broker_tls_mounts_the_secret_into_the_operator_and_names_it_for_the_workers(chart):
    for case in ("default", "full"):
        container = operator_container(render(chart, VALUE_SETS[case]))
        env = env_of(container)
        assert not {"WARREN_AMQP_CA_FILE", "WARREN_AMQP_CLIENT_CERT_FILE", "WARREN_WORKER_TLS_SECRET"} & env.keys(), case
        assert [m["name"] for m in container["volumeMounts"]] == ["tmp"], case

    objects = render(chart, VALUE_SETS["broker-tls"])
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "broker-tls"]
    assert volume["secret"] == {"secretName": "rabbitmq-tls"}, "all its keys; files readable by the operator's user"
    container = operator_container(objects)
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "broker-tls"]
    assert mount == {"name": "broker-tls", "mountPath": "/etc/warren/broker-tls", "readOnly": True}
    env = env_of(container)
    assert env["WARREN_AMQP_CA_FILE"]["value"] == "/etc/warren/broker-tls/ca.crt"
    assert "WARREN_AMQP_CLIENT_CERT_FILE" not in env and "WARREN_AMQP_CLIENT_KEY_FILE" not in env, "no mutual TLS unless asked"
    assert env["WARREN_WORKER_TLS_SECRET"]["value"] == "rabbitmq-tls", "workers get the same Secret by default"

    objects = render(chart, VALUE_SETS["broker-mutual-tls"])
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert [v["secret"]["secretName"] for v in pod["volumes"] if v["name"] == "broker-tls"] == ["warren-operator-tls"]
    env = env_of(operator_container(objects))
    assert env["WARREN_AMQP_CLIENT_CERT_FILE"]["value"] == "/etc/warren/broker-tls/tls.crt"
    assert env["WARREN_AMQP_CLIENT_KEY_FILE"]["value"] == "/etc/warren/broker-tls/tls.key"
    assert env["WARREN_WORKER_TLS_SECRET"]["value"] == "warren-worker-tls"

    with pytest.raises(helm.HelmError, match="rabbitmq.tls.clientCertificate needs rabbitmq.tls.secretName"):
        render(chart, {"rabbitmq": {"url": URL, "tls": {"clientCertificate": True}}})


# --- bad values ----------------------------------------------------------------------------------

BAD_VALUES = [
    ("replicaCount 0", {"rabbitmq": {"url": URL}, "replicaCount": 0}, ["at '/replicaCount': minimum: got 0, want 1"]),
    ("replicaCount string", {"rabbitmq": {"url": URL}, "replicaCount": "two"}, ["at '/replicaCount': got string, want integer"]),
    ("rabbitmq missing", {}, ["at '/rabbitmq'", "missing property 'url'", "missing property 'existingSecret'"]),
    ("rabbitmq both", {"rabbitmq": {"url": URL, "existingSecret": "s"}}, ["at '/rabbitmq': 'oneOf' failed, subschemas 0, 1 matched"]),
    ("rabbitmq url not amqp", {"rabbitmq": {"url": "http://rabbit:15672"}}, ["at '/rabbitmq/url'", "does not match pattern '^amqps?://'"]),
    ("rabbitmq url empty", {"rabbitmq": {"url": ""}}, ["at '/rabbitmq/url'", "minLength"]),
    ("rabbitmq typo", {"rabbitmq": {"url": URL, "user": "x"}}, ["additional properties 'user' not allowed"]),
    ("worker image latest", {"rabbitmq": {"url": URL}, "workerImage": {"tag": "latest"}}, ["at '/workerImage/tag'"]),
    ("reports queue type", {"rabbitmq": {"url": URL, "reportsQueueType": "stream"}}, ["at '/rabbitmq/reportsQueueType': value must be one of 'classic', 'quorum'"]),
    ("log format", {"rabbitmq": {"url": URL}, "logFormat": "xml"}, ["at '/logFormat': value must be one of 'json', 'text'"]),
    ("pull policy", {"rabbitmq": {"url": URL}, "image": {"pullPolicy": "Sometimes"}}, ["at '/image/pullPolicy': value must be one of"]),
    ("cpu quantity", {"rabbitmq": {"url": URL}, "resources": {"requests": {"cpu": "lots"}}}, ["at '/resources/requests/cpu'", "does not match pattern"]),
    ("resources shape", {"rabbitmq": {"url": URL}, "resources": {"cpu": "1"}}, ["at '/resources'", "additional properties 'cpu' not allowed"]),
    ("metrics port", {"rabbitmq": {"url": URL}, "metrics": {"port": 70000}}, ["at '/metrics/port': maximum: got 70,000, want 65,535"]),
    ("boolean flag", {"rabbitmq": {"url": URL}, "metrics": {"serviceMonitor": {"enabled": "yes"}}}, ["at '/metrics/serviceMonitor/enabled': got string, want boolean"]),
    ("watch namespace", {"rabbitmq": {"url": URL}, "watchNamespace": "Not_A_Namespace"}, ["at '/watchNamespace'"]),
    ("unknown key", {"rabbitmq": {"url": URL}, "replicas": 3}, ["additional properties 'replicas' not allowed"]),
    ("tls typo", {"rabbitmq": {"url": URL, "tls": {"secret": "x"}}}, ["at '/rabbitmq/tls'", "additional properties 'secret' not allowed"]),
    ("tls secret name", {"rabbitmq": {"url": URL, "tls": {"secretName": "Not_A_Name"}}}, ["at '/rabbitmq/tls/secretName'"]),
    ("notify host", {"rabbitmq": {"url": URL}, "notify": {"allowedHosts": ["http://hooks.example.com/x"]}}, ["at '/notify/allowedHosts/0'", "does not match pattern"]),
    ("notify attempts", {"rabbitmq": {"url": URL}, "notify": {"maxAttempts": 0}}, ["at '/notify/maxAttempts': minimum: got 0, want 1"]),
    ("notify exchange", {"rabbitmq": {"url": URL}, "notify": {"exchange": "warren events"}}, ["at '/notify/exchange'", "does not match pattern"]),
]


@pytest.mark.parametrize("values, expected", [(v, e) for _, v, e in BAD_VALUES], ids=[n for n, _, _ in BAD_VALUES])
def test_bad_values_are_rejected_with_the_schema_error(chart, values, expected):
    with pytest.raises(helm.HelmError) as raised:
        render(chart, values)
    message = str(raised.value)
    assert "values don't meet the specifications of the schema" in message
    for text in expected:
        assert text in message, f"{text!r} not in:\n{message}"


def test_contradictory_values_fail_rendering_with_a_clear_message(chart):
    with pytest.raises(helm.HelmError, match="rabbitmq.workerSecretKey needs rabbitmq.existingSecret"):
        render(chart, {"rabbitmq": {"url": URL, "workerSecretKey": "w"}})
    with pytest.raises(helm.HelmError, match="set only one of rabbitmq.workerUrl and rabbitmq.workerSecretKey"):
        render(chart, {"rabbitmq": {"existingSecret": "s", "workerUrl": URL, "workerSecretKey": "w"}})


def test_lint_reports_bad_values():
    report = helm.lint(CHART, {"replicaCount": 0}, strict=True)
    text = json.dumps(report)
    assert "minimum: got 0, want 1" in text and "missing property 'url'" in text, report


# --- alerts --------------------------------------------------------------------------------------


@pytest.fixture
def rules_file(chart, tmp_path) -> Path:
    path = tmp_path / "warren-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups(chart)}, sort_keys=False))
    return path


def test_alert_rules_pass_promtool_check(rules_file):
    done = run([promtool(), "check", "rules", rules_file])
    assert "SUCCESS: 18 rules found" in done.stdout, done.stdout


def test_alert_rules_pass_their_promtool_unit_tests(rules_file):
    shutil.copy(TESTS / "alerts_test.yaml", rules_file.parent / "alerts_test.yaml")
    done = run([promtool(), "test", "rules", "alerts_test.yaml"], cwd=rules_file.parent)
    assert "SUCCESS" in done.stdout, done.stdout


def test_every_alert_has_a_unit_test_that_fires_it(chart):
    alerts = {r["alert"] for g in rule_groups(chart) for r in g["rules"]}
    tests = yaml.safe_load((TESTS / "alerts_test.yaml").read_text())["tests"]
    fired = {t["alertname"] for test in tests for t in test["alert_rule_test"] if t.get("exp_alerts")}
    assert fired == alerts, f"alerts without a firing test: {alerts - fired}; tests of unknown alerts: {fired - alerts}"


def test_alerts_use_only_metrics_that_exist(chart):
    # Worker metrics only where the alert says so: they need the workers scraped (a PodMonitor).
    known = operator_metric_names() | EXTERNAL_METRICS | {"warren_worker_queue_wait_seconds_bucket", "warren_worker_tasks_refused_total"}
    for group in rule_groups(chart):
        for rule in group["rules"]:
            used = metric_names_in(rule["expr"])
            assert used, rule["alert"]
            assert used <= known, f"{rule['alert']} uses unknown metrics {used - known}"


# --- dashboard -----------------------------------------------------------------------------------


def test_dashboard_is_well_formed():
    board = dashboard()
    assert board["uid"] and board["title"] == "Warren" and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in board["panels"]:
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert target["refId"]
    assert len(dashboard_exprs()) >= 15


def test_dashboard_queries_parse_with_promtool(tmp_path):
    rules = [{"record": f"warren:dashboard_query_{i}", "expr": expr} for i, (_, expr) in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run([promtool(), "check", "rules", path])
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout, done.stdout


def test_dashboard_uses_only_metrics_that_exist():
    ours = operator_metric_names() | worker_metric_names()
    known = ours | EXTERNAL_METRICS
    used_ours = set()
    for title, expr in dashboard_exprs():
        used = metric_names_in(expr)
        assert used, f"panel {title!r}: no metric found in {expr!r}"
        assert used <= known, f"panel {title!r} uses unknown metrics {used - known}"
        used_ours |= used & ours
    unused = {n for n in ours if not n.endswith(("_sum", "_count"))} - used_ours
    assert not unused, f"operator and worker metrics missing from the dashboard: {unused}"


GRAFANA = TESTS / "grafana"


def grafana_check_tools() -> str:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("node/npm not found: apt-get install -y nodejs npm (scripts/setup-test.sh does it)")
    if not (GRAFANA / "node_modules" / "@grafana" / "schema").is_dir() or not (GRAFANA / "node_modules" / "typescript").is_dir():
        pytest.fail("the Grafana schema check is not installed: npm ci --prefix charts/tests/grafana (scripts/setup-test.sh does it)")
    return npm


def test_dashboard_type_checks_against_grafanas_published_schema():
    """@grafana/schema's Dashboard type, and each panel's options and custom field config
    against its plugin's types (charts/tests/grafana/check.ts)."""
    npm = grafana_check_tools()
    done = run([npm, "run", "--silent", "check"], cwd=GRAFANA)
    assert "error" not in done.stdout.lower(), done.stdout


@pytest.mark.parametrize("breakage, path, value", [
    ("an enum value that does not exist", ("fieldConfig", "defaults", "thresholds", "mode"), "absolut"),
    ("a legend mode of the timeseries plugin that does not exist", ("options", "legend", "displayMode"), "tabel"),
    ("a wrongly typed custom field option", ("fieldConfig", "defaults", "custom", "lineWidth"), "thick"),
    ("a template variable without its current value", None, None),
])
def test_the_schema_check_rejects_a_broken_dashboard(tmp_path, breakage, path, value):
    npm = grafana_check_tools()
    board = dashboard()
    if path is None:
        board["templating"]["list"][0]["current"] = {}
    else:
        panel = next(p for p in board["panels"] if all(k in p for k in path[:1]) and _has(p, path))
        target = panel
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(board))
    try:
        run(["node", "gen.mjs", str(broken)], cwd=GRAFANA)
        done = subprocess.run([npm, "exec", "--", "tsc", "-p", "."], cwd=GRAFANA, capture_output=True, text=True)
        assert done.returncode != 0, f"{breakage} passed the schema check"
        assert "error TS2322" in done.stdout, done.stdout
    finally:
        run(["node", "gen.mjs"], cwd=GRAFANA)


def _has(obj, path) -> bool:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return False
        obj = obj[key]
    return True


# --- images --------------------------------------------------------------------------------------


def test_dockerfile_builds_both_targets_as_the_chart_user():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = {name: base for base, name in re.findall(r"^FROM (\S+) AS ([\w-]+)$", dockerfile, re.M)}
    assert set(stages) == {"build", "operator", "worker", "build-e2e", "worker-e2e"}
    assert stages["worker-e2e"] == "worker", "the e2e image is the worker image plus the tests' binaries"
    # `docker build .` without --target builds the last stage: the worker, never the e2e image.
    assert re.findall(r"^FROM (\S+)", dockerfile, re.M)[-1] == "worker"
    assert "cargo build --release --locked" in dockerfile
    for target, binary in (("operator", "warren-operator"), ("worker", "warren-worker")):
        stage = dockerfile.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        assert "USER 65532:65532" in stage, target
        assert f'"/usr/local/bin/{binary}"]' in stage, f"{target} runs {binary}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "target/" in ignored and ".git/" in ignored
    chart_image = yaml.safe_load((CHART / "values.yaml").read_text())["image"]["repository"]
    assert chart_image == "warren-operator"

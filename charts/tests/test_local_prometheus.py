"""`warren local up --prometheus` loads the chart's alert rules from cli/assets/alert-rules.yaml.

That file is rendered from charts/warren/templates/prometheusrule.yaml (never edited by hand):
the test below fails when it is stale. Regenerate it with

    WARREN_REGENERATE=1 python3 -m pytest charts/tests/test_local_prometheus.py

Also here: `promtool check rules` accepts the file, and scripts/demo.sh installs no test-only tool.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import helm_python as helm
import pytest
import yaml

from test_chart import CHART, RELEASE, ROOT, URL, render

LOCAL_RULES = ROOT / "cli" / "assets" / "alert-rules.yaml"
# What `warren local up --prometheus` labels the operator's scrape target with (cli/src/local.rs).
LOCAL_OPERATOR_JOB = "warren-operator"
LOCAL_NAMESPACE = "warren-local"
HEADER = ("# Generated from charts/warren/templates/prometheusrule.yaml by charts/tests/test_local_prometheus.py\n"
          "# (WARREN_REGENERATE=1 python3 -m pytest charts/tests/test_local_prometheus.py). Do not edit.\n")


def rendered_local_rules() -> str:
    values = {"rabbitmq": {"url": URL},
              "metrics": {"prometheusRule": {"enabled": True, "operatorJob": LOCAL_OPERATOR_JOB}}}
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values, name=RELEASE, namespace=LOCAL_NAMESPACE, is_install=True)
    objects = [doc for name, text in sorted(files.items()) if not name.endswith("NOTES.txt")
               for doc in yaml.safe_load_all(text) if doc]
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    return HEADER + yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False, width=1000)


def test_the_local_alert_rules_are_the_charts():
    expected = rendered_local_rules()
    if os.environ.get("WARREN_REGENERATE"):
        LOCAL_RULES.write_text(expected)
    assert LOCAL_RULES.read_text() == expected, (
        f"{LOCAL_RULES} is stale: regenerate it with "
        "WARREN_REGENERATE=1 python3 -m pytest charts/tests/test_local_prometheus.py")


def test_the_local_alert_rules_load_in_prometheus():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: apt-get install -y prometheus (scripts/setup-test.sh does it)")
    done = subprocess.run([promtool, "check", "rules", str(LOCAL_RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    groups = yaml.safe_load(LOCAL_RULES.read_text())["groups"]
    assert any(group["name"] == "warren-operator" for group in groups), groups
    exprs = [rule["expr"] for group in groups for rule in group["rules"]]
    assert any(f'job="{LOCAL_OPERATOR_JOB}", namespace="{LOCAL_NAMESPACE}"' in expr for expr in exprs), exprs


def test_the_demo_installs_only_what_running_needs():
    """scripts/demo.sh is a newcomer's first command: Rust, RabbitMQ and kubectl, nothing the
    tests alone need (Prometheus, npm, the chart suite's Python packages)."""
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    sourced = re.findall(r"^\s*(?:source|\.)\s+(\S+)", demo, re.MULTILINE)
    text = demo + "".join((ROOT / path).read_text() for path in sourced)
    for test_only in ["apt-get install -y -qq prometheus", "npm ci", "nodejs", "charts/tests/requirements.txt"]:
        assert test_only not in text, f"scripts/demo.sh (with {sourced}) installs {test_only!r}"
    # scripts/test.sh still gets them.
    test = (ROOT / "scripts" / "test.sh").read_text()
    test_sourced = re.findall(r"^\s*(?:source|\.)\s+(\S+)", test, re.MULTILINE)
    test_text = test + "".join((ROOT / path).read_text() for path in test_sourced)
    for needed in ["prometheus", "npm ci", "charts/tests/requirements.txt", "rabbitmq-server", "kubectl"]:
        assert needed in test_text, f"scripts/test.sh (with {test_sourced}) no longer installs {needed!r}"

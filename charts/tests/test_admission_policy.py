"""The ValidatingAdmissionPolicy that narrows a cluster-wide operator to the objects Warren labels
(issue #13, point 6): rendered by the chart, valid Kubernetes, and its CEL expressions evaluated
(cel-python) against the requests a real API server would send it — the operator's own writes
pass, a write to anything else is denied with a message naming it, a takeover by labelling is
denied, other users are not matched. No API server can run here; the expressions are the part
that decides, and a CEL engine runs them.
"""

from __future__ import annotations

import celpy
import kubernetes_validate
import pytest
import yaml

from test_chart import NAMESPACE, RELEASE, URL, chart, render  # noqa: F401 (chart: the fixture)

OPERATOR = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
WARREN_LABELS = {"app.kubernetes.io/managed-by": "warren", "warren.dev/pool": "thumbs"}


@pytest.fixture(scope="module")
def policy(chart):
    objects = render(chart, {"rabbitmq": {"url": URL}, "admissionPolicy": {"enabled": True}})
    [policy] = [o for o in objects if o["kind"] == "ValidatingAdmissionPolicy"]
    [binding] = [o for o in objects if o["kind"] == "ValidatingAdmissionPolicyBinding"]
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    for obj in (policy, binding):
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    return policy


def compile_(expression: str):
    env = celpy.Environment()
    return env.program(env.compile(expression))


def admit(policy, user: str, operation: str, resource: str, new: dict | None, old: dict | None,
          namespace: str = "media") -> tuple[bool, str | None]:
    """(allowed, denial message) for one request, as the API server evaluates the policy."""
    request = {
        "operation": operation,
        "userInfo": {"username": user},
        "resource": {"resource": resource},
        "namespace": namespace,
        "name": (new or old)["metadata"]["name"],
    }
    activation = {
        "request": celpy.json_to_cel(request),
        "object": celpy.json_to_cel(new),
        "oldObject": celpy.json_to_cel(old),
    }
    for condition in policy["spec"]["matchConditions"]:
        if not compile_(condition["expression"]).evaluate(activation):
            return True, None  # not matched: the policy does not apply
    variables = {}
    for variable in policy["spec"]["variables"]:
        activation["variables"] = celpy.json_to_cel(variables)
        variables[variable["name"]] = compile_(variable["expression"]).evaluate(activation)
    activation["variables"] = celpy.celtypes.MapType({celpy.celtypes.StringType(k): v for k, v in variables.items()})
    for validation in policy["spec"]["validations"]:
        if not compile_(validation["expression"]).evaluate(activation):
            return False, str(compile_(validation["messageExpression"]).evaluate(activation))
    return True, None


def obj(name: str, labels: dict | None) -> dict:
    meta = {"name": name, "namespace": "media"}
    if labels is not None:
        meta["labels"] = labels
    return {"metadata": meta}


def test_not_installed_by_default_nor_with_a_namespaced_install(chart):
    for values in ({"rabbitmq": {"url": URL}}, {"rabbitmq": {"url": URL}, "watchNamespace": "media", "admissionPolicy": {"enabled": True}}):
        kinds = {o["kind"] for o in render(chart, values)}
        assert "ValidatingAdmissionPolicy" not in kinds, values


def test_the_operator_may_write_what_warren_labels(policy):
    deployment = obj("thumbs-workers", WARREN_LABELS)
    assert admit(policy, OPERATOR, "CREATE", "deployments", deployment, None) == (True, None)
    assert admit(policy, OPERATOR, "UPDATE", "deployments", deployment, deployment) == (True, None)
    pod = obj("thumbs-workers-7d9f-abcde", {**WARREN_LABELS, "pod-template-hash": "7d9f"})
    assert admit(policy, OPERATOR, "UPDATE", "pods", pod, pod) == (True, None), "the deletion-cost annotation"
    assert admit(policy, OPERATOR, "CREATE", "secrets", obj("thumbs-warren-report-key", WARREN_LABELS), None) == (True, None)


def test_the_operator_may_not_write_anything_else(policy):
    for labels in (None, {}, {"warren.dev/pool": "thumbs"}, {"app.kubernetes.io/managed-by": "helm", "warren.dev/pool": "x"}):
        other = obj("payments-api", labels)
        allowed, message = admit(policy, OPERATOR, "UPDATE", "deployments", other, other)
        assert not allowed, labels
        assert message.startswith("the Warren operator may only write objects it manages") and "deployments media/payments-api" in message
        assert admit(policy, OPERATOR, "CREATE", "secrets", obj("db-password", labels), None)[0] is False
        assert admit(policy, OPERATOR, "DELETE", "pods", None, obj("db-0", labels))[0] is False


def test_the_operator_may_create_its_control_key_in_its_own_namespace_only_and_never_change_it(policy):
    key = obj("warren-control-key", {"app.kubernetes.io/managed-by": "warren"})
    assert admit(policy, OPERATOR, "CREATE", "secrets", key, None, namespace=NAMESPACE) == (True, None)
    assert admit(policy, OPERATOR, "CREATE", "secrets", key, None, namespace="media")[0] is False, "another namespace"
    assert admit(policy, OPERATOR, "UPDATE", "secrets", key, key, namespace=NAMESPACE)[0] is False, "changing it"
    assert admit(policy, OPERATOR, "DELETE", "secrets", None, key, namespace=NAMESPACE)[0] is False, "deleting it"
    other = obj("db-password", None)
    assert admit(policy, OPERATOR, "CREATE", "secrets", other, None, namespace=NAMESPACE)[0] is False, "another name"


def test_the_operator_may_not_take_an_object_over_by_labelling_it(policy):
    allowed, message = admit(policy, OPERATOR, "UPDATE", "deployments", obj("payments-api", WARREN_LABELS), obj("payments-api", {"app": "payments"}))
    assert not allowed
    assert message == "the Warren operator may not take over deployments media/payments-api: it was not labelled as Warren's before this change"


def test_other_users_are_not_matched(policy):
    for user in ("system:serviceaccount:media:deployer", f"system:serviceaccount:other-ns:{RELEASE}", "alice@example.com"):
        assert admit(policy, user, "UPDATE", "deployments", obj("payments-api", None), obj("payments-api", None)) == (True, None)


def test_the_matched_user_is_the_release_service_account(chart):
    objects = render(chart, {"rabbitmq": {"url": URL}, "admissionPolicy": {"enabled": True}, "serviceAccount": {"create": False, "name": "ops"}})
    [policy] = [o for o in objects if o["kind"] == "ValidatingAdmissionPolicy"]
    assert policy["spec"]["matchConditions"][0]["expression"] == f'request.userInfo.username == "system:serviceaccount:{NAMESPACE}:ops"'
    yaml.safe_dump(policy)

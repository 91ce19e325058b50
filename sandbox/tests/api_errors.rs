//! Bad input answers with `Status` objects, and custom resources are validated (422 Invalid).
#[path = "api_support.rs"]
mod support;

use serde_json::json;
use support::*;

const CMS: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test]
async fn invalid_json_body_is_bad_request() {
    let s = server().await;
    let (code, body) = raw(&s, "POST", CMS, "application/json", "{not json").await;
    assert_status(code, &body, 400, "BadRequest");
    s.shutdown().await;
}

#[tokio::test]
async fn unknown_resource_and_group_are_not_found() {
    let s = server().await;
    let (code, body) = raw(&s, "GET", "/api/v1/namespaces/default/nothings", "", "").await;
    assert_status(code, &body, 404, "NotFound");
    let (code, body) = raw(&s, "GET", "/apis/nope.dev/v1/things", "", "").await;
    assert_status(code, &body, 404, "NotFound");
    let (code, body) = raw(&s, "GET", "/not/an/api/path", "", "").await;
    assert_status(code, &body, 404, "NotFound");
    s.shutdown().await;
}

#[tokio::test]
async fn missing_object_is_not_found_with_details() {
    let s = server().await;
    let (code, body) = raw(&s, "GET", "/apis/apps/v1/namespaces/default/deployments/ghost", "", "").await;
    assert_status(code, &body, 404, "NotFound");
    assert_eq!(body["message"], "deployments.apps \"ghost\" not found");
    assert_eq!(body["details"], json!({"name": "ghost", "group": "apps", "kind": "deployments"}));
    s.shutdown().await;
}

#[tokio::test]
async fn mismatched_namespace_or_name_in_body_is_bad_request() {
    let s = server().await;
    let other_ns = json!({"metadata": {"name": "a", "namespace": "kube-system"}}).to_string();
    let (code, body) = raw(&s, "POST", CMS, "application/json", &other_ns).await;
    assert_status(code, &body, 400, "BadRequest");
    raw(&s, "POST", CMS, "application/json", &json!({"metadata": {"name": "a"}}).to_string()).await;
    let renamed = json!({"metadata": {"name": "b"}}).to_string();
    let (code, body) = raw(&s, "PUT", &format!("{CMS}/a"), "application/json", &renamed).await;
    assert_status(code, &body, 400, "BadRequest");
    assert_eq!(body["message"], "the name of the object (b) does not match the name on the URL (a)");
    let wrong_kind = json!({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "k"}}).to_string();
    let (code, body) = raw(&s, "POST", CMS, "application/json", &wrong_kind).await;
    assert_status(code, &body, 400, "BadRequest");
    s.shutdown().await;
}

#[tokio::test]
async fn unsupported_methods_are_method_not_allowed() {
    let s = server().await;
    let (code, body) = raw(&s, "PUT", CMS, "application/json", "{}").await;
    assert_status(code, &body, 405, "MethodNotAllowed");
    let (code, body) = raw(&s, "POST", "/apis", "application/json", "{}").await;
    assert_status(code, &body, 405, "MethodNotAllowed");
    s.shutdown().await;
}

#[tokio::test]
async fn creating_in_a_missing_namespace_is_not_found() {
    let s = server().await;
    let (code, body) =
        raw(&s, "POST", "/api/v1/namespaces/ghost/configmaps", "application/json", &json!({"metadata": {"name": "a"}}).to_string()).await;
    assert_status(code, &body, 404, "NotFound");
    assert_eq!(body["message"], "namespaces \"ghost\" not found");
    s.shutdown().await;
}

#[tokio::test]
async fn custom_resources_are_validated_against_the_crd_schema() {
    let s = server().await;
    create_widget_crd(&s).await;
    let path = "/apis/example.dev/v1/namespaces/default/widgets";
    let bad = json!({"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "x"}, "spec": {"priority": "urgent"}});
    let (code, body) = raw(&s, "POST", path, "application/json", &bad.to_string()).await;
    assert_status(code, &body, 422, "Invalid");
    assert_eq!(
        body["message"],
        "Widget.example.dev \"x\" is invalid: spec.priority: Unsupported value: \"urgent\": supported values: \"high\", \"normal\", \"low\""
    );
    let cause = &body["details"]["causes"][0];
    assert_eq!(cause["field"], "spec.priority");
    assert_eq!(cause["reason"], "FieldValueNotSupported");
    assert_eq!(body["details"]["name"], "x");

    let good =
        json!({"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "x"}, "spec": {"priority": "high", "unknown": 1}});
    let (code, created) = raw(&s, "POST", path, "application/json", &good.to_string()).await;
    assert_eq!(code, 201, "{created}");
    assert!(created["spec"].get("unknown").is_none(), "unknown fields are pruned");

    let patch = json!({"spec": {"size": "big"}}).to_string();
    let (code, body) = raw(&s, "PATCH", &format!("{path}/x"), "application/merge-patch+json", &patch).await;
    assert_status(code, &body, 422, "Invalid");
    assert_eq!(body["details"]["causes"][0]["reason"], "FieldValueTypeInvalid");
    s.shutdown().await;
}

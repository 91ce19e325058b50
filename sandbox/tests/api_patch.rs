//! PATCH content types and server-side apply field ownership.
#[path = "api_support.rs"]
mod support;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;

async fn setup() -> (warren_sandbox::ApiServer, Api<ConfigMap>) {
    let s = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(s.client());
    (s, api)
}

fn status(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn merge_json_and_strategic_patches_apply() {
    let (s, api) = setup().await;
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}})).unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
    let merged = api.patch("c", &PatchParams::default(), &Patch::Merge(json!({"data": {"a": null, "c": "3"}}))).await.unwrap();
    assert_eq!(merged.data.unwrap(), [("b".to_string(), "2".to_string()), ("c".to_string(), "3".to_string())].into());
    let ops = json!([{"op": "replace", "path": "/data/b", "value": "20"}]).to_string();
    let (code, patched) = raw(&s, "PATCH", "/api/v1/namespaces/default/configmaps/c", "application/json-patch+json", &ops).await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(patched["data"]["b"], "20");
    let failing = json!([{"op": "test", "path": "/data/b", "value": "nope"}]).to_string();
    let (code, body) = raw(&s, "PATCH", "/api/v1/namespaces/default/configmaps/c", "application/json-patch+json", &failing).await;
    assert_status(code, &body, 400, "BadRequest");
    let smp = api.patch("c", &PatchParams::default(), &Patch::Strategic(json!({"data": {"d": "4"}}))).await.unwrap();
    assert_eq!(smp.data.unwrap().len(), 3);
    s.shutdown().await;
}

#[tokio::test]
async fn server_side_apply_creates_tracks_managers_and_reports_conflicts() {
    let (s, api) = setup().await;
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"replicas": "1", "owner": "a"}});
    let created = api.patch("c", &PatchParams::apply("manager-a"), &Patch::Apply(&body)).await.unwrap();
    let fields = created.metadata.managed_fields.clone().unwrap();
    assert_eq!(fields.len(), 1);
    assert_eq!(fields[0].manager.as_deref(), Some("manager-a"));
    assert_eq!(fields[0].operation.as_deref(), Some("Apply"));
    let owned = serde_json::to_value(&fields[0].fields_v1).unwrap();
    assert_eq!(owned, json!({"f:data": {"f:owner": {}, "f:replicas": {}}}));

    // Same value: shared ownership, no conflict.
    let same = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"replicas": "1"}});
    let shared = api.patch("c", &PatchParams::apply("manager-b"), &Patch::Apply(&same)).await.unwrap();
    assert_eq!(shared.metadata.managed_fields.unwrap().len(), 2);

    let different = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"owner": "b"}});
    let err = status(api.patch("c", &PatchParams::apply("manager-b"), &Patch::Apply(&different)).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert_eq!(err.message, "Apply failed with 1 conflict: conflict with \"manager-a\": .data.owner");
    let cause = &err.details.as_ref().unwrap().causes[0];
    assert_eq!(cause.field, ".data.owner");
    assert_eq!(cause.reason, "FieldManagerConflict");

    let forced = api.patch("c", &PatchParams::apply("manager-b").force(), &Patch::Apply(&different)).await.unwrap();
    assert_eq!(forced.data.as_ref().unwrap()["owner"], "b");
    let a = forced.metadata.managed_fields.unwrap().into_iter().find(|m| m.manager.as_deref() == Some("manager-a")).unwrap();
    assert_eq!(serde_json::to_value(&a.fields_v1).unwrap(), json!({"f:data": {"f:replicas": {}}}));
    s.shutdown().await;
}

#[tokio::test]
async fn apply_drops_fields_a_manager_stops_applying() {
    let (s, api) = setup().await;
    let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"keep": "1", "drop": "2"}});
    api.patch("c", &PatchParams::apply("m"), &Patch::Apply(&first)).await.unwrap();
    let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"keep": "1"}});
    let after = api.patch("c", &PatchParams::apply("m"), &Patch::Apply(&second)).await.unwrap();
    assert_eq!(after.data.unwrap().keys().collect::<Vec<_>>(), vec!["keep"]);
    s.shutdown().await;
}

#[tokio::test]
async fn apply_bodies_may_be_yaml() {
    let (s, _api) = setup().await;
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: y\ndata:\n  k: v\n";
    let (code, body) =
        raw(&s, "PATCH", "/api/v1/namespaces/default/configmaps/y?fieldManager=yaml-test", "application/apply-patch+yaml", yaml).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["data"]["k"], "v");
    let (code, body) = raw(&s, "PATCH", "/api/v1/namespaces/default/configmaps/y", "application/apply-patch+yaml", yaml).await;
    assert_status(code, &body, 400, "BadRequest");
    s.shutdown().await;
}

#[tokio::test]
async fn unknown_patch_content_type_is_unsupported_media_type() {
    let (s, api) = setup().await;
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
    let (code, body) = raw(&s, "PATCH", "/api/v1/namespaces/default/configmaps/c", "text/plain", "{}").await;
    assert_status(code, &body, 415, "UnsupportedMediaType");
    s.shutdown().await;
}

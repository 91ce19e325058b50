//! Create / get / list / update / delete of built-in kinds through the typed kube client.
#[path = "api_support.rs"]
mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})).unwrap()
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}
    }))
    .unwrap()
}

fn api_error(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn default_namespaces_exist_at_start() {
    let s = server().await;
    let ns: Api<Namespace> = Api::all(s.client());
    let names: Vec<String> = ns.list(&ListParams::default()).await.unwrap().items.into_iter().map(|n| n.metadata.name.unwrap()).collect();
    assert_eq!(names, vec!["default", "kube-system"]);
    s.shutdown().await;
}

#[tokio::test]
async fn create_fills_server_metadata_and_rejects_duplicates() {
    let s = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(s.client());
    let mut generated = cm("", json!({}));
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let created = api.create(&PostParams::default(), &generated).await.unwrap();
    let name = created.metadata.name.clone().unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.resource_version.is_some());
    api.create(&PostParams::default(), &cm("a", json!({}))).await.unwrap();
    let err = api_error(api.create(&PostParams::default(), &cm("a", json!({}))).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(err.message, "configmaps \"a\" already exists");
    s.shutdown().await;
}

#[tokio::test]
async fn list_filters_by_label_and_field_selectors_and_reports_resource_version() {
    let s = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(s.client());
    api.create(&PostParams::default(), &cm("web", json!({"app": "web", "tier": "front"}))).await.unwrap();
    api.create(&PostParams::default(), &cm("api", json!({"app": "api"}))).await.unwrap();
    let last = api.create(&PostParams::default(), &cm("db", json!({"app": "db", "tier": "back"}))).await.unwrap();
    let names = |sel: &str, field: &str| {
        let api = api.clone();
        let mut lp = ListParams::default();
        if !sel.is_empty() {
            lp = lp.labels(sel);
        }
        if !field.is_empty() {
            lp = lp.fields(field);
        }
        async move { api.list(&lp).await.unwrap().items.into_iter().map(|c| c.metadata.name.unwrap()).collect::<Vec<_>>() }
    };
    assert_eq!(names("app in (web,db)", "").await, vec!["db", "web"]);
    assert_eq!(names("app notin (web,db)", "").await, vec!["api"]);
    assert_eq!(names("tier", "").await, vec!["db", "web"]);
    assert_eq!(names("!tier", "").await, vec!["api"]);
    assert_eq!(names("app=web,tier=front", "").await, vec!["web"]);
    assert_eq!(names("", "metadata.name=api").await, vec!["api"]);
    assert_eq!(names("", "metadata.namespace=default,metadata.name!=api").await, vec!["db", "web"]);
    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.metadata.resource_version, last.metadata.resource_version);
    let other: Api<ConfigMap> = Api::namespaced(s.client(), "kube-system");
    assert!(other.list(&ListParams::default()).await.unwrap().items.is_empty());
    let all: Api<ConfigMap> = Api::all(s.client());
    assert_eq!(all.list(&ListParams::default()).await.unwrap().items.len(), 3);
    s.shutdown().await;
}

#[tokio::test]
async fn update_with_stale_resource_version_conflicts() {
    let s = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(s.client());
    let v1 = api.create(&PostParams::default(), &cm("c", json!({}))).await.unwrap();
    let mut next = v1.clone();
    next.data = Some([("k".to_string(), "2".to_string())].into());
    let v2 = api.replace("c", &PostParams::default(), &next).await.unwrap();
    assert_ne!(v2.metadata.resource_version, v1.metadata.resource_version);
    assert_eq!(v2.metadata.generation, Some(2));
    let err = api_error(api.replace("c", &PostParams::default(), &next).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(err.message.contains("the object has been modified"), "{}", err.message);
    s.shutdown().await;
}

#[tokio::test]
async fn generation_bumps_only_on_spec_changes() {
    let s = server().await;
    let api: Api<Deployment> = Api::default_namespaced(s.client());
    api.create(&PostParams::default(), &deployment("web")).await.unwrap();
    let labelled = api.patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}}))).await.unwrap();
    assert_eq!(labelled.metadata.generation, Some(1));
    let scaled = api.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}}))).await.unwrap();
    assert_eq!(scaled.metadata.generation, Some(2));
    s.shutdown().await;
}

#[tokio::test]
async fn status_subresource_separates_status_from_the_main_resource() {
    let s = server().await;
    let api: Api<Deployment> = Api::default_namespaced(s.client());
    api.create(&PostParams::default(), &deployment("web")).await.unwrap();
    let main = api.patch("web", &PatchParams::default(), &Patch::Merge(json!({"status": {"replicas": 5}}))).await.unwrap();
    assert!(main.status.is_none(), "status written through the main resource");
    let st = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 9}, "metadata": {"labels": {"a": "b"}}, "status": {"replicas": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(st.status.unwrap().replicas, Some(5));
    assert_eq!(st.spec.replicas, Some(1));
    assert!(st.metadata.labels.is_none());
    assert_eq!(st.metadata.generation, Some(1));
    s.shutdown().await;
}

#[tokio::test]
async fn scale_subresource_reads_and_writes_replicas() {
    let s = server().await;
    let api: Api<Deployment> = Api::default_namespaced(s.client());
    api.create(&PostParams::default(), &deployment("web")).await.unwrap();
    let scale = api.get_scale("web").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(1));
    assert_eq!(scale.status.unwrap().selector.as_deref(), Some("app=web"));
    api.patch_scale("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 4}}))).await.unwrap();
    assert_eq!(api.get("web").await.unwrap().spec.replicas, Some(4));
    s.shutdown().await;
}

#[tokio::test]
async fn delete_returns_the_object_and_missing_is_not_found() {
    let s = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(s.client());
    api.create(&PostParams::default(), &cm("c", json!({}))).await.unwrap();
    let deleted = api.delete("c", &DeleteParams::default()).await.unwrap();
    let obj = deleted.left().expect("the deleted object, not a Status");
    assert_eq!(obj.metadata.name.as_deref(), Some("c"));
    let err = api_error(api.get("c").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert_eq!(err.message, "configmaps \"c\" not found");
    let err = api_error(api.delete("c", &DeleteParams::default()).await.unwrap_err());
    assert_eq!(err.code, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn delete_collection_removes_matching_objects() {
    let s = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(s.client());
    api.create(&PostParams::default(), &cm("a", json!({"x": "1"}))).await.unwrap();
    api.create(&PostParams::default(), &cm("b", json!({"x": "2"}))).await.unwrap();
    api.delete_collection(&DeleteParams::default(), &ListParams::default().labels("x=1")).await.unwrap();
    let left: Vec<String> = api.list(&ListParams::default()).await.unwrap().items.into_iter().map(|c| c.metadata.name.unwrap()).collect();
    assert_eq!(left, vec!["b"]);
    s.shutdown().await;
}

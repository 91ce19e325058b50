//! Finalizers and owner-reference garbage collection.
#[path = "api_support.rs"]
mod support;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy, WatchEvent, WatchParams};
use serde_json::json;
use support::*;

fn cm(v: serde_json::Value) -> ConfigMap {
    serde_json::from_value(v).unwrap()
}

fn owner_ref(owner: &ConfigMap) -> serde_json::Value {
    json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name, "uid": owner.metadata.uid}])
}

#[tokio::test]
async fn finalizers_delay_removal_until_emptied() {
    let s = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(s.client());
    let created =
        api.create(&PostParams::default(), &cm(json!({"metadata": {"name": "f", "finalizers": ["example.dev/cleanup"]}}))).await.unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    let mut events = api.watch(&WatchParams::default(), &rv).await.unwrap().boxed();

    let marked = api.delete("f", &DeleteParams::default()).await.unwrap().left().unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_ne!(marked.metadata.resource_version.as_deref(), Some(rv.as_str()));
    let still = api.get("f").await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_some());
    match events.next().await.unwrap().unwrap() {
        WatchEvent::Modified(o) => assert!(o.metadata.deletion_timestamp.is_some()),
        other => panic!("expected MODIFIED, got {other:?}"),
    }

    api.patch("f", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    match events.next().await.unwrap().unwrap() {
        WatchEvent::Deleted(o) => assert_eq!(o.metadata.name.as_deref(), Some("f")),
        other => panic!("expected DELETED, got {other:?}"),
    }
    assert_eq!(api.get_opt("f").await.unwrap(), None);
    s.shutdown().await;
}

#[tokio::test]
async fn deleting_an_owner_collects_dependents_without_another_live_owner() {
    let s = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(s.client());
    let owner = api.create(&PostParams::default(), &cm(json!({"metadata": {"name": "owner"}}))).await.unwrap();
    let other = api.create(&PostParams::default(), &cm(json!({"metadata": {"name": "other"}}))).await.unwrap();
    api.create(&PostParams::default(), &cm(json!({"metadata": {"name": "child", "ownerReferences": owner_ref(&owner)}}))).await.unwrap();
    let mut two = owner_ref(&owner);
    two.as_array_mut().unwrap().extend(owner_ref(&other).as_array().unwrap().clone());
    api.create(&PostParams::default(), &cm(json!({"metadata": {"name": "shared", "ownerReferences": two}}))).await.unwrap();
    api.create(
        &PostParams::default(),
        &cm(json!({"metadata": {"name": "guarded", "ownerReferences": owner_ref(&owner), "finalizers": ["example.dev/x"]}})),
    )
    .await
    .unwrap();

    api.delete("owner", &DeleteParams::background()).await.unwrap();
    assert_eq!(api.get_opt("child").await.unwrap(), None);
    assert!(api.get_opt("shared").await.unwrap().is_some(), "a dependent with another live owner stays");
    let guarded = api.get("guarded").await.unwrap();
    assert!(guarded.metadata.deletion_timestamp.is_some(), "finalizers of dependents are honoured");
    s.shutdown().await;
}

#[tokio::test]
async fn orphan_propagation_removes_owner_references_instead() {
    let s = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(s.client());
    let owner = api.create(&PostParams::default(), &cm(json!({"metadata": {"name": "owner"}}))).await.unwrap();
    api.create(&PostParams::default(), &cm(json!({"metadata": {"name": "child", "ownerReferences": owner_ref(&owner)}}))).await.unwrap();
    let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Orphan), ..Default::default() };
    api.delete("owner", &dp).await.unwrap();
    let child = api.get("child").await.unwrap();
    assert!(child.metadata.owner_references.is_none());
    s.shutdown().await;
}

#[tokio::test]
async fn delete_preconditions_are_checked() {
    let s = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(s.client());
    api.create(&PostParams::default(), &cm(json!({"metadata": {"name": "p"}}))).await.unwrap();
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions { uid: Some("not-the-uid".into()), resource_version: None }),
        ..Default::default()
    };
    match api.delete("p", &dp).await.unwrap_err() {
        kube::Error::Api(st) => assert_eq!((st.code, st.reason.as_str()), (409, "Conflict")),
        other => panic!("{other}"),
    }
    assert!(api.get_opt("p").await.unwrap().is_some());
    s.shutdown().await;
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_objects() {
    let s = server().await;
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(s.client());
    ns.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "tmp"}})).unwrap()).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(s.client(), "tmp");
    api.create(&PostParams::default(), &cm(json!({"metadata": {"name": "c"}}))).await.unwrap();
    ns.delete("tmp", &DeleteParams::default()).await.unwrap();
    let all: Api<ConfigMap> = Api::all(s.client());
    assert!(all.list(&Default::default()).await.unwrap().items.is_empty());
    s.shutdown().await;
}

//! coordination.k8s.io/v1 Leases, as leader election uses them: create, conflict on a stale
//! `resourceVersion`, discovery.
#[path = "api_support.rs"]
mod support;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::*;

fn lease(holder: &str) -> Lease {
    serde_json::from_value(json!({
        "metadata": {"name": "warren-operator"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": 0,
                 "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": "2026-01-01T00:00:00.000000Z"}
    }))
    .unwrap()
}

#[tokio::test]
async fn leases_are_created_once_and_updated_with_optimistic_concurrency() {
    let s = server().await;
    let api: Api<Lease> = Api::namespaced(s.client(), "default");
    let created = api.create(&PostParams::default(), &lease("op-a")).await.unwrap();
    let spec = created.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("op-a"));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert_eq!(spec.renew_time.unwrap().0.to_string(), "2026-01-01T00:00:00Z");

    // A second candidate creating the same Lease loses with 409 AlreadyExists.
    match api.create(&PostParams::default(), &lease("op-b")).await {
        Err(kube::Error::Api(status)) => assert_eq!((status.code, status.reason.as_str()), (409, "AlreadyExists")),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }

    // Two candidates read the same version; the first write wins, the second gets a Conflict.
    let mut renew = created.clone();
    renew.spec.as_mut().unwrap().renew_time =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime("2026-01-01T00:00:02Z".parse().unwrap()));
    let renewed = api.replace("warren-operator", &PostParams::default(), &renew).await.unwrap();
    assert_ne!(renewed.metadata.resource_version, created.metadata.resource_version);
    let mut steal = created.clone();
    steal.spec.as_mut().unwrap().holder_identity = Some("op-b".into());
    match api.replace("warren-operator", &PostParams::default(), &steal).await {
        Err(kube::Error::Api(status)) => assert_eq!((status.code, status.reason.as_str()), (409, "Conflict")),
        other => panic!("expected Conflict, got {other:?}"),
    }
    let stored = api.get("warren-operator").await.unwrap();
    assert_eq!(stored.spec.unwrap().holder_identity.as_deref(), Some("op-a"));
    s.shutdown().await;
}

#[tokio::test]
async fn leases_are_discoverable_and_namespaced() {
    let s = server().await;
    let (code, body) = raw(&s, "GET", "/apis/coordination.k8s.io/v1", "application/json", "").await;
    assert_eq!(code, 200, "{body}");
    let leases = body["resources"].as_array().unwrap().iter().find(|r| r["name"] == "leases").expect("leases listed");
    assert_eq!((leases["kind"].as_str(), leases["namespaced"].as_bool()), (Some("Lease"), Some(true)));
    let api: Api<Lease> = Api::namespaced(s.client(), "no-such-namespace");
    match api.create(&PostParams::default(), &lease("op-a")).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 404),
        other => panic!("expected NotFound for a missing namespace, got {other:?}"),
    }
    s.shutdown().await;
}

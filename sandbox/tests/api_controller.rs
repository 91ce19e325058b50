//! A kube-rs `Controller` runs unmodified against the local API server.
#[path = "api_support.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{conditions, wait::await_condition, watcher};
use kube::{CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use support::*;

#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[kube(group = "test.warren.dev", version = "v1", kind = "Greeting", namespaced, status = "GreetingStatus", shortname = "gr")]
pub struct GreetingSpec {
    pub name: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
pub struct GreetingStatus {
    pub message: String,
    pub observed_generation: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct ReconcileError(#[from] kube::Error);

async fn reconcile(g: Arc<Greeting>, api: Arc<Api<Greeting>>) -> Result<Action, ReconcileError> {
    let status = json!({"status": {"message": format!("hello, {}", g.spec.name), "observed_generation": g.metadata.generation}});
    api.patch_status(&g.name_any(), &PatchParams::default(), &Patch::Merge(status)).await?;
    Ok(Action::await_change())
}

fn error_policy(_: Arc<Greeting>, _: &ReconcileError, _: Arc<Api<Greeting>>) -> Action {
    Action::requeue(Duration::from_millis(200))
}

#[tokio::test]
async fn controller_reconciles_a_custom_resource_and_patches_its_status() {
    let s = server().await;
    let client = s.client();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Greeting::crd()).await.unwrap();
    await_condition(crds, "greetings.test.warren.dev", conditions::is_crd_established()).await.unwrap();

    let api: Api<Greeting> = Api::default_namespaced(client.clone());
    let controller =
        Controller::new(api.clone(), watcher::Config::default()).run(reconcile, error_policy, Arc::new(api.clone())).for_each(|_| async {});
    let handle = tokio::spawn(controller);

    api.create(&PostParams::default(), &Greeting::new("world", GreetingSpec { name: "world".into() })).await.unwrap();
    let done = await_condition(api.clone(), "world", |g: Option<&Greeting>| {
        g.and_then(|g| g.status.as_ref()).is_some_and(|s| s.message == "hello, world")
    });
    let greeting = done.await.unwrap().unwrap();
    assert_eq!(greeting.status.unwrap().observed_generation, Some(1));
    assert_eq!(greeting.spec.name, "world");

    api.patch("world", &PatchParams::default(), &Patch::Merge(json!({"spec": {"name": "again"}}))).await.unwrap();
    let again = await_condition(api.clone(), "world", |g: Option<&Greeting>| {
        g.and_then(|g| g.status.as_ref()).is_some_and(|s| s.message == "hello, again")
    });
    assert_eq!(again.await.unwrap().unwrap().status.unwrap().observed_generation, Some(2));
    handle.abort();
    s.shutdown().await;
}

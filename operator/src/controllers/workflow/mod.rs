//! The Workflow controller: runs a Workflow's steps as child Jobs (`<workflow>-<step>`, owned by
//! the Workflow so that deleting it deletes them), starts the next steps as soon as a child Job
//! finishes (the children are watched, no polling), cancels steps by deleting their Jobs, and
//! writes the Workflow's status.
//!
//! Owns: creating and deleting child Jobs, the Workflow's status, TTL deletion. Must not: touch a
//! child Job's status (the Job controller and the report consumer own it).

pub mod plan;
pub mod status;
pub mod template;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tracing::Instrument;

use super::ErrorBackoff;
use crate::crd::{Job, Workflow};
use crate::metrics::{self, ControllerLabels, ErrorLabels};

const CONTROLLER: &str = "workflow";

/// What a Workflow reconcile needs.
pub struct WorkflowContext {
    pub client: Client,
    /// Every Job by owner (the operator's shared [`super::JobWatch`]); a reconcile never sees
    /// an older child than its trigger.
    pub jobs: Arc<super::index::Index<Job>>,
    pub backoff: ErrorBackoff,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Workflow has no uid")]
    MissingUid,
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApiError",
            Error::MissingUid => "MissingUid",
        }
    }
}

async fn reconcile(wf: Arc<Workflow>, ctx: Arc<WorkflowContext>) -> Result<Action, Error> {
    let started = Instant::now();
    metrics::global().reconciles.get_or_create(&ControllerLabels { controller: CONTROLLER }).inc();
    let span = tracing::info_span!("reconcile", kind = "Workflow", namespace = wf.namespace(), name = wf.name_any());
    let result = reconcile_inner(wf, &ctx).instrument(span).await;
    metrics::global()
        .reconcile_duration
        .get_or_create(&ControllerLabels { controller: CONTROLLER })
        .observe(started.elapsed().as_secs_f64());
    result
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

async fn reconcile_inner(wf: Arc<Workflow>, ctx: &WorkflowContext) -> Result<Action, Error> {
    let uid = wf.uid().ok_or(Error::MissingUid)?;
    if wf.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = wf.namespace().unwrap_or_default();
    let children: BTreeMap<String, Job> =
        ctx.jobs.get(&super::index::owner_key(&namespace, &uid)).into_iter().map(|j| (j.name_any(), (*j).clone())).collect();
    let now = jiff::Timestamp::now();
    let plan = plan::plan(&wf, &children, now);
    if let Some(invalid) = &plan.invalid {
        tracing::info!(reason = invalid.reason(), message = %invalid, "Workflow is invalid; nothing runs");
    }

    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    for name in &plan.delete {
        match jobs.delete(name, &DeleteParams::background()).await {
            Ok(_) => tracing::info!(job = %name, "cancelled a step: deleted its Job"),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for job in &plan.create {
        match jobs.create(&PostParams::default(), job).await {
            Ok(_) => tracing::info!(job = %job.name_any(), "created a step's Job"),
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(e.into()),
        }
    }

    let workflows: Api<Workflow> = Api::namespaced(ctx.client.clone(), &namespace);
    let status = status::desired(&wf, &plan, &Time(now));
    if wf.status.as_ref() != Some(&status) {
        let patch: json_patch::Patch =
            serde_json::from_value(serde_json::json!([{ "op": "add", "path": "/status", "value": status }])).expect("a JSON patch");
        let written = workflows.patch_status(&wf.name_any(), &PatchParams::default(), &Patch::Json::<()>(patch)).await;
        metrics::global().record_status_write(metrics::WORKFLOW, &written);
        match written {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
    }
    if plan.delete_workflow {
        tracing::info!("ttlSecondsAfterFinished passed: deleting the Workflow");
        match workflows.delete(&wf.name_any(), &DeleteParams::background()).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }
    ctx.backoff.reset(&uid);
    Ok(match plan.requeue_after {
        Some(after) => Action::requeue(after),
        None if status.phase.is_finished() || plan.invalid.is_some() => Action::await_change(),
        // A safety net only: children changing trigger reconciles through the watch.
        None => Action::requeue(Duration::from_secs(300)),
    })
}

fn error_policy(wf: Arc<Workflow>, error: &Error, ctx: Arc<WorkflowContext>) -> Action {
    metrics::global().reconcile_errors.get_or_create(&ErrorLabels { controller: CONTROLLER, reason: error.reason() }).inc();
    let delay = ctx.backoff.next(&wf.uid().unwrap_or_default());
    tracing::warn!(namespace = wf.namespace(), name = wf.name_any(), reason = error.reason(), %error, ?delay, "Workflow reconcile failed");
    Action::requeue(delay)
}

/// Runs the Workflow controller until the stream ends (in `config`'s watch namespace, if any);
/// `jobs` and `children` come from the operator's shared [`super::JobWatch`].
pub async fn run(client: Client, config: super::Config, jobs: Arc<super::index::Index<Job>>, children: super::Changes<Job>) {
    let ctx = Arc::new(WorkflowContext { client: client.clone(), jobs, backoff: ErrorBackoff::default() });
    Controller::new(config.watched::<Workflow>(client), watcher::Config::default())
        .owns_shared_stream(children)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

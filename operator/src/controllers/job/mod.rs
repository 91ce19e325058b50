//! The Job controller: validates a Job, enqueues its tasks with publisher confirms (resuming from
//! the confirmed watermark after a restart), and leaves the status to the [`JobBook`].

pub mod plan;
pub mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tracing::Instrument;
use warren_protocol::{JobRef, TASK_CONTENT_TYPE, names};

use super::Context;
use crate::book::BookError;
use crate::broker::BrokerError;
use crate::crd::{Job, WorkerPool};
use crate::metrics::{self, ControllerLabels, ErrorLabels, PoolLabels};
use plan::Plan;

const CONTROLLER: &str = "job";
/// Setting (or changing) this annotation on a Job replays its dead letters once per value:
/// `kubectl annotate wjob NAME warren.dev/replay-dead-letters=$(date +%s) --overwrite`.
pub const REPLAY_ANNOTATION: &str = "warren.dev/replay-dead-letters";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Status(#[from] BookError),
    #[error("Job has no uid")]
    MissingUid,
    #[error("replaying the Job's dead letters: {0}")]
    Replay(#[from] crate::replay::ReplayError),
    #[error("recording the Job's retry queues on its WorkerPool: {0}")]
    RecordRetryQueues(#[source] kube::Error),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Broker(e) => e.reason(),
            Error::Status(_) => "StatusWriteFailed",
            Error::MissingUid => "MissingUid",
            Error::RecordRetryQueues(_) => "RecordRetryQueuesFailed",
            Error::Replay(e) => e.reason(),
        }
    }
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    metrics::global().reconciles.get_or_create(&ControllerLabels { controller: CONTROLLER }).inc();
    let span = tracing::info_span!("reconcile", kind = "Job", namespace = job.namespace(), name = job.name_any());
    let result = reconcile_inner(job, &ctx).instrument(span).await;
    metrics::global()
        .reconcile_duration
        .get_or_create(&ControllerLabels { controller: CONTROLLER })
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(job: Arc<Job>, ctx: &Context) -> Result<Action, Error> {
    let uid = job.uid().ok_or(Error::MissingUid)?;
    if job.metadata.deletion_timestamp.is_some() {
        ctx.book.forget(&uid);
        return Ok(Action::await_change());
    }
    ctx.book.observe(job.clone());
    let namespace = job.namespace().unwrap_or_default();
    let pool = ctx.pools.get(&ObjectRef::new(&job.spec.pool_ref).within(&namespace));
    let job_ref = JobRef { namespace: namespace.clone(), name: job.name_any(), uid: uid.clone() };
    if let Some(token) = job.annotations().get(REPLAY_ANNOTATION) {
        if ctx.book.replayed_token(&uid).as_ref() != Some(token) {
            let filter = crate::replay::Filter { job_uid: Some(uid.clone()), ..Default::default() };
            let summary = crate::replay::replay(&ctx.config.amqp_url, &namespace, &job.spec.pool_ref, &filter).await?;
            tracing::info!(token, replayed = summary.replayed, failed = summary.failed, "replayed the Job's dead letters (annotation)");
            ctx.book.set_replayed_token(&uid, token);
            ctx.book.flush(&uid).await?;
        }
    }
    let mut last_write = Instant::now();
    let mut retry_queues_recorded = false;
    loop {
        match plan::plan(&job, pool.as_deref(), ctx.book.enqueued(&uid), ctx.config.publish_batch) {
            Plan::Blocked(blocker) => {
                tracing::info!(reason = blocker.reason(), message = blocker.message(), "Job is blocked");
                let permanent = blocker.is_permanent();
                ctx.book.set_blocker(&uid, Some(blocker));
                ctx.book.flush(&uid).await?;
                ctx.backoff.reset(&uid);
                // A pool appearing or becoming ready triggers a reconcile through `watches`.
                return Ok(if permanent { Action::await_change() } else { Action::requeue(Duration::from_secs(60)) });
            }
            Plan::Publish { indexes, retry } => {
                ctx.book.set_blocker(&uid, None);
                if !retry_queues_recorded {
                    if let Some(pool) = pool.as_deref() {
                        record_retry_queues(ctx, pool, &retry).await?;
                    }
                    retry_queues_recorded = true;
                }
                let bodies: Vec<Vec<u8>> =
                    indexes.clone().map(|i| plan::envelope(&job, &job_ref, i, &retry).to_json()).collect();
                let exchange = names::pool_exchange(&namespace, &job.spec.pool_ref);
                ctx.broker.publish_confirmed(&exchange, &job.spec.priority, TASK_CONTENT_TYPE, &bodies).await?;
                metrics::global()
                    .tasks_published
                    .get_or_create(&PoolLabels {
                        namespace: namespace.clone(),
                        pool: job.spec.pool_ref.clone(),
                        priority: job.spec.priority.clone(),
                    })
                    .inc_by(bodies.len() as u64);
                ctx.book.set_enqueued(&uid, indexes.end);
                tracing::debug!(enqueued = indexes.end, "tasks confirmed by the broker");
                // Record the watermark at a bounded rate, and always once at the end.
                if indexes.end >= job.task_count() || last_write.elapsed() >= ctx.config.status_interval {
                    ctx.book.flush(&uid).await?;
                    last_write = Instant::now();
                }
            }
            Plan::Follow => {
                ctx.book.set_blocker(&uid, None);
                ctx.backoff.reset(&uid);
                return Ok(if ctx.book.is_complete(&uid) {
                    Action::await_change()
                } else {
                    Action::requeue(Duration::from_secs(300))
                });
            }
        }
    }
}

/// Adds the retry-tier queues the Job's tasks may use to its pool's `status.retryQueues` before
/// any task is enqueued, so that deleting the pool can delete them even after the Job is gone.
/// A JSON merge patch of map keys only adds: it cannot undo what the pool controller writes.
async fn record_retry_queues(ctx: &Context, pool: &WorkerPool, retry: &warren_protocol::RetryPolicy) -> Result<(), Error> {
    let namespace = pool.namespace().unwrap_or_default();
    let wanted = crate::controllers::worker_pool::plan::retry_queues(&namespace, &pool.name_any(), retry);
    let recorded = pool.status.as_ref().map(|s| &s.retry_queues);
    let missing: std::collections::BTreeMap<_, _> =
        wanted.into_iter().filter(|(k, _)| recorded.is_none_or(|r| !r.contains_key(k))).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let api: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({ "status": { "retryQueues": missing } });
    api.patch_status(&pool.name_any(), &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .map_err(Error::RecordRetryQueues)?;
    Ok(())
}

fn error_policy(job: Arc<Job>, error: &Error, ctx: Arc<Context>) -> Action {
    metrics::global()
        .reconcile_errors
        .get_or_create(&ErrorLabels { controller: CONTROLLER, reason: error.reason() })
        .inc();
    let delay = ctx.backoff.next(&job.uid().unwrap_or_default());
    tracing::warn!(namespace = job.namespace(), name = job.name_any(), reason = error.reason(), %error, ?delay, "Job reconcile failed");
    Action::requeue(delay)
}

/// Runs the Job controller until the stream ends.
pub async fn run(ctx: Arc<Context>) {
    let jobs: Api<Job> = ctx.config.watched(ctx.client.clone());
    let pools: Api<WorkerPool> = ctx.config.watched(ctx.client.clone());
    let controller = Controller::new(jobs, watcher::Config::default());
    let store = controller.store();
    controller
        .watches(pools, watcher::Config::default(), move |pool: WorkerPool| {
            let namespace = pool.namespace();
            let name = pool.name_any();
            store
                .state()
                .into_iter()
                .filter(|job| job.namespace() == namespace && job.spec.pool_ref == name)
                .map(|job| ObjectRef::from_obj(&*job))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

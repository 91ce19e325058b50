//! The Job controller's effects on the broker and on the WorkerPool: what a [`super::plan::Plan`]
//! decided, carried out. The driver ([`super`]) chooses; these functions do, and report what
//! happened to the [`super::book::JobBook`].

use std::time::Instant;

use kube::{Api, ResourceExt};
use warren_protocol::signature::ReportKey;
use warren_protocol::{JobRef, names};

use super::{Error, plan};
use crate::controllers::Context;
use crate::crd::{Job, WorkerPool};
use crate::metrics::{self, PoolLabels};

/// Re-enqueues the tasks workers dropped while the Job was suspended (each at its attempt), and
/// records them in the book once the broker confirmed them.
pub(super) async fn republish(
    ctx: &Context,
    job: &Job,
    job_ref: &JobRef,
    uid: &str,
    tasks: &[(u32, u32)],
    retry: &warren_protocol::RetryPolicy,
    key: &ReportKey,
) -> Result<(), Error> {
    let namespace = job.namespace().unwrap_or_default();
    let indexes: Vec<u32> = tasks.iter().map(|(i, _)| *i).collect();
    ctx.book.begin_republish(uid, &indexes);
    let bodies: Vec<Vec<u8>> = tasks
        .iter()
        .map(|&(index, attempt)| {
            let envelope = plan::envelope(job, job_ref, index, retry);
            warren_protocol::TaskEnvelope { attempt: attempt.max(1), ..envelope }.to_json()
        })
        .collect();
    let exchange = names::pool_exchange(&namespace, &job.spec.pool_ref);
    let published = ctx.broker.publish_tasks_confirmed(&exchange, &job.spec.priority, key, &bodies).await;
    ctx.book.end_republish(uid, &indexes, published.is_ok());
    published?;
    tracing::info!(tasks = indexes.len(), "re-enqueued tasks dropped while the Job was suspended");
    ctx.book.flush(uid).await?;
    Ok(())
}

/// Waits for a published batch's confirms, then advances the watermark past it; the watermark
/// is written at a bounded rate, and always once at the end.
pub(super) async fn confirm_batch(
    ctx: &Context,
    job: &Job,
    uid: &str,
    published: std::ops::Range<u32>,
    confirms: crate::broker::Confirms,
    last_write: &mut Instant,
) -> Result<(), Error> {
    ctx.broker.confirmed(confirms).await?;
    metrics::global()
        .tasks_published
        .get_or_create(&PoolLabels {
            namespace: job.namespace().unwrap_or_default(),
            pool: job.spec.pool_ref.clone(),
            priority: job.spec.priority.clone(),
        })
        .inc_by(u64::from(published.end - published.start));
    ctx.book.set_enqueued(uid, published.end);
    tracing::debug!(enqueued = published.end, "tasks confirmed by the broker");
    if published.end >= job.task_count() || last_write.elapsed() >= ctx.config.status_interval {
        ctx.book.flush(uid).await?;
        *last_write = Instant::now();
    }
    Ok(())
}

/// Adds the retry-tier queues the Job's tasks may use to its pool's `status.retryQueues` before
/// any task is enqueued, so that deleting the pool can delete them even after the Job is gone.
/// A JSON merge patch of map keys only adds: it cannot undo what the pool controller writes.
pub(super) async fn record_retry_queues(ctx: &Context, pool: &WorkerPool, retry: &warren_protocol::RetryPolicy) -> Result<(), Error> {
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
    let written = api.patch_status(&pool.name_any(), &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await;
    metrics::global().record_status_write(metrics::WORKER_POOL, &written);
    written.map_err(Error::RecordRetryQueues)?;
    // Declared now, as workers would on their first retry: the autoscaler counts the retries
    // waiting in them from the start. Not fatal: a worker declares a missing tier itself.
    let queue_type = pool.spec.queue_type.as_str();
    for delay in missing.keys().filter_map(|k| k.parse::<u64>().ok()) {
        let declared = match ctx.broker.scratch().await {
            Ok(channel) => warren_protocol::topology::declare_retry_tier(&channel, &namespace, &pool.name_any(), delay, queue_type)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = declared {
            tracing::warn!(%error, delay_ms = delay, "could not declare a retry tier of the pool");
        }
    }
    Ok(())
}

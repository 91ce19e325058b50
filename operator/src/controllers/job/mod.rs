//! The Job controller: validates a Job, enqueues its tasks with publisher confirms (resuming from
//! the confirmed watermark after a restart), suspends and resumes it (re-enqueueing the tasks
//! workers dropped), ends it at its deadline or failure budget, deduplicates it by
//! `idempotencyKey`, and leaves the status to the [`JobBook`]. The cancelled Jobs are broadcast
//! to the workers by [`control`].

mod apply;
pub mod attempts;
pub mod book;
pub mod control;
pub mod ledger;
pub mod plan;
pub mod reports;
pub mod status;
pub mod waiting;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use tracing::Instrument;
use warren_protocol::signature::ReportKey;
use warren_protocol::{JobRef, names, now_ms};

use super::Context;
use crate::broker::BrokerError;
use crate::controllers::job::book::BookError;
use crate::crd::{Job, WorkerPool};
use crate::metrics::{self, ControllerLabels, ErrorLabels};
use plan::Plan;

const CONTROLLER: &str = "job";
/// How soon a blocked Job looks again at the latest (its triggers may be missed).
const BLOCKED_RECHECK: Duration = Duration::from_secs(60);
/// How soon a Job held by flow control is looked at again without a grant (a missed trigger).
const HELD_RECHECK: Duration = Duration::from_secs(2);
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
    #[error(
        "replaying the Job's dead letters: {failed} could not be sent back (first: {error}); they stay in the dead-letter queue and are tried again"
    )]
    ReplayIncomplete { failed: u32, error: String },
    #[error("recording the Job's retry queues on its WorkerPool: {0}")]
    RecordRetryQueues(#[source] kube::Error),
    #[error("reading the Job's WorkerPool: {0}")]
    ReadPool(#[source] kube::Error),
    #[error("reading the key of WorkerPool {pool}, which signs its tasks: {source}")]
    ReadPoolKey { pool: String, source: kube::Error },
    #[error(
        "WorkerPool {pool} has no task key yet (Secret {pool}-warren-report-key): its workers run only signed tasks, so none is published until the pool controller writes it"
    )]
    PoolKeyMissing { pool: String },
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Broker(e) => e.reason(),
            Error::Status(_) => "StatusWriteFailed",
            Error::MissingUid => "MissingUid",
            Error::RecordRetryQueues(_) => "RecordRetryQueuesFailed",
            Error::ReadPool(_) => "ReadPoolFailed",
            Error::Replay(e) => e.reason(),
            Error::ReplayIncomplete { .. } => "ReplayIncomplete",
            Error::ReadPoolKey { .. } => "ReadPoolKeyFailed",
            Error::PoolKeyMissing { .. } => "PoolKeyMissing",
        }
    }
}

/// The key of pool `namespace/pool`, which signs the tasks published for it
/// ([`warren_protocol::signature::sign_task`]).
async fn pool_key(ctx: &Context, namespace: &str, pool: &str) -> Result<ReportKey, Error> {
    let key =
        ctx.report_keys.get(namespace, pool, true, false).await.map_err(|source| Error::ReadPoolKey { pool: pool.to_string(), source })?;
    key.ok_or_else(|| Error::PoolKeyMissing { pool: pool.to_string() })
}

async fn reconcile(job: Arc<Job>, state: Arc<State>) -> Result<Action, Error> {
    let started = Instant::now();
    metrics::global().reconciles.get_or_create(&ControllerLabels { controller: CONTROLLER }).inc();
    let span = tracing::info_span!("reconcile", kind = "Job", namespace = job.namespace(), name = job.name_any());
    let result = reconcile_inner(job, &state).instrument(span).await;
    metrics::global()
        .reconcile_duration
        .get_or_create(&ControllerLabels { controller: CONTROLLER })
        .observe(started.elapsed().as_secs_f64());
    result
}

/// What the Job controller's reconciles share beyond the [`Context`].
struct State {
    ctx: Arc<Context>,
    /// Every Job, by pool, owner and idempotency key.
    index: Arc<super::index::Index<Job>>,
    /// Who got each `(namespace, idempotencyKey)` first in this process: concurrent reconciles
    /// of two Jobs with one key must not both decide to run.
    claims: std::sync::Mutex<std::collections::HashMap<(String, String), String>>,
    /// Reconciles of the Jobs that mirror an idempotencyKey holder (see [`run`]).
    mirrors: futures::channel::mpsc::UnboundedSender<ObjectRef<Job>>,
}

impl State {
    /// Has the other Jobs of `same_key` reconciled: they mirror `holder`, which just changed.
    fn reconcile_mirrors(&self, holder: &Job, same_key: &[Arc<Job>]) {
        for job in same_key.iter().filter(|j| j.uid() != holder.uid()) {
            let _ = self.mirrors.unbounded_send(ObjectRef::from_obj(&**job));
        }
    }
}

async fn reconcile_inner(job: Arc<Job>, state: &State) -> Result<Action, Error> {
    let (ctx, index) = (&*state.ctx, &state.index);
    let uid = job.uid().ok_or(Error::MissingUid)?;
    if job.metadata.deletion_timestamp.is_some() {
        ctx.book.forget(&uid);
        return Ok(Action::await_change());
    }
    ctx.book.observe(job.clone());
    let namespace = job.namespace().unwrap_or_default();
    let pool = match ctx.pools.get(&ObjectRef::new(&job.spec.pool_ref).within(&namespace)) {
        Some(pool) => Some(pool),
        // The pool watch may lag the Job watch (a pool and its Job applied together): ask the
        // API server before telling the user that the pool does not exist.
        None => Api::<WorkerPool>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(&job.spec.pool_ref)
            .await
            .map_err(Error::ReadPool)?
            .map(Arc::new),
    };
    let job_ref = JobRef { namespace: namespace.clone(), name: job.name_any(), uid: uid.clone() };
    if let Some(token) = job.annotations().get(REPLAY_ANNOTATION)
        && ctx.book.replayed_token(&uid).as_ref() != Some(token)
    {
        let filter =
            crate::replay::Filter { job_uid: Some(uid.clone()), rate: Some(crate::replay::ANNOTATION_REPLAY_RATE), ..Default::default() };
        let key = pool_key(ctx, &namespace, &job.spec.pool_ref).await?;
        let summary =
            crate::replay::replay(&ctx.config.amqp_url, &ctx.config.amqp_tls, &namespace, &job.spec.pool_ref, &key, &filter).await?;
        tracing::info!(token, replayed = summary.replayed, failed = summary.failed, "replayed the Job's dead letters (annotation)");
        if let Some(error) = summary.first_error {
            // Not recorded: the next reconcile (with backoff) replays what is left.
            return Err(Error::ReplayIncomplete { failed: summary.failed, error });
        }
        ctx.book.set_replayed_token(&uid, token);
        ctx.book.flush(&uid).await?;
    }
    let same_key: Vec<Arc<Job>> = match &job.spec.idempotency_key {
        Some(key) => index.get(&super::index::idempotency_key(&job.namespace().unwrap_or_default(), key)),
        None => Vec::new(),
    };
    let holder = job.spec.idempotency_key.as_ref().and_then(|key| {
        let mut claims = state.claims.lock().expect("claims lock");
        let claim_key = (namespace.clone(), key.clone());
        let holder = plan::key_holder(&job, same_key.iter().map(|j| &**j), claims.get(&claim_key).map(String::as_str))?;
        claims.insert(claim_key, holder.clone());
        Some(holder)
    });
    if holder.as_deref() == Some(uid.as_str()) {
        state.reconcile_mirrors(&job, &same_key);
    }
    let earlier = holder
        .filter(|holder| *holder != uid)
        .and_then(|holder| same_key.iter().find(|j| j.uid().as_deref() == Some(holder.as_str())).cloned());
    let earlier = earlier.as_deref();
    let mut last_write = Instant::now();
    let mut retry_queues_recorded = false;
    // One published batch may await its confirms while the next is published, so the broker
    // never idles between batches. The watermark only covers confirmed batches, in order.
    let mut unconfirmed: Option<(std::ops::Range<u32>, crate::broker::Confirms)> = None;
    // The pool's key signs every task published for it; read when the first one is.
    let mut key: Option<ReportKey> = None;
    loop {
        let now = now_ms();
        let mut observed = ctx.book.observed(&uid);
        observed.queue_unavailable = ctx.queue_health.unavailable(&namespace, &job.spec.pool_ref);
        if let Some((published, _)) = &unconfirmed {
            observed.enqueued = observed.enqueued.max(published.end);
        }
        let next = plan::plan(&job, pool.as_deref(), earlier, &observed, &ctx.config.limits, now);
        if !matches!(next, Plan::Publish { .. })
            && let Some((published, confirms)) = unconfirmed.take()
        {
            // Settle the batch in flight, then decide again on the confirmed watermark.
            apply::confirm_batch(ctx, &job, &uid, published, confirms, &mut last_write).await?;
            continue;
        }
        match next {
            Plan::Blocked(blocker) => {
                tracing::info!(reason = blocker.reason(), message = blocker.message(), "Job is blocked");
                let permanent = blocker.is_permanent();
                // A pool appearing or becoming ready triggers a reconcile through the shared pool
                // watch; the deadline, if any, still applies while the Job waits. A pool being set
                // up is also looked at again soon (1 s, doubling), not in a minute: a missed
                // trigger (a watch restart) costs seconds, not the recheck period.
                let setting_up = matches!(blocker, plan::Blocker::PoolNotReady(_));
                let starts_in = match blocker {
                    plan::Blocker::DelayedUntil(_, at_ms) => Some(Duration::from_millis(at_ms.saturating_sub(now).max(50))),
                    _ => None,
                };
                ctx.book.set_blocker(&uid, Some(blocker));
                ctx.book.flush(&uid).await?;
                let recheck = if let Some(starts_in) = starts_in {
                    ctx.backoff.reset(&uid);
                    starts_in.min(BLOCKED_RECHECK)
                } else if setting_up {
                    ctx.backoff.next(&uid).min(BLOCKED_RECHECK)
                } else {
                    ctx.backoff.reset(&uid);
                    BLOCKED_RECHECK
                };
                let wait = plan::deadline_in_ms(&job, &observed, now).map_or(recheck, |ms| Duration::from_millis(ms).min(recheck));
                return Ok(if permanent { Action::await_change() } else { Action::requeue(wait) });
            }
            Plan::Publish { indexes, retry } => {
                ctx.book.set_blocker(&uid, None);
                if !retry_queues_recorded {
                    if let Some(pool) = pool.as_deref() {
                        apply::record_retry_queues(ctx, pool, &retry).await?;
                    }
                    retry_queues_recorded = true;
                }
                // Stamped with the publish time: workers measure how long tasks waited in the queue.
                let bodies: Vec<Vec<u8>> = indexes
                    .clone()
                    .map(|i| warren_protocol::TaskEnvelope { enqueued_at_ms: now, ..plan::envelope(&job, &job_ref, i, &retry) }.to_json())
                    .collect();
                let exchange = names::pool_exchange(&namespace, &job.spec.pool_ref);
                let key = match &key {
                    Some(key) => key,
                    None => key.insert(pool_key(ctx, &namespace, &job.spec.pool_ref).await?),
                };
                let confirms = ctx.broker.publish_tasks(&exchange, &job.spec.priority, key, &bodies).await?;
                if let Some((published, previous)) = unconfirmed.replace((indexes, confirms)) {
                    apply::confirm_batch(ctx, &job, &uid, published, previous, &mut last_write).await?;
                }
            }
            Plan::Suspended => {
                tracing::info!("Job is suspended");
                ctx.book.set_blocker(&uid, None);
                ctx.book.set_active_since(&uid, None);
                ctx.book.flush(&uid).await?;
                ctx.backoff.reset(&uid);
                return Ok(Action::await_change());
            }
            Plan::StartClock => ctx.book.set_active_since(&uid, Some(now)),
            Plan::Terminate(termination) => {
                tracing::warn!(reason = %termination.reason, message = %termination.message, "Job ends early; cancelling its remaining tasks");
                ctx.book.set_blocker(&uid, None);
                ctx.book.terminate(&uid, termination);
                ctx.book.flush(&uid).await?;
                ctx.backoff.reset(&uid);
                return Ok(Action::await_change());
            }
            Plan::Republish { tasks, retry } => {
                if !ctx.book.workers_know_resumed(&uid) {
                    // The resume reaches the workers within a broadcast interval.
                    return Ok(Action::requeue(control::CHECK_INTERVAL));
                }
                let key = match &key {
                    Some(key) => key,
                    None => key.insert(pool_key(ctx, &namespace, &job.spec.pool_ref).await?),
                };
                apply::republish(ctx, &job, &job_ref, &uid, &tasks, &retry, key).await?;
            }
            Plan::Held { wake_in_ms } => {
                // The admission reconciles the Job when it grants more; the recheck only
                // covers a missed trigger.
                ctx.book.set_blocker(&uid, None);
                ctx.book.touch(&uid);
                ctx.backoff.reset(&uid);
                let recheck = wake_in_ms.map_or(HELD_RECHECK, |ms| Duration::from_millis(ms).min(HELD_RECHECK));
                return Ok(Action::requeue(recheck));
            }
            Plan::Follow { wake_in_ms } => {
                ctx.book.set_blocker(&uid, None);
                // Triggered by its pool's change, perhaps: why its tasks wait may have changed.
                ctx.book.touch(&uid);
                ctx.backoff.reset(&uid);
                let wake = wake_in_ms.map_or(Duration::from_secs(300), |ms| Duration::from_millis(ms).min(Duration::from_secs(300)));
                return Ok(if ctx.book.is_complete(&uid) || ctx.book.observed(&uid).terminated {
                    Action::await_change()
                } else {
                    Action::requeue(wake)
                });
            }
        }
    }
}

fn error_policy(job: Arc<Job>, error: &Error, state: Arc<State>) -> Action {
    let ctx = &state.ctx;
    metrics::global().reconcile_errors.get_or_create(&ErrorLabels { controller: CONTROLLER, reason: error.reason() }).inc();
    let delay = ctx.backoff.next(&job.uid().unwrap_or_default());
    tracing::warn!(namespace = job.namespace(), name = job.name_any(), reason = error.reason(), %error, ?delay, "Job reconcile failed");
    Action::requeue(delay)
}

/// Runs the Job controller until the stream ends; `jobs` and `changed` come from the operator's
/// shared [`super::JobWatch`].
pub async fn run(
    ctx: Arc<Context>,
    jobs: Store<Job>,
    index: Arc<super::index::Index<Job>>,
    changed: super::Changes<Job>,
    pool_changes: super::Changes<WorkerPool>,
    queue_health_changes: futures::channel::mpsc::UnboundedReceiver<ObjectRef<WorkerPool>>,
    admitted: futures::channel::mpsc::UnboundedReceiver<ObjectRef<Job>>,
) {
    let control_exchange = names::control_exchange(&ctx.config.reports_queue);
    let broadcaster = tokio::spawn(crate::controllers::job::control::run(
        ctx.config.amqp_url.clone(),
        ctx.config.amqp_tls.clone(),
        control_exchange,
        crate::controllers::job::control::Sources {
            book: ctx.book.clone(),
            jobs: jobs.clone(),
            circuits: ctx.circuits.clone(),
            signer: ctx.control_signer.clone(),
        },
    ));
    let (mirror_tx, mirror_rx) = futures::channel::mpsc::unbounded();
    let jobs_of = {
        let index = index.clone();
        move |namespace: Option<String>, name: &str| -> Vec<ObjectRef<Job>> {
            index.refs(&super::index::pool_key(namespace.as_deref().unwrap_or_default(), name))
        }
    };
    let jobs_of_unhealthy = jobs_of.clone();
    // A queue of a pool going down or coming back: its Jobs read that from `ctx.queue_health`.
    let queue_health_changes =
        queue_health_changes.flat_map(move |pool| futures::stream::iter(jobs_of_unhealthy(pool.namespace.clone(), &pool.name))).boxed();
    Controller::for_shared_stream(changed, jobs.clone())
        // The pools from the shared watch whose store `ctx.pools` is: a Job triggered by its
        // pool's change (becoming ready, or not) reads that change, not an older copy.
        .watches_shared_stream(pool_changes, move |pool: Arc<WorkerPool>| jobs_of(pool.namespace(), &pool.name_any()))
        // Duplicates of an idempotencyKey mirror the Job holding it: the holder's reconciles
        // send them here.
        .reconcile_on(mirror_rx)
        .reconcile_on(queue_health_changes)
        // Jobs the flow control granted tasks to publish.
        .reconcile_on(admitted)
        .shutdown_on_signal()
        .run(reconcile, error_policy, Arc::new(State { ctx, index, claims: Default::default(), mirrors: mirror_tx }))
        .for_each(|_| futures::future::ready(()))
        .await;
    broadcaster.abort();
}

//! Settling a delivery: an outcome is reported and the delivery acknowledged only once the report
//! is confirmed (report-then-ack); retries and dead letters are published with confirms before
//! their outcome is reported; deliveries that are not run (cancelled Job, redelivered, refused,
//! handed back on shutdown) are disposed of here too. A publish that fails returns the delivery
//! to its queue after a pause, never in a hot loop.

use std::sync::Arc;
use std::time::Duration;

use lapin::{
    BasicProperties,
    message::Delivery,
    types::{AMQPValue, FieldTable, LongString},
};
use tracing::Instrument;
use warren_protocol::admit::TaskRefusal;
use warren_protocol::headers::TASK_SIGNATURE;
use warren_protocol::{FailureDisposition, TASK_CONTENT_TYPE, TaskEnvelope, TaskEventKind, names};

use crate::acks::Receipt;
use crate::metrics::TaskOutcome;
use crate::report::{PublishError, publish_confirmed};
use crate::topology::{self, TopologyError};
use crate::{RETRY_TIER_HEADER, dead_letter_header, dead_letter_reason, lost};

use super::Shared;
use super::session::{Ready, Session};

/// Pause before returning a task whose outcome could not be published, so that a missing
/// queue does not turn into a hot redelivery loop.
pub const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// Why handling the outcome of a task failed (the task is then returned to its queue).
#[derive(Debug, thiserror::Error)]
pub(super) enum OutcomeError {
    #[error("opening a channel: {0}")]
    Channel(#[from] lapin::Error),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("publishing: {0}")]
    Publish(#[from] PublishError),
}

impl OutcomeError {
    pub(super) fn reason(&self) -> &'static str {
        match self {
            OutcomeError::Channel(_) => "ChannelFailed",
            OutcomeError::Topology(e) => e.reason(),
            OutcomeError::Publish(e) => e.reason(),
        }
    }

    /// True when the error means the connection or a channel is broken.
    pub(super) fn breaks_session(&self) -> bool {
        matches!(self, OutcomeError::Channel(_) | OutcomeError::Publish(PublishError::Broker(_)))
    }
}

fn text(s: impl Into<Vec<u8>>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn dead_letter_headers(reason: &str, last_error: &str, envelope: Option<&TaskEnvelope>) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(dead_letter_header::REASON.into(), text(reason));
    headers.insert(dead_letter_header::LAST_ERROR.into(), text(last_error));
    if let Some(e) = envelope {
        headers.insert(dead_letter_header::ATTEMPTS.into(), AMQPValue::LongLongInt(i64::from(e.attempt)));
        headers.insert(dead_letter_header::JOB_UID.into(), text(e.job.uid.as_str()));
        headers.insert(dead_letter_header::TASK_INDEX.into(), AMQPValue::LongLongInt(i64::from(e.index)));
    }
    headers
}

/// Publishes a dead letter (confirmed) with the standard headers and any `extra` ones.
pub(super) async fn publish_dead_letter(
    shared: &Shared,
    session: &Session,
    delivery: &Delivery,
    reason: &str,
    last_error: &str,
    envelope: Option<&TaskEnvelope>,
    extra: &[(&str, AMQPValue)],
) -> Result<(), PublishError> {
    let dlq = names::dead_letter_queue(&shared.config.namespace, &shared.config.pool);
    let mut headers = dead_letter_headers(reason, last_error, envelope);
    // The body goes unchanged, and so does its signature: a replay sends back only dead letters
    // the pool's key signed, so that one put into the dead-letter queue by anyone else is never
    // signed by the replay.
    if let Some(signature) = delivery.properties.headers().as_ref().and_then(|h| h.inner().get(TASK_SIGNATURE)) {
        headers.insert(TASK_SIGNATURE.into(), signature.clone());
    }
    for (name, value) in extra {
        headers.insert((*name).into(), value.clone());
    }
    let mut properties = BasicProperties::default().with_headers(headers);
    if let Some(content_type) = delivery.properties.content_type() {
        properties = properties.with_content_type(content_type.clone());
    }
    publish_confirmed(&session.publish, "", &dlq, &delivery.data, properties).await
}

/// After a publish that should have settled a delivery failed: the delivery goes back to its
/// queue after a pause (so that a missing queue is no hot loop), and a broken channel ends the
/// session.
async fn return_after_failed_publish(session: &Session, receipt: Receipt, e: &PublishError, what: &str) {
    tracing::warn!(error = %e, reason = e.reason(), "{what} failed; returning the delivery");
    if matches!(e, PublishError::Broker(_)) {
        session.lost.cancel();
    }
    tokio::time::sleep(REQUEUE_PAUSE).await;
    session.acks.requeue(receipt);
}

/// A message this pool does not run — not a task (`malformed`), or not signed with the pool's
/// key (`unsigned`, `bad-signature`) — goes to the dead-letter queue with its reason, is counted,
/// and is reported to no one: it may not speak for any Job.
pub(super) async fn dead_letter_refused(
    shared: Arc<Shared>,
    session: Arc<Session>,
    delivery: Delivery,
    receipt: Receipt,
    refusal: TaskRefusal,
) {
    let TaskRefusal { reason, error } = refusal;
    tracing::warn!(%error, reason, routing_key = %delivery.routing_key, "dead-lettering a message this pool does not run");
    match publish_dead_letter(&shared, &session, &delivery, reason, &error, None, &[]).await {
        Ok(()) => {
            shared.metrics.task_refused(reason);
            session.acks.ack(receipt);
        }
        Err(e) => return_after_failed_publish(&session, receipt, &e, "dead-lettering a refused message").await,
    }
}

/// A delivery of this pool's queues as a task, or why this pool does not run it.
pub(super) fn admit(shared: &Shared, delivery: &Delivery) -> Result<TaskEnvelope, TaskRefusal> {
    let signature = warren_protocol::amqp::text_header(&delivery.properties, TASK_SIGNATURE);
    let key = shared.config.report_key.as_ref().map(|k| k.bytes());
    warren_protocol::admit::task(key, &delivery.data, signature.as_deref())
}

/// The headers of a task message this worker publishes: its signature under the pool's key (when
/// the worker has one) beside `headers`.
fn signed(shared: &Shared, body: &[u8], mut headers: FieldTable) -> FieldTable {
    if let Some(key) = &shared.config.report_key {
        warren_protocol::amqp::sign_task_into(&mut headers, key.bytes(), body);
    }
    headers
}

/// A task of a cancelled Job: reported `Cancelled` (so the operator can re-enqueue it if the
/// Job resumes), then acknowledged without running.
pub(super) async fn drop_cancelled(shared: Arc<Shared>, session: Arc<Session>, receipt: Receipt, envelope: TaskEnvelope, reason: String) {
    let span = tracing::info_span!("task", job = %envelope.job.name, job_uid = %envelope.job.uid, task = envelope.index, attempt = envelope.attempt);
    async {
        tracing::info!(%reason, "dropping a task of a cancelled Job");
        report_then_ack(&shared, &session, receipt, &envelope, TaskEventKind::Cancelled { reason }, None).await;
    }
    .instrument(span)
    .await
}

/// A redelivered task (its worker was lost during its previous delivery): moved to the suspect
/// queue to run alone, or, at its delivery limit, dead-lettered (`worker-lost`) and reported
/// failed. See [`crate::lost`].
pub(super) async fn move_redelivered(
    shared: Arc<Shared>,
    session: Arc<Session>,
    receipt: Receipt,
    delivery: Delivery,
    envelope: TaskEnvelope,
) {
    let span = tracing::info_span!("task", job = %envelope.job.name, job_uid = %envelope.job.uid, task = envelope.index, attempt = envelope.attempt);
    async {
        let headers = delivery.properties.headers().as_ref();
        let (was_suspect, lost_runs) = lost::read_headers(headers);
        match lost::on_redelivery(was_suspect, lost_runs, envelope.retry.max_attempts) {
            lost::Redelivered::Suspect { lost_runs } => {
                tracing::warn!(
                    lost_runs,
                    was_suspect,
                    "the task's worker was lost during its previous delivery; moving it to the suspect queue to run alone"
                );
                let queue = names::suspect_queue(&shared.config.namespace, &shared.config.pool);
                let properties = BasicProperties::default()
                    .with_content_type(TASK_CONTENT_TYPE.into())
                    .with_headers(lost::suspect_headers(headers, lost_runs));
                match publish_confirmed(&session.publish, "", &queue, &delivery.data, properties).await {
                    Ok(()) => {
                        shared.metrics.task_redelivered(&envelope.priority, false);
                        session.acks.ack(receipt);
                    }
                    Err(e) => return_after_failed_publish(&session, receipt, &e, "moving a task to the suspect queue").await,
                }
            }
            lost::Redelivered::DeadLetter { lost_runs } => {
                let error = format!(
                    "the worker was lost during {lost_runs} runs of this task, the last {} of them with the task running alone \
                     (killed, out of memory, or its channel closed, e.g. by the broker's consumer_timeout)",
                    lost_runs - 1
                );
                tracing::warn!(lost_runs, "the task took its worker down at every run; dead-lettering it");
                let reason = dead_letter_reason::WORKER_LOST;
                let extra = [(dead_letter_header::LOST_RUNS, AMQPValue::LongLongInt(i64::from(lost_runs)))];
                if let Err(e) = publish_dead_letter(&shared, &session, &delivery, reason, &error, Some(&envelope), &extra).await {
                    return_after_failed_publish(&session, receipt, &e, "dead-lettering a task").await;
                    return;
                }
                shared.metrics.task_redelivered(&envelope.priority, true);
                let disposition = FailureDisposition::DeadLettered { reason: reason.to_string() };
                report_then_ack(&shared, &session, receipt, &envelope, TaskEventKind::Failed { error, disposition }, None).await;
            }
        }
    }
    .instrument(span)
    .await
}

/// A buffered task that never started, handed back on shutdown: republished as it came (then
/// acknowledged) rather than returned with a nack, so that its next delivery is not flagged
/// `redelivered` and taken for a task that took its worker down.
pub(super) async fn return_unstarted(session: Arc<Session>, ready: Ready) {
    let Ready { delivery, receipt, .. } = ready;
    let mut properties = BasicProperties::default().with_content_type(TASK_CONTENT_TYPE.into());
    if let Some(headers) = delivery.properties.headers() {
        properties = properties.with_headers(headers.clone());
    }
    match publish_confirmed(&session.publish, delivery.exchange.as_str(), delivery.routing_key.as_str(), &delivery.data, properties).await {
        Ok(()) => session.acks.ack(receipt),
        Err(e) => {
            tracing::debug!(error = %e, "republishing an unstarted task failed; returning it");
            session.acks.requeue(receipt);
        }
    }
}

/// Reports an outcome and acknowledges the delivery once the report is confirmed by the broker
/// (a crash before that means a redelivery, never a lost outcome). False if the connection was
/// lost first (the delivery is then redelivered). `output` is the end of what the attempt
/// printed, if it ran and printed.
pub(super) async fn report_then_ack(
    shared: &Shared,
    session: &Session,
    receipt: Receipt,
    envelope: &TaskEnvelope,
    kind: TaskEventKind,
    output: Option<String>,
) -> TaskOutcome {
    let finished = match &kind {
        TaskEventKind::Failed { disposition: FailureDisposition::Retrying { .. }, .. } => TaskOutcome::Retried,
        TaskEventKind::Failed { disposition: FailureDisposition::DeadLettered { .. }, .. } => TaskOutcome::DeadLettered,
        TaskEventKind::Cancelled { .. } => TaskOutcome::Cancelled,
        _ => TaskOutcome::Succeeded,
    };
    let confirmed = shared.reporter.outcome_confirmed(envelope, kind, output);
    tokio::select! {
        _ = confirmed => {
            session.acks.ack(receipt);
            finished
        }
        _ = session.lost.cancelled() => {
            tracing::warn!("connection lost before the outcome was reported; the task will be redelivered");
            TaskOutcome::Interrupted
        }
    }
}

async fn ensure_retry_tier(shared: &Shared, session: &Session, tier_ms: u64) -> Result<(), OutcomeError> {
    if shared.retry_tiers.lock().unwrap().contains(&tier_ms) {
        return Ok(());
    }
    let channel = session.connection.create_channel().await?;
    let config = &shared.config;
    topology::declare_retry_tier(&channel, &config.namespace, &config.pool, tier_ms, &config.queue_type).await?;
    let _ = channel.close(200, "OK".into()).await;
    shared.retry_tiers.lock().unwrap().insert(tier_ms);
    Ok(())
}

pub(super) async fn publish_retry(
    shared: &Shared,
    session: &Session,
    envelope: &TaskEnvelope,
    next_attempt: u32,
    tier_ms: u64,
    delay_ms: u64,
) -> Result<(), OutcomeError> {
    ensure_retry_tier(shared, session, tier_ms).await?;
    // A new body (its attempt): signed again, with the pool's key this worker holds.
    let body = TaskEnvelope { attempt: next_attempt, ..envelope.clone() }.to_json();
    let mut headers = FieldTable::default();
    headers.insert(RETRY_TIER_HEADER.into(), text(tier_ms.to_string()));
    let properties = BasicProperties::default()
        .with_content_type(TASK_CONTENT_TYPE.into())
        .with_expiration(delay_ms.to_string().into())
        .with_headers(signed(shared, &body, headers));
    let exchange = topology::retry_exchange(&shared.config.namespace, &shared.config.pool);
    publish_confirmed(&session.publish, &exchange, &envelope.priority, &body, properties).await?;
    Ok(())
}

//! Executing one attempt of a task: the `task` span and metrics, the handler run in its own tokio
//! task under the attempt's timeout, the session's interrupt and its Job's cancellation, and the
//! mapping of what the handler returned (or a panic, a timeout, an oversized result) to an
//! outcome. What to do with a failure is [`crate::retry`]'s decision; settling the delivery is
//! [`super::outcome`]'s.

use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use warren_protocol::{FailureDisposition, TaskEnvelope, TaskEventKind};

use crate::acks::Receipt;
use crate::context::{TaskContext, TaskError, TaskResult};
use crate::control::CancelSet;
use crate::dead_letter_reason;
use crate::metrics::TaskOutcome;
use crate::retry::{FailureAction, decide_failure};

use super::Shared;
use super::builder::Handler;
use super::outcome::{OutcomeError, REQUEUE_PAUSE, publish_dead_letter, publish_retry, report_then_ack};
use super::session::{Ready, Session};

/// How long a cancelled handler gets to return before it is aborted (covers the exec mode's
/// SIGTERM-then-SIGKILL sequence).
pub const HANDLER_WIND_DOWN: Duration = Duration::from_secs(10);

enum Outcome {
    Succeeded(Option<serde_json::Value>),
    Failed {
        error: TaskError,
        reason_override: Option<&'static str>,
    },
    Interrupted,
    /// The task's Job was cancelled while the handler ran (reason from the control message).
    Cancelled(String),
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// The error of a result over [`warren_protocol::MAX_RESULT_BYTES`], if it is.
fn result_too_large(result: Option<&serde_json::Value>) -> Option<String> {
    let size = serde_json::to_vec(result?).map_or(usize::MAX, |v| v.len());
    (size > warren_protocol::MAX_RESULT_BYTES).then(|| {
        format!(
            "the handler's result is {size} bytes, over the limit of {} bytes; return a reference to the data instead",
            warren_protocol::MAX_RESULT_BYTES
        )
    })
}

/// Runs the handler in its own tokio task, under the attempt's timeout and the session's
/// interrupt.
async fn run_handler(
    handler: Handler,
    ctx: TaskContext,
    timeout: Option<Duration>,
    interrupt: CancellationToken,
    mut cancels: watch::Receiver<CancelSet>,
) -> Outcome {
    let cancel = ctx.cancellation_token();
    let job_uid = ctx.job().uid.clone();
    let job_cancelled = async move {
        loop {
            let reason = cancels.borrow_and_update().reason(&job_uid).map(str::to_string);
            if let Some(reason) = reason {
                return reason;
            }
            if cancels.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    };
    let mut handle = tokio::spawn(handler(ctx).in_current_span());
    let time_limit = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let wind_down = async |handle: &mut tokio::task::JoinHandle<TaskResult>| {
        cancel.cancel();
        if tokio::time::timeout(HANDLER_WIND_DOWN, &mut *handle).await.is_err() {
            tracing::warn!("handler ignored cancellation; aborting it");
            handle.abort();
        }
    };
    tokio::select! {
        joined = &mut handle => match joined {
            Ok(Ok(result)) => match result_too_large(result.as_ref()) {
                None => Outcome::Succeeded(result),
                Some(error) => Outcome::Failed {
                    error: TaskError::permanent(error),
                    reason_override: Some(dead_letter_reason::RESULT_TOO_LARGE),
                },
            },
            Ok(Err(error)) => Outcome::Failed { error, reason_override: None },
            Err(e) if e.is_panic() => Outcome::Failed {
                error: TaskError::retryable(format!("handler panicked: {}", panic_message(e.into_panic()))),
                reason_override: None,
            },
            Err(e) => Outcome::Failed { error: TaskError::retryable(format!("handler aborted: {e}")), reason_override: None },
        },
        _ = time_limit => {
            wind_down(&mut handle).await;
            let secs = timeout.unwrap_or_default().as_secs();
            Outcome::Failed { error: TaskError::retryable(format!("timed out after {secs}s")), reason_override: None }
        }
        _ = interrupt.cancelled() => {
            wind_down(&mut handle).await;
            Outcome::Interrupted
        }
        reason = job_cancelled => {
            tracing::info!(%reason, "the task's Job was cancelled; cancelling the handler");
            wind_down(&mut handle).await;
            Outcome::Cancelled(reason)
        }
    }
}

/// Executes one task and disposes of its delivery.
pub(super) async fn execute(shared: Arc<Shared>, session: Arc<Session>, ready: Ready, interrupt: CancellationToken) {
    let Ready { delivery, receipt, envelope } = ready;
    let envelope = Arc::new(envelope);
    let span = tracing::info_span!(
        "task",
        job = %envelope.job.name,
        job_namespace = %envelope.job.namespace,
        job_uid = %envelope.job.uid,
        task = envelope.index,
        attempt = envelope.attempt,
        priority = %envelope.priority,
    );
    async move {
        let priority = envelope.priority.clone();
        shared.metrics.task_started(&priority, envelope.attempt);
        // First attempts only: a retry's wait is its backoff, not the queue. The publisher's
        // clock against this host's: a skew shows as a shorter or longer wait, never negative.
        if envelope.attempt == 1 && envelope.enqueued_at_ms > 0 {
            let waited = warren_protocol::now_ms().saturating_sub(envelope.enqueued_at_ms);
            shared.metrics.queue_waited(&priority, Duration::from_millis(waited));
        }
        let outcome = execute_attempt(&shared, &session, &delivery, receipt, envelope, interrupt).await;
        shared.metrics.task_ended(&priority, outcome);
        shared.stats.task_ended(outcome != TaskOutcome::Interrupted);
    }
    .instrument(span)
    .await
}

/// How the task left: completed (outcome recorded and delivery acked) or
/// [`TaskOutcome::Interrupted`] (returned to the broker).
async fn execute_attempt(
    shared: &Shared,
    session: &Session,
    delivery: &Delivery,
    receipt: Receipt,
    envelope: Arc<TaskEnvelope>,
    interrupt: CancellationToken,
) -> TaskOutcome {
    if let Some(reason) = shared.cancel_reason(&envelope.job.uid) {
        tracing::info!(%reason, "dropping a task of a cancelled Job");
        return report_then_ack(shared, session, receipt, &envelope, TaskEventKind::Cancelled { reason }, None).await;
    }
    // Per-task lines are debug: at thousands of tasks per second they would cost more CPU than
    // the tasks (`RUST_LOG=warren_worker=debug` shows them). Failures stay at warn.
    tracing::debug!("task started");
    shared.reporter.event(&envelope, TaskEventKind::Started);
    let handler_started = Instant::now();
    let mut output_tail = None;
    let outcome = match shared.handlers.select(envelope.task_type.as_deref()) {
        Some(handler) => {
            let ctx = TaskContext::new(envelope.clone(), CancellationToken::new(), shared.reporter.clone());
            output_tail = Some(ctx.output_tail());
            let cancels = shared.cancels.subscribe();
            run_handler(handler.clone(), ctx, envelope.timeout_seconds.map(Duration::from_secs), interrupt, cancels).await
        }
        None => Outcome::Failed {
            error: TaskError::permanent(format!("no handler for task type {:?}", envelope.task_type.as_deref().unwrap_or_default())),
            reason_override: Some(dead_letter_reason::NO_HANDLER),
        },
    };
    match &outcome {
        Outcome::Succeeded(_) => shared.metrics.handler_returned(&envelope.priority, true, handler_started.elapsed()),
        Outcome::Failed { .. } => shared.metrics.handler_returned(&envelope.priority, false, handler_started.elapsed()),
        Outcome::Interrupted | Outcome::Cancelled(_) => {}
    }
    // What the attempt printed goes with its outcome (`warren logs`).
    let output = output_tail.and_then(|tail| tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
    let kind = match outcome {
        Outcome::Interrupted => {
            tracing::warn!("task interrupted; returning it to its queue");
            session.acks.requeue(receipt);
            return TaskOutcome::Interrupted;
        }
        Outcome::Succeeded(result) => {
            tracing::debug!("task succeeded");
            TaskEventKind::Succeeded { result }
        }
        Outcome::Cancelled(reason) => TaskEventKind::Cancelled { reason },
        Outcome::Failed { error, reason_override } => {
            let action = match reason_override {
                Some(reason) => FailureAction::DeadLetter { reason },
                None => decide_failure(&envelope.retry, envelope.attempt, error.is_retryable(), rand::random::<f64>()),
            };
            let (published, disposition) = match action {
                FailureAction::Retry { next_attempt, delay } => {
                    tracing::warn!(error = %error, retry_in_ms = delay.delay_ms, tier_ms = delay.tier_ms, "task failed; retrying");
                    (
                        publish_retry(shared, session, &envelope, next_attempt, delay.tier_ms, delay.delay_ms).await,
                        FailureDisposition::Retrying { delay_ms: delay.delay_ms },
                    )
                }
                FailureAction::DeadLetter { reason } => {
                    tracing::warn!(error = %error, reason, "task failed; dead-lettering");
                    (
                        publish_dead_letter(shared, session, delivery, reason, error.message(), Some(&envelope), &[])
                            .await
                            .map_err(OutcomeError::from),
                        FailureDisposition::DeadLettered { reason: reason.to_string() },
                    )
                }
            };
            if let Err(e) = published {
                tracing::error!(error = %e, reason = e.reason(), "recording the failure failed; returning the task to its queue");
                if e.breaks_session() {
                    session.lost.cancel();
                }
                tokio::time::sleep(REQUEUE_PAUSE).await;
                session.acks.requeue(receipt);
                return TaskOutcome::Interrupted;
            }
            TaskEventKind::Failed { error: error.message().to_string(), disposition }
        }
    };
    let output = if matches!(kind, TaskEventKind::Cancelled { .. }) { None } else { output };
    report_then_ack(shared, session, receipt, &envelope, kind, output).await
}

#[cfg(test)]
mod result_limit_tests {
    use super::result_too_large;

    #[test]
    fn results_up_to_the_limit_pass_and_larger_ones_are_explained() {
        assert_eq!(result_too_large(None), None);
        // A JSON string of n characters serializes to n + 2 bytes.
        let at_limit = serde_json::Value::String("x".repeat(warren_protocol::MAX_RESULT_BYTES - 2));
        assert_eq!(result_too_large(Some(&at_limit)), None);
        let over = serde_json::Value::String("x".repeat(warren_protocol::MAX_RESULT_BYTES - 1));
        assert_eq!(
            result_too_large(Some(&over)).as_deref(),
            Some("the handler's result is 16385 bytes, over the limit of 16384 bytes; return a reference to the data instead")
        );
    }
}

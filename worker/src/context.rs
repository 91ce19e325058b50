//! What a handler sees of its task ([`TaskContext`]) and how it fails ([`TaskError`]).

use std::sync::{Arc, Mutex};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use warren_protocol::{JobRef, TaskEnvelope, TaskEventKind};

use crate::report::Reporter;

/// What a handler returns: an optional small JSON result, or a failure.
pub type TaskResult = Result<Option<serde_json::Value>, TaskError>;

/// The task a handler is executing, and its channel back to the operator.
#[derive(Clone, Debug)]
pub struct TaskContext {
    envelope: Arc<TaskEnvelope>,
    cancel: CancellationToken,
    reporter: Reporter,
    output: Arc<Mutex<OutputTail>>,
}

/// The end of what one attempt printed: sent with its outcome, so that `warren logs` can show
/// it without searching worker logs. Bounded: it keeps the last [`MAX_OUTPUT_BYTES`] at most.
///
/// [`MAX_OUTPUT_BYTES`]: warren_protocol::admit::MAX_OUTPUT_BYTES
#[derive(Debug, Default)]
pub struct OutputTail {
    text: String,
}

impl OutputTail {
    /// Appends one line (without its terminator).
    pub fn push_line(&mut self, line: &str) {
        let max = warren_protocol::admit::MAX_OUTPUT_BYTES;
        // A line longer than the whole tail keeps only its end.
        let line = if line.len() > max {
            let start = (line.len() - max..=line.len()).find(|i| line.is_char_boundary(*i)).unwrap_or(line.len());
            &line[start..]
        } else {
            line
        };
        self.text.push_str(line);
        self.text.push('\n');
        // Amortized: cut back to the limit only when twice over it.
        if self.text.len() > 2 * max {
            warren_protocol::admit::keep_tail_at_char_boundary(&mut self.text, max);
        }
    }

    /// The tail (its last [`warren_protocol::admit::MAX_OUTPUT_BYTES`]), or None if nothing was printed.
    pub fn take(&mut self) -> Option<String> {
        let mut text = std::mem::take(&mut self.text);
        warren_protocol::admit::keep_tail_at_char_boundary(&mut text, warren_protocol::admit::MAX_OUTPUT_BYTES);
        let text = text.trim_end_matches('\n').to_string();
        (!text.is_empty()).then_some(text)
    }
}

impl TaskContext {
    pub(crate) fn new(envelope: Arc<TaskEnvelope>, cancel: CancellationToken, reporter: Reporter) -> Self {
        Self { envelope, cancel, reporter, output: Arc::default() }
    }

    /// The attempt's output tail, which the runtime sends with its outcome.
    pub(crate) fn output_tail(&self) -> Arc<Mutex<OutputTail>> {
        self.output.clone()
    }

    /// Writes a line to the worker's log (in the task's span) and to the attempt's output tail,
    /// which is reported with its outcome (`warren logs wjob/<job> --index N` shows it).
    pub fn log(&self, line: impl AsRef<str>) {
        let line = line.as_ref();
        tracing::info!(%line, "handler output");
        self.record_output(line);
    }

    /// Adds a line to the output tail only (a command's lines, logged by the caller).
    pub(crate) fn record_output(&self, line: &str) {
        self.output.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push_line(line);
    }

    /// The handler's input.
    pub fn payload(&self) -> &serde_json::Value {
        &self.envelope.payload
    }

    /// Index of the task in its Job, `0..total`.
    pub fn index(&self) -> u32 {
        self.envelope.index
    }

    /// Number of tasks in the Job.
    pub fn total(&self) -> u32 {
        self.envelope.total
    }

    /// This attempt, 1-based.
    pub fn attempt(&self) -> u32 {
        self.envelope.attempt
    }

    pub fn max_attempts(&self) -> u32 {
        self.envelope.retry.max_attempts
    }

    pub fn job(&self) -> &JobRef {
        &self.envelope.job
    }

    /// Stable across attempts and redeliveries: use it to make side effects idempotent.
    pub fn idempotency_key(&self) -> &str {
        &self.envelope.idempotency_key
    }

    pub fn priority(&self) -> &str {
        &self.envelope.priority
    }

    pub fn task_type(&self) -> Option<&str> {
        self.envelope.task_type.as_deref()
    }

    /// The whole envelope, for anything not covered above.
    pub fn envelope(&self) -> &TaskEnvelope {
        &self.envelope
    }

    /// Reports progress to the operator. Cheap: reports are batched, and only the latest
    /// progress of a task per batch is sent. `percent` is clamped to 100.
    pub fn progress(&self, percent: u8, message: impl Into<String>) {
        let mut message = message.into();
        // The operator keeps it in the Job status, which must stay small (it cuts it too).
        warren_protocol::admit::truncate_at_char_boundary(&mut message, warren_protocol::admit::MAX_PROGRESS_BYTES);
        self.reporter.event(&self.envelope, TaskEventKind::Progress { percent: percent.min(100), message });
    }

    /// Completes when the attempt is cancelled (timeout or worker shutdown past its grace
    /// period). The handler should stop soon after; its result is then ignored.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The attempt's cancellation token, to hand to code that takes one.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

/// Whether a failure may succeed on another attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Retried per the task's retry policy, then dead-lettered.
    Retryable,
    /// Dead-lettered at once.
    Permanent,
}

/// A failed attempt.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TaskError {
    kind: FailureKind,
    message: String,
}

impl TaskError {
    /// A failure that another attempt may not have (network, overload, ...).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { kind: FailureKind::Retryable, message: message.into() }
    }

    /// A failure that no retry can fix (bad input, ...).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { kind: FailureKind::Permanent, message: message.into() }
    }

    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    pub fn is_retryable(&self) -> bool {
        self.kind == FailureKind::Retryable
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Stable name of the failure kind.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            FailureKind::Retryable => "retryable",
            FailureKind::Permanent => "permanent",
        }
    }
}

/// `?` on any error in a handler makes a retryable failure.
impl From<anyhow::Error> for TaskError {
    fn from(e: anyhow::Error) -> Self {
        TaskError::retryable(format!("{e:#}"))
    }
}

#[cfg(test)]
mod output_tests {
    use super::OutputTail;
    use warren_protocol::admit::MAX_OUTPUT_BYTES;

    #[test]
    fn the_tail_keeps_the_last_lines_within_the_limit() {
        let mut tail = OutputTail::default();
        assert_eq!(tail.take(), None, "nothing printed, nothing sent");
        for i in 0..10_000 {
            tail.push_line(&format!("line {i}"));
        }
        let text = tail.take().unwrap();
        assert!(text.len() <= MAX_OUTPUT_BYTES, "{}", text.len());
        assert!(text.ends_with("line 9999"), "{text}");
        assert!(!text.contains("line 1000\n"), "old lines are gone");
        assert_eq!(tail.take(), None, "taken once");
        tail.push_line(&"x".repeat(3 * MAX_OUTPUT_BYTES));
        tail.push_line("end");
        let text = tail.take().unwrap();
        assert!(text.len() <= MAX_OUTPUT_BYTES && text.ends_with("x\nend"), "{}", text.len());
    }
}

//! Warren worker runtime: the Rust SDK for task handlers and the engine of the generic
//! `warren-worker` binary.
//!
//! A [`Worker`] consumes [`TaskEnvelope`](warren_protocol::TaskEnvelope)s from the work queues of
//! one pool (one channel per priority class), runs at most `concurrency` handlers at once
//! (highest priority first, see [`scheduler`]), and reports every attempt to the operator in
//! batches on the reports queue. A delivery is acknowledged only after its outcome is safely
//! somewhere else: its report batch is confirmed by the broker, and a retry or dead letter
//! is confirmed too. The worker never talks to the Kubernetes API.
//!
//! Pure decisions live in [`scheduler`] (which buffered task runs next), [`retry`] (what to do
//! with a failure), [`report`] (batching), [`acks`] (which frames settle the finished deliveries)
//! and [`exec`] (the exec-mode line and exit-code contract); the I/O is in [`runtime`] and
//! [`topology`].
//!
//! ```no_run
//! use warren_worker::{TaskError, Worker};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let worker = Worker::builder()
//!     .handler(|ctx| async move {
//!         let n = ctx.payload()["n"].as_u64().ok_or_else(|| TaskError::permanent("no n"))?;
//!         ctx.progress(50, "halfway");
//!         Ok(Some(serde_json::json!({ "square": n * n })))
//!     })
//!     .build()?;
//! worker.run_until_signal().await?;
//! # Ok(()) }
//! ```

pub mod acks;
pub mod config;
pub mod context;
pub mod control;
pub mod exec;
pub mod lost;
pub mod metrics;
pub mod report;
pub mod retry;
pub mod runtime;
pub mod scheduler;
pub mod topology;

pub use config::{ConfigError, WorkerConfig};
pub use context::{TaskContext, TaskError, TaskResult};
pub use runtime::{Worker, WorkerBuilder, WorkerError, WorkerSummary};
pub use warren_protocol as protocol;

/// Reasons a task is dead-lettered with (header `warren-reason`, and the `reason` of a
/// `DeadLettered` disposition). Stable: the operator and users match on them.
pub mod dead_letter_reason {
    /// The handler returned a permanent error (or exec exit code 65).
    pub const PERMANENT: &str = "permanent";
    /// A retryable failure on the last allowed attempt.
    pub const ATTEMPTS_EXHAUSTED: &str = "attempts-exhausted";
    /// The message is not a Warren task envelope of a version this worker speaks.
    pub const MALFORMED: &str = "malformed";
    /// The task names a `taskType` no handler is registered for (and there is no default).
    pub const NO_HANDLER: &str = "no-handler";
    /// The handler succeeded but returned a result over `warren_protocol::MAX_RESULT_BYTES`.
    pub const RESULT_TOO_LARGE: &str = "result-too-large";
    /// The task's worker was lost (killed, out of memory, its channel closed) during as many of
    /// its runs as its delivery limit allows, the last ones while it ran alone (see [`crate::lost`]).
    pub const WORKER_LOST: &str = "worker-lost";
}

/// Headers of a dead-lettered message.
pub mod dead_letter_header {
    pub const REASON: &str = "warren-reason";
    pub const LAST_ERROR: &str = "warren-last-error";
    pub const ATTEMPTS: &str = "warren-attempts";
    pub const JOB_UID: &str = "warren-job-uid";
    pub const TASK_INDEX: &str = "warren-task-index";
    /// Runs of the task whose worker was lost (reason `worker-lost`).
    pub const LOST_RUNS: &str = "warren-lost-runs";
}

/// Header of a message published to the retry exchange: the delay tier (milliseconds, as a
/// string) that selects the retry queue.
pub const RETRY_TIER_HEADER: &str = "warren-retry-tier";

/// Environment variable overriding the queue reports are published to (default
/// [`protocol::names::REPORTS_QUEUE`]). Meant for tests that need isolated report streams.
pub const REPORTS_QUEUE_ENV: &str = "WARREN_REPORTS_QUEUE";

/// Environment variable with the address of the worker's `/metrics`, `/healthz`, `/readyz`
/// (e.g. `0.0.0.0:9465`); unset = no HTTP endpoints.
pub const METRICS_ADDR_ENV: &str = "WARREN_METRICS_ADDR";

/// Environment variable holding the exec-mode command as a JSON array of strings.
pub const HANDLER_COMMAND_ENV: &str = "WARREN_HANDLER_COMMAND";

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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
//! [`topology`] (shared with the operator, from `warren_protocol`).
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

pub use config::{ConfigError, WorkerConfig};
pub use context::{TaskContext, TaskError, TaskResult};
pub use runtime::{Worker, WorkerBuilder, WorkerError, WorkerSummary};
pub use warren_protocol as protocol;

pub use warren_protocol::headers::{RETRY_TIER_HEADER, dead_letter_header, dead_letter_reason};
pub use warren_protocol::topology;

/// See [`protocol::worker_env::REPORTS_QUEUE`].
pub const REPORTS_QUEUE_ENV: &str = warren_protocol::worker_env::REPORTS_QUEUE;
/// See [`protocol::worker_env::METRICS_ADDR`].
pub const METRICS_ADDR_ENV: &str = warren_protocol::worker_env::METRICS_ADDR;
/// See [`protocol::worker_env::HANDLER_COMMAND`].
pub const HANDLER_COMMAND_ENV: &str = warren_protocol::worker_env::HANDLER_COMMAND;

pub(crate) use warren_protocol::now_ms;

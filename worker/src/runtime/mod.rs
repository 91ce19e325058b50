//! The worker runtime: connection and reconnection, consumers, the local scheduler, task
//! execution, outcome handling (retry, dead letter, report-then-ack) and graceful shutdown.
//!
//! Decisions are delegated to the pure modules ([`crate::scheduler`], [`crate::retry`],
//! [`crate::report`]); this module only does what they decide.
//!
//! This file owns the [`Worker`] and its run loop: connect (to any node of the broker), run one
//! session, reconnect with backoff after a loss, and the final flush on shutdown. The rest is
//! split by what the code does:
//! - `builder`: [`WorkerBuilder`] and the registered handlers (configuration only, no I/O);
//! - `session`: one connection's life: its channels, the consumers, the control subscription
//!   and the dispatch loop that buffers deliveries and starts tasks;
//! - `task`: executing one attempt: the handler under its timeout, interrupt and Job
//!   cancellation, and what its result means;
//! - `outcome`: settling a delivery: report-then-ack, publishing retries, dead letters and
//!   suspect moves, returning deliveries to the broker.

mod builder;
mod outcome;
mod session;
mod task;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::Connection;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use warren_protocol::WorkerId;

use crate::config::{ConfigError, WorkerConfig};
use crate::control::CancelSet;
use crate::metrics::WorkerMetrics;
use crate::report::{Reporter, ReporterTask, Stats};
use crate::retry::reconnect_delay;

use builder::Handlers;
pub use builder::{Handler, WorkerBuilder};
pub use outcome::REQUEUE_PAUSE;
pub use session::SUSPECT_CHECK;
use session::{SessionEnd, run_session};
pub use task::HANDLER_WIND_DOWN;

/// How long shutdown waits for the last report batch to be confirmed.
pub const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("no task handler registered")]
    NoHandler,
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

impl WorkerError {
    /// Stable name of the error kind.
    pub fn reason(&self) -> &'static str {
        match self {
            WorkerError::Config(e) => e.reason(),
            WorkerError::NoHandler => "NoHandler",
            WorkerError::Signals(_) => "SignalSetupFailed",
        }
    }
}

/// What a worker did during its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerSummary {
    /// Tasks finished with any outcome (succeeded, retry scheduled, dead-lettered).
    pub completed_total: u64,
    /// Tasks returned to their queue unfinished (shutdown past grace, lost connection).
    pub interrupted_total: u64,
}

/// A configured worker, ready to [`run`](Worker::run).
pub struct Worker {
    config: WorkerConfig,
    handlers: Handlers,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("config", &self.config).finish_non_exhaustive()
    }
}

struct Shared {
    config: WorkerConfig,
    handlers: Handlers,
    reporter: Reporter,
    stats: Arc<Stats>,
    metrics: Arc<WorkerMetrics>,
    /// Retry tiers declared by this process (declaring is idempotent; this saves round trips).
    retry_tiers: Mutex<HashSet<u64>>,
    /// The operator's set of cancelled Jobs; receivers are woken when a Job is added.
    cancels: watch::Sender<CancelSet>,
}

impl Shared {
    /// Why the Job of a task is cancelled, if it is.
    fn cancel_reason(&self, job_uid: &str) -> Option<String> {
        self.cancels.borrow().reason(job_uid).map(str::to_string)
    }
}

impl Worker {
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::default()
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn run_until_signal(self) -> Result<WorkerSummary, WorkerError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(WorkerError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(WorkerError::Signals)?;
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
                _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
            }
            trigger.cancel();
        });
        Ok(self.run(shutdown).await)
    }

    /// Runs until `shutdown` is cancelled, then drains: stops consuming, returns buffered
    /// tasks to their queues, lets running tasks finish within the grace period (the rest
    /// are cancelled and returned), flushes reports and disconnects.
    pub async fn run(self, shutdown: CancellationToken) -> WorkerSummary {
        let config = self.config;
        let stats = Arc::new(Stats::new(u32::from(config.concurrency)));
        let metrics = Arc::new(WorkerMetrics::new(&config.pool));
        let metrics_server = match config.metrics_addr {
            Some(addr) => match crate::metrics::serve(addr, metrics.clone()).await {
                Ok((bound, handle)) => {
                    tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz");
                    Some(handle)
                }
                // Tasks still run; the readiness probe (if any) shows the problem.
                Err(error) => {
                    tracing::error!(%addr, %error, "cannot serve /metrics, /healthz, /readyz");
                    None
                }
            },
            None => None,
        };
        let (reporter, commands) = Reporter::channel();
        let (link_tx, link_rx) = watch::channel(None);
        let reporter_stop = CancellationToken::new();
        let reporter_task = tokio::spawn(
            ReporterTask {
                rx: commands,
                link: link_rx,
                stats: stats.clone(),
                worker: WorkerId { namespace: config.namespace.clone(), pool: config.pool.clone(), pod: config.pod_name.clone() },
                queue: config.reports_queue.clone(),
                key: config.report_key.clone(),
                stop: reporter_stop.clone(),
            }
            .run(),
        );
        let shared = Arc::new(Shared {
            config,
            handlers: self.handlers,
            reporter,
            stats: stats.clone(),
            metrics,
            retry_tiers: Mutex::default(),
            cancels: watch::Sender::new(CancelSet::default()),
        });
        let span = tracing::info_span!(
            "worker",
            namespace = %shared.config.namespace,
            pool = %shared.config.pool,
            pod = %shared.config.pod_name
        );
        async {
            let mut failures = 0u32;
            // The broker's addresses (the nodes of a cluster), tried in turn from a random one
            // so that a pool's workers spread over the nodes; after a loss, from the next one.
            let addresses =
                warren_protocol::addresses::parse(&shared.config.amqp_url).unwrap_or_else(|_| vec![shared.config.amqp_url.clone()]);
            let mut next_address = rand::random::<u32>() as usize;
            loop {
                if shutdown.is_cancelled() {
                    break;
                }
                let connected = tokio::select! {
                    c = connect_any(&addresses, &mut next_address, &shared.config.pod_name, &shared.config.amqp_tls) => Some(c),
                    _ = shutdown.cancelled() => None,
                };
                match connected {
                    None => break,
                    Some(Err(e)) => {
                        failures += 1;
                        tracing::warn!(error = %e, failures, "connecting to the broker failed");
                    }
                    Some(Ok(connection)) => {
                        let connection = Arc::new(connection);
                        match run_session(&shared, &connection, &link_tx, &shutdown, &mut failures).await {
                            Ok(SessionEnd::Drained) => {
                                if tokio::time::timeout(FINAL_FLUSH_TIMEOUT, shared.reporter.flush()).await.is_err() {
                                    tracing::warn!("final report flush timed out");
                                }
                                let _ = link_tx.send(None);
                                let _ = connection.close(200, "worker shut down".into()).await;
                                break;
                            }
                            Ok(SessionEnd::Lost) => {
                                failures += 1;
                                tracing::warn!(failures, "connection to the broker lost");
                            }
                            Err(e) => {
                                failures += 1;
                                tracing::warn!(error = %e, failures, "setting up consumers failed");
                            }
                        }
                        let _ = link_tx.send(None);
                        let _ = connection.close(320, "reconnecting".into()).await;
                    }
                }
                shared.metrics.set_consuming(false);
                shared.metrics.broker_reconnects.inc();
                let delay = reconnect_delay(failures, rand::random::<f64>());
                tracing::info!(delay_ms = delay.as_millis() as u64, "reconnecting after a pause");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
            reporter_stop.cancel();
            let _ = reporter_task.await;
        }
        .instrument(span)
        .await;
        if let Some(server) = metrics_server {
            server.abort();
        }
        let hb = stats.snapshot();
        WorkerSummary { completed_total: hb.completed_total, interrupted_total: hb.interrupted_total }
    }
}

/// Connects to the first address that answers, trying each once from `*next`; leaves `*next` at
/// the address after the one connected to, so that the reconnect after a loss tries another
/// node first.
async fn connect_any(
    addresses: &[String],
    next: &mut usize,
    name: &str,
    tls: &warren_protocol::amqp::Tls,
) -> Result<Connection, lapin::Error> {
    let (connection, index) = warren_protocol::amqp::connect_any(addresses, *next, name, tls).await?;
    *next = index + 1;
    Ok(connection)
}

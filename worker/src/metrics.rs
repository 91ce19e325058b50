//! Every metric of a worker process, prefix `warren_worker_`, and its HTTP endpoints
//! (`/metrics`, `/healthz`, `/readyz`).
//!
//! One [`WorkerMetrics`] per [`Worker`](crate::Worker) (not a process global: a test or an
//! application may run several workers in one process). Labels are bounded: pool, priority,
//! outcome — never a Job name or a task index.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// How a task left this worker (label `outcome` of `warren_worker_tasks_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskOutcome {
    /// The handler succeeded; the success is reported and the delivery acknowledged.
    Succeeded,
    /// The attempt failed and the retry is scheduled (published to the retry tier).
    Retried,
    /// The task failed for good and is in the dead-letter queue.
    DeadLettered,
    /// Dropped unrun, or stopped, because its Job was cancelled (deleted, suspended, past its deadline).
    Cancelled,
    /// Returned to its queue unfinished (shutdown past grace, lost connection, outcome not recordable).
    Interrupted,
}

impl TaskOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskOutcome::Succeeded => "succeeded",
            TaskOutcome::Retried => "retried",
            TaskOutcome::Cancelled => "cancelled",
            TaskOutcome::DeadLettered => "dead_lettered",
            TaskOutcome::Interrupted => "interrupted",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub pool: String,
    pub priority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub pool: String,
    pub priority: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedeliveredLabels {
    pub pool: String,
    pub priority: String,
    /// `suspect` (moved to run alone) or `dead_lettered` (its delivery limit reached).
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControlRejectionLabels {
    pub pool: String,
    /// `unsigned`, `bad_signature`, `from_the_future` or `malformed` (`control::Rejection`).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub pool: String,
    /// The dead-letter reason: `malformed`, `unsigned` or `bad-signature`
    /// (`warren_protocol::admit::task`).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub pool: String,
    pub priority: String,
    /// `succeeded` or `failed`: how the handler returned.
    pub result: &'static str,
}

/// Handler run times, seconds: 5 ms to 1 h.
const DURATION_BUCKETS: [f64; 18] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];
/// Queue waits, seconds: 10 ms to 6 h.
const QUEUE_WAIT_BUCKETS: [f64; 16] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 21600.0];
/// Attempt numbers (1 = first attempt).
const ATTEMPT_BUCKETS: [f64; 9] = [1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 15.0, 25.0];

pub struct WorkerMetrics {
    pub tasks: Family<OutcomeLabels, Counter>,
    pub task_duration: Family<ResultLabels, Histogram>,
    pub tasks_in_flight: Family<TaskLabels, Gauge>,
    pub task_attempt: Family<TaskLabels, Histogram>,
    pub queue_wait: Family<TaskLabels, Histogram>,
    pub broker_connected: Gauge,
    pub broker_reconnects: Counter,
    pub redelivered: Family<RedeliveredLabels, Counter>,
    pub control_messages_rejected: Family<ControlRejectionLabels, Counter>,
    pub tasks_refused: Family<RefusalLabels, Counter>,
    pool: String,
    /// Consuming from every work queue and not draining: `/readyz` is 200.
    consuming: AtomicBool,
    registry: Registry,
}

impl WorkerMetrics {
    pub fn new(pool: &str) -> Self {
        let mut registry = Registry::with_prefix("warren_worker");
        let tasks = Family::<OutcomeLabels, Counter>::default();
        let task_duration = Family::<ResultLabels, Histogram>::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        let tasks_in_flight = Family::<TaskLabels, Gauge>::default();
        let task_attempt = Family::<TaskLabels, Histogram>::new_with_constructor(|| Histogram::new(ATTEMPT_BUCKETS));
        let queue_wait = Family::<TaskLabels, Histogram>::new_with_constructor(|| Histogram::new(QUEUE_WAIT_BUCKETS));
        let broker_connected = Gauge::default();
        let broker_reconnects = Counter::default();
        let redelivered = Family::<RedeliveredLabels, Counter>::default();
        let control_messages_rejected = Family::<ControlRejectionLabels, Counter>::default();
        let tasks_refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "tasks_refused",
            "Messages of this pool's queues this worker did not run and dead-lettered: not a task (malformed), or not signed with the pool's key (unsigned, bad-signature)",
            tasks_refused.clone(),
        );
        registry.register(
            "control_messages_rejected",
            "Control messages on the control exchange this worker did not apply: unsigned or not signed by the operator, sent from the future, or malformed",
            control_messages_rejected.clone(),
        );
        registry.register(
            "redelivered_tasks",
            "Tasks redelivered after their worker was lost, by what this worker did (suspect: moved to run alone; dead_lettered: delivery limit reached)",
            redelivered.clone(),
        );
        registry.register("tasks", "Tasks that left this worker, by outcome", tasks.clone());
        registry.register("task_duration_seconds", "Handler run time per attempt, by result", task_duration.clone());
        registry.register("tasks_in_flight", "Tasks this worker is running now", tasks_in_flight.clone());
        registry.register("task_attempt", "Attempt number of the tasks this worker started", task_attempt.clone());
        registry.register(
            "queue_wait_seconds",
            "Time from the operator publishing a task to its first attempt starting here (the queue wait; under flow control, from admission), by priority",
            queue_wait.clone(),
        );
        registry.register("broker_connected", "1 while this worker is connected to RabbitMQ and consuming", broker_connected.clone());
        registry.register("broker_reconnects", "Reconnects to RabbitMQ after a failure", broker_reconnects.clone());
        Self {
            tasks,
            task_duration,
            tasks_in_flight,
            task_attempt,
            queue_wait,
            broker_connected,
            broker_reconnects,
            redelivered,
            control_messages_rejected,
            tasks_refused,
            pool: pool.to_string(),
            consuming: AtomicBool::new(false),
            registry,
        }
    }

    fn labels(&self, priority: &str) -> TaskLabels {
        TaskLabels { pool: self.pool.clone(), priority: priority.to_string() }
    }

    /// A task's handler is about to run.
    pub fn task_started(&self, priority: &str, attempt: u32) {
        let labels = self.labels(priority);
        self.tasks_in_flight.get_or_create(&labels).inc();
        self.task_attempt.get_or_create(&labels).observe(f64::from(attempt));
    }

    /// A first attempt starts, `waited` after it was published (its queue wait).
    pub fn queue_waited(&self, priority: &str, waited: Duration) {
        self.queue_wait.get_or_create(&self.labels(priority)).observe(waited.as_secs_f64());
    }

    /// The handler returned (or was stopped) after `ran`.
    pub fn handler_returned(&self, priority: &str, succeeded: bool, ran: Duration) {
        let result = if succeeded { "succeeded" } else { "failed" };
        self.task_duration
            .get_or_create(&ResultLabels { pool: self.pool.clone(), priority: priority.to_string(), result })
            .observe(ran.as_secs_f64());
    }

    /// The task left the worker.
    pub fn task_ended(&self, priority: &str, outcome: TaskOutcome) {
        self.tasks_in_flight.get_or_create(&self.labels(priority)).dec();
        self.tasks
            .get_or_create(&OutcomeLabels { pool: self.pool.clone(), priority: priority.to_string(), outcome: outcome.as_str() })
            .inc();
    }

    /// A redelivered task was moved to the suspect queue (`dead_lettered: false`) or, at its
    /// delivery limit, dead-lettered.
    pub fn task_redelivered(&self, priority: &str, dead_lettered: bool) {
        let action = if dead_lettered { "dead_lettered" } else { "suspect" };
        self.redelivered.get_or_create(&RedeliveredLabels { pool: self.pool.clone(), priority: priority.to_string(), action }).inc();
    }

    /// The worker consumes from its queues (`true`) or stopped (connection lost, draining).
    /// A control message not applied, and why.
    pub fn control_rejected(&self, reason: &'static str) {
        self.control_messages_rejected.get_or_create(&ControlRejectionLabels { pool: self.pool.clone(), reason }).inc();
    }

    /// A message of the pool's queues dead-lettered without running, and why.
    pub fn task_refused(&self, reason: &'static str) {
        self.tasks_refused.get_or_create(&RefusalLabels { pool: self.pool.clone(), reason }).inc();
    }

    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::SeqCst);
        self.broker_connected.set(i64::from(consuming));
    }

    pub fn is_consuming(&self) -> bool {
        self.consuming.load(Ordering::SeqCst)
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("metrics encode");
        out
    }
}

async fn metrics(State(m): State<Arc<WorkerMetrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.encode())
}

/// `/readyz`: 200 while consuming, 503 while connecting, reconnecting or draining.
async fn readyz(State(m): State<Arc<WorkerMetrics>>) -> impl IntoResponse {
    if m.is_consuming() { (StatusCode::OK, "consuming") } else { (StatusCode::SERVICE_UNAVAILABLE, "not consuming") }
}

pub fn router(metrics: Arc<WorkerMetrics>) -> Router {
    Router::new()
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(metrics)
}

/// Binds `addr` and serves the endpoints in the background until the returned handle is aborted.
pub async fn serve(addr: SocketAddr, metrics: Arc<WorkerMetrics>) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router(metrics)).await {
            tracing::error!(%error, "metrics server stopped");
        }
    });
    Ok((bound, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_durations_attempts_and_in_flight_are_exposed_per_pool_and_priority() {
        let m = WorkerMetrics::new("images");
        m.task_started("high", 1);
        m.task_started("high", 3);
        m.task_started("low", 1);
        m.handler_returned("high", true, Duration::from_millis(30));
        m.task_ended("high", TaskOutcome::Succeeded);
        m.handler_returned("high", false, Duration::from_secs(2));
        m.task_ended("high", TaskOutcome::DeadLettered);
        m.queue_waited("low", Duration::from_millis(700));
        let text = m.encode();
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        has(r#"warren_worker_tasks_total{pool="images",priority="high",outcome="succeeded"} 1"#);
        has(r#"warren_worker_tasks_total{pool="images",priority="high",outcome="dead_lettered"} 1"#);
        has(r#"warren_worker_tasks_in_flight{pool="images",priority="high"} 0"#);
        has(r#"warren_worker_tasks_in_flight{pool="images",priority="low"} 1"#);
        has(r#"warren_worker_task_attempt_bucket{le="1.0",pool="images",priority="high"} 1"#);
        has(r#"warren_worker_task_attempt_bucket{le="3.0",pool="images",priority="high"} 2"#);
        has(r#"warren_worker_task_attempt_count{pool="images",priority="high"} 2"#);
        has(r#"warren_worker_task_duration_seconds_bucket{le="0.05",pool="images",priority="high",result="succeeded"} 1"#);
        has(r#"warren_worker_task_duration_seconds_count{pool="images",priority="high",result="failed"} 1"#);
        has(r#"warren_worker_queue_wait_seconds_bucket{le="0.5",pool="images",priority="low"} 0"#);
        has(r#"warren_worker_queue_wait_seconds_bucket{le="1.0",pool="images",priority="low"} 1"#);
        has("warren_worker_broker_connected 0");
        for outcome in
            [TaskOutcome::Succeeded, TaskOutcome::Retried, TaskOutcome::Cancelled, TaskOutcome::DeadLettered, TaskOutcome::Interrupted]
        {
            assert!(outcome.as_str().chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
    }

    #[tokio::test]
    async fn endpoints_answer_and_readiness_follows_consumption() {
        let m = Arc::new(WorkerMetrics::new("p"));
        let (addr, server) = serve("127.0.0.1:0".parse().unwrap(), m.clone()).await.unwrap();
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.0 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.0 503"));
        m.set_consuming(true);
        assert!(get("/readyz").await.starts_with("HTTP/1.0 200"));
        let metrics = get("/metrics").await;
        assert!(metrics.contains("warren_worker_broker_connected 1"), "{metrics}");
        server.abort();
    }
}

//! The wire protocol between the Warren operator and its workers.
//!
//! Both sides talk only through RabbitMQ. This crate owns everything they must agree on:
//! the names of exchanges and queues ([`names`]), the task message ([`TaskEnvelope`]), the
//! batched reports a worker sends back ([`ReportBatch`]), and the contract of the
//! `warren-worker` exec mode ([`exec`]). It does no I/O.

use serde::{Deserialize, Serialize};

pub mod addresses;
pub mod admit;
#[cfg(feature = "amqp")]
pub mod amqp;
pub mod control_signature;
pub mod headers;
pub mod retry;
pub mod signature;
#[cfg(feature = "amqp")]
pub mod topology;

/// Version of the task envelope and report format. Bumped on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest result a handler may return, serialized as JSON (16 KiB). A worker fails a task whose
/// handler returns more (permanently: the same handler would return the same), and the operator
/// ignores a larger result should one arrive. Results are for small values passed between
/// Workflow steps (ids, counts, short lists); pass references to bulk data.
pub const MAX_RESULT_BYTES: usize = 16 * 1024;

/// AMQP `content-type` of a task message.
pub const TASK_CONTENT_TYPE: &str = "application/vnd.warren.task+json";
/// AMQP `content-type` of a report batch.
pub const REPORT_CONTENT_TYPE: &str = "application/vnd.warren.report+json";
/// AMQP `content-type` of a control message.
pub const CONTROL_CONTENT_TYPE: &str = "application/vnd.warren.control+json";

/// Names of the RabbitMQ objects Warren declares.
///
/// Per pool (namespace `ns`, pool `pool`):
/// - one direct exchange [`pool_exchange`](names::pool_exchange); a task is published to it with
///   its priority class as routing key;
/// - one durable work queue per priority class, [`work_queue`](names::work_queue), bound with
///   the class name;
/// - retry queues per delay tier, [`retry_queue`](names::retry_queue), whose messages expire
///   back into the pool exchange with their original routing key (so a retry keeps its priority);
/// - one dead-letter queue, [`dead_letter_queue`](names::dead_letter_queue).
///
/// Operator-wide: the [`REPORTS_QUEUE`](names::REPORTS_QUEUE) workers publish their reports to.
/// Milliseconds since the Unix epoch, the unit of every timestamp on the wire (0 if the clock is
/// before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub mod names {
    /// Queue every worker publishes its report batches to (default exchange).
    pub const REPORTS_QUEUE: &str = "warren.reports";
    /// Fanout exchange the operator broadcasts control messages on (e.g. job cancellation).
    pub const CONTROL_EXCHANGE: &str = "warren.control";

    /// The control exchange of the Warren installation whose workers report to `reports_queue`:
    /// [`CONTROL_EXCHANGE`] for the default reports queue, else `<reports_queue>.control`, so
    /// that installations sharing a broker (or tests) never see each other's control messages.
    pub fn control_exchange(reports_queue: &str) -> String {
        if reports_queue == REPORTS_QUEUE { CONTROL_EXCHANGE.to_string() } else { format!("{reports_queue}.control") }
    }

    fn prefix(namespace: &str, pool: &str) -> String {
        format!("warren.{namespace}.{pool}")
    }

    /// The direct exchange of a pool.
    pub fn pool_exchange(namespace: &str, pool: &str) -> String {
        prefix(namespace, pool)
    }

    /// The work queue of one priority class of a pool.
    pub fn work_queue(namespace: &str, pool: &str, priority: &str) -> String {
        format!("{}.q.{priority}", prefix(namespace, pool))
    }

    /// The retry queue of one delay tier (milliseconds) of a pool.
    pub fn retry_queue(namespace: &str, pool: &str, delay_ms: u64) -> String {
        format!("{}.retry.{delay_ms}ms", prefix(namespace, pool))
    }

    /// The dead-letter queue of a pool.
    pub fn dead_letter_queue(namespace: &str, pool: &str) -> String {
        format!("{}.dlq", prefix(namespace, pool))
    }

    /// The suspect queue of a pool: tasks whose worker was lost while they ran, each run alone
    /// by one worker at a time (see `warren_worker::lost`).
    pub fn suspect_queue(namespace: &str, pool: &str) -> String {
        format!("{}.suspect", prefix(namespace, pool))
    }
}

/// Identifies the Job a task belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRef {
    pub namespace: String,
    pub name: String,
    /// The Job's `metadata.uid`: a re-created Job with the same name is a different Job.
    pub uid: String,
}

/// One task of a Job, as published on a work queue (JSON body).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskEnvelope {
    /// Always [`PROTOCOL_VERSION`] for messages this version writes.
    pub version: u32,
    pub job: JobRef,
    /// Index of the task in its Job, `0..total`.
    pub index: u32,
    /// Number of tasks in the Job.
    pub total: u32,
    /// 1 for the first attempt; the worker increments it when it schedules a retry.
    pub attempt: u32,
    /// The priority class the task was published with (its routing key).
    pub priority: String,
    /// Optional handler selector for SDK workers that register several task types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_type: Option<String>,
    /// The handler's input.
    pub payload: serde_json::Value,
    /// Stable across attempts and redeliveries: `<job uid>/<index>`.
    pub idempotency_key: String,
    /// Retry policy resolved by the operator (Job override over pool default).
    pub retry: RetryPolicy,
    /// Per-attempt timeout enforced by the worker; `None` = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// How many times the task was sent back from the dead-letter queue (`warren dlq replay`);
    /// 0 = never. Reports carry it, so the operator tells a replayed run from a stale report of
    /// the dead-lettered one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replay: u32,
    /// When the operator published the task's first attempt (ms since the epoch; 0 when not
    /// known, e.g. from an older operator): workers measure the queue wait from it. Carried
    /// unchanged by retries.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub enqueued_at_ms: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl TaskEnvelope {
    /// The idempotency key of a task: stable for a Job uid and index.
    pub fn idempotency_key_for(job_uid: &str, index: u32) -> String {
        format!("{job_uid}/{index}")
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelope serializes")
    }

    /// Parses a message body. Anything that is not a Warren envelope of a known version is an
    /// error (the worker dead-letters it with the reason).
    pub fn from_json(body: &[u8]) -> Result<Self, String> {
        let envelope: Self = serde_json::from_slice(body).map_err(|e| format!("not a Warren task envelope: {e}"))?;
        if envelope.version != PROTOCOL_VERSION {
            return Err(format!("unsupported envelope version {} (this worker speaks {PROTOCOL_VERSION})", envelope.version));
        }
        // Its Job reference goes into every report about it: a task that names no Job
        // Kubernetes could hold is dead-lettered here, not echoed to the operator.
        envelope.job.check().map_err(|e| format!("invalid Job reference: {e}"))?;
        Ok(envelope)
    }
}

/// Retry policy carried by every task, so a worker needs no other source to decide.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Total attempts including the first; 1 = never retry.
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial_delay_ms: u64,
    /// Multiplier applied per further attempt.
    pub factor: f64,
    /// Upper bound of a delay.
    pub max_delay_ms: u64,
    /// Fraction (0..=1) of the delay randomised away (full jitter at 1).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 3, initial_delay_ms: 1_000, factor: 2.0, max_delay_ms: 60_000, jitter: 0.2 }
    }
}

/// A batch of events and an optional heartbeat from one worker process (JSON body of a message
/// on [`names::REPORTS_QUEUE`]). Workers batch so that report traffic does not grow one message
/// per task.
///
/// On the wire, consecutive events of the same Job share one `{"job": ..., "events": [...]}`
/// group in `jobs`, so a batch of one Job's outcomes names the Job once (a third of the bytes;
/// the broker keeps such a batch in its queue index instead of its message store). Readers also
/// accept the flat `events` list of every event with its own `job`, which earlier workers wrote.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(from = "wire::ReportIn")]
pub struct ReportBatch {
    pub version: u32,
    pub worker: WorkerId,
    /// Milliseconds since the Unix epoch when the batch was sent.
    pub sent_at_ms: u64,
    pub events: Vec<TaskEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Heartbeat>,
}

/// The grouped wire form of [`ReportBatch`].
mod wire {
    use super::{Heartbeat, JobRef, ReportBatch, TaskEvent, TaskEventKind, WorkerId, is_zero};
    use serde::{Deserialize, Serialize};

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ReportOut<'a> {
        version: u32,
        worker: &'a WorkerId,
        sent_at_ms: u64,
        jobs: Vec<JobEvents<&'a JobRef, &'a TaskEventKind, &'a String>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        heartbeat: Option<&'a Heartbeat>,
    }

    /// One Job and a run of its events: borrowed when written, owned when read.
    #[derive(Serialize, Deserialize)]
    pub(crate) struct JobEvents<J, K, O> {
        pub(crate) job: J,
        pub(crate) events: Vec<JobEvent<K, O>>,
    }

    /// A [`TaskEvent`] without its Job.
    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct JobEvent<K, O> {
        pub(crate) index: u32,
        pub(crate) attempt: u32,
        pub(crate) at_ms: u64,
        pub(crate) kind: K,
        #[serde(default, skip_serializing_if = "is_zero")]
        pub(crate) replay: u32,
        #[serde(default = "none", skip_serializing_if = "Option::is_none")]
        pub(crate) output: Option<O>,
    }

    fn none<O>() -> Option<O> {
        None
    }

    impl JobEvent<TaskEventKind, String> {
        pub(crate) fn with_job(self, job: JobRef) -> TaskEvent {
            TaskEvent {
                job,
                index: self.index,
                attempt: self.attempt,
                at_ms: self.at_ms,
                kind: self.kind,
                replay: self.replay,
                output: self.output,
            }
        }
    }

    impl Serialize for ReportBatch {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut jobs: Vec<JobEvents<&JobRef, &TaskEventKind, &String>> = Vec::new();
            for e in &self.events {
                let event = JobEvent {
                    index: e.index,
                    attempt: e.attempt,
                    at_ms: e.at_ms,
                    kind: &e.kind,
                    replay: e.replay,
                    output: e.output.as_ref(),
                };
                match jobs.last_mut() {
                    Some(group) if *group.job == e.job => group.events.push(event),
                    _ => jobs.push(JobEvents { job: &e.job, events: vec![event] }),
                }
            }
            ReportOut { version: self.version, worker: &self.worker, sent_at_ms: self.sent_at_ms, jobs, heartbeat: self.heartbeat.as_ref() }
                .serialize(serializer)
        }
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ReportIn {
        pub(crate) version: u32,
        pub(crate) worker: WorkerId,
        pub(crate) sent_at_ms: u64,
        /// The flat form.
        #[serde(default)]
        pub(crate) events: Vec<TaskEvent>,
        #[serde(default)]
        pub(crate) jobs: Vec<JobEvents<JobRef, TaskEventKind, String>>,
        #[serde(default)]
        pub(crate) heartbeat: Option<Heartbeat>,
    }

    impl From<ReportIn> for ReportBatch {
        fn from(wire: ReportIn) -> Self {
            let mut events = wire.events;
            for group in wire.jobs {
                events.extend(group.events.into_iter().map(|e| e.with_job(group.job.clone())));
            }
            Self { version: wire.version, worker: wire.worker, sent_at_ms: wire.sent_at_ms, events, heartbeat: wire.heartbeat }
        }
    }
}

/// Which worker process sent a report.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerId {
    pub namespace: String,
    pub pool: String,
    /// Pod name (from the downward API); unique per process.
    pub pod: String,
}

/// The worker's own view of its load, sent with every batch and at least every few seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// Tasks executing right now.
    pub in_flight: u32,
    /// Maximum tasks executing at once (prefetch per priority queue).
    pub concurrency: u32,
    /// True once SIGTERM was received: takes no new tasks.
    pub draining: bool,
    /// Milliseconds since the Unix epoch when the worker last finished a task or started.
    pub idle_since_ms: Option<u64>,
    /// Tasks this process has finished (any outcome) since it started.
    pub completed_total: u64,
    /// Tasks interrupted by shutdown before finishing (returned to the queue).
    pub interrupted_total: u64,
    /// Tasks delivered to this worker that it has not started (its buffer): the operator's
    /// lost-task check counts them as held. Absent from workers older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffered: Option<u32>,
}

/// Something that happened to one attempt of one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskEvent {
    pub job: JobRef,
    pub index: u32,
    pub attempt: u32,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub kind: TaskEventKind,
    /// The task's [`TaskEnvelope::replay`] count.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replay: u32,
    /// The end of what the attempt printed (its handler's log lines: a command's stdout lines
    /// that are not protocol lines, and its stderr), at most [`admit::MAX_OUTPUT_BYTES`]; only
    /// on the event that ends an attempt (`Succeeded`, `Failed`), and only when it printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// What happened. Only `Succeeded` and a `Failed` with a final disposition end a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum TaskEventKind {
    /// The handler started executing this attempt.
    Started,
    /// The handler reported progress.
    Progress { percent: u8, message: String },
    /// The handler succeeded; `result` is its small JSON result, if any.
    #[serde(rename_all = "camelCase")]
    Succeeded {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<serde_json::Value>,
    },
    /// The attempt failed; `disposition` says what the worker did with the task.
    #[serde(rename_all = "camelCase")]
    Failed { error: String, disposition: FailureDisposition },
    /// The task's Job is cancelled ([`ControlMessage`]): the worker dropped the task without
    /// running it, or cancelled its running handler, and acknowledged the delivery. Not final:
    /// the operator re-enqueues it if the Job resumes. `reason` is a [`cancel_reason`].
    #[serde(rename_all = "camelCase")]
    Cancelled { reason: String },
}

/// Why the tasks of a Job are cancelled (the `reason` of a [`CancelledJob`]).
pub mod cancel_reason {
    /// `spec.suspend: true`; the tasks run again when the Job resumes.
    pub const SUSPENDED: &str = "suspended";
    /// The Job was deleted.
    pub const DELETED: &str = "deleted";
    /// The Job ran past `activeDeadlineSeconds`.
    pub const DEADLINE_EXCEEDED: &str = "deadline-exceeded";
    /// The Job failed early (its failure policy's budget of failed tasks was exceeded).
    pub const FAILED: &str = "failed";
}

/// A Job whose tasks workers must not run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelledJob {
    /// The Job's `metadata.uid`.
    pub uid: String,
    /// One of [`cancel_reason`].
    pub reason: String,
}

/// The operator's broadcast on the installation's control exchange
/// ([`names::control_exchange`]). It is the *whole* set of cancelled Jobs, re-sent every second
/// and at once when it changes: a worker replaces its set with each message, so one that
/// starts (or reconnects) later learns the set from the next broadcast, and a Job that resumes
/// simply disappears from it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlMessage {
    pub version: u32,
    /// Milliseconds since the Unix epoch when the message was sent.
    pub sent_at_ms: u64,
    /// Every Job whose queued tasks must be dropped and whose running tasks must be cancelled.
    pub cancelled: Vec<CancelledJob>,
    /// Every pool whose circuit is open: its workers start no task (buffered ones wait, no
    /// attempt spent), except the probe's. Absent from older operators: nothing is paused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paused: Vec<PausedPool>,
}

/// A pool whose circuit breaker is open or half-open ([`ControlMessage::paused`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PausedPool {
    pub namespace: String,
    pub pool: String,
    /// Half-open: the one worker that may start probe tasks, and how many in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
}

/// The probe of a half-open circuit: worker `pod` may start `tasks` tasks, counted from the
/// first message that carried this `id`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub id: u64,
    pub pod: String,
    pub tasks: u32,
}

impl ControlMessage {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("control message serializes")
    }

    pub fn from_json(body: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(body).map_err(|e| format!("not a Warren control message: {e}"))
    }
}

/// What a worker did with a failed attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum FailureDisposition {
    /// Scheduled another attempt after `delay_ms` (published to a retry queue).
    #[serde(rename_all = "camelCase")]
    Retrying { delay_ms: u64 },
    /// No attempt left, or not retryable: published to the pool's dead-letter queue.
    #[serde(rename_all = "camelCase")]
    DeadLettered { reason: String },
}

impl TaskEventKind {
    /// True when the event ends the task (no further attempt will run).
    pub fn is_final(&self) -> bool {
        matches!(self, TaskEventKind::Succeeded { .. } | TaskEventKind::Failed { disposition: FailureDisposition::DeadLettered { .. }, .. })
    }
}

impl ReportBatch {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("report serializes")
    }

    /// Parses a report from a trusted source (tests, tools). The operator reads untrusted
    /// reports through [`admit::report`], which bounds and validates them.
    pub fn from_json(body: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(body).map_err(|e| format!("not a Warren report batch: {e}"))
    }
}

/// The contract between `warren-worker` and the command it runs per task ("exec mode").
///
/// - The task's payload is written to the command's stdin as JSON, then stdin is closed.
/// - The task's facts are in environment variables (the `ENV_*` constants).
/// - Exit code 0 = success; [`PERMANENT_FAILURE_EXIT_CODE`] = failure that must not be retried;
///   any other code (or death by signal) = failure that is retried per the retry policy.
/// - A stdout line `warren:progress <percent> <message>` reports progress; a line
///   `warren:result <json>` sets the task's result. Other stdout/stderr lines are logged.
pub mod exec {
    pub const ENV_JOB_NAMESPACE: &str = "WARREN_JOB_NAMESPACE";
    pub const ENV_JOB_NAME: &str = "WARREN_JOB_NAME";
    pub const ENV_JOB_UID: &str = "WARREN_JOB_UID";
    pub const ENV_TASK_INDEX: &str = "WARREN_TASK_INDEX";
    pub const ENV_TASK_COUNT: &str = "WARREN_TASK_COUNT";
    pub const ENV_ATTEMPT: &str = "WARREN_ATTEMPT";
    pub const ENV_MAX_ATTEMPTS: &str = "WARREN_MAX_ATTEMPTS";
    pub const ENV_PRIORITY: &str = "WARREN_PRIORITY";
    pub const ENV_IDEMPOTENCY_KEY: &str = "WARREN_IDEMPOTENCY_KEY";
    pub const ENV_TASK_TYPE: &str = "WARREN_TASK_TYPE";
    /// Exit code meaning "failed, do not retry" (sysexits `EX_DATAERR`).
    pub const PERMANENT_FAILURE_EXIT_CODE: i32 = 65;
    pub const PROGRESS_PREFIX: &str = "warren:progress ";
    pub const RESULT_PREFIX: &str = "warren:result ";
}

/// Environment variables the operator sets on worker pods (the worker's configuration).
pub mod worker_env {
    /// AMQP URI of the broker.
    pub const AMQP_URL: &str = "WARREN_AMQP_URL";
    pub const NAMESPACE: &str = "WARREN_NAMESPACE";
    pub const POOL: &str = "WARREN_POOL";
    /// Comma-separated priority classes, highest first.
    pub const PRIORITIES: &str = "WARREN_PRIORITIES";
    /// Tasks executed at once per worker process.
    pub const CONCURRENCY: &str = "WARREN_CONCURRENCY";
    /// Pod name (downward API `metadata.name`).
    pub const POD_NAME: &str = "WARREN_POD_NAME";
    /// Retry delay tiers in milliseconds, comma-separated ascending (the retry queues that exist).
    pub const RETRY_TIERS_MS: &str = "WARREN_RETRY_TIERS_MS";
    /// Seconds a lower-priority task may wait in the worker before it is taken ahead of higher ones.
    pub const STARVATION_SECONDS: &str = "WARREN_STARVATION_SECONDS";
    /// Queue type of the pool (`classic` or `quorum`): the type of the retry-tier queues the
    /// worker declares. Default `classic`.
    pub const QUEUE_TYPE: &str = "WARREN_QUEUE_TYPE";
    /// `true`: every delivery on its own channel (prefetch 1), so that a channel the broker
    /// closes (`consumer_timeout`) takes only its own task down. Default `false`.
    pub const CHANNEL_PER_TASK: &str = "WARREN_CHANNEL_PER_TASK";
    /// Queue type of the installation's reports queue (`classic` or `quorum`), as the operator
    /// declares it. Default `classic`.
    pub const REPORTS_QUEUE_TYPE: &str = "WARREN_REPORTS_QUEUE_TYPE";
    /// The queue reports are published to (default [`crate::names::REPORTS_QUEUE`]); one per
    /// Warren installation on a broker.
    pub const REPORTS_QUEUE: &str = "WARREN_REPORTS_QUEUE";
    /// Address of the worker's `/metrics`, `/healthz`, `/readyz` (e.g. `0.0.0.0:9465`); unset:
    /// no HTTP endpoints.
    pub const METRICS_ADDR: &str = "WARREN_METRICS_ADDR";
    /// The exec-mode command, as a JSON array of strings.
    pub const HANDLER_COMMAND: &str = "WARREN_HANDLER_COMMAND";
    /// Broker TLS (`amqps://` addresses only; [`crate::amqp::Tls`]): a PEM file of CA
    /// certificates trusted besides the system's.
    pub const AMQP_CA_FILE: &str = "WARREN_AMQP_CA_FILE";
    /// Broker TLS: the PEM client certificate (chain) for mutual TLS; with [`AMQP_CLIENT_KEY_FILE`].
    pub const AMQP_CLIENT_CERT_FILE: &str = "WARREN_AMQP_CLIENT_CERT_FILE";
    /// Broker TLS: the PEM private key of the client certificate (PKCS#8, PKCS#1 or SEC1, not
    /// encrypted).
    pub const AMQP_CLIENT_KEY_FILE: &str = "WARREN_AMQP_CLIENT_KEY_FILE";
    /// The pool's report key (hex; [`crate::signature`]), from the Secret the operator writes
    /// for the pool. Unset: reports go out unsigned (an operator that requires signatures drops
    /// them).
    pub const REPORT_KEY: &str = "WARREN_REPORT_KEY";
    /// The operator's Ed25519 public key (64 hex digits; [`crate::control_signature`]): only
    /// control messages it signed are applied. Unset: every control message is.
    pub const CONTROL_PUBLIC_KEY: &str = "WARREN_CONTROL_PUBLIC_KEY";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> TaskEnvelope {
        TaskEnvelope {
            version: PROTOCOL_VERSION,
            job: JobRef { namespace: "ns".into(), name: "j".into(), uid: "u-1".into() },
            index: 7,
            total: 10,
            attempt: 1,
            priority: "high".into(),
            task_type: None,
            payload: serde_json::json!({"x": 1}),
            idempotency_key: TaskEnvelope::idempotency_key_for("u-1", 7),
            retry: RetryPolicy::default(),
            timeout_seconds: Some(30),
            replay: 0,
            enqueued_at_ms: 0,
        }
    }

    #[test]
    fn envelope_round_trips() {
        let e = envelope();
        assert_eq!(TaskEnvelope::from_json(&e.to_json()).unwrap(), e);
        assert_eq!(e.idempotency_key, "u-1/7");
    }

    #[test]
    fn replay_count_is_optional_on_the_wire() {
        let e = envelope();
        let json = serde_json::to_value(&e).unwrap();
        assert!(json.get("replay").is_none(), "not written while 0: older readers see the same message");
        let replayed = TaskEnvelope { replay: 2, ..e };
        let back = TaskEnvelope::from_json(&replayed.to_json()).unwrap();
        assert_eq!(back.replay, 2);
    }

    #[test]
    fn foreign_messages_are_rejected_with_a_reason() {
        let err = TaskEnvelope::from_json(b"hello").unwrap_err();
        assert!(err.starts_with("not a Warren task envelope"), "{err}");
        let mut e = serde_json::to_value(envelope()).unwrap();
        e["version"] = 99.into();
        let err = TaskEnvelope::from_json(&serde_json::to_vec(&e).unwrap()).unwrap_err();
        assert!(err.contains("unsupported envelope version 99"), "{err}");
    }

    #[test]
    fn report_events_serialize_with_tags() {
        let kind = TaskEventKind::Failed { error: "boom".into(), disposition: FailureDisposition::Retrying { delay_ms: 500 } };
        let json = serde_json::to_value(&kind).unwrap();
        assert_eq!(json["type"], "failed");
        assert_eq!(json["disposition"]["action"], "retrying");
        assert_eq!(json["disposition"]["delayMs"], 500);
        assert!(!kind.is_final());
        assert!(TaskEventKind::Succeeded { result: None }.is_final());
    }

    fn event(job: &JobRef, index: u32, kind: TaskEventKind) -> TaskEvent {
        TaskEvent { job: job.clone(), index, attempt: 1, at_ms: 5, kind, replay: 0, output: None }
    }

    #[test]
    fn reports_name_each_job_once_per_run_of_its_events_and_round_trip_in_order() {
        let a = JobRef { namespace: "ns".into(), name: "a".into(), uid: "u-a".into() };
        let b = JobRef { namespace: "ns".into(), name: "b".into(), uid: "u-b".into() };
        let batch = ReportBatch {
            version: PROTOCOL_VERSION,
            worker: WorkerId { namespace: "ns".into(), pool: "p".into(), pod: "p-0".into() },
            sent_at_ms: 9,
            events: vec![
                event(&a, 0, TaskEventKind::Succeeded { result: None }),
                event(&a, 1, TaskEventKind::Started),
                event(&b, 0, TaskEventKind::Succeeded { result: Some(serde_json::json!(3)) }),
                TaskEvent { replay: 2, ..event(&a, 2, TaskEventKind::Succeeded { result: None }) },
            ],
            heartbeat: None,
        };
        let json = serde_json::to_value(&batch).unwrap();
        let groups: Vec<(&str, usize)> = json["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| (g["job"]["name"].as_str().unwrap(), g["events"].as_array().unwrap().len()))
            .collect();
        assert_eq!(groups, vec![("a", 2), ("b", 1), ("a", 1)]);
        assert!(json["jobs"][0]["events"][0].get("job").is_none());
        assert!(json.get("events").is_none());
        assert_eq!(ReportBatch::from_json(&batch.to_json()).unwrap(), batch);
    }

    #[test]
    fn reports_in_the_flat_form_are_still_read() {
        let flat = serde_json::json!({
            "version": 1,
            "worker": {"namespace": "ns", "pool": "p", "pod": "p-0"},
            "sentAtMs": 9,
            "events": [{"job": {"namespace": "ns", "name": "a", "uid": "u-a"}, "index": 4, "attempt": 2, "atMs": 5,
                        "kind": {"type": "started"}}],
        });
        let batch = ReportBatch::from_json(&serde_json::to_vec(&flat).unwrap()).unwrap();
        assert_eq!(batch.events.len(), 1);
        assert_eq!((batch.events[0].job.uid.as_str(), batch.events[0].index, batch.events[0].attempt), ("u-a", 4, 2));
        assert_eq!(batch.heartbeat, None);
    }

    #[test]
    fn queue_names_are_stable() {
        assert_eq!(names::work_queue("default", "p", "high"), "warren.default.p.q.high");
        assert_eq!(names::retry_queue("default", "p", 1000), "warren.default.p.retry.1000ms");
        assert_eq!(names::dead_letter_queue("default", "p"), "warren.default.p.dlq");
        assert_eq!(names::pool_exchange("default", "p"), "warren.default.p");
        assert_eq!(names::control_exchange(names::REPORTS_QUEUE), "warren.control");
        assert_eq!(names::control_exchange("warren.reports.e2e-x"), "warren.reports.e2e-x.control");
    }

    #[test]
    fn control_messages_round_trip() {
        let m = ControlMessage {
            version: PROTOCOL_VERSION,
            sent_at_ms: 5,
            cancelled: vec![CancelledJob { uid: "u".into(), reason: cancel_reason::SUSPENDED.into() }],
            paused: Vec::new(),
        };
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["cancelled"][0]["reason"], "suspended");
        assert!(json.get("paused").is_none(), "nothing paused: the message is what older workers know");
        assert_eq!(ControlMessage::from_json(&m.to_json()).unwrap(), m);
        let paused = ControlMessage {
            paused: vec![PausedPool { namespace: "n".into(), pool: "p".into(), probe: Some(Probe { id: 1, pod: "w".into(), tasks: 2 }) }],
            ..m.clone()
        };
        assert_eq!(serde_json::to_value(&paused).unwrap()["paused"][0]["probe"]["pod"], "w");
        assert_eq!(ControlMessage::from_json(&paused.to_json()).unwrap(), paused);
        let old: ControlMessage = serde_json::from_str(r#"{"version":1,"sentAtMs":1,"cancelled":[]}"#).unwrap();
        assert!(old.paused.is_empty(), "an older operator's message pauses nothing");
        let kind = TaskEventKind::Cancelled { reason: "deleted".into() };
        assert_eq!(serde_json::to_value(&kind).unwrap()["type"], "cancelled");
        assert!(!kind.is_final());
    }
}

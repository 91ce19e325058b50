//! Every metric of the operator, prefix `warren_operator_`. Labels are bounded: controller,
//! reason, namespace, pool, priority, phase, connection — never a Job name.
//!
//! Counters are incremented where things happen; gauges that mirror state are set at scrape time
//! by hooks ([`Metrics::on_scrape`]: Jobs by phase, tasks in flight, from the Job book) or by the
//! queue sampler (`queue_stats`: broker round trips do not belong in a scrape).

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PoolLabels {
    pub namespace: String,
    pub pool: String,
    pub priority: String,
}

/// Labels of a per-pool series that has no priority (dead letters, the autoscaler's gauges).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PoolOnlyLabels {
    pub namespace: String,
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PhaseLabels {
    pub namespace: String,
    pub phase: String,
}

/// The kind of object whose status the operator wrote.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `Job`, `Workflow`, `WorkerPool` or `Schedule`.
    pub kind: &'static str,
}

/// A status write the API server refused, by kind and by why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusWriteErrorLabels {
    pub kind: &'static str,
    /// [`status_write_error_reason`]: a fixed name per HTTP status class, never the server's text.
    pub reason: &'static str,
}

/// A completion-event delivery (`crate::notify`), by kind and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    /// `Job` or `Workflow`.
    pub kind: &'static str,
    /// `delivered`, `failed` (retried), `exhausted` (the last attempt failed), `refused` (the
    /// destination is not allowed).
    pub outcome: &'static str,
}

/// A Schedule's slots and runs, by namespace and why (never by Schedule).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScheduleLabels {
    pub namespace: String,
    /// Runs created: the run's kind (`Job`, `Workflow`). Missed slots: `Suspended`,
    /// `StartingDeadline`, `CatchupLatest`, `CatchupNone`, `CatchupMaxRuns`. Skipped slots:
    /// `Forbid`, `Superseded`. Cancelled runs: `Replace`.
    pub reason: &'static str,
}

pub const JOB: &str = "Job";
pub const WORKFLOW: &str = "Workflow";
pub const WORKER_POOL: &str = "WorkerPool";
pub const SCHEDULE: &str = "Schedule";

/// The label of a refused status write: the Kubernetes `reason` that belongs to the HTTP code
/// (`None`: no answer from the API server). Mapped from the code, not copied from the answer, so
/// that the label set stays bounded whatever a server says.
pub fn status_write_error_reason(code: Option<u16>) -> &'static str {
    match code {
        None => "Transport",
        Some(400) => "BadRequest",
        Some(401) => "Unauthorized",
        Some(403) => "Forbidden",
        Some(404) => "NotFound",
        Some(409) => "Conflict",
        Some(413) => "RequestEntityTooLarge",
        Some(422) => "Invalid",
        Some(429) => "TooManyRequests",
        Some(500..=599) => "ServerError",
        Some(_) => "Other",
    }
}

/// Why a report message, or an event in one, was dropped (a [`warren_protocol::admit`] reason or
/// one of the operator's own, see `reports`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    pub reason: &'static str,
}

/// Which of the operator's RabbitMQ connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `reports` (the report consumer) or `publish` (declarations and task publishing).
    pub connection: &'static str,
}

pub const REPORTS_CONNECTION: ConnectionLabels = ConnectionLabels { connection: "reports" };
pub const PUBLISH_CONNECTION: ConnectionLabels = ConnectionLabels { connection: "publish" };

/// Task outcomes folded from worker reports, as deltas of a Job's ledger (so a re-sent report
/// counts nothing twice).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutcomeDelta {
    pub succeeded: u64,
    pub retried: u64,
    pub dead_lettered: u64,
}

type ScrapeHook = Box<dyn Fn(&Metrics) + Send + Sync>;

/// A flow-controlled pool's waiting tasks of one `fairnessKey` (the top keys of the pool, and
/// `other` for the rest: `admission::backlog`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct KeyLabels {
    pub namespace: String,
    pub pool: String,
    pub key: String,
}

/// Why flow control held tasks back (a `status.waiting` reason of the admission).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThrottleLabels {
    pub namespace: String,
    pub pool: String,
    pub reason: &'static str,
}

/// A finished Job's pool and phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobEndLabels {
    pub namespace: String,
    pub pool: String,
    pub phase: &'static str,
}

/// Labels of a replica change by the autoscaler.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleLabels {
    pub namespace: String,
    pub pool: String,
    /// `up` or `down`.
    pub direction: &'static str,
    /// The decision's reason (`autoscaler::Reason::as_str`).
    pub reason: &'static str,
}

pub struct Metrics {
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub tasks_published: Family<PoolLabels, Counter>,
    pub tasks_succeeded: Family<PoolLabels, Counter>,
    pub tasks_failed: Family<PoolLabels, Counter>,
    pub tasks_retried: Family<PoolLabels, Counter>,
    pub tasks_dead_lettered: Family<PoolLabels, Counter>,
    /// Queued tasks found missing from a pool's queues ([`crate::lost_tasks`]).
    pub tasks_lost: Family<PoolOnlyLabels, Counter>,
    /// 1 while a queue of a pool with queued tasks is on a broker node that is down.
    pub queues_unavailable: Family<PoolOnlyLabels, Gauge>,
    pub tasks_admitted: Family<PoolOnlyLabels, Counter>,
    pub circuit_state: Family<PoolOnlyLabels, Gauge>,
    pub backlog_tasks: Family<KeyLabels, Gauge>,
    pub throttled_task_seconds: Family<ThrottleLabels, Counter<f64, AtomicU64>>,
    pub job_duration: Family<JobEndLabels, Histogram>,
    pub tasks_in_flight: Family<PoolLabels, Gauge>,
    pub queue_ready: Family<PoolLabels, Gauge>,
    pub queue_consumers: Family<PoolLabels, Gauge>,
    pub dead_letter_messages: Family<PoolOnlyLabels, Gauge>,
    pub reports_queue_messages: Gauge,
    pub report_messages: Counter,
    pub report_events: Counter,
    pub reports_rejected: Family<RejectionLabels, Counter>,
    pub jobs: Family<PhaseLabels, Gauge>,
    pub status_writes: Family<KindLabels, Counter>,
    pub status_write_errors: Family<StatusWriteErrorLabels, Counter>,
    pub broker_connected: Family<ConnectionLabels, Gauge>,
    pub broker_reconnects: Family<ConnectionLabels, Counter>,
    pub leader: Gauge,
    hooks: Mutex<Vec<ScrapeHook>>,
    pub autoscaler_desired_replicas: Family<PoolOnlyLabels, Gauge>,
    pub autoscaler_backlog: Family<PoolOnlyLabels, Gauge>,
    pub autoscaler_max_replicas: Family<PoolOnlyLabels, Gauge>,
    pub autoscaler_scales: Family<ScaleLabels, Counter>,
    pub notification_deliveries: Family<NotificationLabels, Counter>,
    /// Runs a Schedule created (one per fired slot), by namespace and run kind.
    pub schedule_runs_created: Family<ScheduleLabels, Counter>,
    /// Due slots that did not run (catch-up policy, starting deadline, suspend), by why.
    pub schedule_slots_missed: Family<ScheduleLabels, Counter>,
    /// Slots skipped by the concurrency policy, by why.
    pub schedule_slots_skipped: Family<ScheduleLabels, Counter>,
    /// Active runs cancelled by `concurrencyPolicy: Replace`.
    pub schedule_runs_cancelled: Family<ScheduleLabels, Counter>,
    registry: Registry,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("warren_operator");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16)));
        let tasks_published = Family::<PoolLabels, Counter>::default();
        let tasks_succeeded = Family::<PoolLabels, Counter>::default();
        let tasks_failed = Family::<PoolLabels, Counter>::default();
        let tasks_retried = Family::<PoolLabels, Counter>::default();
        let tasks_dead_lettered = Family::<PoolLabels, Counter>::default();
        let tasks_lost = Family::<PoolOnlyLabels, Counter>::default();
        let queues_unavailable = Family::<PoolOnlyLabels, Gauge>::default();
        let tasks_admitted = Family::<PoolOnlyLabels, Counter>::default();
        let circuit_state = Family::<PoolOnlyLabels, Gauge>::default();
        let backlog_tasks = Family::<KeyLabels, Gauge>::default();
        let throttled_task_seconds = Family::<ThrottleLabels, Counter<f64, AtomicU64>>::default();
        // 1 s to about 6 days.
        let job_duration = Family::<JobEndLabels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 20)));
        let tasks_in_flight = Family::<PoolLabels, Gauge>::default();
        let queue_ready = Family::<PoolLabels, Gauge>::default();
        let queue_consumers = Family::<PoolLabels, Gauge>::default();
        let dead_letter_messages = Family::<PoolOnlyLabels, Gauge>::default();
        let reports_queue_messages = Gauge::default();
        let report_messages = Counter::default();
        let report_events = Counter::default();
        let reports_rejected = Family::<RejectionLabels, Counter>::default();
        let jobs = Family::<PhaseLabels, Gauge>::default();
        let status_writes = Family::<KindLabels, Counter>::default();
        let status_write_errors = Family::<StatusWriteErrorLabels, Counter>::default();
        let broker_connected = Family::<ConnectionLabels, Gauge>::default();
        let broker_reconnects = Family::<ConnectionLabels, Counter>::default();
        let leader = Gauge::default();
        let notification_deliveries = Family::<NotificationLabels, Counter>::default();
        registry.register(
            "notification_deliveries",
            "Completion-event deliveries (spec.notify) by kind and outcome",
            notification_deliveries.clone(),
        );
        registry.register("reconcile", "Reconcile runs per controller", reconciles.clone());
        registry.register("reconcile_errors", "Failed reconciles per controller and reason", reconcile_errors.clone());
        registry.register("reconcile_duration_seconds", "Reconcile duration per controller", reconcile_duration.clone());
        registry.register("tasks_published", "Tasks published to RabbitMQ and confirmed", tasks_published.clone());
        registry.register("tasks_succeeded", "Tasks that succeeded, as reported by the workers", tasks_succeeded.clone());
        registry.register("tasks_failed", "Failed task attempts (retried or dead-lettered)", tasks_failed.clone());
        registry.register("tasks_retried", "Failed task attempts scheduled for a retry", tasks_retried.clone());
        registry.register(
            "tasks_dead_lettered",
            "Tasks that failed for good and went to the dead-letter queue",
            tasks_dead_lettered.clone(),
        );
        registry.register(
            "tasks_lost",
            "Queued tasks found missing from a pool's queues for longer than the lost-task check allows (purged or deleted queue, dropHead overflow, broker data loss)",
            tasks_lost.clone(),
        );
        registry.register(
            "queues_unavailable",
            "1 while a queue of a pool with queued tasks is on a stopped broker node (a classic queue's node, or a quorum queue without a quorum): its Jobs wait",
            queues_unavailable.clone(),
        );
        registry.register(
            "tasks_admitted",
            "Tasks the operator's flow control admitted to a pool's queues (pools with fairness or rateLimit, Jobs with maxRunning)",
            tasks_admitted.clone(),
        );
        registry.register(
            "circuit_state",
            "A pool's circuit breaker (spec.circuitBreaker or the warren.dev/circuit annotation): 0 closed, 1 open (no task starts), 2 half-open (probe tasks run)",
            circuit_state.clone(),
        );
        registry.register(
            "backlog_tasks",
            "A flow-controlled pool's tasks waiting to start (held by flow control, or admitted and queued) per fairnessKey: the pool's 10 biggest keys, and the key other for the rest",
            backlog_tasks.clone(),
        );
        registry.register(
            "throttled_task_seconds",
            "Task-seconds that flow control held a pool's tasks back, by the reason each Job waited (ConcurrencyLimited, RateLimited, FairShare, Queued, CircuitOpen); its rate is the average number of tasks held",
            throttled_task_seconds.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "Jobs from start to end (status startTime to completionTime), by pool and the phase they ended in; observed once, when this operator wrote the end",
            job_duration.clone(),
        );
        registry.register("tasks_in_flight", "Tasks a worker reported started and not yet finished", tasks_in_flight.clone());
        registry.register("queue_ready_messages", "Tasks waiting in a pool's work queue (RabbitMQ ready messages)", queue_ready.clone());
        registry.register("queue_consumers", "Consumers of a pool's work queue", queue_consumers.clone());
        registry.register("dead_letter_messages", "Messages in a pool's dead-letter queue", dead_letter_messages.clone());
        registry.register("reports_queue_messages", "Worker reports waiting in the reports queue", reports_queue_messages.clone());
        registry.register(
            "report_messages",
            "Report messages received from workers (each a batch of task events)",
            report_messages.clone(),
        );
        registry.register(
            "report_events",
            "Task events received in worker reports; divided by report_messages, the batching factor",
            report_events.clone(),
        );
        registry.register(
            "reports_rejected",
            "Worker reports dropped unapplied, by reason: whole messages (too_large, malformed, unknown_version, too_many_events, invalid_worker) or single events (invalid_job_ref, unknown_job, job_lookup_refused, foreign_job)",
            reports_rejected.clone(),
        );
        registry.register("jobs", "Jobs by phase", jobs.clone());
        registry.register(
            "status_writes",
            "Status patches the API server accepted, per kind: one per Job flush, Workflow or WorkerPool reconcile whose status changed (unchanged statuses are not sent; refused ones count in warren_operator_status_write_errors_total)",
            status_writes.clone(),
        );
        registry.register(
            "status_write_errors",
            "Status writes the API server refused or that got no answer, per kind and reason",
            status_write_errors.clone(),
        );
        registry.register("broker_connected", "1 while the connection to RabbitMQ is up", broker_connected.clone());
        registry.register("broker_reconnects", "Reconnects to RabbitMQ after a failure", broker_reconnects.clone());
        registry.register("leader", "1 while this operator leads (runs the controllers), 0 while it stands by", leader.clone());
        let autoscaler_desired_replicas = Family::<PoolOnlyLabels, Gauge>::default();
        let autoscaler_backlog = Family::<PoolOnlyLabels, Gauge>::default();
        let autoscaler_max_replicas = Family::<PoolOnlyLabels, Gauge>::default();
        let autoscaler_scales = Family::<ScaleLabels, Counter>::default();
        registry.register(
            "autoscaler_desired_replicas",
            "Worker replicas the autoscaler last decided per pool",
            autoscaler_desired_replicas.clone(),
        );
        registry.register(
            "autoscaler_backlog",
            "Ready tasks in a pool's work queues at the last autoscaler poll",
            autoscaler_backlog.clone(),
        );
        registry.register("autoscaler_max_replicas", "The autoscaling policy's maxReplicas per pool", autoscaler_max_replicas.clone());
        registry.register(
            "autoscaler_scales",
            "Replica changes by the autoscaler per pool, direction and reason",
            autoscaler_scales.clone(),
        );
        let schedule_runs_created = Family::<ScheduleLabels, Counter>::default();
        let schedule_slots_missed = Family::<ScheduleLabels, Counter>::default();
        let schedule_slots_skipped = Family::<ScheduleLabels, Counter>::default();
        let schedule_runs_cancelled = Family::<ScheduleLabels, Counter>::default();
        registry.register(
            "schedule_runs_created",
            "Runs (Jobs, Workflows) Schedules created, one per fired slot",
            schedule_runs_created.clone(),
        );
        registry.register(
            "schedule_slots_missed",
            "Due Schedule slots that did not run, by reason (catch-up policy, starting deadline, suspend)",
            schedule_slots_missed.clone(),
        );
        registry.register(
            "schedule_slots_skipped",
            "Schedule slots skipped by the concurrency policy, by reason (Forbid: a run was active; Superseded: Replace kept a later slot)",
            schedule_slots_skipped.clone(),
        );
        registry.register("schedule_runs_cancelled", "Active runs cancelled by concurrencyPolicy Replace", schedule_runs_cancelled.clone());
        Self {
            reconciles,
            reconcile_errors,
            reconcile_duration,
            tasks_published,
            tasks_succeeded,
            tasks_failed,
            tasks_retried,
            tasks_dead_lettered,
            tasks_lost,
            queues_unavailable,
            tasks_admitted,
            circuit_state,
            backlog_tasks,
            throttled_task_seconds,
            job_duration,
            tasks_in_flight,
            queue_ready,
            queue_consumers,
            dead_letter_messages,
            reports_queue_messages,
            report_messages,
            report_events,
            reports_rejected,
            jobs,
            status_writes,
            status_write_errors,
            broker_connected,
            broker_reconnects,
            leader,
            hooks: Mutex::default(),
            autoscaler_desired_replicas,
            autoscaler_backlog,
            autoscaler_max_replicas,
            autoscaler_scales,
            notification_deliveries,
            schedule_runs_created,
            schedule_slots_missed,
            schedule_slots_skipped,
            schedule_runs_cancelled,
            registry,
        }
    }

    /// Counts folded task outcomes of one pool and priority.
    pub fn record_outcomes(&self, labels: &PoolLabels, delta: OutcomeDelta) {
        if delta.succeeded > 0 {
            self.tasks_succeeded.get_or_create(labels).inc_by(delta.succeeded);
        }
        if delta.retried > 0 {
            self.tasks_retried.get_or_create(labels).inc_by(delta.retried);
        }
        if delta.dead_lettered > 0 {
            self.tasks_dead_lettered.get_or_create(labels).inc_by(delta.dead_lettered);
        }
        if delta.retried + delta.dead_lettered > 0 {
            self.tasks_failed.get_or_create(labels).inc_by(delta.retried + delta.dead_lettered);
        }
    }

    /// Counts one status write of `kind` by its result: accepted, or refused by why.
    pub fn record_status_write<T>(&self, kind: &'static str, result: &Result<T, kube::Error>) {
        match result {
            Ok(_) => self.status_writes.get_or_create(&KindLabels { kind }).inc(),
            Err(error) => {
                let code = match error {
                    kube::Error::Api(status) => Some(status.code),
                    _ => None,
                };
                let reason = status_write_error_reason(code);
                self.status_write_errors.get_or_create(&StatusWriteErrorLabels { kind, reason }).inc()
            }
        };
    }

    /// A Job's end, once: its run time from `startTime` to `completionTime` (Jobs that never
    /// started, such as duplicates, are not observed).
    pub fn record_job_end(&self, namespace: &str, pool: &str, status: &crate::crd::JobStatus) {
        let (Some(start), Some(end)) = (&status.start_time, &status.completion_time) else { return };
        let seconds = end.0.duration_since(start.0).as_secs_f64().max(0.0);
        let labels = JobEndLabels { namespace: namespace.to_string(), pool: pool.to_string(), phase: status.phase.as_str() };
        self.job_duration.get_or_create(&labels).observe(seconds);
    }

    /// Counts a status write given up without an answer (reason `Timeout`).
    pub fn record_status_write_timeout(&self, kind: &'static str) {
        self.status_write_errors.get_or_create(&StatusWriteErrorLabels { kind, reason: "Timeout" }).inc();
    }

    /// Counts one completion-event delivery attempt of `kind` by its outcome.
    pub fn record_notification(&self, kind: &'static str, outcome: &'static str) {
        self.notification_deliveries.get_or_create(&NotificationLabels { kind, outcome }).inc();
    }

    /// Runs `hook` before every scrape, to set the gauges that mirror in-memory state.
    pub fn on_scrape(&self, hook: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.hooks.lock().expect("hooks lock").push(Box::new(hook));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        // Held during the encode too, so two scrapes never see each other's half-set gauges.
        let hooks = self.hooks.lock().expect("hooks lock");
        for hook in hooks.iter() {
            hook(self);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("metrics encode");
        out
    }
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_count_failed_attempts_as_retried_plus_dead_lettered_and_hooks_set_gauges() {
        let m = Metrics::new();
        let labels = PoolLabels { namespace: "ns".into(), pool: "p".into(), priority: "high".into() };
        m.record_outcomes(&labels, OutcomeDelta { succeeded: 3, retried: 2, dead_lettered: 1 });
        m.record_outcomes(&labels, OutcomeDelta::default());
        m.on_scrape(|m| {
            m.jobs.clear();
            m.jobs.get_or_create(&PhaseLabels { namespace: "ns".into(), phase: "Running".into() }).set(2);
        });
        let text = m.encode();
        for line in [
            r#"warren_operator_tasks_succeeded_total{namespace="ns",pool="p",priority="high"} 3"#,
            r#"warren_operator_tasks_retried_total{namespace="ns",pool="p",priority="high"} 2"#,
            r#"warren_operator_tasks_dead_lettered_total{namespace="ns",pool="p",priority="high"} 1"#,
            r#"warren_operator_tasks_failed_total{namespace="ns",pool="p",priority="high"} 3"#,
            r#"warren_operator_jobs{namespace="ns",phase="Running"} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn status_writes_count_per_kind_and_refusals_per_kind_and_bounded_reason() {
        let m = Metrics::new();
        let refused = |code: u16| -> Result<(), kube::Error> {
            Err(kube::Error::Api(
                serde_json::from_value(serde_json::json!({
                    "status": "Failure", "message": "no", "reason": "AnythingTheServerSays", "code": code
                }))
                .expect("a Status"),
            ))
        };
        m.record_status_write(JOB, &Ok::<(), kube::Error>(()));
        m.record_status_write(JOB, &Ok::<(), kube::Error>(()));
        m.record_status_write(WORKER_POOL, &Ok::<(), kube::Error>(()));
        m.record_status_write(JOB, &refused(413));
        m.record_status_write(WORKFLOW, &refused(422));
        m.record_status_write(WORKFLOW, &refused(599));
        let text = m.encode();
        for line in [
            r#"warren_operator_status_writes_total{kind="Job"} 2"#,
            r#"warren_operator_status_writes_total{kind="WorkerPool"} 1"#,
            r#"warren_operator_status_write_errors_total{kind="Job",reason="RequestEntityTooLarge"} 1"#,
            r#"warren_operator_status_write_errors_total{kind="Workflow",reason="Invalid"} 1"#,
            r#"warren_operator_status_write_errors_total{kind="Workflow",reason="ServerError"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("AnythingTheServerSays"), "the server's reason text is never a label:\n{text}");
        assert!(!text.contains(r#"status_writes_total{kind="Workflow"}"#), "a refused write is not a write:\n{text}");
    }

    #[test]
    fn every_refusal_code_maps_to_a_fixed_reason() {
        let cases = [
            (None, "Transport"),
            (Some(400), "BadRequest"),
            (Some(401), "Unauthorized"),
            (Some(403), "Forbidden"),
            (Some(404), "NotFound"),
            (Some(409), "Conflict"),
            (Some(413), "RequestEntityTooLarge"),
            (Some(422), "Invalid"),
            (Some(429), "TooManyRequests"),
            (Some(500), "ServerError"),
            (Some(503), "ServerError"),
            (Some(418), "Other"),
            (Some(302), "Other"),
        ];
        for (code, reason) in cases {
            assert_eq!(status_write_error_reason(code), reason, "{code:?}");
        }
    }
}

//! What the Job controller should do next, decided from the Job, its pool, the ledger and the
//! time. Pure: no client, no broker, no clock (`now` is an argument).

use std::ops::Range;

use warren_protocol::{JobRef, PROTOCOL_VERSION, RetryPolicy, TaskEnvelope};

use crate::controllers::job::ledger::Ledger;
use crate::crd::{FailurePolicy, Job, JobPhase, RetrySpec, Termination, WorkerPool};

/// Condition reason of a Job that ran past `activeDeadlineSeconds`.
pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
/// Condition reason of a fail-fast Job with more failed tasks than its failure policy allows.
pub const MAX_FAILED_TASKS_EXCEEDED: &str = "MaxFailedTasksExceeded";
/// Reason of a Job stopped because the API server refused its status for good (too large, or
/// invalid): its remaining tasks are cancelled, and a compacted status is written instead.
pub const STATUS_TOO_LARGE: &str = "StatusTooLarge";
/// Condition and termination reason: the broker lost queued tasks of the Job
/// (`crate::lost_tasks`).
pub const TASKS_LOST: &str = "TasksLost";

/// Largest serialized payload of one task. RabbitMQ handles more, but a task queue is no place
/// for bulk data: pass a reference (URL, object key) instead.
pub const MAX_TASK_PAYLOAD_BYTES: usize = 256 * 1024;

/// Default of the most bytes one Job may put on the broker (every task's payload together):
/// 1 GiB. A million tasks of a 256 KiB payload would be 256 GB in the queues (RabbitMQ's memory
/// and disk alarms stop every publisher on the broker long before).
pub const DEFAULT_MAX_JOB_BYTES: u64 = 1024 * 1024 * 1024;

/// The operator's limits the plan applies (`--publish-batch`, `--max-job-bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Tasks per confirmed publish batch.
    pub publish_batch: u32,
    /// Most bytes of task payloads one Job may enqueue in all.
    pub max_job_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { publish_batch: 500, max_job_bytes: DEFAULT_MAX_JOB_BYTES }
    }
}

/// Why a Job cannot be enqueued (yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// The spec can never run as written; the user must fix it.
    InvalidSpec(String),
    /// The pool does not exist (yet); the Job starts when it appears.
    PoolNotFound(String),
    /// The pool exists but its queues are not declared yet.
    PoolNotReady(String),
    /// The pool does not serve the Job's priority class.
    PriorityNotServed(String),
    /// Another Job holds the same `idempotencyKey`; this one never runs and mirrors the phase
    /// of the original (the last one seen, once the original is gone).
    DuplicateOf(String, JobPhase),
    /// `startAt` is still ahead (milliseconds since the epoch).
    DelayedUntil(String, u64),
}

impl Blocker {
    /// Stable reason, used in conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Blocker::InvalidSpec(_) => "InvalidSpec",
            Blocker::PoolNotFound(_) => "PoolNotFound",
            Blocker::PoolNotReady(_) => "PoolNotReady",
            Blocker::PriorityNotServed(_) => "PriorityNotServed",
            Blocker::DuplicateOf(..) => "DuplicateOf",
            Blocker::DelayedUntil(..) => "DelayedUntil",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Blocker::InvalidSpec(m)
            | Blocker::PoolNotFound(m)
            | Blocker::PoolNotReady(m)
            | Blocker::PriorityNotServed(m)
            | Blocker::DuplicateOf(m, _)
            | Blocker::DelayedUntil(m, _) => m,
        }
    }

    /// True when only an edit of the Job can unblock it.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Blocker::InvalidSpec(_))
    }
}

/// Why a Job's spec can never run as written (checks the schema cannot make: sizes, times,
/// the retry policy merged over the pool's). The message is the exact problem, shown in the
/// `Ready=False` condition with reason `InvalidSpec` (see [`Blocker::InvalidSpec`]).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error("startAt {text:?} is not an RFC 3339 time (e.g. 2026-12-07T02:00:00Z): {why}")]
    BadStartAt { text: String, why: String },
    #[error("payload is {size} bytes, over the limit of {MAX_TASK_PAYLOAD_BYTES} bytes per task; pass a reference to the data instead")]
    PayloadTooLarge { size: usize },
    #[error(
        "items[{index}] is {size} bytes, over the limit of {MAX_TASK_PAYLOAD_BYTES} bytes per task; pass a reference to the data instead"
    )]
    ItemTooLarge { index: usize, size: usize },
    #[error(
        "the Job's tasks carry {total} bytes of payload in all, over the operator's limit of {limit} bytes \
         (--max-job-bytes); split the Job or pass references to the data"
    )]
    JobTooLarge { total: u64, limit: u64 },
    #[error("retry.backoff.{field}: {text:?} is not a duration such as 500ms, 1s or 2m")]
    BadRetryDelay { field: &'static str, text: String },
    #[error("retry.backoff.{field}: {text:?} must not be negative")]
    NegativeRetryDelay { field: &'static str, text: String },
    #[error("retry.maxAttempts must be at least 1")]
    NoAttempts,
    #[error("retry.backoff.factor must be between 1 and 100, got {0}")]
    BackoffFactorOutOfRange(f64),
    #[error("retry.backoff.jitter must be between 0 and 1, got {0}")]
    JitterOutOfRange(f64),
    #[error("retry.backoff.maxDelay ({max_delay_ms} ms) is shorter than initialDelay ({initial_delay_ms} ms)")]
    MaxDelayBelowInitialDelay { max_delay_ms: u64, initial_delay_ms: u64 },
}

impl ValidationError {
    /// Stable name of the problem. The Job's condition reason stays `InvalidSpec` whatever the
    /// problem (what users and tools match on); this names the problem within it.
    pub fn reason(&self) -> &'static str {
        match self {
            ValidationError::BadStartAt { .. } => "InvalidStartAt",
            ValidationError::PayloadTooLarge { .. } | ValidationError::ItemTooLarge { .. } => "PayloadTooLarge",
            ValidationError::JobTooLarge { .. } => "JobTooLarge",
            ValidationError::BadRetryDelay { .. }
            | ValidationError::NegativeRetryDelay { .. }
            | ValidationError::NoAttempts
            | ValidationError::BackoffFactorOutOfRange(_)
            | ValidationError::JitterOutOfRange(_)
            | ValidationError::MaxDelayBelowInitialDelay { .. } => "InvalidRetry",
        }
    }
}

/// What the operator knows of a Job beside its spec: the parts of its ledger the plan needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Confirmed publish watermark.
    pub enqueued: u32,
    pub finished: u32,
    pub failed: u32,
    /// Dropped tasks waiting to be re-enqueued: (index, attempt), ascending.
    pub dropped: Vec<(u32, u32)>,
    pub active_since_ms: Option<u64>,
    pub terminated: bool,
    /// The broker's message while a queue of the Job's pool is on a node that is down, as the
    /// operator's own queue check saw it ([`crate::queue_health`]): the Job waits for the queue
    /// without waiting for the pool's status to reach it through the watch.
    pub queue_unavailable: Option<String>,
    /// The admission watermark ([`crate::admission`]): under flow control the Job publishes up
    /// to it only.
    pub admitted: u32,
}

impl Observed {
    pub fn of(ledger: &Ledger) -> Self {
        Self {
            enqueued: ledger.enqueued,
            finished: ledger.finished(),
            failed: ledger.failed().len() as u32,
            dropped: ledger.dropped().collect(),
            active_since_ms: ledger.active_since_ms,
            terminated: ledger.terminated.is_some(),
            queue_unavailable: None,
            admitted: ledger.enqueued,
        }
    }
}

/// The next step for a Job.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Wait for the blocker to go away (or forever, if permanent).
    Blocked(Blocker),
    /// `spec.suspend`: enqueue nothing, stop the deadline clock (workers drop the Job's tasks).
    Suspended,
    /// Start the `activeDeadlineSeconds` clock now, then plan again.
    StartClock,
    /// End the Job now; its remaining tasks are cancelled.
    Terminate(Termination),
    /// Publish tasks with these indexes, then plan again.
    Publish { indexes: Range<u32>, retry: RetryPolicy },
    /// Publish again tasks that workers dropped while the Job was suspended: (index, attempt).
    Republish { tasks: Vec<(u32, u32)>, retry: RetryPolicy },
    /// Flow control holds the rest of the Job's tasks: publish more when the admission grants
    /// them (it reconciles the Job); plan again after `wake_in_ms` at the latest (the deadline).
    Held { wake_in_ms: Option<u64> },
    /// Everything is enqueued: follow the reports; plan again after `wake_in_ms` (the deadline).
    Follow { wake_in_ms: Option<u64> },
}

/// Decides the next step at `now_ms`. `earlier` is the Job that holds the same
/// `idempotencyKey`, if another one does (see [`key_holder`]).
pub fn plan(job: &Job, pool: Option<&WorkerPool>, earlier: Option<&Job>, observed: &Observed, limits: &Limits, now_ms: u64) -> Plan {
    let batch_size = limits.publish_batch;
    if let Err(e) = validate(job, limits.max_job_bytes) {
        return Plan::Blocked(Blocker::InvalidSpec(e.to_string()));
    }
    let total = job.task_count();
    if observed.terminated || observed.finished >= total {
        return Plan::Follow { wake_in_ms: None };
    }
    if observed.enqueued == 0 {
        if let Some(original) = earlier {
            let phase = original.status.as_ref().map(|s| s.phase).unwrap_or_default();
            return Plan::Blocked(Blocker::DuplicateOf(
                format!(
                    "idempotencyKey {:?} is held by Job {} (created earlier); this Job does not run and mirrors its phase",
                    job.spec.idempotency_key.as_deref().unwrap_or_default(),
                    original.metadata.name.as_deref().unwrap_or_default(),
                ),
                phase,
            ));
        }
        // Once a duplicate, always: deleting the original does not make this one run.
        if let Some(ready) = duplicate_condition(job) {
            let phase = job.status.as_ref().map(|s| s.phase).unwrap_or_default();
            return Plan::Blocked(Blocker::DuplicateOf(ready.message.clone(), phase));
        }
    }
    if job.spec.suspend {
        return Plan::Suspended;
    }
    // Until it starts, a Job waits for its startAt (validated above); the clock starts after.
    if observed.active_since_ms.is_none()
        && let Some(at_ms) = start_at_ms(job).and_then(Result::ok).filter(|at| *at > now_ms)
    {
        let at = job.spec.start_at.as_deref().unwrap_or_default();
        return Plan::Blocked(Blocker::DelayedUntil(format!("the Job starts at {at} (startAt)"), at_ms));
    }
    let Some(active_since_ms) = observed.active_since_ms else { return Plan::StartClock };
    let deadline_ms = job.spec.active_deadline_seconds.map(|s| active_since_ms.saturating_add(s.saturating_mul(1_000)));
    if deadline_ms.is_some_and(|d| now_ms >= d) {
        let seconds = job.spec.active_deadline_seconds.unwrap_or_default();
        return Plan::Terminate(Termination {
            reason: DEADLINE_EXCEEDED.into(),
            message: format!(
                "the Job was active longer than activeDeadlineSeconds ({seconds}s); its {} unfinished tasks were cancelled",
                total - observed.finished
            ),
            at_ms: now_ms,
        });
    }
    let policy = job.spec.failure_policy.as_ref();
    let allowed = FailurePolicy::allowed_failures(policy);
    if policy.and_then(|p| p.fail_fast).unwrap_or(false) && observed.failed > allowed {
        return Plan::Terminate(Termination {
            reason: MAX_FAILED_TASKS_EXCEEDED.into(),
            message: format!(
                "{} tasks failed, more than failurePolicy.maxFailedTasks ({allowed}); its {} unfinished tasks were cancelled",
                observed.failed,
                total - observed.finished
            ),
            at_ms: now_ms,
        });
    }
    let wake_in_ms = deadline_ms.map(|d| d - now_ms);
    let Some(pool) = pool else {
        return Plan::Blocked(Blocker::PoolNotFound(format!(
            "WorkerPool {:?} not found in this namespace; the Job starts when it exists",
            job.spec.pool_ref
        )));
    };
    if !pool.spec.priorities.contains(&job.spec.priority) {
        return Plan::Blocked(Blocker::PriorityNotServed(format!(
            "priority {:?} is not served by WorkerPool {:?} (it serves {})",
            job.spec.priority,
            job.spec.pool_ref,
            pool.spec.priorities.join(", ")
        )));
    }
    let retry = match resolve_retry(pool.spec.retry.as_ref(), job.spec.tasks.retry.as_ref()) {
        Ok(retry) => retry,
        Err(e) => return Plan::Blocked(Blocker::InvalidSpec(e.to_string())),
    };
    if let Some(why) = &observed.queue_unavailable {
        return Plan::Blocked(Blocker::PoolNotReady(queue_unavailable_message(job, why)));
    }
    if !pool_is_ready(pool) {
        // Quote why, when the pool says (its queues unavailable, the broker unreachable, …).
        let why = pool
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready" && c.status == "False"))
            .map(|c| format!("{}: {}", c.reason, c.message));
        return Plan::Blocked(Blocker::PoolNotReady(match why {
            Some(why) => format!("WorkerPool {:?} is not ready ({why})", job.spec.pool_ref),
            None => format!("WorkerPool {:?} has not declared its queues yet", job.spec.pool_ref),
        }));
    }
    let enqueued = observed.enqueued;
    if enqueued < total {
        // Under flow control, the admission decides how far the Job may publish.
        let limit = if crate::admission::admits(job, pool) { observed.admitted.min(total) } else { total };
        if enqueued >= limit {
            return Plan::Held { wake_in_ms };
        }
        let end = enqueued.saturating_add(batch_size.max(1)).min(limit);
        return Plan::Publish { indexes: enqueued..end, retry };
    }
    if !observed.dropped.is_empty() {
        let tasks = observed.dropped.iter().copied().take(batch_size.max(1) as usize).collect();
        return Plan::Republish { tasks, retry };
    }
    Plan::Follow { wake_in_ms }
}

/// Milliseconds until the Job's `activeDeadlineSeconds` passes, if it has one and its clock runs
/// (when to reconcile a blocked or waiting Job again at the latest).
pub fn deadline_in_ms(job: &Job, observed: &Observed, now_ms: u64) -> Option<u64> {
    let seconds = job.spec.active_deadline_seconds?;
    let deadline = observed.active_since_ms?.saturating_add(seconds.saturating_mul(1_000));
    Some(deadline.saturating_sub(now_ms))
}

/// The uid of the Job that holds `job`'s `idempotencyKey`, among `job` and `others` (the Jobs
/// of the namespace with that key, any order). Duplicates never hold a key. The holder is the
/// current `claim` (the operator's record of who got the key first) while that Job exists, else
/// the first of: Jobs that already enqueued tasks, then the oldest (creation time, then name).
/// So a Job that runs is never turned into a duplicate, and a restarted operator, which starts
/// without claims, decides the same. None when `job` has no key.
pub fn key_holder<'a>(job: &'a Job, others: impl IntoIterator<Item = &'a Job>, claim: Option<&str>) -> Option<String> {
    let key = job.spec.idempotency_key.as_deref()?;
    let candidates: Vec<&Job> = std::iter::once(job)
        .chain(others.into_iter().filter(|o| o.metadata.uid != job.metadata.uid))
        .filter(|o| o.metadata.namespace == job.metadata.namespace)
        .filter(|o| o.spec.idempotency_key.as_deref() == Some(key))
        .filter(|o| !is_duplicate(o))
        .collect();
    if let Some(claimed) = claim.filter(|c| candidates.iter().any(|o| o.metadata.uid.as_deref() == Some(*c))) {
        return Some(claimed.to_string());
    }
    let order = |j: &Job| {
        let enqueued = j.status.as_ref().is_some_and(|s| s.enqueued > 0);
        (!enqueued, j.metadata.creation_timestamp.clone().map(|t| t.0), j.metadata.name.clone())
    };
    candidates.into_iter().min_by_key(|o| order(o)).and_then(|o| o.metadata.uid.clone())
}

/// True when the Job's status says it is a duplicate of another (a decision that sticks).
pub fn is_duplicate(job: &Job) -> bool {
    duplicate_condition(job).is_some()
}

fn duplicate_condition(job: &Job) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    job.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "DuplicateOf")
}

/// What a Job says while a queue of its pool is on a broker node that is down.
pub fn queue_unavailable_message(job: &Job, why: &str) -> String {
    format!("WorkerPool {:?} is not ready (QueueUnavailable: {why})", job.spec.pool_ref)
}

fn pool_is_ready(pool: &WorkerPool) -> bool {
    pool.status
        .as_ref()
        .is_some_and(|s| s.observed_generation.is_some() && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `spec.startAt` in milliseconds since the epoch; `None` when unset.
pub fn start_at_ms(job: &Job) -> Option<Result<u64, ValidationError>> {
    let text = job.spec.start_at.as_deref()?;
    Some(
        text.parse::<jiff::Timestamp>()
            .map(|t| t.as_millisecond().max(0) as u64)
            .map_err(|e| ValidationError::BadStartAt { text: text.to_string(), why: e.to_string() }),
    )
}

/// Checks what the schema cannot: the start time, payload sizes.
pub fn validate(job: &Job, max_job_bytes: u64) -> Result<(), ValidationError> {
    if let Some(Err(e)) = start_at_ms(job) {
        return Err(e);
    }
    let size_of = |value: &serde_json::Value| serde_json::to_vec(value).map(|v| v.len()).unwrap_or(usize::MAX);
    let tasks = &job.spec.tasks;
    if let Some(payload) = &tasks.payload {
        let size = size_of(payload);
        if size > MAX_TASK_PAYLOAD_BYTES {
            return Err(ValidationError::PayloadTooLarge { size });
        }
    }
    let mut total: u64 = 0;
    for (index, item) in tasks.items.iter().flatten().enumerate() {
        let size = size_of(item);
        if size > MAX_TASK_PAYLOAD_BYTES {
            return Err(ValidationError::ItemTooLarge { index, size });
        }
        total += size as u64;
    }
    if let (Some(payload), Some(completions)) = (&tasks.payload, tasks.completions) {
        let size = serde_json::to_vec(payload).map_or(u64::MAX, |v| v.len() as u64);
        total = size.saturating_mul(u64::from(completions));
    }
    if total > max_job_bytes {
        return Err(ValidationError::JobTooLarge { total, limit: max_job_bytes });
    }
    Ok(())
}

/// Merges a Job's retry spec over its pool's, over the defaults.
pub fn resolve_retry(pool: Option<&RetrySpec>, job: Option<&RetrySpec>) -> Result<RetryPolicy, ValidationError> {
    let defaults = RetryPolicy::default();
    fn pick<T>(pool: Option<&RetrySpec>, job: Option<&RetrySpec>, f: impl Fn(&RetrySpec) -> Option<T>) -> Option<T> {
        job.and_then(&f).or_else(|| pool.and_then(&f))
    }
    let duration = |field: &'static str, text: Option<String>, default_ms: u64| -> Result<u64, ValidationError> {
        let Some(text) = text else { return Ok(default_ms) };
        let Ok(parsed) = text.parse::<jiff::SignedDuration>() else { return Err(ValidationError::BadRetryDelay { field, text }) };
        if parsed.is_negative() {
            return Err(ValidationError::NegativeRetryDelay { field, text });
        }
        Ok(parsed.as_millis() as u64)
    };
    let max_attempts = pick(pool, job, |r: &RetrySpec| r.max_attempts).unwrap_or(defaults.max_attempts);
    let initial_delay_ms =
        duration("initialDelay", pick(pool, job, |r: &RetrySpec| r.backoff.as_ref()?.initial_delay.clone()), defaults.initial_delay_ms)?;
    let max_delay_ms = duration("maxDelay", pick(pool, job, |r: &RetrySpec| r.backoff.as_ref()?.max_delay.clone()), defaults.max_delay_ms)?;
    let factor = pick(pool, job, |r: &RetrySpec| r.backoff.as_ref()?.factor).unwrap_or(defaults.factor);
    let jitter = pick(pool, job, |r: &RetrySpec| r.backoff.as_ref()?.jitter).unwrap_or(defaults.jitter);
    if max_attempts == 0 {
        return Err(ValidationError::NoAttempts);
    }
    if !(1.0..=100.0).contains(&factor) {
        return Err(ValidationError::BackoffFactorOutOfRange(factor));
    }
    if !(0.0..=1.0).contains(&jitter) {
        return Err(ValidationError::JitterOutOfRange(jitter));
    }
    if max_delay_ms < initial_delay_ms {
        return Err(ValidationError::MaxDelayBelowInitialDelay { max_delay_ms, initial_delay_ms });
    }
    Ok(RetryPolicy { max_attempts, initial_delay_ms, factor, max_delay_ms, jitter })
}

/// The envelope of task `index` of `job`.
pub fn envelope(job: &Job, job_ref: &JobRef, index: u32, retry: &RetryPolicy) -> TaskEnvelope {
    TaskEnvelope {
        version: PROTOCOL_VERSION,
        job: job_ref.clone(),
        index,
        total: job.task_count(),
        attempt: 1,
        priority: job.spec.priority.clone(),
        task_type: job.spec.tasks.task_type.clone(),
        payload: job.task_payload(index),
        idempotency_key: TaskEnvelope::idempotency_key_for(&job_ref.uid, index),
        retry: retry.clone(),
        timeout_seconds: job.spec.tasks.timeout_seconds,
        replay: 0,
        enqueued_at_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{BackoffSpec, JobSpec, WorkerPoolSpec, WorkerPoolStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    const NOW: u64 = 1_000_000;

    fn obs(enqueued: u32) -> Observed {
        Observed { enqueued, active_since_ms: Some(NOW - 1_000), ..Observed::default() }
    }

    fn job(spec: serde_json::Value) -> Job {
        let spec: JobSpec = serde_json::from_value(spec).unwrap();
        Job::new("j", spec)
    }

    fn pool(ready: bool) -> WorkerPool {
        let spec: WorkerPoolSpec = serde_json::from_value(serde_json::json!({"workers": {}})).unwrap();
        let mut pool = WorkerPool::new("p", spec);
        pool.status = Some(WorkerPoolStatus {
            observed_generation: Some(1),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                reason: "r".into(),
                message: String::new(),
                observed_generation: Some(1),
                last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
            }],
            ..WorkerPoolStatus::default()
        });
        pool
    }

    #[test]
    fn a_job_waits_for_its_start_at_then_starts_its_clock() {
        // NOW is 1,000,000 ms after the epoch: 1970-01-01T00:16:40Z.
        let later = job(serde_json::json!({"poolRef": "p", "startAt": "1970-01-01T00:16:45Z"}));
        let fresh = Observed::default();
        match plan(&later, Some(&pool(true)), None, &fresh, &limits(100), NOW) {
            Plan::Blocked(b @ Blocker::DelayedUntil(_, at)) => {
                assert_eq!((b.reason(), at), ("DelayedUntil", 1_005_000));
                assert_eq!(b.message(), "the Job starts at 1970-01-01T00:16:45Z (startAt)");
                assert!(!b.is_permanent());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(plan(&later, Some(&pool(true)), None, &fresh, &limits(100), 1_005_000), Plan::StartClock), "at the time");
        let past = job(serde_json::json!({"poolRef": "p", "startAt": "1970-01-01T00:00:01+00:00"}));
        assert!(matches!(plan(&past, Some(&pool(true)), None, &fresh, &limits(100), NOW), Plan::StartClock), "a past time starts at once");
        // Once started, a later startAt changes nothing.
        assert!(matches!(plan(&later, Some(&pool(true)), None, &obs(0), &limits(100), NOW), Plan::Publish { .. }));
        // Suspended wins; an unreadable time is a spec error.
        let suspended = job(serde_json::json!({"poolRef": "p", "startAt": "1970-01-01T00:16:45Z", "suspend": true}));
        assert!(matches!(plan(&suspended, Some(&pool(true)), None, &fresh, &limits(100), NOW), Plan::Suspended));
        let bad = job(serde_json::json!({"poolRef": "p", "startAt": "tomorrow at two"}));
        match plan(&bad, Some(&pool(true)), None, &fresh, &limits(100), NOW) {
            Plan::Blocked(Blocker::InvalidSpec(m)) => assert!(m.starts_with("startAt \"tomorrow at two\" is not an RFC 3339 time"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn waits_for_a_missing_or_unready_pool() {
        let j = job(serde_json::json!({"poolRef": "p", "completions": 3}));
        match plan(&j, None, None, &obs(0), &limits(100), NOW) {
            Plan::Blocked(b) => {
                assert_eq!(b.reason(), "PoolNotFound");
                assert!(b.message().contains("\"p\" not found"), "{}", b.message());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(plan(&j, Some(&pool(false)), None, &obs(0), &limits(100), NOW), Plan::Blocked(Blocker::PoolNotReady(_))));
        // The Job says why its pool is not ready, when the pool says.
        let mut down = pool(false);
        let ready = &mut down.status.as_mut().unwrap().conditions[0];
        (ready.reason, ready.message) = ("QueueUnavailable".into(), "queue q is unavailable: home node down".into());
        match plan(&j, Some(&down), None, &obs(0), &limits(100), NOW) {
            Plan::Blocked(b) => {
                assert_eq!(b.message(), "WorkerPool \"p\" is not ready (QueueUnavailable: queue q is unavailable: home node down)")
            }
            other => panic!("{other:?}"),
        }
        let mut new = pool(false);
        new.status = None;
        match plan(&j, Some(&new), None, &obs(0), &limits(100), NOW) {
            Plan::Blocked(b) => assert_eq!(b.message(), "WorkerPool \"p\" has not declared its queues yet"),
            other => panic!("{other:?}"),
        }
        // The operator's own queue check says a queue is down before the pool's status does:
        // a Job with everything enqueued (which would follow its reports) waits and says why.
        let down = Observed { queue_unavailable: Some("home node down".into()), ..obs(3) };
        match plan(&j, Some(&pool(true)), None, &down, &limits(100), NOW) {
            Plan::Blocked(b) => assert_eq!(b.message(), "WorkerPool \"p\" is not ready (QueueUnavailable: home node down)"),
            other => panic!("{other:?}"),
        }
        assert_eq!(plan(&j, Some(&pool(true)), None, &obs(3), &limits(100), NOW), Plan::Follow { wake_in_ms: None });
    }

    #[test]
    fn publishes_in_batches_from_the_watermark() {
        let j = job(serde_json::json!({"poolRef": "p", "completions": 250}));
        let p = pool(true);
        let batch = |enqueued| match plan(&j, Some(&p), None, &obs(enqueued), &limits(100), NOW) {
            Plan::Publish { indexes, .. } => Some(indexes),
            _ => None,
        };
        assert_eq!(batch(0), Some(0..100));
        assert_eq!(batch(200), Some(200..250));
        assert_eq!(plan(&j, Some(&p), None, &obs(250), &limits(100), NOW), Plan::Follow { wake_in_ms: None });
    }

    #[test]
    fn suspension_deadline_and_failure_budget() {
        let p = pool(true);
        let base = serde_json::json!({"poolRef": "p", "completions": 10});
        let with = |extra: serde_json::Value| {
            let mut spec = base.clone();
            spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            job(spec)
        };
        let started =
            |enqueued, finished, failed| Observed { enqueued, finished, failed, active_since_ms: Some(NOW - 5_000), ..Observed::default() };
        let reason = |plan: Plan| match plan {
            Plan::Terminate(t) => format!("{}: {}", t.reason, t.message),
            other => format!("{other:?}"),
        };
        let cases: Vec<(&str, Job, Observed, String)> = vec![
            ("suspended before enqueueing", with(serde_json::json!({"suspend": true})), Observed::default(), "Suspended".into()),
            ("suspended while running", with(serde_json::json!({"suspend": true})), started(10, 3, 0), "Suspended".into()),
            (
                "a suspended Job's clock does not run",
                with(serde_json::json!({"suspend": true, "activeDeadlineSeconds": 1})),
                started(10, 3, 0),
                "Suspended".into(),
            ),
            ("the clock starts on first sight", with(serde_json::json!({})), Observed::default(), "StartClock".into()),
            (
                "within the deadline",
                with(serde_json::json!({"activeDeadlineSeconds": 6})),
                started(10, 3, 0),
                "Follow { wake_in_ms: Some(1000) }".into(),
            ),
            (
                "past the deadline",
                with(serde_json::json!({"activeDeadlineSeconds": 5})),
                started(10, 3, 0),
                "DeadlineExceeded: the Job was active longer than activeDeadlineSeconds (5s); its 7 unfinished tasks were cancelled".into(),
            ),
            (
                "a finished Job has no deadline",
                with(serde_json::json!({"activeDeadlineSeconds": 5})),
                started(10, 10, 0),
                "Follow { wake_in_ms: None }".into(),
            ),
            (
                "failures within budget",
                with(serde_json::json!({"failurePolicy": {"maxFailedTasks": 2, "failFast": true}})),
                started(10, 4, 2),
                "Follow { wake_in_ms: None }".into(),
            ),
            (
                "fail fast over budget",
                with(serde_json::json!({"failurePolicy": {"maxFailedTasks": 2, "failFast": true}})),
                started(10, 4, 3),
                "MaxFailedTasksExceeded: 3 tasks failed, more than failurePolicy.maxFailedTasks (2); its 6 unfinished tasks were cancelled"
                    .into(),
            ),
            (
                "no fail fast: the rest runs",
                with(serde_json::json!({"failurePolicy": {"maxFailedTasks": 2}})),
                started(10, 4, 3),
                "Follow { wake_in_ms: None }".into(),
            ),
            (
                "terminated is final",
                with(serde_json::json!({"activeDeadlineSeconds": 5})),
                Observed { terminated: true, ..started(10, 3, 0) },
                "Follow { wake_in_ms: None }".into(),
            ),
        ];
        for (name, j, observed, want) in cases {
            assert_eq!(reason(plan(&j, Some(&p), None, &observed, &limits(100), NOW)), want, "{name}");
        }
        // The deadline also ends a Job that waits for its pool, and bounds the wait.
        let waiting = with(serde_json::json!({"activeDeadlineSeconds": 5}));
        assert!(reason(plan(&waiting, None, None, &started(0, 0, 0), &limits(100), NOW)).starts_with("DeadlineExceeded: "));
        let patient = with(serde_json::json!({"activeDeadlineSeconds": 60}));
        assert!(matches!(plan(&patient, None, None, &started(0, 0, 0), &limits(100), NOW), Plan::Blocked(Blocker::PoolNotFound(_))));
        assert_eq!(deadline_in_ms(&patient, &started(0, 0, 0), NOW), Some(55_000));
        assert_eq!(deadline_in_ms(&patient, &Observed::default(), NOW), None, "no clock yet");
    }

    #[test]
    fn a_resumed_job_republishes_its_dropped_tasks_with_their_attempts() {
        let j = job(serde_json::json!({"poolRef": "p", "completions": 5}));
        let observed = Observed { dropped: vec![(1, 1), (3, 2), (4, 1)], ..obs(5) };
        match plan(&j, Some(&pool(true)), None, &observed, &limits(2), NOW) {
            Plan::Republish { tasks, .. } => assert_eq!(tasks, vec![(1, 1), (3, 2)]),
            other => panic!("{other:?}"),
        }
        // Not while suspended.
        let suspended = job(serde_json::json!({"poolRef": "p", "completions": 5, "suspend": true}));
        assert_eq!(plan(&suspended, Some(&pool(true)), None, &observed, &limits(2), NOW), Plan::Suspended);
    }

    #[test]
    fn the_oldest_job_holds_an_idempotency_key() {
        let keyed = |name: &str, created: i64, key: &str| {
            let mut j = job(serde_json::json!({"poolRef": "p", "idempotencyKey": key}));
            j.metadata.name = Some(name.into());
            j.metadata.uid = Some(format!("uid-{name}"));
            j.metadata.namespace = Some("ns".into());
            j.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(created).unwrap()));
            j
        };
        let (a, b, c, other) = (keyed("a", 10, "k"), keyed("b", 20, "k"), keyed("c", 20, "k"), keyed("d", 5, "x"));
        let all = [a.clone(), b.clone(), c.clone(), other.clone()];
        let holder = |j: &Job, others: &[&Job], claim: Option<&str>| key_holder(j, others.iter().copied(), claim);
        let everyone: Vec<&Job> = all.iter().collect();
        assert_eq!(holder(&a, &everyone, None).as_deref(), Some("uid-a"));
        assert_eq!(holder(&b, &everyone, None).as_deref(), Some("uid-a"));
        assert_eq!(holder(&c, &everyone, None).as_deref(), Some("uid-a"));
        // Without a: b is older than c by name.
        assert_eq!(holder(&c, &[&b, &c], None).as_deref(), Some("uid-b"));
        assert_eq!(holder(&other, &everyone, None).as_deref(), Some("uid-d"));
        // A claim wins while its Job exists; a stale claim is ignored.
        assert_eq!(holder(&a, &everyone, Some("uid-c")).as_deref(), Some("uid-c"));
        assert_eq!(holder(&a, &everyone, Some("uid-gone")).as_deref(), Some("uid-a"));
        // A Job that already enqueued holds the key, even if younger.
        let mut started_c = c.clone();
        started_c.status = Some(crate::crd::JobStatus { enqueued: 1, ..Default::default() });
        assert_eq!(holder(&a, &[&a, &started_c], None).as_deref(), Some("uid-c"));
        let mut original = a.clone();
        original.status = Some(crate::crd::JobStatus { phase: JobPhase::Running, ..Default::default() });
        match plan(&b, Some(&pool(true)), Some(&original), &obs(0), &limits(10), NOW) {
            Plan::Blocked(Blocker::DuplicateOf(message, phase)) => {
                assert_eq!(message, "idempotencyKey \"k\" is held by Job a (created earlier); this Job does not run and mirrors its phase");
                assert_eq!(phase, JobPhase::Running);
            }
            other => panic!("{other:?}"),
        }
        // A Job that already enqueued is never turned into a duplicate.
        assert!(matches!(plan(&b, Some(&pool(true)), Some(&original), &obs(1), &limits(10), NOW), Plan::Follow { .. }));
        // A duplicate stays one after the original is gone.
        let mut marked = b.clone();
        marked.status = Some(crate::crd::JobStatus {
            phase: JobPhase::Succeeded,
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: "DuplicateOf".into(),
                message: "held by a".into(),
                observed_generation: None,
                last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
            }],
            ..Default::default()
        });
        assert!(is_duplicate(&marked));
        assert_eq!(holder(&c, &[&marked, &c], None).as_deref(), Some("uid-c"), "a duplicate does not hold the key");
        assert_eq!(
            plan(&marked, Some(&pool(true)), None, &obs(0), &limits(10), NOW),
            Plan::Blocked(Blocker::DuplicateOf("held by a".into(), JobPhase::Succeeded))
        );
    }

    #[test]
    fn rejects_priorities_the_pool_does_not_serve() {
        let j = job(serde_json::json!({"poolRef": "p", "priority": "urgent"}));
        match plan(&j, Some(&pool(true)), None, &obs(0), &limits(10), NOW) {
            Plan::Blocked(b) => {
                assert_eq!(b.message(), "priority \"urgent\" is not served by WorkerPool \"p\" (it serves high, normal, low)")
            }
            other => panic!("{other:?}"),
        }
    }

    fn limits(publish_batch: u32) -> Limits {
        Limits { publish_batch, ..Limits::default() }
    }

    #[test]
    fn a_job_over_the_total_payload_limit_is_invalid_and_names_the_limit() {
        let payload = serde_json::json!({"blob": "x".repeat(1000)}); // 1,011 bytes
        let tight = Limits { publish_batch: 10, max_job_bytes: 1_000_000 };
        let cases = [
            (serde_json::json!({"poolRef": "p", "payload": payload, "completions": 989}), None),
            (
                serde_json::json!({"poolRef": "p", "payload": payload, "completions": 990}),
                Some("the Job's tasks carry 1000890 bytes of payload in all, over the operator's limit of 1000000 bytes"),
            ),
            (serde_json::json!({"poolRef": "p", "items": vec![payload.clone(); 990]}), Some("the Job's tasks carry 1000890 bytes")),
        ];
        for (spec, refused) in cases {
            let j = job(spec);
            match (plan(&j, Some(&pool(true)), None, &obs(0), &tight, NOW), refused) {
                (Plan::Blocked(Blocker::InvalidSpec(m)), Some(prefix)) => assert!(m.starts_with(prefix), "{m}"),
                (Plan::Blocked(Blocker::InvalidSpec(m)), None) => panic!("refused within the limit: {m}"),
                (_, Some(prefix)) => panic!("accepted over the limit: {prefix}"),
                (_, None) => {}
            }
        }
    }

    #[test]
    fn rejects_oversized_payloads() {
        let big = "x".repeat(MAX_TASK_PAYLOAD_BYTES);
        let j = job(serde_json::json!({"poolRef": "p", "items": [1, big]}));
        match plan(&j, Some(&pool(true)), None, &obs(0), &limits(10), NOW) {
            Plan::Blocked(Blocker::InvalidSpec(m)) => assert!(m.starts_with("items[1] is 262146 bytes"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn job_retry_fields_override_the_pool() {
        let pool_retry =
            RetrySpec { max_attempts: Some(5), backoff: Some(BackoffSpec { initial_delay: Some("2s".into()), ..Default::default() }) };
        let job_retry = RetrySpec {
            max_attempts: None,
            backoff: Some(BackoffSpec { factor: Some(3.0), max_delay: Some("1m30s".into()), ..Default::default() }),
        };
        let r = resolve_retry(Some(&pool_retry), Some(&job_retry)).unwrap();
        assert_eq!((r.max_attempts, r.initial_delay_ms, r.factor, r.max_delay_ms), (5, 2_000, 3.0, 90_000));
        assert_eq!(resolve_retry(None, None).unwrap(), RetryPolicy::default());
    }

    #[test]
    fn bad_retry_numbers_are_explained() {
        let backoff = |initial: &str, max: Option<&str>, factor: Option<f64>, jitter: Option<f64>| BackoffSpec {
            initial_delay: Some(initial.into()),
            max_delay: max.map(Into::into),
            factor,
            jitter,
        };
        let cases = [
            (
                RetrySpec { max_attempts: None, backoff: Some(backoff("soon", None, None, None)) },
                ValidationError::BadRetryDelay { field: "initialDelay", text: "soon".into() },
                "retry.backoff.initialDelay: \"soon\" is not a duration such as 500ms, 1s or 2m",
            ),
            (
                RetrySpec { max_attempts: None, backoff: Some(backoff("1s", Some("-1s"), None, None)) },
                ValidationError::NegativeRetryDelay { field: "maxDelay", text: "-1s".into() },
                "retry.backoff.maxDelay: \"-1s\" must not be negative",
            ),
            (RetrySpec { max_attempts: Some(0), backoff: None }, ValidationError::NoAttempts, "retry.maxAttempts must be at least 1"),
            (
                RetrySpec { max_attempts: None, backoff: Some(backoff("1s", None, Some(0.5), None)) },
                ValidationError::BackoffFactorOutOfRange(0.5),
                "retry.backoff.factor must be between 1 and 100, got 0.5",
            ),
            (
                RetrySpec { max_attempts: None, backoff: Some(backoff("1s", None, None, Some(2.0))) },
                ValidationError::JitterOutOfRange(2.0),
                "retry.backoff.jitter must be between 0 and 1, got 2",
            ),
            (
                RetrySpec { max_attempts: None, backoff: Some(backoff("2m", Some("1m"), None, None)) },
                ValidationError::MaxDelayBelowInitialDelay { max_delay_ms: 60_000, initial_delay_ms: 120_000 },
                "retry.backoff.maxDelay (60000 ms) is shorter than initialDelay (120000 ms)",
            ),
        ];
        for (retry, error, message) in cases {
            let got = resolve_retry(None, Some(&retry)).unwrap_err();
            assert_eq!((&got, got.to_string().as_str(), got.reason()), (&error, message, "InvalidRetry"));
        }
    }

    #[test]
    fn invalid_specs_name_the_problem() {
        let big = "x".repeat(MAX_TASK_PAYLOAD_BYTES);
        let cases = [
            (
                serde_json::json!({"poolRef": "p", "startAt": "tomorrow at two"}),
                "InvalidStartAt",
                "startAt \"tomorrow at two\" is not an RFC 3339 time (e.g. 2026-12-07T02:00:00Z): ",
            ),
            (
                serde_json::json!({"poolRef": "p", "payload": big}),
                "PayloadTooLarge",
                "payload is 262146 bytes, over the limit of 262144 bytes per task; pass a reference to the data instead",
            ),
            (
                serde_json::json!({"poolRef": "p", "items": [1, big]}),
                "PayloadTooLarge",
                "items[1] is 262146 bytes, over the limit of 262144 bytes per task; pass a reference to the data instead",
            ),
            (
                serde_json::json!({"poolRef": "p", "payload": "x".repeat(98), "completions": 11}),
                "JobTooLarge",
                "the Job's tasks carry 1100 bytes of payload in all, over the operator's limit of 1000 bytes (--max-job-bytes); \
                 split the Job or pass references to the data",
            ),
        ];
        for (spec, reason, message) in cases {
            let e = validate(&job(spec), 1_000).unwrap_err();
            assert_eq!(e.reason(), reason, "{e}");
            assert!(e.to_string().starts_with(message), "{e}");
        }
    }

    #[test]
    fn envelopes_carry_index_payload_and_key() {
        let j = job(serde_json::json!({"poolRef": "p", "items": [{"a": 1}, {"a": 2}], "priority": "high"}));
        let job_ref = JobRef { namespace: "ns".into(), name: "j".into(), uid: "u".into() };
        let e = envelope(&j, &job_ref, 1, &RetryPolicy::default());
        assert_eq!((e.index, e.total, e.attempt), (1, 2, 1));
        assert_eq!(e.payload, serde_json::json!({"a": 2}));
        assert_eq!(e.idempotency_key, "u/1");
        assert_eq!(e.priority, "high");
    }
}

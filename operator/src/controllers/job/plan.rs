//! What the Job controller should do next, decided from the Job, its pool, the ledger and the
//! time. Pure: no client, no broker, no clock (`now` is an argument).

use std::ops::Range;

use warren_protocol::{JobRef, PROTOCOL_VERSION, RetryPolicy, TaskEnvelope};

use crate::crd::{FailurePolicy, Job, JobPhase, RetrySpec, Termination, WorkerPool};
use crate::ledger::Ledger;

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
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Blocker::InvalidSpec(m)
            | Blocker::PoolNotFound(m)
            | Blocker::PoolNotReady(m)
            | Blocker::PriorityNotServed(m)
            | Blocker::DuplicateOf(m, _) => m,
        }
    }

    /// True when only an edit of the Job can unblock it.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Blocker::InvalidSpec(_))
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
    /// Everything is enqueued: follow the reports; plan again after `wake_in_ms` (the deadline).
    Follow { wake_in_ms: Option<u64> },
}

/// Decides the next step at `now_ms`. `earlier` is the Job that holds the same
/// `idempotencyKey`, if another one does (see [`key_holder`]).
pub fn plan(
    job: &Job,
    pool: Option<&WorkerPool>,
    earlier: Option<&Job>,
    observed: &Observed,
    limits: &Limits,
    now_ms: u64,
) -> Plan {
    let batch_size = limits.publish_batch;
    if let Err(message) = validate(job, limits.max_job_bytes) {
        return Plan::Blocked(Blocker::InvalidSpec(message));
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
    let retry = match resolve_retry(pool.spec.retry.as_ref(), job.spec.retry.as_ref()) {
        Ok(retry) => retry,
        Err(message) => return Plan::Blocked(Blocker::InvalidSpec(message)),
    };
    if !pool_is_ready(pool) {
        return Plan::Blocked(Blocker::PoolNotReady(format!(
            "WorkerPool {:?} has not declared its queues yet",
            job.spec.pool_ref
        )));
    }
    let enqueued = observed.enqueued;
    if enqueued < total {
        let end = enqueued.saturating_add(batch_size.max(1)).min(total);
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
    job.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "DuplicateOf")
}

fn pool_is_ready(pool: &WorkerPool) -> bool {
    pool.status.as_ref().is_some_and(|s| {
        s.observed_generation.is_some()
            && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Checks what the schema cannot: payload sizes.
pub fn validate(job: &Job, max_job_bytes: u64) -> Result<(), String> {
    let too_big = |what: String, value: &serde_json::Value| {
        let size = serde_json::to_vec(value).map(|v| v.len()).unwrap_or(usize::MAX);
        (size > MAX_TASK_PAYLOAD_BYTES).then(|| {
            format!("{what} is {size} bytes, over the limit of {MAX_TASK_PAYLOAD_BYTES} bytes per task; pass a reference to the data instead")
        })
    };
    if let Some(payload) = &job.spec.payload {
        if let Some(message) = too_big("payload".into(), payload) {
            return Err(message);
        }
    }
    let mut total: u64 = 0;
    for (i, item) in job.spec.items.iter().flatten().enumerate() {
        if let Some(message) = too_big(format!("items[{i}]"), item) {
            return Err(message);
        }
        total += serde_json::to_vec(item).map_or(u64::MAX, |v| v.len() as u64);
    }
    if let (Some(payload), Some(completions)) = (&job.spec.payload, job.spec.completions) {
        let size = serde_json::to_vec(payload).map_or(u64::MAX, |v| v.len() as u64);
        total = size.saturating_mul(u64::from(completions));
    }
    if total > max_job_bytes {
        return Err(format!(
            "the Job's tasks carry {total} bytes of payload in all, over the operator's limit of {max_job_bytes} bytes \
             (--max-job-bytes); split the Job or pass references to the data"
        ));
    }
    Ok(())
}

/// Merges a Job's retry spec over its pool's, over the defaults.
pub fn resolve_retry(pool: Option<&RetrySpec>, job: Option<&RetrySpec>) -> Result<RetryPolicy, String> {
    let defaults = RetryPolicy::default();
    fn pick<T>(pool: Option<&RetrySpec>, job: Option<&RetrySpec>, f: impl Fn(&RetrySpec) -> Option<T>) -> Option<T> {
        job.and_then(&f).or_else(|| pool.and_then(&f))
    }
    let duration = |field: &str, text: Option<String>, default_ms: u64| -> Result<u64, String> {
        let Some(text) = text else { return Ok(default_ms) };
        let parsed: jiff::SignedDuration =
            text.parse().map_err(|_| format!("retry.backoff.{field}: {text:?} is not a duration such as 500ms, 1s or 2m"))?;
        if parsed.is_negative() {
            return Err(format!("retry.backoff.{field}: {text:?} must not be negative"));
        }
        Ok(parsed.as_millis() as u64)
    };
    let max_attempts = pick(pool, job, |r: &RetrySpec| r.max_attempts).unwrap_or(defaults.max_attempts);
    let initial_delay_ms = duration(
        "initialDelay",
        pick(pool, job, |r: &RetrySpec| r.backoff.as_ref()?.initial_delay.clone()),
        defaults.initial_delay_ms,
    )?;
    let max_delay_ms =
        duration("maxDelay", pick(pool, job, |r: &RetrySpec| r.backoff.as_ref()?.max_delay.clone()), defaults.max_delay_ms)?;
    let factor = pick(pool, job, |r: &RetrySpec| r.backoff.as_ref()?.factor).unwrap_or(defaults.factor);
    let jitter = pick(pool, job, |r: &RetrySpec| r.backoff.as_ref()?.jitter).unwrap_or(defaults.jitter);
    if max_attempts == 0 {
        return Err("retry.maxAttempts must be at least 1".into());
    }
    if !(1.0..=100.0).contains(&factor) {
        return Err(format!("retry.backoff.factor must be between 1 and 100, got {factor}"));
    }
    if !(0.0..=1.0).contains(&jitter) {
        return Err(format!("retry.backoff.jitter must be between 0 and 1, got {jitter}"));
    }
    if max_delay_ms < initial_delay_ms {
        return Err(format!(
            "retry.backoff.maxDelay ({max_delay_ms} ms) is shorter than initialDelay ({initial_delay_ms} ms)"
        ));
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
        task_type: job.spec.task_type.clone(),
        payload: job.task_payload(index),
        idempotency_key: TaskEnvelope::idempotency_key_for(&job_ref.uid, index),
        retry: retry.clone(),
        timeout_seconds: job.spec.timeout_seconds,
        replay: 0,
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
        let started = |enqueued, finished, failed| Observed {
            enqueued,
            finished,
            failed,
            active_since_ms: Some(NOW - 5_000),
            ..Observed::default()
        };
        let reason = |plan: Plan| match plan {
            Plan::Terminate(t) => format!("{}: {}", t.reason, t.message),
            other => format!("{other:?}"),
        };
        let cases: Vec<(&str, Job, Observed, String)> = vec![
            ("suspended before enqueueing", with(serde_json::json!({"suspend": true})), Observed::default(), "Suspended".into()),
            ("suspended while running", with(serde_json::json!({"suspend": true})), started(10, 3, 0), "Suspended".into()),
            ("a suspended Job's clock does not run", with(serde_json::json!({"suspend": true, "activeDeadlineSeconds": 1})), started(10, 3, 0), "Suspended".into()),
            ("the clock starts on first sight", with(serde_json::json!({})), Observed::default(), "StartClock".into()),
            ("within the deadline", with(serde_json::json!({"activeDeadlineSeconds": 6})), started(10, 3, 0), "Follow { wake_in_ms: Some(1000) }".into()),
            ("past the deadline", with(serde_json::json!({"activeDeadlineSeconds": 5})), started(10, 3, 0),
                "DeadlineExceeded: the Job was active longer than activeDeadlineSeconds (5s); its 7 unfinished tasks were cancelled".into()),
            ("a finished Job has no deadline", with(serde_json::json!({"activeDeadlineSeconds": 5})), started(10, 10, 0), "Follow { wake_in_ms: None }".into()),
            ("failures within budget", with(serde_json::json!({"failurePolicy": {"maxFailedTasks": 2, "failFast": true}})), started(10, 4, 2), "Follow { wake_in_ms: None }".into()),
            ("fail fast over budget", with(serde_json::json!({"failurePolicy": {"maxFailedTasks": 2, "failFast": true}})), started(10, 4, 3),
                "MaxFailedTasksExceeded: 3 tasks failed, more than failurePolicy.maxFailedTasks (2); its 6 unfinished tasks were cancelled".into()),
            ("no fail fast: the rest runs", with(serde_json::json!({"failurePolicy": {"maxFailedTasks": 2}})), started(10, 4, 3), "Follow { wake_in_ms: None }".into()),
            ("terminated is final", with(serde_json::json!({"activeDeadlineSeconds": 5})), Observed { terminated: true, ..started(10, 3, 0) }, "Follow { wake_in_ms: None }".into()),
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
            Plan::Blocked(b) => assert_eq!(
                b.message(),
                "priority \"urgent\" is not served by WorkerPool \"p\" (it serves high, normal, low)"
            ),
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
            (serde_json::json!({"poolRef": "p", "payload": payload, "completions": 990}), Some("the Job's tasks carry 1000890 bytes of payload in all, over the operator's limit of 1000000 bytes")),
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
        let pool_retry = RetrySpec {
            max_attempts: Some(5),
            backoff: Some(BackoffSpec { initial_delay: Some("2s".into()), ..Default::default() }),
        };
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
        let bad = |backoff: BackoffSpec| resolve_retry(None, Some(&RetrySpec { max_attempts: None, backoff: Some(backoff) })).unwrap_err();
        assert!(bad(BackoffSpec { initial_delay: Some("soon".into()), ..Default::default() }).contains("\"soon\" is not a duration"));
        assert!(bad(BackoffSpec { initial_delay: Some("-1s".into()), ..Default::default() }).contains("must not be negative"));
        assert!(bad(BackoffSpec { initial_delay: Some("2m".into()), max_delay: Some("1m".into()), ..Default::default() })
            .contains("shorter than initialDelay"));
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

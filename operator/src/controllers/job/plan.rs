//! What the Job controller should do next, decided from the Job, its pool and the ledger.
//! Pure: no client, no broker, no clock.

use std::ops::Range;

use warren_protocol::{JobRef, PROTOCOL_VERSION, RetryPolicy, TaskEnvelope};

use crate::crd::{Job, RetrySpec, WorkerPool};

/// Largest serialized payload of one task. RabbitMQ handles more, but a task queue is no place
/// for bulk data: pass a reference (URL, object key) instead.
pub const MAX_TASK_PAYLOAD_BYTES: usize = 256 * 1024;

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
}

impl Blocker {
    /// Stable reason, used in conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Blocker::InvalidSpec(_) => "InvalidSpec",
            Blocker::PoolNotFound(_) => "PoolNotFound",
            Blocker::PoolNotReady(_) => "PoolNotReady",
            Blocker::PriorityNotServed(_) => "PriorityNotServed",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Blocker::InvalidSpec(m)
            | Blocker::PoolNotFound(m)
            | Blocker::PoolNotReady(m)
            | Blocker::PriorityNotServed(m) => m,
        }
    }

    /// True when only an edit of the Job can unblock it.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Blocker::InvalidSpec(_))
    }
}

/// The next step for a Job.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Wait for the blocker to go away (or forever, if permanent).
    Blocked(Blocker),
    /// Publish tasks with these indexes, then plan again.
    Publish { indexes: Range<u32>, retry: RetryPolicy },
    /// Everything is enqueued: nothing to do but follow the reports.
    Follow,
}

/// Decides the next step. `enqueued` is the confirmed publish watermark.
pub fn plan(job: &Job, pool: Option<&WorkerPool>, enqueued: u32, batch_size: u32) -> Plan {
    if let Err(message) = validate(job) {
        return Plan::Blocked(Blocker::InvalidSpec(message));
    }
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
    let total = job.task_count();
    if enqueued >= total {
        return Plan::Follow;
    }
    let end = enqueued.saturating_add(batch_size.max(1)).min(total);
    Plan::Publish { indexes: enqueued..end, retry }
}

fn pool_is_ready(pool: &WorkerPool) -> bool {
    pool.status.as_ref().is_some_and(|s| {
        s.observed_generation.is_some()
            && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Checks what the schema cannot: payload sizes.
pub fn validate(job: &Job) -> Result<(), String> {
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
    for (i, item) in job.spec.items.iter().flatten().enumerate() {
        if let Some(message) = too_big(format!("items[{i}]"), item) {
            return Err(message);
        }
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
        match plan(&j, None, 0, 100) {
            Plan::Blocked(b) => {
                assert_eq!(b.reason(), "PoolNotFound");
                assert!(b.message().contains("\"p\" not found"), "{}", b.message());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(plan(&j, Some(&pool(false)), 0, 100), Plan::Blocked(Blocker::PoolNotReady(_))));
    }

    #[test]
    fn publishes_in_batches_from_the_watermark() {
        let j = job(serde_json::json!({"poolRef": "p", "completions": 250}));
        let p = pool(true);
        let batch = |enqueued| match plan(&j, Some(&p), enqueued, 100) {
            Plan::Publish { indexes, .. } => Some(indexes),
            _ => None,
        };
        assert_eq!(batch(0), Some(0..100));
        assert_eq!(batch(200), Some(200..250));
        assert_eq!(plan(&j, Some(&p), 250, 100), Plan::Follow);
    }

    #[test]
    fn rejects_priorities_the_pool_does_not_serve() {
        let j = job(serde_json::json!({"poolRef": "p", "priority": "urgent"}));
        match plan(&j, Some(&pool(true)), 0, 10) {
            Plan::Blocked(b) => assert_eq!(
                b.message(),
                "priority \"urgent\" is not served by WorkerPool \"p\" (it serves high, normal, low)"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_oversized_payloads() {
        let big = "x".repeat(MAX_TASK_PAYLOAD_BYTES);
        let j = job(serde_json::json!({"poolRef": "p", "items": [1, big]}));
        match plan(&j, Some(&pool(true)), 0, 10) {
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

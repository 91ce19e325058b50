//! Why a Job's tasks wait to start (`status.waiting`): the one reason that holds them now, in a
//! stable word, in words with the numbers, and about how many tasks start first.
//!
//! Owns the decision, from what the operator already knows: the Job's blocker (nothing enqueued
//! yet), its queued count, the other Jobs of its pool in the book (their priority, creation and
//! queued counts: RabbitMQ serves a pool's classes strictly and each queue first-in first-out),
//! and the pool's replicas and autoscaling. Pure: no client, no clock (`now` is given). It asks
//! the broker nothing, so it costs no I/O; it is computed when the status is written and changes
//! the status only when the reason (or the count ahead) does.

use crate::admission::Held;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::plan::Blocker;
use crate::crd::{Job, JobWaiting, WorkerPool};

/// What the book knows of another Job of the same pool.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedJob {
    pub priority: String,
    /// `metadata.creationTimestamp` (milliseconds), then the name: the enqueue order of Jobs.
    pub created_ms: i64,
    pub name: String,
    pub queued: u32,
}

/// The Job itself, as [`QueuedJob`] says it.
pub fn queued_job(job: &Job, queued: u32) -> QueuedJob {
    QueuedJob {
        priority: job.spec.priority.clone(),
        created_ms: job.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_millisecond()),
        name: job.metadata.name.clone().unwrap_or_default(),
        queued,
    }
}

/// Why the Job waits, if it does. `(queued, running)` are the Job's own counts; `others` the
/// other unfinished Jobs of its pool; `previous` the last `waiting` written (its `since` is kept
/// while the reason holds).
#[allow(clippy::too_many_arguments)]
pub fn waiting(
    job: &Job,
    (queued, running): (u32, u32),
    held: Option<(Held, u32)>,
    blocker: Option<&Blocker>,
    pool: Option<&WorkerPool>,
    others: &[QueuedJob],
    previous: Option<&JobWaiting>,
    now: &Time,
) -> Option<JobWaiting> {
    let (reason, message, tasks_ahead) = match blocker {
        Some(b @ (Blocker::DelayedUntil(..) | Blocker::PoolNotFound(_) | Blocker::PoolNotReady(_) | Blocker::PriorityNotServed(_))) => {
            (b.reason(), b.message().to_string(), None)
        }
        // Refused, or a duplicate: it does not wait, it will not run (its Ready condition says).
        Some(Blocker::InvalidSpec(_) | Blocker::DuplicateOf(..)) => return None,
        None if job.spec.suspend => return None,
        // Held back by the pool's flow control (tasks not admitted to its queues yet).
        None if let Some((why @ (Held::ConcurrencyLimited | Held::RateLimited | Held::FairShare | Held::CircuitOpen), n)) = held => {
            (why.reason(), held_message(job, why, n, pool), None)
        }
        None if queued == 0 && held.is_none() => return None,
        None => {
            let pool = pool?;
            queued_reason(job, queued, running, pool, others)
        }
    };
    let since = match previous {
        Some(p) if p.reason == reason => p.since.clone(),
        _ => now.clone(),
    };
    Some(JobWaiting { reason: reason.to_string(), message, tasks_ahead, since })
}

/// What a Job held back by its pool's admission waits for.
fn held_message(job: &Job, why: Held, held: u32, pool: Option<&WorkerPool>) -> String {
    let tasks = if held == 1 { "1 task".to_string() } else { format!("{held} tasks") };
    let name = &job.spec.pool_ref;
    match why {
        Held::ConcurrencyLimited => {
            match (job.spec.max_running, pool.and_then(|p| p.spec.fairness.as_ref()).and_then(|f| f.max_running_per_key)) {
                (Some(max), _) => format!("{tasks} of this Job wait: at most {max} run at once (spec.maxRunning)"),
                (None, Some(max)) => format!(
                    "{tasks} of this Job wait: at most {max} tasks of fairnessKey {:?} run at once in WorkerPool {name:?} (fairness.maxRunningPerKey)",
                    job.spec.fairness_key.clone().unwrap_or_else(|| kube::ResourceExt::name_any(job))
                ),
                (None, None) => format!("{tasks} of this Job wait for a concurrency limit"),
            }
        }
        Held::RateLimited => {
            let rate = pool.and_then(|p| p.spec.rate_limit.as_ref()).map(|r| r.tasks_per_second).unwrap_or_default();
            format!("{tasks} of this Job wait: WorkerPool {name:?} starts at most {rate} tasks per second (rateLimit)")
        }
        Held::CircuitOpen => format!(
            "{tasks} of this Job wait: the circuit breaker of WorkerPool {name:?} is open (too many attempts failed); tasks start again once its probe tasks succeed (see the pool's CircuitOpen condition)"
        ),
        Held::FairShare | Held::Queued => {
            format!("{tasks} of this Job wait for their fair share of WorkerPool {name:?}: other fairness keys have their turn")
        }
    }
}

/// The reason for a Job with tasks in its pool's queue.
fn queued_reason(job: &Job, queued: u32, running: u32, pool: &WorkerPool, others: &[QueuedJob]) -> (&'static str, String, Option<u64>) {
    let me = queued_job(job, queued);
    let rank = |priority: &str| pool.spec.priorities.iter().position(|p| p == priority).unwrap_or(usize::MAX);
    let my_rank = rank(&me.priority);
    let higher: u64 = others.iter().filter(|o| rank(&o.priority) < my_rank).map(|o| u64::from(o.queued)).sum();
    let earlier: u64 = others
        .iter()
        .filter(|o| o.priority == me.priority && (o.created_ms, &o.name) < (me.created_ms, &me.name))
        .map(|o| u64::from(o.queued))
        .sum();
    let ahead = higher + earlier;
    let name = &job.spec.pool_ref;
    let status = pool.status.clone().unwrap_or_default();
    let slots = i64::from(status.ready_replicas.max(0)) * i64::from(pool.spec.concurrency);
    let tasks = |n: u64| if n == 1 { "1 task".to_string() } else { format!("{n} tasks") };
    if higher > 0 {
        let classes: Vec<&str> = pool.spec.priorities.iter().take(my_rank).map(String::as_str).collect();
        let message = format!(
            "{} of higher priority ({}) wait in WorkerPool {name:?} and start first; {} of this Job wait",
            tasks(higher),
            classes.join(", "),
            tasks(queued.into())
        );
        return ("BehindHigherPriority", message, Some(ahead));
    }
    if let Some(autoscaling) = &pool.spec.autoscaling {
        let desired = status.desired_replicas.unwrap_or(status.replicas);
        if desired > status.ready_replicas {
            let message = format!(
                "WorkerPool {name:?} is scaling up: {} of {desired} workers ready; {} of this Job wait",
                status.ready_replicas,
                tasks(queued.into())
            );
            return ("ScalingUp", message, Some(ahead));
        }
        if status.ready_replicas >= autoscaling.max_replicas {
            let message = format!(
                "WorkerPool {name:?} is at its maxReplicas ({}, {slots} tasks at once); {} of this Job wait for a free slot",
                autoscaling.max_replicas,
                tasks(queued.into())
            );
            return ("PoolAtMaxReplicas", message, Some(ahead));
        }
    }
    let message = format!(
        "{} of this Job wait in WorkerPool {name:?}'s {} queue ({running} running; the pool runs {slots} tasks at once){}",
        tasks(queued.into()),
        me.priority,
        if earlier > 0 { format!(", after {} of Jobs created earlier", tasks(earlier)) } else { String::new() }
    );
    ("Queued", message, Some(ahead))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{JobSpec, WorkerPoolSpec, WorkerPoolStatus};

    fn now() -> Time {
        Time("2026-12-07T07:00:00Z".parse().unwrap())
    }

    fn job(priority: &str) -> Job {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({"poolRef": "p", "completions": 100, "priority": priority})).unwrap();
        let mut job = Job::new("mine", spec);
        job.metadata.creation_timestamp = Some(Time("2026-12-07T06:00:00Z".parse().unwrap()));
        job
    }

    fn pool(autoscaling: Option<serde_json::Value>, ready: i32, desired: i32) -> WorkerPool {
        let mut spec = serde_json::json!({"workers": {"image": "w"}, "concurrency": 4, "replicas": 2});
        if let Some(a) = autoscaling {
            spec["autoscaling"] = a;
        }
        let spec: WorkerPoolSpec = serde_json::from_value(spec).unwrap();
        let mut pool = WorkerPool::new("p", spec);
        pool.status =
            Some(WorkerPoolStatus { replicas: desired, ready_replicas: ready, desired_replicas: Some(desired), ..Default::default() });
        pool
    }

    fn other(priority: &str, created: &str, name: &str, queued: u32) -> QueuedJob {
        let created_ms = created.parse::<jiff::Timestamp>().unwrap().as_millisecond();
        QueuedJob { priority: priority.into(), created_ms, name: name.into(), queued }
    }

    #[test]
    fn the_reason_follows_what_holds_the_tasks() {
        let fixed = pool(None, 2, 2);
        let autoscaled = |ready, desired| pool(Some(serde_json::json!({"minReplicas": 0, "maxReplicas": 3})), ready, desired);
        let earlier = other("normal", "2026-12-07T05:00:00Z", "a", 40);
        let later = other("normal", "2026-12-07T06:30:00Z", "z", 1_000);
        let high = other("high", "2026-12-07T06:59:00Z", "h", 7);
        let low = other("low", "2026-12-07T05:00:00Z", "l", 9);
        let cases: Vec<(&str, u32, WorkerPool, Vec<QueuedJob>, Option<(&str, &str, u64)>)> = vec![
            ("nothing queued: no wait", 0, fixed.clone(), vec![high.clone()], None),
            (
                "behind a higher class",
                10,
                fixed.clone(),
                vec![high.clone(), earlier.clone(), low.clone()],
                Some((
                    "BehindHigherPriority",
                    "7 tasks of higher priority (high) wait in WorkerPool \"p\" and start first; 10 tasks of this Job wait",
                    47,
                )),
            ),
            (
                "a fixed pool: queued behind earlier Jobs only",
                10,
                fixed.clone(),
                vec![earlier.clone(), later.clone(), low.clone()],
                Some((
                    "Queued",
                    "10 tasks of this Job wait in WorkerPool \"p\"'s normal queue (8 running; the pool runs 8 tasks at once), after 40 tasks of Jobs created earlier",
                    40,
                )),
            ),
            (
                "scaling up",
                1,
                autoscaled(1, 3),
                vec![],
                Some(("ScalingUp", "WorkerPool \"p\" is scaling up: 1 of 3 workers ready; 1 task of this Job wait", 0)),
            ),
            (
                "at its maximum",
                5,
                autoscaled(3, 3),
                vec![later.clone()],
                Some((
                    "PoolAtMaxReplicas",
                    "WorkerPool \"p\" is at its maxReplicas (3, 12 tasks at once); 5 tasks of this Job wait for a free slot",
                    0,
                )),
            ),
            (
                "autoscaled below its maximum, all ready",
                5,
                autoscaled(2, 2),
                vec![],
                Some((
                    "Queued",
                    "5 tasks of this Job wait in WorkerPool \"p\"'s normal queue (8 running; the pool runs 8 tasks at once)",
                    0,
                )),
            ),
        ];
        for (what, queued, pool, others, want) in cases {
            let got = waiting(&job("normal"), (queued, 8), None, None, Some(&pool), &others, None, &now());
            let got = got.as_ref().map(|w| (w.reason.as_str(), w.message.as_str(), w.tasks_ahead.unwrap_or_default()));
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn a_blocked_job_waits_for_its_blocker_and_a_refused_one_does_not_wait() {
        let delayed = Blocker::DelayedUntil("the Job starts at 2026-12-08T02:00:00Z (startAt)".into(), 1);
        let w = waiting(&job("normal"), (0, 0), None, Some(&delayed), None, &[], None, &now()).unwrap();
        assert_eq!((w.reason.as_str(), w.message.as_str(), w.tasks_ahead), ("DelayedUntil", delayed.message(), None));
        let not_ready = Blocker::PoolNotReady("WorkerPool \"p\" has not declared its queues yet".into());
        assert_eq!(waiting(&job("normal"), (0, 0), None, Some(&not_ready), None, &[], None, &now()).unwrap().reason, "PoolNotReady");
        assert_eq!(waiting(&job("normal"), (0, 0), None, Some(&Blocker::InvalidSpec("bad".into())), None, &[], None, &now()), None);
        let mut suspended = job("normal");
        suspended.spec.suspend = true;
        assert_eq!(waiting(&suspended, (10, 0), None, None, Some(&pool(None, 1, 1)), &[], None, &now()), None);
    }

    #[test]
    fn since_holds_while_the_reason_does() {
        let earlier = Time("2026-12-07T06:50:00Z".parse().unwrap());
        let previous = JobWaiting { reason: "Queued".into(), message: "old numbers".into(), tasks_ahead: Some(3), since: earlier.clone() };
        let fixed = pool(None, 2, 2);
        let w = waiting(&job("normal"), (4, 8), None, None, Some(&fixed), &[], Some(&previous), &now()).unwrap();
        assert_eq!((w.reason.as_str(), &w.since), ("Queued", &earlier), "same reason, new numbers, same since");
        let high = [other("high", "2026-12-07T06:59:00Z", "h", 1)];
        let w = waiting(&job("normal"), (4, 8), None, None, Some(&fixed), &high, Some(&previous), &now()).unwrap();
        assert_eq!((w.reason.as_str(), &w.since), ("BehindHigherPriority", &now()), "a new reason starts now");
    }
}

//! The status a Job should have, from its ledger and what blocks it. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::plan::Blocker;
use crate::conditions::{self, Desired};
use crate::controllers::job::ledger::Ledger;
use crate::crd::{FailurePolicy, Job, JobPhase, JobProgress, JobStatus, OnLostTasks};
use crate::ranges;

/// A condition change users should see in `kubectl describe` / `kubectl get events`: the
/// reason and message of the condition it is, and whether it is a warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub warning: bool,
    /// What happened to the Job: `Complete`, `Fail`, `Suspend`, `Resume` or `Block`.
    pub action: &'static str,
    pub reason: String,
    /// The condition's message, cut to the 1,024 bytes an Event's note may hold.
    pub note: String,
}

/// Most bytes of an Event's `note` (events.k8s.io/v1).
const NOTE_LIMIT: usize = 1024;

fn note_of(message: &str) -> String {
    if message.len() <= NOTE_LIMIT {
        return message.to_string();
    }
    let mut end = NOTE_LIMIT - "…".len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// The transitions from `before` to `after` worth an Event: a Job completed, failed, was
/// suspended or resumed, or stopped being ready (blocked: pool missing, invalid spec, a
/// duplicate of another Job). A condition that keeps its status and reason is no transition, so
/// rewriting a status with new counts emits nothing, and neither does a restarted operator
/// rewriting what it finds.
pub fn transitions(before: &[Condition], after: &[Condition]) -> Vec<Transition> {
    after
        .iter()
        .filter(|c| !before.iter().any(|b| b.type_ == c.type_ && b.status == c.status && b.reason == c.reason))
        .filter_map(|c| {
            let (warning, action) = match (c.type_.as_str(), c.status.as_str()) {
                ("Failed", "True") => (true, "Fail"),
                // Waiting for a pool that is being set up (a Job applied with its pool), or for
                // the first Job with the same idempotencyKey, is no problem.
                // nor is waiting for its startAt.
                ("Ready", "False") => (!matches!(c.reason.as_str(), "PoolNotReady" | "DuplicateOf" | "DelayedUntil"), "Block"),
                ("Complete", "True") => (false, "Complete"),
                ("TasksLost", "True") => (true, "DetectLostTasks"),
                ("Suspended", "True") => (false, "Suspend"),
                ("Suspended", "False") => (false, "Resume"),
                _ => return None,
            };
            Some(Transition { warning, action, reason: c.reason.clone(), note: note_of(&c.message) })
        })
        .collect()
}

fn time_of(ms: u64) -> Option<Time> {
    jiff::Timestamp::from_millisecond(ms as i64).ok().map(Time)
}

/// Computes the full status. `now` only stamps condition transitions.
pub fn desired(job: &Job, ledger: &Ledger, blocker: Option<&Blocker>, now: &Time) -> JobStatus {
    let total = job.task_count();
    let succeeded = ledger.succeeded().len() as u32;
    let failed = ledger.failed().len() as u32;
    let complete = ledger.is_complete();
    let allowed = FailurePolicy::allowed_failures(job.spec.failure_policy.as_ref());
    let terminated = ledger.terminated.as_ref();
    let suspended = job.spec.suspend && !complete && terminated.is_none();

    let phase = match blocker {
        Some(b) if b.is_permanent() => JobPhase::Failed,
        Some(Blocker::DuplicateOf(_, phase)) => *phase,
        _ if terminated.is_some() => JobPhase::Failed,
        _ if complete && failed > allowed => JobPhase::Failed,
        _ if complete => JobPhase::Succeeded,
        _ if suspended => JobPhase::Suspended,
        _ if ledger.first_started_ms.is_some() || ledger.finished() > 0 => JobPhase::Running,
        Some(_) => JobPhase::Pending,
        None if ledger.enqueued > 0 => JobPhase::Queued,
        None => JobPhase::Pending,
    };
    let previous = job.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();

    let mut wanted = vec![match blocker {
        Some(b) => Desired::new("Ready", false, b.reason(), b.message()),
        None if ledger.enqueued >= total => Desired::new("Ready", true, "Enqueued", format!("all {total} tasks are in the queue or done")),
        None => Desired::new("Ready", true, "Enqueuing", format!("{} of {total} tasks enqueued", ledger.enqueued)),
    }];
    match (phase, blocker) {
        (_, Some(Blocker::DuplicateOf(..))) => {}
        (JobPhase::Succeeded, _) if failed > 0 => wanted.push(Desired::new(
            "Complete",
            true,
            "FailuresWithinPolicy",
            format!(
                "{succeeded} tasks succeeded; {failed} failed (indexes {}), within failurePolicy.maxFailedTasks ({allowed})",
                ranges::format_short(ledger.failed(), MESSAGE_INDEXES_CHARS)
            ),
        )),
        (JobPhase::Succeeded, _) => {
            wanted.push(Desired::new("Complete", true, "AllTasksSucceeded", format!("{succeeded} tasks succeeded")))
        }
        (JobPhase::Failed, Some(b)) => wanted.push(Desired::new("Failed", true, "InvalidSpec", b.message())),
        (JobPhase::Failed, None) => match terminated {
            Some(t) => wanted.push(Desired::new("Failed", true, termination_reason(&t.reason), t.message.clone())),
            None => wanted.push(Desired::new(
                "Failed",
                true,
                "TasksFailed",
                format!("{failed} of {total} tasks failed (indexes {})", ranges::format_short(ledger.failed(), MESSAGE_INDEXES_CHARS)),
            )),
        },
        _ => {}
    }
    if let Some(lost) = &ledger.lost {
        let action = if job.spec.on_lost_tasks == OnLostTasks::Fail {
            "the Job fails (onLostTasks: Fail)".to_string()
        } else {
            format!("{} queued tasks were enqueued again (onLostTasks: Requeue)", lost.requeued)
        };
        wanted.push(Desired::new(
            "TasksLost",
            true,
            super::plan::TASKS_LOST,
            format!("{} of the pool's queued tasks went missing from the broker (a purged or deleted queue, overflow dropHead, broker data loss); {action}", lost.missing),
        ));
    }
    if suspended {
        wanted.push(Desired::new(
            "Suspended",
            true,
            "JobSuspended",
            format!("spec.suspend is true: nothing is enqueued or run; {} cancelled tasks are re-enqueued on resume", ledger.cancelled()),
        ));
    } else if previous.iter().any(|c| c.type_ == "Suspended") {
        wanted.push(Desired::new("Suspended", false, "JobResumed", "spec.suspend is false"));
    }

    let progress = if total == 1 {
        match (&ledger.progress, complete) {
            (_, true) => Some(JobProgress { percent: 100, message: ledger.progress.as_ref().map(|p| p.1.clone()) }),
            (Some((percent, message)), false) => Some(JobProgress { percent: *percent, message: Some(message.clone()) }),
            (None, false) => None,
        }
    } else if total > 0 {
        let percent = (u64::from(ledger.finished()) * 100 / u64::from(total)) as u8;
        Some(JobProgress { percent, message: None })
    } else {
        None
    };

    JobStatus {
        phase,
        total,
        enqueued: ledger.enqueued,
        queued: ledger.queued(),
        running: ledger.running(),
        succeeded,
        failed,
        retries: ledger.retries(),
        dead_lettered: failed,
        cancelled: ledger.cancelled(),
        completions: Some(format!("{succeeded}/{total}")),
        succeeded_indexes: ranges::format(ledger.succeeded()),
        failed_indexes: ranges::format(ledger.failed()),
        progress,
        start_time: ledger.first_started_ms.and_then(time_of),
        completion_time: match terminated {
            Some(t) => time_of(t.at_ms),
            None if complete => ledger.last_finished_ms.and_then(time_of),
            None => None,
        },
        conditions: conditions::merge(previous, &wanted, job.metadata.generation, now),
        observed_generation: job.metadata.generation,
        result: if total == 1 { ledger.result.clone() } else { None },
        ledger: Some(ledger.snapshot()),
        // Kept; the book sets it when it acts on a new replay annotation value.
        replayed_token: job.status.as_ref().and_then(|s| s.replayed_token.clone()),
        // Kept; the book sets them from the reports it folds.
        recent_attempts: job.status.as_ref().map(|s| s.recent_attempts.clone()).unwrap_or_default(),
        // The book sets it from its view of the pool's Jobs.
        waiting: None,
        // Kept; the book sets them from the notifier's deliveries (`crate::notify`).
        notifications: job.status.as_ref().map(|s| s.notifications.clone()).unwrap_or_default(),
    }
}

/// Most characters of the failed indexes quoted in a condition message (`failedIndexes` has them
/// all): a million-task Job's message must not repeat a 70 KB list.
pub const MESSAGE_INDEXES_CHARS: usize = 200;

/// Most bytes of each index list (`succeededIndexes`, `failedIndexes`) in a compacted status.
pub const COMPACT_INDEXES_BYTES: usize = 1024;

/// The status written instead of `status` once the API server refused it for good: counts,
/// phase, conditions and the termination kept; the per-index lists cut to their first
/// [`COMPACT_INDEXES_BYTES`] (at a range boundary, so they still parse), the per-index maps of
/// the ledger, the progress message and the result dropped. Pure.
pub fn compacted(mut status: JobStatus) -> JobStatus {
    for list in [&mut status.succeeded_indexes, &mut status.failed_indexes] {
        if list.len() > COMPACT_INDEXES_BYTES {
            let cut = list[..=COMPACT_INDEXES_BYTES].rfind(',').unwrap_or(0);
            list.truncate(cut);
        }
    }
    if let Some(ledger) = status.ledger.as_mut() {
        ledger.retrying_attempts = Default::default();
        ledger.replay_generations = Default::default();
        ledger.dropped_attempts = Default::default();
    }
    if let Some(progress) = status.progress.as_mut() {
        progress.message = None;
    }
    status.result = None;
    status.recent_attempts.clear();
    status
}

/// Condition reasons are `&'static str`: map a persisted termination reason onto its constant.
fn termination_reason(reason: &str) -> &'static str {
    match reason {
        super::plan::DEADLINE_EXCEEDED => super::plan::DEADLINE_EXCEEDED,
        super::plan::MAX_FAILED_TASKS_EXCEEDED => super::plan::MAX_FAILED_TASKS_EXCEEDED,
        super::plan::STATUS_TOO_LARGE => super::plan::STATUS_TOO_LARGE,
        super::plan::TASKS_LOST => super::plan::TASKS_LOST,
        _ => "Terminated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::JobSpec;
    use warren_protocol::{JobRef, TaskEvent, TaskEventKind};

    fn job(n: u32) -> Job {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({"poolRef": "p", "completions": n})).unwrap();
        let mut job = Job::new("j", spec);
        job.metadata.generation = Some(1);
        job
    }
    fn now() -> Time {
        Time(jiff::Timestamp::from_second(1_000).unwrap())
    }

    #[test]
    fn a_compacted_status_keeps_counts_and_termination_and_cuts_lists_at_a_range_boundary() {
        let every_other: std::collections::BTreeSet<u32> = (0..20_000).step_by(2).collect();
        let mut status = JobStatus {
            phase: JobPhase::Failed,
            succeeded: 10_000,
            succeeded_indexes: ranges::format(&every_other),
            failed_indexes: "1".into(),
            progress: Some(JobProgress { percent: 50, message: Some("m".repeat(500)) }),
            result: Some(serde_json::json!({"big": "x"})),
            ledger: Some(crate::crd::LedgerSnapshot {
                finished_retries: 7,
                retrying_attempts: (0..1000).map(|i| (i * 2, 2)).collect(),
                terminated: Some(crate::crd::Termination {
                    reason: super::super::plan::STATUS_TOO_LARGE.into(),
                    message: "m".into(),
                    at_ms: 1,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        status.total = 20_000;
        let compact = compacted(status.clone());
        assert!(compact.succeeded_indexes.len() <= COMPACT_INDEXES_BYTES, "{}", compact.succeeded_indexes.len());
        assert!(status.succeeded_indexes.starts_with(&format!("{},", compact.succeeded_indexes)));
        let kept = ranges::parse(&compact.succeeded_indexes).expect("still a valid list");
        assert!(kept.iter().all(|i| i % 2 == 0) && kept.len() > 100);
        assert_eq!(compact.failed_indexes, "1", "a short list is kept whole");
        assert_eq!((compact.phase, compact.succeeded, compact.total), (JobPhase::Failed, 10_000, 20_000));
        let ledger = compact.ledger.as_ref().unwrap();
        assert_eq!((ledger.finished_retries, ledger.retrying_attempts.len()), (7, 0));
        assert_eq!(ledger.terminated, status.ledger.as_ref().unwrap().terminated);
        assert_eq!((compact.progress, compact.result), (Some(JobProgress { percent: 50, message: None }), None));
        assert!(serde_json::to_vec(&compacted(status)).unwrap().len() < 4 * 1024);
    }
    fn done(index: u32) -> TaskEvent {
        TaskEvent {
            job: JobRef { namespace: "ns".into(), name: "j".into(), uid: "u".into() },
            index,
            attempt: 1,
            at_ms: 5_000,
            kind: TaskEventKind::Succeeded { result: None },
            replay: 0,
            output: None,
        }
    }

    #[test]
    fn a_job_without_pool_is_pending_with_the_reason() {
        let j = job(2);
        let blocker = Blocker::PoolNotFound("WorkerPool \"p\" not found".into());
        let s = desired(&j, &Ledger::new(2), Some(&blocker), &now());
        assert_eq!(s.phase, JobPhase::Pending);
        let ready = &s.conditions[0];
        assert_eq!((ready.type_.as_str(), ready.status.as_str(), ready.reason.as_str()), ("Ready", "False", "PoolNotFound"));
        assert_eq!(ready.observed_generation, Some(1));
    }

    #[test]
    fn phases_follow_the_ledger() {
        let j = job(3);
        let mut l = Ledger::new(3);
        assert_eq!(desired(&j, &l, None, &now()).phase, JobPhase::Pending);
        l.enqueued = 3;
        assert_eq!(desired(&j, &l, None, &now()).phase, JobPhase::Queued);
        l.apply(&done(0));
        let s = desired(&j, &l, None, &now());
        assert_eq!((s.phase, s.succeeded, s.queued, s.completions.as_deref()), (JobPhase::Running, 1, 2, Some("1/3")));
        l.apply(&done(1));
        l.apply(&done(2));
        let s = desired(&j, &l, None, &now());
        assert_eq!(s.phase, JobPhase::Succeeded);
        assert_eq!(s.succeeded_indexes, "0-2");
        assert!(s.completion_time.is_some());
        assert!(s.conditions.iter().any(|c| c.type_ == "Complete" && c.status == "True"));
    }

    fn spec_job(spec: serde_json::Value) -> Job {
        let spec: JobSpec = serde_json::from_value(spec).unwrap();
        let mut job = Job::new("j", spec);
        job.metadata.generation = Some(1);
        job
    }
    fn dead(index: u32) -> TaskEvent {
        let disposition = warren_protocol::FailureDisposition::DeadLettered { reason: "permanent".into() };
        TaskEvent { kind: TaskEventKind::Failed { error: "x".into(), disposition }, ..done(index) }
    }
    fn dropped(index: u32) -> TaskEvent {
        TaskEvent { kind: TaskEventKind::Cancelled { reason: "suspended".into() }, ..done(index) }
    }
    fn size_of(status: &JobStatus) -> usize {
        serde_json::to_vec(status).unwrap().len()
    }

    #[test]
    fn a_100000_task_job_suspended_mid_run_has_a_status_under_64_kib() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        let n = 100_000;
        let j = spec_job(serde_json::json!({"poolRef": "p", "completions": n, "suspend": true}));
        let mut l = Ledger::new(n);
        l.enqueued = n;
        // 40 % done, in rough order with gaps; 1,000 tasks at random had failed attempts; the
        // rest were dropped by the workers (queued) or cancelled (running) on the suspend.
        for i in 0..n {
            if rng.random_bool(0.01) {
                l.apply(&TaskEvent { attempt: rng.random_range(2..=4), kind: TaskEventKind::Started, ..done(i) });
            }
        }
        for i in (0..n).filter(|i| *i < 40_000 && !rng.random_bool(0.02)) {
            l.apply(&done(i));
        }
        for i in 0..n {
            l.apply(&TaskEvent { attempt: 1 + u32::from(rng.random_bool(0.01)), ..dropped(i) });
        }
        let status = desired(&j, &l, None, &now());
        assert_eq!(status.phase, JobPhase::Suspended);
        assert!(status.cancelled > 59_000, "{}", status.cancelled);
        let size = size_of(&status);
        eprintln!("suspended 100,000-task Job: status {size} bytes");
        assert!(size <= 64 * 1024, "{size} bytes");
        // And it restores exactly: the dropped tasks and their attempts come back.
        let restored = Ledger::restore(n, Some(&status));
        assert_eq!(restored.dropped().collect::<Vec<_>>(), l.dropped().collect::<Vec<_>>());
        assert_eq!(restored.retries(), l.retries());
    }

    #[test]
    fn a_1000000_task_job_with_1_percent_failed_at_random_has_a_status_under_256_kib() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let n = 1_000_000;
        let j = job(n);
        let mut l = Ledger::new(n);
        l.enqueued = n;
        for i in 0..n {
            l.apply(&if rng.random_bool(0.01) { dead(i) } else { done(i) });
        }
        let status = desired(&j, &l, None, &now());
        assert_eq!(status.phase, JobPhase::Failed);
        assert!((9_000..11_000).contains(&status.failed), "{}", status.failed);
        let size = size_of(&status);
        eprintln!("1,000,000-task Job, {} failed at random: status {size} bytes", status.failed);
        assert!(size <= 256 * 1024, "{size} bytes");
    }

    fn cond<'a>(s: &'a JobStatus, type_: &str) -> Option<(&'a str, &'a str, &'a str)> {
        s.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
    }

    #[test]
    fn a_suspended_job_says_so_and_keeps_true_counts_then_resumes() {
        let mut j = spec_job(serde_json::json!({"poolRef": "p", "completions": 4, "suspend": true}));
        let mut l = Ledger::new(4);
        l.enqueued = 4;
        l.apply(&done(0));
        l.apply(&dropped(1));
        l.apply(&dropped(2));
        let s = desired(&j, &l, None, &now());
        assert_eq!((s.phase, s.succeeded, s.cancelled, s.queued, s.running), (JobPhase::Suspended, 1, 2, 1, 0));
        assert_eq!(
            cond(&s, "Suspended"),
            Some(("True", "JobSuspended", "spec.suspend is true: nothing is enqueued or run; 2 cancelled tasks are re-enqueued on resume"))
        );
        j.status = Some(s);
        j.spec.suspend = false;
        let s = desired(&j, &l, None, &now());
        assert_eq!(s.phase, JobPhase::Running);
        assert_eq!(cond(&s, "Suspended"), Some(("False", "JobResumed", "spec.suspend is false")));
        // A Job never suspended has no Suspended condition.
        let fresh = spec_job(serde_json::json!({"poolRef": "p", "completions": 4}));
        assert_eq!(cond(&desired(&fresh, &l, None, &now()), "Suspended"), None);
    }

    #[test]
    fn a_terminated_job_fails_with_the_termination_reason() {
        let j = spec_job(serde_json::json!({"poolRef": "p", "completions": 3, "activeDeadlineSeconds": 5}));
        let mut l = Ledger::new(3);
        l.enqueued = 3;
        l.apply(&done(0));
        l.terminated = Some(crate::crd::Termination { reason: "DeadlineExceeded".into(), message: "too slow".into(), at_ms: 9_000 });
        let s = desired(&j, &l, None, &now());
        assert_eq!((s.phase, s.succeeded), (JobPhase::Failed, 1));
        assert_eq!(cond(&s, "Failed"), Some(("True", "DeadlineExceeded", "too slow")));
        assert_eq!(s.completion_time, time_of(9_000));
    }

    #[test]
    fn failures_within_the_policy_still_succeed() {
        let cases = [
            (serde_json::json!({"poolRef": "p", "completions": 3}), JobPhase::Failed, "Failed", "TasksFailed"),
            (
                serde_json::json!({"poolRef": "p", "completions": 3, "failurePolicy": {"maxFailedTasks": 1}}),
                JobPhase::Succeeded,
                "Complete",
                "FailuresWithinPolicy",
            ),
            (
                serde_json::json!({"poolRef": "p", "completions": 3, "failurePolicy": {"maxFailedTasks": 0}}),
                JobPhase::Failed,
                "Failed",
                "TasksFailed",
            ),
        ];
        for (spec, phase, type_, reason) in cases {
            let j = spec_job(spec.clone());
            let mut l = Ledger::new(3);
            for e in [done(0), dead(1), done(2)] {
                l.apply(&e);
            }
            let s = desired(&j, &l, None, &now());
            assert_eq!(s.phase, phase, "{spec}");
            assert_eq!(cond(&s, type_).map(|c| (c.0, c.1)), Some(("True", reason)), "{spec}");
        }
        let j = spec_job(serde_json::json!({"poolRef": "p", "completions": 3, "failurePolicy": {"maxFailedTasks": 1}}));
        let mut l = Ledger::new(3);
        for e in [done(0), dead(1), done(2)] {
            l.apply(&e);
        }
        assert_eq!(
            cond(&desired(&j, &l, None, &now()), "Complete").map(|c| c.2),
            Some("2 tasks succeeded; 1 failed (indexes 1), within failurePolicy.maxFailedTasks (1)")
        );
    }

    #[test]
    fn a_duplicate_mirrors_the_phase_of_the_original() {
        let j = spec_job(serde_json::json!({"poolRef": "p", "idempotencyKey": "k"}));
        let blocker = Blocker::DuplicateOf("held by a".into(), JobPhase::Succeeded);
        let s = desired(&j, &Ledger::new(1), Some(&blocker), &now());
        assert_eq!((s.phase, s.enqueued, s.succeeded), (JobPhase::Succeeded, 0, 0));
        assert_eq!(cond(&s, "Ready"), Some(("False", "DuplicateOf", "held by a")));
        assert_eq!((cond(&s, "Complete"), cond(&s, "Failed")), (None, None));
    }

    #[test]
    fn an_invalid_job_fails_with_the_message() {
        let j = job(1);
        let blocker = Blocker::InvalidSpec("payload is too big".into());
        let s = desired(&j, &Ledger::new(1), Some(&blocker), &now());
        assert_eq!(s.phase, JobPhase::Failed);
        assert!(s.conditions.iter().any(|c| c.type_ == "Failed" && c.message == "payload is too big"));
    }

    fn condition(type_: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{type_} {reason}"),
            last_transition_time: now(),
            observed_generation: Some(1),
        }
    }

    #[test]
    fn transitions_worth_an_event() {
        let ready = condition("Ready", "True", "Enqueued");
        let t = |warning: bool, action: &'static str, type_: &str, reason: &str| Transition {
            warning,
            action,
            reason: reason.into(),
            note: format!("{type_} {reason}"),
        };
        type Case = (Vec<Condition>, Vec<Condition>, Vec<Transition>, &'static str);
        let cases: Vec<Case> = vec![
            (vec![], vec![condition("Ready", "True", "Enqueuing")], vec![], "a Job being enqueued"),
            (vec![condition("Ready", "True", "Enqueuing")], vec![ready.clone()], vec![], "ready reasons change quietly"),
            (vec![], vec![condition("Ready", "False", "PoolNotFound")], vec![t(true, "Block", "Ready", "PoolNotFound")], "blocked"),
            (
                vec![condition("Ready", "False", "PoolNotFound")],
                vec![condition("Ready", "False", "PoolNotFound")],
                vec![],
                "still blocked: no repeat",
            ),
            (vec![], vec![condition("Ready", "False", "DuplicateOf")], vec![t(false, "Block", "Ready", "DuplicateOf")], "a duplicate"),
            (
                vec![],
                vec![condition("Ready", "False", "PoolNotReady")],
                vec![t(false, "Block", "Ready", "PoolNotReady")],
                "a pool being set up",
            ),
            (
                vec![ready.clone()],
                vec![ready.clone(), condition("Suspended", "True", "JobSuspended")],
                vec![t(false, "Suspend", "Suspended", "JobSuspended")],
                "suspended",
            ),
            (
                vec![ready.clone(), condition("Suspended", "True", "JobSuspended")],
                vec![ready.clone(), condition("Suspended", "False", "JobResumed")],
                vec![t(false, "Resume", "Suspended", "JobResumed")],
                "resumed",
            ),
            (
                vec![ready.clone()],
                vec![ready.clone(), condition("Complete", "True", "AllTasksSucceeded")],
                vec![t(false, "Complete", "Complete", "AllTasksSucceeded")],
                "completed",
            ),
            (
                vec![ready.clone()],
                vec![ready.clone(), condition("Failed", "True", "DeadlineExceeded")],
                vec![t(true, "Fail", "Failed", "DeadlineExceeded")],
                "failed",
            ),
            (
                vec![ready.clone(), condition("Failed", "True", "DeadlineExceeded")],
                vec![ready, condition("Failed", "True", "DeadlineExceeded")],
                vec![],
                "rewriting a failed Job (new counts, or a restarted operator) repeats nothing",
            ),
        ];
        for (before, after, expected, why) in cases {
            assert_eq!(transitions(&before, &after), expected, "{why}");
        }
        let long = Condition { message: "ü".repeat(2_000), ..condition("Failed", "True", "TasksFailed") };
        let note = &transitions(&[], &[long])[0].note;
        assert!(note.len() <= NOTE_LIMIT && note.ends_with('…'), "{} bytes", note.len());
    }
}

//! The status a Job should have, from its ledger and what blocks it. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::plan::Blocker;
use crate::conditions::{self, Desired};
use crate::crd::{Job, JobPhase, JobProgress, JobStatus};
use crate::ledger::Ledger;
use crate::ranges;

fn time_of(ms: u64) -> Option<Time> {
    jiff::Timestamp::from_millisecond(ms as i64).ok().map(Time)
}

/// Computes the full status. `now` only stamps condition transitions.
pub fn desired(job: &Job, ledger: &Ledger, blocker: Option<&Blocker>, now: &Time) -> JobStatus {
    let total = job.task_count();
    let succeeded = ledger.succeeded().len() as u32;
    let failed = ledger.failed().len() as u32;
    let complete = ledger.is_complete();

    let phase = match blocker {
        Some(b) if b.is_permanent() => JobPhase::Failed,
        _ if complete && failed > 0 => JobPhase::Failed,
        _ if complete => JobPhase::Succeeded,
        _ if ledger.first_started_ms.is_some() || ledger.finished() > 0 => JobPhase::Running,
        Some(_) => JobPhase::Pending,
        None if ledger.enqueued > 0 => JobPhase::Queued,
        None => JobPhase::Pending,
    };

    let mut wanted = vec![match blocker {
        Some(b) => Desired::new("Ready", false, b.reason(), b.message()),
        None if ledger.enqueued >= total => {
            Desired::new("Ready", true, "Enqueued", format!("all {total} tasks are in the queue or done"))
        }
        None => Desired::new("Ready", true, "Enqueuing", format!("{} of {total} tasks enqueued", ledger.enqueued)),
    }];
    match phase {
        JobPhase::Succeeded => wanted.push(Desired::new("Complete", true, "AllTasksSucceeded", format!("{succeeded} tasks succeeded"))),
        JobPhase::Failed if blocker.is_some() => {
            wanted.push(Desired::new("Failed", true, "InvalidSpec", blocker.map(|b| b.message()).unwrap_or_default()))
        }
        JobPhase::Failed => wanted.push(Desired::new(
            "Failed",
            true,
            "TasksFailed",
            format!("{failed} of {total} tasks failed (indexes {})", ranges::format(ledger.failed())),
        )),
        _ => {}
    }
    let previous = job.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();

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
        completions: Some(format!("{succeeded}/{total}")),
        succeeded_indexes: ranges::format(ledger.succeeded()),
        failed_indexes: ranges::format(ledger.failed()),
        progress,
        start_time: ledger.first_started_ms.and_then(time_of),
        completion_time: if complete { ledger.last_finished_ms.and_then(time_of) } else { None },
        conditions: conditions::merge(previous, &wanted, job.metadata.generation, now),
        observed_generation: job.metadata.generation,
        result: if total == 1 { ledger.result.clone() } else { None },
        ledger: Some(ledger.snapshot()),
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
    fn done(index: u32) -> TaskEvent {
        TaskEvent {
            job: JobRef { namespace: "ns".into(), name: "j".into(), uid: "u".into() },
            index,
            attempt: 1,
            at_ms: 5_000,
            kind: TaskEventKind::Succeeded { result: None },
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

    #[test]
    fn an_invalid_job_fails_with_the_message() {
        let j = job(1);
        let blocker = Blocker::InvalidSpec("payload is too big".into());
        let s = desired(&j, &Ledger::new(1), Some(&blocker), &now());
        assert_eq!(s.phase, JobPhase::Failed);
        assert!(s.conditions.iter().any(|c| c.type_ == "Failed" && c.message == "payload is too big"));
    }
}

//! Per-Job accounting of task outcomes: the operator's exact record of what the workers reported.
//!
//! Pure: no I/O, no clock. Workers deliver reports at least once (a report may be re-sent after a
//! crash, and a task may run twice), so every fold here is idempotent: a task is finished at most
//! once, keyed by its index, and retries are counted from attempt numbers, not from events.
//! A restarted operator rebuilds a ledger from the Job's status ([`Ledger::restore`]).

use std::collections::{BTreeMap, BTreeSet};

use warren_protocol::{FailureDisposition, TaskEvent, TaskEventKind};

use crate::crd::{JobStatus, LedgerSnapshot};
use crate::ranges;

/// The accounting of one Job (one uid).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ledger {
    pub total: u32,
    /// Tasks `0..enqueued` are confirmed by the broker.
    pub enqueued: u32,
    succeeded: BTreeSet<u32>,
    failed: BTreeSet<u32>,
    /// Unfinished tasks a worker reported started: index → attempt.
    running: BTreeMap<u32, u32>,
    /// Retries of finished tasks.
    finished_retries: u64,
    /// Retries so far of unfinished tasks that failed at least once: index → failed attempts.
    retries_so_far: BTreeMap<u32, u32>,
    /// Last progress a handler reported (meaningful for single-task Jobs).
    pub progress: Option<(u8, String)>,
    /// Result of a single-task Job.
    pub result: Option<serde_json::Value>,
    /// Milliseconds since the epoch of the first start heard of.
    pub first_started_ms: Option<u64>,
    /// Milliseconds since the epoch of the last finish heard of.
    pub last_finished_ms: Option<u64>,
}

impl Ledger {
    pub fn new(total: u32) -> Self {
        Self { total, ..Self::default() }
    }

    /// Rebuilds the ledger a previous operator persisted in `status`. Live facts (running tasks)
    /// come back as workers report again.
    pub fn restore(total: u32, status: Option<&JobStatus>) -> Self {
        let mut ledger = Self::new(total);
        let Some(status) = status else { return ledger };
        ledger.enqueued = status.enqueued.min(total);
        ledger.succeeded = ranges::parse(&status.succeeded_indexes).unwrap_or_default();
        ledger.failed = ranges::parse(&status.failed_indexes).unwrap_or_default();
        ledger.succeeded.retain(|i| *i < total);
        ledger.failed.retain(|i| *i < total && !ledger.succeeded.contains(i));
        if let Some(snapshot) = &status.ledger {
            ledger.finished_retries = snapshot.finished_retries;
            ledger.retries_so_far = snapshot
                .retrying_attempts
                .iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, *v)))
                .filter(|(i, _)| !ledger.is_finished(*i))
                .collect();
        }
        ledger.result = status.result.clone().filter(|_| total == 1);
        ledger.first_started_ms = status.start_time.as_ref().map(|t| t.0.as_millisecond() as u64);
        ledger.last_finished_ms = status.completion_time.as_ref().map(|t| t.0.as_millisecond() as u64);
        ledger
    }

    /// What must be persisted beside the index lists for [`Ledger::restore`] to be exact.
    pub fn snapshot(&self) -> LedgerSnapshot {
        LedgerSnapshot {
            finished_retries: self.finished_retries,
            retrying_attempts: self.retries_so_far.iter().map(|(i, n)| (i.to_string(), *n)).collect(),
        }
    }

    fn is_finished(&self, index: u32) -> bool {
        self.succeeded.contains(&index) || self.failed.contains(&index)
    }

    /// Folds one event in. Returns whether anything changed. Events for finished tasks and for
    /// indexes outside the Job are ignored (duplicates, stale messages).
    pub fn apply(&mut self, event: &TaskEvent) -> bool {
        let index = event.index;
        if index >= self.total || self.is_finished(index) {
            return false;
        }
        match &event.kind {
            TaskEventKind::Started => {
                self.first_started_ms.get_or_insert(event.at_ms);
                self.note_retries(index, event.attempt.saturating_sub(1));
                self.running.insert(index, event.attempt) != Some(event.attempt)
            }
            TaskEventKind::Progress { percent, message } => {
                self.first_started_ms.get_or_insert(event.at_ms);
                let new = Some(((*percent).min(100), message.clone()));
                let changed = self.progress != new;
                self.progress = new;
                changed
            }
            TaskEventKind::Succeeded { result } => {
                self.finish(index, event);
                self.succeeded.insert(index);
                if self.total == 1 {
                    self.result = result.clone().filter(|r| {
                        let size = serde_json::to_vec(r).map_or(usize::MAX, |v| v.len());
                        let fits = size <= warren_protocol::MAX_RESULT_BYTES;
                        if !fits {
                            tracing::warn!(job = %event.job.name, size, "ignoring a task result over the size limit");
                        }
                        fits
                    });
                }
                true
            }
            TaskEventKind::Failed { disposition: FailureDisposition::Retrying { .. }, .. } => {
                self.first_started_ms.get_or_insert(event.at_ms);
                self.running.remove(&index);
                self.note_retries(index, event.attempt);
                true
            }
            TaskEventKind::Failed { disposition: FailureDisposition::DeadLettered { .. }, .. } => {
                self.finish(index, event);
                self.failed.insert(index);
                true
            }
        }
    }

    fn note_retries(&mut self, index: u32, retries: u32) {
        if retries > 0 {
            let entry = self.retries_so_far.entry(index).or_default();
            *entry = (*entry).max(retries);
        }
    }

    fn finish(&mut self, index: u32, event: &TaskEvent) {
        self.first_started_ms.get_or_insert(event.at_ms);
        self.running.remove(&index);
        let before = self.retries_so_far.remove(&index).unwrap_or(0);
        self.finished_retries += u64::from(before.max(event.attempt.saturating_sub(1)));
        self.last_finished_ms = Some(self.last_finished_ms.map_or(event.at_ms, |t| t.max(event.at_ms)));
    }

    pub fn succeeded(&self) -> &BTreeSet<u32> {
        &self.succeeded
    }
    pub fn failed(&self) -> &BTreeSet<u32> {
        &self.failed
    }
    pub fn running(&self) -> u32 {
        self.running.len() as u32
    }
    pub fn finished(&self) -> u32 {
        (self.succeeded.len() + self.failed.len()) as u32
    }
    /// Retries of all tasks, finished or not.
    pub fn retries(&self) -> u64 {
        self.finished_retries + self.retries_so_far.values().map(|n| u64::from(*n)).sum::<u64>()
    }
    /// Enqueued tasks neither running nor finished.
    pub fn queued(&self) -> u32 {
        self.enqueued.saturating_sub(self.finished() + self.running())
    }
    pub fn is_complete(&self) -> bool {
        self.total > 0 && self.finished() >= self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::JobRef;

    fn ev(index: u32, attempt: u32, kind: TaskEventKind) -> TaskEvent {
        TaskEvent {
            job: JobRef { namespace: "ns".into(), name: "j".into(), uid: "u".into() },
            index,
            attempt,
            at_ms: 1_000 + u64::from(index),
            kind,
        }
    }
    fn ok(index: u32, attempt: u32) -> TaskEvent {
        ev(index, attempt, TaskEventKind::Succeeded { result: None })
    }
    fn retry(index: u32, attempt: u32) -> TaskEvent {
        let disposition = FailureDisposition::Retrying { delay_ms: 10 };
        ev(index, attempt, TaskEventKind::Failed { error: "x".into(), disposition })
    }
    fn dead(index: u32, attempt: u32) -> TaskEvent {
        let disposition = FailureDisposition::DeadLettered { reason: "exhausted".into() };
        ev(index, attempt, TaskEventKind::Failed { error: "x".into(), disposition })
    }

    #[test]
    fn duplicate_success_is_counted_once() {
        let mut l = Ledger::new(3);
        l.enqueued = 3;
        assert!(l.apply(&ok(1, 1)));
        assert!(!l.apply(&ok(1, 1)));
        assert!(!l.apply(&ok(1, 2)));
        assert_eq!(l.succeeded().len(), 1);
        assert_eq!(l.queued(), 2);
    }

    #[test]
    fn retries_count_failed_attempts_once_each() {
        let mut l = Ledger::new(2);
        // task 0: fails twice, the second failure's report is delivered twice, then succeeds.
        for e in [retry(0, 1), retry(0, 2), retry(0, 2), ok(0, 3)] {
            l.apply(&e);
        }
        // task 1: we only hear of its success on attempt 3 (earlier reports lost with a crash).
        l.apply(&ok(1, 3));
        assert_eq!(l.retries(), 4);
        assert_eq!(l.succeeded().len(), 2);
        assert!(l.is_complete());
    }

    #[test]
    fn dead_lettered_tasks_are_failed_and_final() {
        let mut l = Ledger::new(2);
        l.apply(&retry(1, 1));
        l.apply(&dead(1, 2));
        assert!(!l.apply(&ok(1, 3)), "a finished task stays finished");
        assert_eq!(l.failed().iter().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(l.retries(), 1);
        assert!(!l.is_complete());
    }

    #[test]
    fn out_of_range_indexes_are_ignored() {
        let mut l = Ledger::new(2);
        assert!(!l.apply(&ok(2, 1)));
        assert_eq!(l.finished(), 0);
    }

    #[test]
    fn running_and_queued_follow_starts_and_finishes() {
        let mut l = Ledger::new(4);
        l.enqueued = 4;
        l.apply(&ev(0, 1, TaskEventKind::Started));
        l.apply(&ev(1, 1, TaskEventKind::Started));
        assert_eq!((l.running(), l.queued()), (2, 2));
        l.apply(&ok(0, 1));
        l.apply(&retry(1, 1));
        assert_eq!((l.running(), l.queued(), l.finished()), (0, 3, 1));
    }

    #[test]
    fn a_single_task_keeps_its_result_within_the_limit_and_across_a_restart() {
        let mut l = Ledger::new(1);
        l.apply(&ev(0, 1, TaskEventKind::Succeeded { result: Some(serde_json::json!({"rows": [1, 2]})) }));
        assert_eq!(l.result, Some(serde_json::json!({"rows": [1, 2]})));
        let status = JobStatus { succeeded_indexes: "0".into(), result: l.result.clone(), ..JobStatus::default() };
        assert_eq!(Ledger::restore(1, Some(&status)).result, l.result);

        let mut big = Ledger::new(1);
        let huge = serde_json::Value::String("x".repeat(warren_protocol::MAX_RESULT_BYTES));
        big.apply(&ev(0, 1, TaskEventKind::Succeeded { result: Some(huge) }));
        assert_eq!((big.result.clone(), big.succeeded().len()), (None, 1), "over the limit: dropped, task still counted");

        let mut many = Ledger::new(2);
        many.apply(&ev(0, 1, TaskEventKind::Succeeded { result: Some(serde_json::json!(1)) }));
        assert_eq!(many.result, None, "only single-task Jobs keep a result");
    }

    #[test]
    fn restore_continues_counting_exactly() {
        let mut l = Ledger::new(5);
        l.enqueued = 5;
        for e in [ok(0, 1), retry(1, 1), retry(1, 2), ok(2, 2), dead(3, 1)] {
            l.apply(&e);
        }
        let status = JobStatus {
            enqueued: l.enqueued,
            succeeded_indexes: ranges::format(l.succeeded()),
            failed_indexes: ranges::format(l.failed()),
            ledger: Some(l.snapshot()),
            ..JobStatus::default()
        };
        let mut restored = Ledger::restore(5, Some(&status));
        assert_eq!(restored.retries(), l.retries());
        // Redelivered reports from before the restart change nothing...
        for e in [ok(0, 1), retry(1, 2), ok(2, 2)] {
            restored.apply(&e);
        }
        assert_eq!(restored.retries(), 3);
        // ...and new ones count once.
        restored.apply(&ok(1, 3));
        restored.apply(&ok(4, 1));
        assert_eq!(restored.retries(), 3);
        assert_eq!(restored.succeeded().len(), 4);
        assert!(restored.is_complete());
    }
}

//! Per-Job accounting of task outcomes: the operator's exact record of what the workers reported.
//!
//! Pure: no I/O, no clock. Workers deliver reports at least once (a report may be re-sent after a
//! crash, and a task may run twice), so every fold here is idempotent: a task is finished at most
//! once, keyed by its index, and retries are counted from attempt numbers, not from events.
//! A restarted operator rebuilds a ledger from the Job's status ([`Ledger::restore`]).
//!
//! A dead-lettered (failed) task comes back when a report of a *replayed* run arrives (its
//! `replay` count is higher than the one the task failed with): it leaves `failed` and is counted
//! once more when that run ends. Reports of a run older than the task's last replay are stale and
//! ignored, so a re-sent report of the dead-lettered run cannot fail it again. Retries add up over
//! the runs: a task dead-lettered after 3 attempts (2 retries), replayed and succeeding at once has
//! 2 retries; the replay itself is not a retry.

use std::collections::{BTreeMap, BTreeSet};

use warren_protocol::{FailureDisposition, TaskEvent, TaskEventKind};

use crate::crd::{JobStatus, LedgerSnapshot, LostTasks, Termination};
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
    /// Replay count of tasks sent back from the dead-letter queue (absent = 0).
    generations: BTreeMap<u32, u32>,
    /// Last progress a handler reported (meaningful for single-task Jobs).
    pub progress: Option<(u8, String)>,
    /// Result of a single-task Job.
    pub result: Option<serde_json::Value>,
    /// Milliseconds since the epoch of the first start heard of.
    pub first_started_ms: Option<u64>,
    /// Milliseconds since the epoch of the last finish heard of.
    pub last_finished_ms: Option<u64>,
    /// Unfinished tasks a worker dropped (or cancelled) because the Job was cancelled, and not
    /// re-enqueued since: index → attempt.
    dropped: BTreeMap<u32, u32>,
    /// Dropped tasks being published again, until the broker confirms: index → attempt. A drop
    /// reported meanwhile (the new copy dropped by a worker that has not heard of the resume
    /// yet) lands in `dropped` again instead of being lost.
    republishing: BTreeMap<u32, u32>,
    /// Since when the Job is active (accepted and not suspended), for `activeDeadlineSeconds`.
    pub active_since_ms: Option<u64>,
    /// Set when the Job ended before all its tasks finished; final.
    pub terminated: Option<Termination>,
    /// Tasks the broker lost, noticed by [`crate::lost_tasks`].
    pub lost: Option<LostTasks>,
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
        ledger.succeeded = ranges::parse_below(&status.succeeded_indexes, total).unwrap_or_default();
        ledger.failed = ranges::parse_below(&status.failed_indexes, total).unwrap_or_default();
        ledger.succeeded.retain(|i| *i < total);
        ledger.failed.retain(|i| *i < total && !ledger.succeeded.contains(i));
        if let Some(snapshot) = &status.ledger {
            ledger.finished_retries = snapshot.finished_retries;
            ledger.retries_so_far =
                snapshot.retrying_attempts.0.iter().map(|(i, v)| (*i, *v)).filter(|(i, _)| !ledger.is_finished(*i)).collect();
            ledger.generations = snapshot
                .replay_generations
                .0
                .iter()
                .map(|(i, v)| (*i, *v))
                .filter(|(i, _)| *i < total && !ledger.succeeded.contains(i))
                .collect();
            ledger.dropped =
                snapshot.dropped_attempts.0.iter().map(|(i, v)| (*i, *v)).filter(|(i, _)| *i < total && !ledger.is_finished(*i)).collect();
            ledger.active_since_ms = snapshot.active_since_ms;
            ledger.terminated = snapshot.terminated.clone();
            ledger.lost = snapshot.lost.clone();
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
            retrying_attempts: self.retries_so_far.iter().map(|(i, n)| (*i, *n)).collect(),
            replay_generations: self.generations.iter().filter(|(i, _)| !self.succeeded.contains(i)).map(|(i, n)| (*i, *n)).collect(),
            dropped_attempts: self.republishing.iter().chain(self.dropped.iter()).map(|(i, n)| (*i, *n)).collect(),
            active_since_ms: self.active_since_ms,
            terminated: self.terminated.clone(),
            lost: self.lost.clone(),
        }
    }

    fn is_finished(&self, index: u32) -> bool {
        self.succeeded.contains(&index) || self.failed.contains(&index)
    }

    /// Folds one event in. Returns whether anything changed. Events for finished tasks, of a run
    /// older than the task's last replay, and for indexes outside the Job are ignored
    /// (duplicates, stale messages); the first event of a replayed run brings a failed task back.
    pub fn apply(&mut self, event: &TaskEvent) -> bool {
        let index = event.index;
        if index >= self.total {
            return false;
        }
        let generation = self.generations.get(&index).copied().unwrap_or(0);
        if event.replay < generation || (event.replay > generation && self.succeeded.contains(&index)) {
            return false;
        }
        let revived = event.replay > generation && self.failed.remove(&index);
        if event.replay > generation {
            self.generations.insert(index, event.replay);
        }
        if self.is_finished(index) {
            return false;
        }
        self.fold(index, event) || revived
    }

    fn fold(&mut self, index: u32, event: &TaskEvent) -> bool {
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
            TaskEventKind::Cancelled { .. } => {
                self.running.remove(&index);
                self.note_retries(index, event.attempt.saturating_sub(1));
                self.dropped.insert(index, event.attempt) != Some(event.attempt)
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
        self.dropped.remove(&index);
        self.republishing.remove(&index);
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
    /// Enqueued tasks neither running, nor finished, nor dropped.
    pub fn queued(&self) -> u32 {
        self.enqueued.saturating_sub(self.finished() + self.running() + self.cancelled())
    }
    /// Unfinished tasks dropped because the Job was cancelled, and not re-enqueued since.
    pub fn cancelled(&self) -> u32 {
        (self.dropped.len() + self.republishing.keys().filter(|i| !self.dropped.contains_key(i)).count()) as u32
    }
    /// The dropped tasks: (index, attempt), ascending.
    pub fn dropped(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.dropped.iter().map(|(i, a)| (*i, *a))
    }
    /// Dropped tasks are about to be published again: they leave `dropped` (so a new drop of
    /// the new copy is recorded anew) but stay persisted until [`Ledger::end_republish`].
    pub fn begin_republish(&mut self, indexes: &[u32]) -> bool {
        let mut changed = false;
        for index in indexes {
            if let Some(attempt) = self.dropped.remove(index) {
                self.republishing.insert(*index, attempt);
                changed = true;
            }
        }
        changed
    }

    /// The broker confirmed (`confirmed`) or refused the re-publication of these tasks; refused
    /// ones are dropped again (to be re-published later).
    pub fn end_republish(&mut self, indexes: &[u32], confirmed: bool) -> bool {
        let mut changed = false;
        for index in indexes {
            if let Some(attempt) = self.republishing.remove(index) {
                changed = true;
                if !confirmed {
                    self.dropped.entry(*index).or_insert(attempt);
                }
            }
        }
        changed
    }
    pub fn is_complete(&self) -> bool {
        self.total > 0 && self.finished() >= self.total
    }

    /// The broker lost `missing` tasks of the pool this Job runs on. `requeue`: every queued task
    /// of the Job (enqueued, neither finished nor running nor dropped) is marked for re-enqueueing
    /// — which of them the broker lost is unknown, so a copy that was not lost runs at most once
    /// more, and is counted once. Returns how many were marked.
    pub fn tasks_lost(&mut self, missing: u64, requeue: bool, at_ms: u64) -> u32 {
        let mut marked = 0;
        if requeue {
            for index in 0..self.enqueued.min(self.total) {
                if self.is_finished(index)
                    || self.running.contains_key(&index)
                    || self.dropped.contains_key(&index)
                    || self.republishing.contains_key(&index)
                {
                    continue;
                }
                let attempt = self.retries_so_far.get(&index).map_or(1, |failed| failed + 1);
                self.dropped.insert(index, attempt);
                marked += 1;
            }
        }
        let lost = self.lost.get_or_insert_with(LostTasks::default);
        lost.missing += missing;
        lost.requeued += u64::from(marked);
        lost.at_ms = at_ms;
        marked
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
            replay: 0,
            output: None,
        }
    }
    /// The same event, of the task's `n`th replayed run.
    fn replayed(n: u32, event: TaskEvent) -> TaskEvent {
        TaskEvent { replay: n, ..event }
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
    fn a_replayed_dead_letter_comes_back_and_is_counted_once() {
        let mut l = Ledger::new(3);
        l.enqueued = 3;
        for e in [ok(0, 1), ok(1, 1), retry(2, 1), retry(2, 2), dead(2, 3)] {
            l.apply(&e);
        }
        assert!(l.is_complete());
        assert_eq!((l.failed().len(), l.retries()), (1, 2));
        // The replayed run starts: the task leaves the failed set, the Job is no longer complete.
        assert!(l.apply(&replayed(1, ev(2, 1, TaskEventKind::Started))));
        assert!(l.failed().is_empty());
        assert!(!l.is_complete());
        assert_eq!((l.running(), l.queued()), (1, 0));
        // Stale reports of the dead-lettered run change nothing.
        assert!(!l.apply(&dead(2, 3)));
        assert!(!l.apply(&retry(2, 2)));
        assert!(l.failed().is_empty());
        // The replayed run succeeds on its first attempt (a duplicate report too).
        assert!(l.apply(&replayed(1, ok(2, 1))));
        assert!(!l.apply(&replayed(1, ok(2, 1))));
        assert!(l.is_complete());
        assert_eq!((l.succeeded().len(), l.failed().len()), (3, 0));
        assert_eq!(l.retries(), 2, "retries of the dead-lettered run; the replay is not a retry");
        // Nothing brings a succeeded task back.
        assert!(!l.apply(&replayed(2, dead(2, 1))));
        assert_eq!(l.succeeded().len(), 3);
    }

    #[test]
    fn a_replayed_run_may_fail_again_and_be_replayed_again() {
        let mut l = Ledger::new(1);
        l.apply(&dead(0, 2));
        l.apply(&replayed(1, retry(0, 1)));
        l.apply(&replayed(1, dead(0, 2)));
        assert_eq!((l.failed().len(), l.retries()), (1, 2));
        assert!(!l.apply(&ok(0, 3)), "a stale success of run 0 does not count");
        assert!(l.apply(&replayed(2, ok(0, 1))));
        assert_eq!((l.succeeded().len(), l.failed().len(), l.retries()), (1, 0, 2));
    }

    #[test]
    fn replay_generations_survive_a_restart() {
        let mut l = Ledger::new(2);
        l.enqueued = 2;
        l.apply(&ok(0, 1));
        l.apply(&dead(1, 1));
        l.apply(&replayed(1, ev(1, 1, TaskEventKind::Started)));
        let status = JobStatus {
            enqueued: 2,
            succeeded_indexes: ranges::format(l.succeeded()),
            failed_indexes: ranges::format(l.failed()),
            ledger: Some(l.snapshot()),
            ..JobStatus::default()
        };
        assert_eq!(status.ledger.as_ref().unwrap().replay_generations.get(1), Some(1));
        let mut restored = Ledger::restore(2, Some(&status));
        assert!(!restored.apply(&dead(1, 1)), "a redelivered report of the dead-lettered run is stale");
        assert!(restored.apply(&replayed(1, ok(1, 1))));
        assert!(restored.is_complete());
        assert_eq!(restored.failed().len(), 0);
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

    fn cancelled(index: u32, attempt: u32) -> TaskEvent {
        ev(index, attempt, TaskEventKind::Cancelled { reason: "suspended".into() })
    }

    #[test]
    fn dropped_tasks_wait_for_a_resume_and_count_once() {
        let mut l = Ledger::new(4);
        l.enqueued = 4;
        l.apply(&ok(0, 1));
        l.apply(&ev(1, 1, TaskEventKind::Started));
        // Suspended: task 1 is cancelled while running, 2 (on its 2nd attempt) and 3 dropped.
        assert!(l.apply(&cancelled(1, 1)));
        assert!(l.apply(&cancelled(2, 2)));
        assert!(l.apply(&cancelled(3, 1)));
        assert!(!l.apply(&cancelled(3, 1)), "a re-sent report changes nothing");
        assert!(!l.apply(&cancelled(0, 1)), "a finished task stays finished");
        assert_eq!((l.running(), l.queued(), l.cancelled(), l.finished()), (0, 0, 3, 1));
        assert_eq!(l.dropped().collect::<Vec<_>>(), vec![(1, 1), (2, 2), (3, 1)]);
        assert_eq!(l.retries(), 1, "the attempt-2 drop shows one earlier failure");
        // Resumed: re-enqueued, then they run once each.
        assert!(l.begin_republish(&[1, 2, 3]));
        assert_eq!(l.cancelled(), 3, "in transit: still cancelled, still persisted");
        assert_eq!(l.snapshot().dropped_attempts.len(), 3);
        assert!(l.end_republish(&[1, 2, 3], true));
        assert!(!l.end_republish(&[1], true));
        assert_eq!((l.queued(), l.cancelled()), (3, 0));
        for e in [ok(1, 1), ok(2, 2), ok(3, 1), ok(3, 1)] {
            l.apply(&e);
        }
        assert_eq!((l.succeeded().len(), l.retries()), (4, 1));
        assert!(l.is_complete());
    }

    #[test]
    fn a_drop_of_the_new_copy_during_republication_is_not_lost() {
        let mut l = Ledger::new(2);
        l.enqueued = 2;
        l.apply(&cancelled(0, 1));
        l.apply(&cancelled(1, 1));
        l.begin_republish(&[0, 1]);
        // A worker that has not heard of the resume drops the new copy of 0 before the confirm.
        assert!(l.apply(&cancelled(0, 1)));
        l.end_republish(&[0, 1], true);
        assert_eq!(l.dropped().collect::<Vec<_>>(), vec![(0, 1)], "0 must be re-published once more");
        // A refused publication puts the tasks back.
        l.begin_republish(&[0]);
        l.end_republish(&[0], false);
        assert_eq!(l.dropped().collect::<Vec<_>>(), vec![(0, 1)]);
    }

    #[test]
    fn a_finish_clears_a_drop() {
        // A duplicate copy finished somewhere after the drop was reported: nothing to re-enqueue.
        let mut l = Ledger::new(1);
        l.enqueued = 1;
        l.apply(&cancelled(0, 1));
        l.apply(&ok(0, 1));
        assert_eq!((l.cancelled(), l.dropped().count()), (0, 0));
    }

    #[test]
    fn restore_keeps_drops_clock_and_termination() {
        let mut l = Ledger::new(3);
        l.enqueued = 3;
        l.apply(&cancelled(2, 1));
        l.active_since_ms = Some(7);
        l.terminated = Some(Termination { reason: "DeadlineExceeded".into(), message: "m".into(), at_ms: 9 });
        let status = JobStatus { enqueued: 3, ledger: Some(l.snapshot()), ..JobStatus::default() };
        let restored = Ledger::restore(3, Some(&status));
        assert_eq!(restored.dropped().collect::<Vec<_>>(), vec![(2, 1)]);
        assert_eq!((restored.active_since_ms, restored.terminated.as_ref().map(|t| t.at_ms)), (Some(7), Some(9)));
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

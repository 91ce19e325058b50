//! The last attempts of a Job worth showing a user (`status.recentAttempts`): the failed ones
//! with their errors, and the succeeded ones that printed something, each with the end of its
//! output as the worker reported it. `warren logs` and `warren top` read them from the status.
//!
//! Owns: which attempts are kept and how much of each. Bounded whatever the Job's size: at most
//! [`MAX_FAILED`] + [`MAX_SUCCEEDED`] records of at most [`MAX_ERROR_BYTES`] +
//! [`warren_protocol::admit::MAX_OUTPUT_BYTES`] each (about 45 KiB), so a million-task Job
//! writes the same status as a small one. Failures are kept apart from successes so that a Job
//! whose handlers print on every success still shows its last failures. Pure: no I/O.

use std::collections::VecDeque;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use warren_protocol::{FailureDisposition, TaskEvent, TaskEventKind};

use crate::crd::{AttemptOutcome, AttemptRecord};

/// Failed attempts kept.
pub const MAX_FAILED: usize = 10;
/// Succeeded attempts that printed, kept.
pub const MAX_SUCCEEDED: usize = 5;
/// Longest error kept per attempt (its start: the worker puts the exit status first).
pub const MAX_ERROR_BYTES: usize = 1024;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecentAttempts {
    failed: VecDeque<AttemptRecord>,
    succeeded: VecDeque<AttemptRecord>,
}

impl RecentAttempts {
    /// From a stored status (an operator restart keeps what was shown).
    pub fn restore(records: &[AttemptRecord]) -> Self {
        let mut recent = Self::default();
        for record in records {
            recent.push(record.clone());
        }
        recent
    }

    /// Records the end of an attempt, if it is one worth keeping. True when the records changed.
    pub fn record(&mut self, event: &TaskEvent) -> bool {
        let (outcome, error) = match &event.kind {
            TaskEventKind::Succeeded { .. } if event.output.is_some() => (AttemptOutcome::Succeeded, None),
            TaskEventKind::Failed { error, disposition } => {
                let outcome = match disposition {
                    FailureDisposition::Retrying { .. } => AttemptOutcome::Retrying,
                    FailureDisposition::DeadLettered { .. } => AttemptOutcome::DeadLettered,
                };
                let mut error = error.clone();
                warren_protocol::admit::truncate_at_char_boundary(&mut error, MAX_ERROR_BYTES);
                (outcome, Some(error))
            }
            _ => return false,
        };
        let known =
            self.failed.iter().chain(&self.succeeded).any(|r| r.index == event.index && r.attempt == event.attempt && r.outcome == outcome);
        if known {
            return false;
        }
        let finished_at = jiff::Timestamp::from_millisecond(i64::try_from(event.at_ms).unwrap_or(i64::MAX)).ok().map(Time);
        self.push(AttemptRecord { index: event.index, attempt: event.attempt, outcome, error, output: event.output.clone(), finished_at });
        true
    }

    fn push(&mut self, record: AttemptRecord) {
        let (list, max) = match record.outcome {
            AttemptOutcome::Succeeded => (&mut self.succeeded, MAX_SUCCEEDED),
            AttemptOutcome::Retrying | AttemptOutcome::DeadLettered => (&mut self.failed, MAX_FAILED),
        };
        list.push_back(record);
        while list.len() > max {
            list.pop_front();
        }
    }

    /// The records, oldest first.
    pub fn records(&self) -> Vec<AttemptRecord> {
        let mut all: Vec<AttemptRecord> = self.failed.iter().chain(&self.succeeded).cloned().collect();
        all.sort_by(|a, b| {
            let at = |r: &AttemptRecord| r.finished_at.as_ref().map(|t| t.0);
            at(a).cmp(&at(b)).then(a.index.cmp(&b.index)).then(a.attempt.cmp(&b.attempt))
        });
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::JobRef;

    fn event(index: u32, attempt: u32, at_ms: u64, kind: TaskEventKind, output: Option<&str>) -> TaskEvent {
        TaskEvent {
            job: JobRef { namespace: "n".into(), name: "j".into(), uid: "u".into() },
            index,
            attempt,
            at_ms,
            kind,
            replay: 0,
            output: output.map(str::to_string),
        }
    }

    fn failed(index: u32, attempt: u32, at_ms: u64, dead: bool) -> TaskEvent {
        let disposition = if dead {
            FailureDisposition::DeadLettered { reason: "exhausted".into() }
        } else {
            FailureDisposition::Retrying { delay_ms: 100 }
        };
        event(index, attempt, at_ms, TaskEventKind::Failed { error: format!("boom {index}"), disposition }, Some("stderr line"))
    }

    #[test]
    fn failures_and_printing_successes_are_kept_and_silent_successes_are_not() {
        let mut recent = RecentAttempts::default();
        assert!(!recent.record(&event(0, 1, 1_000, TaskEventKind::Succeeded { result: None }, None)), "nothing to show");
        assert!(!recent.record(&event(0, 1, 1_000, TaskEventKind::Started, None)));
        assert!(recent.record(&event(1, 1, 2_000, TaskEventKind::Succeeded { result: None }, Some("processed 1"))));
        assert!(recent.record(&failed(2, 1, 3_000, false)));
        assert!(recent.record(&failed(2, 2, 4_000, true)));
        assert!(!recent.record(&failed(2, 2, 4_000, true)), "a duplicate report adds nothing");
        let records = recent.records();
        let seen: Vec<(u32, u32, AttemptOutcome)> = records.iter().map(|r| (r.index, r.attempt, r.outcome)).collect();
        assert_eq!(seen, vec![(1, 1, AttemptOutcome::Succeeded), (2, 1, AttemptOutcome::Retrying), (2, 2, AttemptOutcome::DeadLettered)]);
        assert_eq!(records[0].output.as_deref(), Some("processed 1"));
        assert_eq!(records[0].error, None);
        assert_eq!(records[2].error.as_deref(), Some("boom 2"));
        assert_eq!(records[2].finished_at.as_ref().map(|t| t.0.as_millisecond()), Some(4_000));
        assert_eq!(RecentAttempts::restore(&records), recent, "a restart keeps them");
    }

    #[test]
    fn the_records_stay_bounded_and_successes_never_push_out_failures() {
        let mut recent = RecentAttempts::default();
        for i in 0..1_000 {
            recent.record(&failed(i, 1, u64::from(i) * 10, false));
        }
        for i in 1_000..100_000 {
            recent.record(&event(i, 1, u64::from(i) * 10, TaskEventKind::Succeeded { result: None }, Some("printed")));
        }
        let records = recent.records();
        assert_eq!(records.len(), MAX_FAILED + MAX_SUCCEEDED);
        let failed: Vec<u32> = records.iter().filter(|r| r.outcome != AttemptOutcome::Succeeded).map(|r| r.index).collect();
        assert_eq!(failed, (990..1_000).collect::<Vec<_>>(), "the last failures");
        let long = TaskEventKind::Failed { error: "é".repeat(MAX_ERROR_BYTES), disposition: FailureDisposition::Retrying { delay_ms: 1 } };
        recent.record(&event(7, 9, 10_000_000, long, None));
        let error = recent.records().last().and_then(|r| r.error.clone()).unwrap();
        assert_eq!(error.len(), MAX_ERROR_BYTES);
    }
}

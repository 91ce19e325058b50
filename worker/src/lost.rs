//! The delivery limit for tasks that take their worker down: a task that kills its worker
//! (`kill -9`, out of memory), hangs its channel until the broker closes it, or outlives the
//! broker's `consumer_timeout` must not be redelivered forever, nor take other tasks down with it
//! each time.
//!
//! The broker's `redelivered` flag says that a delivery's previous delivery ended unsettled — not
//! which of the tasks then running on that worker brought it down. So a redelivered task is not run
//! among others again: it is moved (republished to the pool's suspect queue, then acknowledged) and
//! marked a suspect. A worker runs suspects one at a time and alone: it stops starting other tasks,
//! waits for its running ones, then takes one suspect (`basic.get`) and runs only it. A suspect
//! whose run is lost again was alone, so that loss is its own.
//!
//! Header [`LOST_RUNS_HEADER`] counts the task's runs that ended with its worker lost. At the limit
//! — the task's `maxAttempts`, at least [`MIN_LOST_RUN_LIMIT`], because the first loss (among
//! others) is never attributable — the task is dead-lettered with reason `worker-lost`, reported
//! failed, and the pool goes on serving. The same on classic and quorum queues: every move is a
//! new message, so a quorum queue's own delivery limit is never reached.
//!
//! Headers are untrusted input: a count is parsed from any integer or decimal string and bounded
//! by the limit.

use lapin::types::{AMQPValue, FieldTable};

/// Runs of the task that ended with its worker lost (also on its dead letter).
pub const LOST_RUNS_HEADER: &str = warren_protocol::headers::dead_letter_header::LOST_RUNS;
pub use warren_protocol::headers::SUSPECT_HEADER;
/// The least delivery limit: a first loss, among other tasks, is never blamed on one of them.
pub const MIN_LOST_RUN_LIMIT: u32 = 2;

/// What to do with a redelivered task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redelivered {
    /// Move it to the suspect queue with this many lost runs.
    Suspect { lost_runs: u32 },
    /// Its lost runs reached the limit: dead-letter it (`worker-lost`).
    DeadLetter { lost_runs: u32 },
}

/// The decision for a delivery the broker flags `redelivered`: its previous run (or the previous
/// delivery, if it never started) ended with its worker lost. `was_suspect`: that delivery was
/// a suspect, run alone — the loss is its own.
pub fn on_redelivery(was_suspect: bool, lost_runs: u32, max_attempts: u32) -> Redelivered {
    let limit = max_attempts.max(MIN_LOST_RUN_LIMIT);
    let lost_runs = lost_runs.saturating_add(1).min(limit);
    if was_suspect && lost_runs >= limit { Redelivered::DeadLetter { lost_runs } } else { Redelivered::Suspect { lost_runs } }
}

/// The lost-run count and the suspect mark of a delivery's headers.
pub fn read_headers(headers: Option<&FieldTable>) -> (bool, u32) {
    let Some(headers) = headers else { return (false, 0) };
    let map = headers.inner();
    let suspect = map.get(SUSPECT_HEADER).and_then(as_text).is_some_and(|v| v == "true");
    let lost_runs = map.get(LOST_RUNS_HEADER).and_then(as_count).unwrap_or(0);
    (suspect, lost_runs)
}

/// The headers of a task moved to the suspect queue: its own, with the count and the mark.
pub fn suspect_headers(original: Option<&FieldTable>, lost_runs: u32) -> FieldTable {
    let mut headers = original.cloned().unwrap_or_default();
    headers.insert(LOST_RUNS_HEADER.into(), AMQPValue::LongLongInt(i64::from(lost_runs)));
    headers.insert(SUSPECT_HEADER.into(), AMQPValue::LongString("true".into()));
    headers
}

fn as_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn as_count(value: &AMQPValue) -> Option<u32> {
    let n: i128 = match value {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        other => as_text(other)?.trim().parse().ok()?,
    };
    Some(n.clamp(0, i128::from(u32::MAX)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_loss_among_others_only_makes_a_suspect() {
        assert_eq!(on_redelivery(false, 0, 3), Redelivered::Suspect { lost_runs: 1 });
        assert_eq!(on_redelivery(false, 0, 1), Redelivered::Suspect { lost_runs: 1 }, "never blamed on the first loss");
        // Held unstarted (not the suspect that ran) when a suspect's run was lost: still no blame.
        assert_eq!(on_redelivery(false, 1, 3), Redelivered::Suspect { lost_runs: 2 });
    }

    #[test]
    fn a_suspect_is_dead_lettered_when_its_lost_runs_reach_max_attempts() {
        // maxAttempts 3: a run among others, then two runs alone, all lost.
        assert_eq!(on_redelivery(true, 1, 3), Redelivered::Suspect { lost_runs: 2 });
        assert_eq!(on_redelivery(true, 2, 3), Redelivered::DeadLetter { lost_runs: 3 });
        // maxAttempts 1 is raised to the least limit of 2.
        assert_eq!(on_redelivery(true, 1, 1), Redelivered::DeadLetter { lost_runs: 2 });
        // A forged count is bounded by the limit.
        assert_eq!(on_redelivery(true, u32::MAX, 5), Redelivered::DeadLetter { lost_runs: 5 });
        assert_eq!(on_redelivery(false, u32::MAX, 5), Redelivered::Suspect { lost_runs: 5 });
    }

    #[test]
    fn headers_are_read_from_any_integer_or_a_decimal_string_and_bounded() {
        assert_eq!(read_headers(None), (false, 0));
        let moved = suspect_headers(None, 2);
        assert_eq!(read_headers(Some(&moved)), (true, 2));
        let mut odd = FieldTable::default();
        odd.insert(LOST_RUNS_HEADER.into(), AMQPValue::LongString(" 7 ".into()));
        odd.insert(SUSPECT_HEADER.into(), AMQPValue::Boolean(true));
        assert_eq!(read_headers(Some(&odd)), (false, 7), "only the string \"true\" marks a suspect");
        let mut negative = FieldTable::default();
        negative.insert(LOST_RUNS_HEADER.into(), AMQPValue::LongLongInt(-5));
        assert_eq!(read_headers(Some(&negative)), (false, 0));
        let mut garbage = FieldTable::default();
        garbage.insert(LOST_RUNS_HEADER.into(), AMQPValue::LongString("many".into()));
        assert_eq!(read_headers(Some(&garbage)), (false, 0));
        // The task's own headers survive the move.
        let mut own = FieldTable::default();
        own.insert("x-custom".into(), AMQPValue::LongString("kept".into()));
        assert!(suspect_headers(Some(&own), 1).inner().contains_key("x-custom"));
    }
}

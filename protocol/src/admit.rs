//! Admission of untrusted messages: what a report (or a Job reference in a task) must be before
//! anything acts on it.
//!
//! Anyone who may publish to the broker can send a report: another tenant's worker, a bug, an old
//! version, an attacker. [`report`] bounds the work one message can cause before it is parsed
//! (its size), before it is expanded (the grouped form copies a Job reference into each of its
//! events, so each reference is checked first) and before it reaches the operator's book (the
//! version, the number of events, the names). It does no I/O and keeps no state: the operator
//! counts what it rejects.

use crate::headers::dead_letter_reason;
use crate::wire::ReportIn;
use crate::{JobRef, PROTOCOL_VERSION, ReportBatch, TaskEnvelope, TaskEvent, TaskEventKind, WorkerId};

/// Largest report message the operator reads (1 MiB). A worker's batch is a few KiB: it flushes
/// at most a few hundred events at once.
pub const MAX_REPORT_BYTES: usize = 1024 * 1024;

/// Most task events one report may carry.
pub const MAX_REPORT_EVENTS: usize = 10_000;

/// Longest progress message kept (1 KiB, cut at a character boundary): it is copied into the Job
/// status, which must stay small.
pub const MAX_PROGRESS_BYTES: usize = 1024;

/// Longest output tail of an attempt kept (2 KiB, its end, cut at a character boundary): the
/// operator keeps the last attempts' output in the Job status, which must stay small.
pub const MAX_OUTPUT_BYTES: usize = 2048;

/// Why a whole report message was dropped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("report of {0} bytes is over the {MAX_REPORT_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("not a Warren report batch: {0}")]
    Malformed(String),
    #[error("unsupported report version {0} (this operator reads {PROTOCOL_VERSION})")]
    UnknownVersion(u32),
    #[error("report with {0} events is over the {MAX_REPORT_EVENTS}-event limit")]
    TooManyEvents(usize),
    #[error("report from an invalid worker identity: {0}")]
    InvalidWorker(String),
}

impl Rejection {
    /// Stable name: the `reason` label of `warren_operator_reports_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::TooLarge(_) => "too_large",
            Rejection::Malformed(_) => "malformed",
            Rejection::UnknownVersion(_) => "unknown_version",
            Rejection::TooManyEvents(_) => "too_many_events",
            Rejection::InvalidWorker(_) => "invalid_worker",
        }
    }
}

/// The `reason` of events dropped from an admitted report because their Job reference is invalid.
pub const INVALID_JOB_REF: &str = "invalid_job_ref";

/// A report that may be folded: its events with valid Job references, and how many it had
/// without (dropped here, to be counted).
#[derive(Debug, PartialEq)]
pub struct Admitted {
    pub batch: ReportBatch,
    pub invalid_events: usize,
}

/// Admits one report message body, or says why the whole message is dropped. Events whose Job
/// reference is invalid are dropped one by one (the rest of the batch is another Job's and
/// must not suffer for it); progress messages are cut to [`MAX_PROGRESS_BYTES`], output tails to
/// their last [`MAX_OUTPUT_BYTES`].
pub fn report(body: &[u8]) -> Result<Admitted, Rejection> {
    if body.len() > MAX_REPORT_BYTES {
        return Err(Rejection::TooLarge(body.len()));
    }
    let wire: ReportIn = serde_json::from_slice(body).map_err(|e| Rejection::Malformed(e.to_string()))?;
    if wire.version != PROTOCOL_VERSION {
        return Err(Rejection::UnknownVersion(wire.version));
    }
    let count = wire.events.len() + wire.jobs.iter().map(|g| g.events.len()).sum::<usize>();
    if count > MAX_REPORT_EVENTS {
        return Err(Rejection::TooManyEvents(count));
    }
    check_worker(&wire.worker).map_err(Rejection::InvalidWorker)?;
    let mut invalid_events = 0;
    let mut events: Vec<TaskEvent> = Vec::with_capacity(count);
    for event in wire.events {
        if event.job.check().is_ok() {
            events.push(event);
        } else {
            invalid_events += 1;
        }
    }
    for group in wire.jobs {
        // Checked before the reference is copied into each event (bounded: at most a few
        // hundred bytes per event, whatever the message said).
        if group.job.check().is_err() {
            invalid_events += group.events.len();
            continue;
        }
        events.extend(group.events.into_iter().map(|e| e.with_job(group.job.clone())));
    }
    for event in &mut events {
        if let TaskEventKind::Progress { message, .. } = &mut event.kind {
            truncate_at_char_boundary(message, MAX_PROGRESS_BYTES);
        }
        if let Some(output) = &mut event.output {
            keep_tail_at_char_boundary(output, MAX_OUTPUT_BYTES);
        }
    }
    let batch = ReportBatch { version: wire.version, worker: wire.worker, sent_at_ms: wire.sent_at_ms, events, heartbeat: wire.heartbeat };
    Ok(Admitted { batch, invalid_events })
}

/// Cuts `text` to at most `max` bytes without splitting a character.
pub fn truncate_at_char_boundary(text: &mut String, max: usize) {
    if text.len() > max {
        let cut = (0..=max).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.truncate(cut);
    }
}

/// Keeps the last `max` bytes of `text` at most, without splitting a character (the end of an
/// output is what explains how it ended).
pub fn keep_tail_at_char_boundary(text: &mut String, max: usize) {
    if text.len() > max {
        let start = (text.len() - max..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
        text.drain(..start);
    }
}

fn check_worker(worker: &WorkerId) -> Result<(), String> {
    dns1123_label(&worker.namespace).map_err(|e| format!("namespace: {e}"))?;
    dns1123_subdomain(&worker.pool).map_err(|e| format!("pool: {e}"))?;
    dns1123_subdomain(&worker.pod).map_err(|e| format!("pod: {e}"))
}

impl JobRef {
    /// A reference that names a Job Kubernetes could hold: a DNS-1123 label as namespace, a
    /// DNS-1123 subdomain as name, and a uid of at most 64 letters, digits and dashes (a UUID on
    /// every API server).
    pub fn check(&self) -> Result<(), String> {
        dns1123_label(&self.namespace).map_err(|e| format!("namespace: {e}"))?;
        dns1123_subdomain(&self.name).map_err(|e| format!("name: {e}"))?;
        let uid = &self.uid;
        if uid.is_empty() || uid.len() > 64 || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("uid: {:?} is not a Kubernetes uid", shorten(uid)));
        }
        Ok(())
    }
}

/// A DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a
/// letter or digit (what Kubernetes requires of a namespace).
pub fn dns1123_label(value: &str) -> Result<(), String> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if valid { Ok(()) } else { Err(format!("{:?} is not a DNS-1123 label", shorten(value))) }
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated DNS-1123 labels (what Kubernetes
/// requires of most object names).
pub fn dns1123_subdomain(value: &str) -> Result<(), String> {
    let valid = !value.is_empty() && value.len() <= 253 && value.split('.').all(|label| dns1123_label(label).is_ok());
    if valid { Ok(()) } else { Err(format!("{:?} is not a DNS-1123 subdomain", shorten(value))) }
}

/// At most 80 characters of an untrusted value, for an error message.
fn shorten(value: &str) -> String {
    let mut short = value.chars().take(80).collect::<String>();
    if short.len() < value.len() {
        short.push('…');
    }
    short
}

/// Why a worker does not run a message of its queues: it dead-letters the message with
/// `reason` (a [`dead_letter_reason`]) and `error`, and reports nothing of it (a message that is
/// not its pool's may not speak for any Job).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRefusal {
    pub reason: &'static str,
    pub error: String,
}

/// Admits one message of a worker's queues as a task. With the pool's `key` (every worker
/// Deployment the operator writes has it) only a message whose `signature` header is the key's
/// MAC of the body is read at all; without one (a worker run by hand, or by an older operator)
/// any well-formed envelope is.
pub fn task(key: Option<&[u8]>, body: &[u8], signature: Option<&str>) -> Result<TaskEnvelope, TaskRefusal> {
    if let Some(key) = key {
        match signature {
            None => {
                let error = "the message has no task signature; this pool runs only tasks signed with its key".to_string();
                return Err(TaskRefusal { reason: dead_letter_reason::UNSIGNED, error });
            }
            Some(signature) if !crate::signature::verify_task(key, body, signature) => {
                let error =
                    "the message's task signature is not this pool's (another pool's key, a forgery, or a key rotated since)".to_string();
                return Err(TaskRefusal { reason: dead_letter_reason::BAD_SIGNATURE, error });
            }
            Some(_) => {}
        }
    }
    TaskEnvelope::from_json(body).map_err(|error| TaskRefusal { reason: dead_letter_reason::MALFORMED, error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FailureDisposition, Heartbeat};

    fn job(name: &str) -> JobRef {
        JobRef { namespace: "ns".into(), name: name.into(), uid: "0c7f9e2a-4b1d-4f3e-9a8b-1c2d3e4f5a6b".into() }
    }

    fn worker() -> serde_json::Value {
        serde_json::json!({"namespace": "ns", "pool": "pool", "pod": "pool-7d9f-abcde"})
    }

    fn body(value: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    fn grouped(jobs: serde_json::Value) -> Vec<u8> {
        body(serde_json::json!({"version": 1, "worker": worker(), "sentAtMs": 1, "jobs": jobs}))
    }

    fn started(index: u32) -> serde_json::Value {
        serde_json::json!({"index": index, "attempt": 1, "atMs": 5, "kind": {"type": "started"}})
    }

    #[test]
    fn a_pool_with_a_key_runs_only_tasks_its_key_signed() {
        let (key, other) = ([3u8; 32], [4u8; 32]);
        let envelope = TaskEnvelope {
            version: PROTOCOL_VERSION,
            job: job("j"),
            index: 2,
            total: 3,
            attempt: 1,
            priority: "normal".into(),
            task_type: None,
            payload: serde_json::json!({"x": 1}),
            idempotency_key: "u/2".into(),
            retry: crate::RetryPolicy::default(),
            timeout_seconds: None,
            replay: 0,
            enqueued_at_ms: 0,
        };
        let body = envelope.to_json();
        let signed = crate::signature::sign_task(&key, &body);
        assert_eq!(task(Some(&key), &body, Some(&signed)), Ok(envelope.clone()));
        let reason = |r: Result<TaskEnvelope, TaskRefusal>| r.unwrap_err().reason;
        assert_eq!(reason(task(Some(&key), &body, None)), "unsigned");
        assert_eq!(reason(task(Some(&key), &body, Some(&crate::signature::sign_task(&other, &body)))), "bad-signature");
        let mut changed = body.clone();
        changed.extend_from_slice(b" ");
        assert_eq!(reason(task(Some(&key), &changed, Some(&signed))), "bad-signature", "a body changed after signing");
        // Signed garbage is still not a task; without a key, only the envelope is checked.
        assert_eq!(reason(task(Some(&key), b"{}", Some(&crate::signature::sign_task(&key, b"{}")))), "malformed");
        assert_eq!(task(None, &body, None), Ok(envelope));
        assert_eq!(reason(task(None, b"nope", None)), "malformed");
    }

    #[test]
    fn a_worker_report_is_admitted_whole() {
        let batch = ReportBatch {
            version: PROTOCOL_VERSION,
            worker: WorkerId { namespace: "ns".into(), pool: "pool".into(), pod: "pool-0".into() },
            sent_at_ms: 9,
            events: vec![
                TaskEvent { job: job("a"), index: 0, attempt: 1, at_ms: 1, kind: TaskEventKind::Started, replay: 0, output: None },
                TaskEvent {
                    job: job("b.with.dots"),
                    index: 3,
                    attempt: 2,
                    at_ms: 2,
                    kind: TaskEventKind::Failed { error: "x".into(), disposition: FailureDisposition::Retrying { delay_ms: 100 } },
                    replay: 0,
                    output: Some("reading item 3\nconnection refused".into()),
                },
            ],
            heartbeat: Some(Heartbeat {
                in_flight: 1,
                concurrency: 4,
                draining: false,
                idle_since_ms: None,
                completed_total: 3,
                interrupted_total: 0,
                buffered: None,
            }),
        };
        assert_eq!(report(&batch.to_json()), Ok(Admitted { batch, invalid_events: 0 }));
    }

    #[test]
    fn whole_messages_are_rejected_with_a_stable_reason() {
        let huge = vec![b' '; MAX_REPORT_BYTES + 1];
        let many: Vec<serde_json::Value> = (0..=MAX_REPORT_EVENTS as u32).map(started).collect();
        let bad_worker = body(serde_json::json!({
            "version": 1, "worker": {"namespace": "NS", "pool": "p", "pod": "p-0"}, "sentAtMs": 1, "jobs": []
        }));
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("over the size limit, not even parsed", huge, "too_large"),
            ("not JSON", b"\xff\xfe garbage".to_vec(), "malformed"),
            ("JSON of another shape", body(serde_json::json!({"hello": "world"})), "malformed"),
            ("a task envelope on the reports queue", body(serde_json::json!({"version": 1, "job": job("a"), "index": 0})), "malformed"),
            ("a future version", body(serde_json::json!({"version": 2, "worker": worker(), "sentAtMs": 1})), "unknown_version"),
            ("too many events", grouped(serde_json::json!([{"job": job("a"), "events": many}])), "too_many_events"),
            ("a worker identity that is no pod", bad_worker, "invalid_worker"),
        ];
        for (what, body, reason) in cases {
            let rejection = report(&body).expect_err(what);
            assert_eq!(rejection.reason(), reason, "{what}: {rejection}");
        }
    }

    #[test]
    fn events_with_an_invalid_job_reference_are_dropped_and_counted_and_the_rest_admitted() {
        let long_name = "a".repeat(254);
        let huge_uid = "u".repeat(100_000);
        let body = grouped(serde_json::json!([
            {"job": job("good"), "events": [started(0), started(1)]},
            {"job": {"namespace": "ns", "name": "Not_A_Name", "uid": "x"}, "events": [started(0)]},
            {"job": {"namespace": "ns", "name": long_name, "uid": "x"}, "events": [started(0)]},
            {"job": {"namespace": "ns", "name": "fine", "uid": huge_uid}, "events": [started(0), started(1), started(2)]},
            {"job": {"namespace": "-ns", "name": "fine", "uid": "x"}, "events": [started(0)]},
            {"job": {"namespace": "ns", "name": "fine", "uid": ""}, "events": [started(0)]},
        ]));
        let admitted = report(&body).unwrap();
        assert_eq!(admitted.invalid_events, 7);
        let indexes: Vec<(String, u32)> = admitted.batch.events.iter().map(|e| (e.job.name.clone(), e.index)).collect();
        assert_eq!(indexes, vec![("good".to_string(), 0), ("good".to_string(), 1)]);

        // The flat form is checked event by event too.
        let flat = body_of_flat(vec![
            serde_json::json!({"job": job("ok"), "index": 0, "attempt": 1, "atMs": 1, "kind": {"type": "started"}}),
            serde_json::json!({"job": {"namespace": "ns", "name": "a/b", "uid": "x"}, "index": 0, "attempt": 1, "atMs": 1, "kind": {"type": "started"}}),
        ]);
        let admitted = report(&flat).unwrap();
        assert_eq!((admitted.batch.events.len(), admitted.invalid_events), (1, 1));
    }

    fn body_of_flat(events: Vec<serde_json::Value>) -> Vec<u8> {
        body(serde_json::json!({"version": 1, "worker": worker(), "sentAtMs": 1, "events": events}))
    }

    #[test]
    fn progress_messages_are_cut_to_the_limit_at_a_character_boundary() {
        let message = "é".repeat(MAX_PROGRESS_BYTES); // 2 bytes each
        let body = grouped(serde_json::json!([{"job": job("a"), "events": [
            {"index": 0, "attempt": 1, "atMs": 5, "kind": {"type": "progress", "percent": 50, "message": message}}
        ]}]));
        let admitted = report(&body).unwrap();
        let TaskEventKind::Progress { message, percent } = &admitted.batch.events[0].kind else { panic!("progress") };
        assert_eq!((*percent, message.len()), (50, MAX_PROGRESS_BYTES));
        assert!(message.chars().all(|c| c == 'é'));

        let mut odd = "aé".to_string();
        truncate_at_char_boundary(&mut odd, 2);
        assert_eq!(odd, "a");
    }

    #[test]
    fn output_tails_keep_their_end_within_the_limit() {
        let output = format!("{}the last line", "é".repeat(MAX_OUTPUT_BYTES));
        let body = grouped(serde_json::json!([{"job": job("a"), "events": [
            {"index": 0, "attempt": 1, "atMs": 5, "kind": {"type": "succeeded"}, "output": output}
        ]}]));
        let admitted = report(&body).unwrap();
        let kept = admitted.batch.events[0].output.as_deref().unwrap();
        assert!(kept.len() <= MAX_OUTPUT_BYTES && kept.len() > MAX_OUTPUT_BYTES - 2, "{}", kept.len());
        assert!(kept.ends_with("the last line"), "{kept}");
        let mut odd = "éa".to_string();
        keep_tail_at_char_boundary(&mut odd, 2);
        assert_eq!(odd, "a");
        let mut short = "ok".to_string();
        keep_tail_at_char_boundary(&mut short, 2);
        assert_eq!(short, "ok");
    }

    #[test]
    fn names_follow_the_kubernetes_rules() {
        for ok in ["a", "a-b", "0abc", &"a".repeat(63)] {
            assert!(dns1123_label(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "a_b", "-a", "a-", "a.b", &"a".repeat(64), "é"] {
            assert!(dns1123_label(bad).is_err(), "{bad}");
        }
        for ok in ["a.b", "a-b.c-d", &format!("{}.{}", "a".repeat(63), "b".repeat(63))] {
            assert!(dns1123_subdomain(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "a/b", &"a.".repeat(127)] {
            assert!(dns1123_subdomain(bad).is_err(), "{bad}");
        }
        let error = dns1123_label(&"X".repeat(10_000)).unwrap_err();
        assert!(error.len() < 120, "an error message quotes at most 80 characters: {error}");
    }
}

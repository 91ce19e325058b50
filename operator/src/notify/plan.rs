//! What to deliver now, and how a delivery's outcome changes `status.notifications`. Pure: no
//! client, no clock (`now` is an argument), no randomness (the jitter is derived from the event
//! id and the attempt, so a restarted operator waits the same time).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{Notification, NotificationStatus, NotifyPhase};

/// Reason of a record abandoned because its destination is not allowed.
pub const DESTINATION_REFUSED: &str = "DestinationRefused";
/// Reason of a record abandoned after its last attempt failed.
pub const ATTEMPTS_EXHAUSTED: &str = "AttemptsExhausted";

/// Most bytes of `lastError`.
pub const ERROR_BYTES: usize = 512;

/// How deliveries are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Requests per event and destination before giving up (at least 1).
    pub max_attempts: u32,
    /// Delay after the first failed attempt; doubles each attempt.
    pub base_delay: Duration,
    /// Longest delay between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 12, base_delay: Duration::from_secs(1), max_delay: Duration::from_secs(300) }
    }
}

/// The delay after `attempts` failed attempts (≥ 1): `base · 2^(attempts-1)` capped at
/// `max_delay`, times a jitter factor in [0.8, 1.2) derived from `id` and `attempts`.
pub fn retry_delay(policy: &RetryPolicy, id: &str, attempts: u32) -> Duration {
    let doubling = 1u64 << attempts.saturating_sub(1).min(30);
    let base = policy.base_delay.saturating_mul(doubling.min(u64::from(u32::MAX)) as u32).min(policy.max_delay);
    base.mul_f64(0.8 + 0.4 * jitter_unit(id, attempts))
}

/// A number in [0, 1) from `id` and `attempt` (FNV-1a): the same on every operator.
fn jitter_unit(id: &str, attempt: u32) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes().chain(attempt.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// Where an object's events go: a webhook of `spec.notify` (named by its URL) or the
/// operator's exchange (`exchange:<name>`), and the phases it hears about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub name: String,
    pub on: Vec<NotifyPhase>,
}

/// The record name of the operator's exchange.
pub fn exchange_destination(exchange: &str) -> String {
    format!("exchange:{exchange}")
}

/// The destinations of an object: its webhooks in `spec.notify` order, then (when the operator
/// has `--notify-exchange`) the exchange, for every phase any webhook hears about. Pure.
pub fn destinations(notify: &[Notification], exchange: Option<&str>) -> Vec<Destination> {
    let mut out: Vec<Destination> = notify.iter().map(|n| Destination { name: n.webhook.url.clone(), on: n.on.clone() }).collect();
    if let Some(exchange) = exchange
        && !notify.is_empty()
    {
        let mut on: Vec<NotifyPhase> = notify.iter().flat_map(|n| n.on.iter().copied()).collect();
        on.sort();
        on.dedup();
        out.push(Destination { name: exchange_destination(exchange), on });
    }
    out
}

/// One delivery to make now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// Index in the destinations ([`destinations`]).
    pub notification: usize,
    pub phase: NotifyPhase,
    pub id: String,
}

/// The deliveries due at `now` for an object in phase `phase` (None: not finished) and the
/// records as they should be kept: one per (destination, phase) that was reached, in the order of
/// `destinations`. Records of destinations no longer in the spec are kept (they say what was
/// sent). Also returns when the next retry is due, if any.
pub fn due(
    notify: &[Destination],
    phase: Option<NotifyPhase>,
    uid: &str,
    records: &[NotificationStatus],
    policy: &RetryPolicy,
    now: jiff::Timestamp,
) -> (Vec<Due>, Vec<NotificationStatus>, Option<jiff::Timestamp>) {
    let mut records = records.to_vec();
    let mut due = Vec::new();
    let mut next: Option<jiff::Timestamp> = None;
    let Some(phase) = phase else { return (due, records, next) };
    for (i, n) in notify.iter().enumerate() {
        if !n.on.contains(&phase) {
            continue;
        }
        let id = super::event::event_id(uid, phase);
        let position = match records.iter().position(|r| r.destination == n.name && r.phase == phase) {
            Some(p) => p,
            None => {
                records.push(NotificationStatus {
                    destination: n.name.clone(),
                    phase,
                    id: id.clone(),
                    attempts: 0,
                    last_attempt_time: None,
                    delivered: None,
                    abandoned: None,
                    reason: None,
                    last_error: None,
                });
                records.len() - 1
            }
        };
        let record = &records[position];
        if record.delivered.is_some() || record.abandoned.is_some() {
            continue;
        }
        let at = match (&record.last_attempt_time, record.attempts) {
            (Some(last), attempts) if attempts > 0 => {
                let delay = retry_delay(policy, &id, attempts);
                last.0 + jiff::SignedDuration::try_from(delay).unwrap_or(jiff::SignedDuration::MAX)
            }
            _ => now,
        };
        if at <= now {
            due.push(Due { notification: i, phase, id });
        } else {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    }
    (due, records, next)
}

/// How one delivery went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered 2xx.
    Delivered,
    /// A request was sent (or tried) and failed: retried until `max_attempts`.
    Failed(String),
    /// The destination is not allowed: never sent, never retried.
    Refused(String),
}

/// What the record says after `outcome`. Returns the new record and whether it was just
/// abandoned (an Event and a metric are due).
pub fn record_outcome(
    record: &NotificationStatus,
    outcome: &Outcome,
    policy: &RetryPolicy,
    now: jiff::Timestamp,
) -> (NotificationStatus, bool) {
    let mut next = record.clone();
    let now = Time(now);
    match outcome {
        Outcome::Delivered => {
            next.attempts += 1;
            next.last_attempt_time = Some(now.clone());
            next.delivered = Some(now);
            (next, false)
        }
        Outcome::Failed(error) => {
            next.attempts += 1;
            next.last_attempt_time = Some(now.clone());
            next.last_error = Some(cut(error));
            let exhausted = next.attempts >= policy.max_attempts.max(1);
            if exhausted {
                next.abandoned = Some(now);
                next.reason = Some(ATTEMPTS_EXHAUSTED.into());
            }
            (next, exhausted)
        }
        Outcome::Refused(error) => {
            next.last_error = Some(cut(error));
            next.abandoned = Some(now);
            next.reason = Some(DESTINATION_REFUSED.into());
            (next, true)
        }
    }
}

fn cut(text: &str) -> String {
    if text.len() <= ERROR_BYTES {
        return text.to_string();
    }
    let mut end = ERROR_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Replaces the record of (`destination`, `phase`) in `records`.
pub fn replace(records: &mut [NotificationStatus], updated: NotificationStatus) {
    if let Some(r) = records.iter_mut().find(|r| r.destination == updated.destination && r.phase == updated.phase) {
        *r = updated;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn spec(specs: &[(&str, &[NotifyPhase])]) -> Vec<Notification> {
        specs
            .iter()
            .map(|(url, on)| {
                serde_json::from_value(serde_json::json!({"webhook": {"url": url, "secretRef": {"name": "s", "key": "k"}}, "on": on}))
                    .unwrap()
            })
            .collect()
    }

    fn notify(specs: &[(&str, &[NotifyPhase])]) -> Vec<Destination> {
        destinations(&spec(specs), None)
    }

    #[test]
    fn the_exchange_hears_every_phase_a_webhook_hears_and_only_of_notified_objects() {
        use NotifyPhase::*;
        let webhooks = spec(&[("https://a.example/h", &[Failed]), ("https://b.example/h", &[Succeeded, Failed])]);
        let all = destinations(&webhooks, Some("events"));
        assert_eq!(all.len(), 3);
        assert_eq!(all[2], Destination { name: "exchange:events".into(), on: vec![Succeeded, Failed] });
        assert_eq!(destinations(&webhooks, None).len(), 2);
        assert!(destinations(&[], Some("events")).is_empty(), "an object without spec.notify sends nothing");
        let (deliveries, records, _) = due(&all, Some(Succeeded), "u", &[], &RetryPolicy::default(), ts("2026-12-07T02:00:00Z"));
        assert_eq!(deliveries.iter().map(|d| d.notification).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(records[1].destination, "exchange:events");
    }

    #[test]
    fn the_retry_schedule_doubles_with_bounded_jitter_and_is_the_same_on_every_operator() {
        let policy = RetryPolicy { max_attempts: 20, base_delay: Duration::from_secs(1), max_delay: Duration::from_secs(60) };
        for (attempts, base) in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (15, 60.0), (u32::MAX, 60.0)] {
            let d = retry_delay(&policy, "u.succeeded", attempts).as_secs_f64();
            assert!(d >= base * 0.8 && d < base * 1.2, "attempt {attempts}: {d}s for base {base}s");
            assert_eq!(retry_delay(&policy, "u.succeeded", attempts), retry_delay(&policy, "u.succeeded", attempts));
        }
        let spread: std::collections::BTreeSet<u128> = (0..50).map(|i| retry_delay(&policy, &format!("u{i}"), 3).as_millis()).collect();
        assert!(spread.len() > 40, "ids are spread over the jitter window: {spread:?}");
    }

    #[test]
    fn a_finished_object_gets_one_record_per_destination_and_phase_it_reached() {
        use NotifyPhase::*;
        let spec = notify(&[("https://a.example/h", &[Succeeded, Failed]), ("https://b.example/h", &[Failed])]);
        let now = ts("2026-12-07T02:00:00Z");
        let policy = RetryPolicy::default();
        assert_eq!(due(&spec, None, "u", &[], &policy, now).0, vec![], "nothing before the end");
        let (deliveries, records, next) = due(&spec, Some(Succeeded), "u", &[], &policy, now);
        assert_eq!(deliveries, vec![Due { notification: 0, phase: Succeeded, id: "u.succeeded".into() }]);
        assert_eq!((records.len(), records[0].destination.as_str(), records[0].attempts), (1, "https://a.example/h", 0));
        assert_eq!(next, None);
        let (deliveries, records, _) = due(&spec, Some(Failed), "u", &[], &policy, now);
        assert_eq!(deliveries.iter().map(|d| d.notification).collect::<Vec<_>>(), vec![0, 1]);
        assert!(records.iter().all(|r| r.id == "u.failed"));
    }

    #[test]
    fn a_failed_delivery_waits_its_delay_and_a_delivered_or_abandoned_one_is_never_sent_again() {
        use NotifyPhase::*;
        let spec = notify(&[("https://a.example/h", &[Succeeded])]);
        let policy = RetryPolicy { max_attempts: 3, base_delay: Duration::from_secs(10), max_delay: Duration::from_secs(60) };
        let t0 = ts("2026-12-07T02:00:00Z");
        let (_, records, _) = due(&spec, Some(Succeeded), "u", &[], &policy, t0);
        let (failed, abandoned) = record_outcome(&records[0], &Outcome::Failed("HTTP 500".into()), &policy, t0);
        assert_eq!((failed.attempts, failed.last_error.as_deref(), abandoned), (1, Some("HTTP 500"), false));
        let (deliveries, kept, next) =
            due(&spec, Some(Succeeded), "u", std::slice::from_ref(&failed), &policy, t0 + jiff::SignedDuration::from_secs(5));
        assert!(deliveries.is_empty(), "within the first delay");
        let next = next.expect("a retry is scheduled");
        assert!(next > t0 + jiff::SignedDuration::from_secs(7) && next < t0 + jiff::SignedDuration::from_secs(13), "{next}");
        assert_eq!(kept, vec![failed.clone()]);
        let (deliveries, _, _) =
            due(&spec, Some(Succeeded), "u", std::slice::from_ref(&failed), &policy, t0 + jiff::SignedDuration::from_secs(13));
        assert_eq!(deliveries.len(), 1, "after the delay");

        let (delivered, _) = record_outcome(&failed, &Outcome::Delivered, &policy, t0 + jiff::SignedDuration::from_secs(13));
        assert_eq!((delivered.attempts, delivered.delivered.is_some()), (2, true));
        assert_eq!(delivered.last_error.as_deref(), Some("HTTP 500"), "the history is kept");
        assert!(due(&spec, Some(Succeeded), "u", &[delivered], &policy, t0 + jiff::SignedDuration::from_secs(9999)).0.is_empty());

        let (second, _) = record_outcome(&failed, &Outcome::Failed("HTTP 502".into()), &policy, t0);
        let (third, abandoned) = record_outcome(&second, &Outcome::Failed("connection refused".into()), &policy, t0);
        assert_eq!((third.attempts, third.reason.as_deref(), abandoned), (3, Some(ATTEMPTS_EXHAUSTED), true));
        assert!(due(&spec, Some(Succeeded), "u", &[third], &policy, t0 + jiff::SignedDuration::from_secs(9999)).0.is_empty());
    }

    #[test]
    fn a_refused_destination_is_abandoned_at_once_without_an_attempt() {
        let spec = notify(&[("http://169.254.169.254/latest", &[NotifyPhase::Failed])]);
        let policy = RetryPolicy::default();
        let now = ts("2026-12-07T02:00:00Z");
        let (_, records, _) = due(&spec, Some(NotifyPhase::Failed), "u", &[], &policy, now);
        let (refused, abandoned) = record_outcome(&records[0], &Outcome::Refused("link-local".into()), &policy, now);
        assert_eq!((refused.attempts, refused.reason.as_deref(), abandoned), (0, Some(DESTINATION_REFUSED), true));
        assert!(due(&spec, Some(NotifyPhase::Failed), "u", &[refused], &policy, now).0.is_empty(), "never retried");
    }

    #[test]
    fn a_long_error_is_cut_at_a_character_boundary() {
        let policy = RetryPolicy::default();
        let record = NotificationStatus {
            destination: "d".into(),
            phase: NotifyPhase::Failed,
            id: "i".into(),
            attempts: 0,
            last_attempt_time: None,
            delivered: None,
            abandoned: None,
            reason: None,
            last_error: None,
        };
        let (next, _) = record_outcome(&record, &Outcome::Failed("é".repeat(400)), &policy, ts("2026-12-07T02:00:00Z"));
        let error = next.last_error.unwrap();
        assert!(error.len() <= ERROR_BYTES && error.len() >= ERROR_BYTES - 1, "{}", error.len());
    }
}

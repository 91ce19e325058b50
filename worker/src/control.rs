//! The operator's control messages as the worker sees them: the set of cancelled Jobs.
//!
//! Pure: the runtime feeds it every [`ControlMessage`] received on the installation's control
//! exchange and asks it, per delivery and per running task, whether the task's Job is cancelled.
//! Each message is the operator's whole set, so it replaces the previous one (a resumed Job just
//! disappears). Messages older than the one applied last are ignored (two operators during a
//! leader hand-over, or a reordered delivery after a reconnect).

use std::collections::HashMap;
use std::time::Duration;

use warren_protocol::{ControlMessage, Probe};

/// How long a new session waits for the first control message before it takes tasks, so that
/// a worker starting after a Job was cancelled does not run its tasks. The operator broadcasts
/// every second; without an operator the worker starts after this wait.
pub const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(2);

/// A control message may be at most this far ahead of the worker's clock: one from further in
/// the future would make every genuine message after it look older, and be ignored.
pub const MAX_CLOCK_AHEAD_MS: u64 = 5 * 60 * 1_000;

/// Why a control message was not applied (`warren_worker_control_messages_rejected_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The worker has the operator's public key and the message carries no signature.
    Unsigned,
    /// Its signature is not the operator's (another key, or a changed body).
    BadSignature,
    /// Sent more than [`MAX_CLOCK_AHEAD_MS`] after the worker's now.
    FromTheFuture,
    /// Not a control message.
    Malformed,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Unsigned => "unsigned",
            Rejection::BadSignature => "bad_signature",
            Rejection::FromTheFuture => "from_the_future",
            Rejection::Malformed => "malformed",
        }
    }
}

/// Whether a control message may be applied: signed by the operator when the worker has its
/// key (`verifier`), and not from the future. Everyone who may publish to the control exchange
/// reaches every worker, so nothing else is trusted.
pub fn admit(
    verifier: Option<&warren_protocol::control_signature::Verifier>,
    body: &[u8],
    signature: Option<&str>,
    now_ms: u64,
) -> Result<ControlMessage, Rejection> {
    if let Some(verifier) = verifier {
        match signature {
            None => return Err(Rejection::Unsigned),
            Some(_) if !verifier.verify(body, signature) => return Err(Rejection::BadSignature),
            Some(_) => {}
        }
    }
    let message = ControlMessage::from_json(body).map_err(|_| Rejection::Malformed)?;
    if message.sent_at_ms > now_ms.saturating_add(MAX_CLOCK_AHEAD_MS) {
        return Err(Rejection::FromTheFuture);
    }
    Ok(message)
}

/// The cancelled Jobs: uid → reason; and the pools whose circuit is open: (namespace, pool) →
/// the probe, if half-open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CancelSet {
    jobs: HashMap<String, String>,
    paused: HashMap<(String, String), Option<Probe>>,
    sent_at_ms: u64,
}

/// Whether a worker may start a task of its pool now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartGate {
    Open,
    /// The pool's circuit is open: start nothing (buffered tasks wait, no attempt spent).
    Shut,
    /// Half-open, and this worker is the probe: up to `tasks` tasks in all for probe `id`.
    Probe {
        id: u64,
        tasks: u32,
    },
}

/// The probe tasks a worker started for the current probe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeCount {
    id: u64,
    started: u32,
}

impl ProbeCount {
    /// Whether a task may start under `gate`; counts it when it may.
    pub fn may_start(&mut self, gate: StartGate) -> bool {
        match gate {
            StartGate::Open => true,
            StartGate::Shut => false,
            StartGate::Probe { id, tasks } => {
                if self.id != id {
                    *self = ProbeCount { id, started: 0 };
                }
                if self.started < tasks {
                    self.started += 1;
                    true
                } else {
                    false
                }
            }
        }
    }
}

impl CancelSet {
    /// Applies a control message. Returns the uids that became cancelled with it (their running
    /// tasks must be cancelled), or `None` when the message is older than the current set.
    pub fn apply(&mut self, message: &ControlMessage) -> Option<Vec<String>> {
        if message.sent_at_ms < self.sent_at_ms {
            return None;
        }
        let jobs: HashMap<String, String> = message.cancelled.iter().map(|c| (c.uid.clone(), c.reason.clone())).collect();
        let mut added: Vec<String> = jobs.keys().filter(|uid| !self.jobs.contains_key(*uid)).cloned().collect();
        added.sort();
        self.jobs = jobs;
        self.paused = message.paused.iter().map(|p| ((p.namespace.clone(), p.pool.clone()), p.probe.clone())).collect();
        self.sent_at_ms = message.sent_at_ms;
        Some(added)
    }

    /// Whether worker `pod` of the pool may start a task (see [`ProbeCount`]).
    pub fn gate(&self, namespace: &str, pool: &str, pod: &str) -> StartGate {
        match self.paused.get(&(namespace.to_string(), pool.to_string())) {
            None => StartGate::Open,
            Some(Some(probe)) if probe.pod == pod => StartGate::Probe { id: probe.id, tasks: probe.tasks },
            Some(_) => StartGate::Shut,
        }
    }

    /// The paused pools, to tell a change apart.
    pub fn paused_count(&self) -> usize {
        self.paused.len()
    }

    /// Why the Job is cancelled, if it is.
    pub fn reason(&self, job_uid: &str) -> Option<&str> {
        self.jobs.get(job_uid).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_signed_messages_from_the_present_are_admitted() {
        use warren_protocol::control_signature::{Signer, Verifier, generate};
        let signer = Signer::from_pkcs8(&generate().unwrap()).unwrap();
        let verifier = Verifier::from_hex(&signer.public_key_hex()).unwrap();
        let now = 1_000_000_000;
        let body = message(now, &[("a", "suspended")]).to_json();
        let signature = signer.sign(&body);
        assert_eq!(admit(Some(&verifier), &body, Some(&signature), now).map(|m| m.cancelled.len()), Ok(1));
        assert_eq!(admit(Some(&verifier), &body, None, now), Err(Rejection::Unsigned));
        let forged = message(now, &[("a", "suspended"), ("b", "forged")]).to_json();
        assert_eq!(admit(Some(&verifier), &forged, Some(&signature), now), Err(Rejection::BadSignature), "a changed body");
        let other = Signer::from_pkcs8(&generate().unwrap()).unwrap();
        assert_eq!(admit(Some(&verifier), &body, Some(&other.sign(&body)), now), Err(Rejection::BadSignature), "another key");
        // Without the key (an operator that does not sign), anything well-formed from the present.
        assert!(admit(None, &body, None, now).is_ok());
        assert_eq!(admit(None, b"{", None, now), Err(Rejection::Malformed));
        // A message from far in the future would make every genuine one after it look older.
        let future = message(now + MAX_CLOCK_AHEAD_MS + 1, &[]).to_json();
        assert_eq!(admit(Some(&verifier), &future, Some(&signer.sign(&future)), now), Err(Rejection::FromTheFuture));
        assert_eq!(admit(None, &future, None, now), Err(Rejection::FromTheFuture));
        let soon = message(now + 60_000, &[]).to_json();
        assert!(admit(None, &soon, None, now).is_ok(), "clocks a minute apart are fine");
    }

    use super::*;
    use warren_protocol::{CancelledJob, PROTOCOL_VERSION};

    fn message(at: u64, jobs: &[(&str, &str)]) -> ControlMessage {
        ControlMessage {
            version: PROTOCOL_VERSION,
            sent_at_ms: at,
            cancelled: jobs.iter().map(|(u, r)| CancelledJob { uid: u.to_string(), reason: r.to_string() }).collect(),
            paused: Vec::new(),
        }
    }

    #[test]
    fn each_message_replaces_the_set() {
        let mut set = CancelSet::default();
        assert_eq!(set.apply(&message(10, &[("a", "suspended"), ("b", "deleted")])), Some(vec!["a".into(), "b".into()]));
        assert_eq!(set.reason("a"), Some("suspended"));
        // a resumed (a gone), c deadline exceeded: only c is new.
        assert_eq!(set.apply(&message(20, &[("b", "deleted"), ("c", "deadline-exceeded")])), Some(vec!["c".into()]));
        assert_eq!((set.reason("a"), set.reason("b"), set.len()), (None, Some("deleted"), 2));
        // The same set again adds nothing.
        assert_eq!(set.apply(&message(30, &[("b", "deleted"), ("c", "deadline-exceeded")])), Some(vec![]));
        assert_eq!(set.apply(&message(40, &[])), Some(vec![]));
        assert!(set.is_empty());
    }

    #[test]
    fn a_paused_pool_starts_nothing_but_its_probe() {
        let mut set = CancelSet::default();
        let probe = Probe { id: 7, pod: "w-1".into(), tasks: 2 };
        let mut paused = message(10, &[]);
        paused.paused = vec![
            warren_protocol::PausedPool { namespace: "ns".into(), pool: "p".into(), probe: None },
            warren_protocol::PausedPool { namespace: "ns".into(), pool: "q".into(), probe: Some(probe) },
        ];
        set.apply(&paused);
        assert_eq!(set.gate("ns", "p", "w-1"), StartGate::Shut);
        assert_eq!(set.gate("ns", "other", "w-1"), StartGate::Open);
        assert_eq!(set.gate("ns", "q", "w-2"), StartGate::Shut, "not the probe");
        let gate = set.gate("ns", "q", "w-1");
        assert_eq!(gate, StartGate::Probe { id: 7, tasks: 2 });
        let mut count = ProbeCount::default();
        assert_eq!((count.may_start(gate), count.may_start(gate), count.may_start(gate)), (true, true, false));
        assert!(count.may_start(StartGate::Probe { id: 8, tasks: 1 }), "a new probe counts anew");
        set.apply(&message(20, &[]));
        assert_eq!(set.gate("ns", "q", "w-1"), StartGate::Open, "the next message without it lifts the pause");
    }

    #[test]
    fn older_messages_are_ignored() {
        let mut set = CancelSet::default();
        set.apply(&message(20, &[("a", "suspended")]));
        assert_eq!(set.apply(&message(10, &[])), None);
        assert_eq!(set.reason("a"), Some("suspended"));
    }
}

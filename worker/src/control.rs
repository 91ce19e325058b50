//! The operator's control messages as the worker sees them: the set of cancelled Jobs.
//!
//! Pure: the runtime feeds it every [`ControlMessage`] received on the installation's control
//! exchange and asks it, per delivery and per running task, whether the task's Job is cancelled.
//! Each message is the operator's whole set, so it replaces the previous one (a resumed Job just
//! disappears). Messages older than the one applied last are ignored (two operators during a
//! leader hand-over, or a reordered delivery after a reconnect).

use std::collections::HashMap;
use std::time::Duration;

use warren_protocol::ControlMessage;

/// How long a new session waits for the first control message before it takes tasks, so that
/// a worker starting after a Job was cancelled does not run its tasks. The operator broadcasts
/// every second; without an operator the worker starts after this wait.
pub const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(2);

/// The cancelled Jobs: uid → reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CancelSet {
    jobs: HashMap<String, String>,
    sent_at_ms: u64,
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
        self.sent_at_ms = message.sent_at_ms;
        Some(added)
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
    use super::*;
    use warren_protocol::{CancelledJob, PROTOCOL_VERSION};

    fn message(at: u64, jobs: &[(&str, &str)]) -> ControlMessage {
        ControlMessage {
            version: PROTOCOL_VERSION,
            sent_at_ms: at,
            cancelled: jobs.iter().map(|(u, r)| CancelledJob { uid: u.to_string(), reason: r.to_string() }).collect(),
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
    fn older_messages_are_ignored() {
        let mut set = CancelSet::default();
        set.apply(&message(20, &[("a", "suspended")]));
        assert_eq!(set.apply(&message(10, &[])), None);
        assert_eq!(set.reason("a"), Some("suspended"));
    }
}

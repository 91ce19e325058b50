//! Which pools have a queue on a broker node that is down (a classic queue's node, or a quorum
//! queue without a quorum). The lost-task check ([`crate::lost_tasks`]) finds out, since it looks
//! at every busy pool's queues every few seconds; the WorkerPool controller says it in the pool's
//! `Ready` condition (reason `QueueUnavailable`), and its Jobs wait and say why. A change triggers
//! a reconcile of that pool and of its Jobs, so both follow within one check, not at the next
//! periodic reconcile — and a Job does not depend on the pool's status reaching it by the watch.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;

use crate::crd::WorkerPool;

/// The broker's message about the unavailable queue, per pool (`namespace/name`).
pub struct QueueHealth {
    unavailable: Mutex<HashMap<String, String>>,
    reconcile: mpsc::UnboundedSender<ObjectRef<WorkerPool>>,
    reconcile_jobs: mpsc::UnboundedSender<ObjectRef<WorkerPool>>,
}

/// The pools to reconcile when their queues' health changes, for the pool controller and for
/// the Job controller (which reconciles the pool's Jobs).
pub struct Triggers {
    pub pools: mpsc::UnboundedReceiver<ObjectRef<WorkerPool>>,
    pub jobs_of_pools: mpsc::UnboundedReceiver<ObjectRef<WorkerPool>>,
}

impl QueueHealth {
    /// A new record and the streams of pools to reconcile when it changes.
    pub fn new() -> (Self, Triggers) {
        let (reconcile, pools) = mpsc::unbounded();
        let (reconcile_jobs, jobs_of_pools) = mpsc::unbounded();
        (Self { unavailable: Mutex::default(), reconcile, reconcile_jobs }, Triggers { pools, jobs_of_pools })
    }

    /// Records what the last check saw of the pool's queues: `Some(message)` when one is
    /// unavailable. Returns true when that changed (and reconciles of the pool and its Jobs were
    /// asked for).
    pub fn observe(&self, namespace: &str, pool: &str, unavailable: Option<String>) -> bool {
        let key = format!("{namespace}/{pool}");
        let changed = {
            let mut map = self.unavailable.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let was = map.contains_key(&key);
            match unavailable {
                Some(message) => {
                    map.insert(key, message);
                    !was
                }
                None => map.remove(&key).is_some(),
            }
        };
        if changed {
            let _ = self.reconcile.unbounded_send(ObjectRef::new(pool).within(namespace));
            let _ = self.reconcile_jobs.unbounded_send(ObjectRef::new(pool).within(namespace));
        }
        changed
    }

    /// The broker's message, while a queue of the pool is unavailable.
    pub fn unavailable(&self, namespace: &str, pool: &str) -> Option<String> {
        self.unavailable.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&format!("{namespace}/{pool}")).cloned()
    }

    /// Forgets pools that no longer exist.
    pub fn retain(&self, pools: &std::collections::HashSet<String>) {
        self.unavailable.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|k, _| pools.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    #[test]
    fn a_change_is_recorded_once_and_asks_for_one_reconcile() {
        let (health, triggers) = QueueHealth::new();
        let Triggers { pools: mut triggers, jobs_of_pools: mut job_triggers } = triggers;
        assert!(health.observe("a", "p", Some("home node down".into())));
        assert!(!health.observe("a", "p", Some("home node down".into())), "no change, no reconcile");
        assert_eq!(health.unavailable("a", "p").as_deref(), Some("home node down"));
        assert_eq!(health.unavailable("b", "p"), None);
        assert!(health.observe("a", "p", None));
        assert!(!health.observe("a", "p", None));
        assert_eq!(health.unavailable("a", "p"), None);
        let (asked, asked_for_jobs): (Vec<_>, Vec<_>) = futures::executor::block_on(async {
            drop(health);
            (triggers.by_ref().collect::<Vec<_>>().await, job_triggers.by_ref().collect::<Vec<_>>().await)
        });
        assert_eq!(asked, vec![ObjectRef::new("p").within("a"), ObjectRef::new("p").within("a")]);
        assert_eq!(asked_for_jobs, asked, "the pool's Jobs are reconciled on the same changes");
    }

    #[test]
    fn pools_that_are_gone_are_forgotten() {
        let (health, _triggers) = QueueHealth::new();
        health.observe("a", "p", Some("down".into()));
        health.observe("a", "q", Some("down".into()));
        health.retain(&["a/q".to_string()].into_iter().collect());
        assert_eq!((health.unavailable("a", "p"), health.unavailable("a", "q").as_deref()), (None, Some("down")));
    }
}

//! What the workers say about themselves: the latest heartbeat of each worker process.
//!
//! Fed by the reports consumer; read by the autoscaler and for pod deletion costs. In memory only:
//! a restarted operator hears every live worker again within a heartbeat interval.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use warren_protocol::{Heartbeat, ReportBatch, WorkerId};

/// Most worker processes remembered at once. Reports come from anyone who may publish to the
/// broker, and each new identity adds an entry: past the bound, the one heard from longest ago
/// goes (a live worker is heard again within a heartbeat interval).
pub const MAX_WORKERS: usize = 10_000;

/// The latest heartbeat of one worker process and when it arrived.
#[derive(Clone, Debug)]
pub struct WorkerView {
    pub heartbeat: Heartbeat,
    pub seen: Instant,
}

#[derive(Default)]
pub struct WorkerRegistry {
    workers: Mutex<HashMap<WorkerId, WorkerView>>,
}

impl WorkerRegistry {
    pub fn observe(&self, batch: &ReportBatch) {
        if let Some(heartbeat) = &batch.heartbeat {
            let view = WorkerView { heartbeat: heartbeat.clone(), seen: Instant::now() };
            let mut workers = self.workers.lock().expect("registry lock");
            if workers.len() >= MAX_WORKERS
                && !workers.contains_key(&batch.worker)
                && let Some(oldest) = workers.iter().min_by_key(|(_, v)| v.seen).map(|(id, _)| id.clone())
            {
                workers.remove(&oldest);
            }
            workers.insert(batch.worker.clone(), view);
        }
    }

    /// The workers of one pool heard from within `max_age`.
    pub fn pool(&self, namespace: &str, pool: &str, max_age: std::time::Duration) -> Vec<(String, WorkerView)> {
        let mut workers = self.workers.lock().expect("registry lock");
        workers.retain(|_, v| v.seen.elapsed() < max_age * 10);
        workers
            .iter()
            .filter(|(id, v)| id.namespace == namespace && id.pool == pool && v.seen.elapsed() < max_age)
            .map(|(id, v)| (id.pod.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::{Heartbeat, PROTOCOL_VERSION};

    fn report(pod: &str) -> ReportBatch {
        ReportBatch {
            version: PROTOCOL_VERSION,
            worker: WorkerId { namespace: "ns".into(), pool: "p".into(), pod: pod.into() },
            sent_at_ms: 0,
            events: Vec::new(),
            heartbeat: Some(Heartbeat {
                in_flight: 0,
                concurrency: 1,
                draining: false,
                idle_since_ms: None,
                completed_total: 0,
                interrupted_total: 0,
                buffered: None,
            }),
        }
    }

    #[test]
    fn the_registry_is_bounded_and_forgets_the_longest_silent_worker_first() {
        let registry = WorkerRegistry::default();
        for i in 0..MAX_WORKERS + 5 {
            registry.observe(&report(&format!("pod-{i}")));
        }
        let workers = registry.pool("ns", "p", std::time::Duration::from_secs(60));
        assert_eq!(workers.len(), MAX_WORKERS);
        assert!(workers.iter().any(|(pod, _)| pod == &format!("pod-{}", MAX_WORKERS + 4)), "the newest is kept");
        // A known worker's new heartbeat evicts nobody.
        registry.observe(&report(&format!("pod-{}", MAX_WORKERS + 4)));
        assert_eq!(registry.pool("ns", "p", std::time::Duration::from_secs(60)).len(), MAX_WORKERS);
    }
}

//! What the workers say about themselves: the latest heartbeat of each worker process.
//!
//! Fed by the reports consumer; read by the autoscaler and for pod deletion costs. In memory only:
//! a restarted operator hears every live worker again within a heartbeat interval.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use warren_protocol::{Heartbeat, ReportBatch, WorkerId};

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
            self.workers.lock().expect("registry lock").insert(batch.worker.clone(), view);
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

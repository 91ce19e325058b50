//! What the admission loop tells beside its grants: a flow-controlled pool's backlog per key (the
//! `warren_operator_backlog_tasks` gauge every round, `status.backlog` at most every
//! [`BACKLOG_WRITE_EVERY`] while it changes) and the time its tasks were held
//! (`warren_operator_throttled_task_seconds_total`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

use super::backlog::{self, Waiting};
use super::decide::{Demand, Held};
use crate::controllers::Context;
use crate::crd::{PoolBacklog, WorkerPool};
use crate::metrics::{self, KeyLabels, ThrottleLabels};

/// At most one `status.backlog` write per pool this often: about one write per 10 s whatever
/// the number of Jobs and keys.
pub const BACKLOG_WRITE_EVERY: Duration = Duration::from_secs(10);

/// A status write that gets no answer in this long is given up (and tried again later).
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);

/// One pool's backlog as last told.
#[derive(Default)]
pub struct Told {
    /// The gauge's label values set at the last round (removed once gone).
    series: BTreeSet<String>,
    /// The backlog the status holds (None until known: read from the pool at first), and when a
    /// write was last tried.
    written: Arc<Mutex<(Option<Option<PoolBacklog>>, Option<Instant>)>>,
    writing: Arc<AtomicBool>,
}

impl Told {
    /// Nothing is told of the pool: no gauge series, and a status without a backlog, written.
    pub fn settled(&self) -> bool {
        self.series.is_empty()
            && !self.writing.load(Ordering::Acquire)
            && matches!(*self.written.lock().expect("told lock"), (Some(None), _))
    }
}

/// Tells the pool's backlog from this round's demands (an empty list when the pool has none).
/// `controlled` false: the pool left flow control; what was told is withdrawn.
pub fn backlog(ctx: &Context, pool: &WorkerPool, told: &mut Told, demands: &[Demand], controlled: bool) {
    let (namespace, name) = (pool.namespace().unwrap_or_default(), pool.name_any());
    let summary = controlled
        .then(|| backlog::summarize(demands.iter().map(|d| Waiting { key: &d.key, tasks: u64::from(d.backlog) + u64::from(d.queued) })));
    // The gauge, every round.
    let series = summary.as_ref().map(backlog::series).unwrap_or_default();
    let gauge = &metrics::global().backlog_tasks;
    let labels = |key: &str| KeyLabels { namespace: namespace.clone(), pool: name.clone(), key: key.to_string() };
    for gone in told.series.iter().filter(|k| !series.contains_key(*k)) {
        gauge.remove(&labels(gone));
    }
    for (key, tasks) in &series {
        gauge.get_or_create(&labels(key)).set(i64::try_from(*tasks).unwrap_or(i64::MAX));
    }
    told.series = series.into_keys().collect();
    // The status, rate-limited, one write at a time.
    let summary = summary.filter(|s| s.total_tasks > 0);
    let mut written = told.written.lock().expect("told lock");
    let last = written.0.get_or_insert_with(|| pool.status.as_ref().and_then(|s| s.backlog.clone()));
    if *last == summary || told.writing.load(Ordering::Acquire) || written.1.is_some_and(|at| at.elapsed() < BACKLOG_WRITE_EVERY) {
        return;
    }
    written.1 = Some(Instant::now());
    told.writing.store(true, Ordering::Release);
    let (slot, writing) = (told.written.clone(), told.writing.clone());
    let api: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), &namespace);
    tokio::spawn(async move {
        // A merge patch of this one field (null removes it): the pool controller's patches
        // leave it alone.
        let patch = serde_json::json!({ "status": { "backlog": summary } });
        match tokio::time::timeout(WRITE_TIMEOUT, api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))).await {
            Ok(result) => {
                metrics::global().record_status_write(metrics::WORKER_POOL, &result);
                match result {
                    Ok(_) => slot.lock().expect("told lock").0 = Some(summary),
                    Err(error) => tracing::warn!(namespace, pool = name, %error, "writing the pool's backlog failed; tried again later"),
                }
            }
            Err(_) => metrics::global().record_status_write_timeout(metrics::WORKER_POOL),
        }
        writing.store(false, Ordering::Release);
    });
}

/// Counts the task-seconds this round held back, by reason: each held Job's waiting tasks times
/// the time since the pool's previous round (`elapsed`).
pub fn throttled(pool: &WorkerPool, held: impl IntoIterator<Item = (Held, u32)>, elapsed: Duration) {
    let (namespace, name) = (pool.namespace().unwrap_or_default(), pool.name_any());
    let counter = &metrics::global().throttled_task_seconds;
    for (why, tasks) in held {
        if tasks > 0 {
            let labels = ThrottleLabels { namespace: namespace.clone(), pool: name.clone(), reason: why.reason() };
            counter.get_or_create(&labels).inc_by(f64::from(tasks) * elapsed.as_secs_f64());
        }
    }
}

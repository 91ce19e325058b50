//! Lost-task detection: per pool, what the Jobs say is queued against what the broker and the
//! workers hold. A purged or deleted queue, `overflow: dropHead`, or broker data loss leaves Jobs
//! waiting for tasks that no longer exist; nothing else would ever notice.
//!
//! Every [`CHECK_INTERVAL`] (an idle pool: every [`IDLE_CHECK_INTERVAL`]) the leader compares, per pool, the queued tasks of its running Jobs
//! (enqueued, not started, not finished, not dropped: the ledger's `queued`) with the messages
//! ready in the pool's work, retry-tier and suspect queues plus the tasks its workers hold unstarted
//! (heartbeat `buffered`). Tasks in between — started on a worker but their report not folded in
//! yet, a heartbeat 2 s old — make a dip that lasts as long as tasks flow: a shortfall counts only
//! above [`TRANSIT`] worth of the pool's completion rate, and only once it has lasted [`SUSTAIN`]. Then, on every Job of the pool with
//! queued tasks: condition `TasksLost`, a Warning Event, `warren_operator_tasks_lost_total`, and
//! the Job's `onLostTasks` — `Requeue` enqueues its queued tasks again, `Fail` ends it.
//!
//! Inconclusive (skipped) while a worker of the pool reports no `buffered` count (an older
//! worker). A worker's last heartbeat counts for [`WORKER_MEMORY`] after it stops, so that the
//! deliveries of a worker that just died (unacknowledged until the broker notices) are not taken
//! for lost ones.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;

use crate::controllers::Context;
use crate::controllers::worker_pool::plan;
use crate::metrics::{self, PoolOnlyLabels};

/// How often each pool is checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How often a pool without queued tasks (whose queues were available when last looked at) is
/// checked: only whether its queues are available is in question then, and at a thousand pools a
/// round of passive declares every 5 s per idle pool is most of the broker's load (issue #17).
pub const IDLE_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// How long a shortfall must last to count (noticed within SUSTAIN + CHECK_INTERVAL).
pub const SUSTAIN: Duration = Duration::from_secs(30);
/// Seconds of the pool's completion rate that may be in transit between the workers and the
/// ledger (reports flush every 100 ms; heartbeats every 2 s).
pub const TRANSIT: f64 = 2.0;
/// Jobs of a pool whose queues' health changed that the check writes at once (each write is
/// bounded by the book's status-write timeout); the others follow through the flusher.
pub const FLUSH_AT_ONCE: usize = 32;
/// How long a silent worker's last heartbeat still counts.
pub const WORKER_MEMORY: Duration = Duration::from_secs(180);

/// Per pool: since when its shortfall lasts, and its smallest value meanwhile; the last
/// finished-task count, for the completion rate.
#[derive(Default)]
pub struct Detector {
    short: HashMap<String, (u64, u64)>,
    finished: HashMap<String, (u64, u64)>,
    /// When each idle pool's queues were last looked at.
    idle_checked: HashMap<String, u64>,
}

impl Detector {
    /// Whether the queues of `pool` are to be looked at now: always while its Jobs hold queued
    /// tasks (`idle` false) or its queues were last found unavailable, otherwise once per
    /// [`IDLE_CHECK_INTERVAL`].
    pub fn due(&mut self, pool: &str, idle: bool, now_ms: u64) -> bool {
        if !idle {
            self.idle_checked.remove(pool);
            return true;
        }
        match self.idle_checked.get(pool) {
            Some(&at) if now_ms.saturating_sub(at) < IDLE_CHECK_INTERVAL.as_millis() as u64 => false,
            _ => {
                self.idle_checked.insert(pool.to_string(), now_ms);
                true
            }
        }
    }

    /// Tasks per second the pool's Jobs finished since the last call (None on the first: the
    /// check waits for it).
    pub fn completion_rate(&mut self, pool: &str, finished: u64, now_ms: u64) -> Option<f64> {
        let rate = match self.finished.get(pool) {
            Some(&(at, before)) if now_ms > at => Some(finished.saturating_sub(before) as f64 * 1_000.0 / (now_ms - at) as f64),
            _ => None,
        };
        self.finished.insert(pool.to_string(), (now_ms, finished));
        rate
    }

    /// One check of a pool: `expected` queued tasks, `held` found (None: inconclusive), up to
    /// `tolerance` of them in transit. Returns the tasks lost once a shortfall above the
    /// tolerance has lasted `sustain_ms` (the smallest shortfall seen over that time: what was
    /// missing all along), and starts over.
    pub fn observe(&mut self, pool: &str, expected: u64, held: Option<u64>, tolerance: u64, now_ms: u64, sustain_ms: u64) -> Option<u64> {
        let held = held?;
        let shortfall = expected.saturating_sub(held);
        if shortfall <= tolerance {
            self.short.remove(pool);
            return None;
        }
        let (since, least) = self.short.entry(pool.to_string()).or_insert((now_ms, shortfall));
        *least = (*least).min(shortfall);
        if now_ms.saturating_sub(*since) < sustain_ms {
            return None;
        }
        let lost = *least;
        self.short.remove(pool);
        Some(lost)
    }

    /// Forgets pools not in `pools`.
    pub fn retain(&mut self, pools: &std::collections::HashSet<String>) {
        self.short.retain(|k, _| pools.contains(k));
        self.finished.retain(|k, _| pools.contains(k));
        self.idle_checked.retain(|k, _| pools.contains(k));
    }
}

/// Runs the check forever (the leader only: it runs beside the controllers).
pub async fn run(ctx: Arc<Context>) {
    let mut detector = Detector::default();
    let mut checked: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut ticker = tokio::time::interval(CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let pools = ctx.pools.state();
        let keys: std::collections::HashSet<String> =
            pools.iter().map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())).collect();
        detector.retain(&keys);
        ctx.queue_health.retain(&keys);
        ctx.report_keys.retain(&keys);
        // A deleted pool's series go with it (a gauge stuck at 1 would keep its alert firing).
        for gone in checked.difference(&keys) {
            if let Some((namespace, pool)) = gone.split_once('/') {
                let labels = PoolOnlyLabels { namespace: namespace.to_string(), pool: pool.to_string() };
                metrics::global().queues_unavailable.remove(&labels);
            }
        }
        checked = keys;
        // One scratch channel for the sweep (closed as it drops at the end of it).
        let mut scratch = None;
        for pool in pools {
            check(&ctx, &mut detector, &mut scratch, &pool).await;
        }
    }
}

async fn check(ctx: &Context, detector: &mut Detector, scratch: &mut Option<crate::broker::Scratch>, pool: &crate::crd::WorkerPool) {
    let (namespace, name) = (pool.namespace().unwrap_or_default(), pool.name_any());
    let key = format!("{namespace}/{name}");
    let jobs = ctx.book.queued_in_pool(&namespace, &name);
    let expected: u64 = jobs.iter().map(|(_, queued, _)| u64::from(*queued)).sum();
    let finished: u64 = jobs.iter().map(|(_, _, finished)| u64::from(*finished)).sum();
    let now_ms = warren_protocol::now_ms();
    let idle = expected == 0 && ctx.queue_health.unavailable(&namespace, &name).is_none();
    if !detector.due(&key, idle, now_ms) {
        return;
    }
    let rate = detector.completion_rate(&key, finished, now_ms);
    let tolerance = rate.map_or(0, |r| (r * TRANSIT).ceil() as u64);
    // The queues are looked at even when no task is expected (or no rate is known yet): whether
    // they are available is said in the pool's condition whatever its Jobs hold.
    let held = match held(ctx, scratch, pool).await {
        Ok(_) if expected == 0 => Ok(Some(0)),
        Ok(_) if rate.is_none() => Ok(None),
        other => other,
    };
    let unavailable =
        metrics::global().queues_unavailable.get_or_create(&PoolOnlyLabels { namespace: namespace.clone(), pool: name.clone() }).clone();
    let held = match held {
        Err(Unknown::Unavailable(error)) => {
            // Not lost: the queue comes back with its node. Say so once (log, metric, the
            // pool's Ready condition), and wait.
            unavailable.set(1);
            if ctx.queue_health.observe(&namespace, &name, Some(error.to_string())) {
                tracing::warn!(namespace, pool = name, %error, "a queue of the pool is on a broker node that is down; its Jobs wait for it");
                ctx.book.touch_pool(&namespace, &name);
                ctx.book.flush_pool(&namespace, &name, FLUSH_AT_ONCE).await;
            }
            return;
        }
        // Unknown for another reason: what was recorded stays.
        Err(Unknown::Other) => None,
        Ok(held) => {
            unavailable.set(0);
            if ctx.queue_health.observe(&namespace, &name, None) {
                tracing::info!(namespace, pool = name, "the pool's queues are available again");
                ctx.book.touch_pool(&namespace, &name);
                ctx.book.flush_pool(&namespace, &name, FLUSH_AT_ONCE).await;
            }
            held
        }
    };
    let Some(lost) = detector.observe(&key, expected, held, tolerance, now_ms, SUSTAIN.as_millis() as u64) else { return };
    tracing::warn!(namespace, pool = name, lost, expected, held = ?held, tolerance, "queued tasks are missing from the broker");
    metrics::global().tasks_lost.get_or_create(&PoolOnlyLabels { namespace: namespace.clone(), pool: name.clone() }).inc_by(lost);
    for (uid, _, _) in jobs.into_iter().filter(|(_, queued, _)| *queued > 0) {
        if let Some(requeued) = ctx.book.tasks_lost(&uid, lost, now_ms) {
            tracing::warn!(namespace, pool = name, job_uid = uid, requeued, "a Job's tasks were lost");
            if let Err(error) = ctx.book.flush(&uid).await {
                tracing::warn!(%error, job_uid = uid, "writing the status of a Job with lost tasks failed; the flusher retries");
            }
        }
    }
}

/// Why what a pool's queues hold is unknown.
enum Unknown {
    /// A queue is on a broker node that is down.
    Unavailable(crate::broker::BrokerError),
    Other,
}

/// What the broker and the pool's workers hold of its queued tasks; None when unknown.
async fn held(ctx: &Context, scratch: &mut Option<crate::broker::Scratch>, pool: &crate::crd::WorkerPool) -> Result<Option<u64>, Unknown> {
    let (namespace, name) = (pool.namespace().unwrap_or_default(), pool.name_any());
    let topology = plan::topology(pool);
    let mut queues = topology.work_queues.clone();
    queues.extend(plan::recorded_retry_queues(pool).into_values());
    queues.push(topology.suspect_queue.clone());
    let depths = match ctx.broker.queue_depths_on(scratch, &queues).await {
        Ok(depths) => depths,
        Err(error @ crate::broker::BrokerError::Unavailable { .. }) => return Err(Unknown::Unavailable(error)),
        Err(error) => {
            tracing::debug!(%error, namespace, pool = name, "cannot count the pool's queues; lost-task check skipped");
            return Err(Unknown::Other);
        }
    };
    // A missing work queue holds nothing: that is what a deleted queue looks like.
    let in_queues: u64 = depths.into_iter().flatten().sum();
    let mut buffered = 0u64;
    for (_, view) in ctx.workers.pool(&namespace, &name, WORKER_MEMORY) {
        let Some(held) = view.heartbeat.buffered else { return Ok(None) };
        buffered += u64::from(held);
    }
    Ok(Some(in_queues + buffered))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_pool_is_looked_at_every_30_s_a_busy_one_at_every_check() {
        let mut d = Detector::default();
        assert!(d.due("ns/p", true, 1_000), "the first look");
        assert!(!d.due("ns/p", true, 6_000));
        assert!(!d.due("ns/p", true, 30_999));
        assert!(d.due("ns/p", true, 31_000), "30 s later");
        assert!(d.due("ns/p", false, 32_000) && d.due("ns/p", false, 33_000), "queued tasks: every check");
        assert!(d.due("ns/p", true, 34_000), "idle again: looked at once more, then every 30 s");
        assert!(!d.due("ns/p", true, 39_000));
        d.retain(&std::collections::HashSet::new());
        assert!(d.due("ns/p", true, 40_000), "a forgotten pool starts over");
    }

    #[test]
    fn a_shortfall_counts_only_once_it_has_lasted() {
        let mut d = Detector::default();
        assert_eq!(d.observe("p", 10, Some(10), 0, 0, 30_000), None, "nothing missing");
        assert_eq!(d.observe("p", 10, Some(4), 0, 5_000, 30_000), None, "missing since 5 s");
        assert_eq!(d.observe("p", 10, Some(2), 0, 20_000, 30_000), None);
        assert_eq!(d.observe("p", 10, Some(3), 0, 35_000, 30_000), Some(6), "the least shortfall over 30 s");
        assert_eq!(d.observe("p", 10, Some(3), 0, 40_000, 30_000), None, "starts over after counting");
    }

    #[test]
    fn a_dip_that_recovers_or_an_unknown_count_is_no_loss() {
        let mut d = Detector::default();
        assert_eq!(d.observe("p", 10, Some(5), 0, 0, 30_000), None);
        assert_eq!(d.observe("p", 10, Some(12), 0, 10_000, 30_000), None, "more than expected: a publish in flight");
        assert_eq!(d.observe("p", 10, Some(5), 0, 35_000, 30_000), None, "the clock restarted at the recovery");
        assert_eq!(d.observe("p", 10, None, 0, 70_000, 30_000), None, "inconclusive");
        assert_eq!(d.observe("p", 10, Some(5), 0, 70_000, 30_000), Some(5), "the shortfall of 35 s ago lasted");
        let mut other = Detector::default();
        assert_eq!(other.observe("p", 0, Some(0), 0, 0, 30_000), None);
    }

    #[test]
    fn tasks_in_transit_while_tasks_flow_are_no_loss() {
        let mut d = Detector::default();
        assert_eq!(d.completion_rate("p", 0, 0), None, "no rate before two samples");
        assert_eq!(d.completion_rate("p", 1_000, 5_000), Some(200.0));
        // 200 tasks/s: up to 400 may be between a worker and the ledger, for as long as they flow.
        let tolerance = (200.0 * TRANSIT) as u64;
        for t in [0, 10_000, 20_000, 40_000] {
            assert_eq!(d.observe("p", 5_000, Some(4_700), tolerance, t, 30_000), None, "t={t}");
        }
        assert_eq!(d.observe("p", 5_000, Some(1_000), tolerance, 45_000, 30_000), None);
        assert_eq!(d.observe("p", 5_000, Some(1_000), tolerance, 75_000, 30_000), Some(4_000), "a purge is far above it");
    }
}

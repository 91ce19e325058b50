//! The operator's book of Jobs: one [`Ledger`] per Job uid, and the writing of Job status.
//!
//! Reports from workers are folded in as they arrive; statuses are written at most once per
//! `status_interval` per Job, so API-server load does not grow with the number of tasks. Every
//! fold gets a sequence number; the reports consumer acknowledges a report message only once every
//! Job it touched has a status persisted at or past that number — so a crashed operator loses no
//! report, and a restarted one counts nothing twice (the ledger is idempotent).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use warren_protocol::{CancelledJob, JobRef, TaskEvent, WorkerId, cancel_reason};

use crate::controllers::job::ledger::Ledger;
use crate::controllers::job::plan::{self, Blocker, Observed};
use crate::controllers::job::status;
use crate::crd::{Job, JobStatus, Termination, WorkerPool};
use crate::metrics::{OutcomeDelta, PhaseLabels, PoolLabels};

/// True when `worker` belongs to the Job's pool: the Job's namespace and `spec.poolRef`. Pure.
fn reported_by_own_pool(job: &Job, worker: &WorkerId) -> bool {
    job.namespace().as_deref() == Some(worker.namespace.as_str()) && job.spec.pool_ref == worker.pool
}

/// (succeeded, dead-lettered, retries) of a ledger.
fn outcome_counts(ledger: &Ledger) -> (u64, u64, u64) {
    (ledger.succeeded().len() as u64, ledger.failed().len() as u64, ledger.retries())
}

/// What a fold added, from the ledger's counts before and after. Pure.
fn outcome_delta(before: (u64, u64, u64), after: (u64, u64, u64)) -> OutcomeDelta {
    OutcomeDelta {
        succeeded: after.0.saturating_sub(before.0),
        dead_lettered: after.1.saturating_sub(before.1),
        retried: after.2.saturating_sub(before.2),
    }
}

fn pool_labels(job: &Job) -> PoolLabels {
    PoolLabels { namespace: job.namespace().unwrap_or_default(), pool: job.spec.pool_ref.clone(), priority: job.spec.priority.clone() }
}

struct Entry {
    job: Arc<Job>,
    ledger: Ledger,
    blocker: Option<Blocker>,
    /// Sequence number of the last fold (or blocker change).
    applied: u64,
    /// Highest sequence number whose effects are in the stored status.
    persisted: u64,
    last_written: Option<JobStatus>,
    last_write: Option<Instant>,
    /// The replay annotation value last acted on (see `status.replayedToken`).
    replayed_token: Option<String>,
    /// The last attempts worth showing (`status.recentAttempts`).
    attempts: super::attempts::RecentAttempts,
    /// Deliveries of completion events (`status.notifications`), set by `crate::notify`.
    notifications: Vec<crate::crd::NotificationStatus>,
    /// The API server refused the full status for good: write [`status::compacted`] instead.
    compact: bool,
    write_lock: Arc<tokio::sync::Mutex<()>>,
    /// Admission (flow control): the tasks the Job may publish, as a watermark (at least
    /// `ledger.enqueued`), and why the rest wait. Not persisted: after a restart the next round
    /// admits again from the enqueued watermark.
    granted: u32,
    held: Option<crate::admission::Held>,
}

impl Entry {
    /// Complete or terminated: nothing of the Job runs or is admitted any more (until a replay).
    fn ended(&self) -> bool {
        self.ledger.terminated.is_some() || self.ledger.is_complete()
    }
}

/// True for an answer that writing the same status again cannot change: too large (413, or the
/// 500 "etcdserver: request is too large" of older API servers) or invalid (422).
fn refused_for_good(status: &kube::core::Status) -> bool {
    status.code == 413 || status.code == 422 || (status.code == 500 && status.message.contains("too large"))
}

/// Errors writing a Job's status.
#[derive(Debug, thiserror::Error)]
pub enum BookError {
    #[error("writing status of Job {namespace}/{name}: {source}")]
    StatusWrite { namespace: String, name: String, source: kube::Error },
    #[error("writing status of Job {namespace}/{name}: the API server did not answer within {timeout:?}")]
    StatusWriteTimeout { namespace: String, name: String, timeout: Duration },
}

/// How long one status write may take before it is given up (and retried by the next flush): a
/// request the API server never answers must not hold the Job's write lock — and with it every
/// later write of the Job and the flusher of all Jobs — for the client's 295 s read timeout.
pub const STATUS_WRITE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long recording one Event may take (best effort: it is logged and dropped after that).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// A flush that waits longer than this for the Job's write lock says so in the log.
const SLOW_LOCK_WAIT: Duration = Duration::from_secs(5);

/// What [`JobBook::apply`] did with an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Folded in (or a duplicate); safe to acknowledge once `uid` is persisted through `seq`.
    Pending { uid: String, seq: u64 },
    /// The Job is not in the book.
    UnknownJob,
    /// The reporting worker is not of the Job's pool (another namespace or pool): nothing is
    /// folded. Only the Job's own pool runs its tasks.
    Foreign,
}

pub struct JobBook {
    client: Client,
    entries: Mutex<HashMap<String, Entry>>,
    next_seq: std::sync::atomic::AtomicU64,
    /// Wakes the flusher when a Job finishes.
    finished: tokio::sync::Notify,
    pub status_interval: Duration,
    /// Emits an Event per status transition worth one ([`status::transitions`]).
    recorder: Recorder,
    /// Deleted Jobs whose tasks workers must still drop: uid → until when (ms since the epoch).
    tombstones: Mutex<HashMap<String, u64>>,
    /// The cancelled Jobs last broadcast to the workers (None before the first broadcast).
    broadcast: Mutex<Option<HashSet<String>>>,
    /// The pools (the operator's shared watch): why a Job waits depends on its pool.
    pools: Option<Store<WorkerPool>>,
    /// The uids of the book's Jobs per pool (`namespace/pool`, immutable in a Job): a pool's Jobs
    /// without scanning the whole book. Locked after `entries`, never before.
    by_pool: Mutex<HashMap<String, HashSet<String>>>,
    /// The uids of each pool's Jobs that may not have ended: what the admission rounds (ten a
    /// second, every pool) and the lost-task check look at, so that ended Jobs, which stay in the
    /// book until deleted, cost them nothing. Added at every [`JobBook::observe`] (a replay that
    /// reopens an ended Job comes with an update of the Job, so with an observe); removed by the
    /// reader that finds the Job ended. Locked after `entries`, never before.
    live_by_pool: Mutex<HashMap<String, HashSet<String>>>,
    /// Which pools have a queue on a broker node that is down: the status a Job's flush writes
    /// says it (`Ready=False`, `PoolNotReady`) whether or not its controller has looked yet.
    queue_health: Arc<crate::queue_health::QueueHealth>,
}

/// The key of a Job's pool in [`JobBook`]'s index.
fn pool_key(namespace: &str, pool: &str) -> String {
    format!("{namespace}/{pool}")
}

/// How long the tasks of a deleted Job keep being dropped after the operator last heard of it.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(15 * 60);

/// Most deleted Jobs remembered at once. The set is broadcast to every worker every second, and
/// a forged report with a made-up uid adds one: past the bound, the tombstone that expires first
/// goes (its Job's stray tasks, if any are left, then run and are reported to nobody).
pub const MAX_TOMBSTONES: usize = 4_096;

/// Adds `uid` to `tombstones` until `until`, evicting the soonest-expiring entries beyond `max`.
/// Pure; returns how many were evicted.
fn insert_bounded(tombstones: &mut HashMap<String, u64>, uid: &str, until: u64, max: usize) -> usize {
    tombstones.insert(uid.to_string(), until);
    let mut evicted = 0;
    while tombstones.len() > max {
        let Some(first) = tombstones.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) else { break };
        tombstones.remove(&first);
        evicted += 1;
    }
    evicted
}

impl JobBook {
    pub fn new(
        client: Client,
        status_interval: Duration,
        pools: Store<WorkerPool>,
        queue_health: Arc<crate::queue_health::QueueHealth>,
    ) -> Self {
        Self {
            recorder: crate::events::recorder(client.clone()),
            client,
            entries: Mutex::new(HashMap::new()),
            next_seq: 1.into(),
            finished: Default::default(),
            status_interval,
            tombstones: Mutex::default(),
            broadcast: Mutex::default(),
            pools: Some(pools),
            by_pool: Mutex::default(),
            live_by_pool: Mutex::default(),
            queue_health,
        }
    }

    fn seq(&self) -> u64 {
        self.next_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Records the latest version of a Job, restoring its ledger from its status on first sight.
    pub fn observe(&self, job: Arc<Job>) {
        let Some(uid) = job.uid() else { return };
        let mut entries = self.entries.lock().expect("book lock");
        let key = pool_key(&job.namespace().unwrap_or_default(), &job.spec.pool_ref);
        self.live_by_pool.lock().expect("index lock").entry(key).or_default().insert(uid.clone());
        match entries.get_mut(&uid) {
            Some(entry) => entry.job = job,
            None => {
                let ledger = Ledger::restore(job.task_count(), job.status.as_ref());
                let ledger_enqueued = ledger.enqueued;
                let seq = self.seq();
                let key = pool_key(&job.namespace().unwrap_or_default(), &job.spec.pool_ref);
                self.by_pool.lock().expect("index lock").entry(key).or_default().insert(uid.clone());
                entries.insert(
                    uid,
                    Entry {
                        replayed_token: job.status.as_ref().and_then(|s| s.replayed_token.clone()),
                        attempts: super::attempts::RecentAttempts::restore(
                            job.status.as_ref().map(|s| s.recent_attempts.as_slice()).unwrap_or_default(),
                        ),
                        notifications: job.status.as_ref().map(|s| s.notifications.clone()).unwrap_or_default(),
                        last_written: job.status.clone(),
                        job,
                        ledger,
                        blocker: None,
                        applied: seq,
                        persisted: seq,
                        last_write: None,
                        compact: false,
                        write_lock: Arc::default(),
                        granted: ledger_enqueued,
                        held: None,
                    },
                );
            }
        }
    }

    pub fn knows(&self, uid: &str) -> bool {
        self.entries.lock().expect("book lock").contains_key(uid)
    }

    /// Fetches a Job the book has not seen (e.g. reports arriving before the first reconcile).
    /// Returns false when the Job is gone or is another Job with the same name.
    pub async fn load(&self, job_ref: &JobRef) -> Result<bool, kube::Error> {
        if self.knows(&job_ref.uid) {
            return Ok(true);
        }
        let api: Api<Job> = Api::namespaced(self.client.clone(), &job_ref.namespace);
        match api.get_opt(&job_ref.name).await? {
            Some(job) if job.uid().as_deref() == Some(job_ref.uid.as_str()) => {
                self.observe(Arc::new(job));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub fn forget(&self, uid: &str) {
        let mut entries = self.entries.lock().expect("book lock");
        if let Some(entry) = entries.remove(uid) {
            let key = pool_key(&entry.job.namespace().unwrap_or_default(), &entry.job.spec.pool_ref);
            for index in [&self.by_pool, &self.live_by_pool] {
                let mut index = index.lock().expect("index lock");
                if let Some(uids) = index.get_mut(&key) {
                    uids.remove(uid);
                    if uids.is_empty() {
                        index.remove(&key);
                    }
                }
            }
        }
    }

    /// The uids of the book's Jobs of a pool.
    fn uids_of_pool(&self, namespace: &str, pool: &str) -> Vec<String> {
        self.by_pool.lock().expect("index lock").get(&pool_key(namespace, pool)).map(|u| u.iter().cloned().collect()).unwrap_or_default()
    }

    /// The pool's Jobs that may not have ended (see `live_by_pool`), with the book locked; the
    /// ones found ended leave the index.
    fn live_of_pool<'a>(&self, entries: &'a HashMap<String, Entry>, namespace: &str, pool: &str) -> Vec<(&'a String, &'a Entry)> {
        let mut index = self.live_by_pool.lock().expect("index lock");
        let key = pool_key(namespace, pool);
        let Some(uids) = index.get_mut(&key) else { return Vec::new() };
        let mut live = Vec::with_capacity(uids.len());
        uids.retain(|uid| match entries.get_key_value(uid) {
            Some((uid, e)) if !e.ended() => {
                live.push((uid, e));
                true
            }
            _ => false,
        });
        if uids.is_empty() {
            index.remove(&key);
        }
        live
    }

    /// True when a Job of the pool may still run (neither complete nor terminated, suspended
    /// or not).
    pub fn has_live_jobs(&self, namespace: &str, pool: &str) -> bool {
        let entries = self.entries.lock().expect("book lock");
        !self.live_of_pool(&entries, namespace, pool).is_empty()
    }

    /// Folds an event that worker `from` reported into its Job's ledger.
    pub fn apply(&self, event: &TaskEvent, from: &WorkerId) -> Applied {
        let mut entries = self.entries.lock().expect("book lock");
        let Some(entry) = entries.get_mut(&event.job.uid) else { return Applied::UnknownJob };
        if !reported_by_own_pool(&entry.job, from) {
            return Applied::Foreign;
        }
        let before = outcome_counts(&entry.ledger);
        if entry.ledger.apply(event) {
            entry.attempts.record(event);
            let delta = outcome_delta(before, outcome_counts(&entry.ledger));
            crate::metrics::global().record_outcomes(&pool_labels(&entry.job), delta);
            entry.applied = self.seq();
            if entry.ledger.is_complete() {
                self.finished.notify_one();
            }
        }
        Applied::Pending { uid: event.job.uid.clone(), seq: entry.applied }
    }

    /// True when the Job's stored status includes every fold up to `seq` (or the Job is gone).
    pub fn persisted_through(&self, uid: &str, seq: u64) -> bool {
        self.entries.lock().expect("book lock").get(uid).is_none_or(|e| e.persisted >= seq)
    }

    /// Sets what blocks a Job (None = nothing).
    pub fn set_blocker(&self, uid: &str, blocker: Option<Blocker>) {
        let mut entries = self.entries.lock().expect("book lock");
        if let Some(entry) = entries.get_mut(uid)
            && entry.blocker != blocker
        {
            entry.blocker = blocker;
            entry.applied = self.seq();
        }
    }

    /// Has every Job of a pool's status looked at again at the next flush (its queues' health
    /// changed).
    pub fn touch_pool(&self, namespace: &str, pool: &str) {
        let uids = self.uids_of_pool(namespace, pool);
        let mut entries = self.entries.lock().expect("book lock");
        for uid in uids {
            if let Some(entry) = entries.get_mut(&uid) {
                entry.applied = self.seq();
            }
        }
    }

    /// Writes the statuses of (up to `at_most` of) a pool's Jobs now, after [`Self::touch_pool`]:
    /// what its queues' health says reaches them from this caller too, not only through the
    /// flusher. The others follow at the flusher's pace.
    pub async fn flush_pool(&self, namespace: &str, pool: &str, at_most: usize) {
        for uid in self.uids_of_pool(namespace, pool).into_iter().take(at_most) {
            if let Err(error) = self.flush(&uid).await {
                tracing::warn!(%error, job_uid = uid, "writing the status of a Job of a pool whose queues changed failed; the flusher retries");
            }
        }
    }

    /// Has the Job's status looked at again at the next flush (within the status interval): what
    /// it says of the Job's pool (`waiting`) may have changed without a report of the Job.
    pub fn touch(&self, uid: &str) {
        if let Some(entry) = self.entries.lock().expect("book lock").get_mut(uid) {
            entry.applied = self.seq();
        }
    }

    /// The replay annotation value last acted on.
    pub fn replayed_token(&self, uid: &str) -> Option<String> {
        self.entries.lock().expect("book lock").get(uid).and_then(|e| e.replayed_token.clone())
    }

    /// Records that the Job's dead letters were replayed for annotation value `token`.
    pub fn set_replayed_token(&self, uid: &str, token: &str) {
        let mut entries = self.entries.lock().expect("book lock");
        if let Some(entry) = entries.get_mut(uid)
            && entry.replayed_token.as_deref() != Some(token)
        {
            entry.replayed_token = Some(token.to_string());
            entry.applied = self.seq();
        }
    }

    /// The Job's completion-event deliveries as the book will write them (None: not in the book).
    pub fn notifications(&self, uid: &str) -> Option<Vec<crate::crd::NotificationStatus>> {
        self.entries.lock().expect("book lock").get(uid).map(|e| e.notifications.clone())
    }

    /// Records the Job's completion-event deliveries (`status.notifications`); written with the
    /// rest of the status. Returns false when the Job is not in the book.
    pub fn set_notifications(&self, uid: &str, notifications: Vec<crate::crd::NotificationStatus>) -> bool {
        let mut entries = self.entries.lock().expect("book lock");
        let Some(entry) = entries.get_mut(uid) else { return false };
        if entry.notifications != notifications {
            entry.notifications = notifications;
            entry.applied = self.seq();
        }
        true
    }

    /// Advances the enqueue watermark after the broker confirmed tasks `..enqueued`.
    pub fn set_enqueued(&self, uid: &str, enqueued: u32) {
        let mut entries = self.entries.lock().expect("book lock");
        if let Some(entry) = entries.get_mut(uid)
            && enqueued > entry.ledger.enqueued
        {
            entry.ledger.enqueued = enqueued;
            entry.applied = self.seq();
        }
    }

    /// What the Job controller's plan needs to know of a Job's ledger.
    pub fn observed(&self, uid: &str) -> Observed {
        self.entries
            .lock()
            .expect("book lock")
            .get(uid)
            .map(|e| Observed { admitted: e.granted.max(e.ledger.enqueued), ..Observed::of(&e.ledger) })
            .unwrap_or_default()
    }

    /// What the pool's Jobs under admission ask for, in creation order (`all`: every Job of the
    /// pool is; else only those with `maxRunning`), and the tasks admitted to the pool's queues
    /// and not started yet, of every Job of the pool.
    pub fn admission_demands(&self, namespace: &str, pool: &str, priorities: &[String], all: bool) -> (Vec<crate::admission::Demand>, u32) {
        let entries = self.entries.lock().expect("book lock");
        let mut queued: u32 = 0;
        let mut demands: Vec<(jiff::Timestamp, String, crate::admission::Demand)> = Vec::new();
        for (uid, e) in self.live_of_pool(&entries, namespace, pool) {
            if e.job.spec.suspend {
                continue;
            }
            let granted = e.granted.max(e.ledger.enqueued);
            queued = queued.saturating_add(e.ledger.queued()).saturating_add(granted - e.ledger.enqueued);
            if e.blocker.is_some() || !(all || e.job.spec.max_running.is_some()) {
                continue;
            }
            let job = &e.job;
            let created = job.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or_default();
            demands.push((
                created,
                job.name_any(),
                crate::admission::Demand {
                    uid: uid.clone(),
                    key: job.spec.fairness_key.clone().unwrap_or_else(|| job.name_any()),
                    class: priorities.iter().position(|p| *p == job.spec.priority).unwrap_or(priorities.len()),
                    backlog: job.task_count().saturating_sub(granted),
                    in_flight: granted.saturating_sub(e.ledger.finished() + e.ledger.cancelled()),
                    queued: e.ledger.queued().saturating_add(granted - e.ledger.enqueued),
                    max_running: job.spec.max_running,
                },
            ));
        }
        demands.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        (demands.into_iter().map(|(_, _, d)| d).collect(), queued)
    }

    /// Per priority class, the pool's tasks that flow control holds back only for room in the
    /// queues (reasons `FairShare` and `Queued`): more workers would take them, so the autoscaler
    /// counts them as backlog. Tasks held by a rate limit or a concurrency limit are not counted:
    /// a worker added for them could only wait.
    pub fn held_for_room(&self, namespace: &str, pool: &str) -> HashMap<String, u64> {
        use crate::admission::Held;
        let entries = self.entries.lock().expect("book lock");
        let mut held: HashMap<String, u64> = HashMap::new();
        for (_, e) in self.live_of_pool(&entries, namespace, pool) {
            if matches!(e.held, Some(Held::FairShare | Held::Queued)) {
                let unadmitted = e.job.task_count().saturating_sub(e.granted.max(e.ledger.enqueued));
                *held.entry(e.job.spec.priority.clone()).or_default() += u64::from(unadmitted);
            }
        }
        held
    }

    /// Admits `n` more of the Job's tasks; returns the Job to reconcile (it publishes them).
    pub fn grant(&self, uid: &str, n: u32) -> Option<ObjectRef<Job>> {
        let mut entries = self.entries.lock().expect("book lock");
        let entry = entries.get_mut(uid)?;
        entry.granted = entry.granted.max(entry.ledger.enqueued).saturating_add(n).min(entry.job.task_count());
        Some(ObjectRef::from_obj(&*entry.job))
    }

    /// Records why the Job's unadmitted tasks wait (None: they do not); its status says it at
    /// the next write.
    pub fn set_held(&self, uid: &str, held: Option<crate::admission::Held>) {
        let mut entries = self.entries.lock().expect("book lock");
        if let Some(entry) = entries.get_mut(uid)
            && entry.held != held
        {
            entry.held = held;
            entry.applied = self.seq();
        }
    }

    /// Starts (`Some(now)`) or stops (`None`, suspended) a Job's `activeDeadlineSeconds` clock.
    pub fn set_active_since(&self, uid: &str, at_ms: Option<u64>) {
        let mut entries = self.entries.lock().expect("book lock");
        if let Some(entry) = entries.get_mut(uid)
            && entry.ledger.active_since_ms != at_ms
        {
            entry.ledger.active_since_ms = at_ms;
            entry.applied = self.seq();
        }
    }

    /// Ends a Job early (deadline, failure budget); its remaining tasks are cancelled.
    pub fn terminate(&self, uid: &str, termination: Termination) {
        let mut entries = self.entries.lock().expect("book lock");
        if let Some(entry) = entries.get_mut(uid)
            && entry.ledger.terminated.is_none()
        {
            entry.ledger.terminated = Some(termination);
            entry.applied = self.seq();
        }
    }

    /// The Jobs of a pool that are neither suspended nor ended: (uid, queued tasks — enqueued,
    /// not started, not finished, not dropped —, finished tasks).
    pub fn queued_in_pool(&self, namespace: &str, pool: &str) -> Vec<(String, u32, u32)> {
        let entries = self.entries.lock().expect("book lock");
        self.live_of_pool(&entries, namespace, pool)
            .into_iter()
            .filter(|(_, e)| !e.job.spec.suspend)
            .map(|(uid, e)| (uid.clone(), e.ledger.queued(), e.ledger.finished()))
            .collect()
    }

    /// The broker lost `missing` queued tasks of the Job's pool: the Job re-enqueues its queued
    /// tasks (`onLostTasks: Requeue`) or ends `Failed`, reason `TasksLost`. Returns the tasks
    /// marked for re-enqueueing; None if the Job is not in the book.
    pub fn tasks_lost(&self, uid: &str, missing: u64, now_ms: u64) -> Option<u32> {
        let mut entries = self.entries.lock().expect("book lock");
        let entry = entries.get_mut(uid)?;
        let fail = entry.job.spec.on_lost_tasks == crate::crd::OnLostTasks::Fail;
        let requeued = entry.ledger.tasks_lost(missing, !fail, now_ms);
        if fail && entry.ledger.terminated.is_none() {
            entry.ledger.terminated = Some(Termination {
                reason: crate::controllers::job::plan::TASKS_LOST.to_string(),
                message: format!(
                    "{missing} of the pool's queued tasks went missing from the broker (onLostTasks: Fail); the Job's unfinished tasks were cancelled"
                ),
                at_ms: now_ms,
            });
        }
        entry.applied = self.seq();
        Some(requeued)
    }

    /// Dropped tasks are about to be re-enqueued (see [`Ledger::begin_republish`]).
    pub fn begin_republish(&self, uid: &str, indexes: &[u32]) {
        let mut entries = self.entries.lock().expect("book lock");
        if let Some(entry) = entries.get_mut(uid)
            && entry.ledger.begin_republish(indexes)
        {
            entry.applied = self.seq();
        }
    }

    /// The re-enqueue of dropped tasks was confirmed, or failed (see [`Ledger::end_republish`]).
    pub fn end_republish(&self, uid: &str, indexes: &[u32], confirmed: bool) {
        let mut entries = self.entries.lock().expect("book lock");
        if let Some(entry) = entries.get_mut(uid)
            && entry.ledger.end_republish(indexes, confirmed)
        {
            entry.applied = self.seq();
        }
    }

    /// Records the set of cancelled Jobs the workers were last sent.
    pub fn set_broadcast(&self, uids: HashSet<String>) {
        *self.broadcast.lock().expect("broadcast lock") = Some(uids);
    }

    /// True once the workers were told that the Job is not cancelled (any more): re-enqueueing
    /// its dropped tasks before that would only have them dropped again.
    pub fn workers_know_resumed(&self, uid: &str) -> bool {
        self.broadcast.lock().expect("broadcast lock").as_ref().is_some_and(|b| !b.contains(uid))
    }

    /// Remembers that a Job is gone, so that workers keep dropping its tasks for
    /// [`TOMBSTONE_TTL`] (refreshed whenever a report of it arrives).
    pub fn bury(&self, uid: &str, now_ms: u64) {
        self.forget(uid);
        let until = now_ms.saturating_add(TOMBSTONE_TTL.as_millis() as u64);
        let evicted = insert_bounded(&mut self.tombstones.lock().expect("tombstones lock"), uid, until, MAX_TOMBSTONES);
        if evicted > 0 {
            tracing::warn!(evicted, max = MAX_TOMBSTONES, "too many deleted Jobs remembered; forgot the oldest");
        }
    }

    /// True while `uid` is a known-deleted Job: reports of it need no API lookup (a negative
    /// cache, so that a stream of reports for one unknown Job costs one GET, not one each).
    pub fn is_buried(&self, uid: &str, now_ms: u64) -> bool {
        self.tombstones.lock().expect("tombstones lock").get(uid).is_some_and(|until| *until > now_ms)
    }

    /// The Jobs whose tasks workers must not run: suspended and early-ended Jobs with unfinished
    /// tasks, and deleted Jobs (for a while). Sorted by uid.
    pub fn cancelled_jobs(&self, now_ms: u64) -> Vec<CancelledJob> {
        let mut cancelled: Vec<CancelledJob> = {
            let entries = self.entries.lock().expect("book lock");
            entries
                .iter()
                .filter(|(_, e)| !e.ledger.is_complete())
                .filter_map(|(uid, e)| {
                    let reason = match &e.ledger.terminated {
                        Some(t) if t.reason == plan::DEADLINE_EXCEEDED => cancel_reason::DEADLINE_EXCEEDED,
                        Some(_) => cancel_reason::FAILED,
                        None if e.job.spec.suspend => cancel_reason::SUSPENDED,
                        None => return None,
                    };
                    Some(CancelledJob { uid: uid.clone(), reason: reason.to_string() })
                })
                .collect()
        };
        let mut tombstones = self.tombstones.lock().expect("tombstones lock");
        tombstones.retain(|_, until| *until > now_ms);
        cancelled.extend(tombstones.keys().map(|uid| CancelledJob { uid: uid.clone(), reason: cancel_reason::DELETED.to_string() }));
        cancelled.sort_by(|a, b| a.uid.cmp(&b.uid));
        cancelled
    }

    /// The confirmed enqueue watermark of a Job.
    pub fn enqueued(&self, uid: &str) -> u32 {
        self.entries.lock().expect("book lock").get(uid).map_or(0, |e| e.ledger.enqueued)
    }

    /// True when every task of the Job finished.
    pub fn is_complete(&self, uid: &str) -> bool {
        self.entries.lock().expect("book lock").get(uid).is_some_and(|e| e.ledger.is_complete())
    }

    /// Sets the gauges that mirror the book: Jobs by phase (as last written) and tasks in flight
    /// per pool and priority. Called at scrape time.
    pub fn export_gauges(&self, metrics: &crate::metrics::Metrics) {
        let mut phases: BTreeMap<PhaseLabels, i64> = BTreeMap::new();
        let mut in_flight: BTreeMap<PoolLabels, i64> = BTreeMap::new();
        {
            let entries = self.entries.lock().expect("book lock");
            for entry in entries.values() {
                let phase = entry.last_written.as_ref().map(|s| s.phase).unwrap_or_default();
                let namespace = entry.job.namespace().unwrap_or_default();
                *phases.entry(PhaseLabels { namespace, phase: format!("{phase:?}") }).or_default() += 1;
                *in_flight.entry(pool_labels(&entry.job)).or_default() += i64::from(entry.ledger.running());
            }
        }
        metrics.jobs.clear();
        for (labels, n) in phases {
            metrics.jobs.get_or_create(&labels).set(n);
        }
        metrics.tasks_in_flight.clear();
        for (labels, n) in in_flight {
            metrics.tasks_in_flight.get_or_create(&labels).set(n);
        }
    }

    /// Why the Job's tasks wait (`status.waiting`), from the book's view of its pool's Jobs.
    fn waiting_of(&self, entries: &HashMap<String, Entry>, uid: &str, now: &Time) -> Option<crate::crd::JobWaiting> {
        let entry = entries.get(uid)?;
        let job = &entry.job;
        let (queued, running) = (entry.ledger.queued(), entry.ledger.running());
        let namespace = job.namespace();
        let others: Vec<super::waiting::QueuedJob> = if queued > 0 && entry.blocker.is_none() {
            self.uids_of_pool(namespace.as_deref().unwrap_or_default(), &job.spec.pool_ref)
                .iter()
                .filter(|other| other.as_str() != uid)
                .filter_map(|other| entries.get(other))
                .filter(|e| !e.job.spec.suspend && e.ledger.terminated.is_none() && e.ledger.queued() > 0)
                .map(|e| super::waiting::queued_job(&e.job, e.ledger.queued()))
                .collect()
        } else {
            Vec::new()
        };
        let pool = self
            .pools
            .as_ref()
            .and_then(|pools| pools.get(&ObjectRef::new(&job.spec.pool_ref).within(namespace.as_deref().unwrap_or_default())));
        let previous = entry.last_written.as_ref().and_then(|s| s.waiting.as_ref());
        // Tasks the admission holds back (flow control), and why.
        let unadmitted = job.task_count().saturating_sub(entry.granted.max(entry.ledger.enqueued));
        let held = entry.held.map(|why| match why {
            // An open circuit holds the queued tasks too: the workers start none.
            crate::admission::Held::CircuitOpen => (why, unadmitted + queued),
            _ => (why, unadmitted),
        });
        let held = held.filter(|(_, n)| *n > 0);
        super::waiting::waiting(job, (queued, running), held, entry.blocker.as_ref(), pool.as_deref(), &others, previous, now)
    }

    /// Writes the Job's status now if it changed. Returns whether it wrote.
    pub async fn flush(&self, uid: &str) -> Result<bool, BookError> {
        let Some(write_lock) = self.entries.lock().expect("book lock").get(uid).map(|e| e.write_lock.clone()) else {
            return Ok(false);
        };
        let waiting_since = Instant::now();
        let writing = write_lock.lock().await;
        if waiting_since.elapsed() >= SLOW_LOCK_WAIT {
            tracing::warn!(job_uid = uid, waited = ?waiting_since.elapsed(), "a status write waited long for the Job's previous write");
        }
        let (job, status, seq) = {
            let mut entries = self.entries.lock().expect("book lock");
            let Some(entry) = entries.get_mut(uid) else { return Ok(false) };
            let now = Time(jiff::Timestamp::now());
            // A queue of its pool on a node that is down holds the Job (the plan says so too, at
            // its next reconcile): the status says it from the first flush after the check.
            let queue_down = match entry.blocker {
                None if !entry.ledger.is_complete() && entry.ledger.terminated.is_none() => self
                    .queue_health
                    .unavailable(&entry.job.namespace().unwrap_or_default(), &entry.job.spec.pool_ref)
                    .map(|why| Blocker::PoolNotReady(plan::queue_unavailable_message(&entry.job, &why))),
                _ => None,
            };
            let blocker = queue_down.as_ref().or(entry.blocker.as_ref());
            let mut status = status::desired(&entry.job, &entry.ledger, blocker, &now);
            status.waiting = self.waiting_of(&entries, uid, &now);
            let Some(entry) = entries.get_mut(uid) else { return Ok(false) };
            status.replayed_token = entry.replayed_token.clone();
            status.recent_attempts = entry.attempts.records();
            status.notifications = entry.notifications.clone();
            if entry.compact {
                status = status::compacted(status);
            }
            if entry.last_written.as_ref() == Some(&status) {
                entry.persisted = entry.applied;
                return Ok(false);
            }
            (entry.job.clone(), status, entry.applied)
        };
        let namespace = job.namespace().unwrap_or_default();
        let api: Api<Job> = Api::namespaced(self.client.clone(), &namespace);
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            { "op": "add", "path": "/status", "value": status }
        ]))
        .expect("a JSON patch");
        let Ok(written) = tokio::time::timeout(
            STATUS_WRITE_TIMEOUT,
            api.patch_status(&job.name_any(), &PatchParams::default(), &Patch::Json::<()>(patch)),
        )
        .await
        else {
            crate::metrics::global().record_status_write_timeout(crate::metrics::JOB);
            return Err(BookError::StatusWriteTimeout { namespace, name: job.name_any(), timeout: STATUS_WRITE_TIMEOUT });
        };
        crate::metrics::global().record_status_write(crate::metrics::JOB, &written);
        let transitions = 'written: {
            let mut entries = self.entries.lock().expect("book lock");
            let Some(entry) = entries.get_mut(uid) else { return Ok(true) };
            match written {
                Ok(updated) => {
                    let before = entry.last_written.as_ref().or(job.status.as_ref()).map(|s| s.conditions.as_slice());
                    let after = updated.status.as_ref().map(|s| s.conditions.as_slice());
                    let transitions = status::transitions(before.unwrap_or_default(), after.unwrap_or_default());
                    let was_finished = entry.last_written.as_ref().or(job.status.as_ref()).is_some_and(|s| s.phase.is_finished());
                    if !was_finished && let Some(ended) = updated.status.as_ref().filter(|s| s.phase.is_finished()) {
                        crate::metrics::global().record_job_end(&namespace, &job.spec.pool_ref, ended);
                    }
                    entry.persisted = entry.persisted.max(seq);
                    entry.last_written = updated.status;
                    entry.last_write = Some(Instant::now());
                    Ok(transitions)
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    drop(entries);
                    self.forget(uid);
                    return Ok(false);
                }
                Err(kube::Error::Api(e)) if refused_for_good(&e) => {
                    let error = format!("{} ({})", e.message, e.code);
                    let first = !entry.compact;
                    if first {
                        // Stop the Job (its tasks are cancelled) and write a small status
                        // instead, on the next flush.
                        entry.compact = true;
                        entry.ledger.terminated.get_or_insert_with(|| Termination {
                            reason: plan::STATUS_TOO_LARGE.into(),
                            message: format!(
                                "the API server refused the Job's status ({error}); the Job is stopped, its remaining tasks \
                                 cancelled, and its status written without the per-index detail"
                            ),
                            at_ms: warren_protocol::now_ms(),
                        });
                        entry.applied = self.seq();
                    } else {
                        // Even the small status is refused: give up writing this Job, so that
                        // the reports of every other Job are acknowledged (they are held back
                        // in order until each Job's status includes them).
                        entry.persisted = u64::MAX;
                    }
                    break 'written Err((error, first));
                }
                Err(source) => return Err(BookError::StatusWrite { namespace, name: job.name_any(), source }),
            }
        };
        // The status is written: later writes need not wait for the Events.
        drop(writing);
        let transitions = match transitions {
            Ok(transitions) => transitions,
            Err((error, first)) => {
                tracing::error!(namespace, name = job.name_any(), %error, compacted = !first, "the API server refused a Job status for good");
                if first {
                    // The compacted status goes out at once; its Failed condition is the Event.
                    self.finished.notify_one();
                } else {
                    let note = format!("the API server refused even the compacted status ({error}): the Job's status is no longer written");
                    self.record(
                        &job,
                        Event {
                            type_: EventType::Warning,
                            reason: plan::STATUS_TOO_LARGE.into(),
                            note: Some(note),
                            action: "Fail".into(),
                            secondary: None,
                        },
                    )
                    .await;
                }
                return Ok(false);
            }
        };
        for transition in transitions {
            let event = Event {
                type_: if transition.warning { EventType::Warning } else { EventType::Normal },
                reason: transition.reason,
                note: Some(transition.note),
                action: transition.action.into(),
                secondary: None,
            };
            self.record(&job, event).await;
        }
        Ok(true)
    }

    /// Records an Event about the Job (best effort: a lost Event is logged, never an error).
    async fn record(&self, job: &Job, event: Event) {
        let Ok(published) = tokio::time::timeout(EVENT_TIMEOUT, self.recorder.publish(&event, &job.object_ref(&()))).await else {
            tracing::warn!(namespace = job.namespace(), name = job.name_any(), timeout = ?EVENT_TIMEOUT, "recording a Job Event timed out; dropped");
            return;
        };
        if let Err(error) = published {
            tracing::warn!(%error, namespace = job.namespace(), name = job.name_any(), "could not record a Job Event");
        }
    }

    /// Writes every Job whose ledger changed and whose last write is older than the interval,
    /// and at once every Job that just finished (its last write, so users see it promptly).
    pub async fn flush_due(&self) {
        let due: Vec<String> = {
            let entries = self.entries.lock().expect("book lock");
            entries
                .iter()
                .filter(|(_, e)| e.applied > e.persisted)
                .filter(|(_, e)| e.ledger.is_complete() || e.last_write.is_none_or(|t| t.elapsed() >= self.status_interval))
                .map(|(uid, _)| uid.clone())
                .collect()
        };
        for uid in due {
            if let Err(error) = self.flush(&uid).await {
                tracing::warn!(%error, "status write failed; will retry");
            }
        }
    }

    /// Runs [`JobBook::flush_due`] forever.
    pub async fn run_flusher(self: Arc<Self>) {
        let mut tick = tokio::time::interval((self.status_interval / 4).max(Duration::from_millis(20)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.finished.notified() => {}
            }
            self.flush_due().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_workers_of_the_jobs_own_pool_report_for_it() {
        let spec = serde_json::from_value(serde_json::json!({"poolRef": "images", "completions": 1})).unwrap();
        let mut job = Job::new("j", spec);
        job.metadata.namespace = Some("media".into());
        let worker = |namespace: &str, pool: &str| WorkerId { namespace: namespace.into(), pool: pool.into(), pod: "p-0".into() };
        assert!(reported_by_own_pool(&job, &worker("media", "images")));
        assert!(!reported_by_own_pool(&job, &worker("media", "videos")), "another pool of the namespace");
        assert!(!reported_by_own_pool(&job, &worker("other", "images")), "a pool of the same name elsewhere");
    }

    #[test]
    fn the_tombstone_set_is_bounded_and_forgets_the_soonest_expiring_first() {
        let mut tombstones = HashMap::new();
        let mut evicted = 0;
        for i in 0..10u64 {
            evicted += insert_bounded(&mut tombstones, &format!("uid-{i}"), 1_000 + i, 4);
        }
        assert_eq!((tombstones.len(), evicted), (4, 6));
        let mut kept: Vec<&String> = tombstones.keys().collect();
        kept.sort();
        assert_eq!(kept, ["uid-6", "uid-7", "uid-8", "uid-9"]);
        // Refreshing a remembered uid adds nothing.
        assert_eq!(insert_bounded(&mut tombstones, "uid-6", 5_000, 4), 0);
        assert_eq!((tombstones.len(), tombstones["uid-6"]), (4, 5_000));
    }

    #[test]
    fn outcome_deltas_follow_the_ledger_not_the_events() {
        let cases = [
            ((0, 0, 0), (1, 0, 0), OutcomeDelta { succeeded: 1, retried: 0, dead_lettered: 0 }),
            ((1, 0, 0), (1, 0, 2), OutcomeDelta { succeeded: 0, retried: 2, dead_lettered: 0 }),
            ((1, 0, 2), (1, 1, 3), OutcomeDelta { succeeded: 0, retried: 1, dead_lettered: 1 }),
            // A duplicate report changes nothing; nothing goes backwards.
            ((5, 1, 3), (5, 1, 3), OutcomeDelta::default()),
            ((5, 1, 3), (4, 1, 3), OutcomeDelta::default()),
        ];
        for (before, after, expected) in cases {
            assert_eq!(outcome_delta(before, after), expected, "{before:?} -> {after:?}");
        }
    }
}

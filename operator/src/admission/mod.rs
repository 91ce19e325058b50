//! Admission (flow control, docs/flow-control.md): for a pool with `fairness` or `rateLimit`,
//! and for Jobs with `maxRunning`, the operator keeps the backlog and admits tasks to the pool's
//! queues round by round. A pool with none of these settings is not touched: its Jobs publish
//! as fast as the broker confirms, as before.
//!
//! Every [`ROUND`] the leader decides, per pool ([`decide::decide`]), how many tasks each Job may
//! publish, records it in the book ([`crate::controllers::job::book::JobBook::grant`]) and
//! reconciles the Jobs granted some: they publish up to their grant. A flow-controlled pool's
//! queues are kept shallow — about [`DEPTH_ROUNDS`] rounds' worth of what its ready workers can
//! hold — so that the next task is chosen by policy, not by the order it was published in.

pub mod backlog;
pub mod circuit;
pub mod decide;
mod tell;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

pub use decide::{Budget, Demand, FairState, Held, Settings};

use crate::controllers::Context;
use crate::crd::{Job, WorkerPool};

/// How often each pool's admission is decided.
pub const ROUND: Duration = Duration::from_millis(100);
/// A worker counts as live for the circuit breaker's probe when it reported this recently.
const PROBE_WORKER_FRESHNESS: Duration = Duration::from_secs(10);
/// The shallow queue holds at least this many seconds of the pool's finish rate.
pub const DEPTH_SECONDS: f64 = 0.5;
/// …and never more than this many tasks per pool.
pub const MAX_DEPTH: u32 = 100_000;
/// The shallow queue holds this many times what the ready workers can hold at once: enough to
/// cover the time from a task starting to the next round's tasks arriving.
pub const DEPTH_ROUNDS: u32 = 2;

/// Whether the operator admits the Job's tasks (else the Job publishes all of them at once).
pub fn admits(job: &Job, pool: &WorkerPool) -> bool {
    job.spec.max_running.is_some() || pool.spec.flow_controlled()
}

/// A pool's token bucket (`rateLimit`).
#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(burst: f64, now: Instant) -> Self {
        Self { tokens: burst, at: now }
    }

    /// Whole tokens available at `now` (refilled at `rate` per second up to `burst`).
    pub fn available(&mut self, rate: f64, burst: f64, now: Instant) -> u32 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
        self.tokens.floor().max(0.0) as u32
    }

    pub fn take(&mut self, n: u32) {
        self.tokens -= f64::from(n);
    }

    /// Charges `n` starts the bucket did not admit (retries: they return to the work queue from
    /// their retry tier, not through admission), so that first attempts make room for them. The
    /// debt is bounded by `max_debt` tokens: a burst of failures delays new tasks by at most that.
    pub fn charge(&mut self, n: u64, max_debt: f64) {
        self.tokens = (self.tokens - n as f64).max(-max_debt);
    }
}

/// The most a rate-limited pool's retries may put its bucket in debt: a minute of its rate (at
/// least one burst).
pub fn max_debt(limit: &crate::crd::RateLimitSpec) -> f64 {
    (limit.tasks_per_second * 60.0).max(burst_of(limit))
}

/// The burst of a rate limit: as set, else one second's worth (at least 1).
pub fn burst_of(limit: &crate::crd::RateLimitSpec) -> f64 {
    limit.burst.map_or(limit.tasks_per_second.ceil().max(1.0), f64::from)
}

/// The queue room a flow-controlled pool has this round, less what is queued already: the
/// larger of `DEPTH_ROUNDS` × what its ready workers (at least one, so that a pool scaled to zero
/// gets tasks to scale up for) hold at once, and [`DEPTH_SECONDS`] of the rate at which it
/// finishes attempts. The second keeps fast tasks flowing: workers that finish a slot's task in a
/// millisecond would otherwise idle between rounds. It grows with the rate it allows (each round
/// refills the depth), so a pool reaches its capacity within a few rounds.
pub fn room(pool: &WorkerPool, queued: u32, finish_rate: f64) -> u32 {
    let ready = pool.status.as_ref().map_or(0, |s| s.ready_replicas).max(1) as u32;
    let slots = ready.saturating_mul(pool.spec.concurrency.max(1)).saturating_mul(DEPTH_ROUNDS);
    let by_rate = (finish_rate * DEPTH_SECONDS).ceil().clamp(0.0, f64::from(MAX_DEPTH)) as u32;
    slots.max(by_rate).saturating_sub(queued)
}

/// The pool's finished attempts per second, smoothed over about a second of rounds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FinishRate {
    last: Option<(Instant, u64)>,
    rate: f64,
}

impl FinishRate {
    /// Folds in the pool's finished-attempt count at `now`; returns the smoothed rate.
    pub fn observe(&mut self, finished: u64, now: Instant) -> f64 {
        if let Some((at, before)) = self.last {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            if dt > 0.0 {
                let instant = finished.saturating_sub(before) as f64 / dt;
                // A new rate counts in proportion to the time it covers (1 s time constant).
                let weight = (dt / 1.0).min(1.0);
                self.rate += (instant - self.rate) * weight;
            }
        }
        self.last = Some((now, finished));
        self.rate
    }
}

/// Every pool's circuit breaker, fed by the report consumer ([`Circuits::record`]) and moved on
/// by the admission rounds ([`Circuits::tick`]); read by the control broadcast (which pauses the
/// workers of an open pool), the admission, the autoscaler and the pool's status.
pub struct Circuits {
    pools: std::sync::Mutex<HashMap<String, PoolCircuit>>,
    /// Set once the admission has ticked every pool the store held at its start.
    primed: std::sync::atomic::AtomicBool,
    changed: mpsc::UnboundedSender<ObjectRef<WorkerPool>>,
    recorder: kube::runtime::events::Recorder,
}

#[derive(Default)]
struct PoolCircuit {
    circuit: circuit::Circuit,
    /// Half-open: the worker chosen to run the probes, and how many.
    probe_pod: Option<String>,
    probe_tasks: u32,
    /// The state the last tick saw: a change made by [`Circuits::record`] (a probe's result)
    /// is announced by the next tick too.
    last_seen: Option<circuit::State>,
}

impl Circuits {
    /// The registry, and the pools to reconcile when their circuit changes (their status says it).
    pub fn new(client: kube::Client) -> (Self, mpsc::UnboundedReceiver<ObjectRef<WorkerPool>>) {
        let (changed, pools) = mpsc::unbounded();
        (Self { pools: std::sync::Mutex::default(), primed: Default::default(), changed, recorder: crate::events::recorder(client) }, pools)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PoolCircuit>> {
        self.pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A finished attempt of a pool with a circuit breaker.
    /// A pool the admission has not ticked yet (the first 100 ms after a start) records nothing:
    /// its circuit is resumed from its status at the first tick.
    pub fn record(&self, namespace: &str, pool: &str, spec: &crate::crd::CircuitBreakerSpec, failed: bool, at_ms: u64) {
        if let Some(entry) = self.lock().get_mut(&format!("{namespace}/{pool}")) {
            entry.circuit.record(failed, at_ms, spec);
        }
    }

    /// Moves the pool's circuit on (its window, `openSeconds`, the annotation); `workers` are
    /// the pool's live workers, one of which runs the probes when half-open. Returns the gate.
    pub fn tick(&self, pool: &WorkerPool, workers: &[String], now_ms: u64) -> circuit::Gate {
        let (namespace, name) = (pool.namespace().unwrap_or_default(), pool.name_any());
        let force = circuit::Force::parse(pool.annotations().get(crate::crd::CIRCUIT_ANNOTATION).map(String::as_str));
        let spec = pool.spec.circuit_breaker.as_ref();
        let mut pools = self.lock();
        let key = format!("{namespace}/{name}");
        if spec.is_none() && force.is_none() && !pools.contains_key(&key) {
            return circuit::Gate::Open;
        }
        // First seen by this operator: resume what the pool's status says.
        let entry = pools.entry(key).or_insert_with(|| {
            let condition = pool.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "CircuitOpen"));
            let circuit = circuit::Circuit::restored(condition, now_ms);
            if circuit.state != circuit::State::Closed {
                tracing::info!(namespace, pool = name, state = ?circuit.state, "resuming the pool's open circuit from its status");
            }
            PoolCircuit { last_seen: Some(circuit.state.clone()), circuit, ..PoolCircuit::default() }
        });
        entry.circuit.tick(spec, force, now_ms);
        let changed = entry.last_seen.as_ref() != Some(&entry.circuit.state);
        entry.last_seen = Some(entry.circuit.state.clone());
        let gate = entry.circuit.gate(spec);
        match gate {
            circuit::Gate::Probe { tasks, .. } => {
                entry.probe_tasks = tasks;
                if entry.probe_pod.as_ref().is_none_or(|pod| !workers.contains(pod)) {
                    entry.probe_pod = workers.iter().min().cloned();
                }
            }
            _ => entry.probe_pod = None,
        }
        let state = entry.circuit.metric();
        drop(pools);
        crate::metrics::global()
            .circuit_state
            .get_or_create(&crate::metrics::PoolOnlyLabels { namespace: namespace.clone(), pool: name.clone() })
            .set(state);
        if changed {
            tracing::info!(namespace, pool = name, state = ?self.state(&namespace, &name), "the pool's circuit breaker changed");
            let _ = self.changed.unbounded_send(ObjectRef::new(&name).within(&namespace));
        }
        gate
    }

    /// True once every pool's circuit was resumed from its status: what [`Circuits::paused`]
    /// says is then complete.
    pub fn primed(&self) -> bool {
        self.primed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The pool's circuit state (closed when it has none).
    pub fn state(&self, namespace: &str, pool: &str) -> circuit::State {
        self.lock().get(&format!("{namespace}/{pool}")).map_or(circuit::State::Closed, |p| p.circuit.state.clone())
    }

    /// The pools whose workers must not start tasks (all but the probe), for the control
    /// broadcast.
    pub fn paused(&self) -> Vec<warren_protocol::PausedPool> {
        let pools = self.lock();
        let mut paused: Vec<warren_protocol::PausedPool> = pools
            .iter()
            .filter_map(|(key, p)| {
                let (namespace, pool) = key.split_once('/')?;
                let probe = match p.circuit.state {
                    circuit::State::Closed => return None,
                    circuit::State::Open { .. } => None,
                    circuit::State::HalfOpen { since_ms, .. } => {
                        p.probe_pod.clone().map(|pod| warren_protocol::Probe { id: since_ms, pod, tasks: p.probe_tasks.max(1) })
                    }
                };
                Some(warren_protocol::PausedPool { namespace: namespace.into(), pool: pool.into(), probe })
            })
            .collect();
        paused.sort_by(|a, b| (&a.namespace, &a.pool).cmp(&(&b.namespace, &b.pool)));
        paused
    }

    /// Forgets pools that are gone.
    pub fn retain(&self, keys: &std::collections::HashSet<String>) {
        self.lock().retain(|key, _| keys.contains(key));
    }

    /// Records an Event on the pool (best effort).
    pub async fn announce(&self, pool: &WorkerPool, event: kube::runtime::events::Event) {
        let published = tokio::time::timeout(Duration::from_secs(10), self.recorder.publish(&event, &pool.object_ref(&()))).await;
        if !matches!(published, Ok(Ok(()))) {
            tracing::warn!(namespace = pool.namespace(), pool = pool.name_any(), "could not record a circuit breaker Event");
        }
    }
}

/// Per pool, what admission keeps between rounds.
#[derive(Default)]
struct PoolState {
    fair: FairState,
    bucket: Option<Bucket>,
    /// The circuit was open at the last round (its Jobs' reasons are cleared when it closes).
    was_shut: bool,
    finish_rate: FinishRate,
    /// The backlog as last told (gauge and status).
    told: tell::Told,
    /// When the pool's previous round ran (for the held time).
    last_round: Option<Instant>,
    /// The previous round found the pool idle (see [`round`]).
    idle: bool,
    /// The pool's retried attempts counted so far (`warren_operator_tasks_retried_total`):
    /// each new one is charged to the rate limit's bucket.
    retried: Option<u64>,
}

/// The longest gap between two rounds that counts as held time (a stalled loop is not a hold).
const MAX_ROUND_GAP: Duration = Duration::from_secs(1);

/// Runs the rounds forever (the leader only). `reconcile` receives the Jobs granted tasks.
pub async fn run(ctx: Arc<Context>, reconcile: mpsc::UnboundedSender<ObjectRef<Job>>) {
    let mut states: HashMap<String, PoolState> = HashMap::new();
    let mut ticker = tokio::time::interval(ROUND);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The pools as listed, not an empty store: their circuits are resumed from their status.
    if ctx.pools_synced.clone().wait_for(|synced| *synced).await.is_err() {
        tracing::error!("the WorkerPool watch is gone: no admission");
        return;
    }
    tracing::debug!(pools = ctx.pools.state().len(), "admission started");
    loop {
        ticker.tick().await;
        let pools: Vec<(String, Arc<WorkerPool>)> = ctx.pools.state().into_iter().map(|p| (pool_key(&p), p)).collect();
        let keys: std::collections::HashSet<String> = pools.iter().map(|(key, _)| key.clone()).collect();
        states.retain(|key, _| keys.contains(key));
        ctx.circuits.retain(&keys);
        for (key, pool) in pools {
            let state = states.entry(key).or_default();
            round(&ctx, &pool, state, &reconcile);
        }
        ctx.circuits.primed.store(true, std::sync::atomic::Ordering::Release);
    }
}

fn pool_key(pool: &WorkerPool) -> String {
    format!("{}/{}", pool.namespace().unwrap_or_default(), pool.name_any())
}

/// One round for one pool: decide, grant, say why the rest waits.
fn round(ctx: &Context, pool: &WorkerPool, state: &mut PoolState, reconcile: &mpsc::UnboundedSender<ObjectRef<Job>>) {
    let (namespace, name) = (pool.namespace().unwrap_or_default(), pool.name_any());
    // A pool without a Job that may run, without a circuit breaker and without a forced
    // circuit has nothing to decide; once one full round has withdrawn what was told of it (the
    // backlog, a circuit), it is skipped: idle pools cost the rounds (ten a second) nothing.
    let idle = pool.spec.circuit_breaker.is_none()
        && !pool.annotations().contains_key(crate::crd::CIRCUIT_ANNOTATION)
        && !ctx.book.has_live_jobs(&namespace, &name);
    if idle && state.idle && state.told.settled() {
        state.last_round = None;
        return;
    }
    state.idle = idle;
    let controlled = pool.spec.flow_controlled();
    // The live workers only matter to a circuit that may half-open (the probe's worker).
    let live: Vec<String> = if pool.spec.circuit_breaker.is_some() {
        ctx.workers.pool(&namespace, &name, PROBE_WORKER_FRESHNESS).into_iter().map(|(pod, _)| pod).collect()
    } else {
        Vec::new()
    };
    let gate = ctx.circuits.tick(pool, &live, warren_protocol::now_ms());
    // While a circuit is (or just was) open, every Job of the pool is looked at: each says why it
    // waits, even one of a pool without admission (forced open by the annotation).
    let shut = gate != circuit::Gate::Open;
    let (mut demands, queued) = ctx.book.admission_demands(&namespace, &name, &pool.spec.priorities, controlled || shut || state.was_shut);
    state.was_shut = shut;
    let now = Instant::now();
    let elapsed = state.last_round.replace(now).map_or(ROUND, |at| now.duration_since(at).min(MAX_ROUND_GAP));
    tell::backlog(ctx, pool, &mut state.told, if controlled { &demands } else { &[] }, controlled);
    if demands.is_empty() {
        return;
    }
    // An open circuit admits nothing; a half-open one only enough for its probes.
    let circuit_room = match gate {
        circuit::Gate::Open => None,
        circuit::Gate::Shut => Some(0),
        circuit::Gate::Probe { tasks, .. } => Some(if queued == 0 { tasks } else { 0 }),
    };
    if circuit_room == Some(0) {
        for demand in &demands {
            ctx.book.set_held(&demand.uid, Some(Held::CircuitOpen));
        }
        // The queued tasks wait too: the workers start none.
        tell::throttled(pool, demands.iter().map(|d| (Held::CircuitOpen, d.backlog.saturating_add(d.queued))), elapsed);
        return;
    }
    if !controlled {
        // Only Jobs with maxRunning are admitted here; the others publish on their own.
        for demand in demands.iter().filter(|d| d.max_running.is_none()) {
            ctx.book.set_held(&demand.uid, None);
        }
        demands.retain(|d| d.max_running.is_some());
        if demands.is_empty() {
            return;
        }
    }
    // Nothing is admitted while a queue of the pool is down: it would wait there anyway.
    if ctx.queue_health.unavailable(&namespace, &name).is_some() {
        return;
    }
    let sum_of = |family: &prometheus_client::metrics::family::Family<
        crate::metrics::PoolLabels,
        prometheus_client::metrics::counter::Counter,
    >|
     -> u64 {
        pool.spec
            .priorities
            .iter()
            .map(|priority| {
                let labels = crate::metrics::PoolLabels { namespace: namespace.clone(), pool: name.clone(), priority: priority.clone() };
                family.get_or_create(&labels).get()
            })
            .sum()
    };
    let metrics = crate::metrics::global();
    let tokens = pool.spec.rate_limit.as_ref().map(|limit| {
        let burst = burst_of(limit);
        let bucket = state.bucket.get_or_insert_with(|| Bucket::new(burst, now));
        // Retries start without admission: the rate limit counts them against new tasks.
        let retried = sum_of(&metrics.tasks_retried);
        bucket.charge(retried.saturating_sub(*state.retried.get_or_insert(retried)), max_debt(limit));
        state.retried = Some(retried);
        bucket.available(limit.tasks_per_second, burst, now)
    });
    if pool.spec.rate_limit.is_none() {
        state.bucket = None;
        state.retried = None;
    }
    let finished = sum_of(&metrics.tasks_succeeded) + sum_of(&metrics.tasks_failed);
    let finish_rate = state.finish_rate.observe(finished, now);
    let room = match (controlled.then(|| room(pool, queued, finish_rate)), circuit_room) {
        (Some(room), Some(probes)) => Some(room.min(probes)),
        (room, probes) => room.or(probes),
    };
    let budget = Budget { room, tokens };
    let settings = pool
        .spec
        .fairness
        .as_ref()
        .map(|f| Settings { weights: f.weights.clone(), max_running_per_key: f.max_running_per_key, ..Settings::default() })
        .unwrap_or_default();
    let settings = Settings { starvation_ms: u64::from(pool.spec.starvation_seconds) * 1_000, ..settings };
    let decision = decide::decide(&demands, &settings, budget, &mut state.fair, warren_protocol::now_ms());
    if let Some(bucket) = state.bucket.as_mut() {
        bucket.take(decision.admitted);
    }
    if decision.admitted > 0 {
        crate::metrics::global()
            .tasks_admitted
            .get_or_create(&crate::metrics::PoolOnlyLabels { namespace: namespace.clone(), pool: name.clone() })
            .inc_by(u64::from(decision.admitted));
    }
    for demand in &demands {
        ctx.book.set_held(&demand.uid, decision.held.get(&demand.uid).copied());
    }
    let held = demands.iter().filter_map(|d| {
        let granted = decision.grants.get(&d.uid).copied().unwrap_or(0);
        decision.held.get(&d.uid).map(|why| (*why, d.backlog.saturating_sub(granted)))
    });
    tell::throttled(pool, held, elapsed);
    for (uid, n) in decision.grants {
        if let Some(job) = ctx.book.grant(&uid, n) {
            let _ = reconcile.unbounded_send(job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_refills_at_the_rate_up_to_the_burst() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(5.0, t0);
        assert_eq!(bucket.available(10.0, 5.0, t0), 5);
        bucket.take(5);
        assert_eq!(bucket.available(10.0, 5.0, t0 + Duration::from_millis(250)), 2, "2.5 tokens in 250 ms at 10/s");
        bucket.take(2);
        assert_eq!(bucket.available(10.0, 5.0, t0 + Duration::from_secs(10)), 5, "never more than the burst");
    }

    #[test]
    fn retries_are_charged_to_the_bucket_with_bounded_debt() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(5.0, t0);
        bucket.charge(3, 600.0);
        assert_eq!(bucket.available(10.0, 5.0, t0), 2, "3 retries took 3 of the 5 tokens");
        bucket.charge(10_000, 600.0);
        assert_eq!(bucket.available(10.0, 5.0, t0 + Duration::from_secs(59)), 0, "600 in debt: a minute at 10/s to pay");
        assert_eq!(bucket.available(10.0, 5.0, t0 + Duration::from_secs(61)), 5, "and no more");
        let limit = crate::crd::RateLimitSpec { tasks_per_second: 10.0, burst: None };
        assert_eq!(max_debt(&limit), 600.0);
    }

    #[test]
    fn the_burst_defaults_to_one_seconds_worth() {
        let limit = |rate: f64, burst: Option<u32>| crate::crd::RateLimitSpec { tasks_per_second: rate, burst };
        assert_eq!(burst_of(&limit(50.0, None)), 50.0);
        assert_eq!(burst_of(&limit(0.2, None)), 1.0);
        assert_eq!(burst_of(&limit(50.0, Some(5))), 5.0);
    }

    #[test]
    fn the_room_is_two_rounds_of_the_ready_workers_less_what_is_queued() {
        let mut pool: WorkerPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "WorkerPool", "metadata": {"name": "p", "namespace": "n"},
            "spec": {"workers": {"handler": ["true"]}, "concurrency": 4},
        }))
        .unwrap();
        assert_eq!(room(&pool, 0, 0.0), 8, "no worker ready yet: one worker's worth, to scale up for");
        pool.status = Some(crate::crd::WorkerPoolStatus { ready_replicas: 3, ..Default::default() });
        assert_eq!(room(&pool, 10, 0.0), 14);
        assert_eq!(room(&pool, 30, 0.0), 0);
        assert_eq!(room(&pool, 30, 2_000.0), 970, "fast tasks: half a second of the finish rate");
    }

    #[test]
    fn the_finish_rate_follows_the_count_with_a_one_second_time_constant() {
        let t0 = Instant::now();
        let mut rate = FinishRate::default();
        assert_eq!(rate.observe(0, t0), 0.0);
        let mut at = t0;
        let mut finished = 0;
        for _ in 0..50 {
            at += Duration::from_millis(100);
            finished += 100;
            rate.observe(finished, at);
        }
        let r = rate.observe(finished + 100, at + Duration::from_millis(100));
        assert!((r - 1_000.0).abs() < 20.0, "{r}");
    }
}

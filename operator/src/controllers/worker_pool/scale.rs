//! Autoscaling I/O of the WorkerPool controller: observes a pool (AMQP passive declares, the
//! workers' heartbeats, the operator's own publish counters), asks [`crate::autoscaler::decide`],
//! marks idle pods cheapest to delete before a scale-down, emits an Event per scale, and builds
//! the `status.autoscaling` block. The decision itself lives in `autoscaler` and stays pure.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};

use super::plan::POOL_LABEL;
use crate::autoscaler::{self, Decision, History, Observation, Policy, Rates};
use crate::broker::BrokerError;
use crate::crd::{AUTOSCALING_PAUSED_ANNOTATION, AutoscalingSpec, AutoscalingStatus, PriorityBacklog, WorkerPool};
use crate::metrics::{self, PoolLabels, PoolOnlyLabels, ScaleLabels};
use crate::workers::WorkerRegistry;

/// Annotation the ReplicaSet controller (and the local runner) reads to pick which pods go first.
pub const POD_DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";
/// A worker not heard from within this long does not count as running anything.
const HEARTBEAT_FRESHNESS: Duration = Duration::from_secs(6);

/// Deletion cost of a pod from its worker's last heartbeat: pods with no worker report yet
/// (starting) and idle workers go first, busy workers last (more running tasks = costlier).
pub fn deletion_cost(heartbeat: Option<&warren_protocol::Heartbeat>) -> i32 {
    match heartbeat {
        None => -1000,
        Some(hb) if hb.in_flight == 0 => -100,
        Some(hb) => 1000i32.saturating_add(100i32.saturating_mul(hb.in_flight.min(1_000_000) as i32)),
    }
}

/// What the autoscaler remembers per pool (by uid) between polls.
#[derive(Default)]
struct PoolState {
    history: History,
    rates: Rates,
    /// Latest (completed, interrupted, last heard) per worker pod, kept after the pod is gone
    /// so the pool's totals only grow.
    workers: HashMap<String, (u64, u64, Duration)>,
    /// Totals of pods not heard from for [`RETIRE_AFTER`], folded here to bound the map.
    retired: (u64, u64),
    /// (time, reason) of the last replica change this operator made. Authoritative over the
    /// pool object a reconcile was handed, which may predate the status write of that change.
    last_scale: Option<(String, String)>,
}

/// A pod silent this long is gone for good (heartbeats come every 2 s): its totals are folded.
const RETIRE_AFTER: Duration = Duration::from_secs(600);

impl PoolState {
    fn account(&mut self, now: Duration, workers: &[(String, crate::workers::WorkerView)]) -> (u64, u64) {
        for (pod, view) in workers {
            self.workers.insert(pod.clone(), (view.heartbeat.completed_total, view.heartbeat.interrupted_total, now));
        }
        let retired = &mut self.retired;
        self.workers.retain(|_, (completed, interrupted, seen)| {
            let keep = now.saturating_sub(*seen) < RETIRE_AFTER;
            if !keep {
                retired.0 += *completed;
                retired.1 += *interrupted;
            }
            keep
        });
        let completed = self.retired.0 + self.workers.values().map(|w| w.0).sum::<u64>();
        let interrupted = self.retired.1 + self.workers.values().map(|w| w.1).sum::<u64>();
        (completed, interrupted)
    }
}

/// The autoscalers of every pool, with a monotonic clock origin and an Event recorder.
pub struct Autoscalers {
    started: Instant,
    pools: Mutex<HashMap<String, PoolState>>,
    /// When each autoscaled pool's topology was last declared, and for which generation: a pool
    /// reconciled every poll interval re-declares its queues at most every [`REDECLARE_EVERY`].
    declared: Mutex<HashMap<String, (Option<i64>, Instant)>>,
    recorder: Recorder,
}

/// Longest time an autoscaled pool goes without re-declaring its topology (a missing queue is
/// also caught at once by the passive declares of every poll).
const REDECLARE_EVERY: Duration = Duration::from_secs(60);

/// One poll's result, for the Deployment, the status and the Event.
pub struct Scaled {
    pub decision: Decision,
    pub current: u32,
    pub status: AutoscalingStatus,
}

impl Autoscalers {
    pub fn new(client: kube::Client) -> Self {
        Self {
            started: Instant::now(),
            pools: Mutex::new(HashMap::new()),
            declared: Mutex::new(HashMap::new()),
            recorder: crate::events::recorder(client),
        }
    }

    pub fn forget(&self, uid: &str) {
        self.pools.lock().expect("autoscaler lock").remove(uid);
        self.declared.lock().expect("autoscaler lock").remove(uid);
    }

    /// Whether this generation of the pool had its topology declared within [`REDECLARE_EVERY`].
    pub fn declared_recently(&self, uid: &str, generation: Option<i64>) -> bool {
        self.declared.lock().expect("autoscaler lock").get(uid).is_some_and(|(g, at)| *g == generation && at.elapsed() < REDECLARE_EVERY)
    }

    /// Records a successful declaration (`ok`) or forgets the last one.
    pub fn set_declared(&self, uid: &str, generation: Option<i64>, ok: bool) {
        let mut declared = self.declared.lock().expect("autoscaler lock");
        if ok {
            declared.insert(uid.to_string(), (generation, Instant::now()));
        } else {
            declared.remove(uid);
        }
    }

    /// Observes the pool and decides its replica count. `current` is the Deployment's
    /// `spec.replicas` (0 when it does not exist yet).
    pub async fn poll(
        &self,
        pool: &WorkerPool,
        spec: &AutoscalingSpec,
        current: u32,
        queues: &[String],
        retry_queues: &[String],
        ctx: &crate::controllers::Context,
    ) -> Result<Scaled, BrokerError> {
        let (broker, registry) = (&ctx.broker, &ctx.workers);
        let namespace = pool.namespace().unwrap_or_default();
        let name = pool.name_any();
        let mut ready = ready_counts(broker, queues).await?;
        // Under flow control, the tasks held back for room in the shallow queues are backlog too.
        let held = ctx.book.held_for_room(&namespace, &name);
        for (count, priority) in ready.iter_mut().zip(&pool.spec.priorities) {
            *count += held.get(priority).copied().unwrap_or(0);
        }
        // An open circuit starts no task: its backlog needs no worker (the pool holds its minimum).
        if matches!(ctx.circuits.state(&namespace, &name), crate::admission::circuit::State::Open { .. }) {
            ready.iter_mut().for_each(|count| *count = 0);
        }
        let delayed = delayed_count(broker, retry_queues).await;
        let workers = registry.pool(&namespace, &name, HEARTBEAT_FRESHNESS);
        let arrived: u64 = pool
            .spec
            .priorities
            .iter()
            .map(|p| {
                metrics::global()
                    .tasks_published
                    .get_or_create(&PoolLabels { namespace: namespace.clone(), pool: name.clone(), priority: p.clone() })
                    .get()
            })
            .sum();
        let paused = pool.annotations().get(AUTOSCALING_PAUSED_ANNOTATION).is_some_and(|v| v == "true");
        let policy = Policy::from_spec(spec, pool.spec.concurrency, paused);
        let now = self.started.elapsed();

        let mut pools = self.pools.lock().expect("autoscaler lock");
        let state = pools.entry(pool.uid().unwrap_or_default()).or_default();
        let (completed, interrupted) = state.account(now, &workers);
        let in_flight: u64 = workers.iter().map(|(_, v)| u64::from(v.heartbeat.in_flight)).sum();
        state.rates.push(now, arrived, completed, in_flight);
        let observation = Observation {
            ready: pool.spec.priorities.iter().cloned().zip(ready.iter().copied()).collect(),
            in_flight,
            busy_workers: workers.iter().filter(|(_, v)| v.heartbeat.in_flight > 0).count() as u32,
            arrival_rate: state.rates.arrival_rate(),
            completion_rate: state.rates.completion_rate(),
            service_seconds: state.rates.service_seconds(),
            current_replicas: current,
            delayed,
        };
        let decision = autoscaler::decide(&observation, &state.history, &policy, now);
        state.history.record(now, &observation, &decision, &policy);
        let status = AutoscalingStatus {
            backlog: observation.backlog() as i64,
            backlog_by_priority: observation
                .ready
                .iter()
                .map(|(priority, ready)| PriorityBacklog { priority: priority.clone(), ready: *ready as i64 })
                .collect(),
            in_flight: in_flight as i64,
            reporting_workers: workers.len() as i32,
            arrival_rate: Some(format!("{:.1}", observation.arrival_rate)),
            completion_rate: Some(format!("{:.1}", observation.completion_rate)),
            current_replicas: current as i32,
            last_scale_time: match &state.last_scale {
                Some((time, _)) => Some(time.clone()),
                None => pool.status.as_ref().and_then(|s| s.autoscaling.as_ref()).and_then(|a| a.last_scale_time.clone()),
            },
            last_scale_reason: match &state.last_scale {
                Some((_, reason)) => Some(reason.clone()),
                None => pool.status.as_ref().and_then(|s| s.autoscaling.as_ref()).and_then(|a| a.last_scale_reason.clone()),
            },
            message: Some(decision.message.clone()),
            interrupted_total: interrupted as i64,
            completed_total: completed as i64,
        };
        drop(pools);
        let labels = PoolOnlyLabels { namespace: namespace.clone(), pool: name.clone() };
        metrics::global().autoscaler_desired_replicas.get_or_create(&labels).set(i64::from(decision.desired));
        metrics::global().autoscaler_backlog.get_or_create(&labels).set(observation.backlog() as i64);
        metrics::global().autoscaler_max_replicas.get_or_create(&labels).set(i64::from(spec.max_replicas));
        Ok(Scaled { decision, current, status })
    }

    /// Before a scale-down: annotates every pod of the pool with its deletion cost from the
    /// workers' heartbeats, so the ReplicaSet removes idle pods and keeps busy ones.
    pub async fn mark_deletion_costs(
        &self,
        client: &kube::Client,
        pool: &WorkerPool,
        registry: &WorkerRegistry,
    ) -> Result<usize, kube::Error> {
        let namespace = pool.namespace().unwrap_or_default();
        let name = pool.name_any();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let listed = pods.list(&ListParams::default().labels(&format!("{POOL_LABEL}={name}"))).await?;
        let workers: BTreeMap<String, _> = registry.pool(&namespace, &name, HEARTBEAT_FRESHNESS).into_iter().collect();
        let mut patched = 0;
        for pod in listed.items {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let pod_name = pod.name_any();
            let cost = deletion_cost(workers.get(&pod_name).map(|v| &v.heartbeat)).to_string();
            if pod.annotations().get(POD_DELETION_COST_ANNOTATION) == Some(&cost) {
                continue;
            }
            let patch = serde_json::json!({"metadata": {"annotations": {POD_DELETION_COST_ANNOTATION: cost}}});
            pods.patch(&pod_name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            patched += 1;
        }
        Ok(patched)
    }

    /// Records a replica change: Event on the pool, metric, and the status' last scale fields.
    pub async fn scaled(&self, pool: &WorkerPool, scaled: &mut Scaled) {
        let reason = scaled.decision.reason.as_str();
        let time = jiff::Timestamp::now().to_string();
        scaled.status.last_scale_time = Some(time.clone());
        scaled.status.last_scale_reason = Some(reason.to_string());
        if let Some(state) = self.pools.lock().expect("autoscaler lock").get_mut(&pool.uid().unwrap_or_default()) {
            state.last_scale = Some((time, reason.to_string()));
        }
        let labels = ScaleLabels {
            namespace: pool.namespace().unwrap_or_default(),
            pool: pool.name_any(),
            direction: if scaled.decision.desired > scaled.current { "up" } else { "down" },
            reason,
        };
        metrics::global().autoscaler_scales.get_or_create(&labels).inc();
        tracing::info!(
            from = scaled.current,
            to = scaled.decision.desired,
            reason,
            message = %scaled.decision.message,
            "scaling the worker Deployment"
        );
        let event = Event {
            type_: EventType::Normal,
            reason: reason.to_string(),
            note: Some(format!("Scaled workers from {} to {}: {}", scaled.current, scaled.decision.desired, scaled.decision.message)),
            action: if scaled.decision.desired > scaled.current { "ScaleUp" } else { "ScaleDown" }.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &pool.object_ref(&())).await {
            tracing::warn!(%error, "could not record the scale Event");
        }
    }
}

/// Messages in the pool's retry-tier queues. The pool controller declares every recorded tier,
/// but a Job records its tiers before the pool reconciles again: one not declared yet holds nothing
/// and counts 0. Scratch channels: a missing queue must not close the publishing channel.
async fn delayed_count(broker: &crate::broker::Broker, queues: &[String]) -> u64 {
    match broker.queue_depths(queues).await {
        Ok(depths) => depths.into_iter().flatten().sum(),
        Err(error) => {
            tracing::debug!(%error, "cannot count the retry queues; counting 0");
            0
        }
    }
}

/// Ready messages per work queue, by passive declare (exact, no management API).
async fn ready_counts(broker: &crate::broker::Broker, queues: &[String]) -> Result<Vec<u64>, BrokerError> {
    let depths = broker.queue_depths(queues).await?;
    queues
        .iter()
        .zip(depths)
        // A missing work queue is re-declared by the next reconcile (the caller forgets the last
        // declaration).
        .map(|(queue, depth)| depth.ok_or_else(|| BrokerError::Missing { queue: queue.clone() }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(in_flight: u32) -> warren_protocol::Heartbeat {
        warren_protocol::Heartbeat {
            in_flight,
            concurrency: 4,
            draining: false,
            idle_since_ms: None,
            completed_total: 0,
            interrupted_total: 0,
            buffered: None,
        }
    }

    fn view(completed: u64, interrupted: u64) -> crate::workers::WorkerView {
        let mut heartbeat = hb(0);
        heartbeat.completed_total = completed;
        heartbeat.interrupted_total = interrupted;
        crate::workers::WorkerView { heartbeat, seen: Instant::now() }
    }

    #[test]
    fn pool_totals_only_grow_as_pods_come_and_go() {
        let mut state = PoolState::default();
        let s = Duration::from_secs;
        assert_eq!(state.account(s(0), &[("a".into(), view(5, 0)), ("b".into(), view(3, 1))]), (8, 1));
        // b is gone; a went on.
        assert_eq!(state.account(s(2), &[("a".into(), view(7, 0))]), (10, 1));
        // Long after, b is folded into the retired totals and the map shrinks.
        assert_eq!(state.account(s(700), &[("c".into(), view(1, 0))]), (11, 1));
        assert_eq!(state.workers.len(), 1);
        assert_eq!(state.retired, (10, 1));
    }

    #[test]
    fn idle_and_silent_pods_are_cheapest_busy_ones_costliest() {
        let cases = [(None, -1000), (Some(hb(0)), -100), (Some(hb(1)), 1100), (Some(hb(4)), 1400)];
        for (heartbeat, want) in cases {
            assert_eq!(deletion_cost(heartbeat.as_ref()), want, "{heartbeat:?}");
        }
        let mut costs: Vec<i32> = [Some(hb(3)), None, Some(hb(0)), Some(hb(1))].iter().map(|h| deletion_cost(h.as_ref())).collect();
        costs.sort();
        assert_eq!(costs, vec![-1000, -100, 1100, 1300]);
        assert_eq!(deletion_cost(Some(&hb(u32::MAX))), 100_001_000, "bounded, no overflow");
    }
}

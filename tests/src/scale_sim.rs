//! `warren-bench scale-sim`: replays arrival traces through Warren's scaling function and
//! through a model of KEDA's RabbitMQ scaler with the HPA defaults, on the same discrete-time
//! model of workers, and compares task waits and worker-seconds.
//!
//! Deterministic (seeded). The model's assumptions are listed in `docs/autoscaling.md`; the
//! important ones: a pod runs `concurrency` tasks at once after a fixed start delay; a task's
//! service time is exponential; the broker hands a waiting task to any ready pod with a free slot
//! (prefetch = concurrency), so "ready" messages are those not yet in a pod; a removed pod stops
//! taking tasks and finishes what it holds (graceful SIGTERM) for both scalers — the difference is
//! which pods are removed.

use std::collections::VecDeque;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use warren_operator::autoscaler::{self, History, Observation, Policy, Rates};

/// Simulation time step, seconds.
pub const DT: f64 = 0.1;

/// The workers of the model.
#[derive(Clone, Debug)]
pub struct WorkerModel {
    /// Seconds from creating a pod to its first task (schedule, start, connect).
    pub pod_start: f64,
    /// Mean service time of a task, seconds (exponentially distributed).
    pub service_mean: f64,
    /// Tasks one pod runs at once.
    pub concurrency: u32,
    /// Most pods either scaler may run.
    pub max_replicas: u32,
}

impl Default for WorkerModel {
    fn default() -> Self {
        Self { pod_start: 5.0, service_mean: 1.0, concurrency: 4, max_replicas: 20 }
    }
}

/// A named arrival trace: task arrival times in seconds, sorted.
#[derive(Clone, Debug)]
pub struct Trace {
    pub name: &'static str,
    pub description: &'static str,
    pub arrivals: Vec<f64>,
}

/// Poisson arrivals with a time-varying rate (tasks/s), by thinning.
fn poisson(rng: &mut impl Rng, duration: f64, max_rate: f64, rate: impl Fn(f64) -> f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut t = 0.0;
    loop {
        t += -(1.0 - rng.random::<f64>()).ln() / max_rate;
        if t >= duration {
            return out;
        }
        if rng.random::<f64>() * max_rate <= rate(t) {
            out.push(t);
        }
    }
}

/// The four standard traces.
pub fn traces(seed: u64) -> Vec<Trace> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let burst = vec![73.0; 2_000];
    let ramp = poisson(&mut rng, 1_200.0, 40.0, |t| {
        if t < 600.0 {
            40.0 * t / 600.0
        } else if t < 900.0 {
            40.0
        } else {
            0.0
        }
    });
    let day = 86_400.0;
    let wave = poisson(&mut rng, day, 10.0, |t| 0.5 + 9.5 * (1.0 - (2.0 * std::f64::consts::PI * t / day).cos()) / 2.0);
    let trickle = poisson(&mut rng, 4.0 * 3_600.0, 1.0 / 180.0, |_| 1.0 / 180.0);
    vec![
        Trace { name: "burst", description: "2,000 tasks at once after 73 s idle", arrivals: burst },
        Trace { name: "ramp", description: "0 -> 40 tasks/s over 10 min, 5 min at 40/s, then nothing", arrivals: ramp },
        Trace { name: "daily-wave", description: "24 h, 0.5 -> 10 -> 0.5 tasks/s (cosine), Poisson", arrivals: wave },
        Trace { name: "trickle", description: "one task every 3 min on average (Poisson), 4 h", arrivals: trickle },
    ]
}

/// What a scaler sees of the world at one step.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub now: f64,
    /// Tasks waiting in the queue (not yet in a pod): RabbitMQ's ready count.
    pub ready: u64,
    /// Tasks running in pods.
    pub in_flight: u64,
    /// Pods with at least one running task.
    pub busy_pods: u32,
    /// Tasks that arrived since the start.
    pub arrived: u64,
    /// Tasks finished since the start.
    pub completed: u64,
    /// The Deployment's replica count (pods not being removed).
    pub replicas: u32,
}

/// A scaler under test: called every step, returns a new replica count when it decides one.
pub trait Scaler {
    fn name(&self) -> &'static str;
    fn tick(&mut self, world: &World) -> Option<u32>;
    /// Whether pods are removed idle-first (Warren's deletion costs) or youngest-first (the
    /// ReplicaSet default, blind to what a pod runs).
    fn removes_idle_first(&self) -> bool;
}

/// Warren's decision function, polled like the operator polls: passive declares for the ready
/// count (exact), heartbeats every 2 s for in-flight work, its own publish counter for arrivals.
pub struct WarrenScaler {
    policy: Policy,
    history: History,
    next_poll: f64,
    heartbeat_every: f64,
    next_heartbeat: f64,
    seen_in_flight: u64,
    seen_busy: u32,
    seen_completed: u64,
    rates: Rates,
}

impl WarrenScaler {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            history: History::default(),
            next_poll: 0.0,
            heartbeat_every: 2.0,
            next_heartbeat: 0.0,
            seen_in_flight: 0,
            seen_busy: 0,
            seen_completed: 0,
            rates: Rates::default(),
        }
    }

    /// The default policy (`autoscaling: {maxReplicas: N}`) for the model.
    pub fn defaults(model: &WorkerModel) -> Self {
        let spec = serde_json::from_value(serde_json::json!({"maxReplicas": model.max_replicas})).expect("spec");
        Self::new(Policy::from_spec(&spec, model.concurrency, false))
    }
}

impl Scaler for WarrenScaler {
    fn name(&self) -> &'static str {
        "warren"
    }

    fn removes_idle_first(&self) -> bool {
        true
    }

    fn tick(&mut self, w: &World) -> Option<u32> {
        if w.now + 1e-9 >= self.next_heartbeat {
            self.next_heartbeat += self.heartbeat_every;
            self.seen_in_flight = w.in_flight;
            self.seen_busy = w.busy_pods;
            self.seen_completed = w.completed;
        }
        if w.now + 1e-9 < self.next_poll {
            return None;
        }
        self.next_poll += self.policy.poll_interval.as_secs_f64();
        let now = Duration::from_secs_f64(w.now);
        self.rates.push(now, w.arrived, self.seen_completed, self.seen_in_flight);
        let observation = Observation {
            ready: vec![("normal".into(), w.ready)],
            in_flight: self.seen_in_flight,
            busy_workers: self.seen_busy,
            arrival_rate: self.rates.arrival_rate(),
            completion_rate: self.rates.completion_rate(),
            service_seconds: self.rates.service_seconds(),
            current_replicas: w.replicas,
            delayed: 0,
        };
        let decision = autoscaler::decide(&observation, &self.history, &self.policy, now);
        self.history.record(now, &observation, &decision, &self.policy);
        (decision.desired != w.replicas).then_some(decision.desired)
    }
}

/// How the HPA limits a scale-up (`pkg/controller/podautoscaler/horizontal.go`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HpaRules {
    /// `spec.behavior` unset — what KEDA creates unless `advanced.horizontalPodAutoscalerConfig.
    /// behavior` is given. The controller's `normalizeDesiredReplicas`: the recommendation is the
    /// highest of the last 300 s (both directions, `stabilizeRecommendation`), a scale-up is capped
    /// at each sync by `calculateScaleUpLimit` = max(2 × current, 4), no scale-down rate limit.
    NoBehavior,
    /// Any `spec.behavior` given, its unset fields filled from `pkg/apis/autoscaling/v2/
    /// defaults.go`: scale-up stabilization 0 s, policies 4 pods and 100 % per 15 s, select Max
    /// (from the replicas at the start of the 15 s period); scale-down: the highest
    /// recommendation of the last 300 s, 100 % per 15 s.
    DefaultBehavior,
}

/// HPA defaults that the model uses (kube-controller-manager flags and `defaults.go`).
pub const HPA_SYNC_PERIOD: f64 = 15.0; // --horizontal-pod-autoscaler-sync-period
pub const HPA_TOLERANCE: f64 = 0.1; // --horizontal-pod-autoscaler-tolerance
pub const HPA_DOWNSCALE_STABILIZATION: f64 = 300.0; // --horizontal-pod-autoscaler-downscale-stabilization
pub const HPA_SCALE_UP_FACTOR: u32 = 2; // scaleUpLimitFactor (no behavior) / Percent 100 (behavior)
pub const HPA_SCALE_UP_MINIMUM: u32 = 4; // scaleUpLimitMinimum (no behavior) / Pods 4 (behavior)
pub const HPA_SCALE_UP_PERIOD: f64 = 15.0; // defaults.go scaleUp policies' periodSeconds
/// KEDA ScaledObject defaults (`pollingInterval`, `cooldownPeriod`) and the RabbitMQ trigger's
/// `activationValue`.
pub const KEDA_POLLING_INTERVAL: f64 = 30.0;
pub const KEDA_COOLDOWN_PERIOD: f64 = 300.0;
pub const KEDA_ACTIVATION_VALUE: f64 = 0.0;

/// KEDA's RabbitMQ scaler (AMQP mode: ready messages only) driving an HPA with its defaults.
pub struct KedaScaler {
    /// Ready messages per replica (`value`).
    pub value: f64,
    pub activation_value: f64,
    pub polling_interval: f64,
    pub cooldown_period: f64,
    pub hpa_sync: f64,
    pub scale_down_stabilization: f64,
    pub tolerance: f64,
    pub max_replicas: u32,
    pub rules: HpaRules,
    next_poll: f64,
    next_sync: f64,
    last_active: f64,
    /// HPA recommendations (time, replicas) for the stabilization window.
    recommendations: VecDeque<(f64, u32)>,
    /// Scale-ups (time, pods added) within the scale-up policy period (behavior rules).
    scale_ups: VecDeque<(f64, u32)>,
}

impl KedaScaler {
    /// A ScaledObject with only `maxReplicaCount` and the trigger's `value` set, as KEDA
    /// creates its HPA: no `behavior`.
    pub fn defaults(value: f64, max_replicas: u32) -> Self {
        Self::with_rules(value, max_replicas, HpaRules::NoBehavior)
    }

    pub fn with_rules(value: f64, max_replicas: u32, rules: HpaRules) -> Self {
        Self {
            value,
            activation_value: KEDA_ACTIVATION_VALUE,
            polling_interval: KEDA_POLLING_INTERVAL,
            cooldown_period: KEDA_COOLDOWN_PERIOD,
            hpa_sync: HPA_SYNC_PERIOD,
            scale_down_stabilization: HPA_DOWNSCALE_STABILIZATION,
            tolerance: HPA_TOLERANCE,
            max_replicas,
            rules,
            next_poll: 0.0,
            next_sync: 0.0,
            last_active: f64::NEG_INFINITY,
            recommendations: VecDeque::new(),
            scale_ups: VecDeque::new(),
        }
    }

    /// One HPA sync: the replica count it sets from the ready count (an `AverageValue` external
    /// metric: `GetExternalPerPodMetricReplicas`, whose tolerance is against the current count).
    fn hpa(&mut self, w: &World) -> u32 {
        let current = w.replicas.max(1);
        let metric = w.ready as f64;
        let ratio = metric / (self.value * f64::from(current));
        let recommendation = if (ratio - 1.0).abs() <= self.tolerance { current } else { (metric / self.value).ceil() as u32 };
        self.recommendations.push_back((w.now, recommendation));
        while self.recommendations.front().is_some_and(|(t, _)| w.now - t > self.scale_down_stabilization) {
            self.recommendations.pop_front();
        }
        let window_max = self.recommendations.iter().map(|(_, r)| *r).max().unwrap_or(recommendation);
        match self.rules {
            HpaRules::NoBehavior => {
                let limit = (HPA_SCALE_UP_FACTOR * current).max(HPA_SCALE_UP_MINIMUM).min(self.max_replicas);
                window_max.clamp(1, limit.max(1))
            }
            HpaRules::DefaultBehavior => {
                let mut desired = recommendation.clamp(1, self.max_replicas);
                if desired < current {
                    desired = window_max.clamp(1, self.max_replicas).min(current);
                }
                if desired > current {
                    while self.scale_ups.front().is_some_and(|(t, _)| w.now - t >= HPA_SCALE_UP_PERIOD) {
                        self.scale_ups.pop_front();
                    }
                    let added: u32 = self.scale_ups.iter().map(|(_, n)| n).sum();
                    let period_start = current.saturating_sub(added);
                    let limit = (period_start + HPA_SCALE_UP_MINIMUM).max(period_start * HPA_SCALE_UP_FACTOR);
                    desired = desired.min(limit).max(current);
                    if desired > current {
                        self.scale_ups.push_back((w.now, desired - current));
                    }
                }
                desired
            }
        }
    }
}

impl Scaler for KedaScaler {
    fn name(&self) -> &'static str {
        "keda"
    }

    fn removes_idle_first(&self) -> bool {
        false
    }

    fn tick(&mut self, w: &World) -> Option<u32> {
        let mut desired = None;
        if w.now + 1e-9 >= self.next_poll {
            self.next_poll += self.polling_interval;
            let active = w.ready as f64 > self.activation_value;
            if active {
                self.last_active = w.now;
                if w.replicas == 0 {
                    desired = Some(1);
                }
            } else if w.replicas > 0 && w.now - self.last_active >= self.cooldown_period {
                desired = Some(0);
                self.recommendations.clear();
                self.scale_ups.clear();
            }
        }
        if w.now + 1e-9 >= self.next_sync {
            self.next_sync += self.hpa_sync;
            let replicas = desired.unwrap_or(w.replicas);
            if replicas > 0 && desired.is_none() {
                let d = self.hpa(w);
                if d != w.replicas {
                    desired = Some(d);
                }
            }
        }
        desired
    }
}

/// The physical bound: a scaler that knows the future and has a pod ready the moment a task
/// needs one, within `maxReplicas`. Simulated on a model whose pods start at once (see
/// [`oracle`]), it runs `ceil((ready + in flight) / concurrency)` pods at every step and keeps a
/// pod that falls idle for `keep_idle` seconds (the pod start: a pod needed again sooner is
/// cheaper kept than restarted). Its p99 wait is what no scaler can beat with that many pods; its
/// worker-seconds are close to the least that serves the trace (busy time plus one start per pod).
pub struct OracleScaler {
    concurrency: u32,
    max_replicas: u32,
    keep_idle: f64,
    /// (time, pods needed) of the last `keep_idle` seconds, for the trailing maximum.
    needed: VecDeque<(f64, u32)>,
}

impl OracleScaler {
    pub fn new(model: &WorkerModel) -> Self {
        Self {
            concurrency: model.concurrency.max(1),
            max_replicas: model.max_replicas,
            keep_idle: model.pod_start,
            needed: VecDeque::new(),
        }
    }
}

impl Scaler for OracleScaler {
    fn name(&self) -> &'static str {
        "oracle"
    }

    fn removes_idle_first(&self) -> bool {
        true
    }

    fn tick(&mut self, w: &World) -> Option<u32> {
        let demand = w.ready + w.in_flight;
        let needed = demand.div_ceil(u64::from(self.concurrency)).min(u64::from(self.max_replicas)) as u32;
        self.needed.push_back((w.now, needed));
        while self.needed.front().is_some_and(|(t, _)| w.now - t > self.keep_idle) {
            self.needed.pop_front();
        }
        let desired = self.needed.iter().map(|(_, n)| *n).max().unwrap_or(needed);
        (desired != w.replicas).then_some(desired)
    }
}

/// Runs `trace` under the oracle: pods that start at once (it asked for them `pod_start` early),
/// each charged its start in worker-seconds.
pub fn oracle(trace: &Trace, model: &WorkerModel, seed: u64, tail: f64) -> Outcome {
    let instant = WorkerModel { pod_start: 0.0, ..model.clone() };
    let mut outcome = simulate(trace, &instant, &mut OracleScaler::new(model), seed, tail);
    outcome.worker_seconds += outcome.pods_started as f64 * model.pod_start;
    outcome.first_reaction = outcome.first_reaction.map(|r| r - model.pod_start);
    outcome
}

struct Pod {
    created: f64,
    ready_at: f64,
    /// Finish times of the running tasks.
    running: Vec<f64>,
    removed: bool,
}

/// The results of one trace under one scaler.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub tasks: usize,
    pub p50_wait: f64,
    pub p99_wait: f64,
    pub max_wait: f64,
    pub peak_backlog: u64,
    pub worker_seconds: f64,
    pub max_pods: u32,
    /// Seconds from the first arrival to the first pod being requested.
    pub first_reaction: Option<f64>,
    /// Running tasks on pods chosen for removal (each would be killed by a non-graceful worker).
    pub busy_on_removed: u64,
    /// Pods created over the run.
    pub pods_started: u64,
}

/// Runs one trace through one scaler. Ends when every task finished and no pod is left, or
/// `tail` seconds after the last arrival.
pub fn simulate(trace: &Trace, model: &WorkerModel, scaler: &mut dyn Scaler, seed: u64, tail: f64) -> Outcome {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut queue: VecDeque<f64> = VecDeque::new();
    let mut pods: Vec<Pod> = Vec::new();
    let mut waits: Vec<f64> = Vec::with_capacity(trace.arrivals.len());
    let mut next_arrival = 0usize;
    let mut completed = 0u64;
    let mut outcome = Outcome { tasks: trace.arrivals.len(), ..Outcome::default() };
    let last_arrival = trace.arrivals.last().copied().unwrap_or(0.0);
    let end = last_arrival + tail;
    let mut rotate = 0usize;
    let mut step = 0u64;
    loop {
        let now = step as f64 * DT;
        step += 1;
        while next_arrival < trace.arrivals.len() && trace.arrivals[next_arrival] <= now {
            queue.push_back(trace.arrivals[next_arrival]);
            next_arrival += 1;
        }
        for pod in &mut pods {
            let before = pod.running.len();
            pod.running.retain(|f| *f > now);
            completed += (before - pod.running.len()) as u64;
        }
        pods.retain(|pod| {
            let gone = pod.removed && pod.running.is_empty();
            if gone {
                outcome.worker_seconds += now - pod.created;
            }
            !gone
        });
        // The broker hands out waiting tasks round-robin to pods with a free slot.
        let n = pods.len();
        if n > 0 {
            let mut idle_rounds = 0;
            while !queue.is_empty() && idle_rounds < n {
                let pod = &mut pods[rotate % n];
                rotate = rotate.wrapping_add(1);
                if !pod.removed && pod.ready_at <= now && (pod.running.len() as u32) < model.concurrency {
                    let arrived = queue.pop_front().expect("non-empty");
                    waits.push(now - arrived);
                    let service = -(1.0 - rng.random::<f64>()).ln() * model.service_mean;
                    pod.running.push(now + service.max(DT));
                    idle_rounds = 0;
                } else {
                    idle_rounds += 1;
                }
            }
        }
        outcome.peak_backlog = outcome.peak_backlog.max(queue.len() as u64);
        let replicas = pods.iter().filter(|p| !p.removed).count() as u32;
        let world = World {
            now,
            ready: queue.len() as u64,
            in_flight: pods.iter().map(|p| p.running.len() as u64).sum(),
            busy_pods: pods.iter().filter(|p| !p.running.is_empty()).count() as u32,
            arrived: next_arrival as u64,
            completed,
            replicas,
        };
        if let Some(desired) = scaler.tick(&world) {
            let desired = desired.min(model.max_replicas);
            if desired > replicas {
                if outcome.first_reaction.is_none() && next_arrival > 0 {
                    outcome.first_reaction = Some(now - trace.arrivals[0]);
                }
                outcome.pods_started += u64::from(desired - replicas);
                for _ in replicas..desired {
                    pods.push(Pod { created: now, ready_at: now + model.pod_start, running: Vec::new(), removed: false });
                }
            } else if desired < replicas {
                let mut candidates: Vec<usize> = (0..pods.len()).filter(|&i| !pods[i].removed).collect();
                if scaler.removes_idle_first() {
                    // Pod deletion cost from heartbeats: not-ready, then idle, then least busy.
                    candidates.sort_by_key(|&i| (pods[i].ready_at <= now, pods[i].running.len()));
                } else {
                    // ReplicaSet ranking without costs: not-ready first, then the youngest.
                    candidates.sort_by(|&a, &b| {
                        (pods[a].ready_at <= now).cmp(&(pods[b].ready_at <= now)).then(pods[b].created.total_cmp(&pods[a].created))
                    });
                }
                for &i in candidates.iter().take((replicas - desired) as usize) {
                    outcome.busy_on_removed += pods[i].running.len() as u64;
                    pods[i].removed = true;
                }
            }
        }
        outcome.max_pods = outcome.max_pods.max(pods.len() as u32);
        let done = next_arrival == trace.arrivals.len() && queue.is_empty() && pods.is_empty();
        if done || now >= end {
            for pod in &pods {
                outcome.worker_seconds += now - pod.created;
            }
            break;
        }
    }
    waits.sort_by(f64::total_cmp);
    let quantile = |q: f64| if waits.is_empty() { 0.0 } else { waits[((waits.len() - 1) as f64 * q).round() as usize] };
    outcome.p50_wait = quantile(0.5);
    outcome.p99_wait = quantile(0.99);
    outcome.max_wait = quantile(1.0);
    outcome.tasks = waits.len();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> WorkerModel {
        WorkerModel::default()
    }

    #[test]
    fn every_task_runs_once_under_both_scalers() {
        let trace = Trace { name: "t", description: "", arrivals: (0..300).map(|i| 10.0 + f64::from(i) * 0.1).collect() };
        for scaler in [&mut WarrenScaler::defaults(&model()) as &mut dyn Scaler, &mut KedaScaler::defaults(20.0, 20)] {
            let o = simulate(&trace, &model(), scaler, 1, 3_600.0);
            assert_eq!(o.tasks, 300, "{}", scaler.name());
            assert!(o.worker_seconds > 0.0);
        }
    }

    #[test]
    fn keda_waits_for_its_polling_interval_to_leave_zero() {
        // One task at t=1: KEDA polled at t=0 (empty), next poll at 30 s, then the pod starts.
        let trace = Trace { name: "one", description: "", arrivals: vec![1.0] };
        let keda = simulate(&trace, &model(), &mut KedaScaler::defaults(20.0, 20), 1, 3_600.0);
        assert!((keda.first_reaction.unwrap() - 29.0).abs() < 0.2, "{keda:?}");
        assert!((keda.max_wait - 34.0).abs() < 0.2, "30 s poll + 5 s start - 1 s: {keda:?}");
        // Kept for the 300 s cooldown (checked at 30 s polls) after the last active poll.
        assert!(keda.worker_seconds >= 299.0, "{keda:?}");
        let warren = simulate(&trace, &model(), &mut WarrenScaler::defaults(&model()), 1, 3_600.0);
        assert!(warren.first_reaction.unwrap() <= 2.0, "{warren:?}");
        assert!(warren.max_wait <= 7.1, "2 s poll + 5 s start: {warren:?}");
        assert!(warren.worker_seconds < keda.worker_seconds, "{warren:?} vs {keda:?}");
    }

    #[test]
    fn the_keda_and_hpa_defaults_are_the_documented_ones() {
        // kube-controller-manager: --horizontal-pod-autoscaler-sync-period 15s, -tolerance 0.1,
        // -downscale-stabilization 5m; horizontal.go scaleUpLimitFactor 2, scaleUpLimitMinimum 4;
        // autoscaling/v2 defaults.go scale-up policies 100 % and 4 pods per 15 s.
        assert_eq!((HPA_SYNC_PERIOD, HPA_TOLERANCE, HPA_DOWNSCALE_STABILIZATION), (15.0, 0.1, 300.0));
        assert_eq!((HPA_SCALE_UP_FACTOR, HPA_SCALE_UP_MINIMUM, HPA_SCALE_UP_PERIOD), (2, 4, 15.0));
        // KEDA ScaledObject: pollingInterval 30, cooldownPeriod 300; rabbitmq activationValue 0.
        assert_eq!((KEDA_POLLING_INTERVAL, KEDA_COOLDOWN_PERIOD, KEDA_ACTIVATION_VALUE), (30.0, 300.0, 0.0));
        let keda = KedaScaler::defaults(20.0, 20);
        assert_eq!(keda.rules, HpaRules::NoBehavior, "KEDA sets no HPA behavior unless asked to");
        assert_eq!((keda.polling_interval, keda.cooldown_period, keda.hpa_sync), (30.0, 300.0, 15.0));
    }

    fn flooded(now: f64, replicas: u32) -> World {
        World { now, ready: 1_000, replicas, ..World::default() }
    }

    #[test]
    fn an_hpa_without_behavior_at_most_doubles_or_reaches_four_per_sync() {
        let mut keda = KedaScaler::defaults(1.0, 100);
        assert_eq!(keda.hpa(&flooded(0.0, 1)), 4, "max(2 x 1, 4)");
        assert_eq!(keda.hpa(&flooded(15.0, 4)), 8, "max(2 x 4, 4)");
        assert_eq!(keda.hpa(&flooded(30.0, 8)), 16);
        let mut capped = KedaScaler::defaults(1.0, 10);
        assert_eq!(capped.hpa(&flooded(0.0, 8)), 10, "maxReplicas");
    }

    #[test]
    fn an_hpa_with_default_behavior_adds_four_pods_or_doubles_per_15_s_period() {
        let mut keda = KedaScaler::with_rules(1.0, 100, HpaRules::DefaultBehavior);
        assert_eq!(keda.hpa(&flooded(0.0, 1)), 5, "max(1 + 4, 2 x 1)");
        assert_eq!(keda.hpa(&flooded(5.0, 5)), 5, "still in the 15 s period that started at 1");
        assert_eq!(keda.hpa(&flooded(15.0, 5)), 10, "a new period from 5: max(9, 10)");
    }

    #[test]
    fn the_hpa_holds_the_peak_for_the_scale_down_window() {
        for rules in [HpaRules::NoBehavior, HpaRules::DefaultBehavior] {
            let mut keda = KedaScaler::with_rules(10.0, 100, rules);
            let mut w = World { now: 0.0, ready: 100, replicas: 10, ..World::default() };
            assert_eq!(keda.hpa(&w), 10);
            w.ready = 0;
            for t in [15.0, 150.0, 300.0] {
                w.now = t;
                assert_eq!(keda.hpa(&w), 10, "{rules:?} t={t}");
            }
            w.now = 315.0;
            assert_eq!(keda.hpa(&w), 1, "{rules:?}");
        }
    }

    #[test]
    fn without_behavior_a_capped_recommendation_keeps_pushing_up_after_the_queue_drains() {
        // stabilizeRecommendation takes the highest recommendation of the window in both
        // directions: 100 wanted at t=0 (capped to 4), nothing ready at t=15, still scales to 8.
        let mut keda = KedaScaler::defaults(1.0, 100);
        assert_eq!(keda.hpa(&World { now: 0.0, ready: 100, replicas: 1, ..World::default() }), 4);
        assert_eq!(keda.hpa(&World { now: 15.0, ready: 0, replicas: 4, ..World::default() }), 8);
    }

    #[test]
    fn the_oracle_starts_every_task_as_soon_as_a_slot_exists() {
        // 80 tasks at once fit 20 pods x 4: each starts within one step; 160 wait for a slot.
        let trace = Trace { name: "t", description: "", arrivals: vec![10.0; 80] };
        let o = oracle(&trace, &model(), 1, 3_600.0);
        assert_eq!(o.tasks, 80);
        assert!(o.max_wait <= 2.0 * DT + 1e-9, "{o:?}");
        assert_eq!(o.max_pods, 20);
        assert!(o.worker_seconds >= 20.0 * model().pod_start, "each pod's start is charged: {o:?}");
        let (w, k) = (
            simulate(&trace, &model(), &mut WarrenScaler::defaults(&model()), 1, 3_600.0),
            simulate(&trace, &model(), &mut KedaScaler::defaults(20.0, 20), 1, 3_600.0),
        );
        assert!(o.p99_wait < w.p99_wait && o.p99_wait < k.p99_wait, "{o:?} {w:?} {k:?}");
    }

    #[test]
    fn warren_never_removes_a_busy_pod() {
        // Long tasks (30 s) so that pods are busy while demand falls.
        let m = WorkerModel { service_mean: 30.0, ..model() };
        let trace = Trace { name: "t", description: "", arrivals: (0..200).map(|i| f64::from(i) * 0.5).collect() };
        let warren = simulate(&trace, &m, &mut WarrenScaler::defaults(&m), 3, 7_200.0);
        assert_eq!(warren.busy_on_removed, 0, "{warren:?}");
        assert_eq!(warren.tasks, 200);
    }

    #[test]
    fn traces_are_deterministic() {
        let a = traces(7);
        let b = traces(7);
        assert_eq!(a.len(), 4);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.arrivals, y.arrivals);
            assert!(x.arrivals.windows(2).all(|w| w[0] <= w[1]), "{} sorted", x.name);
        }
        assert_eq!(a[0].arrivals.len(), 2_000);
    }
}

//! The autoscaler's decision: how many workers a pool should run. Pure.
//!
//! Owns the scaling rule — `decide(&Observation, &History, &Policy, now) -> Decision` — and the
//! small history it needs (recent recommendations, when the pool last had work). Must not do I/O,
//! read clocks or environment: the pool controller observes (AMQP passive declares, worker
//! heartbeats, its own publish counters), calls [`decide`], applies the result and records it
//! with [`History::record`]. The same function drives `warren-bench scale-sim`.
//!
//! The rule, in order:
//! 1. paused → keep the current count;
//! 2. a pool at zero stays there until more than `activation_backlog` tasks wait;
//! 3. recommendation = the larger of `ceil((backlog + in flight) / target_tasks_per_replica)`
//!    and, when a service time is known, the drain target
//!    `ceil((backlog / drain_seconds + arrival rate) × service time / concurrency)`; with a
//!    service time the arrival rate alone also sets a floor (`arrival × service / concurrency`);
//! 4. no work at all → 0 after `scale_to_zero_after` of idleness, 1 until then;
//! 5. stabilization: going up takes the lowest recommendation of the scale-up window, going
//!    down the highest of the scale-down window;
//! 6. step limits per decision; never below the workers that are busy (idle ones are removed
//!    first, through pod deletion costs); clamp to `[min, max]`.

use std::collections::VecDeque;
use std::time::Duration;

use crate::crd::AutoscalingSpec;

/// The drain target when neither `targetTasksPerReplica` nor `targetDrainSeconds` is set.
pub const DEFAULT_DRAIN_SECONDS: u64 = 10;
/// Window of the arrival and completion rates and of the service-time estimate.
pub const RATE_WINDOW: Duration = Duration::from_secs(15);
/// Completions a service-time estimate needs within the rate window.
pub const MIN_COMPLETIONS_FOR_SERVICE_TIME: u64 = 5;

/// The scaling policy of one pool, with every default resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// A pool at zero starts when more than this many tasks wait.
    pub activation_backlog: u64,
    /// Tasks (waiting + running) one replica should have; `None` when not set.
    pub target_tasks_per_replica: Option<f64>,
    /// Time in which the backlog should be emptied, at the measured service time.
    pub target_drain: Option<Duration>,
    /// Tasks per replica used by the drain target while no service time is measured yet.
    pub fallback_tasks_per_replica: f64,
    /// Tasks one worker runs at once.
    pub concurrency: u32,
    pub scale_up: Rules,
    pub scale_down: Rules,
    /// Idle time before the last worker goes (when `min_replicas` is 0).
    pub scale_to_zero_after: Duration,
    pub poll_interval: Duration,
    pub paused: bool,
}

/// Stabilization window and step limit of one direction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules {
    pub stabilization: Duration,
    pub max_step_pods: Option<u32>,
    pub max_step_percent: Option<u32>,
}

impl Rules {
    /// Most replicas one decision may add or remove from `current`; `None` = no limit.
    fn max_step(&self, current: u32) -> Option<u32> {
        let by_percent = self.max_step_percent.map(|p| (u64::from(current) * u64::from(p)).div_ceil(100) as u32);
        match (self.max_step_pods, by_percent) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).max(b.unwrap_or(0)).max(1)),
        }
    }
}

impl Policy {
    /// The policy of a pool's `spec.autoscaling`; `concurrency` is the pool's.
    pub fn from_spec(spec: &AutoscalingSpec, concurrency: u32, paused: bool) -> Policy {
        let secs = |s: Option<i32>, default: u64| Duration::from_secs(s.map_or(default, |s| s.max(0) as u64));
        let concurrency = concurrency.max(1);
        let target_drain = spec.target_drain_seconds.map(|s| Duration::from_secs(s.max(1) as u64));
        let target_tasks_per_replica = spec.target_tasks_per_replica.map(|t| f64::from(t.max(1)));
        // Neither target set: drain the backlog within the default time.
        let target_drain = match (target_tasks_per_replica, target_drain) {
            (None, None) => Some(Duration::from_secs(DEFAULT_DRAIN_SECONDS)),
            (_, drain) => drain,
        };
        let rules = |r: &crate::crd::ScalingRules, default_window: u64| Rules {
            stabilization: secs(r.stabilization_seconds, default_window),
            max_step_pods: r.max_step_pods.map(|p| p.max(1) as u32),
            max_step_percent: r.max_step_percent.map(|p| p.max(1) as u32),
        };
        let max_replicas = spec.max_replicas.max(1) as u32;
        Policy {
            min_replicas: (spec.min_replicas.max(0) as u32).min(max_replicas),
            max_replicas,
            activation_backlog: spec.activation_backlog.max(0) as u64,
            target_tasks_per_replica,
            target_drain,
            fallback_tasks_per_replica: f64::from(concurrency),
            concurrency,
            scale_up: rules(&spec.scale_up, 0),
            scale_down: rules(&spec.scale_down, 30),
            scale_to_zero_after: Duration::from_secs(spec.scale_to_zero_seconds.max(0) as u64),
            poll_interval: Duration::from_secs(spec.poll_interval_seconds.max(1) as u64),
            paused,
        }
    }

    /// The longest window the history must keep.
    pub fn history_window(&self) -> Duration {
        self.scale_up.stabilization.max(self.scale_down.stabilization)
    }
}

impl Default for Policy {
    /// The defaults of an empty `autoscaling: {}` for a pool of concurrency 1.
    fn default() -> Self {
        let spec: AutoscalingSpec = serde_json::from_value(serde_json::json!({})).expect("defaults deserialize");
        Policy::from_spec(&spec, 1, false)
    }
}

/// What the operator knows about a pool at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// Ready tasks per priority queue (passive declares: exact, instant).
    pub ready: Vec<(String, u64)>,
    /// Tasks running in workers (heartbeats).
    pub in_flight: u64,
    /// Workers with at least one running task.
    pub busy_workers: u32,
    /// Tasks per second published to the pool recently.
    pub arrival_rate: f64,
    /// Tasks per second the workers finished recently.
    pub completion_rate: f64,
    /// Mean seconds a task runs, when measured (e.g. in flight / completion rate).
    pub service_seconds: Option<f64>,
    /// Deployment replicas now.
    pub current_replicas: u32,
    /// Failed attempts waiting out their retry delay in the pool's retry-tier queues: not
    /// runnable yet, but due within their tier's delay.
    pub delayed: u64,
}

impl Observation {
    /// Ready tasks over all priority queues.
    pub fn backlog(&self) -> u64 {
        self.ready.iter().map(|(_, n)| n).sum()
    }

    /// Waiting plus running tasks.
    pub fn work(&self) -> u64 {
        self.backlog() + self.in_flight
    }
}

/// What the autoscaler remembers between decisions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// Recent raw recommendations, oldest first.
    recommendations: VecDeque<(Duration, u32)>,
    /// The last instant the pool had waiting or running work.
    pub last_active: Option<Duration>,
    /// The last instant the replica count was changed.
    pub last_scale: Option<Duration>,
}

impl History {
    /// Remembers a decision made at `now` and whether the pool had work then.
    pub fn record(&mut self, now: Duration, observation: &Observation, decision: &Decision, policy: &Policy) {
        self.recommendations.push_back((now, decision.recommendation));
        let keep = policy.history_window();
        while self.recommendations.front().is_some_and(|(t, _)| now.saturating_sub(*t) > keep) {
            self.recommendations.pop_front();
        }
        if observation.work() > 0 || observation.arrival_rate > 0.0 {
            self.last_active = Some(now);
        }
        if decision.desired != observation.current_replicas {
            self.last_scale = Some(now);
        }
    }

    /// Recommendations made within `window` before `now`.
    fn within(&self, now: Duration, window: Duration) -> impl Iterator<Item = u32> + '_ {
        self.recommendations.iter().filter(move |(t, _)| now.saturating_sub(*t) <= window).map(|(_, r)| *r)
    }
}

/// Why the pool has the replica count it has. Stable names: status, Events, metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The pause annotation is set.
    Paused,
    /// At zero and the backlog is not above the activation threshold.
    BelowActivation,
    /// Started from zero.
    Activated,
    /// Waiting and running tasks need more workers.
    Backlog,
    /// Demand dropped; fewer workers.
    LowerDemand,
    /// No work for `scale_to_zero_after`: down to the minimum.
    Idle,
    /// No work yet for long enough to scale to zero.
    IdleCooldown,
    /// Fewer workers would do, but the scale-down window holds them.
    Stabilizing,
    /// More workers would do, but the scale-up window holds them back.
    UpStabilizing,
    /// The change is limited by a step limit.
    StepLimited,
    /// Capped at `max_replicas`.
    AtMaximum,
    /// Held at `min_replicas`.
    AtMinimum,
    /// Busy workers keep the count up: no running task is interrupted.
    InFlightFloor,
    /// The count matches demand.
    Steady,
    /// Nothing to run now, but retries wait out their delay: one worker stays (or starts) so
    /// that they run when due, whatever the activation threshold.
    RetriesDue,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Paused => "Paused",
            Reason::BelowActivation => "BelowActivation",
            Reason::Activated => "Activated",
            Reason::Backlog => "Backlog",
            Reason::LowerDemand => "LowerDemand",
            Reason::Idle => "Idle",
            Reason::IdleCooldown => "IdleCooldown",
            Reason::Stabilizing => "Stabilizing",
            Reason::UpStabilizing => "UpStabilizing",
            Reason::StepLimited => "StepLimited",
            Reason::AtMaximum => "AtMaximum",
            Reason::AtMinimum => "AtMinimum",
            Reason::InFlightFloor => "InFlightFloor",
            Reason::Steady => "Steady",
            Reason::RetriesDue => "RetriesDue",
        }
    }

    /// Whether the pool wants a different count than it gets (condition `ScalingLimited`).
    pub fn is_limit(self) -> bool {
        matches!(self, Reason::AtMaximum | Reason::AtMinimum | Reason::StepLimited | Reason::Paused)
    }
}

/// The autoscaler's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Replicas the Deployment should have.
    pub desired: u32,
    /// The raw recommendation before windows, steps and bounds (kept in the history).
    pub recommendation: u32,
    pub reason: Reason,
    /// For humans: the numbers behind the decision.
    pub message: String,
}

/// Decides the replica count of a pool. Pure: same inputs, same answer.
pub fn decide(obs: &Observation, history: &History, policy: &Policy, now: Duration) -> Decision {
    let current = obs.current_replicas;
    let backlog = obs.backlog();
    let work = obs.work();
    let delayed = if obs.delayed > 0 { format!(", retries waiting {}", obs.delayed) } else { String::new() };
    let facts = format!(
        "backlog {backlog}, in flight {}{delayed}, arrivals {:.1}/s, completions {:.1}/s, replicas {current}",
        obs.in_flight, obs.arrival_rate, obs.completion_rate
    );
    if policy.paused {
        return Decision {
            desired: current,
            recommendation: current,
            reason: Reason::Paused,
            message: format!("autoscaling paused by annotation; {facts}"),
        };
    }
    let recommendation = recommend(obs, policy);
    let decision =
        |desired: u32, reason: Reason, why: String| Decision { desired, recommendation, reason, message: format!("{why}; {facts}") };

    if current == 0 && obs.in_flight == 0 && policy.min_replicas == 0 {
        return if backlog > policy.activation_backlog {
            let target = recommendation.clamp(1, policy.max_replicas);
            let target = policy.scale_up.max_step(0).map_or(target, |s| target.min(s.max(1)));
            decision(target, Reason::Activated, format!("{backlog} tasks waiting > activation {}", policy.activation_backlog))
        } else if obs.delayed > 0 {
            // Below the activation threshold the due retries would wait for ever.
            decision(1, Reason::RetriesDue, format!("{} retries wait out their delay", obs.delayed))
        } else {
            decision(0, Reason::BelowActivation, format!("{backlog} tasks waiting <= activation {}", policy.activation_backlog))
        };
    }

    let mut desired = recommendation;
    let mut reason = if recommendation > current { Reason::Backlog } else { Reason::LowerDemand };
    let mut why = format!("recommended {recommendation}");

    // No work at all: the last worker stays until the pool has been idle long enough.
    if recommendation == 0 && policy.min_replicas == 0 && current > 0 {
        let idle_for = history.last_active.map_or(Duration::MAX, |t| now.saturating_sub(t));
        if obs.delayed > 0 && work == 0 {
            desired = 1;
            reason = Reason::RetriesDue;
            why = format!("{} retries wait out their delay", obs.delayed);
        } else if work > 0 || idle_for < policy.scale_to_zero_after {
            desired = 1;
            reason = Reason::IdleCooldown;
            why = format!(
                "idle {:.0} s of {} s before scaling to zero",
                idle_for.min(Duration::from_secs(86_400)).as_secs_f64(),
                policy.scale_to_zero_after.as_secs()
            );
        } else {
            reason = Reason::Idle;
            why = format!("idle {} s", policy.scale_to_zero_after.as_secs());
        }
    }

    // Stabilization windows (the current recommendation is part of the window).
    if desired > current {
        let lowest = history.within(now, policy.scale_up.stabilization).chain([desired]).min().unwrap_or(desired);
        if lowest < desired {
            desired = lowest.max(current);
            reason = if desired > current { Reason::Backlog } else { Reason::UpStabilizing };
            why = format!("recommended {recommendation}, lowest of the last {} s is {lowest}", policy.scale_up.stabilization.as_secs());
        }
    } else if desired < current {
        let highest = history.within(now, policy.scale_down.stabilization).chain([desired]).max().unwrap_or(desired);
        if highest > desired {
            desired = highest.min(current);
            reason = if desired == current { Reason::Stabilizing } else { Reason::LowerDemand };
            why = format!("recommended {recommendation}, highest of the last {} s is {highest}", policy.scale_down.stabilization.as_secs());
        }
    }

    // Step limits.
    if desired > current {
        if let Some(step) = policy.scale_up.max_step(current)
            && desired - current > step
        {
            desired = current + step;
            reason = Reason::StepLimited;
            why = format!("recommended {recommendation}, scale-up step limited to {step}");
        }
    } else if desired < current
        && let Some(step) = policy.scale_down.max_step(current)
        && current - desired > step
    {
        desired = current - step;
        reason = Reason::StepLimited;
        why = format!("recommended {recommendation}, scale-down step limited to {step}");
    }

    // Never remove a busy worker: idle ones go first (pod deletion cost), so keeping at least
    // the busy ones means no running task is interrupted.
    let busy_floor = obs.busy_workers.max(obs.in_flight.div_ceil(u64::from(policy.concurrency)) as u32);
    if desired < current && desired < busy_floor {
        desired = busy_floor.min(current);
        reason = Reason::InFlightFloor;
        why = format!("recommended {recommendation}, {} workers are busy", obs.busy_workers);
    }

    // Bounds.
    if desired > policy.max_replicas {
        desired = policy.max_replicas;
        reason = Reason::AtMaximum;
        why = format!("recommended {recommendation}, capped at maxReplicas {}", policy.max_replicas);
    } else if desired < policy.min_replicas {
        desired = policy.min_replicas;
        reason = Reason::AtMinimum;
        why = format!("recommended {recommendation}, held at minReplicas {}", policy.min_replicas);
    }
    if desired == current
        && !reason.is_limit()
        && !matches!(
            reason,
            Reason::Stabilizing | Reason::UpStabilizing | Reason::InFlightFloor | Reason::IdleCooldown | Reason::RetriesDue
        )
    {
        reason = Reason::Steady;
    }
    decision(desired, reason, why)
}

/// The raw replica count the work needs, before windows, steps and bounds.
fn recommend(obs: &Observation, policy: &Policy) -> u32 {
    let backlog = obs.backlog() as f64;
    let work = obs.work() as f64;
    let concurrency = f64::from(policy.concurrency);
    let service = obs.service_seconds.filter(|s| *s > 0.0 && s.is_finite());
    let mut need = 0.0f64;
    if let Some(per_replica) = policy.target_tasks_per_replica {
        need = need.max(work / per_replica);
    }
    if let Some(drain) = policy.target_drain {
        match service {
            Some(service) => {
                let rate = backlog / drain.as_secs_f64().max(1e-3) + obs.arrival_rate;
                need = need.max(rate * service / concurrency).max(obs.in_flight as f64 / concurrency);
            }
            // No service time measured yet (cold start, rare tasks): one slot per task.
            None => need = need.max(work / policy.fallback_tasks_per_replica),
        }
    }
    if let Some(service) = service {
        // Keep up with arrivals (Little's law) even when nothing waits yet.
        need = need.max(obs.arrival_rate * service / concurrency);
    }
    // Guard against float noise turning 3.0000001 into 4.
    let rounded = (need - 1e-9).ceil().max(0.0);
    rounded.min(f64::from(u32::MAX)) as u32
}

/// Arrival and completion rates and the mean service time over a sliding window, from running
/// totals sampled at each poll. Pure: the caller supplies the instants.
#[derive(Clone, Debug)]
pub struct Rates {
    window: Duration,
    /// (instant, tasks arrived so far, tasks completed so far, tasks in flight).
    samples: VecDeque<(Duration, u64, u64, u64)>,
}

impl Default for Rates {
    fn default() -> Self {
        Self::new(RATE_WINDOW)
    }
}

impl Rates {
    pub fn new(window: Duration) -> Self {
        Self { window, samples: VecDeque::new() }
    }

    /// Adds a sample; totals that went backwards (a counter reset) restart the window.
    pub fn push(&mut self, now: Duration, arrived: u64, completed: u64, in_flight: u64) {
        if self.samples.back().is_some_and(|&(t, a, c, _)| now < t || arrived < a || completed < c) {
            self.samples.clear();
        }
        self.samples.push_back((now, arrived, completed, in_flight));
        // Keep one sample at or beyond the window's start as the base.
        while self.samples.len() > 2 && now.saturating_sub(self.samples[1].0) >= self.window {
            self.samples.pop_front();
        }
    }

    fn span(&self) -> Option<(f64, &(Duration, u64, u64, u64), &(Duration, u64, u64, u64))> {
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        let secs = last.0.saturating_sub(first.0).as_secs_f64();
        (secs > 0.0).then_some((secs, first, last))
    }

    /// Tasks per second arrived over the window.
    pub fn arrival_rate(&self) -> f64 {
        self.span().map_or(0.0, |(secs, first, last)| (last.1 - first.1) as f64 / secs)
    }

    /// Tasks per second completed over the window.
    pub fn completion_rate(&self) -> f64 {
        self.span().map_or(0.0, |(secs, first, last)| (last.2 - first.2) as f64 / secs)
    }

    /// Mean service time by Little's law (mean in flight / completion rate), once enough tasks
    /// completed within the window to trust it.
    pub fn service_seconds(&self) -> Option<f64> {
        let (secs, first, last) = self.span()?;
        let completed = last.2 - first.2;
        if completed < MIN_COMPLETIONS_FOR_SERVICE_TIME {
            return None;
        }
        let mean_in_flight = self.samples.iter().map(|s| s.3 as f64).sum::<f64>() / self.samples.len() as f64;
        let service = mean_in_flight / (completed as f64 / secs);
        (service > 0.0).then_some(service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn policy(json: serde_json::Value, concurrency: u32) -> Policy {
        let spec: AutoscalingSpec = serde_json::from_value(json).unwrap();
        Policy::from_spec(&spec, concurrency, false)
    }

    fn obs(backlog: u64, in_flight: u64, busy: u32, current: u32) -> Observation {
        Observation {
            ready: vec![("high".into(), backlog / 2), ("normal".into(), backlog - backlog / 2)],
            in_flight,
            busy_workers: busy,
            current_replicas: current,
            ..Observation::default()
        }
    }

    #[test]
    fn a_pool_never_scales_to_zero_while_retries_wait_and_starts_for_them_below_activation() {
        let p = policy(
            serde_json::json!({"minReplicas": 0, "maxReplicas": 5, "activationBacklog": 10, "scaleToZeroSeconds": 0,
            "scaleDown": {"stabilizationSeconds": 0}}),
            4,
        );
        let history = History::default();
        let now = Duration::from_secs(1_000);
        // Idle at 1 replica with one retry waiting: the worker stays.
        let waiting = Observation { delayed: 1, ..obs(0, 0, 0, 1) };
        let d = decide(&waiting, &history, &p, now);
        assert_eq!((d.desired, d.reason), (1, Reason::RetriesDue), "{d:?}");
        assert!(d.message.contains("retries waiting 1"), "{}", d.message);
        // At zero, one retry is below the activation threshold of 10 but still starts a worker.
        let d = decide(&Observation { delayed: 1, ..obs(0, 0, 0, 0) }, &history, &p, now);
        assert_eq!((d.desired, d.reason), (1, Reason::RetriesDue), "{d:?}");
        // Without retries the same pool goes to and stays at zero.
        assert_eq!(decide(&obs(0, 0, 0, 1), &history, &p, now).desired, 0);
        assert_eq!(decide(&obs(0, 0, 0, 0), &history, &p, now).reason, Reason::BelowActivation);
        // Retries never hold more than one worker, nor less than the work needs.
        let d = decide(&Observation { delayed: 500, ..obs(40, 0, 0, 1) }, &history, &p, now);
        assert!(d.desired > 1 && d.reason != Reason::RetriesDue, "{d:?}");
    }

    /// Runs `decide` over a sequence of observations one poll apart, recording each decision
    /// and applying it as the next observation's replica count.
    fn run(policy: &Policy, steps: &[(u64, u64, u32)], start_replicas: u32) -> Vec<Decision> {
        let mut history = History::default();
        let mut current = start_replicas;
        let mut out = Vec::new();
        for (i, &(backlog, in_flight, busy)) in steps.iter().enumerate() {
            let now = policy.poll_interval * i as u32;
            let o = obs(backlog, in_flight, busy, current);
            let d = decide(&o, &history, policy, now);
            history.record(now, &o, &d, policy);
            current = d.desired;
            out.push(d);
        }
        out
    }

    #[test]
    fn defaults_are_good_untuned() {
        let p = policy(serde_json::json!({}), 4);
        assert_eq!((p.min_replicas, p.max_replicas, p.activation_backlog), (0, 10, 0));
        assert_eq!(p.target_tasks_per_replica, None);
        assert_eq!(p.target_drain, Some(s(10)), "default: drain the backlog within 10 s");
        assert_eq!(p.fallback_tasks_per_replica, 4.0, "until a service time is measured: concurrency per replica");
        assert_eq!((p.scale_up.stabilization, p.scale_down.stabilization), (s(0), s(30)));
        assert_eq!((p.scale_up.max_step(3), p.scale_down.max_step(3)), (None, None));
        assert_eq!((p.poll_interval, p.scale_to_zero_after), (s(2), s(60)));
    }

    /// One decision from scratch: (name, policy, observation, history last_active, expected desired, reason).
    #[test]
    fn single_decisions() {
        let base = serde_json::json!({"maxReplicas": 6});
        let cases: Vec<(&str, serde_json::Value, u32, Observation, u32, Reason)> = vec![
            ("zero stays at zero without work", base.clone(), 1, obs(0, 0, 0, 0), 0, Reason::BelowActivation),
            ("first task activates", base.clone(), 1, obs(1, 0, 0, 0), 1, Reason::Activated),
            ("activation threshold holds", serde_json::json!({"activationBacklog": 10}), 1, obs(10, 0, 0, 0), 0, Reason::BelowActivation),
            ("above the threshold activates", serde_json::json!({"activationBacklog": 10}), 1, obs(11, 0, 0, 0), 10, Reason::Activated),
            ("burst from zero goes straight to max", base.clone(), 4, obs(2000, 0, 0, 0), 6, Reason::Activated),
            ("burst from one goes straight to max", base.clone(), 4, obs(2000, 4, 1, 1), 6, Reason::AtMaximum),
            ("in flight counts as work", base.clone(), 2, obs(0, 6, 3, 1), 3, Reason::Backlog),
            ("exactly enough is steady", base.clone(), 4, obs(4, 8, 2, 3), 3, Reason::Steady),
            ("rounding up: 9 tasks on 4 slots", base.clone(), 4, obs(9, 0, 0, 1), 3, Reason::Backlog),
            (
                "target tasks per replica",
                serde_json::json!({"targetTasksPerReplica": 50, "maxReplicas": 100}),
                4,
                obs(1000, 0, 0, 1),
                20,
                Reason::Backlog,
            ),
            (
                "min replicas held",
                serde_json::json!({"minReplicas": 2, "scaleDown": {"stabilizationSeconds": 0}}),
                1,
                obs(0, 0, 0, 3),
                2,
                Reason::AtMinimum,
            ),
            ("min replicas lift a pool at zero", serde_json::json!({"minReplicas": 2}), 1, obs(0, 0, 0, 0), 2, Reason::AtMinimum),
            (
                "scale-up step in pods",
                serde_json::json!({"maxReplicas": 50, "scaleUp": {"maxStepPods": 4}}),
                1,
                obs(100, 2, 2, 2),
                6,
                Reason::StepLimited,
            ),
            (
                "scale-up step in percent",
                serde_json::json!({"maxReplicas": 50, "scaleUp": {"maxStepPercent": 100}}),
                1,
                obs(100, 3, 3, 3),
                6,
                Reason::StepLimited,
            ),
            (
                "larger of pods and percent",
                serde_json::json!({"maxReplicas": 50, "scaleUp": {"maxStepPods": 4, "maxStepPercent": 100}}),
                1,
                obs(100, 10, 10, 10),
                20,
                Reason::StepLimited,
            ),
            (
                "scale-down step",
                serde_json::json!({"scaleDown": {"stabilizationSeconds": 0, "maxStepPods": 2}}),
                1,
                obs(1, 0, 0, 8),
                6,
                Reason::StepLimited,
            ),
            (
                "never below the busy workers",
                serde_json::json!({"scaleDown": {"stabilizationSeconds": 0}}),
                4,
                obs(0, 5, 5, 6),
                5,
                Reason::InFlightFloor,
            ),
            (
                "never below the in-flight slots",
                serde_json::json!({"scaleDown": {"stabilizationSeconds": 0}, "targetTasksPerReplica": 100}),
                2,
                obs(0, 8, 3, 6),
                4,
                Reason::InFlightFloor,
            ),
            ("max caps a large recommendation", serde_json::json!({"maxReplicas": 3}), 1, obs(50, 3, 3, 3), 3, Reason::AtMaximum),
        ];
        for (name, spec, concurrency, o, want, reason) in cases {
            let p = policy(spec, concurrency);
            let d = decide(&o, &History::default(), &p, s(1000));
            assert_eq!((d.desired, d.reason), (want, reason), "{name}: {}", d.message);
        }
    }

    #[test]
    fn pause_keeps_the_count_whatever_the_backlog() {
        let spec: AutoscalingSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        let p = Policy::from_spec(&spec, 1, true);
        for o in [obs(5000, 0, 0, 2), obs(0, 0, 0, 2), obs(3, 0, 0, 0)] {
            let d = decide(&o, &History::default(), &p, s(10));
            assert_eq!((d.desired, d.reason), (o.current_replicas, Reason::Paused));
            assert!(d.message.contains("paused"), "{}", d.message);
        }
    }

    #[test]
    fn burst_up_fast_then_stabilized_down_then_zero() {
        // poll 2 s, down window 10 s, zero after 6 s of idleness, concurrency 4, max 6.
        let p = policy(serde_json::json!({"maxReplicas": 6, "scaleDown": {"stabilizationSeconds": 10}, "scaleToZeroSeconds": 6}), 4);
        let steps = [
            (0, 0, 0),     // t0: idle at zero
            (2000, 0, 0),  // t2: burst arrives
            (1990, 4, 1),  // t4: one worker running
            (1500, 24, 6), // t6
            (100, 24, 6),  // t8
            (0, 8, 2),     // t10: tail: two busy
            (0, 0, 0),     // t12: all done
            (0, 0, 0),     // t14
            (0, 0, 0),     // t16
            (0, 0, 0),     // t18
            (0, 0, 0),     // t20
            (0, 0, 0),     // t22
        ];
        let got: Vec<(u32, Reason)> = run(&p, &steps, 0).iter().map(|d| (d.desired, d.reason)).collect();
        use Reason::*;
        assert_eq!(
            got,
            vec![
                (0, BelowActivation),
                (6, Activated), // one poll after the burst the pool is at max
                (6, AtMaximum),
                (6, AtMaximum),
                (6, AtMaximum),
                (6, Stabilizing), // t10: 2 would do; the window holds the higher recommendations
                (6, Stabilizing),
                (6, Stabilizing),
                (6, Stabilizing),
                (6, Stabilizing), // t18: the 31 of t8 is still within 10 s
                (2, LowerDemand), // t20: highest left in the window is the 2 of t10
                (0, Idle),        // t22: idle 12 s ≥ 6 s, window all zero
            ]
        );
    }

    #[test]
    fn scale_down_waits_for_the_window_and_for_idleness() {
        let p = policy(serde_json::json!({"scaleDown": {"stabilizationSeconds": 4}, "scaleToZeroSeconds": 8}), 1);
        // t0 busy with 3, then nothing.
        let steps = [(0, 3, 3), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)];
        let got: Vec<(u32, Reason)> = run(&p, &steps, 3).iter().map(|d| (d.desired, d.reason)).collect();
        use Reason::*;
        assert_eq!(
            got,
            vec![
                (3, Steady),
                (3, Stabilizing),  // t2: the 4 s window holds the 3 of t0
                (3, Stabilizing),  // t4: t0 is exactly 4 s old
                (1, IdleCooldown), // t6: the last worker stays until idle 8 s
                (0, Idle),         // t8
                (0, BelowActivation),
                (0, BelowActivation),
            ]
        );
    }

    #[test]
    fn scale_up_window_ignores_a_single_spike() {
        let p = policy(serde_json::json!({"minReplicas": 1, "scaleUp": {"stabilizationSeconds": 4}}), 1);
        let steps = [(0, 1, 1), (10, 1, 1), (0, 1, 1), (10, 1, 1), (10, 1, 1), (10, 1, 1)];
        let got: Vec<u32> = run(&p, &steps, 1).iter().map(|d| d.desired).collect();
        assert_eq!(got, vec![1, 1, 1, 1, 1, 10], "only a demand sustained over the 4 s window scales up");
    }

    #[test]
    fn drain_target_uses_measured_service_time() {
        let p = policy(serde_json::json!({"targetDrainSeconds": 10, "maxReplicas": 100}), 4);
        assert_eq!(p.target_tasks_per_replica, None);
        // 50 ms tasks: 2000 waiting, drained in 10 s = 200/s; a replica does 4 / 0.05 = 80/s → 3.
        let mut o = obs(2000, 4, 1, 1);
        o.service_seconds = Some(0.05);
        let d = decide(&o, &History::default(), &p, s(0));
        assert_eq!((d.desired, d.reason), (3, Reason::Backlog), "{}", d.message);
        // Without a measurement yet: one slot per task.
        o.service_seconds = None;
        let d = decide(&o, &History::default(), &p, s(0));
        assert_eq!((d.desired, d.reason), (100, Reason::AtMaximum), "2004 tasks on 4 slots, capped: {}", d.message);
        // Both targets: the larger wins.
        let both = policy(serde_json::json!({"targetDrainSeconds": 10, "targetTasksPerReplica": 200, "maxReplicas": 100}), 4);
        o.service_seconds = Some(0.05);
        assert_eq!(decide(&o, &History::default(), &both, s(0)).desired, 11);
    }

    #[test]
    fn arrival_rate_sets_a_floor_before_a_backlog_forms() {
        // 30 tasks/s of 1 s on concurrency 4 need 8 workers even though nothing waits yet.
        let p = policy(serde_json::json!({"maxReplicas": 20}), 4);
        let mut o = obs(0, 12, 3, 3);
        o.arrival_rate = 30.0;
        o.service_seconds = Some(1.0);
        let d = decide(&o, &History::default(), &p, s(0));
        assert_eq!((d.desired, d.reason), (8, Reason::Backlog), "{}", d.message);
    }

    #[test]
    fn default_target_runs_a_busy_pool_near_its_load() {
        // 10 tasks/s of 1 s on concurrency 4: 2.5 replicas of load, a few waiting.
        let p = policy(serde_json::json!({"maxReplicas": 20}), 4);
        let mut o = obs(6, 10, 3, 3);
        o.arrival_rate = 10.0;
        o.service_seconds = Some(1.0);
        // (6 / 10 s + 10/s) × 1 s / 4 = 2.65 → 3, not ceil(16 / 4) = 4.
        assert_eq!(decide(&o, &History::default(), &p, s(0)).desired, 3);
        // With a tasks-per-replica target set, every waiting task gets a slot.
        let eager = policy(serde_json::json!({"maxReplicas": 20, "targetTasksPerReplica": 4}), 4);
        assert_eq!(decide(&o, &History::default(), &eager, s(0)).desired, 4);
    }

    #[test]
    fn rates_over_a_sliding_window() {
        let mut r = Rates::new(s(10));
        assert_eq!((r.arrival_rate(), r.completion_rate(), r.service_seconds()), (0.0, 0.0, None));
        // 20 arrivals/s, 8 completions/s, 16 in flight: service 2 s.
        for t in 0..=30u64 {
            r.push(s(t), 20 * t, 8 * t, 16);
        }
        assert_eq!(r.arrival_rate(), 20.0);
        assert_eq!(r.completion_rate(), 8.0);
        assert_eq!(r.service_seconds(), Some(2.0));
        assert!(r.samples.len() <= 12, "older samples dropped: {}", r.samples.len());
        // Too few completions: no estimate.
        let mut few = Rates::new(s(10));
        few.push(s(0), 0, 0, 1);
        few.push(s(10), 1, 4, 1);
        assert_eq!(few.service_seconds(), None);
        // A counter going backwards (operator restart) restarts the window.
        r.push(s(31), 0, 0, 0);
        assert_eq!(r.arrival_rate(), 0.0);
    }

    #[test]
    fn history_forgets_beyond_the_window_and_tracks_activity() {
        let p = policy(serde_json::json!({"scaleDown": {"stabilizationSeconds": 10}}), 1);
        let mut h = History::default();
        for t in 0..20u64 {
            let o = obs(if t < 5 { 3 } else { 0 }, 0, 0, 3);
            let d = decide(&o, &h, &p, s(t));
            h.record(s(t), &o, &d, &p);
        }
        assert!(h.recommendations.len() <= 11, "{}", h.recommendations.len());
        assert_eq!(h.last_active, Some(s(4)));
    }

    #[test]
    fn every_reason_has_a_stable_name() {
        let all = [
            Reason::Paused,
            Reason::BelowActivation,
            Reason::Activated,
            Reason::Backlog,
            Reason::LowerDemand,
            Reason::Idle,
            Reason::IdleCooldown,
            Reason::Stabilizing,
            Reason::UpStabilizing,
            Reason::StepLimited,
            Reason::AtMaximum,
            Reason::AtMinimum,
            Reason::InFlightFloor,
            Reason::Steady,
        ];
        let names: std::collections::HashSet<_> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), all.len());
        assert!(names.iter().all(|n| n.chars().next().unwrap().is_ascii_uppercase() && !n.contains(' ')));
    }
}

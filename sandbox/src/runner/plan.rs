//! Pure decisions of the Deployment/ReplicaSet half of the runner: which pods a Deployment
//! needs created or deleted, which pods go first on scale-down, what the Deployment status
//! says, and how long a crashed container waits before its restart.
//!
//! Nothing here talks to the API server, reads the clock or the environment: callers pass
//! `now` and observed pods in, and apply the returned plan themselves.

use std::cmp::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Label carried by every pod a Deployment owns; its value identifies the pod template.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// Annotation the ReplicaSet controller reads to prefer some pods over others on scale-down.
pub const POD_DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Kubernetes' alphabet for generated name suffixes and hashes: no vowels (no accidental
/// words) and no look-alike characters.
pub const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Lifecycle phase of a pod as far as ranking is concerned (`status.phase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PodPhaseRank {
    Pending = 0,
    Unknown = 1,
    Running = 2,
}

impl PodPhaseRank {
    pub fn from_phase(phase: Option<&str>) -> Self {
        match phase {
            Some("Running") => Self::Running,
            Some("Pending") | None => Self::Pending,
            _ => Self::Unknown,
        }
    }
}

/// What the Deployment logic needs to know about one of its active (not terminating) pods.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    pub name: String,
    /// Pod UID, the ranking's final tie-breaker (empty for a pod created but not yet observed).
    pub uid: String,
    /// `spec.nodeName` is set.
    pub scheduled: bool,
    pub phase: PodPhaseRank,
    /// Since when the `Ready` condition is `True`; `None` = not ready.
    pub ready_since: Option<Timestamp>,
    /// `controller.kubernetes.io/pod-deletion-cost`, 0 when absent or not an integer.
    pub deletion_cost: i32,
    /// Highest `restartCount` among the pod's containers.
    pub restarts: i32,
    pub created: Option<Timestamp>,
    /// `pod-template-hash` label.
    pub template_hash: Option<String>,
}

impl PodView {
    pub fn ready(&self) -> bool {
        self.ready_since.is_some()
    }

    /// Ready for at least `min_ready` (the Deployment's `minReadySeconds`).
    pub fn available(&self, min_ready: Duration, now: Timestamp) -> bool {
        match self.ready_since {
            None => false,
            Some(_) if min_ready.is_zero() => true,
            Some(since) => since
                .checked_add(jiff::SignedDuration::try_from(min_ready).unwrap_or(jiff::SignedDuration::MAX))
                .map(|t| t <= now)
                .unwrap_or(false),
        }
    }

    fn is_current(&self, current_hash: &str) -> bool {
        self.template_hash.as_deref() == Some(current_hash)
    }
}

/// Parses the deletion-cost annotation the way the ReplicaSet controller does: an int32,
/// anything else counts as 0.
pub fn parse_deletion_cost(value: Option<&str>) -> i32 {
    value.and_then(|v| v.trim().parse::<i32>().ok()).unwrap_or(0)
}

/// Orders two pods so that the one to delete first comes first. This is the ReplicaSet
/// controller's `ActivePodsWithRanks.Less` (with `LogarithmicScaleDown` off, and without the
/// "doubled-up on a node" rank, which is constant on a single node):
/// 1. unscheduled before scheduled,
/// 2. Pending before Unknown before Running,
/// 3. not ready before ready,
/// 4. lower `pod-deletion-cost` first,
/// 5. if both ready: ready for less time first,
/// 6. more restarts first,
/// 7. newer (or unknown creation time) first,
/// 8. lower UID (then name, for determinism).
pub fn deletion_order(a: &PodView, b: &PodView) -> Ordering {
    a.scheduled
        .cmp(&b.scheduled)
        .then(a.phase.cmp(&b.phase))
        .then(a.ready().cmp(&b.ready()))
        .then(a.deletion_cost.cmp(&b.deletion_cost))
        .then_with(|| match (a.ready_since, b.ready_since) {
            (Some(x), Some(y)) => y.cmp(&x),
            _ => Ordering::Equal,
        })
        .then(b.restarts.cmp(&a.restarts))
        .then_with(|| newer_or_unknown_first(a.created, b.created))
        .then_with(|| a.uid.cmp(&b.uid))
        .then_with(|| a.name.cmp(&b.name))
}

fn newer_or_unknown_first(a: Option<Timestamp>, b: Option<Timestamp>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => y.cmp(&x),
    }
}

/// The `n` pods the ReplicaSet controller would delete first, in deletion order.
pub fn pick_victims(pods: &[PodView], n: usize) -> Vec<String> {
    let mut ranked: Vec<&PodView> = pods.iter().collect();
    ranked.sort_by(|a, b| deletion_order(a, b));
    ranked.into_iter().take(n).map(|p| p.name.clone()).collect()
}

/// How a Deployment replaces pods of an older template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Delete every old pod, wait until they are gone, then create new ones.
    Recreate,
    /// Keep at most `desired + max_surge` pods and at least `desired - max_unavailable`
    /// available ones while replacing.
    RollingUpdate { max_surge: i32, max_unavailable: i32 },
}

impl Strategy {
    /// Kubernetes' defaults: RollingUpdate with 25 % surge (rounded up) and 25 % unavailable
    /// (rounded down); if both resolve to 0, one pod may be unavailable.
    pub fn from_spec(strategy: Option<&k8s_openapi::api::apps::v1::DeploymentStrategy>, desired: i32) -> Self {
        let ty = strategy.and_then(|s| s.type_.as_deref()).unwrap_or("RollingUpdate");
        if ty == "Recreate" {
            return Self::Recreate;
        }
        let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
        let default = IntOrString::String("25%".into());
        let surge = rolling.and_then(|r| r.max_surge.as_ref()).unwrap_or(&default);
        let unavailable = rolling.and_then(|r| r.max_unavailable.as_ref()).unwrap_or(&default);
        let max_surge = scaled_value(surge, desired, true);
        let mut max_unavailable = scaled_value(unavailable, desired, false);
        if max_surge == 0 && max_unavailable == 0 {
            max_unavailable = 1;
        }
        Self::RollingUpdate { max_surge, max_unavailable: max_unavailable.min(desired.max(0)) }
    }
}

fn scaled_value(value: &IntOrString, total: i32, round_up: bool) -> i32 {
    match value {
        IntOrString::Int(v) => (*v).max(0),
        IntOrString::String(s) => {
            let pct: f64 = s.trim_end_matches('%').trim().parse().unwrap_or(0.0);
            let scaled = pct * f64::from(total.max(0)) / 100.0;
            let v = if round_up { scaled.ceil() } else { scaled.floor() };
            (v as i32).max(0)
        }
    }
}

/// The observed state of one Deployment, as input to [`plan_replicas`] and [`deployment_status`].
#[derive(Clone, Debug)]
pub struct ReplicaState<'a> {
    /// `spec.replicas` (default 1).
    pub desired: i32,
    /// Hash of the current pod template; pods with another hash are old.
    pub current_hash: &'a str,
    pub strategy: Strategy,
    /// `spec.minReadySeconds`.
    pub min_ready: Duration,
    /// Active pods: not terminating, including pods created but not observed yet.
    pub pods: &'a [PodView],
    /// Pods being stopped (SIGTERM sent, Pod object not gone yet).
    pub terminating: usize,
    /// `spec.paused`: scale, but never replace pods of an older template.
    pub paused: bool,
}

/// What to do to one Deployment's pods now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaPlan {
    /// Number of pods with the current template to create.
    pub create: usize,
    /// Names of pods to stop and delete, in deletion order.
    pub delete: Vec<String>,
}

/// Decides creations and deletions for one Deployment, like the Deployment controller driving
/// an old and a new ReplicaSet.
pub fn plan_replicas(state: &ReplicaState<'_>, now: Timestamp) -> ReplicaPlan {
    let desired = state.desired.max(0) as usize;
    let (new, old): (Vec<&PodView>, Vec<&PodView>) = state.pods.iter().partition(|p| p.is_current(state.current_hash));
    let plan = if old.is_empty() {
        scale(&new, desired)
    } else if state.paused {
        let all: Vec<&PodView> = state.pods.iter().collect();
        scale(&all, desired)
    } else {
        rollout(state, &new, &old, desired, now)
    };
    plan.with_recreate_wait(state)
}

fn rollout(state: &ReplicaState<'_>, new: &[&PodView], old: &[&PodView], desired: usize, now: Timestamp) -> ReplicaPlan {
    match state.strategy {
        // Old pods go first; new ones only once nothing old is left (see with_recreate_wait).
        Strategy::Recreate => ReplicaPlan { create: 0, delete: rank(old) },
        Strategy::RollingUpdate { max_surge, max_unavailable } => {
            let total = state.pods.len();
            let max_total = desired + max_surge.max(0) as usize;
            let min_available = desired.saturating_sub(max_unavailable.max(0) as usize);
            let mut plan = ReplicaPlan::default();

            if new.len() > desired {
                plan.delete = pick_from(new, new.len() - desired);
            } else if new.len() < desired && total < max_total {
                plan.create = (desired - new.len()).min(max_total - total);
            }

            // Scale old pods down without going below min_available (as
            // scaleDownOldReplicaSetsForRollingUpdate: unhealthy old pods first).
            let new_unavailable = new.iter().filter(|p| !p.available(state.min_ready, now)).count();
            let mut budget = total.saturating_sub(min_available).saturating_sub(new_unavailable);
            let (old_unavailable, old_available): (Vec<&PodView>, Vec<&PodView>) =
                old.iter().copied().partition(|p| !p.available(state.min_ready, now));
            let unhealthy = pick_from(&old_unavailable, budget.min(old_unavailable.len()));
            budget -= unhealthy.len();
            plan.delete.extend(unhealthy);

            let available = state.pods.iter().filter(|p| p.available(state.min_ready, now)).count();
            let healthy_budget = budget.min(available.saturating_sub(min_available));
            plan.delete.extend(pick_from(&old_available, healthy_budget.min(old_available.len())));
            plan
        }
    }
}

impl ReplicaPlan {
    /// Recreate never creates while old pods are still shutting down.
    fn with_recreate_wait(mut self, state: &ReplicaState<'_>) -> Self {
        if state.strategy == Strategy::Recreate {
            let old_active = state.pods.iter().any(|p| !p.is_current(state.current_hash));
            if old_active || state.terminating > 0 {
                self.create = 0;
            }
        }
        self
    }
}

fn scale(pods: &[&PodView], desired: usize) -> ReplicaPlan {
    match pods.len().cmp(&desired) {
        Ordering::Less => ReplicaPlan { create: desired - pods.len(), delete: vec![] },
        Ordering::Equal => ReplicaPlan::default(),
        Ordering::Greater => ReplicaPlan { create: 0, delete: pick_from(pods, pods.len() - desired) },
    }
}

fn rank(pods: &[&PodView]) -> Vec<String> {
    pick_from(pods, pods.len())
}

fn pick_from(pods: &[&PodView], n: usize) -> Vec<String> {
    let owned: Vec<PodView> = pods.iter().map(|p| (*p).clone()).collect();
    pick_victims(&owned, n)
}

/// The Deployment status the observed pods imply. Conditions keep their timestamps from
/// `previous` when status, reason and message are unchanged, so an unchanged world yields a
/// status equal to `previous` (and no patch).
pub fn deployment_status(
    name: &str,
    generation: Option<i64>,
    state: &ReplicaState<'_>,
    previous: Option<&DeploymentStatus>,
    now: Timestamp,
) -> DeploymentStatus {
    let desired = state.desired.max(0);
    let replicas = state.pods.len() as i32;
    let updated = state.pods.iter().filter(|p| p.is_current(state.current_hash)).count() as i32;
    let ready = state.pods.iter().filter(|p| p.ready()).count() as i32;
    let available = state.pods.iter().filter(|p| p.available(state.min_ready, now)).count() as i32;
    let max_unavailable = match state.strategy {
        Strategy::RollingUpdate { max_unavailable, .. } if desired > 0 => max_unavailable,
        _ => 0,
    };
    let has_minimum = available >= desired - max_unavailable;
    let complete = updated == desired && replicas == desired && available == desired;

    let previous_conditions = previous.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
    let available_condition = condition(
        previous_conditions,
        "Available",
        has_minimum,
        if has_minimum { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
        if has_minimum {
            "Deployment has minimum availability.".to_string()
        } else {
            "Deployment does not have minimum availability.".to_string()
        },
        now,
    );
    let progressing_condition = condition(
        previous_conditions,
        "Progressing",
        true,
        if complete { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" },
        if complete { format!("Deployment {name:?} has successfully progressed.") } else { format!("Deployment {name:?} is progressing.") },
        now,
    );

    DeploymentStatus {
        observed_generation: generation,
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((desired.max(replicas) - available).max(0)),
        conditions: Some(vec![available_condition, progressing_condition]),
        collision_count: previous.and_then(|s| s.collision_count),
        terminating_replicas: previous.and_then(|s| s.terminating_replicas),
    }
}

fn condition(
    previous: &[DeploymentCondition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    let status = if status { "True" } else { "False" }.to_string();
    let before = previous.iter().find(|c| c.type_.as_deref() == Some(type_));
    let same_status = before.is_some_and(|c| c.status.as_deref() == Some(status.as_str()));
    let unchanged =
        same_status && before.is_some_and(|c| c.reason.as_deref() == Some(reason) && c.message.as_deref() == Some(message.as_str()));
    let last_transition_time = match before {
        Some(c) if same_status => c.last_transition_time.clone().or(Some(Time(now))),
        _ => Some(Time(now)),
    };
    let last_update_time = match before {
        Some(c) if unchanged => c.last_update_time.clone().or(Some(Time(now))),
        _ => Some(Time(now)),
    };
    DeploymentCondition {
        type_: Some(type_.to_string()),
        status: Some(status),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_transition_time,
        last_update_time,
    }
}

/// A stable, short hash of a pod template (the `pod-template-hash` label value): FNV-1a over
/// the template's canonical JSON, spelled in [`NAME_ALPHABET`].
pub fn template_hash(template: &PodTemplateSpec) -> String {
    // k8s-openapi serializes struct fields in declaration order and maps as BTreeMaps, so the
    // JSON is canonical for a given template.
    let json = serde_json::to_vec(template).unwrap_or_default();
    let mut hash: u32 = 0x811c_9dc5;
    for byte in json {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let mut out = String::new();
    let base = NAME_ALPHABET.len() as u32;
    let mut rest = hash;
    loop {
        out.push(NAME_ALPHABET[(rest % base) as usize] as char);
        rest /= base;
        if rest == 0 {
            break;
        }
    }
    out
}

/// Delay before restarting a crashed container, kubelet style: `initial`, doubling per crash,
/// capped at `max`. A container that ran for at least twice the cap before crashing starts
/// over at `initial`.
pub fn next_crash_backoff(previous: Option<Duration>, initial: Duration, max: Duration, ran_for: Duration) -> Duration {
    match previous {
        Some(prev) if ran_for < max.saturating_mul(2) => prev.saturating_mul(2).min(max),
        _ => initial.min(max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn pod(name: &str) -> PodView {
        PodView {
            name: name.into(),
            uid: format!("uid-{name}"),
            scheduled: true,
            phase: PodPhaseRank::Running,
            ready_since: Some(ts(0)),
            deletion_cost: 0,
            restarts: 0,
            created: Some(ts(0)),
            template_hash: Some("h1".into()),
        }
    }

    fn with(name: &str, f: impl FnOnce(&mut PodView)) -> PodView {
        let mut p = pod(name);
        f(&mut p);
        p
    }

    #[test]
    fn victims_ranked_like_the_replicaset_controller() {
        struct Case {
            name: &'static str,
            pods: Vec<PodView>,
            n: usize,
            expected: Vec<&'static str>,
        }
        let cases = vec![
            Case {
                name: "not ready before ready",
                pods: vec![pod("a"), with("b", |p| p.ready_since = None), pod("c")],
                n: 1,
                expected: vec!["b"],
            },
            Case {
                name: "unscheduled before scheduled",
                pods: vec![pod("a"), with("b", |p| p.scheduled = false)],
                n: 1,
                expected: vec!["b"],
            },
            Case {
                name: "pending before running even if both not ready",
                pods: vec![
                    with("a", |p| p.ready_since = None),
                    with("b", |p| {
                        p.ready_since = None;
                        p.phase = PodPhaseRank::Pending;
                    }),
                ],
                n: 1,
                expected: vec!["b"],
            },
            Case {
                name: "lower deletion cost first",
                pods: vec![with("a", |p| p.deletion_cost = 100), with("b", |p| p.deletion_cost = -5), with("c", |p| p.deletion_cost = 10)],
                n: 2,
                expected: vec!["b", "c"],
            },
            Case {
                name: "readiness beats deletion cost",
                pods: vec![
                    with("a", |p| p.deletion_cost = -100),
                    with("b", |p| {
                        p.deletion_cost = 1000;
                        p.ready_since = None;
                    }),
                ],
                n: 1,
                expected: vec!["b"],
            },
            Case {
                name: "ready for less time first",
                pods: vec![with("a", |p| p.ready_since = Some(ts(10))), with("b", |p| p.ready_since = Some(ts(50)))],
                n: 1,
                expected: vec!["b"],
            },
            Case {
                name: "more restarts first",
                pods: vec![with("a", |p| p.restarts = 1), with("b", |p| p.restarts = 4), pod("c")],
                n: 2,
                expected: vec!["b", "a"],
            },
            Case {
                name: "newer first",
                pods: vec![with("old", |p| p.created = Some(ts(-100))), with("new", |p| p.created = Some(ts(100))), pod("mid")],
                n: 3,
                expected: vec!["new", "mid", "old"],
            },
            Case { name: "unknown creation time first", pods: vec![pod("a"), with("b", |p| p.created = None)], n: 1, expected: vec!["b"] },
            Case {
                name: "cost beats restarts and age",
                pods: vec![
                    with("a", |p| {
                        p.deletion_cost = 1;
                        p.restarts = 9;
                        p.created = Some(ts(100));
                    }),
                    pod("b"),
                ],
                n: 1,
                expected: vec!["b"],
            },
            Case { name: "n larger than pods", pods: vec![pod("a")], n: 3, expected: vec!["a"] },
            Case { name: "zero victims", pods: vec![pod("a"), pod("b")], n: 0, expected: vec![] },
        ];
        for case in cases {
            assert_eq!(pick_victims(&case.pods, case.n), case.expected, "case: {}", case.name);
        }
    }

    #[test]
    fn deletion_cost_parsing() {
        for (raw, expected) in [(None, 0), (Some("17"), 17), (Some("-3"), -3), (Some(" 8 "), 8), (Some("abc"), 0), (Some("99999999999"), 0)]
        {
            assert_eq!(parse_deletion_cost(raw), expected, "{raw:?}");
        }
    }

    fn state<'a>(desired: i32, pods: &'a [PodView], strategy: Strategy) -> ReplicaState<'a> {
        ReplicaState { desired, current_hash: "h2", strategy, min_ready: Duration::ZERO, pods, terminating: 0, paused: false }
    }

    const ONE_BY_ONE: Strategy = Strategy::RollingUpdate { max_surge: 1, max_unavailable: 0 };

    fn current(name: &str) -> PodView {
        with(name, |p| p.template_hash = Some("h2".into()))
    }

    #[test]
    fn replica_plans() {
        struct Case {
            name: &'static str,
            desired: i32,
            pods: Vec<PodView>,
            strategy: Strategy,
            terminating: usize,
            create: usize,
            delete: Vec<&'static str>,
        }
        let cases = vec![
            Case {
                name: "scale up from nothing",
                desired: 3,
                pods: vec![],
                strategy: ONE_BY_ONE,
                terminating: 0,
                create: 3,
                delete: vec![],
            },
            Case {
                name: "steady",
                desired: 2,
                pods: vec![current("a"), current("b")],
                strategy: ONE_BY_ONE,
                terminating: 0,
                create: 0,
                delete: vec![],
            },
            Case {
                name: "scale down keeps the most expensive",
                desired: 1,
                pods: vec![
                    with("a", |p| {
                        p.template_hash = Some("h2".into());
                        p.deletion_cost = 5;
                    }),
                    with("b", |p| {
                        p.template_hash = Some("h2".into());
                        p.deletion_cost = 50;
                    }),
                    with("c", |p| {
                        p.template_hash = Some("h2".into());
                        p.deletion_cost = 1;
                    }),
                ],
                strategy: ONE_BY_ONE,
                terminating: 0,
                create: 0,
                delete: vec!["c", "a"],
            },
            Case {
                name: "scale to zero",
                desired: 0,
                pods: vec![current("a"), current("b")],
                strategy: ONE_BY_ONE,
                terminating: 1,
                create: 0,
                delete: vec!["a", "b"],
            },
            Case {
                name: "rollout starts with one surge pod",
                desired: 3,
                pods: vec![pod("o1"), pod("o2"), pod("o3")],
                strategy: ONE_BY_ONE,
                terminating: 0,
                create: 1,
                delete: vec![],
            },
            Case {
                name: "rollout waits for the new pod to be ready",
                desired: 3,
                pods: vec![
                    pod("o1"),
                    pod("o2"),
                    pod("o3"),
                    with("n1", |p| {
                        p.template_hash = Some("h2".into());
                        p.ready_since = None;
                    }),
                ],
                strategy: ONE_BY_ONE,
                terminating: 0,
                create: 0,
                delete: vec![],
            },
            Case {
                name: "rollout deletes one old pod once the new one is ready",
                desired: 3,
                pods: vec![pod("o1"), with("o2", |p| p.created = Some(ts(5))), pod("o3"), current("n1")],
                strategy: ONE_BY_ONE,
                terminating: 0,
                create: 0,
                delete: vec!["o2"],
            },
            Case {
                name: "rollout never lowers availability while the new pod is not ready",
                desired: 2,
                pods: vec![pod("o1"), with("o2", |p| p.ready_since = None)],
                strategy: ONE_BY_ONE,
                terminating: 0,
                create: 1,
                delete: vec![],
            },
            Case {
                name: "rollout removes crashed old pods first",
                desired: 2,
                pods: vec![pod("o1"), with("o2", |p| p.ready_since = None), current("n1")],
                strategy: ONE_BY_ONE,
                terminating: 0,
                create: 0,
                delete: vec!["o2"],
            },
            Case {
                name: "rollout finishes",
                desired: 2,
                pods: vec![pod("o1"), current("n1"), current("n2")],
                strategy: ONE_BY_ONE,
                terminating: 0,
                create: 0,
                delete: vec!["o1"],
            },
            Case {
                name: "scale down during rollout",
                desired: 1,
                pods: vec![pod("o1"), pod("o2"), pod("o3")],
                strategy: ONE_BY_ONE,
                terminating: 0,
                create: 0,
                delete: vec!["o1", "o2"],
            },
            Case {
                name: "maxUnavailable lets old pods go before new ones are ready",
                desired: 2,
                pods: vec![pod("o1"), pod("o2")],
                strategy: Strategy::RollingUpdate { max_surge: 0, max_unavailable: 1 },
                terminating: 0,
                create: 0,
                delete: vec!["o1"],
            },
            Case {
                name: "recreate deletes old first",
                desired: 2,
                pods: vec![pod("o1"), pod("o2")],
                strategy: Strategy::Recreate,
                terminating: 0,
                create: 0,
                delete: vec!["o1", "o2"],
            },
            Case {
                name: "recreate waits for old pods to terminate",
                desired: 2,
                pods: vec![],
                strategy: Strategy::Recreate,
                terminating: 2,
                create: 0,
                delete: vec![],
            },
            Case {
                name: "recreate creates once old pods are gone",
                desired: 2,
                pods: vec![],
                strategy: Strategy::Recreate,
                terminating: 0,
                create: 2,
                delete: vec![],
            },
        ];
        for case in cases {
            let plan =
                plan_replicas(&ReplicaState { terminating: case.terminating, ..state(case.desired, &case.pods, case.strategy) }, ts(1000));
            assert_eq!(plan.create, case.create, "create, case: {}", case.name);
            assert_eq!(plan.delete, case.delete, "delete, case: {}", case.name);
        }
    }

    #[test]
    fn paused_deployments_scale_without_rolling() {
        let pods = vec![pod("o1"), with("o2", |p| p.created = Some(ts(5)))];
        let paused = |desired| ReplicaState { paused: true, ..state(desired, &pods, ONE_BY_ONE) };
        let same = plan_replicas(&paused(2), ts(1000));
        assert_eq!(same, ReplicaPlan::default(), "old pods stay while paused");
        let up = plan_replicas(&paused(3), ts(1000));
        assert_eq!(up, ReplicaPlan { create: 1, delete: vec![] });
        let down = plan_replicas(&paused(1), ts(1000));
        assert_eq!(down, ReplicaPlan { create: 0, delete: vec!["o2".to_string()] });
    }

    #[test]
    fn rollout_converges_one_pod_at_a_time() {
        // Simulate the controller loop: every created pod becomes ready on the next round.
        let mut pods: Vec<PodView> = (0..3).map(|i| pod(&format!("o{i}"))).collect();
        let mut created = 0;
        let mut max_total = 0;
        for _round in 0..20 {
            let plan = plan_replicas(&state(3, &pods, ONE_BY_ONE), ts(1000));
            pods.retain(|p| !plan.delete.contains(&p.name));
            for _ in 0..plan.create {
                created += 1;
                pods.push(with(&format!("n{created}"), |p| {
                    p.template_hash = Some("h2".into());
                    p.ready_since = None;
                }));
            }
            max_total = max_total.max(pods.len());
            let status = deployment_status("d", Some(2), &state(3, &pods, ONE_BY_ONE), None, ts(1000));
            assert!(status.available_replicas.unwrap() >= 3, "maxUnavailable 0 holds");
            for p in &mut pods {
                p.ready_since.get_or_insert(ts(999));
            }
        }
        assert_eq!(created, 3);
        assert_eq!(max_total, 4, "never more than one surge pod");
        assert!(pods.iter().all(|p| p.template_hash.as_deref() == Some("h2")));
        assert_eq!(pods.len(), 3);
    }

    #[test]
    fn strategy_defaults_and_percentages() {
        use k8s_openapi::api::apps::v1::{DeploymentStrategy, RollingUpdateDeployment};
        assert_eq!(Strategy::from_spec(None, 4), Strategy::RollingUpdate { max_surge: 1, max_unavailable: 1 });
        assert_eq!(Strategy::from_spec(None, 1), Strategy::RollingUpdate { max_surge: 1, max_unavailable: 0 });
        let recreate = DeploymentStrategy { type_: Some("Recreate".into()), rolling_update: None };
        assert_eq!(Strategy::from_spec(Some(&recreate), 3), Strategy::Recreate);
        let zero = DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(0)),
                max_unavailable: Some(IntOrString::String("0%".into())),
            }),
        };
        assert_eq!(Strategy::from_spec(Some(&zero), 3), Strategy::RollingUpdate { max_surge: 0, max_unavailable: 1 });
    }

    #[test]
    fn status_counts_and_conditions() {
        let pods = vec![
            current("a"),
            with("b", |p| {
                p.template_hash = Some("h2".into());
                p.ready_since = None;
            }),
            pod("old"),
        ];
        let s = deployment_status("web", Some(7), &state(2, &pods, ONE_BY_ONE), None, ts(10));
        assert_eq!(s.observed_generation, Some(7));
        assert_eq!(s.replicas, Some(3));
        assert_eq!(s.updated_replicas, Some(2));
        assert_eq!(s.ready_replicas, Some(2));
        assert_eq!(s.available_replicas, Some(2));
        assert_eq!(s.unavailable_replicas, Some(1));
        let available = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(available.type_.as_deref(), Some("Available"));
        assert_eq!(available.status.as_deref(), Some("True"));

        // Same world later: identical status, timestamps kept, so no patch is needed.
        let again = deployment_status("web", Some(7), &state(2, &pods, ONE_BY_ONE), Some(&s), ts(99));
        assert_eq!(again, s);

        // Losing availability flips the condition and its transition time.
        let none: Vec<PodView> = vec![];
        let down = deployment_status("web", Some(7), &state(2, &none, ONE_BY_ONE), Some(&s), ts(200));
        let available = &down.conditions.as_ref().unwrap()[0];
        assert_eq!(available.status.as_deref(), Some("False"));
        assert_eq!(available.reason.as_deref(), Some("MinimumReplicasUnavailable"));
        assert_eq!(available.last_transition_time, Some(Time(ts(200))));
        assert_eq!(down.unavailable_replicas, Some(2));
    }

    #[test]
    fn min_ready_seconds_delays_availability() {
        let p = with("a", |p| p.ready_since = Some(ts(0)));
        assert!(!p.available(Duration::from_secs(30), ts(10)));
        assert!(p.available(Duration::from_secs(30), ts(30)));
        assert!(p.available(Duration::ZERO, ts(0)));
        assert!(!with("b", |p| p.ready_since = None).available(Duration::ZERO, ts(0)));
    }

    #[test]
    fn template_hash_is_stable_and_template_sensitive() {
        let mut t = PodTemplateSpec::default();
        let h1 = template_hash(&t);
        assert_eq!(h1, template_hash(&t.clone()));
        assert!(h1.bytes().all(|b| NAME_ALPHABET.contains(&b)));
        t.metadata.get_or_insert_default().labels = Some([("app".to_string(), "x".to_string())].into());
        assert_ne!(template_hash(&t), h1);
    }

    #[test]
    fn crash_backoff_doubles_and_caps() {
        let initial = Duration::from_secs(10);
        let max = Duration::from_secs(300);
        let short = Duration::from_secs(1);
        let mut delays = vec![];
        let mut prev = None;
        for _ in 0..8 {
            let d = next_crash_backoff(prev, initial, max, short);
            delays.push(d.as_secs());
            prev = Some(d);
        }
        assert_eq!(delays, vec![10, 20, 40, 80, 160, 300, 300, 300]);
        // A long healthy run resets the backoff.
        assert_eq!(next_crash_backoff(Some(max), initial, max, Duration::from_secs(600)), initial);
    }
}

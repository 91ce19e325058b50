use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvFromSource, EnvVar, LocalObjectReference, PodSecurityContext, ResourceRequirements, SecurityContext, Toleration,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::RetrySpec;

/// A pool of worker processes consuming one RabbitMQ queue per priority class.
///
/// The operator declares the pool's exchange, work queues, retry and dead-letter queues, and owns
/// a Deployment `<name>-workers` running the worker template.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "warren.dev",
    version = "v1alpha1",
    kind = "WorkerPool",
    doc = "A Warren WorkerPool: RabbitMQ queues per priority class and the worker Deployment consuming them.",
    namespaced,
    status = "WorkerPoolStatus",
    shortname = "wp",
    category = "warren",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredReplicas"}"#,
    printcolumn = r#"{"name":"Backlog","type":"integer","jsonPath":".status.autoscaling.backlog"}"#,
    printcolumn = r#"{"name":"InFlight","type":"integer","jsonPath":".status.autoscaling.inFlight"}"#,
    printcolumn = r#"{"name":"Scaling","type":"string","jsonPath":".status.autoscaling.lastScaleReason","priority":1}"#,
    printcolumn = r#"{"name":"Queue","type":"string","jsonPath":".spec.queueType"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPoolSpec {
    /// The worker processes: image, handler command, environment, resources.
    pub workers: WorkerTemplate,
    /// Priority classes this pool serves, highest first. One queue each. A worker always takes a
    /// waiting task of a higher class first; a lower-class task that waited in a worker longer than
    /// `starvationSeconds` goes first, so no class starves. Default `[high, normal, low]`.
    #[serde(default = "default_priorities")]
    #[schemars(length(min = 1, max = 10))]
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q == p))").message("priority classes must be unique"))]
    #[x_kube(validation = Rule::new("self.all(p, p.matches('^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$'))").message("priority class names must be lowercase alphanumeric or '-', at most 32 characters"))]
    pub priorities: Vec<String>,
    /// Seconds a lower-priority task may wait inside a worker before it is taken ahead of higher
    /// ones (anti-starvation). Default 60.
    #[serde(default = "default_starvation_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub starvation_seconds: u32,
    /// RabbitMQ queue type: `classic` or `quorum` (replicated; at-least-once dead-lettering).
    /// Immutable: RabbitMQ cannot change a queue's type.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("queueType is immutable"))]
    pub queue_type: QueueType,
    /// Maximum ready tasks per work queue (`x-max-length`); unset = unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_queue_length: Option<i64>,
    /// What RabbitMQ does when a queue is full. `rejectPublish` (default) makes the operator wait
    /// and retry, so nothing is dropped; `dropHead` discards the oldest task (lossy).
    #[serde(default)]
    pub overflow: Overflow,
    /// Tasks one worker process runs at once (its prefetch per queue). Default 1.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 1000))]
    pub concurrency: u32,
    /// Every task's delivery on its own AMQP channel (prefetch 1, `concurrency` channels per
    /// priority) instead of one channel per priority: a task that outlives the broker's
    /// `consumer_timeout` then takes only itself down (the broker closes that channel), not the
    /// worker's other tasks. Costs a channel per slot and one acknowledgement per task. For pools
    /// whose tasks may run longer than `consumer_timeout`. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub channel_per_task: bool,
    /// Number of worker processes (Deployment replicas). Default 1. Ignored when `autoscaling` is
    /// set: the autoscaler owns the replica count then.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Scale the worker Deployment on queue depth and in-flight work instead of `replicas`.
    /// Pause it with the annotation `warren.dev/autoscaling-paused: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Default retry policy of the pool's Jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Fair shares between the pool's Jobs (docs/flow-control.md): within a priority class, tasks
    /// are admitted to the pool's queues by weighted deficit round-robin over the Jobs'
    /// `fairnessKey`s, so a small Job is not queued behind a huge one. Setting it (or
    /// `rateLimit`) puts the pool under admission: the operator keeps the Jobs' backlog and
    /// feeds the queues only about as fast as the workers start tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fairness: Option<FairnessSpec>,
    /// A rate limit on task starts that holds across all replicas: tasks are admitted to the
    /// queues at most this fast. Throttled tasks wait in the operator — never dropped, no attempt
    /// spent. Retries of failed attempts return through their retry queues and are not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// A circuit breaker on the pool's downstream: when too many attempts fail, no new task
    /// starts (the tasks wait, no attempt spent) until a few probe tasks succeed again. Pool
    /// condition `CircuitOpen`; annotation `warren.dev/circuit: open|closed` forces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerSpec>,
    /// What happens to the RabbitMQ queues when the WorkerPool is deleted: `Retain` (default; the
    /// queues and the tasks in them stay) or `Delete`.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Fair shares of a pool between its Jobs' `fairnessKey`s.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FairnessSpec {
    /// Weight per `fairnessKey` (1–1000; default 1): a key of weight 2 is admitted twice the
    /// tasks of a key of weight 1 while both have a backlog. Keys no Job has yet are fine.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 1000))]
    #[x_kube(validation = Rule::new("self.all(k, self[k] >= 1 && self[k] <= 1000)").message("fairness.weights must be between 1 and 1000"))]
    pub weights: BTreeMap<String, u32>,
    /// At most this many tasks of one `fairnessKey` run or wait in the pool's queues at once;
    /// the others wait in the operator (without occupying a worker slot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_running_per_key: Option<u32>,
}

/// A token bucket on the admission of a pool's tasks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Tasks admitted per second, across every replica (more than 0).
    #[schemars(range(min = 0.001, max = 1000000.0))]
    pub tasks_per_second: f64,
    /// Tasks that may be admitted at once after a quiet spell (default: one second's worth,
    /// at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: Option<u32>,
}

/// When a pool's circuit opens and how it closes again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreakerSpec {
    /// The circuit opens when more than this share of the attempts finished in the window
    /// failed (0 < ratio ≤ 1).
    #[schemars(range(min = 0.001, max = 1.0))]
    pub failure_ratio: f64,
    /// …and at least this many attempts finished in the window (default 10).
    #[serde(default = "default_min_tasks")]
    #[schemars(range(min = 1, max = 1000000))]
    pub min_tasks: u32,
    /// The sliding window of finished attempts (default 60).
    #[serde(default = "default_window_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub window_seconds: u32,
    /// How long the circuit stays open before it lets probe tasks through (default 30).
    #[serde(default = "default_open_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub open_seconds: u32,
    /// Probe tasks let through when half-open: all succeed, the circuit closes; one fails, it
    /// opens again (default 1).
    #[serde(default = "default_half_open_tasks")]
    #[schemars(range(min = 1, max = 1000))]
    pub half_open_tasks: u32,
}

fn default_min_tasks() -> u32 {
    10
}
fn default_window_seconds() -> u32 {
    60
}
fn default_open_seconds() -> u32 {
    30
}
fn default_half_open_tasks() -> u32 {
    1
}

/// Annotation that forces a pool's circuit `open` or `closed` (any other value, or none: the
/// breaker decides).
pub const CIRCUIT_ANNOTATION: &str = "warren.dev/circuit";

impl WorkerPoolSpec {
    /// Whether the pool's Jobs are admitted by the operator (fair shares, a rate limit, or a
    /// circuit breaker, which stops admission while open).
    pub fn flow_controlled(&self) -> bool {
        self.fairness.is_some() || self.rate_limit.is_some() || self.circuit_breaker.is_some()
    }
}

/// Annotation that freezes the autoscaler at the current replica count while `"true"`.
pub const AUTOSCALING_PAUSED_ANNOTATION: &str = "warren.dev/autoscaling-paused";

/// How the operator scales a pool's workers. Every field has a default that works untuned:
/// scale from zero on the first waiting task, up at once to what the backlog needs, down after
/// 30 s of lower demand, to zero after 60 s without work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must be <= maxReplicas"))]
pub struct AutoscalingSpec {
    /// Fewest worker processes. 0 (default) scales the pool to zero when it has no work.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    /// Most worker processes. Default 10.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// A pool at zero starts when more than this many tasks wait (summed over its priority
    /// queues). Default 0: the first waiting task starts a worker.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub activation_backlog: i64,
    /// Tasks (waiting plus running) one worker should have. Default: the pool's `concurrency`, so
    /// every waiting task gets a slot. Higher values run fewer workers and let tasks wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub target_tasks_per_replica: Option<i32>,
    /// Instead of (or with) a tasks-per-replica target: run enough workers to empty the backlog
    /// within this many seconds while keeping up with arrivals, using the service time measured
    /// from the workers' reports. When both targets are set the larger replica count wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub target_drain_seconds: Option<i32>,
    /// Seconds between two observations and decisions. Default 2.
    #[serde(default = "default_poll_interval_seconds")]
    #[schemars(range(min = 1, max = 300))]
    pub poll_interval_seconds: i32,
    /// Limits on adding workers. Default: no stabilization window, no step limit (the backlog is
    /// exact, so the operator goes straight to what it needs, up to `maxReplicas`).
    #[serde(default)]
    pub scale_up: ScalingRules,
    /// Limits on removing workers. Default: a 30 s stabilization window (the highest
    /// recommendation of the last 30 s wins), no step limit.
    #[serde(default)]
    pub scale_down: ScalingRules,
    /// Seconds without any waiting or running task before the pool goes from its last worker to
    /// zero (only when `minReplicas` is 0). Default 60.
    #[serde(default = "default_scale_to_zero_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_to_zero_seconds: i32,
}

/// Stabilization window and step limit of one scaling direction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// Seconds of recommendations considered: scaling up takes the lowest recommendation of the
    /// window, scaling down the highest, so a short spike or dip does not move the pool. Default
    /// 0 for `scaleUp`, 30 for `scaleDown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_seconds: Option<i32>,
    /// Most workers added or removed in one decision (every `pollIntervalSeconds`). Unset = no
    /// limit. With `maxStepPercent` too, the larger step is allowed (like the HPA's `Max` policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_step_pods: Option<i32>,
    /// Most workers added or removed in one decision, as a percentage of the current count
    /// (rounded up). Unset = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_step_percent: Option<i32>,
}

/// What the autoscaler last saw and decided.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// Tasks ready in the pool's work queues (AMQP passive declares), summed over priorities.
    #[serde(default)]
    pub backlog: i64,
    /// Ready tasks per priority class, highest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backlog_by_priority: Vec<PriorityBacklog>,
    /// Tasks running in the pool's workers (their heartbeats).
    #[serde(default)]
    pub in_flight: i64,
    /// Worker processes heard from recently.
    #[serde(default)]
    pub reporting_workers: i32,
    /// Tasks per second the operator published to the pool (last poll interval), as a decimal
    /// string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival_rate: Option<String>,
    /// Tasks per second the pool's workers finished (last poll interval), as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_rate: Option<String>,
    /// Deployment replicas the autoscaler found.
    #[serde(default)]
    pub current_replicas: i32,
    /// When the autoscaler last changed the replica count (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// Why it last changed the replica count (a stable reason, e.g. `Backlog`, `Idle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
    /// Why the current count is what it is, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Tasks the pool's workers returned to the queue because they were shut down mid-task,
    /// summed over the workers heard from since the operator started (0 when scale-down only
    /// removes idle workers).
    #[serde(default)]
    pub interrupted_total: i64,
    /// Tasks the pool's workers finished, summed over the workers heard from since the operator
    /// started.
    #[serde(default)]
    pub completed_total: i64,
}

/// Ready tasks of one priority queue.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PriorityBacklog {
    /// The priority class.
    pub priority: String,
    /// Tasks ready in its queue.
    pub ready: i64,
}

/// The worker processes of a pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerTemplate {
    /// Container image. Default: the operator's worker image (the `warren-worker` image of the
    /// operator's own version, chart value `workerImage`), which runs `handler` once per task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,
    /// Container entrypoint override, for images built on the Rust SDK. Default: the image's
    /// `warren-worker` entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(max = 16384)))]
    pub command: Option<Vec<String>>,
    /// The command `warren-worker` runs per task: payload on stdin, task facts in `WARREN_*`
    /// environment variables, exit code 0 = success, 65 = permanent failure, other = retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(max = 16384)))]
    pub handler: Option<Vec<String>>,
    /// Extra environment variables of the worker container (as in a PodSpec: `value` or
    /// `valueFrom` a Secret, a ConfigMap, a field or a resource).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub env: Vec<EnvVar>,
    /// The Secret (in the pool's namespace) holding the workers' broker URI, instead of the one
    /// the operator writes for the pool (`<pool>-warren-broker`, from the operator's worker URI).
    /// Workers read it through `secretKeyRef`: the URI never appears in the Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_secret_ref: Option<BrokerSecretRef>,
    /// Whole Secrets or ConfigMaps as environment variables of the worker container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub env_from: Vec<EnvFromSource>,
    /// Volumes of the worker pod (a Secret with the handler's own credentials, a ConfigMap, a
    /// PVC, …). A volume named `tmp` replaces the default `emptyDir` behind `/tmp`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub volumes: Vec<Volume>,
    /// Where the worker container mounts them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub volume_mounts: Vec<VolumeMount>,
    /// The worker pod's service account. Workers never call the Kubernetes API; give one for
    /// the handler's own use (e.g. cloud workload identity), with `automountServiceAccountToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    /// Mount the service account's token. Default false: workers never call the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
    /// Secrets for pulling the worker image from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Node labels the worker pods must run on (a GPU or spot node pool).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the worker pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tolerations: Vec<Toleration>,
    /// Node and pod (anti-)affinity of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the worker pods spread over zones or nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// PriorityClass of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Extra labels of the worker pods. Warren's own labels (`app.kubernetes.io/*`,
    /// `warren.dev/pool`) win over these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub pod_labels: BTreeMap<String, String>,
    /// Annotations of the worker pods (a service mesh, a log shipper, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub pod_annotations: BTreeMap<String, String>,
    /// Compute resources of the worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Seconds a worker gets after SIGTERM to finish the tasks it runs. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub termination_grace_period_seconds: Option<i64>,
    /// The worker container's security context. Default: the restricted Pod Security Standard
    /// (no privilege escalation, all capabilities dropped, read-only root filesystem with an
    /// `emptyDir` at `/tmp`, non-root). Given, it replaces the default as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    /// The worker pod's security context. Default: `runAsNonRoot`, uid/gid/fsGroup 65532 (the
    /// images' user), seccomp `RuntimeDefault`. Given, it replaces the default as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security_context: Option<PodSecurityContext>,
}

/// A key of a Secret in the pool's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the AMQP URI (or a cluster's comma-separated URIs). Default `url`.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_secret_key() -> String {
    "url".into()
}

/// RabbitMQ queue type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// RabbitMQ overflow behaviour of a full work queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Overflow {
    #[default]
    RejectPublish,
    DropHead,
}

impl Overflow {
    /// The `x-overflow` queue argument.
    pub fn as_amqp(self) -> &'static str {
        match self {
            Overflow::RejectPublish => "reject-publish",
            Overflow::DropHead => "drop-head",
        }
    }
}

/// What deleting a WorkerPool does to its RabbitMQ queues.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Delete,
}

/// What the operator observed of the pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPoolStatus {
    /// Worker processes that exist (Deployment `status.replicas`).
    #[serde(default)]
    pub replicas: i32,
    /// Worker processes that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The work queues, highest priority first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<String>,
    /// The dead-letter queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_queue: Option<String>,
    /// Retry-tier queues the pool's Jobs may use, by delay in milliseconds (recorded before a
    /// Job's tasks are enqueued; workers declare them on first use). Deleted with the pool under
    /// `deletionPolicy: Delete`. Only grows.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retry_queues: BTreeMap<String, String>,
    /// `Ready`: topology declared and Deployment applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Replicas the pool should have: `spec.replicas`, or the autoscaler's decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// The autoscaler's view; absent without `spec.autoscaling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
    /// Under flow control (`fairness`, `rateLimit` or `circuitBreaker` set): the
    /// tasks waiting to start per `fairnessKey`, the biggest 10 named and the rest summed.
    /// Written by the admission loop at most every 10 s while it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<PoolBacklog>,
}

/// The tasks of a pool waiting to start (held by flow control, or admitted and still queued),
/// per `fairnessKey`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolBacklog {
    /// Every waiting task of the pool.
    #[serde(default)]
    pub total_tasks: u64,
    /// The keys with the most waiting tasks (at most 10), most first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyBacklog>,
    /// Keys with waiting tasks beyond those listed.
    #[serde(default)]
    pub other_keys: u64,
    /// Their waiting tasks.
    #[serde(default)]
    pub other_tasks: u64,
}

/// One `fairnessKey`'s waiting tasks.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyBacklog {
    /// The `fairnessKey` (a Job without one is its own key, its name).
    pub key: String,
    /// Its Jobs' tasks waiting to start.
    pub tasks: u64,
}

fn default_priorities() -> Vec<String> {
    vec!["high".into(), "normal".into(), "low".into()]
}
fn default_starvation_seconds() -> u32 {
    60
}
fn default_concurrency() -> u32 {
    1
}
fn default_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    10
}
fn default_poll_interval_seconds() -> i32 {
    2
}
fn default_scale_to_zero_seconds() -> i32 {
    60
}

impl WorkerPool {
    /// Name of the Deployment the operator owns for this pool.
    pub fn deployment_name(&self) -> String {
        format!("{}-workers", kube::ResourceExt::name_any(self))
    }
}

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
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
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".spec.replicas"}"#,
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
    /// Number of worker processes (Deployment replicas). Default 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Default retry policy of the pool's Jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// What happens to the RabbitMQ queues when the WorkerPool is deleted: `Retain` (default; the
    /// queues and the tasks in them stay) or `Delete`.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// The worker processes of a pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerTemplate {
    /// Container image. The default `warren-worker` runs `handler` once per task.
    #[serde(default = "default_image")]
    pub image: String,
    /// Container entrypoint override, for images built on the Rust SDK. Default: the image's
    /// `warren-worker` entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// The command `warren-worker` runs per task: payload on stdin, task facts in `WARREN_*`
    /// environment variables, exit code 0 = success, 65 = permanent failure, other = retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub handler: Option<Vec<String>>,
    /// Extra environment variables of the worker container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Compute resources of the worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Seconds a worker gets after SIGTERM to finish the tasks it runs. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub termination_grace_period_seconds: Option<i64>,
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
fn default_image() -> String {
    "warren-worker".into()
}

impl WorkerPool {
    /// Name of the Deployment the operator owns for this pool.
    pub fn deployment_name(&self) -> String {
        format!("{}-workers", kube::ResourceExt::name_any(self))
    }
}

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{IndexValues, RetrySpec};

/// Work for a WorkerPool: one task (`payload`), one task per element of `items`, or
/// `completions` indexed tasks sharing one payload.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "warren.dev",
    version = "v1alpha1",
    kind = "Job",
    doc = "A Warren Job: tasks queued on a WorkerPool, with their outcome counted exactly in its status.",
    namespaced,
    status = "JobStatus",
    shortname = "wjob",
    category = "warren",
    printcolumn = r#"{"name":"Pool","type":"string","jsonPath":".spec.poolRef"}"#,
    printcolumn = r#"{"name":"Priority","type":"string","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Done","type":"string","jsonPath":".status.completions"}"#,
    printcolumn = r#"{"name":"Retries","type":"integer","jsonPath":".status.retries"}"#,
    printcolumn = r#"{"name":"Waiting","type":"string","jsonPath":".status.waiting.reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!(has(self.items) && has(self.payload))").message("set either items or payload, not both"))]
#[x_kube(validation = Rule::new("!(has(self.items) && has(self.completions))").message("set either items or completions, not both"))]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    /// Name of the WorkerPool (same namespace) that runs the tasks. The Job waits, with condition
    /// `Ready=False` reason `PoolNotFound`, until it exists.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("poolRef is immutable"))]
    pub pool_ref: String,
    /// Priority class, one of the pool's `priorities`. Default `normal`.
    #[serde(default = "default_priority")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("priority is immutable"))]
    pub priority: String,
    /// The tasks: their input and how each runs (the fields a Workflow's job template shares).
    #[serde(flatten)]
    pub tasks: JobTasks,
    /// Stops the Job without deleting it: no further task is enqueued, workers drop its queued
    /// tasks and cancel its running ones (counted in `status.cancelled`), and the
    /// `activeDeadlineSeconds` clock stops. Setting it back to false re-enqueues every task that
    /// was dropped and not finished. Like `suspend` of a Kubernetes Job. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// When to start (RFC 3339, e.g. `2026-12-07T02:00:00Z`): nothing is enqueued before, and the
    /// Job waits `Pending` with condition `Ready=False`, reason `DelayedUntil`. A time in the past
    /// starts at once. Read until the Job starts; changing it later changes nothing. The
    /// `activeDeadlineSeconds` clock starts with the Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("format" = "date-time"))]
    pub start_at: Option<String>,
    /// Seconds the Job may be active (not suspended), counted from when the operator accepted it
    /// and restarted at each resume. Past it the remaining tasks are cancelled and the Job ends
    /// `Failed` with reason `DeadlineExceeded`. Like `activeDeadlineSeconds` of a Kubernetes Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub active_deadline_seconds: Option<u64>,
    /// How many failed tasks the Job tolerates. Default: none (any failed task fails the Job once
    /// all tasks have finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<FailurePolicy>,
    /// Deduplicates Jobs: of the Jobs in a namespace with the same key, only the oldest runs; the
    /// others enqueue nothing and report it (condition `Ready=False`, reason `DuplicateOf`,
    /// phase mirroring the original's). Deleting the original frees the key. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("idempotencyKey is immutable"))]
    pub idempotency_key: Option<String>,
    /// What the operator does when it notices that the broker lost some of the Job's queued
    /// tasks (a purged or deleted queue, `overflow: dropHead`, broker data loss): `Requeue`
    /// (default) enqueues the Job's queued tasks again — a copy that was not lost runs at most
    /// once more and is counted once — or `Fail` ends the Job `Failed`, reason `TasksLost`.
    #[serde(default, skip_serializing_if = "OnLostTasks::is_default")]
    pub on_lost_tasks: OnLostTasks,
    /// Which fair share of its pool the Job draws on, when the pool sets `fairness` (1–64
    /// characters; default: the Job's own name, so each Job has its own share). Jobs with the
    /// same key share one (a team, a customer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub fairness_key: Option<String>,
    /// At most this many of the Job's tasks run or wait in the pool's queues at once; the others
    /// wait in the operator, occupying no worker slot (status.waiting says `ConcurrencyLimited`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_running: Option<u32>,
    /// Completion events: a signed CloudEvents 1.0 POST to each webhook when the Job ends in
    /// one of its `on` phases, delivered at least once, recorded in `status.notifications`
    /// (docs/notifications.md). A receiver that fails never changes the Job's phase.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(validation = Rule::new("self.all(n, self.exists_one(m, m.webhook.url == n.webhook.url))").message("notify webhook urls must be unique"))]
    pub notify: Vec<super::Notification>,
}

/// The task fields of a Job: what its tasks are (`payload`, `items` or `completions`) and how
/// each runs. Flattened into [`JobSpec`] and into the Workflow's `JobTemplate`, so both carry
/// the same fields under the same names; the template documents its own `{{...}}` templating
/// (see `crd::workflow`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobTasks {
    /// The input of a single task, or the shared input of `completions` tasks. Any JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json")]
    pub payload: Option<serde_json::Value>,
    /// One task per element, with the element as its payload and its position as index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json_list")]
    pub items: Option<Vec<serde_json::Value>>,
    /// Number of indexed tasks sharing `payload` (index 0..completions-1 is passed to the handler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub completions: Option<u32>,
    /// Selects the handler in SDK workers that register several task types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub task_type: Option<String>,
    /// Retry policy; fields set here override the pool's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Seconds one attempt may run before the worker cancels it (it then fails and is retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub timeout_seconds: Option<u64>,
}

/// See [`JobSpec::on_lost_tasks`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OnLostTasks {
    #[default]
    Requeue,
    Fail,
}

impl OnLostTasks {
    fn is_default(&self) -> bool {
        *self == OnLostTasks::Requeue
    }
}

/// When failed tasks fail the Job, like `maxFailedIndexes` of a Kubernetes Indexed Job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    /// Tasks that may fail for good (dead-lettered) with the Job still ending `Succeeded`.
    /// Default 0: one failed task makes the Job `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub max_failed_tasks: Option<u32>,
    /// True: the Job fails as soon as more than `maxFailedTasks` tasks failed, and its remaining
    /// tasks are cancelled (reason `MaxFailedTasksExceeded`). Default false: every task gets
    /// its attempts and the phase is decided when all have finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_fast: Option<bool>,
}

impl FailurePolicy {
    /// The tolerated number of failed tasks of a Job.
    pub fn allowed_failures(policy: Option<&FailurePolicy>) -> u32 {
        policy.and_then(|p| p.max_failed_tasks).unwrap_or(0)
    }
}

fn default_priority() -> String {
    "normal".into()
}

fn any_json(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

fn any_json_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": 100000,
        "items": { "x-kubernetes-preserve-unknown-fields": true }
    })
}

/// Lifecycle phase of a Job, for humans; tools should read `conditions`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum JobPhase {
    /// Not yet enqueued (waiting for its pool, or invalid).
    #[default]
    Pending,
    /// Tasks are in the queue; none has started.
    Queued,
    /// At least one task started or finished.
    Running,
    /// `spec.suspend` is true: nothing is enqueued or run until it is set back to false.
    Suspended,
    /// Every task finished, and no more failed than `failurePolicy.maxFailedTasks` allows.
    Succeeded,
    /// More tasks failed than `failurePolicy.maxFailedTasks` allows, the deadline passed, or
    /// the Job is invalid.
    Failed,
}

impl JobPhase {
    /// The phase as the API spells it (a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::Pending => "Pending",
            JobPhase::Queued => "Queued",
            JobPhase::Running => "Running",
            JobPhase::Suspended => "Suspended",
            JobPhase::Succeeded => "Succeeded",
            JobPhase::Failed => "Failed",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, JobPhase::Succeeded | JobPhase::Failed)
    }
}

/// Progress of a Job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobProgress {
    /// 0-100. For one task, what its handler reported; else the share of finished tasks.
    pub percent: u8,
    /// The handler's last progress message, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why a Job's tasks wait to start (`status.waiting`): the one reason that holds them now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobWaiting {
    /// A stable reason: `DelayedUntil`, `PoolNotFound`, `PoolNotReady`, `PriorityNotServed`
    /// (nothing enqueued yet), `BehindHigherPriority`, `ScalingUp`, `PoolAtMaxReplicas`, `Queued`
    /// (tasks in the queue).
    pub reason: String,
    /// The same in words, with the numbers.
    pub message: String,
    /// About how many tasks of the pool start before this Job's next one: those of higher
    /// priority classes, and those of the same class that Jobs created earlier have queued (the
    /// operator's own count; a queue is first-in first-out within a class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_ahead: Option<u64>,
    /// Since when the Job waits for this reason.
    pub since: Time,
}

/// How an attempt recorded in `status.recentAttempts` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AttemptOutcome {
    /// The handler succeeded.
    Succeeded,
    /// The attempt failed and the task was scheduled for another one.
    Retrying,
    /// The attempt failed and the task went to the pool's dead-letter queue.
    DeadLettered,
}

/// One finished attempt of a task: what `warren logs` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    /// The task's index.
    pub index: u32,
    /// The attempt (1 for the first).
    pub attempt: u32,
    pub outcome: AttemptOutcome,
    /// The failure's message (at most 1 KiB); for a command handler it ends with its last
    /// stderr lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The end of what the attempt printed (at most 2 KiB): a command's stdout lines that are
    /// not protocol lines and its stderr, or what an SDK handler wrote with `ctx.log`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// When the worker reported the end of the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

/// What is true of a Job, as far as the operator has heard from the broker and the workers.
/// Counts of finished tasks are exact (de-duplicated by task index); `queued` and `running` are
/// live estimates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    #[serde(default)]
    pub phase: JobPhase,
    /// Number of tasks.
    #[serde(default)]
    pub total: u32,
    /// Tasks published to RabbitMQ and confirmed, in index order (resume point of the enqueue).
    #[serde(default)]
    pub enqueued: u32,
    /// Tasks waiting in a queue (enqueued, not running, not finished).
    #[serde(default)]
    pub queued: u32,
    /// Tasks a worker is executing.
    #[serde(default)]
    pub running: u32,
    /// Tasks that succeeded.
    #[serde(default)]
    pub succeeded: u32,
    /// Tasks that failed for good.
    #[serde(default)]
    pub failed: u32,
    /// Attempts that failed and were retried, over all tasks.
    #[serde(default)]
    pub retries: u64,
    /// Tasks parked in the pool's dead-letter queue.
    #[serde(default)]
    pub dead_lettered: u32,
    /// Unfinished tasks that workers dropped or cancelled because the Job was suspended or ended
    /// early; a resume re-enqueues them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cancelled: u32,
    /// `succeeded/total`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completions: Option<String>,
    /// Indexes of succeeded tasks, compressed like Kubernetes Indexed Jobs: `"0-41,43"`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub succeeded_indexes: String,
    /// Indexes of failed tasks, same form.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failed_indexes: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<JobProgress>,
    /// When the first task started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the last task finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// `Ready` (accepted and enqueued or enqueuing), `Complete`, `Failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The value of the annotation `warren.dev/replay-dead-letters` the operator last acted on
    /// (it replayed the Job's dead letters then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_token: Option<String>,
    /// The JSON result its handler returned, for a Job of a single task that succeeded (at most
    /// 16 KiB; a handler returning more fails its task with reason `result-too-large`). Workflow
    /// steps read it through `{{steps.<name>.result}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json")]
    pub result: Option<serde_json::Value>,
    /// Why tasks of the Job wait to start, while some do; absent when none waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<JobWaiting>,
    /// The last attempts that failed (at most 10) and that succeeded and printed output (at most
    /// 5), oldest first: their errors and the end of their output (`warren logs`). The rest is
    /// in the workers' logs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_attempts: Vec<AttemptRecord>,
    /// Delivery of the completion events of `spec.notify`, per destination and phase: attempts,
    /// when delivered, the last error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<super::NotificationStatus>,
    /// Book-keeping that lets a restarted operator keep counting exactly; not for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<LedgerSnapshot>,
}

/// The part of the operator's per-Job accounting that is not derivable from the index lists.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LedgerSnapshot {
    /// Retries of tasks that have finished.
    #[serde(default)]
    pub finished_retries: u64,
    /// Highest attempt heard of, per unfinished task index that was retried, grouped by
    /// attempt: `{"2": "0-41,43"}`.
    #[serde(default, skip_serializing_if = "IndexValues::is_empty")]
    pub retrying_attempts: IndexValues,
    /// Replay count per task index sent back from the dead-letter queue and not succeeded
    /// (reports of an earlier run of such a task are stale), grouped by count.
    #[serde(default, skip_serializing_if = "IndexValues::is_empty")]
    pub replay_generations: IndexValues,
    /// Attempt of each unfinished task a worker dropped because the Job was cancelled, grouped
    /// by attempt.
    #[serde(default, skip_serializing_if = "IndexValues::is_empty")]
    pub dropped_attempts: IndexValues,
    /// Milliseconds since the epoch since which the Job is active (accepted, not suspended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_since_ms: Option<u64>,
    /// Why the Job ended before all its tasks finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated: Option<Termination>,
    /// Tasks of the Job the broker lost, as the operator noticed them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<LostTasks>,
}

/// What the operator noticed missing from the broker, and what it did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LostTasks {
    /// Tasks found missing from the pool's queues, summed over every time it happened.
    pub missing: u64,
    /// Tasks enqueued again for it (`onLostTasks: Requeue`).
    pub requeued: u64,
    /// Milliseconds since the epoch of the last time.
    pub at_ms: u64,
}

/// A Job ended early (deadline, failure budget): its remaining tasks are cancelled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Termination {
    /// `DeadlineExceeded` or `MaxFailedTasksExceeded`.
    pub reason: String,
    /// What happened, for humans (also the message of the `Failed` condition).
    pub message: String,
    /// Milliseconds since the epoch.
    pub at_ms: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Job {
    /// Number of tasks the spec describes.
    pub fn task_count(&self) -> u32 {
        let tasks = &self.spec.tasks;
        match (&tasks.items, tasks.completions) {
            (Some(items), _) => items.len() as u32,
            (None, Some(n)) => n,
            (None, None) => 1,
        }
    }

    /// Payload of task `index`.
    pub fn task_payload(&self, index: u32) -> serde_json::Value {
        let tasks = &self.spec.tasks;
        match &tasks.items {
            Some(items) => items.get(index as usize).cloned().unwrap_or_default(),
            None => tasks.payload.clone().unwrap_or(serde_json::Value::Null),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_fields_sit_at_the_top_of_the_spec() {
        let spec = serde_json::json!({
            "poolRef": "p", "priority": "high", "items": [1, {"a": 2}], "taskType": "t",
            "retry": {"maxAttempts": 3}, "timeoutSeconds": 5, "suspend": true,
        });
        let parsed: JobSpec = serde_json::from_value(spec.clone()).unwrap();
        assert_eq!(parsed.tasks.items, Some(vec![serde_json::json!(1), serde_json::json!({"a": 2})]));
        assert_eq!((parsed.tasks.task_type.as_deref(), parsed.tasks.timeout_seconds), (Some("t"), Some(5)));
        assert_eq!(serde_json::to_value(&parsed).unwrap(), spec, "serializes back to the same shape");

        let defaults: JobSpec = serde_json::from_value(serde_json::json!({"poolRef": "p"})).unwrap();
        assert_eq!((defaults.priority.as_str(), &defaults.tasks), ("normal", &JobTasks::default()));
    }
}

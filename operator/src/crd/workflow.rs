use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::JobTasks;

/// A DAG of Warren Jobs: steps run when their dependencies finished, pass small JSON results to
/// later steps, and a failed Workflow undoes its succeeded steps with their compensations.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "warren.dev",
    version = "v1alpha1",
    kind = "Workflow",
    doc = "A Warren Workflow: a DAG of steps, each run as a Warren Job, with data passing, failure policy, compensations (saga), a finally step and approval gates.",
    namespaced,
    status = "WorkflowStatus",
    shortname = "wf",
    category = "warren",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    /// The steps. A step starts when every step in its `dependsOn` finished and its `when`
    /// condition holds; steps without pending dependencies run in parallel (up to
    /// `parallelism`). Names are unique. Immutable: a Workflow starts as soon as it is created.
    #[schemars(length(min = 1, max = 50))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t.name == s.name))").message("step names must be unique"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("steps are immutable: a Workflow starts when it is created"))]
    pub steps: Vec<WorkflowStep>,
    /// Most Job steps running at once. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub parallelism: Option<u32>,
    /// What a failed step does to the rest: `FailFast` (default) starts no further step (except
    /// those with `when: OnFailure` or `Always`) and cancels running ones by deleting their
    /// Jobs; `Continue` lets independent branches run to completion.
    #[serde(default)]
    pub failure_policy: WorkflowFailurePolicy,
    /// A Job run once every step (and every compensation) finished, whatever the outcome. Its
    /// child Job is `<workflow>-finally`; it fails the Workflow when it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("finally is immutable"))]
    pub finally: Option<JobTemplate>,
    /// Seconds from the Workflow's start after which running steps are cancelled, the rest is
    /// skipped and the Workflow fails with reason `DeadlineExceeded` (compensations and
    /// `finally` still run). Suspended time counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<u64>,
    /// Seconds after the Workflow finished when the operator deletes it (and, through their
    /// owner references, its Jobs). Default: kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<u64>,
    /// While true no new step starts (running ones finish). Set back to false to resume.
    #[serde(default)]
    pub suspend: bool,
    /// Decisions on approval steps, by step name: `Approved` or `Rejected`. The same as the
    /// annotation `warren.dev/approve-<step>: "true"` (or `"false"` to reject).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub approvals: BTreeMap<String, ApprovalDecision>,
    /// Completion events: a signed CloudEvents 1.0 POST to each webhook when the Workflow ends in
    /// one of its `on` phases, delivered at least once, recorded in `status.notifications`
    /// (docs/notifications.md). A receiver that fails never changes the Workflow's phase.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(validation = Rule::new("self.all(n, self.exists_one(m, m.webhook.url == n.webhook.url))").message("notify webhook urls must be unique"))]
    pub notify: Vec<super::Notification>,
}

/// One node of the Workflow's graph.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.kind) && self.kind == 'Approval') || has(self.job)").message("a step of kind Job needs a job template"))]
#[x_kube(validation = Rule::new("!(has(self.kind) && self.kind == 'Approval') || (!has(self.job) && !has(self.compensation))").message("an approval step has no job or compensation"))]
pub struct WorkflowStep {
    /// Unique name: lowercase letters, digits and '-', at most 50 characters. The step's Job is
    /// `<workflow>-<name>`; `finally` is reserved.
    #[schemars(length(min = 1, max = 50), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// `Job` (default): runs `job`. `Approval`: waits for a decision (see `approval`).
    #[serde(default)]
    pub kind: StepKind,
    /// Names of the steps that must finish first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub depends_on: Vec<String>,
    /// When the step runs once its dependencies finished: `AllSucceeded` (default), `OnFailure`
    /// (at least one failed), `Always`. Otherwise it is skipped.
    #[serde(default)]
    pub when: RunCondition,
    /// The Job the step runs (kind `Job`). Strings in `payload` may use
    /// `{{steps.<name>.result.<path>}}` to insert an earlier step's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobTemplate>,
    /// A Job that undoes this step. When the Workflow fails, the compensations of the steps
    /// that succeeded run one at a time, in reverse order of completion. Its Job is
    /// `<workflow>-<name>-compensate`; its payload may use this step's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<JobTemplate>,
    /// Settings of an `Approval` step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalSpec>,
}

/// What a step runs: the spec of a Warren Job, plus `itemsFrom`.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = template_task_docs)]
#[x_kube(validation = Rule::new("[has(self.payload), has(self.items), has(self.itemsFrom)].filter(x, x).size() <= 1").message("set at most one of payload, items, itemsFrom"))]
#[x_kube(validation = Rule::new("!(has(self.completions) && (has(self.items) || has(self.itemsFrom)))").message("completions cannot be combined with items or itemsFrom"))]
pub struct JobTemplate {
    /// WorkerPool (same namespace) that runs the tasks.
    #[schemars(length(min = 1, max = 253))]
    pub pool_ref: String,
    /// Priority class, one of the pool's. Default `normal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub priority: Option<String>,
    /// The task fields of the Job, as in its spec; strings in `payload` and `items` may hold
    /// `{{steps.<name>.result.<path>}}` templates, rendered when the Job is created.
    #[serde(flatten)]
    pub tasks: JobTasks,
    /// One task per element of a list result of an earlier step, e.g.
    /// `{{steps.extract.result.rows}}`. An empty list makes the step succeed without a Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    pub items_from: Option<String>,
}

/// `kubectl explain` of the task fields in a template: [`JobTasks`] documents them for a Job;
/// in a template, `payload` and `items` may also hold `{{steps...}}` templates.
fn template_task_docs(schema: &mut schemars::Schema) {
    const DOCS: [(&str, &str); 4] = [
        (
            "payload",
            "The task's input. Any JSON; strings may contain `{{steps.<name>.result.<path>}}`: a string\n\
             that is only the template takes the result's JSON value (number, object, ...), a\n\
             template inside a longer string inserts it as text.",
        ),
        ("items", "One task per element (templates allowed in the elements, as in `payload`)."),
        ("completions", "Number of indexed tasks sharing `payload`."),
        ("timeoutSeconds", "Seconds one attempt may run before the worker cancels it."),
    ];
    let Some(properties) = schema.get_mut("properties").and_then(serde_json::Value::as_object_mut) else { return };
    for (field, doc) in DOCS {
        if let Some(property) = properties.get_mut(field).and_then(serde_json::Value::as_object_mut) {
            property.insert("description".into(), doc.into());
        }
    }
}

/// Settings of an approval step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalSpec {
    /// Seconds to wait for a decision once the step's dependencies are satisfied. Default: wait
    /// forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<u64>,
    /// What a timeout does: `Fail` (default) fails the step, `Skip` skips it (steps that need it
    /// to succeed are skipped too).
    #[serde(default)]
    pub on_timeout: TimeoutAction,
}

/// What an approval step does when nobody decided in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TimeoutAction {
    /// The step fails (and with it the Workflow).
    #[default]
    Fail,
    /// The step is skipped.
    Skip,
}

/// A decision on an approval step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApprovalDecision {
    /// The step succeeds.
    Approved,
    /// The step fails.
    Rejected,
}

/// Kinds of step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StepKind {
    /// Runs a Warren Job.
    #[default]
    Job,
    /// Waits for an approval or rejection.
    Approval,
}

/// When a step runs, given how its dependencies ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RunCondition {
    /// Every dependency succeeded.
    #[default]
    AllSucceeded,
    /// Every dependency finished and at least one failed.
    OnFailure,
    /// Every dependency finished, whatever the outcome.
    Always,
}

/// Failure policies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WorkflowFailurePolicy {
    /// After a failure start nothing more (but `OnFailure`/`Always` steps) and cancel running steps.
    #[default]
    FailFast,
    /// Independent branches keep running; only the failed step's dependents are skipped.
    Continue,
}

fn any_json(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// Lifecycle phase of a Workflow, for humans; tools should read `conditions`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WorkflowPhase {
    /// Not started yet.
    #[default]
    Pending,
    /// Steps are running or waiting.
    Running,
    /// `spec.suspend` is true: no new step starts.
    Suspended,
    /// A step failed; the compensations of the succeeded steps are running.
    Compensating,
    /// Every step succeeded or was skipped (and `finally` succeeded).
    Succeeded,
    /// A step failed, the deadline passed, `finally` failed, or the spec is invalid.
    Failed,
}

impl WorkflowPhase {
    pub fn is_finished(self) -> bool {
        matches!(self, WorkflowPhase::Succeeded | WorkflowPhase::Failed)
    }
}

/// Phase of one step (or compensation, or `finally`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StepPhase {
    /// Waiting for its dependencies (or for `parallelism`, or for the Workflow to resume).
    #[default]
    Pending,
    /// An approval step waiting for a decision.
    Waiting,
    /// Its Job exists and has not finished.
    Running,
    /// Its Job succeeded (or the approval was given).
    Succeeded,
    /// Its Job failed, its template could not be resolved, or the approval was refused or timed out.
    Failed,
    /// Not run: its `when` condition did not hold, or the Workflow stopped first.
    Skipped,
    /// Was running when the Workflow stopped; its Job was deleted.
    Cancelled,
}

impl StepPhase {
    pub fn is_finished(self) -> bool {
        matches!(self, StepPhase::Succeeded | StepPhase::Failed | StepPhase::Skipped | StepPhase::Cancelled)
    }
}

/// What happened to one step (and, in a [`CompensationStatus`], to one compensation; `finally` too).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    pub phase: StepPhase,
    /// Name of its Job, once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// When its Job was created (or an approval started waiting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub started_at: Option<jiff::Timestamp>,
    /// When the operator saw it finish. Compensations run in reverse order of their steps' times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub finished_at: Option<jiff::Timestamp>,
    /// Task attempts the Job ran: finished tasks plus retries (for one task: its attempts).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u64,
    /// Why it is in its phase (failure, skip reason, approval decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The result of its Job (single-task Jobs), as later steps see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json")]
    pub result: Option<serde_json::Value>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Outcome of one compensation: the step it compensates, and the compensation's own run, told
/// the way a step's is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompensationStatus {
    /// The step it compensates.
    pub step: String,
    #[serde(flatten)]
    pub run: StepStatus,
}

/// What is true of a Workflow.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStatus {
    #[serde(default)]
    pub phase: WorkflowPhase,
    /// `finished/total` steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// When the first step started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub started_at: Option<jiff::Timestamp>,
    /// When the Workflow finished (after compensations and `finally`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub finished_at: Option<jiff::Timestamp>,
    /// Per step, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub steps: BTreeMap<String, StepStatus>,
    /// Compensations, in the order they run (reverse completion order of their steps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compensations: Vec<CompensationStatus>,
    /// The `finally` Job, once it is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finally: Option<StepStatus>,
    /// Summary of the outcome, or the problem of an invalid spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Ready` (the spec is valid: false with the exact problem otherwise), `Complete`, `Failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Delivery of the completion events of `spec.notify`, per destination and phase: attempts,
    /// when delivered, the last error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<super::NotificationStatus>,
}

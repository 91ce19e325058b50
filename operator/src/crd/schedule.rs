use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{JobSpec, WorkflowSpec};

/// Runs a Job or a Workflow on a cron schedule. Each run is named after its scheduled time, so a
/// slot fires exactly once, also across operator restarts and leader changes (docs/schedules.md).
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "warren.dev",
    version = "v1alpha1",
    kind = "Schedule",
    doc = "A Warren Schedule: creates a Job or a Workflow at each time of a cron schedule, once per slot.",
    namespaced,
    status = "ScheduleStatus",
    shortname = "wsched",
    category = "warren",
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"TimeZone","type":"string","jsonPath":".spec.timeZone","priority":1}"#,
    printcolumn = r#"{"name":"Suspend","type":"boolean","jsonPath":".spec.suspend"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Last","type":"date","jsonPath":".status.lastScheduleTime"}"#,
    printcolumn = r#"{"name":"Next","type":"string","jsonPath":".status.nextScheduleTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = Rule::new("has(self.jobTemplate) != has(self.workflowTemplate)").message("set exactly one of jobTemplate or workflowTemplate")
)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSpec {
    /// When runs start: five cron fields (`minute hour day-of-month month day-of-week`, e.g.
    /// `30 2 * * 1-5`; names like `MON` and `JAN` allowed; when both day fields are restricted a
    /// day matching either runs, as in cron), a macro (`@yearly`, `@annually`, `@monthly`,
    /// `@weekly`, `@daily`, `@midnight`, `@hourly`), or `@every <duration>` (at least 1 s, e.g.
    /// `@every 90s`, `@every 1h30m`: slots at the multiples of the duration since the Unix epoch,
    /// whatever the time zone). An expression that does not parse sets `Ready=False`, reason
    /// `InvalidSchedule`.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new(r"self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|@every [0-9a-zA-Z. ]+|[^@ ]+( +[^ ]+){4})$')").message("schedule must be five cron fields, a macro such as @hourly, or @every <duration>"))]
    pub schedule: String,
    /// IANA time zone the cron fields are read in (e.g. `Europe/Berlin`). Default `UTC`. A
    /// wall-clock time skipped by a daylight-saving change runs at the first instant after the
    /// gap; a time repeated by one runs once, at its first occurrence. An unknown zone sets
    /// `Ready=False`, reason `UnknownTimeZone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
    /// What a slot does while an earlier run is still active: `Allow` (default) starts another
    /// run beside it; `Forbid` skips the slot (Event `SlotSkipped`); `Replace` cancels the active
    /// runs (deletes them: their remaining tasks are dropped) and starts the new one.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// A slot that could not start within this many seconds of its time (the operator was down,
    /// or slow) is not run late: it is counted as missed (Event `SlotMissed`). Default: no limit
    /// (the catch-up policy alone decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub starting_deadline_seconds: Option<u64>,
    /// What happens to slots that passed without a run (the operator was down, or had no
    /// leader). Default: policy `Latest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catchup: Option<Catchup>,
    /// While true no slot fires (active runs go on); the slots that pass meanwhile are counted as
    /// missed and never run. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// Finished runs that succeeded to keep (older ones are deleted). Default 3.
    #[serde(default = "default_successful_history")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_jobs_history_limit: u32,
    /// Finished runs that failed to keep (older ones are deleted). Default 1.
    #[serde(default = "default_failed_history")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_jobs_history_limit: u32,
    /// The Job each slot creates, named `<schedule>-<unix seconds of the slot>`. Set this or
    /// `workflowTemplate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_template: Option<ScheduledJobTemplate>,
    /// The Workflow each slot creates, named `<schedule>-<unix seconds of the slot>`. Set this
    /// or `jobTemplate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_template: Option<ScheduledWorkflowTemplate>,
}

fn default_successful_history() -> u32 {
    3
}

fn default_failed_history() -> u32 {
    1
}

/// What a Schedule does in a concurrent slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Runs may overlap.
    #[default]
    Allow,
    /// A slot is skipped while a run is active.
    Forbid,
    /// The active runs are cancelled (deleted) and the slot's run starts.
    Replace,
}

impl ConcurrencyPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ConcurrencyPolicy::Allow => "Allow",
            ConcurrencyPolicy::Forbid => "Forbid",
            ConcurrencyPolicy::Replace => "Replace",
        }
    }
}

/// The catch-up of slots that passed without a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Catchup {
    /// `Latest` (default): of the slots that passed, only the latest runs. `All`: every one runs,
    /// oldest first, at most `maxRuns` (the latest ones). `None`: none runs; only slots that come
    /// while an operator leads fire. The others are counted as missed.
    #[serde(default)]
    pub policy: CatchupPolicy,
    /// With `All`: the most slots one catch-up runs (the latest ones). Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_runs: Option<u32>,
}

/// See [`Catchup::policy`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CatchupPolicy {
    /// Only the latest passed slot runs.
    #[default]
    Latest,
    /// Every passed slot runs, at most `maxRuns`.
    All,
    /// No passed slot runs.
    None,
}

impl CatchupPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchupPolicy::Latest => "Latest",
            CatchupPolicy::All => "All",
            CatchupPolicy::None => "None",
        }
    }
}

/// Labels and annotations a run gets (besides the operator's own).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunMetadata {
    /// Labels of each run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations of each run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A Job to create at each slot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledJobTemplate {
    /// Labels and annotations of the Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<RunMetadata>,
    /// The spec of the Job, as in a Job.
    #[schemars(transform = drop_transition_rules)]
    pub spec: JobSpec,
}

/// A Workflow to create at each slot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledWorkflowTemplate {
    /// Labels and annotations of the Workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<RunMetadata>,
    /// The spec of the Workflow, as in a Workflow.
    #[schemars(transform = drop_transition_rules)]
    pub spec: WorkflowSpec,
}

/// A template is edited freely: the `self == oldSelf` (immutability) rules of a Job's or a
/// Workflow's spec belong to the objects, not to the Schedule that makes them.
fn drop_transition_rules(schema: &mut schemars::Schema) {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Array(rules)) = map.get_mut("x-kubernetes-validations") {
                    rules.retain(|r| !r.get("rule").and_then(serde_json::Value::as_str).is_some_and(|r| r.contains("oldSelf")));
                    if rules.is_empty() {
                        map.remove("x-kubernetes-validations");
                    }
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut value = serde_json::Value::from(std::mem::take(schema));
    walk(&mut value);
    *schema = schemars::Schema::try_from(value).expect("a schema stays a schema");
}

/// What is true of a Schedule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatus {
    /// The latest slot the operator dealt with (ran, skipped or counted as missed); slots up to
    /// it are never looked at again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// When the latest run that succeeded finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// The next slot (RFC 3339), absent while suspended or invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// The runs that have not finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<ObjectReference>,
    /// `Ready`: true while the schedule is valid (reason `Scheduled`, or `Suspended`); false
    /// with reason `InvalidSchedule`, `UnknownTimeZone` and a message naming the problem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

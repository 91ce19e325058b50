//! What the Workflow controller should do next, decided from the Workflow (spec and last status),
//! the child Jobs it owns, and the time. Pure: no client, no clock.
//!
//! The graph is validated first ([`validate`]); an invalid Workflow runs nothing. Then, in
//! dependency order: observe the steps that run (child Job phase, approval decisions and
//! timeouts), cancel what the failure policy or the deadline stops, start what became ready
//! (up to `parallelism`, unless suspended). When every step finished and the Workflow failed,
//! the compensations of the succeeded steps run one at a time in reverse completion order;
//! then `finally`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use serde_json::Value;

use super::template::{self, TemplateError};
use crate::crd::{
    ApprovalDecision, CompensationStatus, Job, JobPhase, JobTemplate, RunCondition, StepKind, StepPhase, StepStatus, TimeoutAction,
    Workflow, WorkflowFailurePolicy, WorkflowStep,
};

/// Annotation prefix of approval decisions: `warren.dev/approve-<step>: "true"` approves,
/// `"false"` rejects.
pub const APPROVE_ANNOTATION_PREFIX: &str = "warren.dev/approve-";
/// Label on every child Job: the Workflow's name.
pub const WORKFLOW_LABEL: &str = "warren.dev/workflow";
/// Label on every child Job: the step's name (`finally` for the finally Job).
pub const STEP_LABEL: &str = "warren.dev/step";
/// Label on every child Job: `step`, `compensation` or `finally`.
pub const ROLE_LABEL: &str = "warren.dev/role";

const FINALLY: &str = "finally";
const COMPENSATE_SUFFIX: &str = "-compensate";
/// Longest Workflow name: it is a label value of the child Jobs.
const MAX_WORKFLOW_NAME: usize = 63;

/// The child Job of a step.
pub fn step_job_name(workflow: &str, step: &str) -> String {
    format!("{workflow}-{step}")
}

/// The child Job of a step's compensation.
pub fn compensation_job_name(workflow: &str, step: &str) -> String {
    format!("{workflow}-{step}{COMPENSATE_SUFFIX}")
}

/// The child Job of `finally`.
pub fn finally_job_name(workflow: &str) -> String {
    format!("{workflow}-{FINALLY}")
}

/// Why a Workflow's spec cannot run. The message is the exact problem, shown in `Ready=False`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("step {step:?} depends on unknown step {missing:?}")]
    UnknownDependency { step: String, missing: String },
    #[error("step name {0:?} is used more than once")]
    DuplicateStep(String),
    #[error("step name {name:?} is invalid: {why}")]
    BadStepName { name: String, why: &'static str },
    #[error("step {step:?}: {problem}")]
    BadStep { step: String, problem: String },
    #[error("{at}: {source}")]
    BadTemplate { at: String, source: TemplateError },
    #[error("{at}: {{{{{reference}}}}} refers to step {target:?}, which is not {allowed}")]
    TemplateScope { at: String, reference: String, target: String, allowed: &'static str },
    #[error("the Workflow's name is {0} characters long, over the limit of 63 (it is a label value of its Jobs)")]
    NameTooLong(usize),
}

impl ValidationError {
    /// Stable reason, used in conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            ValidationError::Cycle(_) => "Cycle",
            ValidationError::UnknownDependency { .. } => "UnknownStep",
            ValidationError::DuplicateStep(_) => "DuplicateStep",
            ValidationError::BadStepName { .. } | ValidationError::BadStep { .. } | ValidationError::NameTooLong(_) => "InvalidStep",
            ValidationError::BadTemplate { .. } | ValidationError::TemplateScope { .. } => "BadTemplate",
        }
    }
}

/// A valid graph: steps in an order where every step comes after its dependencies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Graph {
    pub order: Vec<usize>,
    /// Per step (by index), every step it depends on, directly or not.
    pub ancestors: Vec<BTreeSet<String>>,
}

fn check_step_name(name: &str) -> Result<(), &'static str> {
    let valid_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty() || name.len() > 50 {
        Err("it must be 1 to 50 characters")
    } else if !valid_chars || name.starts_with('-') || name.ends_with('-') {
        Err("use lowercase letters, digits and '-', starting and ending with a letter or digit")
    } else if name == FINALLY {
        Err("\"finally\" is reserved for the finally Job")
    } else if name.ends_with(COMPENSATE_SUFFIX) {
        Err("names ending in \"-compensate\" are reserved for compensation Jobs")
    } else {
        Ok(())
    }
}

/// Checks the graph before anything runs: names, dependencies, cycles, templates and what they
/// may refer to (a step's payload: its ancestors' results; a compensation: also its own step's;
/// `finally`: any step's).
pub fn validate(wf: &Workflow) -> Result<Graph, ValidationError> {
    let name_len = wf.name_any().len();
    if name_len > MAX_WORKFLOW_NAME {
        return Err(ValidationError::NameTooLong(name_len));
    }
    let steps = &wf.spec.steps;
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, step) in steps.iter().enumerate() {
        check_step_name(&step.name).map_err(|why| ValidationError::BadStepName { name: step.name.clone(), why })?;
        if index.insert(&step.name, i).is_some() {
            return Err(ValidationError::DuplicateStep(step.name.clone()));
        }
    }
    for step in steps {
        let bad = |problem: &str| ValidationError::BadStep { step: step.name.clone(), problem: problem.into() };
        match step.kind {
            StepKind::Job if step.job.is_none() => return Err(bad("a step of kind Job needs a job template")),
            StepKind::Approval if step.job.is_some() || step.compensation.is_some() => {
                return Err(bad("an approval step has no job or compensation"));
            }
            _ => {}
        }
        for dep in &step.depends_on {
            if !index.contains_key(dep.as_str()) {
                return Err(ValidationError::UnknownDependency { step: step.name.clone(), missing: dep.clone() });
            }
        }
    }

    // Depth-first search along dependsOn; a dependency met again while on the stack closes a cycle.
    let deps: Vec<Vec<usize>> = steps.iter().map(|s| s.depends_on.iter().map(|d| index[d.as_str()]).collect()).collect();
    let mut state = vec![0u8; steps.len()]; // 0 new, 1 on the stack, 2 done
    let mut order = Vec::with_capacity(steps.len());
    fn visit(i: usize, deps: &[Vec<usize>], state: &mut [u8], stack: &mut Vec<usize>, order: &mut Vec<usize>) -> Result<(), Vec<usize>> {
        state[i] = 1;
        stack.push(i);
        for &d in &deps[i] {
            match state[d] {
                1 => {
                    let from = stack.iter().position(|&s| s == d).expect("on the stack");
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(d);
                    return Err(cycle);
                }
                0 => visit(d, deps, state, stack, order)?,
                _ => {}
            }
        }
        stack.pop();
        state[i] = 2;
        order.push(i);
        Ok(())
    }
    for i in 0..steps.len() {
        if state[i] == 0 {
            visit(i, &deps, &mut state, &mut Vec::new(), &mut order)
                .map_err(|cycle| ValidationError::Cycle(cycle.into_iter().map(|i| steps[i].name.clone()).collect()))?;
        }
    }
    let mut ancestors: Vec<BTreeSet<String>> = vec![BTreeSet::new(); steps.len()];
    for &i in &order {
        let mut all = BTreeSet::new();
        for &d in &deps[i] {
            all.insert(steps[d].name.clone());
            all.extend(ancestors[d].iter().cloned());
        }
        ancestors[i] = all;
    }

    for (i, step) in steps.iter().enumerate() {
        if let Some(job) = &step.job {
            check_template(
                &format!("steps[{}].job", step.name),
                job,
                &|target| ancestors[i].contains(target),
                "one of its dependencies (direct or not)",
            )?;
        }
        if let Some(job) = &step.compensation {
            check_template(
                &format!("steps[{}].compensation", step.name),
                job,
                &|target| target == step.name || ancestors[i].contains(target),
                "this step or one of its dependencies",
            )?;
        }
    }
    if let Some(job) = &wf.spec.finally {
        check_template("finally", job, &|target| index.contains_key(target), "a step of this Workflow")?;
    }
    Ok(Graph { order, ancestors })
}

fn check_template(at: &str, job: &JobTemplate, allowed: &dyn Fn(&str) -> bool, scope: &'static str) -> Result<(), ValidationError> {
    let mut refs = Vec::new();
    let wrap = |field: &str| {
        let at = format!("{at}.{field}");
        move |source| ValidationError::BadTemplate { at: at.clone(), source }
    };
    if let Some(payload) = &job.tasks.payload {
        refs.extend(template::references(payload).map_err(wrap("payload"))?.into_iter().map(|r| ("payload", r)));
    }
    for item in job.tasks.items.iter().flatten() {
        refs.extend(template::references(item).map_err(wrap("items"))?.into_iter().map(|r| ("items", r)));
    }
    if let Some(text) = &job.items_from {
        refs.push(("itemsFrom", template::items_from_reference(text).map_err(wrap("itemsFrom"))?));
    }
    for (field, reference) in refs {
        if !allowed(&reference.step) {
            return Err(ValidationError::TemplateScope {
                at: format!("{at}.{field}"),
                reference: reference.to_string(),
                target: reference.step.clone(),
                allowed: scope,
            });
        }
    }
    Ok(())
}

/// Why a valid Workflow failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// `StepFailed`, `DeadlineExceeded` or `FinallyFailed`.
    pub reason: &'static str,
    pub message: String,
}

/// Everything the controller must do, and what the status will say.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Set when the spec is invalid: nothing else is planned.
    pub invalid: Option<ValidationError>,
    /// Child Jobs to create (a create that finds the Job existing is fine).
    pub create: Vec<Job>,
    /// Child Jobs to delete: cancelled steps.
    pub delete: Vec<String>,
    pub steps: BTreeMap<String, StepStatus>,
    pub compensations: Vec<CompensationStatus>,
    pub finally: Option<StepStatus>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// Set once the Workflow failed (it may still be compensating).
    pub failure: Option<Failure>,
    /// True while compensations run.
    pub compensating: bool,
    /// Reconcile again after this long (approval timeout, deadline, TTL), if nothing else happens.
    pub requeue_after: Option<Duration>,
    /// The TTL after finishing passed: delete the Workflow.
    pub delete_workflow: bool,
}

/// What a step's Job says, folded into the step's status.
fn observe_job(status: &mut StepStatus, job: &Job, now: Timestamp) {
    status.job = Some(job.name_any());
    let Some(s) = &job.status else {
        status.phase = StepPhase::Running;
        return;
    };
    status.attempts = u64::from(s.succeeded) + u64::from(s.failed) + s.retries;
    match s.phase {
        JobPhase::Succeeded => {
            status.phase = StepPhase::Succeeded;
            status.result = s.result.clone();
            status.finished_at.get_or_insert(now);
            status.message = None;
        }
        JobPhase::Failed => {
            status.phase = StepPhase::Failed;
            status.finished_at.get_or_insert(now);
            let why = s.conditions.iter().find(|c| c.type_ == "Failed").map(|c| c.message.clone());
            status.message = Some(format!("Job {} failed: {}", job.name_any(), why.unwrap_or_else(|| "no reason given".into())));
        }
        _ => {
            status.phase = StepPhase::Running;
            // Surface why a Job waits (e.g. its pool does not exist).
            status.message = s
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "False")
                .map(|c| format!("Job {}: {}", job.name_any(), c.message));
        }
    }
}

/// An approval decision from the annotation or `spec.approvals`.
pub fn approval_decision(wf: &Workflow, step: &str) -> Option<(ApprovalDecision, &'static str)> {
    let annotation = format!("{APPROVE_ANNOTATION_PREFIX}{step}");
    match wf.annotations().get(&annotation).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("true") => return Some((ApprovalDecision::Approved, "annotation")),
        Some("false") => return Some((ApprovalDecision::Rejected, "annotation")),
        _ => {}
    }
    wf.spec.approvals.get(step).map(|d| (*d, "spec.approvals"))
}

fn at_plus(t: Timestamp, seconds: u64) -> Timestamp {
    t.checked_add(jiff::SignedDuration::from_secs(seconds.min(i64::MAX as u64 / 2) as i64)).unwrap_or(Timestamp::MAX)
}

fn observe_approval(wf: &Workflow, step: &WorkflowStep, status: &mut StepStatus, now: Timestamp, wake: &mut Option<Timestamp>) {
    match approval_decision(wf, &step.name) {
        Some((ApprovalDecision::Approved, by)) => {
            status.phase = StepPhase::Succeeded;
            status.message = Some(format!("approved ({by})"));
            status.finished_at = Some(now);
        }
        Some((ApprovalDecision::Rejected, by)) => {
            status.phase = StepPhase::Failed;
            status.message = Some(format!("rejected ({by})"));
            status.finished_at = Some(now);
        }
        None => {
            let approval = step.approval.clone().unwrap_or_default();
            let (Some(timeout), Some(since)) = (approval.timeout_seconds, status.started_at) else { return };
            let due = at_plus(since, timeout);
            if now >= due {
                status.phase = match approval.on_timeout {
                    TimeoutAction::Fail => StepPhase::Failed,
                    TimeoutAction::Skip => StepPhase::Skipped,
                };
                status.message = Some(format!("no decision within {timeout}s (onTimeout: {:?})", approval.on_timeout));
                status.finished_at = Some(now);
            } else {
                earliest(wake, due);
            }
        }
    }
}

fn earliest(wake: &mut Option<Timestamp>, at: Timestamp) {
    *wake = Some(wake.map_or(at, |w| w.min(at)));
}

/// Builds a child Job from a template; `None` when `itemsFrom` resolved to an empty list.
pub fn child_job(
    wf: &Workflow,
    name: &str,
    role: &str,
    step: &str,
    template: &JobTemplate,
    results: &BTreeMap<String, Value>,
) -> Result<Option<Job>, TemplateError> {
    let lookup = |s: &str| results.get(s);
    let mut tasks = template.tasks.clone();
    if let Some(payload) = &template.tasks.payload {
        tasks.payload = Some(template::render(payload, &lookup)?);
    }
    if let Some(items) = &template.tasks.items {
        tasks.items = Some(items.iter().map(|i| template::render(i, &lookup)).collect::<Result<_, _>>()?);
    }
    if let Some(text) = &template.items_from {
        let items = template::render_items(text, &lookup)?;
        if items.is_empty() {
            return Ok(None);
        }
        tasks.items = Some(items);
    }
    let mut spec = serde_json::to_value(&tasks).expect("task fields serialize");
    spec["poolRef"] = template.pool_ref.clone().into();
    if let Some(priority) = &template.priority {
        spec["priority"] = priority.clone().into();
    }
    let job = serde_json::json!({
        "apiVersion": "warren.dev/v1alpha1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": wf.namespace(),
            "labels": { WORKFLOW_LABEL: wf.name_any(), STEP_LABEL: step, ROLE_LABEL: role },
            "ownerReferences": [{
                "apiVersion": "warren.dev/v1alpha1",
                "kind": "Workflow",
                "name": wf.name_any(),
                "uid": wf.uid().unwrap_or_default(),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": spec,
    });
    Ok(Some(serde_json::from_value(job).expect("a child Job deserializes")))
}

fn names(list: &[&String]) -> String {
    list.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// Decides everything. `children` are the Jobs the Workflow owns, by name.
pub fn plan(wf: &Workflow, children: &BTreeMap<String, Job>, now: Timestamp) -> Plan {
    let graph = match validate(wf) {
        Ok(graph) => graph,
        Err(e) => return Plan { invalid: Some(e), ..Plan::default() },
    };
    let spec = &wf.spec;
    let wf_name = wf.name_any();
    let prev = wf.status.clone().unwrap_or_default();
    let started_at = prev.started_at.unwrap_or(now);
    let mut plan = Plan { started_at: Some(started_at), ..Plan::default() };
    let mut wake: Option<Timestamp> = None;
    let deadline = spec.active_deadline_seconds.map(|s| at_plus(started_at, s));
    let deadline_passed = deadline.is_some_and(|d| now >= d);

    // 1. Observe what runs.
    let mut steps: BTreeMap<String, StepStatus> = BTreeMap::new();
    for &i in &graph.order {
        let step = &spec.steps[i];
        let mut status = prev.steps.get(&step.name).cloned().unwrap_or_default();
        if !status.phase.is_finished() {
            match step.kind {
                StepKind::Job => {
                    if let Some(child) = children.get(&step_job_name(&wf_name, &step.name)) {
                        status.started_at.get_or_insert(now);
                        observe_job(&mut status, child, now);
                    }
                }
                StepKind::Approval if status.phase == StepPhase::Waiting => observe_approval(wf, step, &mut status, now, &mut wake),
                StepKind::Approval => {}
            }
        }
        steps.insert(step.name.clone(), status);
    }
    let results: BTreeMap<String, Value> = steps.iter().filter_map(|(name, s)| Some((name.clone(), s.result.clone()?))).collect();
    let first_failed = |steps: &BTreeMap<String, StepStatus>| {
        graph.order.iter().map(|&i| &spec.steps[i].name).find(|n| steps[*n].phase == StepPhase::Failed).cloned()
    };
    let mut failed_step = first_failed(&steps);
    let fail_fast = spec.failure_policy == WorkflowFailurePolicy::FailFast;
    let mut running = steps
        .iter()
        .filter(|(name, s)| s.phase == StepPhase::Running && spec.steps.iter().any(|t| &t.name == *name && t.kind == StepKind::Job))
        .count() as u32;

    // 2. Cancel what must stop; start what is ready.
    for &i in &graph.order {
        let step = &spec.steps[i];
        let mut status = steps[&step.name].clone();
        let halted_by = if deadline_passed {
            Some("the Workflow's activeDeadlineSeconds passed".to_string())
        } else if fail_fast {
            failed_step.as_ref().map(|f| format!("step {f:?} failed (failurePolicy FailFast)"))
        } else {
            None
        };
        let stops = halted_by.as_ref().filter(|_| deadline_passed || step.when == RunCondition::AllSucceeded);
        match status.phase {
            StepPhase::Running | StepPhase::Waiting if stops.is_some() => {
                if status.phase == StepPhase::Running {
                    plan.delete.push(step_job_name(&wf_name, &step.name));
                    running = running.saturating_sub(1);
                }
                status.phase = StepPhase::Cancelled;
                status.finished_at = Some(now);
                status.message = Some(format!("cancelled: {}", stops.expect("checked")));
            }
            StepPhase::Running if step.kind == StepKind::Job => {
                let name = step_job_name(&wf_name, &step.name);
                if !children.contains_key(&name) {
                    // Created by an earlier reconcile and not seen yet (or deleted by someone):
                    // creating it again is harmless, the name makes it idempotent.
                    if let Ok(Some(job)) = child_job(wf, &name, "step", &step.name, step.job.as_ref().expect("validated"), &results) {
                        plan.create.push(job);
                    }
                }
            }
            StepPhase::Pending => {
                let deps: Vec<(&String, &StepStatus)> = step.depends_on.iter().map(|d| (d, &steps[d])).collect();
                // A step that needs every dependency to succeed is skipped as soon as one did not.
                let lost: Vec<&String> =
                    deps.iter().filter(|(_, s)| s.phase.is_finished() && s.phase != StepPhase::Succeeded).map(|(n, _)| *n).collect();
                let doomed = step.when == RunCondition::AllSucceeded && !lost.is_empty();
                if !doomed && !deps.iter().all(|(_, s)| s.phase.is_finished()) {
                    if deadline_passed {
                        status.phase = StepPhase::Skipped;
                        status.message = Some("not started: the Workflow's activeDeadlineSeconds passed".into());
                    }
                    steps.insert(step.name.clone(), status);
                    continue;
                }
                let failed: Vec<&String> = deps.iter().filter(|(_, s)| s.phase == StepPhase::Failed).map(|(n, _)| *n).collect();
                let skip_reason = match step.when {
                    RunCondition::AllSucceeded => doomed.then(|| format!("skipped: {} did not succeed", names(&lost))),
                    RunCondition::OnFailure => failed.is_empty().then(|| "skipped: no dependency failed (when: OnFailure)".to_string()),
                    RunCondition::Always => None,
                };
                if let Some(reason) = skip_reason.or_else(|| stops.map(|why| format!("not started: {why}"))) {
                    status.phase = StepPhase::Skipped;
                    status.message = Some(reason);
                    status.finished_at = Some(now);
                } else if spec.suspend {
                    status.message = Some("waiting: the Workflow is suspended".into());
                } else {
                    match step.kind {
                        StepKind::Approval => {
                            status.phase = StepPhase::Waiting;
                            status.started_at = Some(now);
                            status.message = Some(format!(
                                "waiting for approval: kubectl annotate wf {wf_name} {APPROVE_ANNOTATION_PREFIX}{}=true (or =false to reject)",
                                step.name
                            ));
                            observe_approval(wf, step, &mut status, now, &mut wake);
                        }
                        StepKind::Job if spec.parallelism.is_some_and(|p| running >= p) => {
                            status.message = Some(format!("waiting: parallelism {} reached", spec.parallelism.unwrap_or_default()));
                        }
                        StepKind::Job => {
                            let name = step_job_name(&wf_name, &step.name);
                            match child_job(wf, &name, "step", &step.name, step.job.as_ref().expect("validated"), &results) {
                                Ok(Some(job)) => {
                                    plan.create.push(job);
                                    running += 1;
                                    status.phase = StepPhase::Running;
                                    status.job = Some(name);
                                    status.started_at = Some(now);
                                    status.message = None;
                                }
                                Ok(None) => {
                                    status.phase = StepPhase::Succeeded;
                                    status.started_at = Some(now);
                                    status.finished_at = Some(now);
                                    status.message = Some("itemsFrom resolved to an empty list: nothing to run".into());
                                }
                                Err(e) => {
                                    status.phase = StepPhase::Failed;
                                    status.finished_at = Some(now);
                                    status.message = Some(format!("{}: {e}", e.reason()));
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        steps.insert(step.name.clone(), status);
        if failed_step.is_none() {
            failed_step = first_failed(&steps);
        }
    }
    let main_done = steps.values().all(|s| s.phase.is_finished());
    if !main_done && let Some(d) = deadline {
        earliest(&mut wake, d);
    }

    let mut failure = if deadline_passed {
        Some(Failure {
            reason: "DeadlineExceeded",
            message: format!("the Workflow ran longer than activeDeadlineSeconds ({}s)", spec.active_deadline_seconds.unwrap_or_default()),
        })
    } else {
        let failed: Vec<&String> =
            graph.order.iter().map(|&i| &spec.steps[i].name).filter(|n| steps[*n].phase == StepPhase::Failed).collect();
        (!failed.is_empty()).then(|| {
            let first = &steps[failed[0]];
            Failure {
                reason: "StepFailed",
                message: match failed.as_slice() {
                    [one] => format!("step {one:?} failed: {}", first.message.clone().unwrap_or_default()),
                    many => format!("steps {} failed", names(many)),
                },
            }
        })
    };

    // 3. Compensations, one at a time, newest completion first.
    let mut compensations_done = true;
    if main_done && failure.is_some() {
        let position = |name: &str| graph.order.iter().position(|&i| spec.steps[i].name == name).unwrap_or(0);
        let mut candidates: Vec<&WorkflowStep> =
            spec.steps.iter().filter(|s| s.compensation.is_some() && steps[&s.name].phase == StepPhase::Succeeded).collect();
        candidates.sort_by(|a, b| {
            let (fa, fb) = (steps[&a.name].finished_at, steps[&b.name].finished_at);
            fb.cmp(&fa).then(position(&b.name).cmp(&position(&a.name)))
        });
        let mut blocked = false;
        for step in candidates {
            let previous = prev.compensations.iter().find(|c| c.step == step.name);
            let mut status = previous.map(|c| c.run.clone()).unwrap_or_default();
            if !blocked && !status.phase.is_finished() {
                let name = compensation_job_name(&wf_name, &step.name);
                run_child(
                    wf,
                    &mut plan.create,
                    &mut status,
                    children,
                    &name,
                    "compensation",
                    &step.name,
                    step.compensation.as_ref().expect("filtered"),
                    &results,
                    now,
                );
            }
            if !status.phase.is_finished() {
                blocked = true;
                compensations_done = false;
            }
            plan.compensations.push(CompensationStatus { step: step.name.clone(), run: status });
        }
        plan.compensating = !compensations_done;
    }

    // 4. Finally, whatever happened.
    let mut finished = main_done && compensations_done;
    if finished && let Some(template) = &spec.finally {
        let mut status = prev.finally.clone().unwrap_or_default();
        if !status.phase.is_finished() {
            run_child(wf, &mut plan.create, &mut status, children, &finally_job_name(&wf_name), FINALLY, FINALLY, template, &results, now);
        }
        finished = status.phase.is_finished();
        if status.phase == StepPhase::Failed && failure.is_none() {
            failure = Some(Failure {
                reason: "FinallyFailed",
                message: format!("finally failed: {}", status.message.clone().unwrap_or_default()),
            });
        }
        plan.finally = Some(status);
    }

    if finished {
        let finished_at = prev.finished_at.unwrap_or(now);
        plan.finished_at = Some(finished_at);
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let expires = at_plus(finished_at, ttl);
            if now >= expires {
                plan.delete_workflow = true;
            } else {
                earliest(&mut wake, expires);
            }
        }
    }
    plan.steps = steps;
    plan.failure = failure;
    plan.requeue_after = wake.map(|w| {
        let d = w.duration_since(now);
        Duration::from_millis(d.as_millis().clamp(0, i64::MAX as i128) as u64) + Duration::from_millis(50)
    });
    plan
}

/// Observes or starts a compensation or `finally` Job.
#[allow(clippy::too_many_arguments)]
fn run_child(
    wf: &Workflow,
    create: &mut Vec<Job>,
    status: &mut StepStatus,
    children: &BTreeMap<String, Job>,
    name: &str,
    role: &str,
    step: &str,
    template: &JobTemplate,
    results: &BTreeMap<String, Value>,
    now: Timestamp,
) {
    if let Some(child) = children.get(name) {
        status.started_at.get_or_insert(now);
        observe_job(status, child, now);
        return;
    }
    match child_job(wf, name, role, step, template, results) {
        Ok(Some(job)) => {
            create.push(job);
            status.phase = StepPhase::Running;
            status.job = Some(name.to_string());
            status.started_at.get_or_insert(now);
        }
        Ok(None) => {
            status.phase = StepPhase::Succeeded;
            status.finished_at = Some(now);
            status.message = Some("itemsFrom resolved to an empty list: nothing to run".into());
        }
        Err(e) => {
            status.phase = StepPhase::Failed;
            status.finished_at = Some(now);
            status.message = Some(format!("{}: {e}", e.reason()));
        }
    }
}

#[cfg(test)]
mod tests;

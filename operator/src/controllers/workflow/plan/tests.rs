//! The Workflow plan, case by case.

use super::*;
use crate::controllers::workflow::status;
use crate::crd::{JobStatus, JobTasks, WorkflowPhase, WorkflowSpec, WorkflowStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::json;

fn wf(spec: Value) -> Workflow {
    let spec: WorkflowSpec = serde_json::from_value(spec).unwrap();
    let mut wf = Workflow::new("wf", spec);
    wf.metadata.namespace = Some("ns".into());
    wf.metadata.uid = Some("uid-1".into());
    wf.metadata.generation = Some(1);
    wf
}
fn at(s: i64) -> Timestamp {
    Timestamp::from_second(1_000_000 + s).unwrap()
}
fn job_step(name: &str, deps: &[&str]) -> Value {
    json!({"name": name, "dependsOn": deps, "job": {"poolRef": "p", "payload": {"step": name}}})
}
/// A child Job as the Job controller would have it.
fn child(name: &str, phase: JobPhase, result: Option<Value>) -> Job {
    let mut job: Job = serde_json::from_value(json!({
        "apiVersion": "warren.dev/v1alpha1", "kind": "Job",
        "metadata": {"name": name, "namespace": "ns"}, "spec": {"poolRef": "p"}
    }))
    .unwrap();
    let failed = phase == JobPhase::Failed;
    job.status = Some(JobStatus {
        phase,
        total: 1,
        succeeded: u32::from(phase == JobPhase::Succeeded),
        failed: u32::from(failed),
        retries: if failed { 2 } else { 0 },
        result,
        conditions: if failed {
            vec![Condition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: "TasksFailed".into(),
                message: "1 of 1 tasks failed (indexes 0)".into(),
                observed_generation: None,
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }]
        } else {
            vec![]
        },
        ..JobStatus::default()
    });
    job
}
fn children(list: Vec<Job>) -> BTreeMap<String, Job> {
    list.into_iter().map(|j| (j.name_any(), j)).collect()
}
/// Runs the plan and stores its status on the Workflow, like a reconcile.
fn step(w: &mut Workflow, kids: &BTreeMap<String, Job>, now: Timestamp) -> Plan {
    let plan = plan(w, kids, now);
    w.status = Some(status::desired(w, &plan, &Time(now)));
    plan
}
fn created(plan: &Plan) -> Vec<String> {
    plan.create.iter().map(|j| j.name_any()).collect()
}
fn phase_of(w: &Workflow, step: &str) -> StepPhase {
    w.status.as_ref().unwrap().steps[step].phase
}
fn status(w: &Workflow) -> &WorkflowStatus {
    w.status.as_ref().unwrap()
}

#[test]
fn invalid_graphs_are_rejected_with_the_exact_problem() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!([job_step("a", &["b"]), job_step("b", &["a"])]), "Cycle", "cycle: a -> b -> a"),
        (
            json!([job_step("a", &["c"]), job_step("b", &["a"]), job_step("c", &["b"]), job_step("d", &[])]),
            "Cycle",
            "cycle: a -> c -> b -> a",
        ),
        (json!([job_step("a", &["a"])]), "Cycle", "cycle: a -> a"),
        (json!([job_step("a", &["x"])]), "UnknownStep", "step \"a\" depends on unknown step \"x\""),
        (json!([job_step("a", &[]), job_step("a", &[])]), "DuplicateStep", "step name \"a\" is used more than once"),
        (json!([job_step("finally", &[])]), "InvalidStep", "step name \"finally\" is invalid: \"finally\" is reserved for the finally Job"),
        (
            json!([job_step("pay-compensate", &[])]),
            "InvalidStep",
            "step name \"pay-compensate\" is invalid: names ending in \"-compensate\" are reserved for compensation Jobs",
        ),
        (json!([{"name": "a"}]), "InvalidStep", "step \"a\": a step of kind Job needs a job template"),
        (
            json!([{"name": "a", "kind": "Approval", "job": {"poolRef": "p"}}]),
            "InvalidStep",
            "step \"a\": an approval step has no job or compensation",
        ),
        (
            json!([job_step("a", &[]), {"name": "b", "job": {"poolRef": "p", "payload": {"x": "{{steps.a.result.x"}}}]),
            "BadTemplate",
            "steps[b].job.payload: template \"{{steps.a.result.x\" has no closing '}}'",
        ),
        (
            json!([job_step("a", &[]), {"name": "b", "job": {"poolRef": "p", "payload": "{{steps.a.result}}"}}]),
            "BadTemplate",
            "steps[b].job.payload: {{steps.a.result}} refers to step \"a\", which is not one of its dependencies (direct or not)",
        ),
        (
            json!([job_step("a", &[]), {"name": "b", "dependsOn": ["a"], "job": {"poolRef": "p", "itemsFrom": "rows"}}]),
            "BadTemplate",
            "steps[b].job.itemsFrom: itemsFrom must be exactly one template such as {{steps.extract.result.rows}}, got \"rows\"",
        ),
        (
            json!([job_step("a", &[]), job_step("b", &[]), {"name": "c", "dependsOn": ["a"], "job": {"poolRef": "p"}, "compensation": {"poolRef": "p", "payload": "{{steps.b.result}}"}}]),
            "BadTemplate",
            "steps[c].compensation.payload: {{steps.b.result}} refers to step \"b\", which is not this step or one of its dependencies",
        ),
    ];
    for (steps, reason, message) in cases {
        let mut w = wf(json!({"steps": steps}));
        let plan = step(&mut w, &BTreeMap::new(), at(0));
        let error = plan.invalid.clone().unwrap_or_else(|| panic!("accepted: {steps}"));
        assert_eq!((error.reason(), error.to_string().as_str()), (reason, message));
        assert!(plan.create.is_empty(), "nothing runs");
        let s = status(&w);
        assert_eq!(s.phase, WorkflowPhase::Failed);
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str(), ready.message.as_str()), ("False", reason, message));
        assert_eq!(ready.observed_generation, Some(1));
    }
}

#[test]
fn transitive_dependencies_may_be_referenced() {
    let w = wf(json!({"steps": [
        job_step("a", &[]), job_step("b", &["a"]),
        {"name": "c", "dependsOn": ["b"], "job": {"poolRef": "p", "payload": "{{steps.a.result}}"}},
    ], "finally": {"poolRef": "p", "payload": "{{steps.c.result}}"}}));
    let graph = validate(&w).unwrap();
    assert_eq!(graph.order, vec![0, 1, 2]);
    assert_eq!(graph.ancestors[2], ["a".to_string(), "b".to_string()].into_iter().collect());
}

fn diamond() -> Workflow {
    wf(json!({"steps": [
        job_step("a", &[]),
        job_step("b", &["a"]),
        job_step("c", &["a"]),
        {"name": "d", "dependsOn": ["b", "c"], "job": {"poolRef": "p", "payload": {
            "total": "{{steps.b.result.n}}", "label": "b={{steps.b.result.n}} c={{steps.c.result.name}}", "c": "{{steps.c.result}}"
        }}},
    ]}))
}

#[test]
fn a_diamond_runs_b_and_c_in_parallel_and_d_with_their_results() {
    let mut w = diamond();
    let p = step(&mut w, &BTreeMap::new(), at(0));
    assert_eq!(created(&p), vec!["wf-a"]);
    assert_eq!(status(&w).phase, WorkflowPhase::Running);
    let owner = &p.create[0].metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("Workflow", "uid-1", Some(true)));
    assert_eq!(p.create[0].labels()[WORKFLOW_LABEL], "wf");

    // The store has not seen the child yet: a second pass asks to create it again (idempotent).
    let p = step(&mut w, &BTreeMap::new(), at(0));
    assert_eq!(created(&p), vec!["wf-a"]);

    let kids = children(vec![child("wf-a", JobPhase::Running, None)]);
    assert!(step(&mut w, &kids, at(1)).create.is_empty());
    let kids = children(vec![child("wf-a", JobPhase::Succeeded, None)]);
    let p = step(&mut w, &kids, at(2));
    assert_eq!(created(&p), vec!["wf-b", "wf-c"], "b and c start together");
    assert_eq!(status(&w).progress.as_deref(), Some("1/4"));

    let mut kids = kids;
    kids.extend(children(vec![child("wf-b", JobPhase::Succeeded, Some(json!({"n": 5}))), child("wf-c", JobPhase::Running, None)]));
    assert!(step(&mut w, &kids, at(3)).create.is_empty(), "d waits for c");
    kids.extend(children(vec![child("wf-c", JobPhase::Succeeded, Some(json!({"name": "x", "k": [1]})))]));
    let p = step(&mut w, &kids, at(4));
    assert_eq!(created(&p), vec!["wf-d"]);
    assert_eq!(p.create[0].spec.tasks.payload, Some(json!({"total": 5, "label": "b=5 c=x", "c": {"name": "x", "k": [1]}})));
    assert_eq!(status(&w).steps["b"].result, Some(json!({"n": 5})));

    kids.extend(children(vec![child("wf-d", JobPhase::Succeeded, None)]));
    step(&mut w, &kids, at(5));
    let s = status(&w);
    assert_eq!((s.phase, s.progress.as_deref()), (WorkflowPhase::Succeeded, Some("4/4")));
    assert_eq!(s.steps["d"].started_at, Some(at(4)));
    assert_eq!(s.steps["d"].finished_at, Some(at(5)));
    assert_eq!(s.finished_at, Some(at(5)));
    assert!(s.conditions.iter().any(|c| c.type_ == "Complete" && c.status == "True"));
    // Steady state: nothing to do, nothing to write.
    let again = plan(&w, &kids, at(6));
    assert!(again.create.is_empty() && again.delete.is_empty());
    assert_eq!(status::desired(&w, &again, &Time(at(6))), *status(&w));
}

#[test]
fn parallelism_limits_running_job_steps() {
    let mut w = diamond();
    w.spec.parallelism = Some(1);
    let kids = children(vec![child("wf-a", JobPhase::Succeeded, None)]);
    step(&mut w, &BTreeMap::new(), at(0));
    let p = step(&mut w, &kids, at(1));
    assert_eq!(created(&p), vec!["wf-b"]);
    assert_eq!(status(&w).steps["c"].message.as_deref(), Some("waiting: parallelism 1 reached"));
}

fn saga(policy: &str) -> Workflow {
    let comp = |name: &str| json!({"poolRef": "p", "payload": {"undo": name, "of": format!("{{{{steps.{name}.result}}}}")}});
    wf(json!({"failurePolicy": policy, "steps": [
        {"name": "charge", "job": {"poolRef": "p"}, "compensation": comp("charge")},
        {"name": "reserve", "dependsOn": ["charge"], "job": {"poolRef": "p"}, "compensation": comp("reserve")},
        {"name": "email", "dependsOn": ["charge"], "job": {"poolRef": "p"}},
        {"name": "ship", "dependsOn": ["reserve"], "job": {"poolRef": "p"}},
        {"name": "done", "dependsOn": ["ship", "email"], "job": {"poolRef": "p"}},
        {"name": "alert", "dependsOn": ["ship"], "when": "OnFailure", "job": {"poolRef": "p"}},
    ], "finally": {"poolRef": "p", "payload": "cleanup"}}))
}

#[test]
fn fail_fast_cancels_running_steps_then_compensates_in_reverse_order_then_finally() {
    let mut w = saga("FailFast");
    let mut kids = children(vec![child("wf-charge", JobPhase::Succeeded, Some(json!("ch_1")))]);
    step(&mut w, &BTreeMap::new(), at(0));
    assert_eq!(created(&step(&mut w, &kids, at(1))), vec!["wf-reserve", "wf-email"]);
    kids.extend(children(vec![child("wf-reserve", JobPhase::Succeeded, Some(json!("r_1"))), child("wf-email", JobPhase::Running, None)]));
    assert_eq!(created(&step(&mut w, &kids, at(2))), vec!["wf-ship"]);
    kids.extend(children(vec![child("wf-ship", JobPhase::Failed, None)]));

    // ship failed: email is cancelled (its Job deleted), done skipped, alert runs.
    let p = step(&mut w, &kids, at(3));
    assert_eq!(p.delete, vec!["wf-email"]);
    assert_eq!(created(&p), vec!["wf-alert"]);
    assert_eq!(phase_of(&w, "email"), StepPhase::Cancelled);
    assert_eq!(status(&w).steps["email"].message.as_deref(), Some("cancelled: step \"ship\" failed (failurePolicy FailFast)"));
    assert_eq!(phase_of(&w, "done"), StepPhase::Skipped);
    assert_eq!(status(&w).steps["ship"].message.as_deref(), Some("Job wf-ship failed: 1 of 1 tasks failed (indexes 0)"));
    assert_eq!(status(&w).steps["ship"].attempts, 3);
    kids.remove("wf-email");
    kids.extend(children(vec![child("wf-alert", JobPhase::Succeeded, None)]));

    // Compensations: reserve (finished last) first, one at a time, with its step's result.
    let p = step(&mut w, &kids, at(4));
    assert_eq!(created(&p), vec!["wf-reserve-compensate"]);
    assert_eq!(p.create[0].spec.tasks.payload, Some(json!({"undo": "reserve", "of": "r_1"})));
    assert_eq!(status(&w).phase, WorkflowPhase::Compensating);
    assert!(step(&mut w, &kids, at(5)).create.iter().all(|j| j.name_any() == "wf-reserve-compensate"));
    kids.extend(children(vec![child("wf-reserve-compensate", JobPhase::Succeeded, None)]));
    assert_eq!(created(&step(&mut w, &kids, at(6))), vec!["wf-charge-compensate"]);
    kids.extend(children(vec![child("wf-charge-compensate", JobPhase::Failed, None)]));
    assert_eq!(created(&step(&mut w, &kids, at(7))), vec!["wf-finally"]);
    kids.extend(children(vec![child("wf-finally", JobPhase::Succeeded, None)]));
    step(&mut w, &kids, at(8));

    let s = status(&w);
    assert_eq!(s.phase, WorkflowPhase::Failed);
    let outcomes: Vec<(&str, StepPhase)> = s.compensations.iter().map(|c| (c.step.as_str(), c.run.phase)).collect();
    assert_eq!(outcomes, vec![("reserve", StepPhase::Succeeded), ("charge", StepPhase::Failed)]);
    assert_eq!(s.finally.as_ref().map(|f| f.phase), Some(StepPhase::Succeeded));
    let failed = s.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(failed.reason, "StepFailed");
    assert_eq!(
        failed.message,
        "step \"ship\" failed: Job wf-ship failed: 1 of 1 tasks failed (indexes 0); compensations 2/2 finished, failed: charge"
    );
    assert_eq!(s.progress.as_deref(), Some("6/6"));
}

#[test]
fn continue_lets_independent_branches_finish() {
    let mut w = saga("Continue");
    let mut kids = children(vec![
        child("wf-charge", JobPhase::Succeeded, Some(json!("ch_1"))),
        child("wf-reserve", JobPhase::Succeeded, Some(json!("r_1"))),
        child("wf-email", JobPhase::Running, None),
        child("wf-ship", JobPhase::Failed, None),
    ]);
    step(&mut w, &BTreeMap::new(), at(0));
    let p = step(&mut w, &kids, at(1));
    assert!(p.delete.is_empty(), "email keeps running");
    assert_eq!(created(&p), vec!["wf-alert"]);
    assert_eq!(phase_of(&w, "email"), StepPhase::Running);
    assert_eq!(status(&w).steps["done"].message.as_deref(), Some("skipped: ship did not succeed"));
    kids.extend(children(vec![child("wf-email", JobPhase::Succeeded, None), child("wf-alert", JobPhase::Succeeded, None)]));
    let p = step(&mut w, &kids, at(2));
    assert_eq!(created(&p), vec!["wf-reserve-compensate"]);
}

#[test]
fn on_failure_steps_are_skipped_when_nothing_failed() {
    let mut w = saga("FailFast");
    let kids = children(
        ["charge", "reserve", "email", "ship", "done"].iter().map(|s| child(&format!("wf-{s}"), JobPhase::Succeeded, None)).collect(),
    );
    step(&mut w, &kids, at(0));
    let p = step(&mut w, &kids, at(1));
    assert_eq!(created(&p), vec!["wf-finally"], "no compensation on success");
    assert_eq!(status(&w).steps["alert"].message.as_deref(), Some("skipped: no dependency failed (when: OnFailure)"));
    let mut kids = kids;
    kids.extend(children(vec![child("wf-finally", JobPhase::Failed, None)]));
    step(&mut w, &kids, at(2));
    let s = status(&w);
    assert_eq!(s.phase, WorkflowPhase::Failed);
    assert!(s.conditions.iter().any(|c| c.type_ == "Failed" && c.reason == "FinallyFailed"));
}

fn gate(on_timeout: &str) -> Workflow {
    wf(json!({"steps": [
        {"name": "approve", "kind": "Approval", "approval": {"timeoutSeconds": 60, "onTimeout": on_timeout}},
        job_step("deploy", &["approve"]),
    ]}))
}

#[test]
fn an_approval_waits_for_the_annotation() {
    let mut w = gate("Fail");
    let p = step(&mut w, &BTreeMap::new(), at(0));
    assert!(p.create.is_empty());
    assert_eq!(phase_of(&w, "approve"), StepPhase::Waiting);
    assert_eq!(
        status(&w).steps["approve"].message.as_deref(),
        Some("waiting for approval: kubectl annotate wf wf warren.dev/approve-approve=true (or =false to reject)")
    );
    assert_eq!(p.requeue_after, Some(Duration::from_millis(60_050)), "wakes up at the timeout");
    assert!(step(&mut w, &BTreeMap::new(), at(10)).create.is_empty());
    w.annotations_mut().insert("warren.dev/approve-approve".into(), "true".into());
    let p = step(&mut w, &BTreeMap::new(), at(20));
    assert_eq!(created(&p), vec!["wf-deploy"]);
    assert_eq!(status(&w).steps["approve"].message.as_deref(), Some("approved (annotation)"));
}

#[test]
fn approvals_can_be_rejected_or_time_out() {
    let mut w = gate("Fail");
    step(&mut w, &BTreeMap::new(), at(0));
    w.spec.approvals.insert("approve".into(), ApprovalDecision::Rejected);
    step(&mut w, &BTreeMap::new(), at(1));
    assert_eq!((phase_of(&w, "approve"), phase_of(&w, "deploy")), (StepPhase::Failed, StepPhase::Skipped));
    assert_eq!(status(&w).phase, WorkflowPhase::Failed);

    let mut w = gate("Fail");
    step(&mut w, &BTreeMap::new(), at(0));
    step(&mut w, &BTreeMap::new(), at(60));
    assert_eq!(phase_of(&w, "approve"), StepPhase::Failed);
    assert_eq!(status(&w).steps["approve"].message.as_deref(), Some("no decision within 60s (onTimeout: Fail)"));

    let mut w = gate("Skip");
    step(&mut w, &BTreeMap::new(), at(0));
    step(&mut w, &BTreeMap::new(), at(61));
    assert_eq!((phase_of(&w, "approve"), phase_of(&w, "deploy")), (StepPhase::Skipped, StepPhase::Skipped));
    assert_eq!(status(&w).phase, WorkflowPhase::Succeeded);
}

#[test]
fn the_deadline_cancels_running_steps_and_skips_the_rest() {
    let mut w = diamond();
    w.spec.active_deadline_seconds = Some(30);
    let p = step(&mut w, &BTreeMap::new(), at(0));
    assert_eq!(p.requeue_after, Some(Duration::from_millis(30_050)));
    let kids = children(vec![child("wf-a", JobPhase::Running, None)]);
    let p = step(&mut w, &kids, at(30));
    assert_eq!(p.delete, vec!["wf-a"]);
    let s = status(&w);
    assert_eq!(s.phase, WorkflowPhase::Failed);
    assert_eq!(s.steps["a"].phase, StepPhase::Cancelled);
    assert!(["b", "c", "d"].iter().all(|n| s.steps[*n].phase == StepPhase::Skipped));
    let failed = s.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(
        (failed.reason.as_str(), failed.message.as_str()),
        ("DeadlineExceeded", "the Workflow ran longer than activeDeadlineSeconds (30s)")
    );
}

#[test]
fn suspend_holds_new_steps_and_resume_starts_them() {
    let mut w = diamond();
    w.spec.suspend = true;
    let p = step(&mut w, &BTreeMap::new(), at(0));
    assert!(p.create.is_empty());
    assert_eq!(status(&w).phase, WorkflowPhase::Suspended);
    w.spec.suspend = false;
    assert_eq!(created(&step(&mut w, &BTreeMap::new(), at(1))), vec!["wf-a"]);
}

#[test]
fn a_finished_workflow_is_deleted_after_its_ttl() {
    let mut w = wf(json!({"steps": [job_step("a", &[])], "ttlSecondsAfterFinished": 10}));
    let kids = children(vec![child("wf-a", JobPhase::Succeeded, None)]);
    let p = step(&mut w, &kids, at(0));
    assert_eq!((p.delete_workflow, p.requeue_after), (false, Some(Duration::from_millis(10_050))));
    assert!(step(&mut w, &kids, at(10)).delete_workflow);
}

#[test]
fn items_from_fans_out_over_a_list_result() {
    let mut w = wf(json!({"steps": [
        job_step("extract", &[]),
        {"name": "load", "dependsOn": ["extract"], "job": {"poolRef": "p", "itemsFrom": "{{steps.extract.result.rows}}"}},
    ]}));
    let kids = children(vec![child("wf-extract", JobPhase::Succeeded, Some(json!({"rows": [1, 2, 3]})))]);
    let p = step(&mut w, &kids, at(0));
    assert_eq!(p.create[0].spec.tasks.items, Some(vec![json!(1), json!(2), json!(3)]));

    let mut w = wf(json!({"steps": [
        job_step("extract", &[]),
        {"name": "load", "dependsOn": ["extract"], "job": {"poolRef": "p", "itemsFrom": "{{steps.extract.result.rows}}"}},
    ]}));
    let kids = children(vec![child("wf-extract", JobPhase::Succeeded, Some(json!({"rows": []})))]);
    let p = step(&mut w, &kids, at(0));
    assert!(p.create.is_empty());
    assert_eq!(phase_of(&w, "load"), StepPhase::Succeeded);
    assert_eq!(status(&w).phase, WorkflowPhase::Succeeded);

    let mut w = wf(json!({"steps": [
        job_step("extract", &[]),
        {"name": "load", "dependsOn": ["extract"], "job": {"poolRef": "p", "itemsFrom": "{{steps.extract.result.rows}}"}},
    ]}));
    let kids = children(vec![child("wf-extract", JobPhase::Succeeded, Some(json!({"count": 0})))]);
    step(&mut w, &kids, at(0));
    assert_eq!(phase_of(&w, "load"), StepPhase::Failed);
    assert_eq!(
        status(&w).steps["load"].message.as_deref(),
        Some("TemplateUnresolved: {{steps.extract.result.rows}}: the result of step \"extract\" has nothing at \"rows\"")
    );
}

#[test]
fn a_child_job_carries_every_task_field_of_its_template() {
    let template = json!({
        "poolRef": "p", "priority": "high", "payload": {"n": "{{steps.a.result.n}}"}, "completions": 3,
        "taskType": "resize", "retry": {"maxAttempts": 2, "backoff": {"initialDelay": "1s"}}, "timeoutSeconds": 30,
    });
    let w = wf(json!({"steps": [job_step("a", &[]), {"name": "b", "dependsOn": ["a"], "job": template}]}));
    let results = BTreeMap::from([("a".to_string(), json!({"n": 7}))]);
    let t = w.spec.steps[1].job.as_ref().unwrap();
    let job = child_job(&w, "wf-b", "step", "b", t, &results).unwrap().unwrap();
    assert_eq!((job.spec.pool_ref.as_str(), job.spec.priority.as_str()), ("p", "high"));
    let rendered = JobTasks { payload: Some(json!({"n": 7})), ..t.tasks.clone() };
    assert_eq!(job.spec.tasks, rendered);
    assert_eq!(
        serde_json::to_value(&job.spec).unwrap(),
        json!({
            "poolRef": "p", "priority": "high", "payload": {"n": 7}, "completions": 3, "taskType": "resize",
            "retry": {"maxAttempts": 2, "backoff": {"initialDelay": "1s"}}, "timeoutSeconds": 30,
        }),
        "the task fields sit at the top of the Job's spec, as in the template"
    );
}

//! Workflow features end to end (issue #18.8): `itemsFrom` fan-out over an earlier step's
//! result, approval gates that are rejected or time out (`onTimeout: Fail` and `Skip`),
//! `parallelism`, and a step's `timeoutSeconds`. Everything is observed through the API, the way
//! a user reads it (`kubectl get wf -o yaml`, the child Jobs), so the tests run unchanged against
//! a real cluster.

use std::collections::BTreeSet;
use std::time::Duration;

use warren_e2e::Env;
use warren_operator::crd::{JobPhase, StepPhase, Workflow, WorkflowPhase, WorkflowStatus};

const PATIENCE: Duration = Duration::from_secs(180);

/// A handler that fails (exit 65, not retried) when its payload is a row marked
/// `"poison":true` (not a payload that only carries such rows), sleeps two seconds when it says
/// `"slow":true`, hangs when it says `"hang":true`, and otherwise returns
/// `{"job": <its Job>, "payload": <its payload>}`.
fn echo_handler() -> serde_json::Value {
    serde_json::json!([
        "sh",
        "-c",
        r#"payload=$(cat)
case "$payload" in *'"rows":'*) ;; *'"poison":true'*) echo "poison row" >&2; exit 65;; esac
case "$payload" in *'"slow":true'*) sleep 2;; esac
case "$payload" in *'"hang":true'*) sleep 600;; esac
echo "warren:result {\"job\": \"$WARREN_JOB_NAME\", \"payload\": $payload}""#
    ])
}

/// A pool of 4 task slots (2 workers × 2): more than any `parallelism` below, so a limit the
/// tests see is the Workflow's, not the pool's.
async fn env_with_pool(test: &str) -> anyhow::Result<Env> {
    let env = Env::start(test).await?;
    env.create_pool("pool", serde_json::json!({"workers": {"handler": echo_handler()}, "replicas": 2, "concurrency": 2})).await?;
    Ok(env)
}

fn job(payload: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"poolRef": "pool", "payload": payload})
}

fn status(wf: &Workflow) -> &WorkflowStatus {
    wf.status.as_ref().expect("status")
}

fn finished(wf: &Workflow) -> bool {
    wf.status.as_ref().is_some_and(|s| s.phase.is_finished())
}

fn step_is(wf: &Workflow, step: &str, phase: StepPhase) -> bool {
    wf.status.as_ref().is_some_and(|s| s.steps.get(step).is_some_and(|st| st.phase == phase))
}

/// `(status, reason, message)` of a Workflow condition.
fn condition<'a>(s: &'a WorkflowStatus, type_: &str) -> Option<(&'a str, &'a str, &'a str)> {
    s.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
}

/// `(phase, message)` of a step.
fn step<'a>(s: &'a WorkflowStatus, name: &str) -> (StepPhase, Option<&'a str>) {
    let st = &s.steps[name];
    (st.phase, st.message.as_deref())
}

/// Runs `kubectl` on the test's cluster and namespace, failing on a non-zero exit.
fn kubectl(env: &Env, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("kubectl").env("KUBECONFIG", env.kubeconfig()).args(["-n", &env.namespace]).args(args).output()?;
    anyhow::ensure!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_from_fans_a_step_out_over_an_earlier_steps_rows_one_task_each() -> anyhow::Result<()> {
    let env = env_with_pool("wf-items-from").await?;
    let rows = serde_json::json!([{"id": "a"}, {"id": "b"}, {"id": "c"}]);
    let bad_rows = serde_json::json!([{"id": "a"}, {"id": "b", "poison": true}, {"id": "c"}]);
    for (name, rows) in [("etl", &rows), ("bad-etl", &bad_rows)] {
        env.create_workflow(
            name,
            serde_json::json!({"steps": [
                {"name": "extract", "job": job(serde_json::json!({"rows": rows, "count": 3}))},
                {"name": "load", "dependsOn": ["extract"],
                 "job": {"poolRef": "pool", "itemsFrom": "{{steps.extract.result.payload.rows}}"}},
                {"name": "report", "dependsOn": ["load"], "job": job(serde_json::json!({"loaded": "{{steps.extract.result.payload.count}}"}))},
            ]}),
        )
        .await?;
    }

    // Every row became one task, in order, with the row as its payload.
    let wf = env.wait_workflow("etl", PATIENCE, finished).await?;
    let s = status(&wf);
    assert_eq!((s.phase, s.progress.as_deref()), (WorkflowPhase::Succeeded, Some("3/3")), "{s:#?}");
    assert_eq!(s.steps["load"].job.as_deref(), Some("etl-load"));
    assert_eq!(s.steps["load"].attempts, 3, "one attempt per row");
    assert_eq!(s.steps["load"].result, None, "a Job of several tasks keeps no result");
    let load = env.jobs().get("etl-load").await?;
    assert_eq!(load.spec.tasks.items.as_ref(), rows.as_array(), "the Job's items are the rows of extract's result");
    assert_eq!((load.spec.tasks.payload.as_ref(), load.spec.tasks.completions), (None, None));
    let ls = load.status.expect("status of etl-load");
    assert_eq!((ls.phase, ls.total, ls.succeeded, ls.failed, ls.succeeded_indexes.as_str()), (JobPhase::Succeeded, 3, 3, 0, "0-2"));
    // The next step still reads extract's result.
    assert_eq!(env.jobs().get("etl-report").await?.spec.tasks.payload, Some(serde_json::json!({"loaded": 3})));

    // A row that fails fails exactly its task: index 1, the second row.
    let wf = env.wait_workflow("bad-etl", PATIENCE, finished).await?;
    let s = status(&wf);
    assert_eq!(s.phase, WorkflowPhase::Failed, "{s:#?}");
    let ls = env.jobs().get("bad-etl-load").await?.status.expect("status of bad-etl-load");
    assert_eq!((ls.phase, ls.succeeded_indexes.as_str(), ls.failed_indexes.as_str()), (JobPhase::Failed, "0,2", "1"));
    let load_message = "Job bad-etl-load failed: 1 of 3 tasks failed (indexes 1)";
    assert_eq!(step(s, "load"), (StepPhase::Failed, Some(load_message)));
    assert_eq!(step(s, "report"), (StepPhase::Skipped, Some("skipped: load did not succeed")));
    assert!(env.jobs().get_opt("bad-etl-report").await?.is_none(), "nothing runs after the failed fan-out");
    let failed_message = format!("step \"load\" failed: {load_message}");
    assert_eq!(condition(s, "Failed"), Some(("True", "StepFailed", failed_message.as_str())));
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_from_an_empty_list_succeeds_without_a_job_and_from_a_non_list_fails_the_step() -> anyhow::Result<()> {
    let env = env_with_pool("wf-items-from-edges").await?;
    for (name, rows) in [("empty", serde_json::json!([])), ("scalar", serde_json::json!("not rows"))] {
        env.create_workflow(
            name,
            serde_json::json!({"steps": [
                {"name": "extract", "job": job(serde_json::json!({"rows": rows}))},
                {"name": "load", "dependsOn": ["extract"],
                 "job": {"poolRef": "pool", "itemsFrom": "{{steps.extract.result.payload.rows}}"}},
                {"name": "report", "dependsOn": ["load"], "job": job(serde_json::json!({"done": true}))},
            ]}),
        )
        .await?;
    }

    let wf = env.wait_workflow("empty", PATIENCE, finished).await?;
    let s = status(&wf);
    assert_eq!(s.phase, WorkflowPhase::Succeeded, "{s:#?}");
    assert_eq!(step(s, "load"), (StepPhase::Succeeded, Some("itemsFrom resolved to an empty list: nothing to run")));
    assert_eq!((s.steps["load"].job.as_deref(), s.steps["load"].attempts), (None, 0));
    assert!(env.jobs().get_opt("empty-load").await?.is_none(), "an empty fan-out creates no Job");
    assert_eq!(s.steps["report"].phase, StepPhase::Succeeded, "the steps after it run");
    assert_eq!(condition(s, "Complete"), Some(("True", "StepsSucceeded", "3 of 3 steps succeeded, the rest were skipped")));

    let wf = env.wait_workflow("scalar", PATIENCE, finished).await?;
    let s = status(&wf);
    assert_eq!(s.phase, WorkflowPhase::Failed, "{s:#?}");
    let why = "TemplateUnresolved: itemsFrom {{steps.extract.result.payload.rows}} is a string, not a list";
    assert_eq!(step(s, "load"), (StepPhase::Failed, Some(why)));
    assert!(env.jobs().get_opt("scalar-load").await?.is_none(), "an unresolvable fan-out creates no Job");
    assert_eq!(step(s, "report"), (StepPhase::Skipped, Some("skipped: load did not succeed")));
    let failed_message = format!("step \"load\" failed: {why}");
    assert_eq!(condition(s, "Failed"), Some(("True", "StepFailed", failed_message.as_str())));
    env.cleanup().await
}

/// build (with a compensation) → gate (approval) → deploy.
fn gated_release(approval: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"steps": [
        {"name": "build", "job": job(serde_json::json!({"v": 7})),
         "compensation": job(serde_json::json!({"undo": "{{steps.build.result.payload.v}}"}))},
        {"name": "gate", "kind": "Approval", "dependsOn": ["build"], "approval": approval},
        {"name": "deploy", "dependsOn": ["gate"], "job": job(serde_json::json!({"deploy": "{{steps.build.result.payload.v}}"}))},
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_approval_fails_the_workflow_skips_what_follows_and_compensates_what_ran() -> anyhow::Result<()> {
    let env = env_with_pool("wf-reject").await?;
    // One rejected with the annotation, one with spec.approvals (the two documented ways).
    for name in ["by-annotation", "by-spec"] {
        env.create_workflow(name, gated_release(serde_json::json!({"timeoutSeconds": 3600}))).await?;
    }
    for name in ["by-annotation", "by-spec"] {
        let wf = env.wait_workflow(name, PATIENCE, |wf| step_is(wf, "gate", StepPhase::Waiting)).await?;
        assert_eq!(status(&wf).phase, WorkflowPhase::Running);
    }
    kubectl(&env, &["annotate", "wf", "by-annotation", "warren.dev/approve-gate=false"])?;
    kubectl(&env, &["patch", "wf", "by-spec", "--type", "merge", "-p", r#"{"spec":{"approvals":{"gate":"Rejected"}}}"#])?;

    for (name, by) in [("by-annotation", "annotation"), ("by-spec", "spec.approvals")] {
        let wf = env.wait_workflow(name, PATIENCE, finished).await?;
        let s = status(&wf);
        assert_eq!((s.phase, s.progress.as_deref()), (WorkflowPhase::Failed, Some("3/3")), "{name}: {s:#?}");
        let rejected = format!("rejected ({by})");
        assert_eq!(step(s, "gate"), (StepPhase::Failed, Some(rejected.as_str())), "{name}");
        assert_eq!(step(s, "deploy"), (StepPhase::Skipped, Some("skipped: gate did not succeed")), "{name}");
        assert!(env.jobs().get_opt(&format!("{name}-deploy")).await?.is_none(), "{name}: nothing runs past a rejected gate");
        // A rejection fails the Workflow like a failed step: what succeeded is undone.
        let compensations: Vec<(&str, StepPhase)> = s.compensations.iter().map(|c| (c.step.as_str(), c.run.phase)).collect();
        assert_eq!(compensations, vec![("build", StepPhase::Succeeded)], "{name}");
        let undo = env.jobs().get(&format!("{name}-build-compensate")).await?;
        assert_eq!(undo.spec.tasks.payload, Some(serde_json::json!({"undo": 7})), "{name}");
        let failed_message = format!("step \"gate\" failed: {rejected}; compensations 1/1 finished");
        assert_eq!(condition(s, "Failed"), Some(("True", "StepFailed", failed_message.as_str())), "{name}");
    }
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_nobody_decides_in_time_fails_the_workflow_with_the_default_on_timeout() -> anyhow::Result<()> {
    let env = env_with_pool("wf-approval-timeout-fail").await?;
    // onTimeout left out: the default is Fail.
    env.create_workflow("release", gated_release(serde_json::json!({"timeoutSeconds": 3}))).await?;
    let wf = env.wait_workflow("release", PATIENCE, |wf| step_is(wf, "gate", StepPhase::Waiting) || finished(wf)).await?;
    assert_eq!(status(&wf).steps["gate"].phase, StepPhase::Waiting, "the gate waits before it times out: {:#?}", status(&wf));

    let wf = env.wait_workflow("release", PATIENCE, finished).await?;
    let s = status(&wf);
    assert_eq!(s.phase, WorkflowPhase::Failed, "{s:#?}");
    let timed_out = "no decision within 3s (onTimeout: Fail)";
    assert_eq!(step(s, "gate"), (StepPhase::Failed, Some(timed_out)));
    let gate = &s.steps["gate"];
    let waited = gate.finished_at.expect("gate finishedAt").duration_since(gate.started_at.expect("gate startedAt"));
    assert!(waited >= jiff::SignedDuration::from_secs(3), "the gate gave up after {waited:?}, before its timeout");
    assert_eq!(step(s, "deploy"), (StepPhase::Skipped, Some("skipped: gate did not succeed")));
    assert!(env.jobs().get_opt("release-deploy").await?.is_none());
    let compensations: Vec<(&str, StepPhase)> = s.compensations.iter().map(|c| (c.step.as_str(), c.run.phase)).collect();
    assert_eq!(compensations, vec![("build", StepPhase::Succeeded)], "a timed-out gate fails the Workflow: build is undone");
    let failed_message = format!("step \"gate\" failed: {timed_out}; compensations 1/1 finished");
    assert_eq!(condition(s, "Failed"), Some(("True", "StepFailed", failed_message.as_str())));
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_that_times_out_with_on_timeout_skip_skips_its_dependents_and_the_workflow_succeeds() -> anyhow::Result<()> {
    let env = env_with_pool("wf-approval-timeout-skip").await?;
    let mut spec = gated_release(serde_json::json!({"timeoutSeconds": 3, "onTimeout": "Skip"}));
    spec["steps"].as_array_mut().expect("steps").push(serde_json::json!(
        {"name": "notify", "dependsOn": ["gate"], "when": "Always", "job": job(serde_json::json!({"notify": "release"}))}
    ));
    env.create_workflow("release", spec).await?;

    let wf = env.wait_workflow("release", PATIENCE, finished).await?;
    let s = status(&wf);
    assert_eq!((s.phase, s.progress.as_deref()), (WorkflowPhase::Succeeded, Some("4/4")), "{s:#?}");
    assert_eq!(step(s, "gate"), (StepPhase::Skipped, Some("no decision within 3s (onTimeout: Skip)")));
    let gate = &s.steps["gate"];
    let waited = gate.finished_at.expect("gate finishedAt").duration_since(gate.started_at.expect("gate startedAt"));
    assert!(waited >= jiff::SignedDuration::from_secs(3), "the gate gave up after {waited:?}, before its timeout");
    assert_eq!(step(s, "deploy"), (StepPhase::Skipped, Some("skipped: gate did not succeed")));
    assert!(env.jobs().get_opt("release-deploy").await?.is_none());
    assert_eq!(s.steps["notify"].phase, StepPhase::Succeeded, "a `when: Always` dependent still runs");
    assert!(s.compensations.is_empty(), "a skipped gate is no failure: nothing is compensated");
    assert!(env.jobs().get_opt("release-build-compensate").await?.is_none());
    assert_eq!(condition(s, "Complete"), Some(("True", "StepsSucceeded", "2 of 4 steps succeeded, the rest were skipped")));
    assert_eq!(condition(s, "Failed"), None);

    // An approval that comes too late changes nothing.
    kubectl(&env, &["annotate", "wf", "release", "warren.dev/approve-gate=true"])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let wf = env.workflows().get("release").await?;
    assert_eq!(step(status(&wf), "gate"), (StepPhase::Skipped, Some("no decision within 3s (onTimeout: Skip)")));
    assert_eq!(status(&wf).phase, WorkflowPhase::Succeeded);
    assert!(env.jobs().get_opt("release-deploy").await?.is_none(), "a late approval starts nothing");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallelism_caps_the_steps_running_at_once_and_every_step_still_runs() -> anyhow::Result<()> {
    let env = env_with_pool("wf-parallelism").await?;
    const STEPS: usize = 5;
    const PARALLELISM: usize = 2;
    let steps: Vec<serde_json::Value> =
        (0..STEPS).map(|i| serde_json::json!({"name": format!("s{i}"), "job": job(serde_json::json!({"slow": true, "n": i}))})).collect();
    env.create_workflow("wide", serde_json::json!({"steps": steps, "parallelism": PARALLELISM})).await?;

    // Watch it run: the steps the Workflow says are running, and the child Jobs that exist and
    // have not finished, sampled until it ends.
    let mut most_running_steps = 0;
    let mut most_unfinished_jobs = 0;
    let mut waiting_messages = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let wf = loop {
        let wf = env.workflows().get("wide").await?;
        if let Some(s) = &wf.status {
            most_running_steps = most_running_steps.max(s.steps.values().filter(|st| st.phase == StepPhase::Running).count());
            waiting_messages.extend(
                s.steps.values().filter(|st| st.phase == StepPhase::Pending).filter_map(|st| st.message.clone()).collect::<Vec<_>>(),
            );
        }
        let unfinished = env
            .jobs()
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|j| !j.status.as_ref().is_some_and(|s| s.phase.is_finished()))
            .count();
        most_unfinished_jobs = most_unfinished_jobs.max(unfinished);
        if finished(&wf) {
            break wf;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "Workflow wide did not finish within {PATIENCE:?}: {:#?}", wf.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let s = status(&wf);
    assert_eq!((s.phase, s.progress.as_deref()), (WorkflowPhase::Succeeded, Some("5/5")), "{s:#?}");
    assert!(s.steps.values().all(|st| st.phase == StepPhase::Succeeded && st.attempts == 1), "{s:#?}");
    assert_eq!(most_running_steps, PARALLELISM, "steps seen Running at once");
    assert_eq!(most_unfinished_jobs, PARALLELISM, "child Jobs seen unfinished at once");
    assert_eq!(waiting_messages, BTreeSet::from(["waiting: parallelism 2 reached".to_string()]), "what a held-back step says");
    // The same from the recorded times, over the whole run: when any step started, at most
    // `parallelism` steps (it included) had started and not finished.
    let spans: Vec<(jiff::Timestamp, jiff::Timestamp)> =
        s.steps.values().map(|st| (st.started_at.expect("startedAt"), st.finished_at.expect("finishedAt"))).collect();
    for (start, _) in &spans {
        let overlapping = spans.iter().filter(|(a, b)| a <= start && start < b).count();
        assert!(overlapping <= PARALLELISM, "{overlapping} steps ran at {start}: {spans:?}");
    }
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steps_timeout_seconds_reaches_its_job_and_an_overrunning_step_fails_the_workflow() -> anyhow::Result<()> {
    let env = env_with_pool("wf-step-timeout").await?;
    let retry = serde_json::json!({"maxAttempts": 2, "backoff": {"initialDelay": "100ms", "factor": 1, "maxDelay": "100ms"}});
    env.create_workflow(
        "timed",
        serde_json::json!({"steps": [
            {"name": "quick", "job": {"poolRef": "pool", "payload": {"n": 1}, "timeoutSeconds": 30}},
            {"name": "stuck", "dependsOn": ["quick"],
             "job": {"poolRef": "pool", "payload": {"hang": true}, "timeoutSeconds": 2, "retry": retry}},
            {"name": "after", "dependsOn": ["stuck"], "job": job(serde_json::json!({"n": 2}))},
        ]}),
    )
    .await?;
    // The handler hangs for 600 s: the Workflow ends long before only because each attempt is
    // cut at 2 s.
    let wf = env.wait_workflow("timed", PATIENCE, finished).await?;
    let s = status(&wf);
    assert_eq!(s.phase, WorkflowPhase::Failed, "{s:#?}");
    assert_eq!(env.jobs().get("timed-stuck").await?.spec.tasks.timeout_seconds, Some(2), "the template's timeoutSeconds is the Job's");
    assert_eq!(env.jobs().get("timed-quick").await?.spec.tasks.timeout_seconds, Some(30));
    assert_eq!(s.steps["quick"].phase, StepPhase::Succeeded, "a step within its timeout is not touched");
    let stuck_message = "Job timed-stuck failed: 1 of 1 tasks failed (indexes 0)";
    assert_eq!(step(s, "stuck"), (StepPhase::Failed, Some(stuck_message)));
    assert_eq!(s.steps["stuck"].attempts, 2, "both attempts timed out: 1 failed task + 1 retry");
    assert_eq!(step(s, "after"), (StepPhase::Skipped, Some("skipped: stuck did not succeed")));
    let failed_message = format!("step \"stuck\" failed: {stuck_message}");
    assert_eq!(condition(s, "Failed"), Some(("True", "StepFailed", failed_message.as_str())));
    env.cleanup().await
}

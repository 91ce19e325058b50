//! Workflows end to end: real RabbitMQ, real worker processes, the Workflow status a user reads.

use std::time::Duration;

use warren_e2e::Env;
use warren_operator::crd::{StepPhase, Workflow, WorkflowPhase, WorkflowStatus};

/// A handler that fails (exit 65, not retried) when its payload says `"fail":true`, sleeps a
/// second when it says `"sleep":1`, and otherwise returns `{"job": <its Job>, "payload": <its payload>}`.
fn echo_handler() -> serde_json::Value {
    serde_json::json!([
        "sh",
        "-c",
        r#"payload=$(cat)
case "$payload" in *'"fail":true'*) echo "failing as asked" >&2; exit 65;; esac
case "$payload" in *'"sleep":1'*) sleep 1;; esac
echo "warren:result {\"job\": \"$WARREN_JOB_NAME\", \"payload\": $payload}""#
    ])
}

async fn env_with_pool(test: &str) -> anyhow::Result<Env> {
    let env = Env::start(test).await?;
    env.create_pool("pool", serde_json::json!({"workers": {"handler": echo_handler()}, "replicas": 2, "concurrency": 2})).await?;
    Ok(env)
}

fn status(wf: &Workflow) -> &WorkflowStatus {
    wf.status.as_ref().expect("status")
}

fn finished(wf: &Workflow) -> bool {
    wf.status.as_ref().is_some_and(|s| s.phase.is_finished())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diamond_runs_b_and_c_in_parallel_and_builds_d_from_their_results() -> anyhow::Result<()> {
    let env = env_with_pool("wf-diamond").await?;
    let job = |payload: serde_json::Value| serde_json::json!({"poolRef": "pool", "payload": payload});
    env.create_workflow(
        "diamond",
        serde_json::json!({"steps": [
            {"name": "a", "job": job(serde_json::json!({"n": 1}))},
            {"name": "b", "dependsOn": ["a"], "job": job(serde_json::json!({"n": 2, "sleep": 1}))},
            {"name": "c", "dependsOn": ["a"], "job": job(serde_json::json!({"n": 3, "sleep": 1}))},
            {"name": "d", "dependsOn": ["b", "c"], "job": job(serde_json::json!({
                "fromB": "{{steps.b.result.payload.n}}",
                "fromC": "{{steps.c.result.payload.n}}",
                "label": "b={{steps.b.result.payload.n}},c={{steps.c.result.job}}",
            }))},
        ]}),
    )
    .await?;

    let wf = env.wait_workflow("diamond", Duration::from_secs(180), finished).await?;
    let s = status(&wf);
    assert_eq!(s.phase, WorkflowPhase::Succeeded, "{s:#?}");
    assert_eq!(s.progress.as_deref(), Some("4/4"));
    assert!(s.conditions.iter().any(|c| c.type_ == "Complete" && c.status == "True"));
    for name in ["a", "b", "c", "d"] {
        let step = &s.steps[name];
        assert_eq!(step.phase, StepPhase::Succeeded, "{name}: {step:?}");
        assert_eq!(step.job.as_deref(), Some(format!("diamond-{name}").as_str()));
        assert_eq!(step.attempts, 1);
    }
    let (a, b, c, d) = (&s.steps["a"], &s.steps["b"], &s.steps["c"], &s.steps["d"]);
    let (start, end) =
        (|x: &warren_operator::crd::StepStatus| x.started_at.unwrap(), |x: &warren_operator::crd::StepStatus| x.finished_at.unwrap());
    assert!(end(a) <= start(b) && end(a) <= start(c), "b and c start after a");
    assert!(start(b) < end(c) && start(c) < end(b), "b and c overlap: b {:?}..{:?}, c {:?}..{:?}", start(b), end(b), start(c), end(c));
    assert!(start(d) >= end(b) && start(d) >= end(c), "d starts after b and c");

    // D's payload was built from B's and C's results, types kept where the template is the whole value.
    let want = serde_json::json!({"fromB": 2, "fromC": 3, "label": "b=2,c=diamond-c"});
    let d_job = env.jobs().get("diamond-d").await?;
    assert_eq!(d_job.spec.tasks.payload, Some(want.clone()));
    assert_eq!(d.result, Some(serde_json::json!({"job": "diamond-d", "payload": want})));
    assert_eq!(d_job.status.and_then(|s| s.result), d.result, "the Job's status.result is what the step shows");

    // The children belong to the Workflow: deleting it deletes them.
    let owner = &d_job.metadata.owner_references.as_ref().expect("owner references")[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Workflow", "diamond"));
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_runs_the_compensations_in_reverse_order_and_the_workflow_fails() -> anyhow::Result<()> {
    let env = env_with_pool("wf-saga").await?;
    let job = |payload: serde_json::Value| serde_json::json!({"poolRef": "pool", "payload": payload});
    env.create_workflow(
        "order",
        serde_json::json!({"steps": [
        {"name": "charge", "job": job(serde_json::json!({"amount": 42})),
         "compensation": job(serde_json::json!({"refund": "{{steps.charge.result.payload.amount}}"}))},
        {"name": "reserve", "dependsOn": ["charge"], "job": job(serde_json::json!({"sku": "book"})),
         "compensation": job(serde_json::json!({"release": "{{steps.reserve.result.payload.sku}}"}))},
        {"name": "ship", "dependsOn": ["reserve"], "job": job(serde_json::json!({"fail": true})),
         "compensation": job(serde_json::json!({"never": "runs"}))},
        {"name": "notify", "dependsOn": ["ship"], "job": job(serde_json::json!({"email": "shipped"}))},
    ], "finally": job(serde_json::json!({"audit": "order"}))}),
    )
    .await?;

    let wf = env.wait_workflow("order", Duration::from_secs(180), finished).await?;
    let s = status(&wf);
    assert_eq!(s.phase, WorkflowPhase::Failed, "{s:#?}");
    assert_eq!(s.steps["ship"].phase, StepPhase::Failed);
    assert!(s.steps["ship"].message.as_deref().unwrap_or_default().contains("Job order-ship failed"), "{:?}", s.steps["ship"]);
    assert_eq!(s.steps["notify"].phase, StepPhase::Skipped);
    assert_eq!(s.steps["notify"].message.as_deref(), Some("skipped: ship did not succeed"));

    // Compensations of the succeeded steps only, newest first, each with its outcome.
    let outcomes: Vec<(&str, StepPhase, Option<&str>)> =
        s.compensations.iter().map(|c| (c.step.as_str(), c.run.phase, c.run.job.as_deref())).collect();
    assert_eq!(
        outcomes,
        vec![
            ("reserve", StepPhase::Succeeded, Some("order-reserve-compensate")),
            ("charge", StepPhase::Succeeded, Some("order-charge-compensate")),
        ]
    );
    assert!(s.compensations[0].run.finished_at <= s.compensations[1].run.started_at, "one at a time, in order");
    assert_eq!(env.jobs().get("order-charge-compensate").await?.spec.tasks.payload, Some(serde_json::json!({"refund": 42})));
    assert_eq!(env.jobs().get("order-reserve-compensate").await?.spec.tasks.payload, Some(serde_json::json!({"release": "book"})));
    assert!(env.jobs().get_opt("order-ship-compensate").await?.is_none(), "a failed step is not compensated");
    assert_eq!(s.finally.as_ref().map(|f| f.phase), Some(StepPhase::Succeeded), "finally runs whatever happened");

    let failed = s.conditions.iter().find(|c| c.type_ == "Failed").expect("Failed condition");
    assert_eq!(failed.reason, "StepFailed");
    assert!(failed.message.starts_with("step \"ship\" failed: Job order-ship failed"), "{}", failed.message);
    assert!(failed.message.ends_with("; compensations 2/2 finished"), "{}", failed.message);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_step_waits_until_approved_with_kubectl_annotate() -> anyhow::Result<()> {
    let env = env_with_pool("wf-approval").await?;
    env.create_workflow(
        "release",
        serde_json::json!({"steps": [
            {"name": "build", "job": {"poolRef": "pool", "payload": {"v": 1}}},
            {"name": "gate", "kind": "Approval", "dependsOn": ["build"], "approval": {"timeoutSeconds": 3600}},
            {"name": "deploy", "dependsOn": ["gate"], "job": {"poolRef": "pool", "payload": {"v": "{{steps.build.result.payload.v}}"}}},
        ]}),
    )
    .await?;
    let wf = env
        .wait_workflow("release", Duration::from_secs(120), |wf| {
            wf.status.as_ref().is_some_and(|s| s.steps.get("gate").is_some_and(|g| g.phase == StepPhase::Waiting))
        })
        .await?;
    let s = status(&wf);
    assert_eq!((s.phase, s.progress.as_deref()), (WorkflowPhase::Running, Some("1/3")));
    assert_eq!(
        s.steps["gate"].message.as_deref(),
        Some("waiting for approval: kubectl annotate wf release warren.dev/approve-gate=true (or =false to reject)")
    );
    assert_eq!(s.steps["deploy"].phase, StepPhase::Pending);
    assert!(env.jobs().get_opt("release-deploy").await?.is_none(), "nothing runs past the gate");

    // The documented command.
    let out = std::process::Command::new("kubectl")
        .env("KUBECONFIG", env.kubeconfig())
        .args(["-n", &env.namespace, "annotate", "wf", "release", "warren.dev/approve-gate=true"])
        .output()?;
    assert!(out.status.success(), "kubectl annotate failed: {}", String::from_utf8_lossy(&out.stderr));

    let wf = env.wait_workflow("release", Duration::from_secs(120), finished).await?;
    let s = status(&wf);
    assert_eq!(s.phase, WorkflowPhase::Succeeded, "{s:#?}");
    assert_eq!((s.steps["gate"].phase, s.steps["gate"].message.as_deref()), (StepPhase::Succeeded, Some("approved (annotation)")));
    assert_eq!(env.jobs().get("release-deploy").await?.spec.tasks.payload, Some(serde_json::json!({"v": 1})));
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cyclic_workflow_is_rejected_with_the_cycle_named_and_nothing_runs() -> anyhow::Result<()> {
    let env = env_with_pool("wf-cycle").await?;
    let step = |name: &str, dep: &str| serde_json::json!({"name": name, "dependsOn": [dep], "job": {"poolRef": "pool"}});
    env.create_workflow("loop", serde_json::json!({"steps": [step("a", "c"), step("b", "a"), step("c", "b")]})).await?;
    let wf = env
        .wait_workflow("loop", Duration::from_secs(60), |wf| {
            wf.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready"))
        })
        .await?;
    let s = status(&wf);
    let ready = s.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_str(), ready.message.as_str()), ("False", "Cycle", "cycle: a -> c -> b -> a"));
    assert_eq!(ready.observed_generation, wf.metadata.generation);
    assert_eq!(s.phase, WorkflowPhase::Failed);
    assert!(s.steps.is_empty());
    // Give a wrongly started step time to show up, then check none did.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(env.jobs().list(&Default::default()).await?.items.is_empty(), "no Job was created");

    // Duplicate names never get in: the CRD's rule rejects them.
    let duplicate = env
        .create_workflow("twice", serde_json::json!({"steps": [step("a", "b"), {"name": "a", "job": {"poolRef": "pool"}}]}))
        .await
        .expect_err("duplicate step names are rejected");
    assert!(duplicate.to_string().contains("step names must be unique"), "{duplicate}");
    env.cleanup().await
}

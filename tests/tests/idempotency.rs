//! `idempotencyKey` across Jobs end to end: of the Jobs of a namespace with one key, only the
//! first runs; the others enqueue nothing, say whose key it is, and mirror its phase; this holds
//! across an operator restart, and deleting the holder frees the key. Executions are counted
//! from the line each task's handler records on the side channel `runs` when it ends.

use std::time::Duration;

use kube::api::DeleteParams;
use warren_e2e::Env;
use warren_operator::crd::{Job, JobPhase, JobStatus};

const PATIENCE: Duration = Duration::from_secs(120);

fn status(job: &Job) -> JobStatus {
    job.status.clone().unwrap_or_default()
}

fn ready(job: &Job) -> Option<(String, String, String)> {
    status(job).conditions.iter().find(|c| c.type_ == "Ready").map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn is_duplicate(job: &Job) -> bool {
    ready(job).is_some_and(|(_, reason, _)| reason == "DuplicateOf")
}

/// Executions of a Job's tasks, from the `done <job> <index>` lines its handler records.
async fn runs(env: &Env, job: &str) -> anyhow::Result<usize> {
    Ok(env.side().lines("runs").await?.iter().filter(|line| line.split_whitespace().nth(1) == Some(job)).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_with_one_idempotency_key_run_once_across_an_operator_restart() -> anyhow::Result<()> {
    if warren_e2e::skip_on_real_cluster("this test kills and restarts the operator process it started") {
        return Ok(());
    }
    let mut env = Env::start("idempotency").await?;
    // Each task waits until the gate `release-<job>` opens, then records its run. Only "first"
    // is held; a duplicate that ran by mistake would be counted, not stuck.
    let handler = serde_json::json!([
        "sh",
        "-c",
        "set -e; cat >/dev/null; \"$WARREN_E2E_PROBE\" wait release-$WARREN_JOB_NAME; \
         \"$WARREN_E2E_PROBE\" record runs done $WARREN_JOB_NAME $WARREN_TASK_INDEX"
    ]);
    for job in ["second", "third", "fourth"] {
        env.side().open(&format!("release-{job}")).await?;
    }
    env.create_pool(
        "pool",
        serde_json::json!({"workers": {"handler": handler, "env": env.side().pod_env()}, "replicas": 1, "concurrency": 4}),
    )
    .await?;
    let spec = serde_json::json!({"poolRef": "pool", "completions": 3, "idempotencyKey": "report-2026-12-01"});

    env.create_job("first", spec.clone()).await?;
    env.wait_job("first", PATIENCE, |j| status(j).running == 3).await?;
    env.create_job("second", spec.clone()).await?;
    let second = env.wait_job("second", PATIENCE, |j| is_duplicate(j) && status(j).phase == JobPhase::Running).await?;
    assert_eq!(
        ready(&second),
        Some((
            "False".into(),
            "DuplicateOf".into(),
            "idempotencyKey \"report-2026-12-01\" is held by Job first (created earlier); this Job does not run and mirrors its phase"
                .into()
        ))
    );
    assert_eq!((status(&second).enqueued, status(&second).succeeded), (0, 0));

    // A restarted operator decides the same, for old and new duplicates.
    env.kill_operator().await?;
    env.start_operator()?;
    env.create_job("third", spec.clone()).await?;
    env.wait_job("third", PATIENCE, is_duplicate).await?;

    env.side().open("release-first").await?;
    let first = env.wait_job("first", PATIENCE, |j| status(j).phase.is_finished()).await?;
    assert_eq!((status(&first).phase, status(&first).succeeded), (JobPhase::Succeeded, 3));
    for name in ["second", "third"] {
        let job = env.wait_job(name, PATIENCE, |j| status(j).phase == JobPhase::Succeeded).await?;
        assert!(is_duplicate(&job), "{name} stays a duplicate");
        assert_eq!((status(&job).enqueued, status(&job).succeeded), (0, 0), "{name}");
    }
    assert_eq!((runs(&env, "first").await?, runs(&env, "second").await?, runs(&env, "third").await?), (3, 0, 0));

    // Deleting the holder frees the key for a new Job; the duplicates stay what they are.
    env.jobs().delete("first", &DeleteParams::default()).await?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while env.jobs().get_opt("first").await?.is_some() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "Job first was not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.create_job("fourth", spec.clone()).await?;
    let fourth = env.wait_job("fourth", PATIENCE, |j| status(j).phase.is_finished()).await?;
    assert_eq!((status(&fourth).phase, status(&fourth).succeeded), (JobPhase::Succeeded, 3), "{:?}", status(&fourth));
    assert!(!is_duplicate(&fourth));
    assert_eq!(runs(&env, "fourth").await?, 3);
    let second = env.jobs().get("second").await?;
    assert!(is_duplicate(&second));
    assert_eq!(status(&second).enqueued, 0);
    env.cleanup().await
}

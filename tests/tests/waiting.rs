//! Why a Job waits (issue #15, point 5, the reasons that need no flow control): `status.waiting`
//! and the `WAITING` column say what holds a Job's tasks — a higher priority class, the queue,
//! its start time — and go away when nothing does. Observed through the API only.

use std::time::{Duration, Instant};

use warren_e2e::Env;
use warren_operator::crd::JobWaiting;

async fn waiting_of(env: &Env, name: &str) -> anyhow::Result<(Option<JobWaiting>, String)> {
    let job = env.jobs().get(name).await?;
    let status = job.status.unwrap_or_default();
    Ok((status.waiting, format!("{:?}", status.phase)))
}

/// Polls until `check` holds of the Job's waiting status (or fails after 2 minutes).
async fn wait_for(
    env: &Env,
    name: &str,
    what: &str,
    check: impl Fn(&Option<JobWaiting>, &str) -> bool,
) -> anyhow::Result<Option<JobWaiting>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (waiting, phase) = waiting_of(env, name).await?;
        if check(&waiting, &phase) {
            return Ok(waiting);
        }
        anyhow::ensure!(Instant::now() < deadline, "{name}: {what}; last seen {phase} waiting {waiting:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_says_why_its_tasks_wait_and_stops_saying_it_when_they_run() -> anyhow::Result<()> {
    let env = Env::start("waiting").await?;
    // One worker slot: a busy high-priority Job holds every normal task behind it.
    env.create_pool(
        "pool",
        serde_json::json!({"workers": {"handler": ["sh", "-c", "cat >/dev/null; sleep 0.2"]}, "replicas": 1, "concurrency": 1}),
    )
    .await?;
    env.create_job("urgent", serde_json::json!({"poolRef": "pool", "priority": "high", "completions": 40})).await?;
    wait_for(&env, "urgent", "the urgent Job runs", |_, phase| phase == "Running").await?;
    env.create_job("routine", serde_json::json!({"poolRef": "pool", "priority": "normal", "completions": 3})).await?;

    let behind = wait_for(&env, "routine", "the routine Job waits behind the urgent one", |w, _| {
        w.as_ref().is_some_and(|w| w.reason == "BehindHigherPriority")
    })
    .await?
    .expect("waiting");
    assert!(behind.message.contains("of higher priority (high) wait in WorkerPool \"pool\""), "{}", behind.message);
    assert!(behind.message.ends_with("3 tasks of this Job wait"), "{}", behind.message);
    assert!(behind.tasks_ahead.is_some_and(|n| n > 0 && n <= 40), "{behind:?}");
    // The urgent Job itself waits only for the queue (one slot, nothing ahead of it).
    let urgent =
        wait_for(&env, "urgent", "the urgent Job's tasks are queued", |w, _| w.as_ref().is_some_and(|w| w.reason == "Queued")).await?;
    let urgent = urgent.expect("waiting");
    assert!(urgent.message.contains("the pool runs 1 tasks at once"), "{}", urgent.message);
    assert_eq!(urgent.tasks_ahead, Some(0), "{urgent:?}");
    // `kubectl get wjob` shows it.
    let table = warren_e2e::kubectl(env.kubeconfig(), &["get", "wjob", "routine", "-n", &env.namespace], None)?;
    assert!(table.lines().next().unwrap_or_default().contains("WAITING"), "{table}");
    // (The urgent Job has seconds of work left: the routine one still waits behind it.)
    assert!(table.lines().nth(1).unwrap_or_default().contains("BehindHigherPriority"), "{table}");

    // Once the urgent Job is done the routine one runs; done, nothing waits.
    for name in ["urgent", "routine"] {
        wait_for(&env, name, "the Job succeeds and waits no more", |w, phase| phase == "Succeeded" && w.is_none()).await?;
    }

    // A Job with a start time waits for it, and says so.
    let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600);
    env.create_job("later", serde_json::json!({"poolRef": "pool", "completions": 1, "startAt": at.to_string()})).await?;
    let delayed =
        wait_for(&env, "later", "the delayed Job waits for its start", |w, _| w.as_ref().is_some_and(|w| w.reason == "DelayedUntil"))
            .await?
            .expect("waiting");
    assert!(delayed.message.contains("(startAt)"), "{}", delayed.message);
    env.cleanup().await
}

//! Delayed Jobs (issue #16.1): a Job with `startAt` in the future enqueues nothing before it and
//! says why it waits (`Pending`, `Ready=False` reason `DelayedUntil`); at the time it runs. A
//! time in the past starts at once.

use std::time::Duration;

use warren_e2e::Env;
use warren_operator::crd::JobPhase;

const PATIENCE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_start_at_waits_for_it_and_a_past_one_starts_at_once() -> anyhow::Result<()> {
    let env = Env::start("delayed").await?;
    env.create_pool("pool", serde_json::json!({"workers": {"handler": ["sh", "-c", "cat >/dev/null"]}, "replicas": 1})).await?;
    env.wait_pool_ready("pool", PATIENCE).await?;
    let start_at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(6);
    let start_at_text = start_at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    env.create_job("later", serde_json::json!({"poolRef": "pool", "completions": 3, "startAt": start_at_text})).await?;
    env.create_job("past", serde_json::json!({"poolRef": "pool", "completions": 2, "startAt": "2020-01-01T00:00:00Z"})).await?;

    let waiting = env
        .wait_job("later", PATIENCE, |j| {
            j.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == "DelayedUntil"))
        })
        .await?;
    let s = waiting.status.expect("status");
    let ready = s.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready");
    assert_eq!((s.phase, s.enqueued, ready.status.as_str()), (JobPhase::Pending, 0, "False"), "{s:?}");
    assert_eq!(ready.message, format!("the Job starts at {start_at_text} (startAt)"));

    let past = env.wait_job("past", PATIENCE, |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    assert_eq!(past.status.expect("status").phase, JobPhase::Succeeded, "a past startAt starts at once");

    let done = env.wait_job("later", PATIENCE, |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    let s = done.status.expect("status");
    assert_eq!((s.phase, s.succeeded), (JobPhase::Succeeded, 3), "{s:?}");
    // Its first task started no earlier than startAt (whole seconds: the status says seconds).
    let started = s.start_time.expect("startTime").0;
    let floor = start_at.as_second();
    assert!(started.as_second() >= floor, "started at {started}, before startAt {start_at_text}");
    env.cleanup().await
}

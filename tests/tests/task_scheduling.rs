//! How a worker runs the tasks it holds, end to end (issue #18.8): a Job's `timeoutSeconds` cuts
//! an attempt that runs too long (it fails, is retried, and is dead-lettered once out of
//! attempts), and a pool's `starvationSeconds` lets a low-priority task that waited that long
//! in a worker go ahead of a high-priority backlog. Observed through the API and the `warren`
//! CLI, the way a user sees it.

use std::time::Duration;

use kube::api::DeleteParams;
use warren_e2e::Env;
use warren_operator::crd::{Job, JobPhase, JobStatus};
use warren_protocol::names;

const PATIENCE: Duration = Duration::from_secs(180);

fn finished(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|s| s.phase.is_finished())
}

fn status(job: Job) -> JobStatus {
    job.status.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_past_timeout_seconds_fails_and_is_retried_and_one_that_always_overruns_is_dead_lettered() -> anyhow::Result<()> {
    let env = Env::start("task-timeout").await?;
    // Index 4 hangs on its first attempt only, index 5 on every attempt; the others are quick.
    // A hanging attempt would sleep 600 s: the Job ends within PATIENCE only if the worker cuts
    // each one at timeoutSeconds.
    let handler = serde_json::json!([
        "sh",
        "-c",
        "cat >/dev/null; case $WARREN_TASK_INDEX in 4) [ \"$WARREN_ATTEMPT\" -ge 2 ] || sleep 600;; 5) sleep 600;; esac"
    ]);
    env.create_pool("pool", serde_json::json!({"workers": {"handler": handler}, "replicas": 1, "concurrency": 6})).await?;
    env.create_job(
        "overrun",
        serde_json::json!({
            "poolRef": "pool", "completions": 6, "timeoutSeconds": 2,
            "retry": {"maxAttempts": 3, "backoff": {"initialDelay": "100ms", "factor": 2, "maxDelay": "200ms"}}
        }),
    )
    .await?;

    let s = status(env.wait_job("overrun", PATIENCE, finished).await?);
    assert_eq!(s.phase, JobPhase::Failed, "{s:#?}");
    assert_eq!((s.succeeded, s.failed, s.dead_lettered), (5, 1, 1), "{s:#?}");
    assert_eq!((s.succeeded_indexes.as_str(), s.failed_indexes.as_str()), ("0-4", "5"));
    assert_eq!(s.retries, 3, "index 4 timed out once, index 5 on 2 of its 3 attempts before it ran out");
    assert_eq!(s.running, 0, "no attempt is left running");
    let failed = s.conditions.iter().find(|c| c.type_ == "Failed").expect("Failed condition");
    assert_eq!(
        (failed.status.as_str(), failed.reason.as_str(), failed.message.as_str()),
        ("True", "TasksFailed", "1 of 6 tasks failed (indexes 5)")
    );
    env.wait_events("overrun", Duration::from_secs(30), |events| {
        events
            .iter()
            .any(|(type_, action, reason)| (type_.as_str(), action.as_str(), reason.as_str()) == ("Warning", "Fail", "TasksFailed"))
    })
    .await?;

    // The dead letter says why: out of attempts, the last one timed out.
    assert_eq!(env.queue_depth(&names::dead_letter_queue(&env.namespace, "pool")).await?, 1);
    let listing = env.warren(&["dlq", "list", "--pool", "pool"])?;
    let rows: Vec<Vec<&str>> =
        listing.lines().skip(1).filter(|l| !l.contains("dead letter(s) in")).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 1, "{listing}");
    assert_eq!(&rows[0][..5], ["overrun", "5", "3", "0", "attempts-exhausted"], "job, index, attempts, replays, reason: {listing}");
    assert_eq!(rows[0][5..].join(" "), "timed out after 2s", "{listing}");
    env.cleanup().await
}

/// Starts a pool of one worker with three task slots and priorities high > normal > low, fills
/// two slots with a long `normal` Job ("blocker"), so that the high-priority Job ("urgent", 20
/// tasks of a second each) runs one task at a time in the third with its next tasks buffered in
/// the worker, and then adds a low-priority Job ("patient", 2 quick tasks) behind it. Returns
/// the two Jobs once both finished, as they were when "patient" finished and at the end.
///
/// Why the blocker: a worker takes at most `concurrency` deliveries per class (its prefetch), so
/// while every slot runs a high-priority task no further high-priority task is in the worker,
/// and a freed slot starts the buffered low-priority one whatever `starvationSeconds` says. The
/// choice `starvationSeconds` governs only exists when higher-class tasks wait in the worker too.
async fn low_behind_high_backlog(env: &Env, starvation_seconds: u32) -> anyhow::Result<(JobStatus, JobStatus, JobStatus)> {
    let handler = serde_json::json!([
        "sh",
        "-c",
        r#"payload=$(cat)
case "$payload" in *'"block":true'*) sleep 600;; *'"slow":true'*) sleep 1;; esac"#
    ]);
    env.create_pool(
        "pool",
        serde_json::json!({
            "workers": {"handler": handler}, "replicas": 1, "concurrency": 3,
            "priorities": ["high", "normal", "low"], "starvationSeconds": starvation_seconds,
        }),
    )
    .await?;
    env.create_job("blocker", serde_json::json!({"poolRef": "pool", "priority": "normal", "completions": 2, "payload": {"block": true}}))
        .await?;
    env.wait_job("blocker", PATIENCE, |j| j.status.as_ref().is_some_and(|s| s.running == 2)).await?;
    env.create_job("urgent", serde_json::json!({"poolRef": "pool", "priority": "high", "completions": 20, "payload": {"slow": true}}))
        .await?;
    // The backlog is in the worker (one running, the next buffered) before the low task arrives.
    env.wait_job("urgent", PATIENCE, |j| j.status.as_ref().is_some_and(|s| s.phase == JobPhase::Running)).await?;
    env.create_job("patient", serde_json::json!({"poolRef": "pool", "priority": "low", "completions": 2})).await?;

    let patient = status(env.wait_job("patient", PATIENCE, finished).await?);
    let urgent_then = status(env.jobs().get("urgent").await?);
    let urgent = status(env.wait_job("urgent", PATIENCE, finished).await?);
    assert_eq!((patient.phase, patient.succeeded), (JobPhase::Succeeded, 2), "{patient:#?}");
    assert_eq!((urgent.phase, urgent.succeeded), (JobPhase::Succeeded, 20), "{urgent:#?}");
    // The blocker is cancelled, not left sleeping.
    env.jobs().delete("blocker", &DeleteParams::default()).await?;
    Ok((patient, urgent_then, urgent))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_priority_task_waiting_past_starvation_seconds_goes_ahead_of_a_high_priority_backlog() -> anyhow::Result<()> {
    let env = Env::start("starvation").await?;
    let (patient, urgent_then, urgent) = low_behind_high_backlog(&env, 2).await?;
    assert!(
        !urgent_then.phase.is_finished() && urgent_then.succeeded < 20,
        "the low-priority Job finished while the high-priority backlog still ran: urgent was at {}/20 ({:?})",
        urgent_then.succeeded,
        urgent_then.phase
    );
    assert!(
        patient.completion_time < urgent.completion_time,
        "patient finished at {:?}, urgent at {:?}",
        patient.completion_time,
        urgent.completion_time
    );
    eprintln!("with starvationSeconds 2 the low-priority Job finished with the high-priority one at {}/20", urgent_then.succeeded);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_starvation_seconds_a_low_priority_task_waits_for_the_high_priority_backlog() -> anyhow::Result<()> {
    let env = Env::start("no-starvation").await?;
    // The same run with a limit the backlog never reaches: strict priority.
    let (patient, _, urgent) = low_behind_high_backlog(&env, 3600).await?;
    let (first_low, last_high) = (patient.start_time.expect("patient startTime"), urgent.completion_time.expect("urgent completionTime"));
    assert!(
        first_low >= last_high,
        "a low-priority task started at {first_low:?}, before the last high-priority one ended at {last_high:?}"
    );
    env.cleanup().await
}

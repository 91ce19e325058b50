//! Failed attempts end to end: retries through RabbitMQ delay queues and dead letters, counted
//! exactly in the Job status.

use std::time::Duration;

use warren_e2e::Env;
use warren_operator::crd::JobPhase;
use warren_protocol::names;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_failing_their_first_two_attempts_succeed_on_the_third_with_exact_retry_counts() -> anyhow::Result<()> {
    let env = Env::start("retries").await?;
    // Fails attempts 1 and 2 of every task (exit 1 = retryable), succeeds on attempt 3.
    let flaky = serde_json::json!(["sh", "-c", "cat >/dev/null; [ \"$WARREN_ATTEMPT\" -ge 3 ]"]);
    env.create_pool("pool", serde_json::json!({"workers": {"handler": flaky}, "replicas": 2, "concurrency": 4})).await?;
    env.create_job(
        "flaky",
        serde_json::json!({
            "poolRef": "pool", "completions": 50,
            "retry": {"maxAttempts": 3, "backoff": {"initialDelay": "100ms", "factor": 2, "maxDelay": "1s", "jitter": 0.2}}
        }),
    )
    .await?;
    let job = env.wait_job("flaky", Duration::from_secs(180), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    let status = job.status.expect("status");
    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    assert_eq!((status.succeeded, status.failed, status.dead_lettered), (50, 0, 0));
    assert_eq!(status.retries, 100, "2 retries per task, each counted once");
    assert_eq!(status.succeeded_indexes, "0-49");
    delete_retry_tiers(&env, &[100, 200]).await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_wait_in_the_broker_for_the_policys_delay() -> anyhow::Result<()> {
    let env = Env::start("retry-delays").await?;
    // Each attempt records "<index> <attempt> <start ms>" on the side channel `attempts` (the
    // time is taken when the attempt starts, before the record); attempts 1 and 2 fail.
    let handler = serde_json::json!([
        "sh",
        "-c",
        "cat >/dev/null; \"$WARREN_E2E_PROBE\" record attempts \"$WARREN_TASK_INDEX\" \"$WARREN_ATTEMPT\" \"$(date +%s%3N)\"; \
         [ \"$WARREN_ATTEMPT\" -ge 3 ]"
    ]);
    env.create_pool(
        "pool",
        serde_json::json!({"workers": {"handler": handler, "env": env.side().pod_env()}, "replicas": 1, "concurrency": 4}),
    )
    .await?;
    env.create_job(
        "delays",
        serde_json::json!({
            "poolRef": "pool", "completions": 4,
            "retry": {"maxAttempts": 3, "backoff": {"initialDelay": "1s", "factor": 2, "maxDelay": "10s", "jitter": 0.2}}
        }),
    )
    .await?;
    let job = env.wait_job("delays", Duration::from_secs(120), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    let status = job.status.expect("status");
    assert_eq!((status.phase, status.succeeded, status.retries), (JobPhase::Succeeded, 4, 8), "{status:?}");

    let mut starts = std::collections::BTreeMap::<(u32, u32), u64>::new();
    for line in env.side().lines("attempts").await? {
        let fields: Vec<u64> = line.split_whitespace().map(str::parse).collect::<Result<_, _>>()?;
        starts.insert((fields[0] as u32, fields[1] as u32), fields[2]);
    }
    assert_eq!(starts.len(), 12, "3 attempts of 4 tasks: {starts:?}");
    // Attempt 2 waits 1 s and attempt 3 waits 2 s, minus up to 20 % jitter. The wait happens in
    // a RabbitMQ delay queue, so no retry can start before its jittered delay is over; how much
    // later it starts depends on this machine's load, so that is printed, not asserted.
    for (attempt, policy_ms) in [(2u32, 1_000u64), (3, 2_000)] {
        let gaps: Vec<u64> = (0..4).map(|i| starts[&(i, attempt)] - starts[&(i, attempt - 1)]).collect();
        let earliest = policy_ms * 8 / 10;
        assert!(gaps.iter().all(|gap| *gap >= earliest), "attempt {attempt} started before {earliest} ms: {gaps:?}");
        let mean = gaps.iter().sum::<u64>() as f64 / gaps.len() as f64;
        println!(
            "retry delay before attempt {attempt}: policy {policy_ms} ms (jittered {earliest}-{policy_ms}), measured {gaps:?} ms, mean {:.2}x policy",
            mean / policy_ms as f64
        );
    }
    delete_retry_tiers(&env, &[1_000, 2_000]).await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_tasks_are_dead_lettered_after_max_attempts_and_fail_the_job() -> anyhow::Result<()> {
    let env = Env::start("poison").await?;
    // Task 3 always fails (retryable), task 5 fails permanently (exit 65); the rest succeed.
    let handler = serde_json::json!([
        "sh",
        "-c",
        "cat >/dev/null; case $WARREN_TASK_INDEX in 3) echo boom >&2; exit 1;; 5) echo bad input >&2; exit 65;; esac"
    ]);
    env.create_pool("pool", serde_json::json!({"workers": {"handler": handler}, "replicas": 1, "concurrency": 4})).await?;
    env.create_job(
        "mixed",
        serde_json::json!({
            "poolRef": "pool", "completions": 8,
            "retry": {"maxAttempts": 4, "backoff": {"initialDelay": "50ms", "factor": 2, "maxDelay": "200ms"}}
        }),
    )
    .await?;
    let job = env.wait_job("mixed", Duration::from_secs(120), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    let status = job.status.expect("status");
    assert_eq!(status.phase, JobPhase::Failed, "{status:?}");
    assert_eq!((status.succeeded, status.failed, status.dead_lettered), (6, 2, 2));
    assert_eq!(status.failed_indexes, "3,5");
    assert_eq!(status.succeeded_indexes, "0-2,4,6-7");
    assert_eq!(status.retries, 3, "task 3 was retried 3 times (4 attempts); task 5 never");
    let failed = status.conditions.iter().find(|c| c.type_ == "Failed").expect("Failed condition");
    assert_eq!((failed.status.as_str(), failed.reason.as_str()), ("True", "TasksFailed"));
    assert_eq!(failed.message, "2 of 8 tasks failed (indexes 3,5)");
    assert_eq!(env.queue_depth(&names::dead_letter_queue(&env.namespace, "pool")).await?, 2);
    delete_retry_tiers(&env, &[50, 100, 200]).await?;
    env.cleanup().await
}

/// The retry-tier queues the workers declared (these pools keep their queues on deletion).
async fn delete_retry_tiers(env: &Env, tiers_ms: &[u64]) -> anyhow::Result<()> {
    for ms in tiers_ms {
        warren_e2e::delete_queue(&names::retry_queue(&env.namespace, "pool", *ms)).await?;
    }
    Ok(())
}

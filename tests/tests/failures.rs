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
    env.create_job("flaky", serde_json::json!({
        "poolRef": "pool", "completions": 50,
        "retry": {"maxAttempts": 3, "backoff": {"initialDelay": "100ms", "factor": 2, "maxDelay": "1s", "jitter": 0.2}}
    }))
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
async fn poison_tasks_are_dead_lettered_after_max_attempts_and_fail_the_job() -> anyhow::Result<()> {
    let env = Env::start("poison").await?;
    // Task 3 always fails (retryable), task 5 fails permanently (exit 65); the rest succeed.
    let handler = serde_json::json!(["sh", "-c",
        "cat >/dev/null; case $WARREN_TASK_INDEX in 3) echo boom >&2; exit 1;; 5) echo bad input >&2; exit 65;; esac"]);
    env.create_pool("pool", serde_json::json!({"workers": {"handler": handler}, "replicas": 1, "concurrency": 4})).await?;
    env.create_job("mixed", serde_json::json!({
        "poolRef": "pool", "completions": 8,
        "retry": {"maxAttempts": 4, "backoff": {"initialDelay": "50ms", "factor": 2, "maxDelay": "200ms"}}
    }))
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

/// The retry-tier queues the workers declared on demand (the operator does not delete them yet).
async fn delete_retry_tiers(env: &Env, tiers_ms: &[u64]) -> anyhow::Result<()> {
    for ms in tiers_ms {
        warren_e2e::delete_queue(&names::retry_queue(&env.namespace, "pool", *ms)).await?;
    }
    Ok(())
}

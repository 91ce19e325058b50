//! Retry-tier queues are deleted with their pool (`deletionPolicy: Delete`), including the tiers
//! of a Job that overrode the pool's retry policy and was deleted before the pool.

use std::time::Duration;

use warren_e2e::Env;
use warren_operator::crd::JobPhase;
use warren_protocol::names;

async fn queue_exists(env: &Env, queue: &str) -> anyhow::Result<bool> {
    queue_exists_at(env.amqp_url(), queue).await
}

async fn queue_exists_at(url: &str, queue: &str) -> anyhow::Result<bool> {
    let conn = lapin::Connection::connect(url, Default::default()).await?;
    let channel = conn.create_channel().await?;
    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let exists = channel.queue_declare(queue.into(), passive, Default::default()).await.is_ok();
    let _ = conn.close(200, "".into()).await;
    Ok(exists)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pool_deletes_the_retry_tier_queues_its_jobs_used() -> anyhow::Result<()> {
    let env = Env::start("tiers").await?;
    // The first attempt of every task fails; the second succeeds.
    let handler = serde_json::json!(["sh", "-c", "cat >/dev/null; [ \"$WARREN_ATTEMPT\" -ge 2 ]"]);
    env.create_pool(
        "pool",
        serde_json::json!({
            "workers": {"handler": handler}, "concurrency": 4, "deletionPolicy": "Delete",
            "retry": {"maxAttempts": 2, "backoff": {"initialDelay": "150ms"}},
        }),
    )
    .await?;
    // Overrides the pool's policy: its tasks wait in the 70 ms tier.
    env.create_job(
        "custom",
        serde_json::json!({
            "poolRef": "pool", "completions": 5,
            "retry": {"maxAttempts": 3, "backoff": {"initialDelay": "70ms", "factor": 2}},
        }),
    )
    .await?;
    let job = env.wait_job("custom", Duration::from_secs(120), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    let status = job.status.expect("status");
    assert_eq!((status.phase, status.succeeded, status.retries), (JobPhase::Succeeded, 5, 5));

    let pool = env.pools().get("pool").await?;
    let recorded = pool.status.expect("status").retry_queues;
    assert_eq!(recorded.keys().map(String::as_str).collect::<Vec<_>>(), ["140", "150", "70"], "the pool's tier and the Job's two");
    let used = names::retry_queue(&env.namespace, "pool", 70);
    assert!(queue_exists(&env, &used).await?, "the workers declared the tier they used");

    env.jobs().delete("custom", &Default::default()).await?;
    env.pools().delete("pool", &Default::default()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while env.pools().get_opt("pool").await?.is_some() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the pool was not finalized");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for queue in recorded.values() {
        assert!(!queue_exists(&env, queue).await?, "{queue} was deleted with the pool");
    }
    assert!(!queue_exists(&env, &names::dead_letter_queue(&env.namespace, "pool")).await?);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_pool_dead_letters_through_quorum_retry_tiers() -> anyhow::Result<()> {
    let env = Env::start("quorum").await?;
    let handler = serde_json::json!(["sh", "-c", "cat >/dev/null; [ \"$WARREN_TASK_INDEX\" != 1 ]"]);
    env.create_pool(
        "pool",
        serde_json::json!({
            "workers": {"handler": handler}, "concurrency": 2, "queueType": "quorum",
            "retry": {"maxAttempts": 2, "backoff": {"initialDelay": "60ms"}},
        }),
    )
    .await?;
    env.create_job("q", serde_json::json!({"poolRef": "pool", "completions": 3})).await?;
    let job = env.wait_job("q", Duration::from_secs(120), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    let s = job.status.expect("status");
    assert_eq!((s.phase, s.succeeded, s.failed, s.retries), (JobPhase::Failed, 2, 1, 1));
    assert_eq!(s.failed_indexes, "1");
    assert_eq!(env.queue_depth(&names::dead_letter_queue(&env.namespace, "pool")).await?, 1);
    // The tier the worker declared is a quorum queue: a classic re-declaration is refused.
    let tier = names::retry_queue(&env.namespace, "pool", 60);
    assert!(queue_exists(&env, &tier).await?);
    let conn = lapin::Connection::connect(env.amqp_url(), Default::default()).await?;
    let channel = conn.create_channel().await?;
    let classic = warren_worker::topology::retry_tier_args(&env.namespace, "pool", 60, "classic")?;
    let refused = channel.queue_declare(tier.as_str().into(), lapin::options::QueueDeclareOptions::durable(), classic).await.is_err();
    let _ = conn.close(200, "".into()).await;
    assert!(refused, "{tier} is not a classic queue");
    let url = env.amqp_url().to_string();
    env.cleanup().await?;
    assert!(!queue_exists_at(&url, &tier).await?, "the tier was deleted with the pool");
    Ok(())
}

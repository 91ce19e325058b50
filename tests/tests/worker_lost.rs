//! Tasks that take their worker down (`kill -9` of the worker, as an out-of-memory kill does):
//! never redelivered forever, never blamed for a neighbour's crash. A redelivered task runs again
//! alone (the pool's suspect queue); at its delivery limit (`maxAttempts`) it is dead-lettered
//! with reason `worker-lost` and the Job counts it failed, while every other task succeeds.

use std::time::Duration;

use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use warren_e2e::{Env, EnvOptions};
use warren_operator::crd::JobPhase;
use warren_protocol::names;

async fn a_task_that_kills_its_worker_is_dead_lettered_after_max_attempts(queue_type: &str) -> anyhow::Result<()> {
    let env = Env::start_custom(
        &format!("worker-lost-{queue_type}"),
        EnvOptions { crash_backoff: Some(Duration::from_millis(500)), ..EnvOptions::default() },
    )
    .await?;
    // Index 3 kills the worker process running it (its handler's parent); the others take 0.3 s,
    // so that some run beside it when it does.
    let handler =
        serde_json::json!(["sh", "-c", "cat >/dev/null; if [ \"$WARREN_TASK_INDEX\" = 3 ]; then kill -9 $PPID; exit 1; fi; sleep 0.3"]);
    env.create_pool(
        "pool",
        serde_json::json!({
            "workers": {"handler": handler}, "replicas": 1, "concurrency": 2, "queueType": queue_type, "deletionPolicy": "Delete"
        }),
    )
    .await?;
    env.create_job("poison", serde_json::json!({"poolRef": "pool", "completions": 8, "retry": {"maxAttempts": 3}})).await?;
    let job = env.wait_job("poison", Duration::from_secs(240), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    let status = job.status.expect("status");
    assert_eq!(status.phase, JobPhase::Failed, "{status:?}");
    assert_eq!((status.succeeded, status.failed, status.dead_lettered), (7, 1, 1), "{status:?}");
    assert_eq!((status.succeeded_indexes.as_str(), status.failed_indexes.as_str()), ("0-2,4-7", "3"));
    assert_eq!(status.retries, 0, "a lost run is not a failed attempt");

    // The dead letter says why, and after how many lost runs: exactly the limit.
    let dlq = names::dead_letter_queue(&env.namespace, "pool");
    assert_eq!(env.queue_depth(&dlq).await?, 1);
    let connection = lapin::Connection::connect(env.amqp_url(), lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let message = channel.basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false }).await?.expect("the dead letter");
    let headers = message.delivery.properties.headers().clone().unwrap_or_default();
    let header = |name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::LongLongInt(n)) => Some(n.to_string()),
        other => other.map(|v| format!("{v:?}")),
    };
    assert_eq!(header("warren-reason").as_deref(), Some("worker-lost"), "{headers:?}");
    assert_eq!(header("warren-lost-runs").as_deref(), Some("3"), "lost runs = the limit (maxAttempts 3)");
    assert_eq!(header("warren-task-index").as_deref(), Some("3"));
    connection.close(200, "done".into()).await?;
    // Nothing left to run alone, and the pool goes on serving (indexes 0-2: no poison).
    assert_eq!(env.queue_depth(&names::suspect_queue(&env.namespace, "pool")).await?, 0);
    env.create_job("after", serde_json::json!({"poolRef": "pool", "completions": 3})).await?;
    let after = env.wait_job("after", Duration::from_secs(120), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    let after = after.status.expect("status");
    assert_eq!((after.phase, after.succeeded), (JobPhase::Succeeded, 3));
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_classic_queues_a_task_that_kills_its_worker_is_dead_lettered_after_max_attempts() -> anyhow::Result<()> {
    a_task_that_kills_its_worker_is_dead_lettered_after_max_attempts("classic").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_quorum_queues_a_task_that_kills_its_worker_is_dead_lettered_after_max_attempts() -> anyhow::Result<()> {
    a_task_that_kills_its_worker_is_dead_lettered_after_max_attempts("quorum").await
}

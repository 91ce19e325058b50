//! Lost-task detection: queued tasks that vanish from the broker (a purged queue, overflow
//! dropHead) are noticed within a minute and re-enqueued (`onLostTasks: Requeue`, the default),
//! or fail the Job (`onLostTasks: Fail`) — never a Job `Running` forever.

use std::time::Duration;

use lapin::options::QueuePurgeOptions;
use warren_e2e::Env;
use warren_operator::crd::{Job, JobPhase};
use warren_protocol::names;

fn finished(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|s| s.phase.is_finished())
}

fn condition<'a>(job: &'a Job, type_: &str) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    job.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_queue_is_noticed_and_the_job_still_ends_exact() -> anyhow::Result<()> {
    let env = Env::start("lost-purge").await?;
    let handler = serde_json::json!(["sh", "-c", "cat >/dev/null; sleep 0.5"]);
    env.create_pool(
        "pool",
        serde_json::json!({
            "workers": {"handler": handler}, "replicas": 1, "concurrency": 1, "deletionPolicy": "Delete"
        }),
    )
    .await?;
    env.create_job("work", serde_json::json!({"poolRef": "pool", "completions": 20})).await?;
    // Once a few tasks are done, someone purges the work queue: the queued rest is gone.
    env.wait_job("work", Duration::from_secs(120), |j| j.status.as_ref().is_some_and(|s| s.succeeded >= 2)).await?;
    let connection = lapin::Connection::connect(env.amqp_url(), lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = names::work_queue(&env.namespace, "pool", "normal");
    let purged = channel.queue_purge(queue.as_str().into(), QueuePurgeOptions::default()).await?;
    connection.close(200, "done".into()).await?;
    assert!(purged > 0, "the purge removed queued tasks");

    let job = env.wait_job("work", Duration::from_secs(180), finished).await?;
    let status = job.status.clone().expect("status");
    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    assert_eq!((status.succeeded, status.failed, status.succeeded_indexes.as_str()), (20, 0, "0-19"));
    let lost = condition(&job, "TasksLost").expect("a TasksLost condition");
    assert_eq!((lost.status.as_str(), lost.reason.as_str()), ("True", "TasksLost"));
    assert!(lost.message.contains("went missing from the broker"), "{}", lost.message);
    let record = status.ledger.as_ref().and_then(|l| l.lost.clone()).expect("the loss is recorded");
    assert!(record.missing >= 1 && record.missing <= u64::from(purged), "{record:?} (purged {purged})");
    assert!(record.requeued >= record.missing, "{record:?}");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_head_pool_over_its_limit_fails_a_job_that_asks_for_it() -> anyhow::Result<()> {
    let env = Env::start("lost-drophead").await?;
    // No workers: the queue keeps the 2 newest tasks and drops the 8 others.
    env.create_pool(
        "pool",
        serde_json::json!({
            "workers": {"handler": ["true"]}, "replicas": 0, "maxQueueLength": 2, "overflow": "dropHead", "deletionPolicy": "Delete"
        }),
    )
    .await?;
    env.wait_pool_ready("pool", Duration::from_secs(60)).await?;
    env.create_job("work", serde_json::json!({"poolRef": "pool", "completions": 10, "onLostTasks": "Fail"})).await?;
    let job = env.wait_job("work", Duration::from_secs(120), finished).await?;
    let status = job.status.clone().expect("status");
    assert_eq!(status.phase, JobPhase::Failed, "{status:?}");
    let failed = condition(&job, "Failed").expect("a Failed condition");
    assert_eq!(failed.reason, "TasksLost", "{failed:?}");
    let record = status.ledger.as_ref().and_then(|l| l.lost.clone()).expect("the loss is recorded");
    assert_eq!((record.missing, record.requeued), (8, 0), "{record:?}");
    env.cleanup().await
}

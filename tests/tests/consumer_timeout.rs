//! A task that outlives the broker's `consumer_timeout`, on a private RabbitMQ node started with
//! a 3 s timeout (checked every 500 ms): with `channelPerTask` the broker closes only that task's
//! channel, so the tasks running beside it finish undisturbed, each run once; the long task comes
//! back redelivered, runs alone, times out again and is dead-lettered `worker-lost` after its
//! delivery limit — counted once, as failed. Each run of a task is recorded on the side channel,
//! which is on the shared broker, not on the private node with the short timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use warren_e2e::{Env, EnvOptions, PrivateBroker};
use warren_operator::crd::JobPhase;

/// The side channel the handlers record their runs on.
const EXECUTIONS: &str = "executions";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_past_consumer_timeout_takes_down_only_its_own_channel() -> anyhow::Result<()> {
    if warren_e2e::skip_on_real_cluster(
        "this test runs Warren on a private RabbitMQ node of this host (a short consumer_timeout), which the cluster's pods cannot reach",
    ) {
        return Ok(());
    }
    let broker = PrivateBroker::start_with("consumer_timeout = 3000", "[{rabbit, [{channel_tick_interval, 500}]}].\n").await?;
    let env = Env::start_custom(
        "consumer-timeout",
        EnvOptions { amqp_url: Some(broker.url()), crash_backoff: Some(Duration::from_millis(500)), ..EnvOptions::default() },
    )
    .await?;
    // Index 0 runs 20 s, far past the 3 s timeout; the others run 2 s each, under it.
    let handler = format!(
        "cat >/dev/null; \"$WARREN_E2E_PROBE\" record {EXECUTIONS} start \"$WARREN_TASK_INDEX\"; \
         if [ \"$WARREN_TASK_INDEX\" = 0 ]; then sleep 20; else sleep 2; fi; \"$WARREN_E2E_PROBE\" record {EXECUTIONS} done \"$WARREN_TASK_INDEX\""
    );
    env.create_pool(
        "pool",
        serde_json::json!({
            "workers": {"handler": ["sh", "-c", handler], "env": env.side().pod_env()},
            "replicas": 1, "concurrency": 3, "channelPerTask": true,
        }),
    )
    .await?;
    env.create_job("long", serde_json::json!({"poolRef": "pool", "completions": 7, "retry": {"maxAttempts": 2}})).await?;
    let job = env.wait_job("long", Duration::from_secs(240), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    let status = job.status.expect("status");
    assert_eq!(status.phase, JobPhase::Failed, "{status:?}");
    assert_eq!((status.succeeded, status.failed, status.dead_lettered), (6, 1, 1), "{status:?}");
    assert_eq!((status.succeeded_indexes.as_str(), status.failed_indexes.as_str()), ("1-6", "0"));

    let mut starts: BTreeMap<u32, u32> = BTreeMap::new();
    for line in env.side().lines(EXECUTIONS).await? {
        if let Some(index) = line.strip_prefix("start ").and_then(|i| i.trim().parse().ok()) {
            *starts.entry(index).or_default() += 1;
        }
    }
    for index in 1..7 {
        assert_eq!(starts.get(&index), Some(&1), "task {index} ran once, never interrupted: {starts:?}");
    }
    assert_eq!(starts.get(&0), Some(&2), "the long task ran twice (its delivery limit): {starts:?}");
    env.cleanup().await?;
    drop(broker);
    Ok(())
}

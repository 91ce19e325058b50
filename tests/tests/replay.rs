//! Dead-letter replay end to end: poison tasks are dead-lettered after exactly `maxAttempts`, the
//! handler is fixed, `warren dlq replay` sends one Job's dead letters back (the other Job's stay,
//! in order), and the Job goes from Failed back to Running to Succeeded with every task counted
//! once. The test fixes the handler by opening the side-channel gate `fixed`.

use std::time::Duration;

use warren_e2e::Env;
use warren_operator::crd::{Job, JobPhase};
use warren_protocol::names;

fn finished(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|s| s.phase.is_finished())
}

/// The `(job, index)` rows of `warren dlq list`, in queue order.
fn dlq_rows(listing: &str) -> Vec<(String, String, String, String)> {
    listing
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() >= 5 && !l.contains("dead letter(s) in"))
                .then(|| (cols[0].to_string(), cols[1].to_string(), cols[2].to_string(), cols[4].to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_dead_letters_get_fresh_attempts_and_the_job_succeeds() -> anyhow::Result<()> {
    let env = Env::start("replay").await?;
    // Tasks 3 (both Jobs) and 4 (only Job "other" has one) fail until the gate `fixed` opens.
    let handler = serde_json::json!([
        "sh",
        "-c",
        "cat >/dev/null; case $WARREN_TASK_INDEX in 3|4) \"$WARREN_E2E_PROBE\" is-open fixed || { echo \"not fixed yet\" >&2; exit 1; };; esac"
    ]);
    env.create_pool(
        "pool",
        serde_json::json!({
            "workers": {"handler": handler, "env": env.side().pod_env()},
            "replicas": 1, "concurrency": 4,
            "retry": {"maxAttempts": 3, "backoff": {"initialDelay": "50ms", "factor": 2, "maxDelay": "100ms"}},
        }),
    )
    .await?;
    env.create_job("poisoned", serde_json::json!({"poolRef": "pool", "completions": 4})).await?;
    env.create_job("other", serde_json::json!({"poolRef": "pool", "completions": 6})).await?;

    for (name, failed, indexes) in [("poisoned", 1, "3"), ("other", 2, "3-4")] {
        let job = env.wait_job(name, Duration::from_secs(120), finished).await?;
        let s = job.status.expect("status");
        assert_eq!(s.phase, JobPhase::Failed, "{name}: {s:?}");
        assert_eq!((s.failed, s.dead_lettered, s.failed_indexes.as_str()), (failed, failed, indexes), "{name}");
        assert_eq!(s.retries, 2 * u64::from(failed), "{name}: each poison task ran exactly maxAttempts = 3 times");
    }
    let dlq = names::dead_letter_queue(&env.namespace, "pool");
    assert_eq!(env.queue_depth(&dlq).await?, 3);
    let before = dlq_rows(&env.warren(&["dlq", "list", "--pool", "pool"])?);
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(before.contains(&("poisoned".into(), "3".into(), "3".into(), "attempts-exhausted".into())), "{before:?}");
    let others_before: Vec<_> = before.iter().filter(|r| r.0 == "other").cloned().collect();

    // Fix the handler, replay only Job "poisoned".
    env.side().open("fixed").await?;
    let out = env.warren(&["dlq", "replay", "--pool", "pool", "--job", "poisoned"])?;
    assert_eq!(
        out.trim(),
        "replayed 1 task(s); 2 left in the dead-letter queue by the filter, 0 not tasks, 0 not signed by the pool, 0 failed"
    );
    let job =
        env.wait_job("poisoned", Duration::from_secs(120), |j| j.status.as_ref().is_some_and(|s| s.phase == JobPhase::Succeeded)).await?;
    let s = job.status.expect("status");
    assert_eq!((s.succeeded, s.failed, s.dead_lettered, s.total), (4, 0, 0, 4));
    assert_eq!((s.succeeded_indexes.as_str(), s.failed_indexes.as_str()), ("0-3", ""));
    assert_eq!(s.retries, 2, "the dead-lettered run's 2 retries; the replayed run succeeded at once");
    assert_eq!(s.completions.as_deref(), Some("4/4"));
    let complete = s.conditions.iter().find(|c| c.type_ == "Complete").expect("Complete condition");
    assert_eq!((complete.status.as_str(), complete.reason.as_str()), ("True", "AllTasksSucceeded"));
    assert!(!s.conditions.iter().any(|c| c.type_ == "Failed"), "{:?}", s.conditions);

    // The other Job's dead letters stayed, in order, and that Job is still Failed.
    let after = dlq_rows(&env.warren(&["dlq", "list", "--pool", "pool"])?);
    assert_eq!(after, others_before);
    let other = env.jobs().get("other").await?.status.expect("status");
    assert_eq!((other.phase, other.failed_indexes.as_str()), (JobPhase::Failed, "3-4"));

    // Replay the rest: one, then all that is left.
    let out = env.warren(&["dlq", "replay", "--pool", "pool", "--limit", "1"])?;
    assert_eq!(
        out.trim(),
        "replayed 1 task(s); 1 left in the dead-letter queue by the filter, 0 not tasks, 0 not signed by the pool, 0 failed"
    );
    env.wait_job("other", Duration::from_secs(120), |j| j.status.as_ref().is_some_and(|s| s.succeeded == 5)).await?;
    let out = env.warren(&["dlq", "replay", "--pool", "pool"])?;
    assert!(out.starts_with("replayed 1 task(s)"), "{out}");
    let job =
        env.wait_job("other", Duration::from_secs(120), |j| j.status.as_ref().is_some_and(|s| s.phase == JobPhase::Succeeded)).await?;
    let s = job.status.expect("status");
    assert_eq!((s.succeeded, s.failed, s.dead_lettered, s.retries), (6, 0, 0, 4));
    assert_eq!(s.succeeded_indexes, "0-5");
    assert_eq!(env.queue_depth(&dlq).await?, 0);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_annotation_replays_the_jobs_dead_letters_and_is_recorded() -> anyhow::Result<()> {
    let env = Env::start("replayannotation").await?;
    // Task 1 fails until the gate `fixed` opens.
    let handler =
        serde_json::json!(["sh", "-c", "cat >/dev/null; [ \"$WARREN_TASK_INDEX\" != 1 ] || \"$WARREN_E2E_PROBE\" is-open fixed || exit 1"]);
    env.create_pool(
        "pool",
        serde_json::json!({
            "workers": {"handler": handler, "env": env.side().pod_env()},
            "concurrency": 2,
            "retry": {"maxAttempts": 2, "backoff": {"initialDelay": "50ms"}},
        }),
    )
    .await?;
    env.create_job("annotated", serde_json::json!({"poolRef": "pool", "completions": 3})).await?;
    let job = env.wait_job("annotated", Duration::from_secs(120), finished).await?;
    let s = job.status.expect("status");
    assert_eq!((s.phase, s.failed_indexes.as_str(), s.retries), (JobPhase::Failed, "1", 1));

    env.side().open("fixed").await?;
    let annotate = |token: &str| serde_json::json!({"metadata": {"annotations": {"warren.dev/replay-dead-letters": token}}});
    env.jobs().patch("annotated", &Default::default(), &kube::api::Patch::Merge(&annotate("first"))).await?;
    let job = env
        .wait_job("annotated", Duration::from_secs(120), |j| {
            // The token is recorded right after the replay, possibly after the replayed task ended.
            j.status.as_ref().is_some_and(|s| s.phase == JobPhase::Succeeded && s.replayed_token.is_some())
        })
        .await?;
    let s = job.status.expect("status");
    assert_eq!((s.succeeded, s.failed, s.dead_lettered, s.retries), (3, 0, 0, 1));
    assert_eq!(s.succeeded_indexes, "0-2");
    assert_eq!(s.replayed_token.as_deref(), Some("first"), "the operator records the value it acted on");
    assert_eq!(env.queue_depth(&names::dead_letter_queue(&env.namespace, "pool")).await?, 0);
    env.cleanup().await
}

/// On the real broker, without Kubernetes: one replay of a pool at a time (a second one is told
/// it is busy instead of walking the dead letters the first one holds), paced at `--rate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replay_of_a_pool_at_a_time_and_paced_at_its_rate() -> anyhow::Result<()> {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions};
    use warren_operator::replay::{self, Filter, ReplayError};
    use warren_protocol::{JobRef, PROTOCOL_VERSION, RetryPolicy, TaskEnvelope};

    let url = warren_e2e::amqp_url();
    let namespace = format!("replay-lock-{:08x}", rand::random::<u32>());
    let classes = vec!["normal".to_string()];
    let connection = lapin::Connection::connect(&url, Default::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    warren_worker::topology::declare_pool(
        &channel,
        &namespace,
        "pool",
        &classes,
        &warren_worker::topology::WorkQueueArgs::of_type("classic"),
    )
    .await?;
    let dlq = names::dead_letter_queue(&namespace, "pool");
    let key = warren_protocol::signature::ReportKey::new(vec![0x5a; 32]);
    const LETTERS: u32 = 40;
    // The 40 dead letters the pool's key signed, and one more put there by someone else (last).
    for index in 0..=LETTERS {
        let envelope = TaskEnvelope {
            version: PROTOCOL_VERSION,
            job: JobRef { namespace: namespace.clone(), name: "job".into(), uid: "6f1c0d2e-0000-4000-8000-00000000000a".into() },
            index,
            total: LETTERS,
            attempt: 3,
            priority: "normal".into(),
            task_type: None,
            payload: serde_json::json!({}),
            idempotency_key: TaskEnvelope::idempotency_key_for("u", index),
            retry: RetryPolicy::default(),
            timeout_seconds: None,
            replay: 0,
            enqueued_at_ms: 0,
        };
        let body = envelope.to_json();
        let mut headers = lapin::types::FieldTable::default();
        if index < LETTERS {
            let signature = warren_protocol::signature::sign_task(key.bytes(), &body);
            headers.insert(warren_protocol::headers::TASK_SIGNATURE.into(), lapin::types::AMQPValue::LongString(signature.into()));
        }
        let props = lapin::BasicProperties::default().with_delivery_mode(2).with_headers(headers);
        channel.basic_publish("".into(), dlq.as_str().into(), BasicPublishOptions::default(), &body, props).await?.await?;
    }

    let started = std::time::Instant::now();
    let paced = {
        let (url, namespace) = (url.clone(), namespace.clone());
        tokio::spawn(async move {
            let key = warren_protocol::signature::ReportKey::new(vec![0x5a; 32]);
            replay::replay(&url, &Default::default(), &namespace, "pool", &key, &Filter { rate: Some(20), ..Filter::default() }).await
        })
    };
    // Once the first replay holds the pool, a second one (or a listing) is refused, not served
    // a DLQ that looks empty.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = replay::replay(&url, &Default::default(), &namespace, "pool", &key, &Filter::default()).await;
    assert!(matches!(second, Err(ReplayError::Busy { .. })), "{second:?}");
    let listing = replay::list(&url, &Default::default(), &namespace, "pool").await;
    assert!(matches!(listing, Err(ReplayError::Busy { .. })), "{listing:?}");

    let summary = paced.await??;
    let elapsed = started.elapsed();
    assert_eq!((summary.replayed, summary.failed, summary.kept, summary.unsigned), (LETTERS, 0, 0, 1), "the unsigned one stays");
    // 40 at 20 per second: the last one leaves 39/20 s after the first (a slower machine only
    // takes longer).
    assert!(elapsed >= Duration::from_millis(1_950), "40 replays at 20/s took {elapsed:?}");
    let work_queue = names::work_queue(&namespace, "pool", "normal");
    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let depth = channel.queue_declare(work_queue.as_str().into(), passive, Default::default()).await?.message_count();
    assert_eq!(depth, LETTERS, "every dead letter is back in its queue");
    // The lock went with the first replay's connection.
    let again = replay::replay(&url, &Default::default(), &namespace, "pool", &key, &Filter::default()).await?;
    assert_eq!((again.replayed, again.unsigned), (0, 1));

    for queue in [work_queue, dlq, names::suspect_queue(&namespace, "pool")] {
        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    }
    for exchange in [names::pool_exchange(&namespace, "pool"), warren_worker::topology::retry_exchange(&namespace, "pool")] {
        channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await?;
    }
    connection.close(200, "OK".into()).await?;
    Ok(())
}

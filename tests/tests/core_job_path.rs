//! Core job path, end to end: real RabbitMQ, real worker processes, the Job status a user reads.

use std::time::Duration;

use warren_e2e::{Env, OperatorOptions, free_port, http_get, sample};
use warren_operator::crd::{Job, JobPhase};
use warren_protocol::names;

/// A handler that reads its payload and succeeds.
fn noop_handler() -> serde_json::Value {
    serde_json::json!(["sh", "-c", "cat >/dev/null"])
}

fn phase(job: &Job) -> Option<JobPhase> {
    job.status.as_ref().map(|s| s.phase)
}

fn finished(job: &Job) -> bool {
    phase(job).is_some_and(JobPhase::is_finished)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_1000_items_succeeds_with_exact_counts_and_indexes() -> anyhow::Result<()> {
    let env = Env::start("items").await?;
    env.create_pool(
        "pool",
        serde_json::json!({
            "workers": {"handler": noop_handler()}, "replicas": 2, "concurrency": 8
        }),
    )
    .await?;
    let items: Vec<serde_json::Value> = (0..1000).map(|i| serde_json::json!({"n": i})).collect();
    env.create_job("thousand", serde_json::json!({"poolRef": "pool", "items": items})).await?;

    let job = env.wait_job("thousand", Duration::from_secs(240), finished).await?;
    let status = job.status.expect("status");
    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    assert_eq!((status.total, status.enqueued, status.succeeded, status.failed), (1000, 1000, 1000, 0));
    assert_eq!((status.queued, status.running, status.dead_lettered), (0, 0, 0));
    assert_eq!(status.retries, 0);
    assert_eq!(status.succeeded_indexes, "0-999");
    assert_eq!(status.failed_indexes, "");
    assert_eq!(status.completions.as_deref(), Some("1000/1000"));
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    assert!(status.conditions.iter().any(|c| c.type_ == "Complete" && c.status == "True"));
    assert_eq!(env.queue_depth(&names::work_queue(&env.namespace, "pool", "normal")).await?, 0);
    // The pool and the Job were created together: the Job must not be reported as blocked by a
    // missing pool (the operator's pool cache may lag; it asks the API server before saying so).
    let events =
        env.wait_events("thousand", Duration::from_secs(30), |seen| seen.iter().any(|(_, action, _)| action == "Complete")).await?;
    assert!(events.iter().all(|(type_, _, _)| type_ == "Normal"), "{events:?}");
    env.cleanup().await
}

/// The operator's count of accepted status writes of `kind`, read from its /metrics.
async fn status_writes(addr: &str, kind: &str) -> anyhow::Result<f64> {
    let (code, metrics) = http_get(addr, "/metrics").await?;
    anyhow::ensure!(code == 200, "/metrics answered {code}");
    Ok(sample(&metrics, &format!("warren_operator_status_writes_total{{kind=\"{kind}\"}}")).unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10000_task_job_writes_its_status_about_once_a_second_whatever_its_task_count() -> anyhow::Result<()> {
    if Env::is_real_cluster() {
        eprintln!("*** SKIPPED on a real cluster: this test reads the metrics of the operator process it started.");
        return Ok(());
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let options = OperatorOptions { metrics_addr: addr.clone(), ..OperatorOptions::default() };
    let env = Env::start_with("status-writes", options).await?;
    env.create_pool(
        "pool",
        serde_json::json!({
            "workers": {"handler": noop_handler()}, "replicas": 2, "concurrency": 8
        }),
    )
    .await?;
    env.wait_pool_ready("pool", Duration::from_secs(60)).await?;
    assert_eq!(status_writes(&addr, "Job").await?, 0.0, "no Job exists yet");
    // The watch can show a write before the operator has its answer and counts it: give it a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while status_writes(&addr, "WorkerPool").await? < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "the pool's status writes are counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let started = std::time::Instant::now();
    env.create_job("ten-thousand", serde_json::json!({"poolRef": "pool", "completions": 10000})).await?;
    let job = env.wait_job("ten-thousand", Duration::from_secs(600), finished).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let status = job.status.expect("status");
    assert_eq!((status.phase, status.succeeded, status.failed), (JobPhase::Succeeded, 10000, 0), "{status:?}");
    assert_eq!(status.succeeded_indexes, "0-9999");

    // The last write is seen through the watch before the operator counts it (see above).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = status_writes(&addr, "Job").await?;
    eprintln!("10,000 tasks in {elapsed:.1} s: {writes} Job status writes");
    // One write per statusInterval (1 s) while the Job changes, plus the immediate writes of its
    // transitions (queued, running, complete). A slower machine only loosens the bound: the run
    // takes longer, and the writes per second stay the same.
    const TRANSITIONS: f64 = 5.0;
    assert!(writes >= 1.0, "the Job's status writes are counted");
    assert!(writes <= elapsed.ceil() + TRANSITIONS, "{writes} writes in {elapsed:.1} s");
    // A finished Job is not written again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status_writes(&addr, "Job").await?, writes, "writes after the Job finished");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_for_a_missing_pool_waits_with_a_clear_condition_then_runs() -> anyhow::Result<()> {
    let env = Env::start("missing-pool").await?;
    env.create_job("early", serde_json::json!({"poolRef": "later", "completions": 5})).await?;
    let job = env
        .wait_job("early", Duration::from_secs(60), |j| {
            j.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.reason == "PoolNotFound"))
        })
        .await?;
    let status = job.status.expect("status");
    assert_eq!(status.phase, JobPhase::Pending);
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready condition");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.message, "WorkerPool \"later\" not found in this namespace; the Job starts when it exists");
    assert_eq!(status.enqueued, 0);

    env.create_pool("later", serde_json::json!({"workers": {"handler": noop_handler()}})).await?;
    let job = env.wait_job("early", Duration::from_secs(120), finished).await?;
    let status = job.status.expect("status");
    assert_eq!((status.phase, status.succeeded, status.succeeded_indexes.as_str()), (JobPhase::Succeeded, 5, "0-4"));
    // A Warning when it was blocked, then its completion (the pool may have been briefly not
    // ready in between: another Block warning, PoolNotReady).
    let events = env.wait_events("early", Duration::from_secs(30), |e| e.iter().any(|(_, _, r)| r == "AllTasksSucceeded")).await?;
    let reasons: Vec<&str> = events.iter().map(|(_, _, r)| r.as_str()).collect();
    assert_eq!(events.first(), Some(&("Warning".into(), "Block".into(), "PoolNotFound".into())), "{events:?}");
    assert_eq!(events.last(), Some(&("Normal".into(), "Complete".into(), "AllTasksSucceeded".into())), "{events:?}");
    assert!(reasons.iter().all(|r| ["PoolNotFound", "PoolNotReady", "AllTasksSucceeded"].contains(r)), "{events:?}");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_job_overtakes_a_low_priority_backlog() -> anyhow::Result<()> {
    let env = Env::start("priority").await?;
    env.create_pool(
        "pool",
        serde_json::json!({
            "workers": {"handler": noop_handler()}, "replicas": 2, "concurrency": 4
        }),
    )
    .await?;
    env.wait_pool_ready("pool", Duration::from_secs(60)).await?;
    env.create_job("backlog", serde_json::json!({"poolRef": "pool", "priority": "low", "completions": 5000})).await?;
    // The backlog is queued and being worked on before the urgent Job arrives.
    env.wait_job("backlog", Duration::from_secs(120), |j| j.status.as_ref().is_some_and(|s| s.enqueued == 5000 && s.succeeded > 0)).await?;
    env.create_job("urgent", serde_json::json!({"poolRef": "pool", "priority": "high", "completions": 20})).await?;

    let urgent = env.wait_job("urgent", Duration::from_secs(120), finished).await?;
    let backlog_then = env.jobs().get("backlog").await?;
    let urgent_status = urgent.status.expect("status");
    assert_eq!((urgent_status.phase, urgent_status.succeeded), (JobPhase::Succeeded, 20));
    let backlog_status = backlog_then.status.expect("status");
    assert!(
        backlog_status.succeeded < 5000 && backlog_status.phase == JobPhase::Running,
        "the high-priority Job finished first, while the backlog still had work: backlog {}/5000",
        backlog_status.succeeded
    );
    eprintln!("urgent Job finished with the backlog at {}/5000", backlog_status.succeeded);

    let backlog = env.wait_job("backlog", Duration::from_secs(600), finished).await?;
    let backlog_status = backlog.status.expect("status");
    assert_eq!((backlog_status.phase, backlog_status.succeeded), (JobPhase::Succeeded, 5000));
    assert!(urgent_status.completion_time < backlog_status.completion_time);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_operator_during_enqueue_loses_and_double_counts_nothing() -> anyhow::Result<()> {
    if Env::is_real_cluster() {
        eprintln!("*** SKIPPED on a real cluster: this test kills the operator process it started.");
        return Ok(());
    }
    // Small batches and a status write per batch make the enqueue slow enough to interrupt.
    let options = OperatorOptions { publish_batch: 10, status_interval_ms: 0, ..OperatorOptions::default() };
    let mut env = Env::start_with("operator-kill", options).await?;
    env.create_pool(
        "pool",
        serde_json::json!({
            "workers": {"handler": noop_handler()}, "replicas": 2, "concurrency": 4
        }),
    )
    .await?;
    env.wait_pool_ready("pool", Duration::from_secs(60)).await?;
    env.create_job("survivor", serde_json::json!({"poolRef": "pool", "completions": 1000})).await?;
    let mid = env.wait_job("survivor", Duration::from_secs(60), |j| j.status.as_ref().is_some_and(|s| s.enqueued > 0)).await?;
    env.kill_operator().await?;
    let enqueued_at_kill = mid.status.as_ref().map_or(0, |s| s.enqueued);
    let after_kill = env.jobs().get("survivor").await?;
    let stored = after_kill.status.as_ref().map_or(0, |s| s.enqueued);
    assert!(stored < 1000, "the operator was killed before it finished enqueueing (stored watermark {stored})");
    eprintln!("operator killed with {enqueued_at_kill} tasks observed enqueued ({stored} stored)");

    env.start_operator()?;
    let job = env.wait_job("survivor", Duration::from_secs(240), finished).await?;
    let status = job.status.expect("status");
    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    assert_eq!((status.total, status.succeeded, status.failed), (1000, 1000, 0));
    assert_eq!(status.succeeded_indexes, "0-999");
    assert_eq!(status.completions.as_deref(), Some("1000/1000"));
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pool_removes_its_queues_only_with_deletion_policy_delete() -> anyhow::Result<()> {
    let env = Env::start("deletion-policy").await?;
    let spec = |policy: &str| serde_json::json!({"workers": {"handler": noop_handler()}, "replicas": 0, "deletionPolicy": policy});
    env.create_pool("kept", spec("Retain")).await?;
    env.create_pool("dropped", spec("Delete")).await?;
    env.wait_pool_ready("kept", Duration::from_secs(60)).await?;
    env.wait_pool_ready("dropped", Duration::from_secs(60)).await?;
    let kept: Vec<String> = ["high", "normal", "low"].iter().map(|p| names::work_queue(&env.namespace, "kept", p)).collect();
    let dropped = names::work_queue(&env.namespace, "dropped", "normal");
    assert_eq!(env.queue_depth(&dropped).await?, 0, "the queue exists while the pool does");

    for pool in ["kept", "dropped"] {
        env.pools().delete(pool, &Default::default()).await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !env.pools().list(&Default::default()).await?.items.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the pools' finalizers did not complete");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = env.queue_depth(&dropped).await;
    assert!(gone.as_ref().is_err_and(|e| e.to_string().contains("NOT_FOUND")), "deletionPolicy: Delete removes the queues: {gone:?}");
    for queue in &kept {
        assert_eq!(env.queue_depth(queue).await?, 0, "deletionPolicy: Retain keeps {queue}");
    }
    // The retained queues are this test's to clean up.
    // (the pool declares the retry tiers of its default policy, 1 s and 2 s, with its topology).
    let others = [
        names::dead_letter_queue(&env.namespace, "kept"),
        names::suspect_queue(&env.namespace, "kept"),
        names::retry_queue(&env.namespace, "kept", 1000),
        names::retry_queue(&env.namespace, "kept", 2000),
    ];
    for queue in kept.iter().cloned().chain(others) {
        warren_e2e::delete_queue(&queue).await?;
    }
    let exchange = names::pool_exchange(&env.namespace, "kept");
    warren_e2e::delete_exchange(&exchange).await?;
    warren_e2e::delete_exchange(&format!("{exchange}.retry")).await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_queues_predate_queue_version_2_keeps_them_and_runs() -> anyhow::Result<()> {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{AMQPValue, FieldTable};
    let env = Env::start("queue-version").await?;
    // The pool's work queues as an older Warren declared them: classic, no `x-queue-version`.
    let classic = || {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("classic".into()));
        args
    };
    let connection = lapin::Connection::connect(&warren_e2e::amqp_url(), Default::default()).await?;
    let channel = connection.create_channel().await?;
    for class in ["high", "normal", "low"] {
        let queue = names::work_queue(&env.namespace, "old", class);
        channel.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), classic()).await?;
    }
    env.create_pool("old", serde_json::json!({"workers": {"handler": noop_handler()}, "replicas": 1})).await?;
    env.wait_pool_ready("old", Duration::from_secs(60)).await?;
    let items: Vec<serde_json::Value> = (0..20).map(|i| serde_json::json!({"n": i})).collect();
    env.create_job("on-old-queues", serde_json::json!({"poolRef": "old", "items": items})).await?;
    let job = env.wait_job("on-old-queues", Duration::from_secs(120), finished).await?;
    let status = job.status.expect("status");
    assert_eq!((status.phase, status.succeeded, status.succeeded_indexes.as_str()), (JobPhase::Succeeded, 20, "0-19"));
    // The queues kept their version: a declaration without it still matches.
    let queue = names::work_queue(&env.namespace, "old", "normal");
    channel.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), classic()).await?;
    connection.close(200, "OK".into()).await?;
    env.cleanup().await
}

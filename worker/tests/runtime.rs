//! The worker runtime against the real broker, with SDK handlers.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use warren_protocol::{FailureDisposition, RetryPolicy, TaskEnvelope, TaskEventKind};
use warren_worker::TaskError;

fn succeeded(kind: &TaskEventKind) -> bool {
    matches!(kind, TaskEventKind::Succeeded { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_task_succeeds_exactly_once_and_queues_end_empty() {
    init_tracing();
    let pool = TestPool::new(&["high", "low"]).await;
    let total = 40;
    for i in 0..total {
        pool.publish(&pool.envelope(i, total, if i % 2 == 0 { "high" } else { "low" })).await;
    }
    let mut reports = pool.reports().await;
    let worker = pool
        .builder()
        .concurrency(4)
        .handler(|ctx| async move {
            ctx.progress(50, "half");
            Ok(Some(serde_json::json!({ "double": ctx.payload()["index"].as_u64().unwrap() * 2 })))
        })
        .build()
        .unwrap();
    let (shutdown, handle) = spawn_worker(worker);
    reports.until("all tasks final", |events| final_count(events) >= total as usize).await;

    let finals = reports.finals();
    assert_eq!(finals.len(), total as usize);
    for i in 0..total {
        assert_eq!(finals[&i], vec![TaskEventKind::Succeeded { result: Some(serde_json::json!({ "double": i * 2 })) }], "task {i}");
    }
    // A start reported in the same batch as its outcome is left out (the outcome says it all).
    assert!(reports.count(|e| matches!(e.kind, TaskEventKind::Started)) <= total as usize);
    assert!(reports.count(|e| matches!(e.kind, TaskEventKind::Progress { percent: 50, .. })) >= 1);
    assert!(reports.batches.iter().all(|b| b.worker.pool == pool.pool && b.heartbeat.is_some()));
    // Acks follow the confirmed reports: wait until the broker has seen them all.
    shutdown.cancel();
    let summary = handle.await.unwrap();
    assert_eq!(summary.completed_total, total as u64);
    assert_eq!(summary.interrupted_total, 0);
    assert_eq!(pool.work_depth().await, 0);
    assert_eq!(pool.depth(&pool.dlq()).await, Some(0));
    reports.until_heartbeat("final heartbeat", |hb| hb.draining && hb.completed_total == total as u64 && hb.in_flight == 0).await;
    pool.cleanup(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buffered_high_priority_tasks_run_before_the_remaining_low_ones() {
    init_tracing();
    let pool = TestPool::new(&["high", "low"]).await;
    for i in 0..50 {
        pool.publish(&pool.envelope(i, 55, "low")).await;
    }
    for i in 50..55 {
        pool.publish(&pool.envelope(i, 55, "high")).await;
    }
    let order: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let recorded = order.clone();
    let mut reports = pool.reports().await;
    let worker = pool
        .builder()
        .concurrency(1)
        .handler(move |ctx| {
            let recorded = recorded.clone();
            async move {
                recorded.lock().unwrap().push((ctx.priority().to_string(), ctx.index()));
                Ok(None)
            }
        })
        .build()
        .unwrap();
    let (shutdown, handle) = spawn_worker(worker);
    reports.until("55 tasks final", |events| final_count(events) >= 55).await;
    shutdown.cancel();
    handle.await.unwrap();

    let order = order.lock().unwrap().clone();
    assert_eq!(order.len(), 55);
    let high_positions: Vec<usize> = order.iter().enumerate().filter(|(_, (p, _))| p == "high").map(|(i, _)| i).collect();
    assert_eq!(high_positions.len(), 5);
    // With prefetch 1 per class the worker sees one task of each class at a time; whenever
    // both are buffered the high one starts, so no more than one low task slips in before each
    // high one: all high tasks are done before the 11th execution, ahead of 40+ low ones.
    assert!(*high_positions.last().unwrap() <= 10, "high tasks ran at positions {high_positions:?}");
    let lows_after_last_high = order[high_positions.last().unwrap() + 1..].iter().filter(|(p, _)| p == "low").count();
    assert!(lows_after_last_high >= 40, "{order:?}");
    // Low tasks keep FIFO order among themselves.
    let lows: Vec<u32> = order.iter().filter(|(p, _)| p == "low").map(|(_, i)| *i).collect();
    assert_eq!(lows, (0..50).collect::<Vec<_>>());
    pool.cleanup(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_attempts_are_retried_through_the_retry_tier_and_keep_their_priority() {
    init_tracing();
    let pool = TestPool::new(&["high", "low"]).await;
    let mut envelope = pool.envelope(0, 1, "low");
    envelope.retry = RetryPolicy { max_attempts: 5, initial_delay_ms: 50, factor: 1.0, max_delay_ms: 50, jitter: 0.0 };
    pool.publish(&envelope).await;
    let seen: Arc<Mutex<Vec<(u32, String)>>> = Arc::default();
    let record = seen.clone();
    let mut reports = pool.reports().await;
    let worker = pool
        .builder()
        .concurrency(2)
        .handler(move |ctx| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push((ctx.attempt(), ctx.priority().to_string()));
                if ctx.attempt() < 3 {
                    Err(TaskError::retryable(format!("flaky attempt {}", ctx.attempt())))
                } else {
                    Ok(Some(serde_json::json!("third time lucky")))
                }
            }
        })
        .build()
        .unwrap();
    let (shutdown, handle) = spawn_worker(worker);
    reports.until("task final", |events| final_count(events) >= 1).await;
    shutdown.cancel();
    let summary = handle.await.unwrap();

    let attempts: Vec<(u32, TaskEventKind)> = reports
        .events
        .iter()
        .filter(|e| !matches!(e.kind, TaskEventKind::Started | TaskEventKind::Progress { .. }))
        .map(|e| (e.attempt, e.kind.clone()))
        .collect();
    assert_eq!(
        attempts,
        vec![
            (1, TaskEventKind::Failed { error: "flaky attempt 1".into(), disposition: FailureDisposition::Retrying { delay_ms: 50 } }),
            (2, TaskEventKind::Failed { error: "flaky attempt 2".into(), disposition: FailureDisposition::Retrying { delay_ms: 50 } }),
            (3, TaskEventKind::Succeeded { result: Some(serde_json::json!("third time lucky")) }),
        ]
    );
    assert_eq!(*seen.lock().unwrap(), vec![(1, "low".into()), (2, "low".into()), (3, "low".into())]);
    assert_eq!(summary.completed_total, 3);
    // The worker declared the 50 ms tier queue and the retries went through it and out again.
    assert_eq!(pool.depth(&pool.retry_queue(50)).await, Some(0));
    assert_eq!(pool.work_depth().await, 0);
    assert_eq!(pool.depth(&pool.dlq()).await, Some(0));
    pool.cleanup(&[50]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permanent_and_exhausted_failures_are_dead_lettered_with_headers() {
    init_tracing();
    let pool = TestPool::new(&["normal"]).await;
    let mut permanent = pool.envelope(0, 2, "normal");
    permanent.payload = serde_json::json!({ "mode": "permanent" });
    let mut exhausted = pool.envelope(1, 2, "normal");
    exhausted.payload = serde_json::json!({ "mode": "flaky" });
    exhausted.retry = RetryPolicy { max_attempts: 2, initial_delay_ms: 20, factor: 1.0, max_delay_ms: 20, jitter: 0.0 };
    pool.publish(&permanent).await;
    pool.publish(&exhausted).await;
    let mut reports = pool.reports().await;
    let worker = pool
        .builder()
        .concurrency(2)
        .handler(|ctx| async move {
            match ctx.payload()["mode"].as_str() {
                Some("permanent") => Err(TaskError::permanent("bad input")),
                _ => Err(TaskError::retryable(format!("still down on attempt {}", ctx.attempt()))),
            }
        })
        .build()
        .unwrap();
    let (shutdown, handle) = spawn_worker(worker);
    reports.until("both tasks final", |events| final_count(events) >= 2).await;
    shutdown.cancel();
    handle.await.unwrap();

    let finals = reports.finals();
    assert_eq!(
        finals[&0],
        vec![TaskEventKind::Failed {
            error: "bad input".into(),
            disposition: FailureDisposition::DeadLettered { reason: "permanent".into() }
        }]
    );
    assert_eq!(
        finals[&1],
        vec![TaskEventKind::Failed {
            error: "still down on attempt 2".into(),
            disposition: FailureDisposition::DeadLettered { reason: "attempts-exhausted".into() }
        }]
    );
    let mut dead = pool.drain_dlq().await;
    assert_eq!(dead.len(), 2);
    dead.sort_by_key(|d| header_text(d, "warren-task-index"));
    let facts: Vec<_> = dead
        .iter()
        .map(|d| {
            (
                header_text(d, "warren-reason").unwrap(),
                header_text(d, "warren-last-error").unwrap(),
                header_text(d, "warren-attempts").unwrap(),
                header_text(d, "warren-job-uid").unwrap(),
                header_text(d, "warren-task-index").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        facts,
        vec![
            ("permanent".into(), "bad input".into(), "1".into(), pool.job_uid.clone(), "0".into()),
            ("attempts-exhausted".into(), "still down on attempt 2".into(), "2".into(), pool.job_uid.clone(), "1".into()),
        ]
    );
    // The dead letter carries the task as it was last attempted.
    let body = warren_protocol::TaskEnvelope::from_json(&dead[1].data).unwrap();
    assert_eq!((body.index, body.attempt), (1, 2));
    assert_eq!(pool.work_depth().await, 0);
    pool.cleanup(&[20]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_messages_are_dead_lettered_and_the_worker_goes_on() {
    init_tracing();
    let pool = TestPool::new(&["normal"]).await;
    pool.publish_raw("normal", b"this is not json").await;
    pool.publish(&pool.envelope(7, 8, "normal")).await;
    let mut reports = pool.reports().await;
    let worker = pool.builder().handler(|_| async { Ok(None) }).build().unwrap();
    let (shutdown, handle) = spawn_worker(worker);
    reports.until("the valid task is final", |events| final_count(events) >= 1).await;
    pool.wait_depth(&pool.dlq(), 1).await;
    shutdown.cancel();
    handle.await.unwrap();

    assert_eq!(reports.finals()[&7], vec![TaskEventKind::Succeeded { result: None }]);
    let dead = pool.drain_dlq().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].data, b"this is not json");
    assert_eq!(header_text(&dead[0], "warren-reason").as_deref(), Some("malformed"));
    assert!(header_text(&dead[0], "warren-last-error").unwrap().starts_with("not a Warren task envelope"));
    assert_eq!(pool.work_depth().await, 0);
    pool.cleanup(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_its_pools_key_a_worker_runs_only_signed_tasks_and_signs_its_retries() {
    use warren_protocol::signature::{ReportKey, sign_task, verify_task};
    init_tracing();
    let pool = TestPool::new(&["normal"]).await;
    let key = ReportKey::new(vec![0x42; 32]);
    let retry = RetryPolicy { max_attempts: 2, initial_delay_ms: 30, factor: 1.0, max_delay_ms: 30, jitter: 0.0 };
    let tasks: Vec<Vec<u8>> = (0..4).map(|i| TaskEnvelope { retry: retry.clone(), ..pool.envelope(i, 4, "normal") }.to_json()).collect();
    // 0: signed, fails once (its retry must be signed again to run); 1: unsigned; 2: signed with
    // another key; 3: signed, fails permanently (its dead letter keeps the signature).
    pool.publish_signed("normal", &tasks[0], Some(sign_task(key.bytes(), &tasks[0]))).await;
    pool.publish_signed("normal", &tasks[1], None).await;
    pool.publish_signed("normal", &tasks[2], Some(sign_task(&[0x43; 32], &tasks[2]))).await;
    pool.publish_signed("normal", &tasks[3], Some(sign_task(key.bytes(), &tasks[3]))).await;
    let mut reports = pool.reports().await;
    let runs = Arc::new(Mutex::new(Vec::new()));
    let seen = runs.clone();
    let worker = pool
        .builder()
        .pool_key(key.clone())
        .handler(move |ctx| {
            seen.lock().unwrap().push((ctx.index(), ctx.attempt()));
            async move {
                match (ctx.index(), ctx.attempt()) {
                    (0, 1) => Err(TaskError::retryable("flaky")),
                    (3, _) => Err(TaskError::permanent("bad input")),
                    _ => Ok(None),
                }
            }
        })
        .build()
        .unwrap();
    let (shutdown, handle) = spawn_worker(worker);
    reports.until("the signed tasks are final", |events| final_count(events) >= 2).await;
    pool.wait_depth(&pool.dlq(), 3).await;
    shutdown.cancel();
    handle.await.unwrap();

    let mut ran = runs.lock().unwrap().clone();
    ran.sort();
    assert_eq!(ran, [(0, 1), (0, 2), (3, 1)], "only the signed tasks ran, the retry too");
    let finals = reports.finals();
    assert_eq!(finals[&0], vec![TaskEventKind::Succeeded { result: None }]);
    assert!(!finals.contains_key(&1) && !finals.contains_key(&2), "refused tasks are reported to no one: {finals:?}");
    let dead = pool.drain_dlq().await;
    let mut reasons: Vec<String> = dead.iter().filter_map(|d| header_text(d, "warren-reason")).collect();
    reasons.sort();
    assert_eq!(reasons, ["bad-signature", "permanent", "unsigned"]);
    let permanent = dead.iter().find(|d| header_text(d, "warren-reason").as_deref() == Some("permanent")).expect("permanent");
    let kept = header_text(permanent, warren_protocol::headers::TASK_SIGNATURE).expect("the dead letter keeps its signature");
    assert!(verify_task(key.bytes(), &permanent.data, &kept));
    assert_eq!(pool.work_depth().await, 0);
    pool.cleanup(&[30]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_handler_is_a_retryable_failure_and_the_worker_survives() {
    init_tracing();
    let pool = TestPool::new(&["normal"]).await;
    pool.publish(&pool.envelope(0, 2, "normal")).await;
    pool.publish(&pool.envelope(1, 2, "normal")).await;
    let mut reports = pool.reports().await;
    let worker = pool
        .builder()
        .handler(|ctx| async move {
            if ctx.index() == 0 && ctx.attempt() == 1 {
                panic!("kaboom");
            }
            Ok(None)
        })
        .build()
        .unwrap();
    let (shutdown, handle) = spawn_worker(worker);
    reports.until("both tasks final", |events| final_count(events) >= 2).await;
    shutdown.cancel();
    let summary = handle.await.unwrap();

    let failures: Vec<_> = reports.events.iter().filter(|e| matches!(e.kind, TaskEventKind::Failed { .. })).collect();
    assert_eq!(failures.len(), 1);
    assert_eq!(
        failures[0].kind,
        TaskEventKind::Failed { error: "handler panicked: kaboom".into(), disposition: FailureDisposition::Retrying { delay_ms: 50 } }
    );
    let finals = reports.finals();
    assert!(succeeded(&finals[&0][0]) && succeeded(&finals[&1][0]));
    assert_eq!(reports.events.iter().find(|e| e.index == 0 && succeeded(&e.kind)).unwrap().attempt, 2);
    assert_eq!(summary.completed_total, 3);
    pool.cleanup(&[50]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_over_its_timeout_is_cancelled_and_fails() {
    init_tracing();
    let pool = TestPool::new(&["normal"]).await;
    let mut envelope = pool.envelope(0, 1, "normal");
    envelope.timeout_seconds = Some(1);
    envelope.retry.max_attempts = 1;
    pool.publish(&envelope).await;
    let observed_cancel = Arc::new(AtomicBool::new(false));
    let observed = observed_cancel.clone();
    let mut reports = pool.reports().await;
    let worker = pool
        .builder()
        .handler(move |ctx| {
            let observed = observed.clone();
            async move {
                ctx.cancelled().await;
                observed.store(true, Ordering::SeqCst);
                Ok(Some(serde_json::json!("ignored")))
            }
        })
        .build()
        .unwrap();
    let (shutdown, handle) = spawn_worker(worker);
    reports.until("task final", |events| final_count(events) >= 1).await;
    shutdown.cancel();
    handle.await.unwrap();

    assert_eq!(
        reports.finals()[&0],
        vec![TaskEventKind::Failed {
            error: "timed out after 1s".into(),
            disposition: FailureDisposition::DeadLettered { reason: "attempts-exhausted".into() }
        }]
    );
    assert!(observed_cancel.load(Ordering::SeqCst), "the handler saw its cancellation");
    assert_eq!(pool.drain_dlq().await.len(), 1);
    pool.cleanup(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typed_handlers_are_selected_by_task_type() {
    init_tracing();
    let pool = TestPool::new(&["normal"]).await;
    let mut typed = pool.envelope(0, 3, "normal");
    typed.task_type = Some("resize".into());
    let untyped = pool.envelope(1, 3, "normal");
    let mut unknown = pool.envelope(2, 3, "normal");
    unknown.task_type = Some("unknown".into());
    for e in [&typed, &untyped, &unknown] {
        pool.publish(e).await;
    }
    let mut reports = pool.reports().await;
    let worker = pool
        .builder()
        .handler(|_| async { Ok(Some(serde_json::json!("default"))) })
        .handler_for("resize", |_| async { Ok(Some(serde_json::json!("resize"))) })
        .build()
        .unwrap();
    let (shutdown, handle) = spawn_worker(worker);
    reports.until("all final", |events| final_count(events) >= 3).await;
    shutdown.cancel();
    handle.await.unwrap();
    let finals = reports.finals();
    assert_eq!(finals[&0], vec![TaskEventKind::Succeeded { result: Some(serde_json::json!("resize")) }]);
    assert_eq!(finals[&1], vec![TaskEventKind::Succeeded { result: Some(serde_json::json!("default")) }]);
    assert_eq!(finals[&2], vec![TaskEventKind::Succeeded { result: Some(serde_json::json!("default")) }]);

    // Without a default handler an unknown type is dead-lettered.
    pool.publish(&unknown).await;
    let worker = pool.builder().handler_for("resize", |_| async { Ok(None) }).build().unwrap();
    let (shutdown, handle) = spawn_worker(worker);
    reports.until("unknown type final", |events| final_count(events) >= 4).await;
    shutdown.cancel();
    handle.await.unwrap();
    let last = reports.events.iter().rev().find(|e| e.kind.is_final()).unwrap();
    assert_eq!(
        last.kind,
        TaskEventKind::Failed {
            error: "no handler for task type \"unknown\"".into(),
            disposition: FailureDisposition::DeadLettered { reason: "no-handler".into() }
        }
    );
    pool.cleanup(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_finishes_running_tasks_and_requeues_buffered_ones() {
    init_tracing();
    // Concurrency 1 with three classes: one task runs, one per other class is buffered.
    let pool = TestPool::new(&["a", "b", "c"]).await;
    pool.publish(&pool.envelope(0, 7, "a")).await;
    for i in 1..4 {
        pool.publish(&pool.envelope(i, 7, "b")).await;
    }
    for i in 4..7 {
        pool.publish(&pool.envelope(i, 7, "c")).await;
    }
    let release = Arc::new(tokio::sync::Notify::new());
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let gate = release.clone();
    let mut reports = pool.reports().await;
    let worker = pool
        .builder()
        .concurrency(1)
        .grace_period(Duration::from_secs(60))
        .handler(move |ctx| {
            let (gate, started) = (gate.clone(), started_tx.clone());
            async move {
                started.send(ctx.index()).unwrap();
                gate.notified().await;
                Ok(Some(serde_json::json!("finished during drain")))
            }
        })
        .build()
        .unwrap();
    let (shutdown, handle) = spawn_worker(worker);
    let running = started_rx.recv().await.unwrap();
    assert_eq!(running, 0, "the highest class starts first");
    // Wait until the worker holds one delivery of each class (prefetch 1 each).
    pool.wait_depth(&pool.work_queue("b"), 2).await;
    pool.wait_depth(&pool.work_queue("c"), 2).await;
    shutdown.cancel();
    // The draining heartbeat is sent after the buffered deliveries went back.
    reports.until_heartbeat("draining heartbeat", |hb| hb.draining && hb.in_flight == 1).await;
    assert_eq!(pool.work_depth().await, 6, "buffered tasks are back in their queues");
    assert_eq!(final_count(&reports.events), 0, "the running task is still running");
    release.notify_one();
    let summary = handle.await.unwrap();
    reports.until("the running task is final", |events| final_count(events) >= 1).await;
    assert_eq!(reports.finals()[&0], vec![TaskEventKind::Succeeded { result: Some(serde_json::json!("finished during drain")) }]);
    assert_eq!(summary.completed_total, 1);
    assert_eq!(summary.interrupted_total, 0);
    assert_eq!(pool.work_depth().await, 6);
    assert_eq!(reports.count(|e| matches!(e.kind, TaskEventKind::Started)), 1, "no task started after shutdown began");
    pool.cleanup(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_still_running_after_the_grace_period_are_cancelled_and_requeued() {
    init_tracing();
    let pool = TestPool::new(&["normal"]).await;
    pool.publish(&pool.envelope(0, 1, "normal")).await;
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let saw = saw_cancel.clone();
    let mut reports = pool.reports().await;
    let worker = pool
        .builder()
        .grace_period(Duration::from_millis(200))
        .handler(move |ctx| {
            let (started, saw) = (started_tx.clone(), saw.clone());
            async move {
                started.send(()).unwrap();
                ctx.cancelled().await;
                saw.store(true, Ordering::SeqCst);
                Ok(None)
            }
        })
        .build()
        .unwrap();
    let (shutdown, handle) = spawn_worker(worker);
    started_rx.recv().await.unwrap();
    shutdown.cancel();
    let summary = handle.await.unwrap();
    assert_eq!(summary, warren_worker::WorkerSummary { completed_total: 0, interrupted_total: 1 });
    assert!(saw_cancel.load(Ordering::SeqCst));
    reports.until_heartbeat("final heartbeat", |hb| hb.interrupted_total == 1 && hb.draining).await;
    assert_eq!(final_count(&reports.events), 0);
    assert_eq!(pool.work_depth().await, 1, "the interrupted task is back in its queue");
    pool.cleanup(&[]).await;
}

/// Closes the broker connections whose client properties mention `pod` (via rabbitmqctl).
async fn close_connections_of(pod: &str) -> usize {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["list_connections", "--no-table-headers", "--quiet", "pid", "client_properties"])
        .output()
        .await
        .expect("this test needs rabbitmqctl to close the worker's connection");
    let listing = String::from_utf8_lossy(&out.stdout);
    let names: Vec<String> = listing.lines().filter(|l| l.contains(pod)).filter_map(|l| l.split('\t').next().map(str::to_string)).collect();
    for name in &names {
        let out = tokio::process::Command::new("rabbitmqctl")
            .args(["close_connection", name, "test: simulated connection loss"])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "closing {name:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    names.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_worker_reconnects_after_losing_its_connection() {
    init_tracing();
    let pool = TestPool::new(&["normal"]).await;
    for i in 0..5 {
        pool.publish(&pool.envelope(i, 10, "normal")).await;
    }
    let mut reports = pool.reports().await;
    let pod = format!("{}-reconnecting", pool.namespace);
    let worker = pool.builder().pod_name(&pod).concurrency(2).handler(|_| async { Ok(None) }).build().unwrap();
    let (shutdown, handle) = spawn_worker(worker);
    reports.until("first five final", |events| final_count(events) >= 5).await;
    // Acks go out right after the confirmed report: wait for the broker to have them all.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while pool.work_depth().await != 0 || close_connections_of(&pod).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "could not close the worker's connection");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for i in 5..10 {
        pool.publish(&pool.envelope(i, 10, "normal")).await;
    }
    reports.until("all ten final", |events| final_count(events) >= 10).await;
    shutdown.cancel();
    handle.await.unwrap();
    let finals = reports.finals();
    for i in 0..10 {
        assert_eq!(finals[&i], vec![TaskEventKind::Succeeded { result: None }], "task {i}");
    }
    assert_eq!(pool.work_depth().await, 0);
    pool.cleanup(&[]).await;
}

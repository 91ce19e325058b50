//! Quorum pools against the real broker (RabbitMQ 3.10+): the topology declares, retries go
//! through quorum retry-tier queues with at-least-once dead-lettering, and a task out of attempts
//! ends in the (quorum) dead-letter queue.

mod common;

use common::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use warren_protocol::{FailureDisposition, RetryPolicy, TaskEventKind};
use warren_worker::{TaskError, topology};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quorum_pool_retries_with_at_least_once_dead_lettering_and_dead_letters_the_task() {
    init_tracing();
    let pool = TestPool::new_typed(&["normal"], "quorum").await;
    let mut envelope = pool.envelope(0, 1, "normal");
    envelope.retry = RetryPolicy { max_attempts: 3, initial_delay_ms: 40, factor: 1.0, max_delay_ms: 40, jitter: 0.0 };
    pool.publish(&envelope).await;
    let mut reports = pool.reports().await;
    let worker = pool
        .builder()
        .queue_type("quorum")
        .handler(|ctx| async move { Err(TaskError::retryable(format!("down on attempt {}", ctx.attempt()))) })
        .build()
        .unwrap();
    let (shutdown, handle) = spawn_worker(worker);
    reports.until("task final", |events| final_count(events) >= 1).await;
    shutdown.cancel();
    handle.await.unwrap();

    let outcomes: Vec<(u32, TaskEventKind)> =
        reports.events.iter().filter(|e| matches!(e.kind, TaskEventKind::Failed { .. })).map(|e| (e.attempt, e.kind.clone())).collect();
    let failed = |n: u32, disposition| TaskEventKind::Failed { error: format!("down on attempt {n}"), disposition };
    assert_eq!(
        outcomes,
        vec![
            (1, failed(1, FailureDisposition::Retrying { delay_ms: 40 })),
            (2, failed(2, FailureDisposition::Retrying { delay_ms: 40 })),
            (3, failed(3, FailureDisposition::DeadLettered { reason: "attempts-exhausted".into() })),
        ]
    );
    let dead = pool.drain_dlq().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(header_text(&dead[0], "warren-reason").as_deref(), Some("attempts-exhausted"));
    assert_eq!(header_text(&dead[0], "warren-attempts").as_deref(), Some("3"));

    // The tier queue is a quorum queue with at-least-once dead-lettering: re-declaring it with
    // exactly those arguments works, with the classic ones RabbitMQ refuses.
    let tier = pool.retry_queue(40);
    assert_eq!(pool.depth(&tier).await, Some(0));
    let quorum_args = topology::retry_tier_args(&pool.namespace, &pool.pool, 40, "quorum").unwrap();
    let strategy = quorum_args.inner().get("x-dead-letter-strategy").cloned();
    assert_eq!(strategy, Some(AMQPValue::LongString(LongString::from("at-least-once"))));
    assert!(pool.declares_with(&tier, quorum_args).await);
    let classic_args = topology::retry_tier_args(&pool.namespace, &pool.pool, 40, "classic").unwrap();
    assert!(!pool.declares_with(&tier, classic_args).await, "the tier queue is not classic");
    // The work queue and the dead-letter queue are quorum queues too.
    let mut quorum = FieldTable::default();
    quorum.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    assert!(pool.declares_with(&pool.dlq(), quorum.clone()).await);
    assert!(pool.declares_with(&pool.work_queue("normal"), quorum).await);
    assert_eq!(pool.work_depth().await, 0);
    pool.cleanup(&[40]).await;
}

#[test]
fn an_unknown_queue_type_is_refused() {
    let err = topology::retry_tier_args("ns", "p", 10, "stream").unwrap_err();
    assert_eq!(err.reason(), "InvalidQueueType");
}

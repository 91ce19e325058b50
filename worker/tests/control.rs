//! Control messages against the real broker: the tasks of a cancelled Job are dropped without
//! running (reported `cancelled`, acknowledged), running ones see their cancellation token fire,
//! and other Jobs' tasks are untouched.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use tokio_util::sync::CancellationToken;
use warren_protocol::{CONTROL_CONTENT_TYPE, CancelledJob, ControlMessage, PROTOCOL_VERSION, TaskEventKind, names};
use warren_worker::{TaskError, topology};

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Broadcasts `cancelled` (whole set) on the pool's control exchange every 100 ms, like the
/// operator, until the returned token is cancelled.
async fn broadcast(pool: &TestPool, cancelled: Vec<String>) -> CancellationToken {
    let exchange = names::control_exchange(&pool.reports_queue);
    let channel = pool.connection.create_channel().await.unwrap();
    topology::declare_control_exchange(&channel, &exchange).await.unwrap();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        while !stopped.is_cancelled() {
            let message = ControlMessage {
                version: PROTOCOL_VERSION,
                sent_at_ms: now_ms(),
                cancelled: cancelled.iter().map(|uid| CancelledJob { uid: uid.clone(), reason: "suspended".into() }).collect(),
                paused: Vec::new(),
            };
            let props = BasicProperties::default().with_content_type(CONTROL_CONTENT_TYPE.into());
            let _ =
                channel.basic_publish(exchange.as_str().into(), "".into(), BasicPublishOptions::default(), &message.to_json(), props).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    stop
}

fn cancelled(kind: &TaskEventKind) -> bool {
    matches!(kind, TaskEventKind::Cancelled { reason } if reason == "suspended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_tasks_of_a_cancelled_job_are_dropped_and_other_jobs_run() {
    init_tracing();
    let pool = TestPool::new(&["normal"]).await;
    let other_uid = format!("{}-other", pool.job_uid);
    for i in 0..5 {
        pool.publish(&pool.envelope(i, 5, "normal")).await;
    }
    for i in 0..3 {
        let mut e = pool.envelope(i, 3, "normal");
        e.job.uid = other_uid.clone();
        pool.publish(&e).await;
    }
    let stop = broadcast(&pool, vec![pool.job_uid.clone()]).await;
    let ran: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = ran.clone();
    let mut reports = pool.reports().await;
    let worker = pool
        .builder()
        .concurrency(2)
        .handler(move |ctx| {
            seen.lock().unwrap().push(ctx.job().uid.clone());
            async move { Ok(None) }
        })
        .build()
        .unwrap();
    let (shutdown, handle) = spawn_worker(worker);
    let uid = pool.job_uid.clone();
    reports
        .until("5 drops and 3 successes", |events| {
            events.iter().filter(|e| e.job.uid == uid && cancelled(&e.kind)).count() == 5
                && events.iter().filter(|e| matches!(e.kind, TaskEventKind::Succeeded { .. })).count() == 3
        })
        .await;
    assert_eq!(*ran.lock().unwrap(), vec![other_uid.clone(); 3], "only the other Job's tasks ran");
    assert_eq!(reports.count(|e| e.job.uid == pool.job_uid && !cancelled(&e.kind)), 0, "nothing but drops for the cancelled Job");
    shutdown.cancel();
    let summary = handle.await.unwrap();
    stop.cancel();
    assert_eq!(summary.interrupted_total, 0);
    assert_eq!(pool.work_depth().await, 0, "drops are acknowledged");
    assert_eq!(pool.depth(&pool.dlq()).await, Some(0), "drops are not dead letters");
    pool.cleanup(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn running_tasks_of_a_job_cancelled_later_see_their_token_fire() {
    init_tracing();
    let pool = TestPool::new(&["normal"]).await;
    for i in 0..2 {
        pool.publish(&pool.envelope(i, 2, "normal")).await;
    }
    let fired: Arc<Mutex<Vec<u32>>> = Arc::default();
    let record = fired.clone();
    let mut reports = pool.reports().await;
    let worker = pool
        .builder()
        .concurrency(2)
        .handler(move |ctx| {
            let record = record.clone();
            async move {
                ctx.cancelled().await;
                record.lock().unwrap().push(ctx.index());
                Err(TaskError::retryable("cancelled"))
            }
        })
        .build()
        .unwrap();
    let (shutdown, handle) = spawn_worker(worker);
    reports.until("both started", |events| events.iter().filter(|e| matches!(e.kind, TaskEventKind::Started)).count() == 2).await;
    let stop = broadcast(&pool, vec![pool.job_uid.clone()]).await;
    reports.until("both cancelled", |events| events.iter().filter(|e| cancelled(&e.kind)).count() == 2).await;
    let mut fired = fired.lock().unwrap().clone();
    fired.sort();
    assert_eq!(fired, vec![0, 1], "every handler's cancellation token fired");
    assert_eq!(reports.count(|e| matches!(e.kind, TaskEventKind::Failed { .. })), 0, "a cancelled attempt is not a failure");
    shutdown.cancel();
    let summary = handle.await.unwrap();
    stop.cancel();
    assert_eq!((summary.completed_total, summary.interrupted_total), (2, 0));
    assert_eq!(pool.work_depth().await, 0);
    assert_eq!(pool.depth(&pool.dlq()).await, Some(0));
    pool.cleanup(&[]).await;
}

//! The SDK runtime's /metrics, /healthz and /readyz against the real broker.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_protocol::RetryPolicy;
use warren_worker::TaskError;

async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_runtime_counts_outcomes_attempts_and_serves_readiness() {
    init_tracing();
    let pool = TestPool::new(&["high", "low"]).await;
    let once = RetryPolicy { max_attempts: 3, initial_delay_ms: 20, factor: 1.0, max_delay_ms: 20, jitter: 0.0 };
    let mut tasks = Vec::new();
    for (index, priority, mode) in [(0, "high", "ok"), (1, "high", "permanent"), (2, "high", "flaky"), (3, "low", "ok")] {
        let mut envelope = pool.envelope(index, 4, priority);
        envelope.payload = serde_json::json!({ "mode": mode });
        envelope.retry = once.clone();
        tasks.push(envelope);
    }
    for envelope in &tasks {
        pool.publish(envelope).await;
    }
    let mut reports = pool.reports().await;
    let addr = free_addr();
    let worker = pool
        .builder()
        .concurrency(2)
        .metrics_addr(addr)
        .handler(|ctx| async move {
            match (ctx.payload()["mode"].as_str(), ctx.attempt()) {
                (Some("permanent"), _) => Err(TaskError::permanent("bad input")),
                (Some("flaky"), 1) => Err(TaskError::retryable("try again")),
                _ => Ok(None),
            }
        })
        .build()
        .unwrap();
    let (shutdown, handle) = spawn_worker(worker);
    reports.until("every task final", |events| final_count(events) >= 4).await;

    let p = &pool.pool;
    let expected = [
        format!(r#"warren_worker_tasks_total{{pool="{p}",priority="high",outcome="succeeded"}} 2"#),
        format!(r#"warren_worker_tasks_total{{pool="{p}",priority="high",outcome="retried"}} 1"#),
        format!(r#"warren_worker_tasks_total{{pool="{p}",priority="high",outcome="dead_lettered"}} 1"#),
        format!(r#"warren_worker_tasks_total{{pool="{p}",priority="low",outcome="succeeded"}} 1"#),
        format!(r#"warren_worker_task_attempt_count{{pool="{p}",priority="high"}} 4"#),
        format!(r#"warren_worker_task_attempt_bucket{{le="1.0",pool="{p}",priority="high"}} 3"#),
        format!(r#"warren_worker_tasks_in_flight{{pool="{p}",priority="high"}} 0"#),
        format!(r#"warren_worker_task_duration_seconds_count{{pool="{p}",priority="high",result="failed"}} 2"#),
        "warren_worker_broker_connected 1".to_string(),
    ];
    // The counters move when a task leaves the worker, just after its report: wait for them.
    let started = Instant::now();
    let metrics = loop {
        let (code, body) = get(addr, "/metrics").await.expect("the worker serves /metrics");
        assert_eq!(code, 200);
        if expected.iter().all(|line| body.lines().any(|l| l == line)) {
            break body;
        }
        assert!(started.elapsed() < PATIENCE, "metrics never reached {expected:#?}:\n{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!metrics.contains(&pool.job_uid), "no per-Job label");
    assert_eq!(get(addr, "/readyz").await.unwrap().0, 200, "ready while consuming");
    assert_eq!(get(addr, "/healthz").await.unwrap().0, 200);

    shutdown.cancel();
    handle.await.unwrap();
    assert!(get(addr, "/metrics").await.is_err(), "the endpoints stop with the worker");
    pool.cleanup(&[20]).await;
}

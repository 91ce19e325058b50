//! `warren-bench`: throughput of Warren's job path against raw AMQP on the same broker, in one run.
//!
//! `warren-bench core --tasks N` runs
//! 1. the baseline: N persistent messages of the size of Warren's task envelope, published with
//!    publisher confirms (pipelined) and consumed by 2 consumers, each on its own connection,
//!    acknowledging every message;
//! 2. Warren: a Job of N no-op tasks through a WorkerPool of 2 worker processes (the Rust SDK with
//!    a handler that returns at once), from `kubectl apply` to the status saying Succeeded —
//!    including the operator's confirmed publishing, the workers' batched reports, and the status
//!    write;
//!
//! and prints both rates and their ratio. `warren-bench worker` is the no-op SDK worker the pool
//! runs (the local runner starts it like a container entrypoint).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use warren_e2e::{Env, OperatorOptions, amqp_url};
use warren_operator::crd::JobPhase;

fn usage() -> ! {
    eprintln!(
        "usage: warren-bench core [--tasks N] [--concurrency C] | warren-bench workflows [--count N] [--steps S] | warren-bench worker"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("worker") => {
            let worker = warren_worker::Worker::builder().handler(|_ctx| async { Ok(None) }).build()?;
            worker.run_until_signal().await?;
            Ok(())
        }
        Some("core") => {
            let mut tasks = 20_000u32;
            let mut concurrency = 64u32;
            let mut it = args[1..].iter();
            while let Some(flag) = it.next() {
                let value = it.next().unwrap_or_else(|| usage());
                match flag.as_str() {
                    "--tasks" => tasks = value.parse()?,
                    "--concurrency" => concurrency = value.parse()?,
                    _ => usage(),
                }
            }
            core(tasks, concurrency).await
        }
        Some("workflows") => {
            let (mut count, mut steps) = (500usize, 10usize);
            let mut it = args[1..].iter();
            while let Some(flag) = it.next() {
                let value = it.next().unwrap_or_else(|| usage());
                match flag.as_str() {
                    "--count" => count = value.parse()?,
                    "--steps" => steps = value.parse()?,
                    _ => usage(),
                }
            }
            warren_e2e::workflow_bench::run(count, steps, &std::env::current_exe()?).await
        }
        _ => usage(),
    }
}

async fn core(tasks: u32, concurrency: u32) -> anyhow::Result<()> {
    println!("warren-bench core: {tasks} tasks, 2 consumers/workers, prefetch/concurrency {concurrency}");
    let body_size = envelope_size(tasks);
    let raw = raw_amqp(tasks, concurrency as u16, body_size).await.context("raw AMQP baseline")?;
    println!(
        "raw AMQP  (publish+confirm, consume+ack): {:>8.0} msg/s  ({:.2} s, {body_size}-byte bodies like Warren's envelopes)",
        f64::from(tasks) / raw,
        raw
    );
    let warren = warren(tasks, concurrency).await.context("Warren run")?;
    println!("Warren    (Job -> status Succeeded):      {:>8.0} task/s ({:.2} s)", f64::from(tasks) / warren, warren);
    println!("ratio Warren/raw: {:.2} (target >= 0.80)", raw / warren);
    Ok(())
}

/// Bytes of the task envelope Warren publishes for the benchmark's Job (the same information
/// must cross the broker in the baseline).
fn envelope_size(tasks: u32) -> usize {
    let spec = serde_json::from_value(serde_json::json!({"poolRef": "bench", "completions": tasks})).expect("job spec");
    let job = warren_operator::crd::Job::new("bench", spec);
    let job_ref = warren_protocol::JobRef {
        namespace: "e2e-bench-00000000".into(),
        name: "bench".into(),
        uid: "00000000-0000-0000-0000-000000000000".into(),
    };
    let retry = warren_protocol::RetryPolicy::default();
    warren_operator::controllers::job::plan::envelope(&job, &job_ref, tasks - 1, &retry).to_json().len()
}

/// Seconds to publish `n` persistent, confirmed messages and have 2 consumers ack them all.
async fn raw_amqp(n: u32, prefetch: u16, body_size: usize) -> anyhow::Result<f64> {
    let url = amqp_url();
    let queue = format!("warren-bench.raw.{:08x}", rand::random::<u32>());
    let publisher = Connection::connect(&url, Default::default()).await?;
    let pch = publisher.create_channel().await?;
    pch.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), FieldTable::default()).await?;
    pch.confirm_select(ConfirmSelectOptions::default()).await?;

    let acked = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let mut consumers = Vec::new();
    for i in 0..2 {
        let conn = Connection::connect(&url, Default::default()).await?;
        let ch = conn.create_channel().await?;
        ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let mut consumer = ch
            .basic_consume(queue.as_str().into(), format!("bench-{i}").into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        let acked = acked.clone();
        let done_tx = done_tx.clone();
        consumers.push(tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                // Acks are pipelined, not awaited one by one (that halves lapin's rate).
                tokio::spawn(async move { delivery.acker.ack(BasicAckOptions::default()).await });
                if acked.fetch_add(1, Ordering::Relaxed) + 1 >= u64::from(n) {
                    let _ = done_tx.send(true);
                }
            }
            drop(conn);
        }));
    }

    let started = Instant::now();
    let body = vec![b'x'; body_size];
    let props = BasicProperties::default().with_delivery_mode(2);
    let mut confirms = futures::stream::FuturesUnordered::new();
    for _ in 0..n {
        let confirm = pch
            .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &body, props.clone())
            .await?;
        confirms.push(confirm);
        while confirms.len() >= 1_000 {
            confirms.next().await.expect("pending confirm")?;
        }
    }
    while let Some(c) = confirms.next().await {
        c?;
    }
    let mut done_rx = done_rx;
    tokio::time::timeout(Duration::from_secs(600), done_rx.wait_for(|d| *d)).await??;
    let elapsed = started.elapsed().as_secs_f64();
    for c in consumers {
        c.abort();
    }
    pch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    Ok(elapsed)
}

/// Seconds from creating a Job of `n` no-op tasks to reading status Succeeded.
async fn warren(n: u32, concurrency: u32) -> anyhow::Result<f64> {
    let env = Env::start_with("bench", OperatorOptions::default()).await?;
    let exe = std::env::current_exe()?;
    env.create_pool(
        "bench",
        serde_json::json!({
            "workers": {"command": [exe.display().to_string(), "worker"]},
            "replicas": 2, "concurrency": concurrency,
        }),
    )
    .await?;
    // Both workers up and consuming before the clock starts, as in the baseline.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pool = env.pools().get("bench").await?;
        if pool.status.as_ref().is_some_and(|s| s.ready_replicas == 2)
            && pool.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.status == "True"))
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the pool's 2 workers did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    env.create_job("bench", serde_json::json!({"poolRef": "bench", "completions": n})).await?;
    env.wait_job("bench", Duration::from_secs(900), |j| j.status.as_ref().is_some_and(|s| s.enqueued >= n)).await?;
    println!("          all {n} tasks enqueued and confirmed after {:.2} s", started.elapsed().as_secs_f64());
    let job = env
        .wait_job("bench", Duration::from_secs(900), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished()))
        .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let status = job.status.expect("status");
    anyhow::ensure!(
        status.phase == JobPhase::Succeeded && status.succeeded == n,
        "the Job did not succeed fully: {status:?}"
    );
    env.cleanup().await?;
    Ok(elapsed)
}

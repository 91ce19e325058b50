//! `warren-bench`: throughput of Warren's job path against raw AMQP on the same broker, in one run.
//!
//! `warren-bench core --tasks N [--rounds R]` runs, R times (3 by default; the first phase
//! alternates between rounds, so a machine that slows down or speeds up meanwhile favours
//! neither side), then prints the median ratio:
//! 1. the baseline: N persistent messages of the size of Warren's task envelope, published with
//!    publisher confirms (pipelined) and consumed by 2 consumers, each on its own connection,
//!    acknowledging every message;
//! 2. Warren: a Job of N no-op tasks through a WorkerPool of 2 worker processes (the Rust SDK with
//!    a handler that returns at once), from `kubectl apply` to the status saying Succeeded —
//!    including the operator's confirmed publishing, the workers' batched reports, and the status
//!    write;
//!
//! and prints both rates and their ratio, and for each phase the CPU time every component used per
//! 1,000 tasks (the broker, the operator, the workers, this process): wall-clock rates swing with
//! whatever else the machine does, CPU per task much less, and it shows where the time goes. `warren-bench worker` is the no-op SDK worker the pool
//! runs (the local runner starts it like a container entrypoint).
//!
//! `warren-bench big [--tasks N]` (1,000,000 by default): one very large Job: its enqueue rate
//! against raw confirmed publishing in the same run, apply -> first task running, the operator's
//! peak memory, the Job object's final size, status writes per second.
//!
//! `warren-bench latency [--jobs N]` (200 by default): single-task Jobs one at a time on a warm
//! pool, apply -> handler start and apply -> Succeeded, p50/p99, beside a raw publish -> deliver
//! round trip measured in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use warren_e2e::{Env, OperatorOptions, amqp_url};
use warren_operator::crd::JobPhase;

fn usage() -> ! {
    eprintln!(
        "usage: warren-bench core [--tasks N] [--concurrency C] [--rounds R] [--fairness]\n\
         \x20      warren-bench scale [--namespaces N] [--pools N] [--jobs N] [--idle-seconds S]\n\
         \x20      warren-bench scale-sim [--pod-start S] [--service S] [--concurrency C] [--max-replicas N] [--keda-value V] [--hpa-behavior] [--seed N]\n\
         \x20      warren-bench workflows [--count N] [--steps S]\n\
         \x20      warren-bench latency [--jobs N]\n\
         \x20      warren-bench big [--tasks N]\n\
         \x20      warren-bench fairness [--a-tasks N] [--b-tasks N] [--sleep-ms N] [--replicas N] [--concurrency C] [--window-ms N]\n\
         \x20      warren-bench worker [--sleep-ms N | --result-start]"
    );
    std::process::exit(2)
}

/// The side channel's channel of the SDK workers' accounts (`<pod> completed=N interrupted=M`).
pub const WORKER_ACCOUNTS: &str = "worker-accounts";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("worker") => {
            // `--sleep-ms N`: every task takes N ms (the autoscaling e2e test's 50 ms tasks).
            // `--result-start`: the result says when the handler started (the latency bench).
            let (sleep_ms, result_start): (u64, bool) = match args.get(1).map(String::as_str) {
                Some("--sleep-ms") => (args.get(2).unwrap_or_else(|| usage()).parse()?, false),
                Some("--result-start") => (0, true),
                None => (0, false),
                Some(_) => usage(),
            };
            let worker = warren_worker::Worker::builder()
                .handler(move |_ctx| async move {
                    let started_at_ms = warren_protocol::now_ms();
                    if sleep_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
                    }
                    Ok(result_start.then(|| serde_json::json!({"startedAtMs": started_at_ms})))
                })
                .build()?;
            let summary = worker.run_until_signal().await?;
            let account = format!("completed={} interrupted={}", summary.completed_total, summary.interrupted_total);
            eprintln!("warren-bench worker stopped: {account}");
            // The autoscaling e2e test reads the workers' own accounts from the side channel.
            if let Some(side) = warren_e2e::SideChannel::from_pod_env() {
                let pod = std::env::var(warren_protocol::worker_env::POD_NAME).unwrap_or_else(|_| std::process::id().to_string());
                side.record(WORKER_ACCOUNTS, &format!("{pod} {account}")).await?;
            }
            Ok(())
        }
        Some("core") => {
            let mut tasks = 20_000u32;
            let mut concurrency = 64u32;
            let mut rounds = 3u32;
            let mut fairness = false;
            let mut it = args[1..].iter();
            while let Some(flag) = it.next() {
                if flag == "--fairness" {
                    fairness = true;
                    continue;
                }
                let value = it.next().unwrap_or_else(|| usage());
                match flag.as_str() {
                    "--tasks" => tasks = value.parse()?,
                    "--concurrency" => concurrency = value.parse()?,
                    "--rounds" => rounds = value.parse::<u32>()?.max(1),
                    _ => usage(),
                }
            }
            core(tasks, concurrency, rounds, fairness).await
        }
        Some("scale-sim") => {
            let mut model = warren_e2e::scale_sim::WorkerModel::default();
            let mut keda_value = 20.0;
            let mut seed = 42u64;
            let mut rules = warren_e2e::scale_sim::HpaRules::NoBehavior;
            let mut it = args[1..].iter();
            while let Some(flag) = it.next() {
                if flag == "--hpa-behavior" {
                    rules = warren_e2e::scale_sim::HpaRules::DefaultBehavior;
                    continue;
                }
                let value = it.next().unwrap_or_else(|| usage());
                match flag.as_str() {
                    "--pod-start" => model.pod_start = value.parse()?,
                    "--service" => model.service_mean = value.parse()?,
                    "--concurrency" => model.concurrency = value.parse()?,
                    "--max-replicas" => model.max_replicas = value.parse()?,
                    "--keda-value" => keda_value = value.parse()?,
                    "--seed" => seed = value.parse()?,
                    _ => usage(),
                }
            }
            scale_sim(&model, keda_value, rules, seed);
            Ok(())
        }
        Some("big") => {
            let mut tasks = 1_000_000u32;
            let mut it = args[1..].iter();
            while let Some(flag) = it.next() {
                let value = it.next().unwrap_or_else(|| usage());
                match flag.as_str() {
                    "--tasks" => tasks = value.parse::<u32>()?.max(1),
                    _ => usage(),
                }
            }
            big(tasks).await
        }
        Some("latency") => {
            let mut jobs = 200u32;
            let mut it = args[1..].iter();
            while let Some(flag) = it.next() {
                let value = it.next().unwrap_or_else(|| usage());
                match flag.as_str() {
                    "--jobs" => jobs = value.parse::<u32>()?.max(1),
                    _ => usage(),
                }
            }
            latency(jobs).await
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
        Some("scale") => match warren_e2e::scale_bench::Options::parse(&args[1..]) {
            Some(options) => warren_e2e::scale_bench::run(&options).await,
            None => usage(),
        },
        Some("fairness") => match warren_e2e::fairness_bench::Command::parse(&args[1..]) {
            Some(command) => command.run(&std::env::current_exe()?).await,
            None => usage(),
        },
        _ => usage(),
    }
}

/// Replays the standard traces through Warren's decision function, the KEDA/HPA model and the
/// oracle (the physical bound), and prints the three ratios beside their targets.
fn scale_sim(model: &warren_e2e::scale_sim::WorkerModel, keda_value: f64, rules: warren_e2e::scale_sim::HpaRules, seed: u64) {
    use warren_e2e::scale_sim::{KedaScaler, Outcome, WarrenScaler, oracle, simulate, traces};
    const TAIL: f64 = 3_600.0;
    println!(
        "warren-bench scale-sim: pods start in {} s, tasks take {} s on average (exponential), concurrency {}, max {} pods; \
         Warren = `autoscaling: {{maxReplicas: {}}}` (defaults), KEDA = rabbitmq trigger (AMQP, ready messages) value {keda_value} \
         with KEDA/HPA defaults (HPA rules: {rules:?}), oracle = knows the future, pods ready when needed; seed {seed}",
        model.pod_start, model.service_mean, model.concurrency, model.max_replicas, model.max_replicas
    );
    println!(
        "{:<11} {:<7} {:>7} {:>9} {:>9} {:>9} {:>8} {:>11} {:>5} {:>9} {:>10}",
        "trace", "scaler", "tasks", "p50 wait", "p99 wait", "max wait", "peak q", "worker-s", "pods", "reaction", "busy-kill"
    );
    let row = |trace: &str, name: &str, o: &Outcome| {
        println!(
            "{:<11} {:<7} {:>7} {:>8.1}s {:>8.1}s {:>8.1}s {:>8} {:>11.0} {:>5} {:>9} {:>10}",
            trace,
            name,
            o.tasks,
            o.p50_wait,
            o.p99_wait,
            o.max_wait,
            o.peak_backlog,
            o.worker_seconds,
            o.max_pods,
            o.first_reaction.map_or("-".to_string(), |r| format!("{r:.1}s")),
            o.busy_on_removed
        );
    };
    // A ratio of waits; a 0 s wait (an instant start) is counted as one 0.1 s simulation step.
    let ratio = |a: f64, b: f64| a.max(warren_e2e::scale_sim::DT) / b.max(warren_e2e::scale_sim::DT);
    let mut missed = Vec::new();
    for trace in traces(seed) {
        let w = simulate(&trace, model, &mut WarrenScaler::defaults(model), seed, TAIL);
        let k = simulate(&trace, model, &mut KedaScaler::with_rules(keda_value, model.max_replicas, rules), seed, TAIL);
        let o = oracle(&trace, model, seed, TAIL);
        row(trace.name, "warren", &w);
        row(trace.name, "keda", &k);
        row(trace.name, "oracle", &o);
        let checks = [
            ("p99 wait warren/oracle", ratio(w.p99_wait, o.p99_wait), 1.2),
            ("p99 wait warren/keda", ratio(w.p99_wait, k.p99_wait), 0.5),
            ("worker-seconds warren/keda", w.worker_seconds / k.worker_seconds.max(1e-9), 1.0),
        ];
        let line: Vec<String> = checks
            .iter()
            .map(|(name, value, target)| {
                let met = value <= target;
                if !met {
                    missed.push(format!("{} {name}", trace.name));
                }
                format!("{name} {value:.2} (target <= {target:.2}{})", if met { "" } else { ", NOT met" })
            })
            .collect();
        println!(
            "{:<11} ratios  {}; p99 above the oracle's by {:+.1} s   [{}]",
            trace.name,
            line.join(", "),
            w.p99_wait - o.p99_wait,
            trace.description
        );
    }
    if missed.is_empty() {
        println!("overall: every target met on every trace");
    } else {
        println!("overall: {} of 12 targets NOT met: {}", missed.len(), missed.join("; "));
    }
}

/// `fairness`: Warren's pool is under flow control (`fairness: {}`: every task goes through the
/// operator's admission), to show what that costs against the same raw baseline.
async fn core(tasks: u32, concurrency: u32, rounds: u32, fairness: bool) -> anyhow::Result<()> {
    println!(
        "warren-bench core: {tasks} tasks, 2 consumers/workers, prefetch/concurrency {concurrency}, {rounds} round(s){}",
        if fairness { "; Warren's pool under flow control (fairness: {})" } else { "" }
    );
    let body_size = envelope_size(tasks);
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        println!("round {round}/{rounds}:");
        // Alternate which phase goes first, so that a machine slowing down or speeding up during
        // the run does not favour one side.
        let (raw, warren) = if round % 2 == 1 {
            let raw = raw_phase(tasks, concurrency, body_size).await?;
            (raw, warren_phase(tasks, concurrency, fairness).await?)
        } else {
            let warren = warren_phase(tasks, concurrency, fairness).await?;
            (raw_phase(tasks, concurrency, body_size).await?, warren)
        };
        let ratio = raw / warren;
        println!("  ratio Warren/raw: {ratio:.2} (target >= 0.80)");
        ratios.push(ratio);
    }
    if rounds > 1 {
        ratios.sort_by(f64::total_cmp);
        let median =
            if ratios.len() % 2 == 1 { ratios[ratios.len() / 2] } else { (ratios[ratios.len() / 2 - 1] + ratios[ratios.len() / 2]) / 2.0 };
        println!(
            "median ratio Warren/raw over {rounds} rounds: {median:.2} (min {:.2}, max {:.2}; target >= 0.80)",
            ratios[0],
            ratios[ratios.len() - 1]
        );
    }
    Ok(())
}

/// The raw AMQP phase: prints its rate and CPU; returns its seconds.
async fn raw_phase(tasks: u32, concurrency: u32, body_size: usize) -> anyhow::Result<f64> {
    let before = CpuSample::now();
    let raw = raw_amqp(tasks, concurrency as u16, body_size).await.context("raw AMQP baseline")?;
    let cpu = CpuSample::now().since(&before);
    println!(
        "  raw AMQP  (publish+confirm, consume+ack): {:>8.0} msg/s  ({raw:.2} s, {body_size}-byte bodies like Warren's envelopes)",
        f64::from(tasks) / raw
    );
    println!("            CPU ms per 1,000 messages: {}", cpu.per_thousand(tasks, "clients"));
    Ok(raw)
}

/// The Warren phase: prints its rate and CPU; returns its seconds.
async fn warren_phase(tasks: u32, concurrency: u32, fairness: bool) -> anyhow::Result<f64> {
    let (warren, cpu) = warren(tasks, concurrency, fairness).await.context("Warren run")?;
    println!("  Warren    (Job -> status Succeeded):      {:>8.0} task/s ({warren:.2} s)", f64::from(tasks) / warren);
    println!("            CPU ms per 1,000 tasks: {}", cpu.per_thousand(tasks, "control plane + harness"));
    Ok(warren)
}

/// CPU seconds used so far by the broker (every `beam.smp`), the operator and the worker
/// processes (this process's descendants) and this process itself, read from `/proc`, per process.
#[derive(Clone, Debug, Default)]
struct CpuSample {
    processes: std::collections::HashMap<u32, (Component, f64)>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Component {
    Broker,
    Operator,
    Workers,
    This,
}

/// CPU seconds per component over an interval.
#[derive(Clone, Copy, Debug, Default)]
struct CpuUsage {
    broker: f64,
    operator: f64,
    workers: f64,
    this: f64,
}

impl CpuSample {
    fn now() -> Self {
        // /proc/<pid>/stat counts in USER_HZ, which Linux fixes at 100 for user space.
        const TICKS_PER_SECOND: f64 = 100.0;
        let me = std::process::id();
        let mut parents = std::collections::HashMap::new();
        let mut usage = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // "pid (comm) state ppid ..." — comm may hold spaces and parentheses.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
            let comm = stat[open + 1..close].to_string();
            let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            let (Some(ppid), Some(utime), Some(stime)) = (fields.get(1), fields.get(11), fields.get(12)) else { continue };
            let ticks = utime.parse::<f64>().unwrap_or(0.0) + stime.parse::<f64>().unwrap_or(0.0);
            parents.insert(pid, ppid.parse::<u32>().unwrap_or(0));
            usage.push((pid, comm, ticks / TICKS_PER_SECOND));
        }
        let descends_from_me = |mut pid: u32| {
            for _ in 0..64 {
                match parents.get(&pid) {
                    Some(&parent) if parent == me => return true,
                    Some(&parent) if parent > 1 => pid = parent,
                    _ => return false,
                }
            }
            false
        };
        let mut processes = std::collections::HashMap::new();
        for (pid, comm, seconds) in usage {
            let component = if comm == "beam.smp" {
                Component::Broker
            } else if pid == me {
                Component::This
            } else if descends_from_me(pid) {
                if comm.starts_with("warren-operator") { Component::Operator } else { Component::Workers }
            } else {
                continue;
            };
            processes.insert(pid, (component, seconds));
        }
        Self { processes }
    }

    /// CPU used since `earlier` by the processes alive now (one started in between counts
    /// from zero; one that ended in between is missing).
    fn since(&self, earlier: &Self) -> CpuUsage {
        let mut usage = CpuUsage::default();
        for (pid, (component, seconds)) in &self.processes {
            let before = earlier.processes.get(pid).map_or(0.0, |(_, s)| *s);
            let used = (seconds - before).max(0.0);
            match component {
                Component::Broker => usage.broker += used,
                Component::Operator => usage.operator += used,
                Component::Workers => usage.workers += used,
                Component::This => usage.this += used,
            }
        }
        usage
    }
}

impl CpuUsage {
    fn per_thousand(&self, tasks: u32, this_name: &str) -> String {
        let ms = |seconds: f64| seconds * 1_000.0 * 1_000.0 / f64::from(tasks);
        let mut parts = vec![format!("broker {:.0}", ms(self.broker))];
        if self.operator > 0.0 || self.workers > 0.0 {
            parts.push(format!("operator {:.0}", ms(self.operator)));
            parts.push(format!("workers {:.0}", ms(self.workers)));
        }
        parts.push(format!("{this_name} {:.0}", ms(self.this)));
        let total = self.broker + self.operator + self.workers + self.this;
        format!("{}; total {:.0}", parts.join(", "), ms(total))
    }
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
        let confirm = pch.basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &body, props.clone()).await?;
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

/// Seconds from creating a Job of `n` no-op tasks to reading status Succeeded, and the CPU the
/// components used meanwhile.
async fn warren(n: u32, concurrency: u32, fairness: bool) -> anyhow::Result<(f64, CpuUsage)> {
    let metrics_addr = format!("127.0.0.1:{}", warren_e2e::free_port());
    let env = Env::start_with("bench", OperatorOptions { metrics_addr: metrics_addr.clone(), ..OperatorOptions::default() }).await?;
    let exe = std::env::current_exe()?;
    let mut spec = serde_json::json!({
        "workers": {"command": [exe.display().to_string(), "worker"]},
        "replicas": 2, "concurrency": concurrency,
    });
    if fairness {
        spec["fairness"] = serde_json::json!({});
    }
    env.create_pool("bench", spec).await?;
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
    let cpu_before = CpuSample::now();
    let started = Instant::now();
    env.create_job("bench", serde_json::json!({"poolRef": "bench", "completions": n})).await?;
    env.wait_job("bench", Duration::from_secs(900), |j| j.status.as_ref().is_some_and(|s| s.enqueued >= n)).await?;
    println!("            all {n} tasks enqueued and confirmed after {:.2} s", started.elapsed().as_secs_f64());
    let job = env.wait_job("bench", Duration::from_secs(900), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = CpuSample::now().since(&cpu_before);
    let (_, metrics) = warren_e2e::http_get(&metrics_addr, "/metrics").await.context("scraping the operator")?;
    let counter = |name: &str| -> f64 { metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0.0) };
    let (messages, events) = (counter("warren_operator_report_messages_total"), counter("warren_operator_report_events_total"));
    println!(
        "            worker reports: {messages:.0} messages, {events:.0} events ({:.1} events per message, {:.0} messages per 1,000 tasks)",
        events / messages.max(1.0),
        messages * 1_000.0 / f64::from(n)
    );
    let status = job.status.expect("status");
    anyhow::ensure!(status.phase == JobPhase::Succeeded && status.succeeded == n, "the Job did not succeed fully: {status:?}");
    env.cleanup().await?;
    Ok((elapsed, cpu))
}

/// `warren-bench latency`: single-task Jobs one after another on a warm pool (2 workers idle and
/// consuming), apply -> handler start and apply -> status Succeeded as the client sees it (a
/// watch), p50 and p99; beside the raw floor measured in the same run: one persistent message
/// published with a confirm and delivered to a waiting consumer, one after another.
async fn latency(jobs: u32) -> anyhow::Result<()> {
    println!("warren-bench latency: {jobs} single-task Jobs, one at a time, on a warm pool of 2 workers");
    let raw = raw_round_trips(jobs).await.context("raw AMQP baseline")?;
    let (started, done) = warren_latency(jobs).await.context("Warren run")?;
    let line = |name: &str, values: &[f64], target: Option<f64>| {
        let (p50, p99) = (percentile(values, 50.0), percentile(values, 99.0));
        let target = match target {
            Some(t) => format!("  (target p99 < {t:.0} ms{})", if p99 < t { "" } else { ", NOT met" }),
            None => String::new(),
        };
        println!("  {name:<44} p50 {p50:>7.1} ms   p99 {p99:>7.1} ms   max {:>7.1} ms{target}", percentile(values, 100.0));
    };
    line("raw AMQP (publish+confirm -> delivered)", &raw, None);
    line("Warren apply -> handler start", &started, Some(250.0));
    line("Warren apply -> status Succeeded (watch)", &done, None);
    Ok(())
}

/// The `p`-th percentile (nearest rank) of `values`.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank - 1).copied().unwrap_or(f64::NAN)
}

/// Milliseconds from publishing one message (persistent, confirmed) to its delivery to a
/// consumer on another connection, `n` times in a row.
async fn raw_round_trips(n: u32) -> anyhow::Result<Vec<f64>> {
    let url = amqp_url();
    let queue = format!("warren-bench.latency.{:08x}", rand::random::<u32>());
    let publisher = Connection::connect(&url, Default::default()).await?;
    let pch = publisher.create_channel().await?;
    pch.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), FieldTable::default()).await?;
    pch.confirm_select(ConfirmSelectOptions::default()).await?;
    let consumer_conn = Connection::connect(&url, Default::default()).await?;
    let cch = consumer_conn.create_channel().await?;
    let mut consumer =
        cch.basic_consume(queue.as_str().into(), "latency".into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
    let props = BasicProperties::default().with_delivery_mode(2);
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let sent = Instant::now();
        pch.basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), b"{}", props.clone()).await?.await?;
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await?.context("consumer ended")??;
        out.push(sent.elapsed().as_secs_f64() * 1_000.0);
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    pch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    Ok(out)
}

/// (apply -> handler start, apply -> Succeeded seen by a watch), in milliseconds, per Job.
async fn warren_latency(n: u32) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let env = Env::start("latency").await?;
    let exe = std::env::current_exe()?;
    env.create_pool(
        "bench",
        serde_json::json!({"workers": {"command": [exe.display().to_string(), "worker", "--result-start"]}, "replicas": 2, "concurrency": 4}),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pool = env.pools().get("bench").await?;
        let ready = pool
            .status
            .as_ref()
            .is_some_and(|s| s.ready_replicas == 2 && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the pool's 2 workers did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Warm: the workers consume, and a first Job has gone the whole way.
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.create_job("warm-up", serde_json::json!({"poolRef": "bench", "payload": {}})).await?;
    env.wait_job("warm-up", Duration::from_secs(60), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    let (mut started, mut done) = (Vec::with_capacity(n as usize), Vec::with_capacity(n as usize));
    for i in 0..n {
        let name = format!("lat-{i}");
        let applied_ms = warren_protocol::now_ms();
        let applied = Instant::now();
        env.create_job(&name, serde_json::json!({"poolRef": "bench", "payload": {"i": i}})).await?;
        let job = env.wait_job(&name, Duration::from_secs(60), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
        done.push(applied.elapsed().as_secs_f64() * 1_000.0);
        let status = job.status.unwrap_or_default();
        anyhow::ensure!(status.phase == JobPhase::Succeeded, "{name} ended {:?}", status.phase);
        let handler_ms =
            status.result.as_ref().and_then(|r| r.get("startedAtMs")).and_then(serde_json::Value::as_u64).context("no start time")?;
        started.push(handler_ms.saturating_sub(applied_ms) as f64);
    }
    env.cleanup().await?;
    Ok((started, done))
}

/// `warren-bench big`: one Job of `tasks` no-op tasks on a pool of 2 workers. Prints the enqueue
/// rate (apply -> every task confirmed by the broker) against the raw confirmed-publish rate of
/// as many messages of the same size to 2 consumers measured in the same run, the time from apply to the first
/// task running, the operator's peak memory, the Job object's size at the end, and the status
/// writes per second.
async fn big(tasks: u32) -> anyhow::Result<()> {
    println!("warren-bench big: one Job of {tasks} tasks, 2 workers (concurrency 64)");
    let body_size = envelope_size(tasks);
    let raw = raw_publish(tasks, body_size).await.context("raw confirmed publishing")?;
    let raw_rate = f64::from(tasks) / raw;
    println!("  raw AMQP confirmed publish, 2 consumers ({body_size}-byte bodies): {raw_rate:>9.0} msg/s ({raw:.1} s)");

    let metrics_addr = format!("127.0.0.1:{}", warren_e2e::free_port());
    let env = Env::start_with("big", OperatorOptions { metrics_addr: metrics_addr.clone(), ..OperatorOptions::default() }).await?;
    let exe = std::env::current_exe()?;
    env.create_pool(
        "bench",
        serde_json::json!({"workers": {"command": [exe.display().to_string(), "worker"]}, "replicas": 2, "concurrency": 64}),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pool = env.pools().get("bench").await?;
        if pool
            .status
            .as_ref()
            .is_some_and(|s| s.ready_replicas == 2 && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the pool's 2 workers did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let operator = env.operator_pid().context("the operator's pid")?;
    let writes_before = status_writes(&metrics_addr).await?;
    let applied = Instant::now();
    env.create_job("big", serde_json::json!({"poolRef": "bench", "completions": tasks})).await?;
    env.wait_job("big", Duration::from_secs(600), |j| j.status.as_ref().is_some_and(|s| s.running + s.succeeded > 0)).await?;
    let first_running = applied.elapsed().as_secs_f64();
    env.wait_job("big", Duration::from_secs(3_600), |j| j.status.as_ref().is_some_and(|s| s.enqueued >= tasks)).await?;
    let enqueued = applied.elapsed().as_secs_f64();
    let job = env.wait_job("big", Duration::from_secs(3_600), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    let finished = applied.elapsed().as_secs_f64();
    let writes = status_writes(&metrics_addr).await? - writes_before;
    let peak_kib = std::fs::read_to_string(format!("/proc/{operator}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let size = serde_json::to_vec(&job)?.len();
    let status = job.status.clone().unwrap_or_default();
    anyhow::ensure!(status.phase == JobPhase::Succeeded && status.succeeded == tasks, "the Job did not succeed fully: {status:?}");
    let enqueue_rate = f64::from(tasks) / enqueued;
    println!(
        "  Warren enqueue (apply -> all confirmed):        {enqueue_rate:>9.0} task/s ({enqueued:.1} s); ratio to raw {:.2} (target >= 0.90)",
        enqueue_rate / raw_rate
    );
    println!("  apply -> first task running (status):          {:>9.0} ms", first_running * 1_000.0);
    println!("  apply -> Succeeded:                            {finished:>9.1} s ({:.0} task/s end to end)", f64::from(tasks) / finished);
    println!("  operator peak memory (VmHWM):                  {:>9.1} MiB", peak_kib as f64 / 1_024.0);
    println!("  Job object at the end (JSON):                  {:>9.1} KiB", size as f64 / 1_024.0);
    println!("  Job status writes:                             {writes:>9.0} ({:.2} per second)", writes / finished);
    env.cleanup().await
}

/// Job status writes the operator made so far (`warren_operator_status_writes_total{kind="Job"}`).
async fn status_writes(metrics_addr: &str) -> anyhow::Result<f64> {
    let (_, metrics) = warren_e2e::http_get(metrics_addr, "/metrics").await.context("scraping the operator")?;
    Ok(warren_e2e::sample(&metrics, "warren_operator_status_writes_total{kind=\"Job\"}").unwrap_or(0.0))
}

/// Seconds to publish `n` persistent messages of `body_size` bytes with confirms (pipelined, at
/// most 1,000 unconfirmed) while 2 consumers (prefetch 64, one ack per message) take them, as
/// Warren's 2 workers do while its operator enqueues: the same broker work on both sides.
async fn raw_publish(n: u32, body_size: usize) -> anyhow::Result<f64> {
    let url = amqp_url();
    let queue = format!("warren-bench.publish.{:08x}", rand::random::<u32>());
    let publisher = Connection::connect(&url, Default::default()).await?;
    let pch = publisher.create_channel().await?;
    pch.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), FieldTable::default()).await?;
    pch.confirm_select(ConfirmSelectOptions::default()).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for i in 0..2 {
        let conn = Connection::connect(&url, Default::default()).await?;
        let ch = conn.create_channel().await?;
        ch.basic_qos(64, BasicQosOptions::default()).await?;
        let mut consumer = ch
            .basic_consume(queue.as_str().into(), format!("big-{i}").into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        let acked = acked.clone();
        consumers.push(tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                tokio::spawn(async move { delivery.acker.ack(BasicAckOptions::default()).await });
                acked.fetch_add(1, Ordering::Relaxed);
            }
            drop(conn);
        }));
    }
    let body = vec![b'x'; body_size];
    let props = BasicProperties::default().with_delivery_mode(2);
    let started = Instant::now();
    let mut confirms = futures::stream::FuturesUnordered::new();
    for _ in 0..n {
        confirms.push(pch.basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &body, props.clone()).await?);
        while confirms.len() >= 1_000 {
            confirms.next().await.expect("pending confirm")?;
        }
    }
    while let Some(c) = confirms.next().await {
        c?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Drained before the Warren phase starts (not timed).
    let deadline = Instant::now() + Duration::from_secs(600);
    while acked.load(Ordering::Relaxed) < u64::from(n) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in consumers {
        c.abort();
    }
    pch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    Ok(elapsed)
}

//! `warren-bench scale` (issue #17, point 4): an operator for many tenants. `--pools` WorkerPools
//! (no workers: `replicas: 0`) over `--namespaces` namespaces, then `--jobs` one-task Jobs spread
//! over the pools, on the local control plane and the real broker. Printed beside their targets:
//! the operator's peak memory, Job creation → `status.enqueued` (the task is in its queue) p50 and
//! p99 as a watch sees it, the operator's CPU while nothing changes, and the API requests it made
//! per second by verb (counted by the local API server: the harness's own requests are few and
//! listed apart). Nothing is asserted: the command exits 0 when a target is missed (MISSED).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use warren_operator::crd::{Job, WorkerPool};

use crate::{Env, EnvOptions, OperatorOptions, free_port};

const MEMORY_TARGET_MIB: f64 = 300.0;
const QUEUED_P99_TARGET: Duration = Duration::from_secs(2);
const IDLE_CPU_TARGET: f64 = 0.02;
/// Objects created at once.
const PARALLEL: usize = 16;

#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub namespaces: u32,
    pub pools: u32,
    pub jobs: u32,
    /// How long the operator's idle CPU is measured.
    pub idle_seconds: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self { namespaces: 100, pools: 1_000, jobs: 10_000, idle_seconds: 30 }
    }
}

impl Options {
    pub fn parse(args: &[String]) -> Option<Options> {
        let mut options = Options::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next()?;
            match flag.as_str() {
                "--namespaces" => options.namespaces = value.parse().ok()?,
                "--pools" => options.pools = value.parse().ok()?,
                "--jobs" => options.jobs = value.parse().ok()?,
                "--idle-seconds" => options.idle_seconds = value.parse().ok()?,
                _ => return None,
            }
        }
        (options.namespaces > 0 && options.pools >= options.namespaces && options.jobs > 0).then_some(options)
    }
}

/// The p-th percentile (0–100) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The operator's CPU time so far (user + system), from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("no command in /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i).context("short /proc/<pid>/stat")?.parse()?) };
    // utime and stime are fields 14 and 15 (1-based, the command being 2): 11 and 12 here.
    // USER_HZ is 100 on Linux.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

fn peak_memory_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .context("no VmHWM in /proc/<pid>/status")?;
    Ok(kib as f64 / 1_024.0)
}

fn met(ok: bool) -> &'static str {
    if ok { "" } else { " — MISSED" }
}

pub async fn run(o: &Options) -> anyhow::Result<()> {
    println!(
        "warren-bench scale: {} WorkerPools (no workers) over {} namespaces, then {} one-task Jobs over the pools; local control plane, real broker",
        o.pools, o.namespaces, o.jobs
    );
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    // A broker node of its own: thousands of queues and a flood of declares must not load (or,
    // if the run is killed, leave behind on) the broker other work on this machine shares.
    let broker = crate::PrivateBroker::start().await.context("starting the bench's own RabbitMQ node")?;
    println!("broker: a private RabbitMQ node ({})", broker.node());
    let options = EnvOptions {
        operator: OperatorOptions { metrics_addr, ..OperatorOptions::default() },
        amqp_url: Some(broker.url()),
        ..EnvOptions::default()
    };
    let env = Env::start_custom("scale", options).await?;
    let pid = env.operator_pid().context("the bench needs the operator process of the local control plane")?;
    let result = measure(&env, o, pid).await;
    let cleanup = teardown(&env, o).await;
    env.cleanup().await?;
    result.and(cleanup)
}

fn namespace_of(env: &Env, i: u32) -> String {
    format!("{}-{i:03}", env.namespace)
}

async fn measure(env: &Env, o: &Options, pid: u32) -> anyhow::Result<()> {
    let client = env.client.clone();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for i in 0..o.namespaces {
        let ns = serde_json::from_value(
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace_of(env, i)}}),
        )?;
        namespaces.create(&PostParams::default(), &ns).await?;
    }
    // The pools, spread round-robin over the namespaces.
    let started = Instant::now();
    let pool_of = |p: u32| (namespace_of(env, p % o.namespaces), format!("pool-{p:04}"));
    futures::stream::iter(0..o.pools)
        .map(|p| {
            let (namespace, name) = pool_of(p);
            let api: Api<WorkerPool> = Api::namespaced(client.clone(), &namespace);
            async move {
                let pool: WorkerPool = serde_json::from_value(serde_json::json!({
                    "apiVersion": "warren.dev/v1alpha1", "kind": "WorkerPool", "metadata": {"name": name, "namespace": namespace},
                    "spec": {"workers": {"handler": ["true"]}, "replicas": 0, "deletionPolicy": "Delete"},
                }))?;
                api.create(&PostParams::default(), &pool).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<()>>()
        .await?;
    // Every pool ready (its queues declared).
    let all_pools: Api<WorkerPool> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(1_800);
    loop {
        let ready = all_pools
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|p| p.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")))
            .count() as u32;
        if ready >= o.pools {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "only {ready} of {} pools became ready", o.pools);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("  {} pools ready after {:.1} s", o.pools, started.elapsed().as_secs_f64());

    // The Jobs, timed from their creation to a watch seeing `status.enqueued`.
    let created: std::sync::Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
    let queued: std::sync::Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
    let watch = {
        let (queued, all_jobs) = (queued.clone(), Api::<Job>::all(client.clone()));
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(all_jobs, watcher::Config::default()).applied_objects());
            while let Some(Ok(job)) = events.next().await {
                if job.status.as_ref().is_some_and(|s| s.enqueued >= 1) {
                    let key = format!("{}/{}", job.metadata.namespace.unwrap_or_default(), job.metadata.name.unwrap_or_default());
                    queued.lock().expect("lock").entry(key).or_insert_with(Instant::now);
                }
            }
        })
    };
    let requests_before = env.api_requests().unwrap_or_default();
    let jobs_started = Instant::now();
    futures::stream::iter(0..o.jobs)
        .map(|j| {
            let (namespace, pool) = pool_of(j % o.pools);
            let name = format!("job-{j:05}");
            let (api, created) = (Api::<Job>::namespaced(client.clone(), &namespace), created.clone());
            async move {
                let job: Job = serde_json::from_value(serde_json::json!({
                    "apiVersion": "warren.dev/v1alpha1", "kind": "Job", "metadata": {"name": name, "namespace": namespace},
                    "spec": {"poolRef": pool, "completions": 1},
                }))?;
                let at = Instant::now();
                api.create(&PostParams::default(), &job).await?;
                created.lock().expect("lock").insert(format!("{namespace}/{name}"), at);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<()>>()
        .await?;
    let deadline = Instant::now() + Duration::from_secs(1_800);
    while (queued.lock().expect("lock").len() as u32) < o.jobs {
        anyhow::ensure!(Instant::now() < deadline, "only {} of {} Jobs were enqueued", queued.lock().expect("lock").len(), o.jobs);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let busy = jobs_started.elapsed();
    watch.abort();
    let requests_busy = diff(&env.api_requests().unwrap_or_default(), &requests_before);
    let mut latencies: Vec<Duration> = {
        let (created, queued) = (created.lock().expect("lock"), queued.lock().expect("lock"));
        created.iter().filter_map(|(key, at)| queued.get(key).map(|q| q.saturating_duration_since(*at))).collect()
    };
    latencies.sort_unstable();

    // Nothing changes now: the operator's CPU and API requests while idle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (cpu_before, idle_requests_before, idle_from) = (cpu_time(pid)?, env.api_requests().unwrap_or_default(), Instant::now());
    tokio::time::sleep(Duration::from_secs(o.idle_seconds)).await;
    let idle = idle_from.elapsed();
    let idle_cpu = (cpu_time(pid)? - cpu_before).as_secs_f64() / idle.as_secs_f64();
    let requests_idle = diff(&env.api_requests().unwrap_or_default(), &idle_requests_before);
    let peak = peak_memory_mib(pid)?;

    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
    println!("scale ({} pools, {} namespaces, {} Jobs)", o.pools, o.namespaces, o.jobs);
    println!(
        "  operator peak memory (VmHWM)        {peak:>9.1} MiB   (target < {MEMORY_TARGET_MIB:.0} MiB{})",
        met(peak < MEMORY_TARGET_MIB)
    );
    println!(
        "  Job creation -> enqueued, p50 / p99  {:>7.0} / {:.0} ms   (target p99 < {} ms{}; {} Jobs created in {:.1} s, {PARALLEL} at once)",
        p50.as_secs_f64() * 1_000.0,
        p99.as_secs_f64() * 1_000.0,
        QUEUED_P99_TARGET.as_millis(),
        met(p99 < QUEUED_P99_TARGET),
        latencies.len(),
        busy.as_secs_f64()
    );
    println!(
        "  operator CPU with nothing changing  {:>8.2} % of a core   (target < {:.0} %{}; over {:.0} s)",
        idle_cpu * 100.0,
        IDLE_CPU_TARGET * 100.0,
        met(idle_cpu < IDLE_CPU_TARGET),
        idle.as_secs_f64()
    );
    println!("  API requests per second by verb (the operator's, and the bench's own creates and lists):");
    println!("    while the Jobs were created ({:.0} s): {}", busy.as_secs_f64(), per_second(&requests_busy, busy));
    println!("    while idle ({:.0} s):                  {}", idle.as_secs_f64(), per_second(&requests_idle, idle));
    Ok(())
}

fn diff(after: &BTreeMap<&'static str, u64>, before: &BTreeMap<&'static str, u64>) -> BTreeMap<&'static str, u64> {
    after.iter().map(|(verb, n)| (*verb, n - before.get(verb).copied().unwrap_or(0))).filter(|(_, n)| *n > 0).collect()
}

fn per_second(requests: &BTreeMap<&'static str, u64>, over: Duration) -> String {
    if requests.is_empty() {
        return "none".into();
    }
    let secs = over.as_secs_f64().max(0.001);
    requests.iter().map(|(verb, n)| format!("{verb} {:.1}/s", *n as f64 / secs)).collect::<Vec<_>>().join(", ")
}

/// Deletes the Jobs, the pools (their queues go with them: `deletionPolicy: Delete`) and the
/// namespaces.
async fn teardown(env: &Env, o: &Options) -> anyhow::Result<()> {
    let client = env.client.clone();
    for i in 0..o.namespaces {
        let namespace = namespace_of(env, i);
        let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
        let _ = jobs.delete_collection(&DeleteParams::default(), &Default::default()).await;
        let pools: Api<WorkerPool> = Api::namespaced(client.clone(), &namespace);
        for pool in pools.list(&Default::default()).await?.items {
            let _ = pools.delete(pool.metadata.name.as_deref().unwrap_or_default(), &DeleteParams::default()).await;
        }
    }
    // The operator runs the pools' finalizers (their queues are deleted).
    let all_pools: Api<WorkerPool> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(600);
    while all_pools
        .list(&Default::default())
        .await?
        .items
        .iter()
        .any(|p| p.metadata.namespace.as_deref().is_some_and(|n| n.starts_with(&env.namespace)))
    {
        anyhow::ensure!(Instant::now() < deadline, "the pools' finalizers did not finish in 10 min");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    for i in 0..o.namespaces {
        let _ = namespaces.delete(&namespace_of(env, i), &DeleteParams::default()).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let ms = |v: &[u64]| v.iter().map(|m| Duration::from_millis(*m)).collect::<Vec<_>>();
        let sorted = ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(percentile(&sorted, 50.0), Duration::from_millis(5));
        assert_eq!(percentile(&sorted, 99.0), Duration::from_millis(10));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }

    #[test]
    fn options_parse_and_refuse_what_makes_no_sense() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(Options::parse(&[]), Some(Options::default()));
        let o = Options::parse(&args(&["--namespaces", "2", "--pools", "4", "--jobs", "20", "--idle-seconds", "3"])).unwrap();
        assert_eq!((o.namespaces, o.pools, o.jobs, o.idle_seconds), (2, 4, 20, 3));
        assert_eq!(Options::parse(&args(&["--pools", "1", "--namespaces", "2"])), None, "fewer pools than namespaces");
        assert_eq!(Options::parse(&args(&["--jobs"])), None);
        assert_eq!(Options::parse(&args(&["--bogus", "1"])), None);
    }
}

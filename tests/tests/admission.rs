//! Flow control end to end (issue #15, points 1–3): fair shares between `fairnessKey`s, the
//! concurrency limits (`maxRunning`, `fairness.maxRunningPerKey`) and the global rate limit
//! (`rateLimit`), each observed as a user would: how many tasks ran at once and how many started
//! per second (from lines the handler records on the side channel, through the broker), which Job finished first, what
//! `status.waiting` said meanwhile, the pool's backlog per key (status and metric), the held time
//! and the Job duration metrics, and the API server's 422 for bad settings. The circuit
//! breaker (point 4) is in `circuit_breaker.rs`.

use std::time::{Duration, Instant};

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use warren_e2e::{Env, EnvOptions, OperatorOptions, free_port};
use warren_operator::crd::{Job, JobPhase, WorkerPool};

/// The side channel's channel of `start <ms>` and `end <ms>` lines.
const TIMING: &str = "timing";

/// A handler that records `start <ms>` and `end <ms>` around `sleep` seconds of work.
fn timed_handler(sleep: &str) -> serde_json::Value {
    let script = format!(
        "cat >/dev/null; \"$WARREN_E2E_PROBE\" record {TIMING} start $(($(date +%s%N)/1000000)); sleep {sleep}; \
         \"$WARREN_E2E_PROBE\" record {TIMING} end $(($(date +%s%N)/1000000))"
    );
    serde_json::json!(["sh", "-c", script])
}

/// (kind, ms) lines of the side channel.
async fn lines(env: &Env) -> anyhow::Result<Vec<(String, u64)>> {
    Ok(env
        .side()
        .lines(TIMING)
        .await?
        .iter()
        .filter_map(|l| {
            let (kind, at) = l.split_once(' ')?;
            Some((kind.to_string(), at.trim().parse().ok()?))
        })
        .collect())
}

/// The most tasks running at once, from their start and end lines (an end at the same
/// millisecond as a start counts first: the slot was free).
fn max_overlap(events: &[(String, u64)]) -> u32 {
    let mut points: Vec<(u64, i32)> = events.iter().map(|(kind, at)| (*at, if kind == "start" { 1 } else { -1 })).collect();
    points.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in points {
        now += delta;
        most = most.max(now);
    }
    most.max(0) as u32
}

fn finished(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|s| s.phase.is_finished())
}

/// Polls the Job until `seen` holds of its waiting reason; returns the message.
async fn wait_reason(env: &Env, name: &str, reason: &str, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        let job = env.jobs().get(name).await?;
        let waiting = job.status.and_then(|s| s.waiting);
        if let Some(w) = waiting.as_ref().filter(|w| w.reason == reason) {
            return Ok(w.message.clone());
        }
        if waiting.is_some() {
            last = waiting;
        }
        anyhow::ensure!(Instant::now() < deadline, "{name} never said it waits for {reason}; last said {last:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn max_overlap_counts_concurrent_intervals() {
    let ev = |v: &[(&str, u64)]| v.iter().map(|(k, t)| (k.to_string(), *t)).collect::<Vec<_>>();
    assert_eq!(max_overlap(&ev(&[("start", 0), ("end", 10), ("start", 10), ("end", 20)])), 1);
    assert_eq!(max_overlap(&ev(&[("start", 0), ("start", 5), ("start", 6), ("end", 7), ("end", 8), ("end", 9)])), 3);
    assert_eq!(max_overlap(&[]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_running_caps_how_many_tasks_of_a_job_run_at_once() -> anyhow::Result<()> {
    let env = Env::start("max-running").await?;
    let side = env.side().pod_env();
    // 16 slots, but the Job allows 3 at once.
    env.create_pool(
        "pool",
        serde_json::json!({"workers": {"handler": timed_handler("0.2"), "env": side}, "replicas": 2, "concurrency": 8}),
    )
    .await?;
    env.create_job("capped", serde_json::json!({"poolRef": "pool", "completions": 45, "maxRunning": 3})).await?;
    let message = wait_reason(&env, "capped", "ConcurrencyLimited", Duration::from_secs(60)).await?;
    assert!(message.contains("at most 3 run at once (spec.maxRunning)"), "{message}");
    let job = env.wait_job("capped", Duration::from_secs(180), finished).await?;
    let status = job.status.expect("status");
    assert_eq!((status.phase, status.succeeded, status.failed), (JobPhase::Succeeded, 45, 0), "{status:?}");
    let events = lines(&env).await?;
    let most = max_overlap(&events);
    println!("maxRunning 3: at most {most} tasks ran at once over {} starts", events.iter().filter(|(k, _)| k == "start").count());
    assert_eq!(events.iter().filter(|(k, _)| k == "start").count(), 45, "every task ran once");
    assert!((2..=3).contains(&most), "maxRunning 3, yet {most} tasks ran at once");
    env.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_running_per_key_counts_every_job_of_the_key() -> anyhow::Result<()> {
    let env = Env::start("per-key").await?;
    let side = env.side().pod_env();
    env.create_pool(
        "pool",
        serde_json::json!({"workers": {"handler": timed_handler("0.2"), "env": side}, "replicas": 1, "concurrency": 8,
                           "fairness": {"maxRunningPerKey": 2}}),
    )
    .await?;
    env.create_job("one", serde_json::json!({"poolRef": "pool", "completions": 15, "fairnessKey": "team"})).await?;
    env.create_job("two", serde_json::json!({"poolRef": "pool", "completions": 15, "fairnessKey": "team"})).await?;
    let message = wait_reason(&env, "two", "ConcurrencyLimited", Duration::from_secs(60)).await?;
    assert!(message.contains("fairnessKey \"team\"") && message.contains("fairness.maxRunningPerKey"), "{message}");
    for name in ["one", "two"] {
        let job = env.wait_job(name, Duration::from_secs(180), finished).await?;
        let status = job.status.expect("status");
        assert_eq!((status.phase, status.succeeded), (JobPhase::Succeeded, 15), "{name}: {status:?}");
    }
    let most = max_overlap(&lines(&env).await?);
    println!("maxRunningPerKey 2 over two Jobs of one key: at most {most} tasks ran at once");
    assert!((1..=2).contains(&most), "the key allows 2, yet {most} of its tasks ran at once");
    env.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairness_lets_a_small_job_finish_before_a_large_one_of_another_key() -> anyhow::Result<()> {
    let env = Env::start("fairness").await?;
    env.create_pool(
        "pool",
        serde_json::json!({"workers": {"handler": ["sh", "-c", "cat >/dev/null; sleep 0.05"]}, "replicas": 1, "concurrency": 4, "fairness": {}}),
    )
    .await?;
    env.create_job("big", serde_json::json!({"poolRef": "pool", "completions": 2000, "fairnessKey": "a"})).await?;
    env.wait_job("big", Duration::from_secs(60), |j| j.status.as_ref().is_some_and(|s| s.succeeded > 0)).await?;
    // Small, but running long enough (a few seconds) to be seen sharing the pool.
    env.create_job("small", serde_json::json!({"poolRef": "pool", "completions": 200, "fairnessKey": "b"})).await?;
    // While both have a backlog, the big one waits for its share.
    let message = wait_reason(&env, "big", "FairShare", Duration::from_secs(60)).await?;
    assert!(message.contains("fair share of WorkerPool \"pool\""), "{message}");
    let small = env.wait_job("small", Duration::from_secs(120), finished).await?;
    let small = small.status.expect("status");
    assert_eq!((small.phase, small.succeeded), (JobPhase::Succeeded, 200), "{small:?}");
    let big = env.jobs().get("big").await?.status.expect("status");
    println!("the small Job finished when the big one had {} of 2000 done", big.succeeded);
    // First-in first-out, the small Job would have waited for all 2000.
    assert!(big.succeeded < 1000, "the small Job waited for most of the big one: {} of 2000 done", big.succeeded);
    env.jobs().delete("big", &Default::default()).await?;
    env.cleanup().await?;
    Ok(())
}

/// The samples of `family` whose labels include `labels` (as written, e.g. `pool="pool"`):
/// (full series, value).
fn samples(exposition: &str, family: &str, labels: &str) -> Vec<(String, f64)> {
    exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(labels))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_per_key_is_in_the_pools_status_and_metrics_bounded_to_the_top_keys() -> anyhow::Result<()> {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let env = Env::start_custom(
        "backlog",
        EnvOptions {
            operator: OperatorOptions { metrics_addr: metrics_addr.clone(), ..OperatorOptions::default() },
            ..EnvOptions::default()
        },
    )
    .await?;
    // Two slots for 12 tenants: almost everything waits, in the operator (fair shares).
    env.create_pool(
        "pool",
        serde_json::json!({"workers": {"handler": ["sh", "-c", "cat >/dev/null; sleep 0.2"]}, "replicas": 1, "concurrency": 2, "fairness": {}}),
    )
    .await?;
    // A short Job first, for the duration histogram.
    env.create_job("quick", serde_json::json!({"poolRef": "pool", "completions": 2})).await?;
    env.wait_job("quick", Duration::from_secs(120), finished).await?;
    // Tenant i submits 40 + i tasks: keys t11 (51 tasks) … t00 (40) by size.
    for i in 0..12u32 {
        env.create_job(
            &format!("job-{i:02}"),
            serde_json::json!({"poolRef": "pool", "completions": 40 + i, "fairnessKey": format!("t{i:02}")}),
        )
        .await?;
    }
    // The pool's status: the 10 biggest keys by name and size, the other 2 summed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let backlog = loop {
        let pool = env.pools().get("pool").await?;
        let backlog = pool.status.and_then(|s| s.backlog);
        if let Some(b) = backlog.as_ref().filter(|b| b.keys.len() == 10 && b.other_keys == 2) {
            break b.clone();
        }
        anyhow::ensure!(Instant::now() < deadline, "the pool's status never listed 10 keys and 2 others: {backlog:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("status.backlog: {backlog:?}");
    let listed: u64 = backlog.keys.iter().map(|k| k.tasks).sum();
    assert_eq!(backlog.total_tasks, listed + backlog.other_tasks, "{backlog:?}");
    assert!(backlog.keys.windows(2).all(|w| w[0].tasks >= w[1].tasks), "biggest first: {backlog:?}");
    // 12 Jobs of 40–51 tasks, at most a few started by then.
    assert!(backlog.total_tasks > 400 && backlog.total_tasks <= (40..52).sum::<u64>(), "{backlog:?}");
    assert!(backlog.keys.iter().all(|k| k.key.starts_with('t')), "keys are the fairnessKeys: {backlog:?}");
    // The metric: 10 keys and `other`, no more.
    let (_, exposition) = warren_e2e::http_get(&metrics_addr, "/metrics").await?;
    let ns = format!("namespace=\"{}\",pool=\"pool\"", env.namespace);
    let series = samples(&exposition, "warren_operator_backlog_tasks", &ns);
    assert_eq!(series.len(), 11, "the top 10 keys and other: {series:?}");
    assert!(series.iter().any(|(s, v)| s.contains("key=\"other\"") && *v > 0.0), "{series:?}");
    // Held time: the tenants waited for their fair share (and for queue room).
    let held = samples(&exposition, "warren_operator_throttled_task_seconds_total", &ns);
    let fair: f64 = held.iter().filter(|(s, _)| s.contains("reason=\"FairShare\"")).map(|(_, v)| v).sum();
    assert!(fair > 0.0, "no task-second counted as held for FairShare: {held:?}");
    // The quick Job's run time, once.
    let durations = samples(&exposition, "warren_operator_job_duration_seconds_count", &ns);
    assert_eq!(durations, vec![(format!("warren_operator_job_duration_seconds_count{{{ns},phase=\"Succeeded\"}}"), 1.0)]);
    // Once the Jobs are gone, so is the backlog: from the status (within its 10 s write period)
    // and from the metric.
    for i in 0..12u32 {
        env.jobs().delete(&format!("job-{i:02}"), &Default::default()).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pool = env.pools().get("pool").await?;
        let (_, exposition) = warren_e2e::http_get(&metrics_addr, "/metrics").await?;
        let series = samples(&exposition, "warren_operator_backlog_tasks", &ns);
        let backlog = pool.status.and_then(|s| s.backlog);
        if backlog.is_none() && series.is_empty() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the backlog stayed after its Jobs were deleted: {backlog:?}, {series:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    env.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_ten_replicas() -> anyhow::Result<()> {
    let env = Env::start("rate-limit").await?;
    let side = env.side().pod_env();
    // Every even index fails its first attempt: its retry returns from the retry tier without
    // admission, and the limit must count it too (starts, not admissions, are limited).
    let handler = format!(
        "cat >/dev/null; \"$WARREN_E2E_PROBE\" record {TIMING} start $(($(date +%s%N)/1000000)); \
         case \"$WARREN_TASK_INDEX:$WARREN_ATTEMPT\" in *[02468]:1) exit 1;; esac"
    );
    env.create_pool(
        "pool",
        serde_json::json!({"workers": {"handler": ["sh", "-c", handler], "env": side}, "replicas": 10, "concurrency": 4,
                           "rateLimit": {"tasksPerSecond": 20, "burst": 5}}),
    )
    .await?;
    // Every replica ready first, so that the window measures the limit, not the start-up.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pool: WorkerPool = env.pools().get("pool").await?;
        if pool.status.as_ref().is_some_and(|s| s.ready_replicas == 10) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "10 replicas did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let retry = serde_json::json!({"maxAttempts": 3, "backoff": {"initialDelay": "100ms", "factor": 1, "maxDelay": "100ms"}});
    env.create_job("limited", serde_json::json!({"poolRef": "pool", "completions": 1000, "retry": retry})).await?;
    let message = wait_reason(&env, "limited", "RateLimited", Duration::from_secs(60)).await?;
    assert!(message.contains("at most 20 tasks per second (rateLimit)"), "{message}");
    let job = env.wait_job("limited", Duration::from_secs(300), finished).await?;
    let status = job.status.expect("status");
    assert_eq!((status.phase, status.succeeded, status.failed, status.retries), (JobPhase::Succeeded, 1000, 0, 500), "{status:?}");
    let mut starts: Vec<u64> = lines(&env).await?.into_iter().filter(|(k, _)| k == "start").map(|(_, at)| at).collect();
    starts.sort_unstable();
    assert_eq!(starts.len(), 1500, "every task started once, the even ones twice");
    // 60 s from 5 s after the first start (past the burst): 20/s × 60 s = 1200 starts, first
    // attempts and retries together, within ±5 %.
    let from = starts[0] + 5_000;
    let in_window = starts.iter().filter(|at| (from..from + 60_000).contains(*at)).count();
    println!("rateLimit 20/s over 10 replicas, a third of the starts retries: {in_window} starts in 60 s (target 1200 ± 60)");
    assert!((1140..=1260).contains(&in_window), "{in_window} starts in 60 s, not 1200 ± 5 %");
    env.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_adds_no_worker_that_could_only_wait_for_tokens() -> anyhow::Result<()> {
    let env = Env::start("rate-limit-scale").await?;
    // 5 tasks a second, each done at once: one worker of 4 slots has room to spare, and 400
    // held tasks are no reason for more.
    env.create_pool(
        "pool",
        serde_json::json!({"workers": {"handler": ["sh", "-c", "cat >/dev/null"]}, "concurrency": 4,
                           "autoscaling": {"minReplicas": 1, "maxReplicas": 10, "pollIntervalSeconds": 1},
                           "rateLimit": {"tasksPerSecond": 5}}),
    )
    .await?;
    // Its one worker consuming first (a warm-up task done): tasks queued before any worker runs
    // are a real backlog.
    env.create_job("warm-up", serde_json::json!({"poolRef": "pool", "completions": 1})).await?;
    env.wait_job("warm-up", Duration::from_secs(120), finished).await?;
    env.create_job("limited", serde_json::json!({"poolRef": "pool", "completions": 400})).await?;
    wait_reason(&env, "limited", "RateLimited", Duration::from_secs(60)).await?;
    // 20 s of polls (20 autoscaler decisions): the desired count and the backlog it saw.
    let (mut most, mut biggest_backlog, mut reasons) = (0, 0, std::collections::BTreeSet::new());
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let pool: WorkerPool = env.pools().get("pool").await?;
        let status = pool.status.unwrap_or_default();
        most = most.max(status.desired_replicas.unwrap_or(0));
        if let Some(a) = status.autoscaling {
            biggest_backlog = biggest_backlog.max(a.backlog);
            reasons.extend(a.last_scale_reason);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let job = env.jobs().get("limited").await?.status.expect("status");
    println!(
        "rateLimit 5/s, 400 tasks: at most {most} replicas desired, backlog at most {biggest_backlog}, {} done after 20 s",
        job.succeeded
    );
    assert!(job.succeeded < 300, "the rate limit held: {} done", job.succeeded);
    assert!(most <= 1, "the autoscaler wanted {most} replicas for tasks that only wait for tokens (its reasons: {reasons:?})");
    assert!(biggest_backlog < 50, "the autoscaler counted the tasks held for tokens as backlog: {biggest_backlog}");
    env.jobs().delete("limited", &Default::default()).await?;
    env.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flow_control_settings_are_refused_with_the_field_named() -> anyhow::Result<()> {
    let env = Env::start("flow-bad").await?;
    let create = |kind: &'static str, name: &str, spec: serde_json::Value| {
        let env = &env;
        let name = name.to_string();
        async move {
            let resource = if kind == "Job" { ApiResource::erase::<Job>(&()) } else { ApiResource::erase::<WorkerPool>(&()) };
            let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.namespace, &resource);
            let object: DynamicObject = serde_json::from_value(serde_json::json!({
                "apiVersion": "warren.dev/v1alpha1", "kind": kind,
                "metadata": {"name": name, "namespace": env.namespace}, "spec": spec,
            }))?;
            anyhow::Ok(api.create(&PostParams::default(), &object).await)
        }
    };
    let workers = serde_json::json!({"handler": ["true"]});
    let cases = [
        (
            "WorkerPool",
            "zero-rate",
            serde_json::json!({"workers": workers, "rateLimit": {"tasksPerSecond": 0}}),
            "spec.rateLimit.tasksPerSecond",
        ),
        (
            "WorkerPool",
            "negative-rate",
            serde_json::json!({"workers": workers, "rateLimit": {"tasksPerSecond": -1}}),
            "spec.rateLimit.tasksPerSecond",
        ),
        ("WorkerPool", "zero-weight", serde_json::json!({"workers": workers, "fairness": {"weights": {"a": 0}}}), "spec.fairness.weights"),
        ("Job", "zero-running", serde_json::json!({"poolRef": "p", "completions": 1, "maxRunning": 0}), "spec.maxRunning"),
        ("Job", "long-key", serde_json::json!({"poolRef": "p", "completions": 1, "fairnessKey": "k".repeat(65)}), "spec.fairnessKey"),
    ];
    for (kind, name, spec, field) in cases {
        match create(kind, name, spec).await? {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{name}: {}", status.message);
                assert!(status.message.contains(field), "{name}: the message does not name {field}: {}", status.message);
            }
            other => anyhow::bail!("{name}: expected a 422 naming {field}, got {other:?}"),
        }
    }
    // Weights of keys no Job has yet are fine.
    // (deletionPolicy Delete: its queues go with the test, as Env::create_pool's do.)
    create(
        "WorkerPool",
        "future-keys",
        serde_json::json!({"workers": workers, "fairness": {"weights": {"nobody-yet": 3}}, "deletionPolicy": "Delete"}),
    )
    .await?
    .map_err(|e| anyhow::anyhow!("a weight for a key no Job has was refused: {e}"))?;
    env.cleanup().await?;
    Ok(())
}

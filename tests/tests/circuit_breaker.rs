//! The circuit breaker (issue #15, point 4): a pool whose downstream is down stops starting
//! tasks instead of burning every task's attempts into the dead-letter queue, says so
//! (`CircuitOpen=True`, `warren_operator_circuit_state`, the Job's `status.waiting`), lets a
//! few probe tasks through every `openSeconds`, and closes once they succeed; the annotation
//! `warren.dev/circuit` forces it. Observed through the API, the metrics and the side channel
//! `attempts` the handler records on (one line per attempt); the test takes the downstream down
//! and up with the side-channel gate `downstream-down`.

use std::time::{Duration, Instant};

use warren_e2e::{Env, EnvOptions, OperatorOptions, free_port};
use warren_operator::crd::{JobPhase, WorkerPool};

/// The gate that, while open, has the handler fail as if its downstream were down.
const DOWNSTREAM_DOWN: &str = "downstream-down";

/// Attempt lines of the side channel: (ok, epoch ms).
async fn attempts(env: &Env) -> anyhow::Result<Vec<(bool, u64)>> {
    let lines = env.side().lines("attempts").await?;
    Ok(lines
        .iter()
        .filter_map(|line| {
            let (outcome, at) = line.split_once(' ')?;
            Some((outcome == "ok", at.trim().parse().ok()?))
        })
        .collect())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64
}

fn condition(pool: &WorkerPool, type_: &str) -> Option<(String, String, String)> {
    let c = pool.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_circuit(env: &Env, status: &str, reason: &str, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let pool = env.pools().get("pool").await?;
        let seen = condition(&pool, "CircuitOpen");
        if let Some((s, r, message)) = &seen
            && s == status
            && r == reason
        {
            return Ok(message.clone());
        }
        anyhow::ensure!(Instant::now() < deadline, "CircuitOpen did not become {status}/{reason}; last seen {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The handler: fails while the gate `downstream-down` is open, records every attempt (the
/// time it started, as the handler's host tells it).
fn pool_spec(env: &Env, extra: serde_json::Value) -> serde_json::Value {
    let handler = format!(
        "cat >/dev/null; t=$(($(date +%s%N)/1000000)); \
         if \"$WARREN_E2E_PROBE\" is-open {DOWNSTREAM_DOWN}; then \"$WARREN_E2E_PROBE\" record attempts fail $t; exit 1; fi; \
         \"$WARREN_E2E_PROBE\" record attempts ok $t"
    );
    let mut spec = serde_json::json!({
        "workers": {"handler": ["sh", "-c", handler], "env": env.side().pod_env()},
        "replicas": 2, "concurrency": 2,
        "retry": {"maxAttempts": 30, "backoff": {"initialDelay": "200ms", "factor": 1.0, "jitter": 0}},
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_starts_no_task_until_its_probes_succeed() -> anyhow::Result<()> {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let env = Env::start_custom(
        "circuit",
        EnvOptions {
            operator: OperatorOptions { metrics_addr: metrics_addr.clone(), ..OperatorOptions::default() },
            ..EnvOptions::default()
        },
    )
    .await?;
    env.side().open(DOWNSTREAM_DOWN).await?;
    let breaker = serde_json::json!({"circuitBreaker": {"failureRatio": 0.5, "minTasks": 6, "windowSeconds": 30, "openSeconds": 5, "halfOpenTasks": 2}});
    env.create_pool("pool", pool_spec(&env, breaker)).await?;
    wait_circuit(&env, "False", "Closed", Duration::from_secs(60)).await?;
    env.create_job("calls", serde_json::json!({"poolRef": "pool", "completions": 40})).await?;

    // The downstream fails every attempt: the circuit opens, and says why.
    let message = wait_circuit(&env, "True", "FailureRatioExceeded", Duration::from_secs(90)).await?;
    let opened_at = now_ms();
    assert!(message.contains("finished attempts failed") && message.contains("more than 50 %"), "{message}");
    let series = format!("warren_operator_circuit_state{{namespace=\"{}\",pool=\"pool\"}}", env.namespace);
    let open_metric = warren_e2e::wait_metric(&metrics_addr, &series, 1.0, Duration::from_secs(10)).await;
    assert!(open_metric.is_ok(), "{series} did not say open: {open_metric:?}");
    let waiting = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let job = env.jobs().get("calls").await?;
            let waiting = job.status.and_then(|s| s.waiting);
            if waiting.as_ref().is_some_and(|w| w.reason == "CircuitOpen") || Instant::now() >= deadline {
                break waiting;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let waiting = waiting.filter(|w| w.reason == "CircuitOpen");
    assert!(waiting.as_ref().is_some_and(|w| w.message.contains("circuit breaker of WorkerPool \"pool\" is open")), "{waiting:?}");

    // While the downstream stays down, only probes start: at most halfOpenTasks (2) per
    // openSeconds (5 s), instead of 4 slots' worth of attempts every retry delay (200 ms).
    let before_window = attempts(&env).await?.len();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let in_window: Vec<(bool, u64)> = attempts(&env).await?.into_iter().filter(|(_, at)| *at >= opened_at + 1_000).collect();
    println!("circuit open at +{} attempts; {} attempts in the 11 s after it opened (probes)", before_window, in_window.len());
    assert!(in_window.len() <= 2 * 4, "more than the probes started while the circuit was open: {} attempts", in_window.len());
    let job = env.jobs().get("calls").await?.status.unwrap_or_default();
    assert_eq!(job.dead_lettered, 0, "no task burnt its attempts into the dead-letter queue: {job:?}");

    // The downstream comes back: the next probes succeed and the circuit closes; every task runs.
    env.side().close(DOWNSTREAM_DOWN).await?;
    wait_circuit(&env, "False", "Closed", Duration::from_secs(60)).await?;
    let job = env.wait_job("calls", Duration::from_secs(120), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    let status = job.status.expect("status");
    assert_eq!((status.phase, status.succeeded, status.dead_lettered), (JobPhase::Succeeded, 40, 0), "{status:?}");
    // Events say it where `kubectl describe wp` shows them: a Warning when it opened, Normal when it closed.
    let has = |events: &[(String, String, String)], type_: &str, reason: &str| events.iter().any(|(t, _, r)| t == type_ && r == reason);
    env.wait_events("pool", Duration::from_secs(30), |events| {
        has(events, "Warning", "CircuitFailureRatioExceeded") && has(events, "Normal", "CircuitClosed")
    })
    .await?;
    env.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_restart_keeps_an_open_circuit_open() -> anyhow::Result<()> {
    if Env::is_real_cluster() {
        println!("skipped: restarting the operator needs the local control plane");
        return Ok(());
    }
    let mut env = Env::start("circuit-restart").await?;
    env.side().open(DOWNSTREAM_DOWN).await?;
    // Open for a long time: the restart falls inside it.
    let breaker = serde_json::json!({"circuitBreaker": {"failureRatio": 0.5, "minTasks": 6, "windowSeconds": 30, "openSeconds": 300}});
    env.create_pool("pool", pool_spec(&env, breaker)).await?;
    env.create_job("calls", serde_json::json!({"poolRef": "pool", "completions": 40})).await?;
    wait_circuit(&env, "True", "FailureRatioExceeded", Duration::from_secs(90)).await?;
    let before = condition(&env.pools().get("pool").await?, "CircuitOpen");
    // Let the workers hear it (the control broadcast, every second) and the running attempts end.
    tokio::time::sleep(Duration::from_secs(3)).await;

    env.kill_operator().await?;
    env.start_operator()?;
    let restarted_at = now_ms();
    // For 8 s after the restart the circuit stays open (never a Closed condition) and no task
    // starts: the new operator resumed the state from the pool's status.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let seen = condition(&env.pools().get("pool").await?, "CircuitOpen");
        anyhow::ensure!(
            seen.as_ref().is_some_and(|(status, reason, _)| status == "True" && reason == "FailureRatioExceeded"),
            "the circuit did not stay open across the restart: {seen:?} (before: {before:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after: Vec<(bool, u64)> = attempts(&env).await?.into_iter().filter(|(_, at)| *at >= restarted_at).collect();
    println!("after the restart: {} attempts in 8 s with the circuit open", after.len());
    assert!(after.is_empty(), "tasks started with the circuit open after the restart: {after:?}");
    let job = env.jobs().get("calls").await?.status.unwrap_or_default();
    assert_eq!(job.dead_lettered, 0, "{job:?}");
    env.jobs().delete("calls", &Default::default()).await?;
    env.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_annotation_forces_the_circuit_open_and_closed() -> anyhow::Result<()> {
    let env = Env::start("circuit-forced").await?;
    // A pool without a breaker can be held open too. Its downstream is up (the gate is closed;
    // closing it tells the cleanup of the gate the handlers ask about).
    env.side().close(DOWNSTREAM_DOWN).await?;
    env.create_pool("pool", pool_spec(&env, serde_json::json!({}))).await?;
    let annotate = |value: serde_json::Value| {
        let pools = env.pools();
        async move {
            let patch = serde_json::json!({"metadata": {"annotations": {"warren.dev/circuit": value}}});
            pools.patch("pool", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await
        }
    };
    annotate(serde_json::json!("open")).await?;
    wait_circuit(&env, "True", "Forced", Duration::from_secs(60)).await?;
    // Give the workers the broadcast (every second), then submit: nothing starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.create_job("held", serde_json::json!({"poolRef": "pool", "completions": 10})).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(attempts(&env).await?.len(), 0, "a task started while the circuit was forced open");
    let job = env.jobs().get("held").await?.status.unwrap_or_default();
    assert_eq!(job.waiting.as_ref().map(|w| w.reason.as_str()), Some("CircuitOpen"), "{job:?}");

    annotate(serde_json::json!("closed")).await?;
    let job = env.wait_job("held", Duration::from_secs(120), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    let status = job.status.expect("status");
    assert_eq!((status.phase, status.succeeded), (JobPhase::Succeeded, 10), "{status:?}");
    assert_eq!(attempts(&env).await?.len(), 10, "each task ran once");
    env.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_circuit_settings_are_refused_with_the_field_named() -> anyhow::Result<()> {
    let env = Env::start("circuit-bad").await?;
    for (name, breaker, field) in [
        ("zero-ratio", serde_json::json!({"failureRatio": 0}), "spec.circuitBreaker.failureRatio"),
        ("big-ratio", serde_json::json!({"failureRatio": 1.5}), "spec.circuitBreaker.failureRatio"),
        ("no-probes", serde_json::json!({"failureRatio": 0.5, "halfOpenTasks": 0}), "spec.circuitBreaker.halfOpenTasks"),
    ] {
        let pool: WorkerPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": name, "namespace": env.namespace},
            "spec": {"workers": {"handler": ["true"]}, "circuitBreaker": breaker},
        }))?;
        match env.pools().create(&Default::default(), &pool).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{name}: {}", status.message);
                assert!(status.message.contains(field), "{name}: {}", status.message);
            }
            other => anyhow::bail!("{name}: expected a 422 naming {field}, got {other:?}"),
        }
    }
    env.cleanup().await?;
    Ok(())
}

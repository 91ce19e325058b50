//! Leader election end to end: two operators against one control plane, a Lease decides which one
//! reconciles; killing the leader hands over to the other.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use warren_e2e::{Env, OperatorOptions, free_port, http_get, sample};
use warren_operator::crd::JobPhase;

const LEASE: &str = "warren-operator";
const LEASE_NAMESPACE: &str = "default";
const LEASE_DURATION_S: u64 = 6;

fn candidate(identity: &str, port: u16) -> OperatorOptions {
    let env = [
        ("WARREN_LEADER_ELECTION", "true".to_string()),
        ("WARREN_POD_NAME", identity.to_string()),
        ("WARREN_LEASE_NAME", LEASE.to_string()),
        ("WARREN_LEASE_NAMESPACE", LEASE_NAMESPACE.to_string()),
        ("WARREN_LEASE_DURATION_SECONDS", LEASE_DURATION_S.to_string()),
        ("WARREN_LEASE_RENEW_DEADLINE_SECONDS", "4".to_string()),
        ("WARREN_LEASE_RETRY_PERIOD_SECONDS", "1".to_string()),
    ];
    OperatorOptions {
        metrics_addr: format!("127.0.0.1:{port}"),
        env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        ..OperatorOptions::default()
    }
}

/// Stops an operator the test started beside the harness's, then removes the reports queue and
/// control exchange it may have declared again after `Env::cleanup` deleted them.
async fn stop_extra_operator(mut operator: tokio::process::Child, reports_queue: &str) -> anyhow::Result<()> {
    operator.start_kill()?;
    operator.wait().await?;
    warren_e2e::delete_queue(reports_queue).await?;
    warren_e2e::delete_exchange(&warren_protocol::names::control_exchange(reports_queue)).await
}

async fn holder(env: &Env) -> anyhow::Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), LEASE_NAMESPACE);
    Ok(leases.get_opt(LEASE).await?.and_then(|l| l.spec).and_then(|s| s.holder_identity))
}

async fn wait_holder(env: &Env, identity: &str, timeout: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if holder(env).await?.as_deref() == Some(identity) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            anyhow::bail!("{identity} did not get the Lease within {timeout:?}; holder: {:?}", holder(env).await?);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (`/readyz` body, `warren_operator_leader`, Job reconciles) of the operator at `port`.
async fn role(port: u16) -> anyhow::Result<(String, f64, f64)> {
    let addr = format!("127.0.0.1:{port}");
    let (code, ready) = http_get(&addr, "/readyz").await?;
    anyhow::ensure!(code == 200, "/readyz of {addr} answered {code}");
    let (code, metrics) = http_get(&addr, "/metrics").await?;
    anyhow::ensure!(code == 200, "/metrics of {addr} answered {code}");
    let leader = sample(&metrics, "warren_operator_leader").expect("warren_operator_leader is exposed");
    let reconciles = sample(&metrics, r#"warren_operator_reconcile_total{controller="job"}"#).unwrap_or(0.0);
    Ok((ready, leader, reconciles))
}

async fn wait_role(port: u16, wanted: &str) -> anyhow::Result<(String, f64, f64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match role(port).await {
            Ok(r) if r.0 == wanted => return Ok(r),
            Ok(_) | Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            other => anyhow::bail!("operator on port {port} is not {wanted}: {other:?}"),
        }
    }
}

async fn run_job(env: &Env, name: &str) -> anyhow::Result<()> {
    env.create_job(name, serde_json::json!({"poolRef": "pool", "completions": 20})).await?;
    let job = env.wait_job(name, Duration::from_secs(120), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    let status = job.status.expect("status");
    assert_eq!((status.phase, status.succeeded), (JobPhase::Succeeded, 20), "{status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_two_operators_reconciles_and_a_killed_leader_hands_over() -> anyhow::Result<()> {
    if Env::is_real_cluster() {
        eprintln!("*** SKIPPED on a real cluster: this test starts and kills operator processes.");
        return Ok(());
    }
    let port_a = free_port();
    let port_b = loop {
        let p = free_port();
        if p != port_a {
            break p;
        }
    };
    let mut env = Env::start_with("leader", candidate("op-a", port_a)).await?;
    wait_holder(&env, "op-a", Duration::from_secs(30)).await?;
    let b = env.spawn_operator(&candidate("op-b", port_b), "operator-b.log")?;
    let (_, leader_b, _) = wait_role(port_b, "standby").await?;
    assert_eq!(leader_b, 0.0);

    env.create_pool("pool", serde_json::json!({"workers": {"handler": ["sh", "-c", "cat >/dev/null"]}, "replicas": 1, "concurrency": 4}))
        .await?;
    env.wait_pool_ready("pool", Duration::from_secs(60)).await?;
    run_job(&env, "first").await?;

    let (ready_a, leader_a, reconciles_a) = role(port_a).await?;
    let (ready_b, leader_b, reconciles_b) = role(port_b).await?;
    assert_eq!((ready_a.as_str(), leader_a), ("leader", 1.0));
    assert_eq!((ready_b.as_str(), leader_b), ("standby", 0.0));
    assert!(reconciles_a >= 1.0, "the leader reconciled the Job ({reconciles_a} reconciles)");
    assert_eq!(reconciles_b, 0.0, "the standby reconciled nothing");
    assert_eq!(holder(&env).await?.as_deref(), Some("op-a"));

    // SIGKILL: no release, op-b must wait for the Lease to expire.
    let killed = Instant::now();
    env.kill_operator().await?;
    wait_holder(&env, "op-b", Duration::from_secs(LEASE_DURATION_S * 5)).await?;
    let handover = killed.elapsed();
    eprintln!("leader handover after SIGKILL: {:.2} s (lease duration {LEASE_DURATION_S} s, retry period 1 s)", handover.as_secs_f64());
    wait_role(port_b, "leader").await?;
    run_job(&env, "second").await?;
    let (_, leader_b, reconciles_b) = role(port_b).await?;
    assert_eq!(leader_b, 1.0);
    assert!(reconciles_b >= 1.0, "the new leader reconciles ({reconciles_b} reconciles)");
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), LEASE_NAMESPACE);
    let spec = leases.get(LEASE).await?.spec.expect("Lease spec");
    assert_eq!(spec.lease_transitions, Some(1), "one change of holder: op-a → op-b");
    assert_eq!(spec.lease_duration_seconds, Some(LEASE_DURATION_S as i32));

    // op-b is the only operator left: it runs the pool finalizer during cleanup.
    let reports_queue = env.reports_queue();
    env.cleanup().await?;
    stop_extra_operator(b, &reports_queue).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gracefully_stopped_leader_releases_the_lease() -> anyhow::Result<()> {
    if Env::is_real_cluster() {
        eprintln!("*** SKIPPED on a real cluster: this test starts and stops operator processes.");
        return Ok(());
    }
    let (port_a, port_b) = (free_port(), free_port());
    let env = Env::start_with("leader-release", candidate("op-a", port_a)).await?;
    wait_holder(&env, "op-a", Duration::from_secs(30)).await?;
    let b = env.spawn_operator(&candidate("op-b", port_b), "operator-b.log")?;
    wait_role(port_b, "standby").await?;
    let pid_a = env.operator_pid().expect("op-a runs");
    let stopped = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid_a as i32), nix::sys::signal::Signal::SIGTERM)?;
    wait_holder(&env, "op-b", Duration::from_secs(LEASE_DURATION_S * 5)).await?;
    eprintln!("leader handover after SIGTERM (Lease released): {:.2} s", stopped.elapsed().as_secs_f64());
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), LEASE_NAMESPACE);
    let spec = leases.get(LEASE).await?.spec.expect("Lease spec");
    assert_eq!(spec.lease_transitions, Some(1));
    assert_eq!(spec.lease_duration_seconds, Some(LEASE_DURATION_S as i32), "op-b rewrote its own duration");
    let log_a = std::fs::read_to_string(env.state_dir.join("operator.log"))?;
    assert!(log_a.contains("released the Lease"), "op-a released the Lease on SIGTERM:\n{log_a}");
    let reports_queue = env.reports_queue();
    env.cleanup().await?;
    stop_extra_operator(b, &reports_queue).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watching_one_namespace_leaves_the_others_alone() -> anyhow::Result<()> {
    if Env::is_real_cluster() {
        eprintln!("*** SKIPPED on a real cluster: this test restarts the operator process with other settings.");
        return Ok(());
    }
    let mut env = Env::start("watch-namespace").await?;
    env.kill_operator().await?;
    let mut options = OperatorOptions::default();
    options.env.push(("WARREN_WATCH_NAMESPACE".into(), env.namespace.clone()));
    let scoped = env.spawn_operator(&options, "operator-scoped.log")?;

    // Another namespace with a pool and a Job the operator must not touch.
    let other = format!("{}-other", env.namespace);
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": other}}))?;
    namespaces.create(&Default::default(), &ns).await?;
    let other_pools: Api<warren_operator::crd::WorkerPool> = Api::namespaced(env.client.clone(), &other);
    let other_jobs: Api<warren_operator::crd::Job> = Api::namespaced(env.client.clone(), &other);
    let handler = serde_json::json!({"workers": {"handler": ["sh", "-c", "cat >/dev/null"]}, "deletionPolicy": "Delete"});
    other_pools
        .create(&Default::default(), &serde_json::from_value(serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "WorkerPool", "metadata": {"name": "pool", "namespace": other}, "spec": handler,
        }))?)
        .await?;
    other_jobs
        .create(
            &Default::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "warren.dev/v1alpha1", "kind": "Job", "metadata": {"name": "ignored", "namespace": other},
                "spec": {"poolRef": "pool", "completions": 3},
            }))?,
        )
        .await?;

    env.create_pool("pool", serde_json::json!({"workers": {"handler": ["sh", "-c", "cat >/dev/null"]}, "replicas": 1})).await?;
    env.wait_pool_ready("pool", Duration::from_secs(60)).await?;
    run_job(&env, "watched").await?;

    let pool = other_pools.get("pool").await?;
    assert!(pool.status.is_none(), "the unwatched pool has no status: {:?}", pool.status);
    assert!(pool.metadata.finalizers.is_none(), "the unwatched pool got no finalizer");
    assert!(other_jobs.get("ignored").await?.status.is_none(), "the unwatched Job has no status");
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(env.client.clone(), &other);
    assert!(deployments.list(&Default::default()).await?.items.is_empty(), "no worker Deployment in the unwatched namespace");

    // The harness's cleanup finalizes the watched pool with the scoped operator still running.
    let reports_queue = env.reports_queue();
    env.cleanup().await?;
    stop_extra_operator(scoped, &reports_queue).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_the_lease_stops_and_exits() -> anyhow::Result<()> {
    if Env::is_real_cluster() {
        eprintln!("*** SKIPPED on a real cluster: this test starts operator processes.");
        return Ok(());
    }
    let port_a = free_port();
    let env = Env::start_with("leader-loss", candidate("op-a", port_a)).await?;
    wait_holder(&env, "op-a", Duration::from_secs(30)).await?;
    wait_role(port_a, "leader").await?;
    // Someone else takes the Lease (as an operator that judged it expired would).
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), LEASE_NAMESPACE);
    let mut lease = leases.get(LEASE).await?;
    let spec = lease.spec.as_mut().expect("Lease spec");
    spec.holder_identity = Some("intruder".into());
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now()));
    leases.replace(LEASE, &Default::default(), &lease).await?;

    let deadline = Instant::now() + Duration::from_secs(30);
    let log = env.state_dir.join("operator.log");
    loop {
        let text = std::fs::read_to_string(&log)?;
        if text.contains("stopped reconciling: leadership lost") {
            assert!(text.contains("intruder holds it now"), "{text}");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "op-a did not give up the Lease:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The process exits: nothing serves its endpoints any more.
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(&format!("127.0.0.1:{port_a}"), "/readyz").await.is_ok() {
        anyhow::ensure!(Instant::now() < deadline, "op-a still serves after losing the Lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(holder(&env).await?.as_deref(), Some("intruder"));
    env.cleanup().await
}

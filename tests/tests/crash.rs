//! Crash safety end to end: a worker SIGKILLed mid-task, a broker restart (on a private RabbitMQ
//! node, never the shared one), and the fault test — a 5,000-task Job while a worker is killed at
//! every tenth of its progress, its work queue is purged, the operator is killed and the broker
//! restarted once each, and a poison task kills its worker at every run; it prints the fault table.
//! Every task ends succeeded exactly once in the status; the handler records `start <index>` and
//! `done <index>` on the side channel `executions` (on the shared broker, so the private node's
//! restarts lose none), so duplicate executions (at-least-once) are visible and printed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use warren_e2e::{Env, EnvOptions, PrivateBroker, SideChannel};
use warren_operator::crd::{Job, JobPhase};

/// The side channel the handlers record their executions on.
const EXECUTIONS: &str = "executions";

fn finished(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|s| s.phase.is_finished())
}

/// The handler's shell command that records `<event> <index>` of the task it runs.
fn record(event: &str) -> String {
    format!("\"$WARREN_E2E_PROBE\" record {EXECUTIONS} {event} \"$WARREN_TASK_INDEX\"")
}

/// `(event, index)` lines of the side channel, in order.
async fn recorded(env: &Env) -> anyhow::Result<Vec<(String, u32)>> {
    Ok(env
        .side()
        .lines(EXECUTIONS)
        .await?
        .iter()
        .filter_map(|l| {
            let (what, index) = l.split_once(' ')?;
            Some((what.to_string(), index.trim().parse().ok()?))
        })
        .collect())
}

fn count(log: &[(String, u32)], what: &str) -> BTreeMap<u32, u32> {
    let mut counts = BTreeMap::new();
    for (w, i) in log {
        if w == what {
            *counts.entry(*i).or_default() += 1;
        }
    }
    counts
}

fn pool_spec(handler: &str, side: &SideChannel, replicas: u32, concurrency: u32) -> serde_json::Value {
    serde_json::json!({
        "workers": {
            "handler": ["sh", "-c", handler],
            "env": side.pod_env(),
        },
        "replicas": replicas,
        "concurrency": concurrency,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_has_its_tasks_redelivered_and_counted_once() -> anyhow::Result<()> {
    if warren_e2e::skip_on_real_cluster("this test SIGKILLs worker processes of this host") {
        return Ok(());
    }
    let env = Env::start_custom("sigkill", EnvOptions { crash_backoff: Some(Duration::from_millis(500)), ..EnvOptions::default() }).await?;
    let handler = format!("cat >/dev/null; {}; sleep 2; {}", record("start"), record("done"));
    env.create_pool("pool", pool_spec(&handler, env.side(), 1, 4)).await?;
    env.create_job("work", serde_json::json!({"poolRef": "pool", "completions": 12})).await?;

    // Wait for the worker to be in the middle of its first tasks (each sleeps 2 s), then kill it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&recorded(&env).await?, "start").is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "no task started within 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pids = env.worker_pids("pool").await?;
    assert_eq!(pids.len(), 1, "one worker process");
    let before = recorded(&env).await?;
    env.kill_worker(pids[0])?;
    let started = count(&before, "start");
    let done = count(&before, "done");
    let in_flight: Vec<u32> = started.keys().filter(|i| !done.contains_key(i)).copied().collect();
    assert!(!in_flight.is_empty(), "the worker was killed while running tasks");

    let job = env.wait_job("work", Duration::from_secs(180), finished).await?;
    let status = job.status.expect("status");
    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    assert_eq!((status.succeeded, status.failed, status.dead_lettered), (12, 0, 0));
    assert_eq!(status.succeeded_indexes, "0-11");
    assert_eq!(status.retries, 0, "a redelivery after a crash is not a failed attempt");

    let after = recorded(&env).await?;
    let started = count(&after, "start");
    let done = count(&after, "done");
    assert_eq!(done.keys().copied().collect::<Vec<_>>(), (0..12).collect::<Vec<_>>(), "every task completed");
    for index in &in_flight {
        assert!(started[index] >= 2, "task {index} was running when its worker died and ran again: {started:?}");
    }
    let pids_after = env.worker_pids("pool").await?;
    assert_eq!(pids_after.len(), 1);
    assert_ne!(pids_after[0], pids[0], "the runner restarted the killed worker");
    println!(
        "killed the worker with {} task(s) in flight ({in_flight:?}); executions {} for 12 tasks",
        in_flight.len(),
        started.values().sum::<u32>()
    );
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_and_workers_reconnect_after_a_broker_restart_and_lose_nothing() -> anyhow::Result<()> {
    if warren_e2e::skip_on_real_cluster("this test restarts a private RabbitMQ node of this host, which the cluster's pods cannot reach") {
        return Ok(());
    }
    let mut broker = PrivateBroker::start().await?;
    let env = Env::start_custom("brokerrestart", EnvOptions { amqp_url: Some(broker.url()), ..EnvOptions::default() }).await?;
    let handler = format!("cat >/dev/null; sleep 0.05; {}", record("done"));
    env.create_pool("pool", pool_spec(&handler, env.side(), 2, 4)).await?;
    env.create_job("work", serde_json::json!({"poolRef": "pool", "completions": 400})).await?;
    let before = env.wait_job("work", Duration::from_secs(120), |j| j.status.as_ref().is_some_and(|s| s.succeeded >= 40)).await?;
    let succeeded_at_restart = before.status.map_or(0, |s| s.succeeded);
    let workers = {
        let mut pids = env.worker_pids("pool").await?;
        pids.sort();
        pids
    };
    assert_eq!(workers.len(), 2);

    broker.restart().await?;

    let job = env.wait_job("work", Duration::from_secs(240), finished).await?;
    let status = job.status.expect("status");
    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    assert_eq!((status.succeeded, status.failed, status.dead_lettered), (400, 0, 0));
    assert_eq!(status.succeeded_indexes, "0-399");
    let executions = count(&recorded(&env).await?, "done");
    assert_eq!(executions.len(), 400, "every task ran");
    let mut pids = env.worker_pids("pool").await?;
    pids.sort();
    assert_eq!(pids, workers, "the same worker processes reconnected (none crashed)");
    println!(
        "broker restarted with {succeeded_at_restart}/400 tasks succeeded; {} duplicate executions",
        executions.values().sum::<u32>() - 400
    );
    env.cleanup().await?;
    drop(broker);
    Ok(())
}

/// The fault test (issue #4): see README "Fault test".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_test_5000_tasks_survive_worker_kills_and_a_broker_restart() -> anyhow::Result<()> {
    if warren_e2e::skip_on_real_cluster("this test kills worker and operator processes of this host and restarts a private RabbitMQ node") {
        return Ok(());
    }
    const TASKS: u32 = 5_000;
    let mut broker = PrivateBroker::start().await?;
    let mut env = Env::start_custom(
        "fault",
        EnvOptions { amqp_url: Some(broker.url()), crash_backoff: Some(Duration::from_millis(500)), ..EnvOptions::default() },
    )
    .await?;
    // The short sleep keeps the run long enough for every fault to land while tasks are running.
    // The one task of Job `poison` kills the worker running it, every time.
    let handler =
        format!("cat >/dev/null; if [ \"$WARREN_JOB_NAME\" = poison ]; then kill -9 $PPID; exit 1; fi; sleep 0.02; {}", record("done"));
    env.create_pool("pool", pool_spec(&handler, env.side(), 3, 8)).await?;
    let started = Instant::now();
    env.create_job("fault", serde_json::json!({"poolRef": "pool", "completions": TASKS})).await?;
    env.create_job("poison", serde_json::json!({"poolRef": "pool", "retry": {"maxAttempts": 2}})).await?;

    // Faults follow progress, not the clock (so a fast or a slow machine sees the same run): one
    // worker is SIGKILLed each time another KILL_STEP distinct tasks have executed, the work queue
    // is purged once 20 % have (the queued rest is lost, to be noticed and re-enqueued), the
    // operator is killed and restarted at 30 % and the broker restarted at 40 %. Progress is read
    // from the side channel, which is on the shared broker and so goes on across the restart.
    const KILL_STEP: u32 = TASKS / 10;
    let mut next_kill = KILL_STEP;
    let mut kills = 0u32;
    let mut purged: Option<(u32, u32)> = None;
    let mut restarted_at: Option<u32> = None;
    let mut operator_killed_at: Option<u32> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let job = env.jobs().get("fault").await?;
        if finished(&job) && finished(&env.jobs().get("poison").await?) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "not finished after 600 s: {:?}", job.status);
        let executed = count(&recorded(&env).await?, "done").len() as u32;
        if purged.is_none() && executed >= TASKS / 5 {
            let queue = warren_protocol::names::work_queue(&env.namespace, "pool", "normal");
            let connection = lapin::Connection::connect(&broker.url(), lapin::ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            let removed = channel.queue_purge(queue.as_str().into(), Default::default()).await?;
            connection.close(200, "done".into()).await?;
            purged = Some((executed, removed));
        }
        if restarted_at.is_none() && executed >= TASKS * 2 / 5 {
            broker.restart().await?;
            restarted_at = Some(executed);
        }
        if operator_killed_at.is_none() && executed >= TASKS * 3 / 10 {
            env.kill_operator().await?;
            env.start_operator()?;
            operator_killed_at = Some(executed);
        }
        if executed >= next_kill {
            let pids = env.worker_pids("pool").await?;
            if !pids.is_empty() {
                let victim = pids[rand::random_range(0..pids.len())];
                // The victim may have died meanwhile (a previous kill); then the next poll retries.
                if env.kill_worker(victim).is_ok() {
                    kills += 1;
                    next_kill += KILL_STEP;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let job = env.jobs().get("fault").await?;
    let status = job.status.expect("status");
    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    assert_eq!((status.succeeded, status.failed, status.dead_lettered), (TASKS, 0, 0));
    assert_eq!(status.succeeded_indexes, format!("0-{}", TASKS - 1));
    assert_eq!(status.completions.as_deref(), Some("5000/5000"));
    let executions = count(&recorded(&env).await?, "done");
    let lost: Vec<u32> = (0..TASKS).filter(|i| !executions.contains_key(i)).collect();
    assert!(lost.is_empty(), "tasks never executed: {lost:?}");
    assert!(kills >= 3, "workers were killed during the run ({kills})");
    assert!(restarted_at.is_some(), "the broker was restarted during the run");
    assert!(operator_killed_at.is_some(), "the operator was killed during the run");
    let (purged_at, purged_tasks) = purged.expect("the work queue was purged");
    let noticed = status.ledger.as_ref().and_then(|l| l.lost.clone());
    if purged_tasks > 0 {
        assert!(noticed.as_ref().is_some_and(|l| l.missing > 0), "the purge was noticed: {noticed:?}");
    }
    // The poison task: dead-lettered once its runs alone took their worker down too.
    let poison = env.jobs().get("poison").await?.status.expect("status");
    assert_eq!((poison.phase, poison.failed, poison.dead_lettered), (JobPhase::Failed, 1, 1), "{poison:?}");
    let total: u32 = executions.values().sum();
    println!("fault table (executions counted on a side channel):");
    println!("| tasks | worker SIGKILLs | operator kills | broker restarts | poison tasks | purges | lost | duplicate executions | time |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {TASKS} | {kills} by the test (+ the poison task's own) | 1 (at {}/{TASKS}) | 1 (at {}/{TASKS}) | 1 (dead-lettered worker-lost after 2 lost runs) | 1 (at {purged_at}/{TASKS}: {purged_tasks} queued tasks; {} noticed, {} re-enqueued) | {} | {} ({total} executions) | {:.1} s |",
        operator_killed_at.unwrap_or_default(),
        restarted_at.unwrap_or_default(),
        noticed.as_ref().map_or(0, |l| l.missing),
        noticed.as_ref().map_or(0, |l| l.requeued),
        lost.len(),
        total - TASKS,
        elapsed.as_secs_f64()
    );
    env.cleanup().await?;
    drop(broker);
    Ok(())
}

//! A broker node lost mid-Job, on a private three-node RabbitMQ cluster (issue #22): the operator
//! and the workers are given all three addresses; a 5,000-task Job runs on a pool of three
//! workers; once half its tasks have executed (the other half waits at a side-channel gate), the
//! node hosting the pool's work queue (the quorum leader, or the classic queue's home) is stopped,
//! and started again later. Every index must end succeeded exactly once in the status and every
//! task must have executed; duplicate executions (at-least-once) are counted on the side channel
//! (on the shared broker, not the private cluster) and printed with the node-loss rows of the
//! fault table.
//!
//! Quorum: the remaining two nodes elect a new leader and the Job goes on while the node is down.
//! Classic: the queue lives on the stopped node only, so the Job waits until it is back (its
//! persistent messages come back with it). The reports queue is a quorum queue in both cases
//! (`WARREN_REPORTS_QUEUE_TYPE=quorum`, the setting docs/broker.md recommends for a cluster).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use warren_e2e::{Env, EnvOptions, OperatorOptions, PrivateCluster, free_port};
use warren_operator::crd::{Job, JobPhase};

/// The side channel the handlers record their executions on.
const EXECUTIONS: &str = "executions";
/// The gate the second half of the indexes waits at: open once the node is down.
const SECOND_HALF: &str = "second-half";
const TASKS: u32 = 5_000;

/// One cluster at a time: three nodes, an operator and three workers already fill two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn finished(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|s| s.phase.is_finished())
}

/// Executions per index, from the side channel (`done <index>` lines).
async fn executions(env: &Env) -> anyhow::Result<BTreeMap<u32, u32>> {
    let mut counts = BTreeMap::new();
    for line in env.side().lines(EXECUTIONS).await? {
        if let Some(index) = line.strip_prefix("done ").and_then(|i| i.trim().parse().ok()) {
            *counts.entry(index).or_default() += 1;
        }
    }
    Ok(counts)
}

/// What one node-loss run measured, for the fault table.
struct NodeLoss {
    stopped_at: u32,
    down_for: Duration,
    executed_while_down: u32,
    duplicates: u32,
    elapsed: Duration,
}

async fn lose_the_work_queue_node(queue_type: &str) -> anyhow::Result<NodeLoss> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut cluster = PrivateCluster::start(3).await?;
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let env = Env::start_custom(
        &format!("cluster-{queue_type}"),
        EnvOptions {
            amqp_url: Some(cluster.urls()),
            crash_backoff: Some(Duration::from_millis(500)),
            operator: OperatorOptions {
                env: vec![("WARREN_REPORTS_QUEUE_TYPE".into(), "quorum".into())],
                metrics_addr: metrics_addr.clone(),
                ..OperatorOptions::default()
            },
        },
    )
    .await?;
    // The failure is printed before the environment is dropped (which prints the operator's log),
    // so that it is not lost below that log in CI's output.
    let result: anyhow::Result<NodeLoss> = async {
        // The second half of the indexes waits for a gate that opens once the node is down: at
        // well over a hundred tasks a second the pool would otherwise finish the Job while
        // `rabbitmqctl stop` is still stopping the node, and nothing would be left to wait for it.
        // A wait that times out (after the test's own 600 s) fails the attempt rather than run
        // past the gate.
        let handler = format!(
            "cat >/dev/null; if [ \"$WARREN_TASK_INDEX\" -ge {half} ]; then \"$WARREN_E2E_PROBE\" wait {SECOND_HALF} 600 || exit 1; fi; \
             sleep 0.01; \"$WARREN_E2E_PROBE\" record {EXECUTIONS} done \"$WARREN_TASK_INDEX\"",
            half = TASKS / 2
        );
        env.create_pool(
            "pool",
            serde_json::json!({
                "workers": {"handler": ["sh", "-c", handler], "env": env.side().pod_env()},
                "replicas": 3, "concurrency": 8, "queueType": queue_type,
            }),
        )
        .await?;
        let started = Instant::now();
        env.create_job("big", serde_json::json!({"poolRef": "pool", "completions": TASKS})).await?;

        // Halfway (by executions, not by the clock: once the first half ran and the workers
        // stand at the gate, with the second half still in the queue), stop the node that hosts
        // the work queue; then open the gate.
        let deadline = Instant::now() + Duration::from_secs(600);
        let work_queue = warren_protocol::names::work_queue(&env.namespace, "pool", "normal");
        let mut last = (0, Instant::now());
        loop {
            let done = executions(&env).await?.len() as u32;
            if done != last.0 {
                last = (done, Instant::now());
            } else if done >= TASKS / 4 && last.1.elapsed() >= Duration::from_secs(1) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the first half of the tasks did not execute in time ({done} did)");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let victim = cluster.queue_node(&work_queue)?;
        println!("stopping node {} ({}), which hosts {work_queue}", victim, cluster.node_names()[victim]);
        let stopped_at = executions(&env).await?.len() as u32;
        let down_since = Instant::now();
        cluster.stop(victim);
        env.side().open(SECOND_HALF).await?;
        // Quorum: the Job goes on without the node; wait for 500 more tasks (or the end), and 5 s at
        // least. Classic:
        // it cannot; keep the node down for 15 s and see what happened meanwhile.
        if queue_type == "quorum" {
            let down_deadline = Instant::now() + Duration::from_secs(180);
            while (executions(&env).await?.len() as u32) < (stopped_at + 500).min(TASKS) || down_since.elapsed() < Duration::from_secs(5) {
                anyhow::ensure!(Instant::now() < down_deadline, "the Job made no progress with one node of three down");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        } else {
            // The operator tells an unavailable queue from a lost one (no TasksLost): it says so in
            // `warren_operator_queues_unavailable` and waits.
            let series = format!("warren_operator_queues_unavailable{{namespace=\"{}\",pool=\"pool\"}}", env.namespace);
            if let Err(last) = warren_e2e::wait_metric(&metrics_addr, &series, 1.0, Duration::from_secs(60)).await {
                anyhow::bail!("{series} did not become 1 in 60 s while the queue's node was down (last read: {last:?})");
            }
            // … and the pool's Ready condition says why, and so does the Job's, which waits for it.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let pool = env.pools().get("pool").await?;
                let ready = pool.status.unwrap_or_default().conditions.into_iter().find(|c| c.type_ == "Ready");
                let job = env.jobs().get("big").await?;
                let job_ready = job.status.clone().unwrap_or_default().conditions.into_iter().find(|c| c.type_ == "Ready");
                if ready.as_ref().is_some_and(|c| c.status == "False" && c.reason == "QueueUnavailable")
                    && job_ready.as_ref().is_some_and(|c| c.reason == "PoolNotReady" && c.message.contains("QueueUnavailable"))
                {
                    break;
                }
                if Instant::now() >= deadline {
                    // What the operator's controllers were doing: reconciles and errors per controller.
                    let metrics = warren_e2e::http_get(&metrics_addr, "/metrics").await.map(|(_, m)| m).unwrap_or_default();
                    let counters: Vec<&str> = metrics
                        .lines()
                        .filter(|l| {
                            l.starts_with("warren_operator_reconciles_total")
                                || l.starts_with("warren_operator_reconcile_errors_total")
                                || l.starts_with("warren_operator_status_write")
                        })
                        .collect();
                    let progress = job.status.as_ref().map(|s| (s.succeeded, s.completions.clone()));
                    // The operator's own warnings (not the AMQP library's channel noise), newest last.
                    let warnings =
                        env.operator_log_lines_where(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && !l.contains("lapin"), 15);
                    anyhow::bail!(
                        "the pool's and the Job's Ready conditions did not say QueueUnavailable: {ready:?}, {job_ready:?}\n\
                         the Job's progress in its status: {progress:?}\n\
                         what the operator last said of the Job:\n{}\nits own last warnings:\n{warnings}\nits counters: {counters:?}",
                        env.operator_log_lines("name=\"big\"", 12)
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let executed_while_down = executions(&env).await?.len() as u32 - stopped_at;
        let down_for = down_since.elapsed();
        // What a user sees meanwhile (docs/broker.md quotes it).
        let describe = |conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
            conditions.iter().map(|c| format!("{}={} {} ({})", c.type_, c.status, c.reason, c.message)).collect::<Vec<_>>().join("; ")
        };
        let job_now = env.jobs().get("big").await?.status.unwrap_or_default();
        let pool_now = env.pools().get("pool").await?.status.unwrap_or_default();
        println!(
            "while node {victim} was down: Job {:?} {} — {}",
            job_now.phase,
            job_now.completions.as_deref().unwrap_or("-"),
            describe(&job_now.conditions)
        );
        println!("while node {victim} was down: WorkerPool — {}", describe(&pool_now.conditions));
        cluster.start_node(victim).await?;
        if queue_type == "classic" {
            let series = format!("warren_operator_queues_unavailable{{namespace=\"{}\",pool=\"pool\"}}", env.namespace);
            let cleared = warren_e2e::wait_metric(&metrics_addr, &series, 0.0, Duration::from_secs(60)).await;
            anyhow::ensure!(
                cleared.is_ok() || finished(&env.jobs().get("big").await?),
                "{series} stayed {cleared:?} after the node came back"
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let pool = env.pools().get("pool").await?;
                let ready = pool.status.unwrap_or_default().conditions.into_iter().find(|c| c.type_ == "Ready");
                if ready.as_ref().is_some_and(|c| c.status == "True") {
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "the pool did not become Ready again: {ready:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }

        let job = env.wait_job("big", deadline.saturating_duration_since(Instant::now()), finished).await?;
        let elapsed = started.elapsed();
        let status = job.status.expect("status");
        assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
        assert_eq!((status.succeeded, status.failed, status.dead_lettered), (TASKS, 0, 0), "{status:?}");
        assert_eq!(status.succeeded_indexes, format!("0-{}", TASKS - 1));
        let counts = executions(&env).await?;
        let lost: Vec<u32> = (0..TASKS).filter(|i| !counts.contains_key(i)).collect();
        assert!(lost.is_empty(), "tasks never executed: {lost:?}");
        let total: u32 = counts.values().sum();
        Ok(NodeLoss { stopped_at, down_for, executed_while_down, duplicates: total - TASKS, elapsed })
    }
    .await;
    if let Err(error) = &result {
        eprintln!("*** the node-loss test ({queue_type}) failed: {error:#}");
    }
    let run = result?;
    env.cleanup().await?;
    drop(cluster);
    Ok(run)
}

fn print_rows(queue_type: &str, run: &NodeLoss) {
    println!("fault table, node-loss rows (executions counted on a side channel):");
    println!("| fault | tasks | node stopped at | down for | executed while down | lost | duplicate executions | time |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| broker node loss ({queue_type}), 3-node cluster | {TASKS} | {}/{TASKS} | {:.1} s | {} | 0 | {} | {:.1} s |",
        run.stopped_at,
        run.down_for.as_secs_f64(),
        run.executed_while_down,
        run.duplicates,
        run.elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_pool_survives_the_loss_of_its_leader_node_with_nothing_lost() -> anyhow::Result<()> {
    if !warren_e2e::can_run_private_brokers("the cluster test") {
        return Ok(());
    }
    let run = lose_the_work_queue_node("quorum").await?;
    let remaining = TASKS - run.stopped_at;
    assert!(run.executed_while_down >= remaining.min(500), "the Job went on while the node was down: {}", run.executed_while_down);
    print_rows("quorum", &run);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_pool_waits_for_its_queue_node_and_then_finishes_with_nothing_lost() -> anyhow::Result<()> {
    if !warren_e2e::can_run_private_brokers("the cluster test") {
        return Ok(());
    }
    let run = lose_the_work_queue_node("classic").await?;
    print_rows("classic", &run);
    Ok(())
}

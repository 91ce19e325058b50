//! Autoscaling end to end: a burst into a pool at zero scales it up, the backlog drains, the pool
//! goes back to zero, every task ran exactly once and no task was interrupted by the scale-down
//! (the operator's count, and the workers' own accounts on the side channel).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use warren_e2e::Env;
use warren_operator::crd::{JobPhase, WorkerPool};

/// The SDK worker of `warren-bench`, every task taking 50 ms.
fn worker_command() -> serde_json::Value {
    serde_json::json!([warren_e2e::pod_bin("warren-bench"), "worker", "--sleep-ms", "50"])
}

/// The side channel's channel of the SDK workers' accounts (as `warren-bench worker` names it).
const WORKER_ACCOUNTS: &str = "worker-accounts";

fn desired(pool: &WorkerPool) -> i32 {
    pool.status.as_ref().and_then(|s| s.desired_replicas).unwrap_or(-1)
}

fn replicas(pool: &WorkerPool) -> i32 {
    pool.status.as_ref().map_or(-1, |s| s.replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_scales_a_pool_from_zero_up_and_back_to_zero_without_interrupting_a_task() -> anyhow::Result<()> {
    let env = Env::start("autoscaling").await?;
    env.create_pool(
        "burst",
        serde_json::json!({
            "workers": {"command": worker_command(), "terminationGracePeriodSeconds": 30, "env": env.side().pod_env()},
            "concurrency": 4,
            "autoscaling": {
                "minReplicas": 0, "maxReplicas": 6, "pollIntervalSeconds": 1,
                "scaleDown": {"stabilizationSeconds": 3}, "scaleToZeroSeconds": 3
            }
        }),
    )
    .await?;
    env.wait_pool_ready("burst", Duration::from_secs(60)).await?;
    // At zero before the burst: the autoscaler owns replicas (spec.replicas defaults to 1).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pool = env.pools().get("burst").await?;
        if desired(&pool) == 0 && replicas(&pool) == 0 && pool.status.as_ref().is_some_and(|s| s.autoscaling.is_some()) {
            let active = pool.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "ScalingActive").cloned();
            let active = active.expect("ScalingActive condition");
            assert_eq!((active.status.as_str(), active.reason.as_str()), ("True", "BelowActivation"), "{active:?}");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "pool not at zero: {:?}", pool.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let burst = Instant::now();
    env.create_job("burst", serde_json::json!({"poolRef": "burst", "completions": 2000})).await?;
    let mut reaction = None;
    let mut max_desired = 0;
    let mut max_replicas = 0;
    let mut max_backlog = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    let job = loop {
        let pool = env.pools().get("burst").await?;
        if reaction.is_none() && desired(&pool) > 0 {
            reaction = Some(burst.elapsed());
        }
        max_desired = max_desired.max(desired(&pool));
        max_replicas = max_replicas.max(replicas(&pool));
        max_backlog = max_backlog.max(pool.status.as_ref().and_then(|s| s.autoscaling.as_ref()).map_or(0, |a| a.backlog));
        let job = env.jobs().get("burst").await?;
        if job.status.as_ref().is_some_and(|s| s.phase.is_finished()) {
            break job;
        }
        anyhow::ensure!(Instant::now() < deadline, "the burst did not finish: {:?}", job.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let drained = burst.elapsed();
    let status = job.status.expect("status");
    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    assert_eq!((status.succeeded, status.failed, status.retries, status.dead_lettered), (2000, 0, 0, 0));
    assert_eq!(status.succeeded_indexes, "0-1999");

    // Back to zero, every worker process gone.
    let deadline = Instant::now() + Duration::from_secs(120);
    let pool = loop {
        let pool = env.pools().get("burst").await?;
        if desired(&pool) == 0 && replicas(&pool) == 0 {
            break pool;
        }
        anyhow::ensure!(Instant::now() < deadline, "the pool did not scale back to zero: {:?}", pool.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let back_to_zero = burst.elapsed();
    println!(
        "autoscaling e2e: reaction (Job created -> first scale-up decision) {:.2} s; drained in {:.1} s; \
         back at zero {:.1} s after the burst; peak desired {max_desired}, peak replicas {max_replicas}, peak backlog seen {max_backlog}",
        reaction.expect("scaled up").as_secs_f64(),
        drained.as_secs_f64(),
        back_to_zero.as_secs_f64(),
    );
    assert_eq!(max_desired, 6, "a 2,000-task burst scales to maxReplicas");
    assert!(max_replicas > 1, "more than one worker ran: {max_replicas}");

    // The operator's record of the workers' heartbeats: nothing interrupted, every task once.
    let scaling = pool.status.as_ref().and_then(|s| s.autoscaling.clone()).expect("autoscaling status");
    assert_eq!(scaling.interrupted_total, 0, "{scaling:?}");
    assert_eq!(scaling.completed_total, 2000, "{scaling:?}");
    assert_eq!((scaling.backlog, scaling.in_flight), (0, 0));
    assert_eq!(scaling.last_scale_reason.as_deref(), Some("Idle"), "{scaling:?}");

    // The workers' own accounts, recorded on the side channel as each stops: what it finished
    // and interrupted. A pod counts as gone from the Deployment's replicas as soon as it is
    // terminating, so the last ones may still be draining (up to their 30 s grace period): wait
    // until every pod that ran has stopped.
    let deadline = Instant::now() + Duration::from_secs(40);
    let accounts = loop {
        let mut accounts = BTreeMap::new();
        for line in env.side().lines(WORKER_ACCOUNTS).await? {
            let pod = line.split_whitespace().next().unwrap_or_default().to_string();
            let field = |key: &str| -> u64 {
                line.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse().ok()).expect("count")
            };
            accounts.insert(pod, (field("completed="), field("interrupted=")));
        }
        let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.namespace);
        let running = pods.list(&ListParams::default().labels("warren.dev/pool=burst")).await?.items.len();
        // A pod leaves the API once its worker has exited, after recording its account.
        if running == 0 {
            break accounts;
        }
        assert!(
            Instant::now() < deadline,
            "workers that did not stop gracefully within their grace period: {running} pods left, accounts of {accounts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(accounts.len() > 1, "more than one worker process ran: {accounts:?}");
    let completed: u64 = accounts.values().map(|(c, _)| c).sum();
    let interrupted: u64 = accounts.values().map(|(_, i)| i).sum();
    assert_eq!((completed, interrupted), (2000, 0), "per worker: {accounts:?}");

    // One Event per scale, on the pool: the scale-up that activated it and a scale-down when
    // idle (fails with the Events seen).
    env.wait_events("burst", Duration::from_secs(30), |events| {
        events.iter().any(|(_, a, r)| a == "ScaleUp" && r == "Activated") && events.iter().any(|(_, a, r)| a == "ScaleDown" && r == "Idle")
    })
    .await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pause_annotation_freezes_the_replica_count() -> anyhow::Result<()> {
    let env = Env::start("autoscaling-pause").await?;
    env.create_pool(
        "paused",
        serde_json::json!({
            "workers": {"command": worker_command()},
            "autoscaling": {"maxReplicas": 3, "pollIntervalSeconds": 1}
        }),
    )
    .await?;
    env.wait_pool_ready("paused", Duration::from_secs(60)).await?;
    let patch = serde_json::json!({"metadata": {"annotations": {"warren.dev/autoscaling-paused": "true"}}});
    env.pools().patch("paused", &Default::default(), &kube::api::Patch::Merge(&patch)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pool = env.pools().get("paused").await?;
        let active = pool.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "ScalingActive").cloned());
        if active.as_ref().is_some_and(|c| c.status == "False" && c.reason == "Paused") {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the pool does not report the pause: {:?}", pool.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Tasks arrive; a paused pool at zero stays at zero.
    env.create_job("waits", serde_json::json!({"poolRef": "paused", "completions": 20})).await?;
    env.wait_job("waits", Duration::from_secs(60), |j| j.status.as_ref().is_some_and(|s| s.enqueued == 20)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pool = env.pools().get("paused").await?;
    assert_eq!((desired(&pool), replicas(&pool)), (0, 0), "{:?}", pool.status);
    assert_eq!(pool.status.as_ref().and_then(|s| s.autoscaling.as_ref()).map(|a| a.backlog), Some(20));
    // Unpaused, the pool scales up and runs them.
    let patch = serde_json::json!({"metadata": {"annotations": {"warren.dev/autoscaling-paused": null}}});
    env.pools().patch("paused", &Default::default(), &kube::api::Patch::Merge(&patch)).await?;
    let job = env.wait_job("waits", Duration::from_secs(120), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    assert_eq!(job.status.map(|s| (s.phase, s.succeeded)), Some((JobPhase::Succeeded, 20)));
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_removes_the_idle_worker_and_keeps_the_busy_one() -> anyhow::Result<()> {
    let env = Env::start("autoscaling-cost").await?;
    // Task 0 takes 1 s, task 1 takes 15 s; one task per worker at a time.
    env.create_pool(
        "costs",
        serde_json::json!({
            "workers": {"handler": ["sh", "-c", "sleep $(cat)"]},
            "concurrency": 1,
            "autoscaling": {"maxReplicas": 2, "pollIntervalSeconds": 1, "scaleDown": {"stabilizationSeconds": 2}, "scaleToZeroSeconds": 2}
        }),
    )
    .await?;
    env.wait_pool_ready("costs", Duration::from_secs(60)).await?;
    env.create_job("mixed", serde_json::json!({"poolRef": "costs", "items": [1, 15]})).await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.namespace);
    let selector = ListParams::default().labels("warren.dev/pool=costs");
    let mut saw_two = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    let survivor = loop {
        let live: Vec<Pod> = pods.list(&selector).await?.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        saw_two |= live.len() == 2;
        let pool = env.pools().get("costs").await?;
        if saw_two && live.len() == 1 && desired(&pool) == 1 {
            break live.into_iter().next().expect("one pod");
        }
        anyhow::ensure!(Instant::now() < deadline, "no scale-down from 2 to 1: {:?} / {} live pods", pool.status, live.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The 15 s task is still running on the pod that was kept: it was marked costliest.
    let job = env.jobs().get("mixed").await?;
    assert_eq!(job.status.as_ref().map(|s| (s.succeeded, s.running)), Some((1, 1)), "{:?}", job.status);
    let cost = survivor.metadata.annotations.as_ref().and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost").cloned());
    assert_eq!(cost.as_deref(), Some("1100"), "the kept pod is the busy one (1 task in flight)");

    let job = env.wait_job("mixed", Duration::from_secs(60), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    let status = job.status.expect("status");
    assert_eq!((status.phase, status.succeeded, status.retries), (JobPhase::Succeeded, 2, 0), "{status:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pool = env.pools().get("costs").await?;
        if desired(&pool) == 0 && replicas(&pool) == 0 {
            let scaling = pool.status.and_then(|s| s.autoscaling).expect("autoscaling status");
            assert_eq!((scaling.completed_total, scaling.interrupted_total), (2, 0), "{scaling:?}");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "not back at zero: {:?}", pool.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autoscaling_spec_with_min_above_max_is_refused_with_the_rule() -> anyhow::Result<()> {
    let env = Env::start("autoscaling-cel").await?;
    let refused = env
        .create_pool("bad", serde_json::json!({"workers": {}, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}}))
        .await
        .expect_err("min > max must be refused");
    assert!(refused.to_string().contains("minReplicas must be <= maxReplicas"), "{refused:#}");
    let refused = env
        .create_pool("bad", serde_json::json!({"workers": {}, "autoscaling": {"maxReplicas": 0}}))
        .await
        .expect_err("maxReplicas 0 must be refused");
    assert!(refused.to_string().contains("maxReplicas"), "{refused:#}");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_queue_deleted_behind_the_operators_back_is_declared_again() -> anyhow::Result<()> {
    let env = Env::start("autoscaling-redeclare").await?;
    env.create_pool("gone", serde_json::json!({"workers": {}, "autoscaling": {"pollIntervalSeconds": 1}})).await?;
    env.wait_pool_ready("gone", Duration::from_secs(60)).await?;
    let queue = warren_protocol::names::work_queue(&env.namespace, "gone", "normal");
    env.queue_depth(&queue).await?;
    warren_e2e::delete_queue(&queue).await?;
    // The next poll's passive declare fails, the one after declares the topology again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.queue_depth(&queue).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "{queue} was not declared again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pool = env.wait_pool_ready("gone", Duration::from_secs(30)).await?;
    assert!(pool.status.is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "ScalingActive")));
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_waiting_in_a_delay_queue_keep_a_worker_even_below_the_activation_threshold() -> anyhow::Result<()> {
    let env = Env::start("retries-due").await?;
    // Task 0 fails its first attempt; its retry waits 25 s in a retry tier (longer than the 15 s
    // rate window, so no recent arrival keeps a worker). One task is below the activation
    // threshold of 5: without counting the delayed retry, the pool would go to zero after the
    // other tasks and never start again for it.
    let handler = serde_json::json!(["sh", "-c", "cat >/dev/null; case \"$WARREN_TASK_INDEX:$WARREN_ATTEMPT\" in 0:1) exit 1;; esac"]);
    env.create_pool(
        "pool",
        serde_json::json!({
            "workers": {"handler": handler},
            "concurrency": 2,
            "retry": {"maxAttempts": 2, "backoff": {"initialDelay": "25s", "jitter": 0}},
            "autoscaling": {
                "minReplicas": 0, "maxReplicas": 2, "activationBacklog": 5, "pollIntervalSeconds": 1,
                "scaleDown": {"stabilizationSeconds": 0}, "scaleToZeroSeconds": 1
            }
        }),
    )
    .await?;
    env.create_job("retried", serde_json::json!({"poolRef": "pool", "completions": 6})).await?;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut held_for_retries = false;
    let job = loop {
        let pool = env.pools().get("pool").await?;
        let scaling = pool.status.as_ref().and_then(|s| s.autoscaling.as_ref());
        held_for_retries |= scaling.and_then(|a| a.message.as_deref()).is_some_and(|m| m.contains("retries wait out their delay"));
        let job = env.jobs().get("retried").await?;
        if job.status.as_ref().is_some_and(|s| s.phase.is_finished()) {
            break job;
        }
        anyhow::ensure!(Instant::now() < deadline, "the Job did not finish: {:?}; pool {:?}", job.status, pool.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let status = job.status.expect("status");
    assert_eq!((status.phase, status.succeeded, status.retries), (JobPhase::Succeeded, 6, 1), "{status:?}");
    assert!(held_for_retries, "the autoscaler said it kept a worker for the waiting retry");
    env.cleanup().await
}

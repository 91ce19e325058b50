//! Schedules (issue #16.2) end to end: a slot fires exactly once across a leader handover,
//! `Forbid` skips while a run is active, `Replace` cancels it, and the slots missed while no
//! operator ran are caught up per policy. Everything is observed through the API (runs, their
//! slot annotation, the Schedule's status and Events) and the operator's metrics.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use warren_e2e::{Env, OperatorOptions, free_port, http_get, sample};
use warren_operator::controllers::schedule::plan::{SCHEDULE_LABEL, SCHEDULED_TIME_ANNOTATION};
use warren_operator::crd::{Job, JobPhase, Schedule};

const PATIENCE: Duration = Duration::from_secs(90);

fn schedules(env: &Env) -> Api<Schedule> {
    Api::namespaced(env.client.clone(), &env.namespace)
}

async fn create_schedule(env: &Env, name: &str, spec: serde_json::Value) -> anyhow::Result<Schedule> {
    let schedule: Schedule = serde_json::from_value(serde_json::json!({
        "apiVersion": "warren.dev/v1alpha1", "kind": "Schedule",
        "metadata": {"name": name, "namespace": env.namespace}, "spec": spec,
    }))?;
    Ok(schedules(env).create(&PostParams::default(), &schedule).await?)
}

/// Stops a Schedule firing (the end of a test, before its runs are counted for good).
async fn suspend(env: &Env, name: &str) -> anyhow::Result<()> {
    let patch = serde_json::json!({"spec": {"suspend": true}});
    schedules(env).patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// The Schedule's runs (Jobs), oldest slot first, with their slot.
async fn runs(env: &Env, schedule: &str) -> anyhow::Result<Vec<(Timestamp, Job)>> {
    let jobs = env.jobs().list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={schedule}"))).await?.items;
    let mut runs = Vec::new();
    for job in jobs {
        let slot = job.metadata.annotations.as_ref().and_then(|a| a.get(SCHEDULED_TIME_ANNOTATION)).cloned().unwrap_or_default();
        let slot: Timestamp =
            slot.parse().map_err(|e| anyhow::anyhow!("run {:?} has no readable slot {slot:?}: {e}", job.metadata.name))?;
        assert_eq!(
            job.metadata.name.as_deref(),
            Some(format!("{schedule}-{}", slot.as_second()).as_str()),
            "a run is named after its slot"
        );
        runs.push((slot, job));
    }
    runs.sort_by_key(|(slot, _)| *slot);
    Ok(runs)
}

async fn wait_runs(
    env: &Env,
    schedule: &str,
    timeout: Duration,
    done: impl Fn(&[(Timestamp, Job)]) -> bool,
) -> anyhow::Result<Vec<(Timestamp, Job)>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = runs(env, schedule).await?;
        if done(&seen) {
            return Ok(seen);
        }
        if tokio::time::Instant::now() >= deadline {
            let names: Vec<_> = seen.iter().map(|(_, j)| j.metadata.name.clone().unwrap_or_default()).collect();
            anyhow::bail!("timed out after {timeout:?} waiting for the runs of {schedule}; seen {names:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_schedule(env: &Env, name: &str, pred: impl Fn(&Schedule) -> bool) -> anyhow::Result<Schedule> {
    let cond = await_condition(schedules(env), name, move |s: Option<&Schedule>| s.is_some_and(&pred));
    match tokio::time::timeout(PATIENCE, cond).await {
        Ok(Ok(Some(s))) => Ok(s),
        Ok(Ok(None)) => anyhow::bail!("Schedule {name} disappeared"),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => anyhow::bail!("timed out waiting for Schedule {name}: {:?}", schedules(env).get(name).await?.status),
    }
}

fn last_schedule_time(s: &Schedule) -> Option<Timestamp> {
    s.status.as_ref().and_then(|st| st.last_schedule_time.as_ref()).map(|t| t.0)
}

/// Sleeps until `slot` (plus `after`), by the wall clock.
async fn sleep_until(slot: Timestamp, after: Duration) {
    let wait = Timestamp::now().duration_until(slot).max(SignedDuration::ZERO).unsigned_abs() + after;
    tokio::time::sleep(wait).await;
}

fn job_template() -> serde_json::Value {
    serde_json::json!({"spec": {"poolRef": "pool", "payload": {"from": "schedule"}}})
}

async fn metric(port: u16, series: &str) -> anyhow::Result<f64> {
    let (code, body) = http_get(&format!("127.0.0.1:{port}"), "/metrics").await?;
    anyhow::ensure!(code == 200, "/metrics answered {code}");
    Ok(sample(&body, series).unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_refused_or_reported_by_name() -> anyhow::Result<()> {
    let env = Env::start("sched-bad").await?;
    // The shape is checked by the schema: a 422.
    let refused = create_schedule(&env, "four-fields", serde_json::json!({"schedule": "* * * *", "jobTemplate": job_template()})).await;
    let message = format!("{:?}", refused.expect_err("four cron fields are refused"));
    assert!(message.contains("five cron fields"), "{message}");
    let both = serde_json::json!({
        "schedule": "@hourly", "jobTemplate": job_template(),
        "workflowTemplate": {"spec": {"steps": [{"name": "a", "job": {"poolRef": "pool"}}]}},
    });
    let message = format!("{:?}", create_schedule(&env, "both", both).await.expect_err("two templates are refused"));
    assert!(message.contains("exactly one of jobTemplate or workflowTemplate"), "{message}");
    // What needs a cron parser or the time zone database: Ready=False naming the problem.
    for (name, spec, reason, needle) in [
        ("minute-61", serde_json::json!({"schedule": "61 * * * *"}), "InvalidSchedule", "61 * * * *"),
        ("too-fast", serde_json::json!({"schedule": "@every 500ms"}), "InvalidSchedule", "at least 1s"),
        ("nowhere", serde_json::json!({"schedule": "0 3 * * *", "timeZone": "Mars/Olympus_Mons"}), "UnknownTimeZone", "Mars/Olympus_Mons"),
    ] {
        let mut spec = spec;
        spec["jobTemplate"] = job_template();
        create_schedule(&env, name, spec).await?;
        let s = wait_schedule(&env, name, |s| s.status.as_ref().is_some_and(|st| !st.conditions.is_empty())).await?;
        let ready = &s.status.expect("status").conditions[0];
        assert_eq!((ready.type_.as_str(), ready.status.as_str(), ready.reason.as_str()), ("Ready", "False", reason), "{name}");
        assert!(ready.message.contains(needle), "{name}: {}", ready.message);
    }
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_skips_while_a_run_is_active_and_replace_cancels_it() -> anyhow::Result<()> {
    let port = free_port();
    let env = Env::start_with("sched-overlap", OperatorOptions { metrics_addr: format!("127.0.0.1:{port}"), ..OperatorOptions::default() })
        .await?;
    // Each run's single task takes 12 s; slots come every 3 s.
    env.create_pool(
        "pool",
        serde_json::json!({"workers": {"handler": ["sh", "-c", "cat >/dev/null; sleep 12"]}, "replicas": 1, "concurrency": 4}),
    )
    .await?;
    env.wait_pool_ready("pool", PATIENCE).await?;
    let spec = |policy: &str| serde_json::json!({"schedule": "@every 3s", "concurrencyPolicy": policy, "jobTemplate": job_template()});
    create_schedule(&env, "forbid", spec("Forbid")).await?;
    create_schedule(&env, "replace", spec("Replace")).await?;

    // Forbid: while the first run is active, the next slots are skipped (an Event; the recorder
    // folds repeats into one Event's series, so the metric counts them).
    let first = wait_runs(&env, "forbid", PATIENCE, |r| !r.is_empty()).await?;
    let first_name = first[0].1.metadata.name.clone().expect("name");
    env.wait_events("forbid", PATIENCE, |events| events.iter().any(|(_, _, reason)| reason == "SlotSkipped")).await?;
    let during = runs(&env, "forbid").await?;
    let first_now = env.jobs().get(&first_name).await?;
    assert!(!first_now.status.as_ref().is_some_and(|s| s.phase.is_finished()), "the first run still runs: {:?}", first_now.status);
    assert_eq!(
        during.len(),
        1,
        "no second run while the first is active: {:?}",
        during.iter().map(|(_, j)| &j.metadata.name).collect::<Vec<_>>()
    );
    let s = schedules(&env).get("forbid").await?;
    let active: Vec<_> = s.status.as_ref().expect("status").active.iter().filter_map(|r| r.name.clone()).collect();
    assert_eq!(active, vec![first_name.clone()], "status.active names the run");
    if !Env::is_real_cluster() {
        let series = format!(r#"warren_operator_schedule_slots_skipped_total{{namespace="{}",reason="Forbid"}}"#, env.namespace);
        // The first run takes 12 s: at least two of the 3-s slots after it are skipped.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while metric(port, &series).await? < 2.0 {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "skipped slots are not counted: {}", metric(port, &series).await?);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(runs(&env, "forbid").await?.len(), 1, "still no second run");
    }
    // Once it finished, a later slot runs again.
    env.wait_job(&first_name, PATIENCE, |j| j.status.as_ref().is_some_and(|s| s.phase == JobPhase::Succeeded)).await?;
    wait_runs(&env, "forbid", PATIENCE, |r| r.len() >= 2).await?;
    suspend(&env, "forbid").await?;

    // Replace: each new slot cancels (deletes) the active run and starts its own.
    let first = wait_runs(&env, "replace", PATIENCE, |r| !r.is_empty()).await?;
    let first_name = first[0].1.metadata.name.clone().expect("name");
    let later = wait_runs(&env, "replace", PATIENCE, |r| {
        r.iter().all(|(_, j)| j.metadata.name.as_deref() != Some(first_name.as_str())) && !r.is_empty()
    })
    .await?;
    suspend(&env, "replace").await?;
    assert!(later[0].0 > first[0].0, "a later slot replaced the first run");
    let events = env.wait_events("replace", PATIENCE, |events| events.iter().any(|(_, _, reason)| reason == "RunReplaced")).await?;
    assert!(events.iter().any(|(_, _, reason)| reason == "SlotFired"), "{events:?}");
    let settled = runs(&env, "replace").await?;
    let unfinished = settled.iter().filter(|(_, j)| !j.status.as_ref().is_some_and(|s| s.phase.is_finished())).count();
    assert!(unfinished <= 1, "Replace never leaves two runs active: {unfinished}");
    if !Env::is_real_cluster() {
        let series = format!(r#"warren_operator_schedule_runs_cancelled_total{{namespace="{}",reason="Replace"}}"#, env.namespace);
        assert!(metric(port, &series).await? >= 1.0, "cancelled runs are counted");
    }
    for name in ["forbid", "replace"] {
        schedules(&env).delete(name, &Default::default()).await?;
    }
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_missed_while_the_operator_was_down_are_caught_up_per_policy() -> anyhow::Result<()> {
    if Env::is_real_cluster() {
        eprintln!("*** SKIPPED on a real cluster: this test stops and restarts the operator process.");
        return Ok(());
    }
    const PERIOD: i64 = 4;
    let mut env = Env::start("sched-catchup").await?;
    // No pool: the runs wait (Pending) and stay active, which concurrencyPolicy Allow permits.
    for policy in ["Latest", "All", "None"] {
        let spec = serde_json::json!({
            "schedule": format!("@every {PERIOD}s"), "catchup": {"policy": policy}, "jobTemplate": job_template(),
            "successfulJobsHistoryLimit": 100, "failedJobsHistoryLimit": 100,
        });
        create_schedule(&env, &policy.to_lowercase(), spec).await?;
    }
    for name in ["latest", "all", "none"] {
        wait_runs(&env, name, PATIENCE, |r| !r.is_empty()).await?;
    }
    env.kill_operator().await?;
    // What each had dealt with when the operator died.
    let mut last = Vec::new();
    for name in ["latest", "all", "none"] {
        let s = schedules(&env).get(name).await?;
        let recorded = last_schedule_time(&s).expect("lastScheduleTime");
        let newest_run = runs(&env, name).await?.last().map(|(slot, _)| *slot).expect("a run");
        last.push((name, recorded.max(newest_run)));
    }
    // Down for three more slots after the latest of them; restarted just after a boundary.
    let boundary = last.iter().map(|(_, t)| *t).max().expect("three") + SignedDuration::from_secs(3 * PERIOD);
    sleep_until(boundary, Duration::from_millis(300)).await;
    env.start_operator()?;

    for (name, before) in &last {
        let missed: Vec<Timestamp> =
            (1..).map(|k| *before + SignedDuration::from_secs(k * PERIOD)).take_while(|slot| *slot <= boundary).collect();
        assert!(missed.len() >= 3, "{name}: {} slots passed while down", missed.len());
        wait_schedule(&env, name, |s| last_schedule_time(s).is_some_and(|t| t >= boundary)).await?;
        let caught_up: Vec<Timestamp> =
            runs(&env, name).await?.into_iter().map(|(slot, _)| slot).filter(|slot| slot > before && *slot <= boundary).collect();
        let want: Vec<Timestamp> = match *name {
            "latest" => vec![*missed.last().expect("missed")],
            "all" => missed.clone(),
            _ => Vec::new(),
        };
        assert_eq!(caught_up, want, "{name}: runs for the slots missed in ({before}, {boundary}]");
        let events = env.wait_events(name, PATIENCE, |e| *name == "all" || e.iter().any(|(_, _, r)| r == "SlotMissed")).await?;
        if *name == "all" {
            assert!(!events.iter().any(|(_, _, r)| r == "SlotMissed"), "All misses nothing within maxRuns: {events:?}");
        }
    }
    // Afterwards every policy fires the slots that come while it leads.
    let next = boundary + SignedDuration::from_secs(PERIOD);
    for name in ["latest", "all", "none"] {
        wait_runs(&env, name, PATIENCE, |r| r.iter().any(|(slot, _)| *slot >= next)).await?;
        suspend(&env, name).await?;
    }
    for name in ["latest", "all", "none"] {
        schedules(&env).delete(name, &Default::default()).await?;
    }
    env.cleanup().await
}

fn candidate(identity: &str, port: u16) -> OperatorOptions {
    let env = [
        ("WARREN_LEADER_ELECTION", "true".to_string()),
        ("WARREN_POD_NAME", identity.to_string()),
        ("WARREN_LEASE_NAME", "warren-operator".to_string()),
        ("WARREN_LEASE_NAMESPACE", "default".to_string()),
        ("WARREN_LEASE_DURATION_SECONDS", "6".to_string()),
        ("WARREN_LEASE_RENEW_DEADLINE_SECONDS", "4".to_string()),
        ("WARREN_LEASE_RETRY_PERIOD_SECONDS", "1".to_string()),
    ];
    OperatorOptions {
        metrics_addr: format!("127.0.0.1:{port}"),
        env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        ..OperatorOptions::default()
    }
}

async fn wait_leader(port: u16) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok((200, body)) = http_get(&format!("127.0.0.1:{port}"), "/readyz").await
            && body == "leader"
        {
            return Ok(());
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "operator on {port} did not become the leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_fires_exactly_once_across_a_leader_handover_at_a_slot_boundary() -> anyhow::Result<()> {
    if Env::is_real_cluster() {
        eprintln!("*** SKIPPED on a real cluster: this test starts and kills operator processes.");
        return Ok(());
    }
    const PERIOD: i64 = 2;
    let (port_a, port_b) = (free_port(), free_port());
    let mut env = Env::start_with("sched-handover", candidate("op-a", port_a)).await?;
    wait_leader(port_a).await?;
    let mut b = env.spawn_operator(&candidate("op-b", port_b), "operator-b.log")?;
    // Catch-up All: every slot of the handover gap runs, once; no pool, so runs stay active.
    let spec = serde_json::json!({
        "schedule": format!("@every {PERIOD}s"), "catchup": {"policy": "All"}, "jobTemplate": job_template(),
        "successfulJobsHistoryLimit": 100, "failedJobsHistoryLimit": 100,
    });
    create_schedule(&env, "tick", spec).await?;
    let before = wait_runs(&env, "tick", PATIENCE, |r| r.len() >= 2).await?;
    // SIGKILL op-a right at a slot boundary: it may or may not have created that slot's run.
    let boundary = before.last().expect("runs").0 + SignedDuration::from_secs(PERIOD);
    sleep_until(boundary, Duration::ZERO).await;
    env.kill_operator().await?;
    wait_leader(port_b).await?;
    let resumed = boundary + SignedDuration::from_secs(4 * PERIOD);
    wait_runs(&env, "tick", PATIENCE, |r| r.iter().any(|(slot, _)| *slot >= resumed)).await?;
    suspend(&env, "tick").await?;
    let created_by_b =
        metric(port_b, &format!(r#"warren_operator_schedule_runs_created_total{{namespace="{}",reason="Job"}}"#, env.namespace)).await?;

    let all = runs(&env, "tick").await?;
    let slots: Vec<i64> = all.iter().map(|(slot, _)| slot.as_second()).collect();
    let (first, last) = (slots[0], *slots.last().expect("runs"));
    let every: Vec<i64> = (0..).map(|k| first + k * PERIOD).take_while(|s| *s <= last).collect();
    assert_eq!(slots, every, "one run per slot, none missing, none twice, across the handover");
    assert!(created_by_b >= 1.0 && created_by_b <= all.len() as f64, "op-b created {created_by_b} of {} runs", all.len());
    assert!(slots.contains(&boundary.as_second()), "the boundary slot ran");

    schedules(&env).delete("tick", &Default::default()).await?;
    let reports_queue = env.reports_queue();
    // op-b is the only operator left.
    env.cleanup().await?;
    b.start_kill()?;
    b.wait().await?;
    warren_e2e::delete_queue(&reports_queue).await?;
    warren_e2e::delete_exchange(&warren_protocol::names::control_exchange(&reports_queue)).await
}

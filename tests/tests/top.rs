//! `warren top --once` end to end (issue #19): the frame a script reads, against the test's API
//! server through its kubeconfig — the pool, each Job with its progress, phase and why it waits —
//! and the one-line answers to a missing namespace, a bad one and an unreachable API server.

use std::time::Duration;

use warren_e2e::{Env, bin_dir, free_port};

/// Runs `warren top --once <args>` with `kubeconfig`: (exit code, stdout, stderr).
fn top(kubeconfig: &std::path::Path, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = std::process::Command::new(bin_dir().join("warren"))
        .args(["top", "--once"])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("COLUMNS", "200")
        .env_remove("WARREN_METRICS_URL")
        .output()?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr)))
}

/// The table row of `name` (rows start with the table's left border and the name's cell).
fn row<'a>(frame: &'a str, name: &str) -> &'a str {
    let start = format!("│{name} ");
    frame.lines().find(|l| l.starts_with(&start)).unwrap_or_else(|| panic!("no row {name:?} in\n{frame}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_top_once_shows_pools_jobs_their_progress_and_why_they_wait() -> anyhow::Result<()> {
    let env = Env::start("top").await?;
    env.create_pool("pool", serde_json::json!({"workers": {"handler": ["sh", "-c", "cat >/dev/null"]}, "replicas": 1, "concurrency": 4}))
        .await?;
    env.wait_pool_ready("pool", Duration::from_secs(120)).await?;
    env.create_job("quick", serde_json::json!({"poolRef": "pool", "completions": 10})).await?;
    env.create_job("held", serde_json::json!({"poolRef": "pool", "completions": 4, "suspend": true})).await?;
    env.create_job("orphan", serde_json::json!({"poolRef": "no-such-pool", "completions": 2})).await?;
    let phase =
        |j: &warren_operator::crd::Job, p: &str| j.status.as_ref().is_some_and(|s| serde_json::to_value(s.phase).ok() == Some(p.into()));
    env.create_workflow(
        "two-steps",
        serde_json::json!({"steps": [
            {"name": "first", "job": {"poolRef": "pool", "completions": 2}},
            {"name": "second", "dependsOn": ["first"], "job": {"poolRef": "pool", "completions": 2}},
        ]}),
    )
    .await?;
    env.wait_job("quick", Duration::from_secs(180), |j| phase(j, "Succeeded")).await?;
    env.wait_workflow("two-steps", Duration::from_secs(180), |w| w.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    env.wait_job("held", Duration::from_secs(60), |j| phase(j, "Suspended")).await?;
    env.wait_job("orphan", Duration::from_secs(60), |j| {
        j.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "False"))
    })
    .await?;

    let (code, frame, err) = top(env.kubeconfig(), &["-n", &env.namespace])?;
    assert_eq!(code, 0, "{frame}{err}");
    let header = frame.lines().next().unwrap_or_default();
    assert!(header.contains(&format!("namespace {}", env.namespace)) && header.contains("1 pool(s) · 5 Job(s) · 1 Workflow(s)"), "{frame}");
    let pool = row(&frame, "pool");
    assert!(pool.contains("True"), "the pool is Ready: {pool}");
    assert!(pool.contains("(high=0 normal=0 low=0)"), "its backlog by priority, empty once the Job is done: {pool}");
    let quick = row(&frame, "quick");
    assert!(quick.contains("Succeeded") && quick.contains("██████████ 100%") && quick.contains("10/10"), "{quick}");
    let held = row(&frame, "held");
    assert!(held.contains("Suspended") && held.contains("░░░░░░░░░░   0%") && held.contains("0/4"), "{held}");
    let orphan = row(&frame, "orphan");
    assert!(orphan.contains("Pending") && orphan.contains("PoolNotFound"), "why it waits: {orphan}");

    let workflow = row(&frame, "two-steps");
    assert!(
        workflow.contains("Succeeded") && workflow.contains("2/2") && workflow.contains("✓first ✓second"),
        "its steps' states: {workflow}"
    );
    assert!(row(&frame, "two-steps-first").contains("██████████ 100%"), "a step's Job is a Job: {frame}");

    // A namespace that does not exist: an empty view that says so.
    let (code, frame, err) = top(env.kubeconfig(), &["-n", "no-such-namespace-here"])?;
    assert_eq!(code, 0, "{frame}{err}");
    assert!(frame.contains("namespace \"no-such-namespace-here\" does not exist: nothing to show"), "{frame}");
    // A name no namespace can have: bad input, exit 3.
    let (code, _, err) = top(env.kubeconfig(), &["-n", "Not_A_Namespace"])?;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("is not a namespace name") && err.lines().count() == 1, "{err}");
    // No API server behind the kubeconfig: one line, exit 4.
    let unreachable = env.state_dir.join("unreachable-kubeconfig");
    let kubeconfig = std::fs::read_to_string(env.kubeconfig())?;
    let server = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap_or_default().to_string();
    std::fs::write(&unreachable, kubeconfig.replace(&server, &format!("http://127.0.0.1:{}", free_port())))?;
    let (code, out, err) = top(&unreachable, &["-n", &env.namespace])?;
    assert_eq!(code, 4, "{out}{err}");
    assert!(
        out.is_empty() && err.starts_with("warren top: cannot list Warren objects from http://127.0.0.1:") && err.lines().count() == 1,
        "{err}"
    );
    env.cleanup().await
}

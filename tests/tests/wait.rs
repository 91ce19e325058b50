//! `warren wait` end to end (issue #19): against the test's API server through its kubeconfig, as
//! a CI pipeline would run it; the exit code and what it prints are what a script checks.

use warren_e2e::{Env, bin_dir};

/// Runs `warren wait <args>` in the test's namespace: (exit code, stdout, stderr).
fn wait(env: &Env, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = std::process::Command::new(bin_dir().join("warren"))
        .arg("wait")
        .args(args)
        .args(["-n", &env.namespace])
        .env("KUBECONFIG", env.kubeconfig())
        .output()?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_wait_exits_by_how_the_job_ends() -> anyhow::Result<()> {
    let env = Env::start("wait").await?;
    env.create_pool(
        "pool",
        serde_json::json!({
            "workers": {"handler": ["sh", "-c", "cat >/dev/null; sleep 0.05; [ \"$WARREN_JOB_NAME\" != bad ] || exit 65"]},
            "replicas": 1, "concurrency": 4,
        }),
    )
    .await?;
    env.create_job("good", serde_json::json!({"poolRef": "pool", "completions": 20})).await?;
    env.create_job("bad", serde_json::json!({"poolRef": "pool", "completions": 2, "retry": {"maxAttempts": 1}})).await?;
    env.create_job("held", serde_json::json!({"poolRef": "pool", "completions": 2, "suspend": true})).await?;

    let (code, out, err) = wait(&env, &["wjob/good", "--for", "phase=Succeeded", "--timeout", "3m"])?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("wjob/good Succeeded [####################] 20/20 100%"), "{out}");
    assert!(out.trim_end().ends_with("wjob/good is Succeeded"), "{out}");

    let (code, out, err) = wait(&env, &["wjob/bad", "--timeout", "3m"])?;
    assert_eq!(code, 1, "a Job that failed will never succeed: {out}{err}");
    assert!(err.contains("wjob/bad ended Failed and will not be Succeeded") && err.contains("TasksFailed"), "{err}");
    // Waiting for the phase it did reach is a success.
    assert_eq!(wait(&env, &["wjob/bad", "--for", "phase=Failed"])?.0, 0);

    let (code, _, err) = wait(&env, &["wjob/held", "--timeout", "2s"])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("timed out after 2s: wjob/held is Suspended, not Succeeded"), "{err}");

    // A Workflow: its steps are the progress.
    env.create_workflow(
        "two-steps",
        serde_json::json!({"steps": [
            {"name": "first", "job": {"poolRef": "pool", "completions": 2}},
            {"name": "second", "dependsOn": ["first"], "job": {"poolRef": "pool", "completions": 2}},
        ]}),
    )
    .await?;
    let (code, out, err) = wait(&env, &["wf/two-steps", "--timeout", "3m"])?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("wf/two-steps Succeeded [####################] 2/2 100%"), "{out}");

    for (args, says) in [
        (&["wjob/nothing-here"][..], "wjob/nothing-here not found"),
        (&["job/good"][..], "batch/v1"),
        (&["wjob/good", "--for", "phase=Done"][..], "the phases Pending, Queued"),
        (&["wjob/good", "--timeout", "soon"][..], "--timeout \"soon\""),
    ] {
        let (code, _, err) = wait(&env, args)?;
        assert_eq!(code, 3, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    env.cleanup().await
}

//! `warren logs` end to end (issue #19): a command handler prints on stdout and stderr; what a
//! succeeded and a failed task printed, and why the failed one failed, reach the user through
//! the Job's status (`status.recentAttempts`), read by `warren logs` through the API only.

use warren_e2e::{Env, bin_dir};

/// Runs `warren logs <args>` in the test's namespace: (exit code, stdout, stderr).
fn logs(env: &Env, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    warren(env, &[&["logs"], args].concat())
}

/// Runs `warren <args>` in the test's namespace, through the test's kubeconfig.
fn warren(env: &Env, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = std::process::Command::new(bin_dir().join("warren"))
        .args(args)
        .args(["-n", &env.namespace])
        .env("KUBECONFIG", env.kubeconfig())
        .output()?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr)))
}

/// Prints a line per task; task 1 also complains on stderr and fails; task 2 prints nothing.
const HANDLER: &str = r#"cat >/dev/null
i=$WARREN_TASK_INDEX
[ "$i" = 2 ] && exit 0
echo "resizing image $i (attempt $WARREN_ATTEMPT)"
if [ "$i" = 1 ]; then echo "image $i is corrupt" >&2; exit 3; fi
echo "resized image $i""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_logs_shows_what_a_succeeded_and_a_failed_task_printed() -> anyhow::Result<()> {
    let env = Env::start("logs").await?;
    env.create_pool("pool", serde_json::json!({"workers": {"handler": ["sh", "-c", HANDLER]}, "replicas": 1, "concurrency": 2})).await?;
    env.create_job(
        "thumbs",
        serde_json::json!({"poolRef": "pool", "completions": 3,
            "retry": {"maxAttempts": 2, "backoff": {"initialDelay": "100ms"}}}),
    )
    .await?;
    let (code, out, err) = warren(&env, &["wait", "wjob/thumbs", "--for", "phase=Failed", "--timeout", "3m"])?;
    assert_eq!(code, 0, "the Job fails (task 1 always does): {out}{err}");

    let (code, out, err) = logs(&env, &["wjob/thumbs", "--index", "0"])?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("wjob/thumbs task 0 attempt 1 (Succeeded"), "{out}");
    assert!(out.contains("  resizing image 0 (attempt 1)\n  resized image 0\n"), "what it printed, in order: {out}");
    assert!(!out.contains("error:"), "{out}");

    let (code, out, err) = logs(&env, &["wjob/thumbs", "--index", "1"])?;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("wjob/thumbs task 1 attempt").count(), 2, "both attempts are kept: {out}");
    let retried = out.find("task 1 attempt 1 (Retrying").expect("the first attempt was retried");
    let dead = out.find("task 1 attempt 2 (DeadLettered").expect("the second went to the dead-letter queue");
    assert!(retried < dead, "oldest first: {out}");
    assert!(out.contains("error: ") && out.contains("image 1 is corrupt"), "the error quotes stderr: {out}");
    // stdout and stderr are two pipes read side by side: each keeps its order, but a line on one
    // written just after a line on the other may be read first, so both are asserted, not their order.
    let second = &out[dead..];
    assert!(second.contains("  resizing image 1 (attempt 2)\n"), "its stdout line: {out}");
    assert!(second.contains("  image 1 is corrupt\n"), "its stderr line: {out}");

    // Task 2 succeeded silently: nothing is kept, and the message says where else to look.
    let (code, out, err) = logs(&env, &["wjob/thumbs", "--index", "2"])?;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("keeps no attempt of task 2, which succeeded without printing"), "{err}");
    assert!(err.contains("kubectl logs -l warren.dev/pool=pool"), "{err}");

    // All of them: the two attempts of task 1 and the one of task 0.
    let (code, out, _) = logs(&env, &["wjob/thumbs"])?;
    assert_eq!((code, out.matches("wjob/thumbs task ").count()), (0, 3), "{out}");

    for (args, says, exit) in [
        (&["wjob/nothing-here"][..], "wjob/nothing-here not found", 3),
        (&["job/thumbs"][..], "batch/v1", 3),
        (&["wjob/thumbs", "--index", "7"][..], "has 3 tasks: there is no task 7", 1),
    ] {
        let (code, _, err) = logs(&env, args)?;
        assert_eq!(code, exit, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    env.cleanup().await
}

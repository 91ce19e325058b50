//! The `warren-worker` binary in exec mode against the real broker, with `sh -c` handlers.

mod common;

use std::process::Stdio;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use warren_protocol::{FailureDisposition, TaskEventKind};

fn start_binary(pool: &TestPool, args: &[&str], extra_env: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_warren-worker"))
        .args(["--log-format", "text"])
        .args(args)
        .envs(pool.worker_env())
        .envs(extra_env.iter().copied())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("warren-worker binary starts")
}

async fn terminate(child: &mut Child) -> std::process::ExitStatus {
    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    tokio::time::timeout(PATIENCE, child.wait()).await.expect("worker exits after SIGTERM").unwrap()
}

const SCRIPT: &str = r#"
payload=$(cat)
echo "an ordinary log line"
echo "warren:progress 40 reading"
printf 'warren:result {"payload":%s,"env":"%s|%s|%s|%s|%s|%s|%s|%s|%s|%s"}\n' "$payload" \
  "$WARREN_JOB_NAMESPACE" "$WARREN_JOB_NAME" "$WARREN_JOB_UID" "$WARREN_TASK_INDEX" "$WARREN_TASK_COUNT" \
  "$WARREN_ATTEMPT" "$WARREN_MAX_ATTEMPTS" "$WARREN_PRIORITY" "$WARREN_IDEMPOTENCY_KEY" "$WARREN_TASK_TYPE"
case "$payload" in
  *permanent*) echo "cannot parse the input" >&2; exit 65 ;;
  *flaky*) echo "service unavailable" >&2; exit 3 ;;
esac
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_mode_follows_the_contract() {
    init_tracing();
    let pool = TestPool::new(&["normal"]).await;
    let modes = ["ok", "permanent", "flaky"];
    for (i, mode) in modes.iter().enumerate() {
        let mut e = pool.envelope(i as u32, 3, "normal");
        e.payload = serde_json::json!({ "mode": mode });
        e.retry.max_attempts = if *mode == "flaky" { 1 } else { 3 };
        if *mode == "ok" {
            e.task_type = Some("thumbnail".into());
        }
        pool.publish(&e).await;
    }
    let mut reports = pool.reports().await;
    let mut child = start_binary(&pool, &["--concurrency", "2", "--", "sh", "-c", SCRIPT], &[]);
    reports.until("all three tasks final", |events| final_count(events) >= 3).await;
    let status = terminate(&mut child).await;
    assert!(status.success(), "graceful shutdown exits 0, got {status}");

    let finals = reports.finals();
    let expected_env = format!("{}|job|{}|0|3|1|3|normal|{}/0|thumbnail", pool.namespace, pool.job_uid, pool.job_uid);
    assert_eq!(
        finals[&0],
        vec![TaskEventKind::Succeeded { result: Some(serde_json::json!({ "payload": { "mode": "ok" }, "env": expected_env })) }]
    );
    assert_eq!(
        finals[&1],
        vec![TaskEventKind::Failed {
            error: "exit code 65; stderr: cannot parse the input".into(),
            disposition: FailureDisposition::DeadLettered { reason: "permanent".into() }
        }]
    );
    assert_eq!(
        finals[&2],
        vec![TaskEventKind::Failed {
            error: "exit code 3; stderr: service unavailable".into(),
            disposition: FailureDisposition::DeadLettered { reason: "attempts-exhausted".into() }
        }]
    );
    assert!(
        reports.events.iter().any(|e| e.index == 0 && e.kind == TaskEventKind::Progress { percent: 40, message: "reading".into() }),
        "progress line became a Progress event"
    );
    let mut dead = pool.drain_dlq().await;
    dead.sort_by_key(|d| header_text(d, "warren-task-index"));
    let reasons: Vec<_> = dead.iter().map(|d| header_text(d, "warren-reason").unwrap()).collect();
    assert_eq!(reasons, vec!["permanent", "attempts-exhausted"]);
    assert_eq!(pool.work_depth().await, 0);
    pool.cleanup(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_the_running_command_finish_and_requeues_buffered_tasks() {
    init_tracing();
    let pool = TestPool::new(&["a", "b"]).await;
    pool.publish(&pool.envelope(0, 3, "a")).await;
    pool.publish(&pool.envelope(1, 3, "b")).await;
    pool.publish(&pool.envelope(2, 3, "b")).await;
    let gate = std::env::temp_dir().join(format!("{}-gate", pool.namespace));
    let gate_str = gate.to_str().unwrap().to_string();
    // The command is given as WARREN_HANDLER_COMMAND this time.
    let command = serde_json::json!([
        "sh",
        "-c",
        "while [ ! -f \"$GATE\" ]; do sleep 0.05; done; echo \"warren:result \\\"done $WARREN_TASK_INDEX\\\"\""
    ])
    .to_string();
    let mut reports = pool.reports().await;
    let mut child = start_binary(
        &pool,
        &["--concurrency", "1", "--grace-seconds", "60"],
        &[("GATE", gate_str.as_str()), ("WARREN_HANDLER_COMMAND", command.as_str())],
    );
    reports.until("a task started", |events| events.iter().any(|e| e.kind == TaskEventKind::Started)).await;
    let running = reports.events.iter().find(|e| e.kind == TaskEventKind::Started).unwrap().index;
    // One task runs, one of the other class is buffered, one is still in its queue.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while pool.work_depth().await != 1 {
        assert!(tokio::time::Instant::now() < deadline, "worker never buffered a second task");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    reports.until_heartbeat("draining heartbeat", |hb| hb.draining && hb.in_flight == 1).await;
    assert_eq!(pool.work_depth().await, 2, "the buffered task went back");
    std::fs::write(&gate, b"open").unwrap();
    let status = tokio::time::timeout(PATIENCE, child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    reports.until("running task final", |events| final_count(events) >= 1).await;
    assert_eq!(reports.finals()[&running], vec![TaskEventKind::Succeeded { result: Some(serde_json::json!(format!("done {running}"))) }]);
    assert_eq!(final_count(&reports.events), 1);
    assert_eq!(pool.work_depth().await, 2);
    let _ = std::fs::remove_file(&gate);
    pool.cleanup(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_out_command_is_terminated() {
    init_tracing();
    let pool = TestPool::new(&["normal"]).await;
    let mut e = pool.envelope(0, 1, "normal");
    e.timeout_seconds = Some(1);
    e.retry.max_attempts = 1;
    pool.publish(&e).await;
    let marker = std::env::temp_dir().join(format!("{}-term", pool.namespace));
    let script = format!("trap 'echo terminated > {}; exit 143' TERM; while true; do sleep 0.05; done", marker.display());
    let mut reports = pool.reports().await;
    let mut child = start_binary(&pool, &["--", "sh", "-c", &script], &[]);
    reports.until("task final", |events| final_count(events) >= 1).await;
    let status = terminate(&mut child).await;
    assert!(status.success());
    assert_eq!(
        reports.finals()[&0],
        vec![TaskEventKind::Failed {
            error: "timed out after 1s".into(),
            disposition: FailureDisposition::DeadLettered { reason: "attempts-exhausted".into() }
        }]
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "terminated", "the command got SIGTERM");
    let _ = std::fs::remove_file(&marker);
    pool.cleanup(&[]).await;
}

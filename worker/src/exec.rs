//! Exec mode: a task handler that runs a command once per task, following the contract of
//! [`warren_protocol::exec`] (documented for users in `worker/README.md`).
//!
//! The contract's decisions are pure ([`parse_stdout_line`], [`exit_outcome`], [`task_env`]);
//! [`run_command`] spawns the process and wires them up.

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tracing::Instrument;
use warren_protocol::{TaskEnvelope, exec};

use crate::context::{TaskContext, TaskError, TaskResult};

/// How long a command gets between SIGTERM and SIGKILL when its attempt is cancelled.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// Stderr lines kept for the error text of a failed attempt.
pub const STDERR_TAIL_LINES: usize = 10;
const MAX_ERROR_CHARS: usize = 4000;
/// Longest stdout or stderr line read from a command (64 KiB; a result line may hold up to
/// `MAX_RESULT_BYTES` of JSON). The rest of a longer line is read and discarded, so that one
/// 2 GB line costs the worker 64 KiB, not 2 GB.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// One line of a command's output, cut to `max` bytes; invalid UTF-8 becomes U+FFFD (a handler's
/// output is not ours to vouch for, and stopping to read it would block the command on a full
/// pipe). `None` at the end of the output. The bool says whether the line was cut.
pub async fn read_capped_line<R: AsyncBufRead + Unpin>(reader: &mut R, max: usize) -> std::io::Result<Option<(String, bool)>> {
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut read_any = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            break;
        }
        read_any = true;
        let (chunk, newline) = match available.iter().position(|b| *b == b'\n') {
            Some(at) => (&available[..at], true),
            None => (available, false),
        };
        let room = max.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        cut |= chunk.len() > room;
        let used = chunk.len() + usize::from(newline);
        reader.consume(used);
        if newline {
            break;
        }
    }
    if !read_any {
        return Ok(None);
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let mut text = String::from_utf8_lossy(&line).into_owned();
    if cut {
        // The byte cut may have split a character: drop the replacement it turned into.
        while text.ends_with('\u{FFFD}') {
            text.pop();
        }
    }
    Ok(Some((text, cut)))
}

/// What a line on the command's stdout means.
#[derive(Clone, Debug, PartialEq)]
pub enum OutputLine {
    Progress {
        percent: u8,
        message: String,
    },
    Result(serde_json::Value),
    /// A result line whose JSON does not parse (logged, ignored).
    InvalidResult {
        error: String,
    },
    /// Anything else: logged.
    Log(String),
}

/// Interprets one stdout line (without its line terminator).
pub fn parse_stdout_line(line: &str) -> OutputLine {
    if let Some(rest) = line.strip_prefix(exec::PROGRESS_PREFIX) {
        let rest = rest.trim_start();
        let (number, message) = rest.split_once(' ').unwrap_or((rest, ""));
        if let Ok(percent) = number.trim().parse::<f64>()
            && percent.is_finite()
        {
            return OutputLine::Progress { percent: percent.clamp(0.0, 100.0) as u8, message: message.trim().to_string() };
        }
        return OutputLine::Log(line.to_string());
    }
    if let Some(rest) = line.strip_prefix(exec::RESULT_PREFIX) {
        return match serde_json::from_str(rest.trim()) {
            Ok(value) => OutputLine::Result(value),
            Err(e) => OutputLine::InvalidResult { error: e.to_string() },
        };
    }
    OutputLine::Log(line.to_string())
}

/// How the command ended, for humans.
pub fn describe_exit(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(s) => format!("killed by signal {signal} ({s})"),
            Err(_) => format!("killed by signal {signal}"),
        },
        (None, None) => "ended without exit status".to_string(),
    }
}

/// The outcome of an attempt from the command's exit: 0 = success, 65 = permanent failure,
/// anything else (including death by signal) = retryable failure. The error text is the exit
/// status followed by the last stderr lines.
pub fn exit_outcome(code: Option<i32>, signal: Option<i32>, stderr_tail: &[String]) -> Result<(), TaskError> {
    if code == Some(0) {
        return Ok(());
    }
    let mut text = describe_exit(code, signal);
    if !stderr_tail.is_empty() {
        text.push_str("; stderr: ");
        text.push_str(&stderr_tail.join("\n"));
    }
    if text.len() > MAX_ERROR_CHARS {
        let cut = (text.len() - MAX_ERROR_CHARS..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text = format!("…{}", &text[cut..]);
    }
    if code == Some(exec::PERMANENT_FAILURE_EXIT_CODE) { Err(TaskError::permanent(text)) } else { Err(TaskError::retryable(text)) }
}

/// The environment variables that describe the task to the command.
pub fn task_env(envelope: &TaskEnvelope) -> Vec<(&'static str, String)> {
    vec![
        (exec::ENV_JOB_NAMESPACE, envelope.job.namespace.clone()),
        (exec::ENV_JOB_NAME, envelope.job.name.clone()),
        (exec::ENV_JOB_UID, envelope.job.uid.clone()),
        (exec::ENV_TASK_INDEX, envelope.index.to_string()),
        (exec::ENV_TASK_COUNT, envelope.total.to_string()),
        (exec::ENV_ATTEMPT, envelope.attempt.to_string()),
        (exec::ENV_MAX_ATTEMPTS, envelope.retry.max_attempts.to_string()),
        (exec::ENV_PRIORITY, envelope.priority.clone()),
        (exec::ENV_IDEMPOTENCY_KEY, envelope.idempotency_key.clone()),
        (exec::ENV_TASK_TYPE, envelope.task_type.clone().unwrap_or_default()),
    ]
}

/// Parses the `WARREN_HANDLER_COMMAND` value (a JSON array of strings, at least one).
pub fn parse_command_json(raw: &str) -> Result<Vec<String>, String> {
    let command: Vec<String> =
        serde_json::from_str(raw).map_err(|e| format!("{} must be a JSON array of strings: {e}", crate::HANDLER_COMMAND_ENV))?;
    if command.is_empty() || command[0].is_empty() {
        return Err(format!("{} must name a command", crate::HANDLER_COMMAND_ENV));
    }
    Ok(command)
}

fn signal_group(pid: u32, signal: Signal) {
    if let Err(e) = killpg(Pid::from_raw(pid as i32), signal) {
        tracing::debug!(%signal, error = %e, "signalling the command's process group failed");
    }
}

fn exit_parts(status: ExitStatus) -> (Option<i32>, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    (status.code(), status.signal())
}

/// Environment variables of the worker that its handlers never see: the broker URL carries the
/// broker credentials, with which a handler could publish reports or tasks as the worker, and
/// the report key would let it sign reports as the pool.
pub const WITHHELD_FROM_HANDLERS: &[&str] = &[warren_protocol::worker_env::AMQP_URL, warren_protocol::worker_env::REPORT_KEY];

/// The handler process of one task: the worker's environment without
/// [`WITHHELD_FROM_HANDLERS`], plus the task's facts.
fn handler_command(program: &str, args: &[String], envelope: &TaskEnvelope) -> Command {
    let mut command = Command::new(program);
    command.args(args).envs(task_env(envelope));
    for name in WITHHELD_FROM_HANDLERS {
        command.env_remove(name);
    }
    command
}

/// Runs `command` for one task. On cancellation the command's process group gets SIGTERM,
/// then SIGKILL after [`KILL_GRACE`]; the attempt then fails (retryable).
pub async fn run_command(command: Arc<Vec<String>>, ctx: TaskContext) -> TaskResult {
    let (program, args) = command.split_first().ok_or_else(|| TaskError::permanent("empty handler command"))?;
    let mut child = handler_command(program, args, ctx.envelope())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| TaskError::retryable(format!("cannot start {program:?}: {e}")))?;
    let pid = child.id().unwrap_or_default();
    tracing::debug!(pid, "command started");

    let mut stdin = child.stdin.take().expect("stdin is piped");
    let payload = serde_json::to_vec(ctx.payload()).expect("JSON value serializes");
    let writer = tokio::spawn(async move {
        // A command that does not read its input closes the pipe early: not an error.
        let _ = stdin.write_all(&payload).await;
        let _ = stdin.shutdown().await;
    });

    let result: Arc<Mutex<Option<serde_json::Value>>> = Arc::default();
    let result_cut: Arc<std::sync::atomic::AtomicBool> = Arc::default();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stdout_reader = {
        let (ctx, result, result_cut) = (ctx.clone(), result.clone(), result_cut.clone());
        tokio::spawn(
            async move {
                let mut stdout = BufReader::new(stdout);
                while let Ok(Some((line, cut))) = read_capped_line(&mut stdout, MAX_LINE_BYTES).await {
                    if cut && line.starts_with(exec::RESULT_PREFIX) {
                        result_cut.store(true, std::sync::atomic::Ordering::Relaxed);
                        continue;
                    }
                    match parse_stdout_line(&line) {
                        OutputLine::Progress { percent, message } => ctx.progress(percent, message),
                        OutputLine::Result(value) => *result.lock().unwrap() = Some(value),
                        OutputLine::InvalidResult { error } => {
                            tracing::warn!(%error, "ignoring result line that is not JSON")
                        }
                        OutputLine::Log(line) => {
                            tracing::info!(stream = "stdout", %line);
                            ctx.record_output(&line);
                        }
                    }
                }
            }
            .in_current_span(),
        )
    };
    let stderr_tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let stderr = child.stderr.take().expect("stderr is piped");
    let stderr_reader = {
        let (tail, ctx) = (stderr_tail.clone(), ctx.clone());
        tokio::spawn(
            async move {
                let mut stderr = BufReader::new(stderr);
                while let Ok(Some((line, _))) = read_capped_line(&mut stderr, MAX_LINE_BYTES).await {
                    tracing::info!(stream = "stderr", %line);
                    ctx.record_output(&line);
                    let mut tail = tail.lock().unwrap();
                    if tail.len() == STDERR_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            }
            .in_current_span(),
        )
    };

    let mut cancelled = false;
    let status = tokio::select! {
        status = child.wait() => status,
        _ = ctx.cancelled() => {
            cancelled = true;
            signal_group(pid, Signal::SIGTERM);
            match tokio::time::timeout(KILL_GRACE, child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    tracing::warn!(pid, "command ignored SIGTERM; killing it");
                    signal_group(pid, Signal::SIGKILL);
                    child.wait().await
                }
            }
        }
    };
    // Background processes may keep the pipes open: don't wait for them for long.
    for reader in [stdout_reader, stderr_reader] {
        let abort = reader.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), reader).await.is_err() {
            abort.abort();
        }
    }
    writer.abort();
    let status = status.map_err(|e| TaskError::retryable(format!("waiting for the command failed: {e}")))?;
    let (code, signal) = exit_parts(status);
    tracing::debug!(pid, ?code, ?signal, "command ended");
    if cancelled {
        return Err(TaskError::retryable(format!("cancelled ({})", describe_exit(code, signal))));
    }
    let tail: Vec<String> = stderr_tail.lock().unwrap().iter().cloned().collect();
    exit_outcome(code, signal, &tail)?;
    if result_cut.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(TaskError::permanent(format!(
            "the handler's result line is over {MAX_LINE_BYTES} bytes (results may be {} bytes); return a reference to the data instead",
            warren_protocol::MAX_RESULT_BYTES
        )));
    }
    let value = result.lock().unwrap().take();
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn handlers_never_get_the_broker_credentials() {
        let envelope: TaskEnvelope = serde_json::from_value(json!({
            "version": 1, "job": {"namespace": "ns", "name": "j", "uid": "u-1"}, "index": 0, "total": 1,
            "attempt": 1, "priority": "normal", "payload": null, "idempotencyKey": "u-1/0",
            "retry": {"maxAttempts": 1, "initialDelayMs": 1, "factor": 1.0, "maxDelayMs": 1, "jitter": 0.0}
        }))
        .unwrap();
        let command = handler_command("sh", &[], &envelope);
        let envs: Vec<(String, Option<String>)> = command
            .as_std()
            .get_envs()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v.map(|v| v.to_string_lossy().into_owned())))
            .collect();
        assert!(envs.contains(&("WARREN_AMQP_URL".into(), None)), "removed from the inherited environment: {envs:?}");
        assert!(envs.contains(&("WARREN_TASK_INDEX".into(), Some("0".into()))), "{envs:?}");
    }

    #[tokio::test]
    async fn output_lines_are_capped_and_tolerate_invalid_utf8() {
        let mut input: Vec<u8> = Vec::new();
        input.extend_from_slice(b"first\r\n");
        input.extend_from_slice(b"bad \xff\xfe bytes\n");
        input.extend(std::iter::repeat_n(b'x', 100_000));
        input.extend_from_slice(b"\n");
        input.extend_from_slice("é".repeat(10).as_bytes());
        input.extend_from_slice(b"\nlast without newline");
        // A small buffer: lines span many fills.
        let mut reader = tokio::io::BufReader::with_capacity(7, &input[..]);
        let mut lines = Vec::new();
        while let Some(line) = read_capped_line(&mut reader, 15).await.unwrap() {
            lines.push(line);
        }
        assert_eq!(
            lines,
            vec![
                ("first".to_string(), false),
                ("bad \u{FFFD}\u{FFFD} bytes".to_string(), false),
                ("x".repeat(15), true),
                ("é".repeat(7), true), // 15 bytes cut inside the 8th character
                ("last without ne".to_string(), true),
            ]
        );
        let mut empty = tokio::io::BufReader::new(&b""[..]);
        assert_eq!(read_capped_line(&mut empty, 15).await.unwrap(), None);
    }

    #[test]
    fn stdout_lines_table() {
        let cases = [
            ("warren:progress 50 half way", OutputLine::Progress { percent: 50, message: "half way".into() }),
            ("warren:progress 100", OutputLine::Progress { percent: 100, message: String::new() }),
            ("warren:progress 250 too much", OutputLine::Progress { percent: 100, message: "too much".into() }),
            ("warren:progress 12.7 x", OutputLine::Progress { percent: 12, message: "x".into() }),
            ("warren:progress lots", OutputLine::Log("warren:progress lots".into())),
            ("warren:result {\"a\":1}", OutputLine::Result(json!({"a": 1}))),
            ("warren:result 42", OutputLine::Result(json!(42))),
            ("warren:result {oops", OutputLine::InvalidResult { error: "key must be a string at line 1 column 2".into() }),
            ("warren:progressive", OutputLine::Log("warren:progressive".into())),
            ("hello", OutputLine::Log("hello".into())),
            ("", OutputLine::Log(String::new())),
        ];
        for (line, expected) in cases {
            assert_eq!(parse_stdout_line(line), expected, "{line:?}");
        }
    }

    #[test]
    fn exit_outcome_table() {
        let tail = vec!["boom".to_string(), "bang".to_string()];
        assert_eq!(exit_outcome(Some(0), None, &tail), Ok(()));
        let e = exit_outcome(Some(65), None, &tail).unwrap_err();
        assert!(!e.is_retryable());
        assert_eq!(e.message(), "exit code 65; stderr: boom\nbang");
        let e = exit_outcome(Some(1), None, &[]).unwrap_err();
        assert!(e.is_retryable());
        assert_eq!(e.message(), "exit code 1");
        let e = exit_outcome(None, Some(9), &[]).unwrap_err();
        assert!(e.is_retryable());
        assert_eq!(e.message(), "killed by signal 9 (SIGKILL)");
        let long = vec!["é".repeat(3000)];
        let e = exit_outcome(Some(2), None, &long).unwrap_err();
        assert!(e.message().chars().count() <= MAX_ERROR_CHARS + 1);
        assert!(e.message().starts_with('…'));
    }

    #[test]
    fn command_json_is_validated() {
        assert_eq!(parse_command_json(r#"["sh","-c","echo hi"]"#).unwrap(), vec!["sh", "-c", "echo hi"]);
        assert!(parse_command_json("[]").is_err());
        assert!(parse_command_json(r#"[""]"#).is_err());
        assert!(parse_command_json("sh -c x").is_err());
    }

    #[test]
    fn task_env_covers_the_contract() {
        let envelope = TaskEnvelope {
            version: 1,
            job: warren_protocol::JobRef { namespace: "ns".into(), name: "j".into(), uid: "u".into() },
            index: 3,
            total: 9,
            attempt: 2,
            priority: "high".into(),
            task_type: None,
            payload: json!(null),
            idempotency_key: "u/3".into(),
            retry: Default::default(),
            timeout_seconds: None,
            replay: 0,
            enqueued_at_ms: 0,
        };
        let env: std::collections::HashMap<_, _> = task_env(&envelope).into_iter().collect();
        assert_eq!(env[exec::ENV_TASK_INDEX], "3");
        assert_eq!(env[exec::ENV_TASK_COUNT], "9");
        assert_eq!(env[exec::ENV_ATTEMPT], "2");
        assert_eq!(env[exec::ENV_MAX_ATTEMPTS], "3");
        assert_eq!(env[exec::ENV_IDEMPOTENCY_KEY], "u/3");
        assert_eq!(env[exec::ENV_JOB_UID], "u");
        assert_eq!(env[exec::ENV_TASK_TYPE], "");
        assert_eq!(env.len(), 10);
    }
}

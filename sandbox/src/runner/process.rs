//! Local processes standing in for containers: each runs in its own process group (so signals
//! reach whatever it spawns, like a container's cgroup), with stdout/stderr appended to the
//! pod's log file. When the main process exits, the rest of its group is killed, as when a
//! container's PID 1 exits.
//!
//! Every live group is recorded in [`ProcessGroups`] so that a runner dropped without
//! `shutdown` can still SIGKILL everything it started.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::launch::Launch;

/// Host variables a local "container" inherits; everything else comes from the pod spec and
/// the runner's `extra_env`, so processes don't see the test harness' environment.
pub const INHERITED_ENV: &[&str] = &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TMPDIR", "TZ", "LD_LIBRARY_PATH", "RUST_BACKTRACE"];

/// Process groups started by one runner and not yet reaped.
#[derive(Clone, Debug, Default)]
pub struct ProcessGroups(Arc<Mutex<HashSet<i32>>>);

impl ProcessGroups {
    fn insert(&self, pgid: i32) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(pgid);
    }

    fn remove(&self, pgid: i32) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&pgid);
    }

    /// SIGKILLs every recorded group (last-resort cleanup, synchronous).
    pub fn kill_all(&self) {
        let groups: Vec<i32> = self.0.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
        for pgid in groups {
            signal_group(pgid, Signal::SIGKILL);
        }
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a container process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit code as Kubernetes reports it: the code, or 128 + signal number.
    pub code: i32,
    pub signal: Option<i32>,
}

impl From<ExitStatus> for Exit {
    fn from(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit { code, signal: None },
            (None, Some(sig)) => Exit { code: 128 + sig, signal: Some(sig) },
            (None, None) => Exit { code: 255, signal: None },
        }
    }
}

/// A started container process (leader of its own process group).
#[derive(Debug)]
pub struct ContainerProcess {
    child: Child,
    pgid: i32,
    groups: ProcessGroups,
    reaped: bool,
}

/// Starts `launch` with a clean environment, in a new process group, output appended to
/// `log_path`.
pub fn spawn(launch: &Launch, log_path: &Path, groups: &ProcessGroups) -> io::Result<ContainerProcess> {
    let log = OpenOptions::new().create(true).append(true).open(log_path)?;
    let log_err = log.try_clone()?;
    let mut command = Command::new(&launch.program);
    command
        .args(&launch.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &launch.working_dir {
        command.current_dir(dir);
    }
    let child = command.spawn()?;
    let pgid = child.id().and_then(|pid| i32::try_from(pid).ok()).ok_or_else(|| io::Error::other("spawned process has no pid"))?;
    groups.insert(pgid);
    Ok(ContainerProcess { child, pgid, groups: groups.clone(), reaped: false })
}

fn signal_group(pgid: i32, signal: Signal) {
    // ESRCH (group already gone) is the normal outcome after the last member exited.
    let _ = killpg(Pid::from_raw(pgid), signal);
}

impl ContainerProcess {
    pub fn pid(&self) -> i32 {
        self.pgid
    }

    /// Waits for the main process to exit, then kills what is left of its group.
    pub async fn wait(&mut self) -> io::Result<Exit> {
        let status = self.child.wait().await?;
        self.finish();
        Ok(status.into())
    }

    /// SIGTERM to the whole group, up to `grace` for the main process to exit, then SIGKILL.
    pub async fn terminate(&mut self, grace: Duration) -> io::Result<Exit> {
        signal_group(self.pgid, Signal::SIGTERM);
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status?,
            Err(_elapsed) => {
                tracing::info!(pid = self.pgid, grace_seconds = grace.as_secs_f64(), "grace period over, sending SIGKILL");
                signal_group(self.pgid, Signal::SIGKILL);
                self.child.wait().await?
            }
        };
        self.finish();
        Ok(status.into())
    }

    fn finish(&mut self) {
        signal_group(self.pgid, Signal::SIGKILL);
        self.groups.remove(self.pgid);
        self.reaped = true;
    }
}

impl Drop for ContainerProcess {
    fn drop(&mut self) {
        if !self.reaped {
            // kill_on_drop only reaches the leader; take the whole group down.
            signal_group(self.pgid, Signal::SIGKILL);
            self.groups.remove(self.pgid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn sh(script: &str) -> Launch {
        Launch {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            env: vec![("MARK".into(), "env-ok".into())],
            working_dir: None,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-runner-process-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    async fn wait_for_file(path: &Path) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !path.exists() {
            assert!(std::time::Instant::now() < deadline, "{} never appeared", path.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn exit_codes_and_logs() {
        let dir = scratch("exit");
        let log = dir.join("p.log");
        let groups = ProcessGroups::default();
        let mut p = spawn(&sh("echo out $MARK; echo err >&2; exit 3"), &log, &groups).unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(p.wait().await.unwrap(), Exit { code: 3, signal: None });
        assert!(groups.is_empty());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("out env-ok"), "{text}");
        assert!(text.contains("err"), "{text}");
        // Appends across restarts.
        let mut again = spawn(&sh("echo second"), &log, &groups).unwrap();
        again.wait().await.unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("out env-ok") && text.contains("second"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn terminate_respects_trap_and_kills_stubborn_groups() {
        let dir = scratch("term");
        let groups = ProcessGroups::default();
        let marker = dir.join("marker");
        let ready = dir.join("ready-a");
        let graceful =
            sh(&format!("trap 'echo bye > {}; exit 0' TERM; touch {}; while true; do sleep 0.05; done", marker.display(), ready.display()));
        let mut p = spawn(&graceful, &dir.join("a.log"), &groups).unwrap();
        wait_for_file(&ready).await;
        let exit = p.terminate(Duration::from_secs(20)).await.unwrap();
        assert_eq!(exit.code, 0, "trap ran and exited cleanly");
        assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "bye");

        let ready = dir.join("ready-b");
        let stubborn = sh(&format!("trap '' TERM; touch {}; while true; do sleep 0.05; done", ready.display()));
        let mut p = spawn(&stubborn, &dir.join("b.log"), &groups).unwrap();
        wait_for_file(&ready).await;
        let exit = p.terminate(Duration::from_millis(300)).await.unwrap();
        assert_eq!(exit, Exit { code: 137, signal: Some(9) });
        assert!(groups.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

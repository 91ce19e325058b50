//! `warren wait <kind>/<name> [--for phase=<Phase>] [--timeout <duration>]`: the `kubectl wait` a
//! Warren user wants in a CI pipeline. Polls the object (two GETs a second at most), shows its
//! progress — one updating line on a terminal, a plain line per change otherwise — and exits
//! with a code a script can act on ([`Exit`]).
//!
//! The decisions (what the target is, what `--for` means, whether the wait is over, what the
//! progress line says) are pure functions below; `run` is the loop around them.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use kube::Api;
use warren_operator::crd::{Job, JobPhase, Workflow, WorkflowPhase};

/// How `warren wait` ends. The numbers are the process's exit code (documented in README).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The object reached the wanted phase.
    Reached = 0,
    /// The object finished in another phase (it will never reach the wanted one).
    OtherPhase = 1,
    /// The timeout passed first.
    Timeout = 2,
    /// Bad input: an unknown kind, a malformed `--for` or `--timeout`, an object that does not
    /// exist.
    Usage = 3,
    /// The API server could not be asked.
    Unreachable = 4,
}

/// The kinds `warren wait` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Job,
    Workflow,
}

impl Kind {
    fn short(self) -> &'static str {
        match self {
            Kind::Job => "wjob",
            Kind::Workflow => "wf",
        }
    }
}

/// `wjob/name`, `job.warren.dev/name`, `wf/name`, …: the kind and the name.
pub fn parse_target(target: &str) -> Result<(Kind, String), String> {
    let (kind, name) = target.split_once('/').ok_or_else(|| format!("{target:?}: expected <kind>/<name>, e.g. wjob/resize"))?;
    let kind = match kind.to_ascii_lowercase().as_str() {
        "wjob" | "wjobs" | "job.warren.dev" | "jobs.warren.dev" => Kind::Job,
        "wf" | "wfs" | "workflow" | "workflows" | "workflow.warren.dev" | "workflows.warren.dev" => Kind::Workflow,
        "job" | "jobs" => return Err(format!("{kind:?} is Kubernetes' batch/v1 Job; a Warren Job is wjob/{name}")),
        other => return Err(format!("unknown kind {other:?}: wjob (jobs.warren.dev) or wf (workflows.warren.dev)")),
    };
    if name.is_empty() || name.contains('/') {
        return Err(format!("{target:?}: expected <kind>/<name>"));
    }
    // A Kubernetes object name (DNS subdomain): anything else cannot exist, so say so here
    // rather than send it to the API server.
    let valid = name.len() <= 253 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid {
        return Err(format!("{name:?} is not a Kubernetes object name (lowercase letters, digits, '-', '.', at most 253)"));
    }
    Ok((kind, name.to_string()))
}

/// The wanted phase from `--for phase=<Phase>`, checked against the kind's phases.
pub fn parse_for(kind: Kind, condition: &str) -> Result<String, String> {
    let phase = condition.strip_prefix("phase=").ok_or_else(|| format!("--for {condition:?}: expected phase=<Phase>"))?;
    let known = match kind {
        Kind::Job => serde_json::from_value::<JobPhase>(serde_json::json!(phase)).is_ok(),
        Kind::Workflow => serde_json::from_value::<WorkflowPhase>(serde_json::json!(phase)).is_ok(),
    };
    let phases = match kind {
        Kind::Job => "Pending, Queued, Running, Suspended, Succeeded, Failed",
        Kind::Workflow => "Pending, Running, Suspended, Compensating, Succeeded, Failed",
    };
    if !known {
        return Err(format!("--for phase={phase}: a {} has the phases {phases}", kind.short()));
    }
    Ok(phase.to_string())
}

/// `10m`, `30s`, `1h30m`, `90` (seconds).
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let span: jiff::SignedDuration = text.parse().map_err(|e| format!("--timeout {text:?}: {e} (e.g. 30s, 10m, 1h)"))?;
    Duration::try_from(span).map_err(|_| format!("--timeout {text:?} is negative"))
}

/// What one look at the object showed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Seen {
    pub phase: String,
    pub finished: bool,
    /// Done and total (tasks of a Job, steps of a Workflow), when known.
    pub done: u64,
    pub total: u64,
    /// Why it is in its phase (the Failed or Ready condition's reason and message).
    pub why: Option<String>,
}

/// What a Job shows.
pub fn seen_job(job: &Job) -> Seen {
    let status = job.status.clone().unwrap_or_default();
    let phase = serde_json::to_value(status.phase).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let why = ["Failed", "Ready"].iter().find_map(|t| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == *t && (c.type_ == "Failed" || c.status == "False"))
            .map(|c| format!("{}: {}", c.reason, c.message))
    });
    Seen {
        finished: status.phase.is_finished(),
        done: u64::from(status.succeeded) + u64::from(status.failed),
        total: u64::from(job.task_count()),
        why,
        phase,
    }
}

/// What a Workflow shows.
pub fn seen_workflow(wf: &Workflow) -> Seen {
    let status = wf.status.clone().unwrap_or_default();
    let phase = serde_json::to_value(status.phase).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let (done, total) = status
        .progress
        .as_deref()
        .and_then(|p| p.split_once('/'))
        .and_then(|(d, t)| Some((d.trim().parse().ok()?, t.trim().parse().ok()?)))
        .unwrap_or((0, wf.spec.steps.len() as u64));
    let why = status.conditions.iter().find(|c| c.type_ == "Failed" && c.status == "True").map(|c| format!("{}: {}", c.reason, c.message));
    Seen { finished: status.phase.is_finished(), done, total, why, phase }
}

/// Whether the wait is over, and how. Pure.
pub fn verdict(seen: &Seen, wanted: &str) -> Option<Exit> {
    if seen.phase == wanted {
        Some(Exit::Reached)
    } else if seen.finished {
        Some(Exit::OtherPhase)
    } else {
        None
    }
}

/// One progress line: `wjob/resize Running [#######-------------] 350/1000 35%`. Pure.
pub fn progress_line(target: &str, seen: &Seen) -> String {
    const WIDTH: u64 = 20;
    if seen.total == 0 {
        return format!("{target} {}", if seen.phase.is_empty() { "(no status yet)" } else { &seen.phase });
    }
    let done = seen.done.min(seen.total);
    let filled = (done * WIDTH / seen.total) as usize;
    let bar = format!("{}{}", "#".repeat(filled), "-".repeat(WIDTH as usize - filled));
    format!("{target} {} [{bar}] {done}/{} {}%", seen.phase, seen.total, done * 100 / seen.total)
}

/// Waits for `target` (`wjob/<name>`, `wf/<name>`) to meet `condition` (`phase=<Phase>`);
/// returns the exit code and prints what happened.
pub async fn run(client: kube::Client, namespace: &str, target: &str, condition: &str, timeout: &str) -> Exit {
    let (kind, name) = match parse_target(target) {
        Ok(t) => t,
        Err(e) => return usage(&e),
    };
    let wanted = match parse_for(kind, condition) {
        Ok(w) => w,
        Err(e) => return usage(&e),
    };
    let timeout = match parse_timeout(timeout) {
        Ok(t) => t,
        Err(e) => return usage(&e),
    };
    let label = format!("{}/{name}", kind.short());
    let terminal = std::io::stdout().is_terminal();
    // A timeout past what the clock can hold (`--timeout 999999999h`) is no deadline at all.
    let deadline = tokio::time::Instant::now().checked_add(timeout);
    let mut last_line = String::new();
    loop {
        let seen = match kind {
            Kind::Job => Api::<Job>::namespaced(client.clone(), namespace).get_opt(&name).await.map(|o| o.as_ref().map(seen_job)),
            Kind::Workflow => {
                Api::<Workflow>::namespaced(client.clone(), namespace).get_opt(&name).await.map(|o| o.as_ref().map(seen_workflow))
            }
        };
        let seen = match seen {
            Ok(Some(seen)) => seen,
            Ok(None) => return usage(&format!("{label} not found in namespace {namespace:?}")),
            Err(error) => {
                eprintln!("warren wait: cannot read {label}: {error}");
                return Exit::Unreachable;
            }
        };
        let line = progress_line(&label, &seen);
        if line != last_line {
            if terminal {
                print!("\r\x1b[2K{line}");
            } else {
                println!("{line}");
            }
            let _ = std::io::stdout().flush();
            last_line = line;
        }
        if let Some(exit) = verdict(&seen, &wanted) {
            if terminal {
                println!();
            }
            match exit {
                Exit::Reached => println!("{label} is {wanted}"),
                _ => eprintln!(
                    "warren wait: {label} ended {} and will not be {wanted}{}",
                    seen.phase,
                    seen.why.map(|w| format!(" ({w})")).unwrap_or_default()
                ),
            }
            return exit;
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            if terminal {
                println!();
            }
            eprintln!("warren wait: timed out after {timeout:?}: {label} is {}, not {wanted}", seen.phase);
            return Exit::Timeout;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn usage(message: &str) -> Exit {
    eprintln!("warren wait: {message}");
    Exit::Usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_a_warren_kind() {
        assert_eq!(parse_target("wjob/resize"), Ok((Kind::Job, "resize".into())));
        assert_eq!(parse_target("jobs.warren.dev/a"), Ok((Kind::Job, "a".into())));
        assert_eq!(parse_target("wf/etl"), Ok((Kind::Workflow, "etl".into())));
        assert!(parse_target("job/resize").unwrap_err().contains("batch/v1"), "kubectl's job is not ours");
        assert!(parse_target("pod/x").unwrap_err().contains("unknown kind"));
        assert!(parse_target("resize").unwrap_err().contains("<kind>/<name>"));
        assert!(parse_target("wjob/").is_err());
        assert!(parse_target("wjob/Not_A_Name").unwrap_err().contains("not a Kubernetes object name"));
        assert!(parse_target(&format!("wjob/{}", "a".repeat(254))).is_err());
    }

    #[test]
    fn for_and_timeout_are_checked() {
        assert_eq!(parse_for(Kind::Job, "phase=Failed"), Ok("Failed".into()));
        assert!(parse_for(Kind::Job, "phase=Compensating").unwrap_err().contains("Pending, Queued"));
        assert_eq!(parse_for(Kind::Workflow, "phase=Compensating"), Ok("Compensating".into()));
        assert!(parse_for(Kind::Job, "condition=Ready").is_err());
        assert_eq!(parse_timeout("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_timeout("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_timeout("soon").is_err());
        assert!(parse_timeout("999999999h").is_ok(), "huge, but no deadline overflow: run() takes it as none");
    }

    #[test]
    fn the_wait_ends_on_the_phase_or_on_another_end() {
        let seen = |phase: &str, finished| Seen { phase: phase.into(), finished, ..Seen::default() };
        assert_eq!(verdict(&seen("Running", false), "Succeeded"), None);
        assert_eq!(verdict(&seen("Succeeded", true), "Succeeded"), Some(Exit::Reached));
        assert_eq!(verdict(&seen("Failed", true), "Succeeded"), Some(Exit::OtherPhase));
        assert_eq!(verdict(&seen("Running", false), "Running"), Some(Exit::Reached), "a phase on the way counts");
    }

    #[test]
    fn the_progress_line_has_a_bar_and_counts() {
        let s = Seen { phase: "Running".into(), done: 350, total: 1000, ..Seen::default() };
        assert_eq!(progress_line("wjob/a", &s), "wjob/a Running [#######-------------] 350/1000 35%");
        let done = Seen { phase: "Succeeded".into(), done: 7, total: 7, finished: true, why: None };
        assert_eq!(progress_line("wf/b", &done), "wf/b Succeeded [####################] 7/7 100%");
        assert_eq!(progress_line("wjob/c", &Seen::default()), "wjob/c (no status yet)");
    }
}

//! `warren logs wjob/<name> [--index N]`: what a task's last attempts printed and why they
//! failed, from the Job's `status.recentAttempts` (the operator keeps there the last failed
//! attempts and the last succeeded ones that printed, with the end of their output, as the
//! workers reported them). It reads the API only: it works the same on a real cluster, needs no
//! access to the broker or to the worker pods, and is bounded (a few KiB per attempt, never a
//! whole log). What is not kept there is in the workers' logs; the message says how to find it.
//!
//! The decisions (what to print, what to say when nothing is kept) are pure functions below.

use kube::Api;
use warren_operator::crd::{AttemptRecord, Job};

use crate::wait::{Kind, parse_target};

/// How `warren logs` ends (the process's exit code, documented in README).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Attempts were shown.
    Shown = 0,
    /// The Job keeps no attempt of that task (or none at all): the message says where to look.
    NotKept = 1,
    /// Bad input (not a wjob/<name>) or a Job that does not exist.
    Usage = 3,
    /// The API server could not be asked.
    Unreachable = 4,
}

/// One attempt as text: a header line, the error, the output lines indented.
pub fn render_attempt(label: &str, record: &AttemptRecord) -> String {
    let at = record.finished_at.as_ref().map(|t| format!(", {}", t.0)).unwrap_or_default();
    let mut text = format!("{label} task {} attempt {} ({:?}{at})\n", record.index, record.attempt, record.outcome);
    if let Some(error) = &record.error {
        text.push_str(&format!("error: {error}\n"));
    }
    match &record.output {
        Some(output) => {
            text.push_str("output (its end):\n");
            for line in output.lines() {
                text.push_str(&format!("  {line}\n"));
            }
        }
        None => text.push_str("output: (none)\n"),
    }
    text
}

/// What `warren logs` prints for `job`: the kept attempts of task `index` (or of every task),
/// oldest first; or, when none is kept, why, as the error.
pub fn render(job: &Job, index: Option<u32>) -> Result<String, String> {
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let label = format!("wjob/{name}");
    let status = job.status.clone().unwrap_or_default();
    let kept: Vec<&AttemptRecord> = status.recent_attempts.iter().filter(|r| index.is_none_or(|i| r.index == i)).collect();
    if !kept.is_empty() {
        return Ok(kept.iter().map(|r| render_attempt(&label, r)).collect::<Vec<_>>().join("\n"));
    }
    let where_else = format!(
        "the workers' logs have every line: kubectl logs -l warren.dev/pool={} --prefix | grep 'job={name} .*task={} '",
        job.spec.pool_ref,
        index.map_or("<index>".to_string(), |i| i.to_string())
    );
    let kept_what = "it keeps the last 10 failed attempts and the last 5 succeeded ones that printed something";
    Err(match index {
        Some(i) if i >= job.task_count() => format!("{label} has {} tasks: there is no task {i}", job.task_count()),
        Some(i) => {
            let state = if warren_operator::ranges::parse(&status.succeeded_indexes).is_ok_and(|s| s.contains(&i)) {
                "succeeded without printing, or earlier than the attempts kept"
            } else if warren_operator::ranges::parse(&status.failed_indexes).is_ok_and(|s| s.contains(&i)) {
                "failed earlier than the attempts kept"
            } else {
                "has not finished an attempt"
            };
            format!("{label} keeps no attempt of task {i}, which {state} ({kept_what}); {where_else}")
        }
        None => format!("{label} keeps no attempt yet: no task failed or printed ({kept_what}); {where_else}"),
    })
}

/// Reads the Job and prints its kept attempts.
pub async fn run(client: kube::Client, namespace: &str, target: &str, index: Option<u32>) -> Exit {
    let name = match parse_target(target) {
        Ok((Kind::Job, name)) => name,
        Ok((Kind::Workflow, name)) => {
            eprintln!(
                "warren logs: a Workflow's steps are Jobs: `kubectl get wjob -l warren.dev/workflow={name}`, then warren logs wjob/<step Job>"
            );
            return Exit::Usage;
        }
        Err(error) => {
            eprintln!("warren logs: {error}");
            return Exit::Usage;
        }
    };
    let job = match Api::<Job>::namespaced(client, namespace).get_opt(&name).await {
        Ok(Some(job)) => job,
        Ok(None) => {
            eprintln!("warren logs: wjob/{name} not found in namespace {namespace:?}");
            return Exit::Usage;
        }
        Err(error) => {
            eprintln!("warren logs: cannot read wjob/{name}: {error}");
            return Exit::Unreachable;
        }
    };
    match render(&job, index) {
        Ok(text) => {
            print!("{text}");
            Exit::Shown
        }
        Err(why) => {
            eprintln!("warren logs: {why}");
            Exit::NotKept
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use warren_operator::crd::{AttemptOutcome, JobSpec, JobStatus};

    fn job(records: Vec<AttemptRecord>, succeeded: &str, failed: &str) -> Job {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({"poolRef": "resize", "completions": 4})).unwrap();
        let mut job = Job::new("thumbs", spec);
        job.status = Some(JobStatus {
            recent_attempts: records,
            succeeded_indexes: succeeded.into(),
            failed_indexes: failed.into(),
            ..Default::default()
        });
        job
    }

    fn record(index: u32, attempt: u32, outcome: AttemptOutcome, error: Option<&str>, output: Option<&str>) -> AttemptRecord {
        AttemptRecord {
            index,
            attempt,
            outcome,
            error: error.map(str::to_string),
            output: output.map(str::to_string),
            finished_at: Some(Time("2026-12-07T06:40:01Z".parse().unwrap())),
        }
    }

    #[test]
    fn a_task_shows_its_kept_attempts_with_error_and_output() {
        let j = job(
            vec![
                record(1, 1, AttemptOutcome::Retrying, Some("exit status 1; stderr: boom"), Some("reading 1\nboom")),
                record(0, 1, AttemptOutcome::Succeeded, None, Some("resized 0")),
                record(1, 2, AttemptOutcome::DeadLettered, Some("exit status 1; stderr: boom"), None),
            ],
            "0",
            "1",
        );
        let one = render(&j, Some(1)).unwrap();
        assert_eq!(
            one,
            "wjob/thumbs task 1 attempt 1 (Retrying, 2026-12-07T06:40:01Z)\nerror: exit status 1; stderr: boom\noutput (its end):\n  reading 1\n  boom\n\n\
             wjob/thumbs task 1 attempt 2 (DeadLettered, 2026-12-07T06:40:01Z)\nerror: exit status 1; stderr: boom\noutput: (none)\n"
        );
        let zero = render(&j, Some(0)).unwrap();
        assert!(zero.starts_with("wjob/thumbs task 0 attempt 1 (Succeeded") && zero.contains("  resized 0\n"), "{zero}");
        assert!(!zero.contains("error:"), "{zero}");
        assert_eq!(render(&j, None).unwrap().matches("wjob/thumbs task").count(), 3);
    }

    #[test]
    fn a_task_without_kept_attempts_says_why_and_where_to_look() {
        let j = job(vec![record(1, 1, AttemptOutcome::Retrying, Some("x"), None)], "0,3", "2");
        let silent = render(&j, Some(0)).unwrap_err();
        assert!(silent.starts_with("wjob/thumbs keeps no attempt of task 0, which succeeded without printing"), "{silent}");
        assert!(silent.ends_with("kubectl logs -l warren.dev/pool=resize --prefix | grep 'job=thumbs .*task=0 '"), "{silent}");
        assert!(render(&j, Some(2)).unwrap_err().contains("which failed earlier than the attempts kept"));
        assert_eq!(render(&j, Some(4)).unwrap_err(), "wjob/thumbs has 4 tasks: there is no task 4");
        let empty = job(vec![], "", "");
        assert!(render(&empty, None).unwrap_err().starts_with("wjob/thumbs keeps no attempt yet"));
        assert!(render(&empty, Some(3)).unwrap_err().contains("which has not finished an attempt"));
    }
}

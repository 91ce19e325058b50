//! `warren-bench workflows`: many Workflows at once on the local control plane.
//!
//! Submits `count` Workflows, each a chain of `steps` single-task steps (no-op SDK worker), all
//! at once, waits until every one finished, and prints the step-transition latency — from a
//! child Job's status saying it finished to the next child Job existing (created) and to its
//! task being in the queue (`status.enqueued`) — as seen by one watch of the Jobs, plus the
//! operator's peak resident memory (`VmHWM` of `/proc/<pid>/status`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use kube::ResourceExt;
use kube::runtime::{WatchStreamExt, watcher};
use warren_operator::crd::{Job, StepPhase, WorkflowPhase};

use crate::{Env, OperatorOptions};

/// When the watch first saw each state of a Job.
#[derive(Default, Clone, Copy)]
struct Seen {
    created: Option<Instant>,
    queued: Option<Instant>,
    finished: Option<Instant>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the benchmark; `worker_exe` is a binary whose `worker` subcommand is a no-op SDK worker.
pub async fn run(count: usize, steps: usize, worker_exe: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(count > 0 && (1..=50).contains(&steps), "--count must be > 0 and --steps 1 to 50");
    println!("warren-bench workflows: {count} Workflows x {steps} steps, submitted at once");
    let env = Env::start_with("bench-wf", OperatorOptions::default()).await?;
    let pid = env.operator_pid().context("the operator runs as a child process")?;
    env.create_pool(
        "bench",
        serde_json::json!({
            "workers": {"command": [worker_exe.display().to_string(), "worker"]},
            "replicas": 2, "concurrency": 64,
        }),
    )
    .await?;
    env.wait_pool_ready("bench", Duration::from_secs(60)).await?;

    let seen: Arc<Mutex<HashMap<String, Seen>>> = Arc::default();
    let watch = {
        let seen = seen.clone();
        let stream = watcher(env.jobs(), watcher::Config::default()).default_backoff().applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Ok(Some(job)) = stream.try_next().await {
                let job: Job = job;
                let now = Instant::now();
                let mut seen = seen.lock().expect("seen lock");
                let entry = seen.entry(job.name_any()).or_default();
                entry.created.get_or_insert(now);
                if let Some(s) = &job.status {
                    if s.enqueued > 0 {
                        entry.queued.get_or_insert(now);
                    }
                    if s.phase.is_finished() {
                        entry.finished.get_or_insert(now);
                    }
                }
            }
        })
    };

    let started = Instant::now();
    let spec = |_: usize| {
        let steps: Vec<serde_json::Value> = (0..steps)
            .map(|i| {
                let mut step = serde_json::json!({"name": format!("s{i}"), "job": {"poolRef": "bench", "payload": {"step": i}}});
                if i > 0 {
                    step["dependsOn"] = serde_json::json!([format!("s{}", i - 1)]);
                }
                step
            })
            .collect();
        serde_json::json!({"steps": steps})
    };
    futures::stream::iter(0..count)
        .map(|i| {
            let env = &env;
            let spec = spec(i);
            async move { env.create_workflow(&format!("wf{i}"), spec).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    println!("          {count} Workflows created in {:.2} s", started.elapsed().as_secs_f64());

    let deadline = Instant::now() + Duration::from_secs(1800);
    let list = loop {
        let list = env.workflows().list(&Default::default()).await?;
        let done = list.items.iter().filter(|w| w.status.as_ref().is_some_and(|s| s.phase.is_finished())).count();
        if done == count {
            break list;
        }
        anyhow::ensure!(Instant::now() < deadline, "only {done}/{count} Workflows finished within 30 min");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let elapsed = started.elapsed().as_secs_f64();
    let failed = list.items.iter().filter(|w| w.status.as_ref().is_some_and(|s| s.phase != WorkflowPhase::Succeeded)).count();
    let all_steps_ok = list
        .items
        .iter()
        .all(|w| w.status.as_ref().is_some_and(|s| s.steps.len() == steps && s.steps.values().all(|st| st.phase == StepPhase::Succeeded)));
    anyhow::ensure!(failed == 0 && all_steps_ok, "{failed} Workflows did not succeed");
    // The last transitions' watch events may still be in flight.
    tokio::time::sleep(Duration::from_secs(2)).await;
    watch.abort();

    let seen = seen.lock().expect("seen lock").clone();
    let mut to_created = Vec::new();
    let mut to_queued = Vec::new();
    let mut missing = 0;
    for w in 0..count {
        for i in 1..steps {
            let before = seen.get(&format!("wf{w}-s{}", i - 1)).and_then(|s| s.finished);
            let next = seen.get(&format!("wf{w}-s{i}")).copied().unwrap_or_default();
            match (before, next.created, next.queued) {
                (Some(f), Some(c), Some(q)) => {
                    to_created.push(c.saturating_duration_since(f));
                    to_queued.push(q.saturating_duration_since(f));
                }
                _ => missing += 1,
            }
        }
    }
    to_created.sort();
    to_queued.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "          all {count} Workflows ({} step Jobs) succeeded in {elapsed:.1} s ({:.0} steps/s)",
        count * steps,
        (count * steps) as f64 / elapsed
    );
    println!(
        "step transition, child finished -> next child created: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} transitions)",
        ms(percentile(&to_created, 50.0)),
        ms(percentile(&to_created, 99.0)),
        ms(to_created.last().copied().unwrap_or_default()),
        to_created.len()
    );
    println!(
        "step transition, child finished -> next child queued:  p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p99 < 1000 ms)",
        ms(percentile(&to_queued, 50.0)),
        ms(percentile(&to_queued, 99.0)),
        ms(to_queued.last().copied().unwrap_or_default()),
    );
    if missing > 0 {
        println!("          ({missing} transitions not observed by the watch, left out)");
    }
    match peak_rss_kib(pid) {
        Some(kib) => println!("operator peak memory (VmHWM): {:.1} MB (target < 150 MB)", kib as f64 / 1024.0),
        None => println!("operator peak memory: /proc/{pid}/status not readable"),
    }
    env.cleanup().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&sorted, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }
}

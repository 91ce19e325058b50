//! `warren-bench fairness` (issue #15): a large Job of key A and a small Job of key B, submitted a
//! second later, on a pool of fixed capacity.
//!
//! Three runs, each in its own fresh environment (local control plane, real RabbitMQ, real
//! worker processes of this binary: `warren-bench fairness worker`, the Rust SDK sleeping
//! `--sleep-ms` per task):
//! 1. **B alone** on a pool with `fairness: {}`: B's completion time, creation -> Succeeded.
//! 2. **fair**: the same pool; Job A (fairnessKey `a`), 1 s later Job B (fairnessKey `b`).
//! 3. **FIFO**: the same pool without `fairness`: B waits behind all of A.
//!
//! Every worker appends `<key> <epoch-ms>` per finished task to a side channel (a file named by
//! [`LOG_ENV`] in the pool's `workers.env`; the key is the Job's payload). From it: Jain's
//! fairness index over the per-key throughput while both keys are backlogged (from B's first to
//! its last completion, in windows of `--window-ms`), and the total throughput of a run: every
//! task over the time from A's creation to the last task done. Figures are printed beside their
//! targets, never asserted: the command exits 0 when a target is missed (and says MISSED).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use warren_operator::crd::{Job, JobPhase};

use crate::Env;

/// The side-channel file the bench's workers append `<key> <epoch-ms>` lines to.
pub const LOG_ENV: &str = "WARREN_BENCH_FAIRNESS_LOG";

/// Jain's index the fair run should reach in every window (equal weights).
const JAIN_TARGET: f64 = 0.95;
/// Total throughput of the fair run relative to FIFO.
const THROUGHPUT_TARGET: f64 = 0.95;

/// What `warren-bench fairness` was asked to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// The benchmark.
    Run(Options),
    /// The pool's worker (`fairness worker --sleep-ms N`): started by the local runner.
    Worker { sleep_ms: u64 },
}

/// The benchmark's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub a_tasks: u32,
    pub b_tasks: u32,
    /// Handler time per task.
    pub sleep_ms: u64,
    pub replicas: u32,
    pub concurrency: u32,
    /// Window of Jain's index.
    pub window_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self { a_tasks: 20_000, b_tasks: 200, sleep_ms: 5, replicas: 2, concurrency: 4, window_ms: 1_000 }
    }
}

impl Command {
    /// Parses the arguments after `fairness`; None when they are not understood.
    pub fn parse(args: &[String]) -> Option<Command> {
        if args.first().map(String::as_str) == Some("worker") {
            return match &args[1..] {
                [] => Some(Command::Worker { sleep_ms: 0 }),
                [flag, value] if flag == "--sleep-ms" => Some(Command::Worker { sleep_ms: value.parse().ok()? }),
                _ => None,
            };
        }
        let mut options = Options::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next()?;
            match flag.as_str() {
                "--a-tasks" => options.a_tasks = value.parse().ok()?,
                "--b-tasks" => options.b_tasks = value.parse().ok()?,
                "--sleep-ms" => options.sleep_ms = value.parse().ok()?,
                "--replicas" => options.replicas = value.parse().ok()?,
                "--concurrency" => options.concurrency = value.parse().ok()?,
                "--window-ms" => options.window_ms = value.parse().ok()?,
                _ => return None,
            }
        }
        let o = &options;
        (o.a_tasks > 0 && o.b_tasks > 0 && o.replicas > 0 && o.concurrency > 0 && o.window_ms > 0).then_some(Command::Run(options))
    }

    /// Runs it; `exe` is this binary (the pool's workers run `exe fairness worker`).
    pub async fn run(self, exe: &Path) -> anyhow::Result<()> {
        match self {
            Command::Run(options) => run(&options, exe).await,
            Command::Worker { sleep_ms } => worker(sleep_ms).await,
        }
    }
}

/// The worker of the bench's pools: sleeps `sleep_ms` per task, then appends `<key> <epoch-ms>`
/// (the key from the payload's `key`) to the file named by [`LOG_ENV`].
pub async fn worker(sleep_ms: u64) -> anyhow::Result<()> {
    let path = std::env::var_os(LOG_ENV).with_context(|| format!("{LOG_ENV} is not set"))?;
    // O_APPEND: the lines of both workers' processes interleave whole.
    let file = Arc::new(std::fs::OpenOptions::new().create(true).append(true).open(&path)?);
    let worker = warren_worker::Worker::builder()
        .handler(move |ctx| {
            let file = file.clone();
            async move {
                if sleep_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
                }
                let key = ctx.payload().get("key").and_then(serde_json::Value::as_str).unwrap_or("?");
                let line = format!("{key} {}\n", warren_protocol::now_ms());
                (&*file).write_all(line.as_bytes()).map_err(|e| warren_worker::TaskError::retryable(format!("side channel: {e}")))?;
                Ok(None)
            }
        })
        .build()?;
    worker.run_until_signal().await?;
    Ok(())
}

/// One run's observations.
struct Outcome {
    /// A's creation (epoch ms), when the run had an A.
    a_created_ms: Option<u64>,
    b_created_ms: u64,
    /// B's creation -> status Succeeded (as a watch sees it).
    b_succeeded: Duration,
    /// The side channel: (key, epoch ms) per finished task.
    done: Vec<(String, u64)>,
}

impl Outcome {
    fn times(&self, key: &str) -> Vec<u64> {
        let mut at: Vec<u64> = self.done.iter().filter(|(k, _)| k == key).map(|(_, t)| *t).collect();
        at.sort_unstable();
        at
    }

    /// B's creation -> its last task done (side channel), seconds.
    fn b_last_done(&self) -> Option<f64> {
        self.times("b").last().map(|last| last.saturating_sub(self.b_created_ms) as f64 / 1_000.0)
    }

    /// Every task over the time from A's creation to the last task done, tasks per second.
    fn throughput(&self) -> Option<f64> {
        let from = self.a_created_ms?;
        let last = self.done.iter().map(|(_, t)| *t).max()?;
        let secs = last.saturating_sub(from) as f64 / 1_000.0;
        (secs > 0.0).then(|| self.done.len() as f64 / secs)
    }
}

/// Which run.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    BAlone,
    Fair,
    Fifo,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::BAlone => "B alone, fairness: {}",
            Mode::Fair => "A then B, fairness: {}",
            Mode::Fifo => "A then B, no fairness (FIFO)",
        }
    }

    fn env_name(self) -> &'static str {
        match self {
            Mode::BAlone => "fair-alone",
            Mode::Fair => "fair-fair",
            Mode::Fifo => "fair-fifo",
        }
    }
}

pub async fn run(options: &Options, exe: &Path) -> anyhow::Result<()> {
    let o = options;
    println!(
        "warren-bench fairness: key A submits {} tasks, key B {} tasks 1 s later; {} workers × {} slots, {} ms per task; \
         3 runs, each in a fresh environment",
        o.a_tasks, o.b_tasks, o.replicas, o.concurrency, o.sleep_ms
    );
    let mut outcomes = Vec::new();
    for (i, mode) in [Mode::BAlone, Mode::Fair, Mode::Fifo].into_iter().enumerate() {
        let started = Instant::now();
        let outcome = run_once(mode, o, exe).await.with_context(|| format!("run {}: {}", i + 1, mode.label()))?;
        println!(
            "  run {}/3 ({}): B Succeeded after {:.2} s; {} tasks done; run took {:.1} s",
            i + 1,
            mode.label(),
            outcome.b_succeeded.as_secs_f64(),
            outcome.done.len(),
            started.elapsed().as_secs_f64()
        );
        outcomes.push(outcome);
    }
    let [alone, fair, fifo] = <[Outcome; 3]>::try_from(outcomes).map_err(|_| anyhow::anyhow!("three runs"))?;
    report(o, &alone, &fair, &fifo);
    Ok(())
}

/// One run in a fresh environment, cleaned up whatever happens in it.
async fn run_once(mode: Mode, o: &Options, exe: &Path) -> anyhow::Result<Outcome> {
    let env = Env::start(mode.env_name()).await?;
    let result = run_in(&env, mode, o, exe).await;
    let cleaned = env.cleanup().await;
    let outcome = result?;
    cleaned.context("cleaning up")?;
    Ok(outcome)
}

async fn run_in(env: &Env, mode: Mode, o: &Options, exe: &Path) -> anyhow::Result<Outcome> {
    let log: PathBuf = env.state_dir.join("fairness-side-channel.log");
    let mut spec = serde_json::json!({
        "workers": {
            "command": [exe.display().to_string(), "fairness", "worker", "--sleep-ms", o.sleep_ms.to_string()],
            "env": [{"name": LOG_ENV, "value": log.to_string_lossy()}],
        },
        "replicas": o.replicas, "concurrency": o.concurrency,
    });
    if mode != Mode::Fifo {
        spec["fairness"] = serde_json::json!({});
    }
    env.create_pool("bench", spec).await?;
    // Every worker up and consuming before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pool = env.pools().get("bench").await?;
        let ready = pool.status.as_ref().is_some_and(|s| {
            i64::from(s.ready_replicas) >= i64::from(o.replicas) && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if ready {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the pool's {} workers did not become ready", o.replicas);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let job =
        |tasks: u32, key: &str| serde_json::json!({"poolRef": "bench", "completions": tasks, "fairnessKey": key, "payload": {"key": key}});
    let a_created_ms = if mode == Mode::BAlone {
        None
    } else {
        let at = Instant::now();
        let ms = warren_protocol::now_ms();
        env.create_job("a", job(o.a_tasks, "a")).await?;
        tokio::time::sleep_until((at + Duration::from_secs(1)).into()).await;
        Some(ms)
    };
    let b_created_ms = warren_protocol::now_ms();
    let b_created = Instant::now();
    env.create_job("b", job(o.b_tasks, "b")).await?;
    // Generous: FIFO, B waits for all of A.
    let timeout = Duration::from_secs(600)
        + Duration::from_millis(
            (u64::from(o.a_tasks) + u64::from(o.b_tasks)) * (o.sleep_ms + 2) * 4 / u64::from(o.replicas * o.concurrency),
        );
    let b = env.wait_job("b", timeout, finished).await?;
    let b_succeeded = b_created.elapsed();
    check(&b, o.b_tasks)?;
    if a_created_ms.is_some() {
        check(&env.wait_job("a", timeout, finished).await?, o.a_tasks)?;
    }
    let expected = (o.b_tasks + if a_created_ms.is_some() { o.a_tasks } else { 0 }) as usize;
    // Every task reported Succeeded wrote its line before: read until all are there.
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        let done = side_channel(&log);
        if done.len() >= expected || Instant::now() >= deadline {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    anyhow::ensure!(done.len() >= expected, "the side channel {} has {} lines, not {expected}", log.display(), done.len());
    Ok(Outcome { a_created_ms, b_created_ms, b_succeeded, done })
}

fn finished(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|s| s.phase.is_finished())
}

fn check(job: &Job, tasks: u32) -> anyhow::Result<()> {
    let status = job.status.clone().unwrap_or_default();
    anyhow::ensure!(
        status.phase == JobPhase::Succeeded && status.succeeded == tasks,
        "Job {} did not succeed fully: phase {:?}, {} of {tasks} succeeded, {} failed",
        job.metadata.name.as_deref().unwrap_or("?"),
        status.phase,
        status.succeeded,
        status.failed
    );
    Ok(())
}

/// The side channel's `(key, epoch ms)` lines.
fn side_channel(path: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (key, at) = l.split_once(' ')?;
            Some((key.to_string(), at.trim().parse().ok()?))
        })
        .collect()
}

/// Jain's fairness index of `x`: (Σx)² / (n·Σx²), 1 when all are equal, 1/n when one has all.
pub fn jain(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().sum();
    let squares: f64 = x.iter().map(|v| v * v).sum();
    if x.is_empty() || squares == 0.0 { 1.0 } else { sum * sum / (x.len() as f64 * squares) }
}

/// One window of the backlogged period: its start and length (ms from the period's start) and
/// the completions of A and B in it.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub start_ms: u64,
    pub len_ms: u64,
    pub a: usize,
    pub b: usize,
}

impl Window {
    pub fn jain(&self) -> f64 {
        jain(&[self.a as f64, self.b as f64])
    }
}

/// The period `[from, to]` cut into windows of `window_ms`: as many whole ones as fit, the
/// remainder added to the last (a short last window would be mostly noise); one window of the
/// whole period when it is shorter than `window_ms`.
pub fn windows(a: &[u64], b: &[u64], from: u64, to: u64, window_ms: u64) -> Vec<Window> {
    let len = to.saturating_sub(from);
    let n = (len / window_ms.max(1)).max(1);
    (0..n)
        .map(|i| {
            let start = from + i * window_ms;
            let end = if i + 1 == n { to } else { start + window_ms };
            // Half-open, but the last one holds the period's last millisecond.
            let inside = |t: &u64| *t >= start && (*t < end || (i + 1 == n && *t == end));
            Window {
                start_ms: start - from,
                len_ms: end - start,
                a: a.iter().filter(|t| inside(t)).count(),
                b: b.iter().filter(|t| inside(t)).count(),
            }
        })
        .collect()
}

fn met(ok: bool) -> &'static str {
    if ok { "" } else { ", MISSED" }
}

fn report(o: &Options, alone: &Outcome, fair: &Outcome, fifo: &Outcome) {
    let secs = |d: Duration| d.as_secs_f64();
    let last = |outcome: &Outcome| outcome.b_last_done().map_or("-".to_string(), |s| format!("{s:.2} s"));
    let (b_alone, b_fair, b_fifo) = (secs(alone.b_succeeded), secs(fair.b_succeeded), secs(fifo.b_succeeded));
    println!();
    println!(
        "fairness (A {} tasks, B {} tasks 1 s later; {} workers × {}, {} ms per task)",
        o.a_tasks, o.b_tasks, o.replicas, o.concurrency, o.sleep_ms
    );
    println!("  {:<36} {b_alone:>8.2} s   (creation -> Succeeded; last task done after {})", "B alone", last(alone));
    println!(
        "  {:<36} {b_fair:>8.2} s   (target: close to B alone; {:.2}× B alone, {:.3}× FIFO; last task done after {})",
        "B with fairness",
        b_fair / b_alone.max(1e-9),
        b_fair / b_fifo.max(1e-9),
        last(fair)
    );
    // FIFO, B's tasks queue behind the A tasks the operator published before them (A publishes
    // as fast as the broker confirms, so not necessarily all of A).
    let fifo_b_first = fifo.times("b").first().copied().unwrap_or(u64::MAX);
    let ahead = fifo.times("a").iter().filter(|t| **t < fifo_b_first).count();
    println!(
        "  {:<36} {b_fifo:>8.2} s   (baseline: B's first task ran after {ahead} of A's {} tasks; last task done after {})",
        "B without fairness (FIFO)",
        o.a_tasks,
        last(fifo)
    );

    // While both are backlogged: while both keys complete tasks, in the fair run (from the later
    // first completion to the earlier last one: B's, unless A ran out first).
    let (a, b) = (fair.times("a"), fair.times("b"));
    let label = "Jain's index while both backlogged";
    let span = match (a.first(), a.last(), b.first(), b.last()) {
        (Some(&a0), Some(&a1), Some(&b0), Some(&b1)) => Some((a0.max(b0), a1.min(b1))).filter(|(from, to)| from < to),
        _ => None,
    };
    match span {
        Some((from, to)) => {
            let windows = windows(&a, &b, from, to, o.window_ms);
            let worst = windows.iter().map(Window::jain).fold(f64::INFINITY, f64::min);
            let mean = windows.iter().map(Window::jain).sum::<f64>() / windows.len() as f64;
            let period = to - from;
            let how = if period < o.window_ms {
                format!("1 window: the whole {period} ms period, shorter than --window-ms {}", o.window_ms)
            } else if windows.len() == 1 {
                format!("1 window of {period} ms")
            } else {
                format!("worst of {} windows of {} ms (the last takes the remainder), mean {mean:.3}", windows.len(), o.window_ms)
            };
            println!("  {label:<36} {worst:>8.3}     (target >= {JAIN_TARGET:.2}{}; {how})", met(worst >= JAIN_TARGET));
            let (in_a, in_b) = (windows.iter().map(|w| w.a).sum::<usize>(), windows.iter().map(|w| w.b).sum::<usize>());
            let per_s = |n: usize| n as f64 * 1_000.0 / period.max(1) as f64;
            println!(
                "  {:<36} {period} ms, from the later first completion to the earlier last one: A {in_a} tasks ({:.0}/s), B {in_b} ({:.0}/s)",
                "  both backlogged",
                per_s(in_a),
                per_s(in_b)
            );
            if windows.len() < 3 {
                let hint = if o.window_ms < 10_000 || period < 20_000 {
                    " (the issue's 10 s windows need a larger --b-tasks, e.g. --b-tasks 8000 --window-ms 10000)"
                } else {
                    ""
                };
                println!("  {:<36} B is only {} tasks, so the index covers few windows{hint}", "", o.b_tasks);
            }
            if windows.len() <= 12 {
                for w in &windows {
                    println!("  {:<36} +{:>6} ms ({:>5} ms): A {:>6}, B {:>6}, J {:.3}", "", w.start_ms, w.len_ms, w.a, w.b, w.jain());
                }
            }
        }
        None => println!(
            "  {label:<36}        -     (target >= {JAIN_TARGET:.2}, not measured: the two keys never completed tasks at the same time \
             — A had {} done, the last at {:+} ms from B's creation, B's first at {:+} ms)",
            a.len(),
            a.last().map_or(0, |t| *t as i64 - fair.b_created_ms as i64),
            b.first().map_or(0, |t| *t as i64 - fair.b_created_ms as i64),
        ),
    }

    match (fair.throughput(), fifo.throughput()) {
        (Some(f), Some(b)) => {
            let ratio = f / b;
            println!(
                "  {:<36} {ratio:>8.3}×    (target >= {THROUGHPUT_TARGET:.2}×{}; fair {f:.0} task/s, FIFO {b:.0} task/s: \
                 every task over A's creation -> last task done)",
                "throughput fair / FIFO",
                met(ratio >= THROUGHPUT_TARGET)
            );
        }
        _ => println!(
            "  {:<36}        -     (target >= {THROUGHPUT_TARGET:.2}×, MISSED: no tasks in the side channel)",
            "throughput fair / FIFO"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jains_index_is_one_for_equal_shares_and_one_over_n_for_one_taker() {
        assert!((jain(&[5.0, 5.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[10.0, 0.0]) - 0.5).abs() < 1e-12);
        assert!((jain(&[3.0, 1.0]) - 0.8).abs() < 1e-12);
        assert_eq!(jain(&[0.0, 0.0]), 1.0);
    }

    #[test]
    fn windows_cover_the_period_and_fold_the_remainder_into_the_last() {
        let a: Vec<u64> = (0..=2_500).step_by(10).collect();
        let b: Vec<u64> = (0..=2_500).step_by(20).collect();
        let w = windows(&a, &b, 0, 2_500, 1_000);
        assert_eq!(w.iter().map(|w| (w.start_ms, w.len_ms)).collect::<Vec<_>>(), [(0, 1_000), (1_000, 1_500)]);
        assert_eq!(w.iter().map(|w| w.a).sum::<usize>(), a.len());
        assert_eq!(w.iter().map(|w| w.b).sum::<usize>(), b.len());
        // Shorter than a window: one window of the whole period.
        let w = windows(&a, &b, 100, 350, 1_000);
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].len_ms, w[0].a, w[0].b), (250, 26, 13));
    }

    #[test]
    fn arguments_parse_with_defaults() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(Command::parse(&[]), Some(Command::Run(Options::default())));
        assert_eq!(
            Command::parse(&args("--a-tasks 300 --b-tasks 20 --sleep-ms 1")),
            Some(Command::Run(Options { a_tasks: 300, b_tasks: 20, sleep_ms: 1, ..Options::default() }))
        );
        assert_eq!(Command::parse(&args("worker --sleep-ms 5")), Some(Command::Worker { sleep_ms: 5 }));
        assert_eq!(Command::parse(&args("--a-tasks")), None);
        assert_eq!(Command::parse(&args("--bogus 1")), None);
        assert_eq!(Command::parse(&args("--replicas 0")), None);
    }
}

//! Cancellation end to end: suspending, resuming and deleting Jobs, `activeDeadlineSeconds` and
//! fail-fast failure policies. Workers drop the queued tasks of a cancelled Job (acknowledged,
//! never run) and cancel its running ones (the command is killed); nothing of other Jobs is
//! touched, and a resume re-enqueues exactly what was dropped.
//!
//! Every handler records markers on the side channel `markers` (`started <job> <index> <pid>`
//! when it starts, `done <job> <index> <pid>` when it succeeds), so the tests count executions
//! directly, not only what the status says. Between the two it waits for the gate
//! `release-<job>`: a test opens it at once for a Job that should just run, later for one it
//! holds.

use std::path::Path;
use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams};
use warren_e2e::Env;
use warren_operator::crd::{Job, JobPhase, JobStatus};
use warren_protocol::names;

const PATIENCE: Duration = Duration::from_secs(120);

/// The side channel the handlers record their markers on.
const MARKERS: &str = "markers";

/// A handler that records its start, waits until the gate `release-<job name>` opens, then
/// records success; `first` runs before all that. A probe that fails fails the task (`set -e`),
/// so a lost marker shows.
/// (`$$$$` because Kubernetes expands `$$` in a container command to `$`: the shell sees `$$`.)
fn marking_handler(first: &str) -> serde_json::Value {
    serde_json::json!([
        "sh",
        "-c",
        format!(
            "set -e; cat >/dev/null; {first} \
         \"$WARREN_E2E_PROBE\" record {MARKERS} started $WARREN_JOB_NAME $WARREN_TASK_INDEX $$$$; \
         \"$WARREN_E2E_PROBE\" wait release-$WARREN_JOB_NAME; \
         \"$WARREN_E2E_PROBE\" record {MARKERS} done $WARREN_JOB_NAME $WARREN_TASK_INDEX $$$$"
        )
    ])
}

/// A pool whose workers run `handler` and reach the side channel.
fn pool_spec(env: &Env, handler: serde_json::Value, replicas: u32, concurrency: u32) -> serde_json::Value {
    serde_json::json!({"workers": {"handler": handler, "env": env.side().pod_env()}, "replicas": replicas, "concurrency": concurrency})
}

/// Lets the tasks of a Job run to the end (those waiting and those still to start).
async fn release(env: &Env, job: &str) -> anyhow::Result<()> {
    env.side().open(&format!("release-{job}")).await
}

/// Markers of one kind (`started`/`done`) of one Job: (index, pid).
async fn markers(env: &Env, kind: &str, job: &str) -> anyhow::Result<Vec<(u32, u32)>> {
    let mut found: Vec<(u32, u32)> = env
        .side()
        .lines(MARKERS)
        .await?
        .iter()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (k, j, index, pid) = (words.next()?, words.next()?, words.next()?, words.next()?);
            (k == kind && j == job).then_some(())?;
            Some((index.parse().ok()?, pid.parse().ok()?))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Waits until `n` markers of a kind are recorded (a task is reported started just before its
/// command runs), then returns them.
async fn wait_markers(env: &Env, kind: &str, job: &str, n: usize) -> anyhow::Result<Vec<(u32, u32)>> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let found = markers(env, kind, job).await?;
        if found.len() >= n {
            return Ok(found);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("only {} {kind} markers of Job {job} after {PATIENCE:?}, expected {n}", found.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// On the local control plane, where the commands are this host's processes: none of
/// `(index, pid)` still exists.
fn assert_commands_gone(running: &[(u32, u32)]) {
    if Env::is_real_cluster() {
        return;
    }
    for (index, pid) in running {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the command of task {index} (pid {pid}) still runs");
    }
}

fn status(job: &Job) -> JobStatus {
    job.status.clone().unwrap_or_default()
}

fn condition<'a>(status: &'a JobStatus, type_: &str) -> Option<(&'a str, &'a str, &'a str)> {
    status.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
}

async fn set_suspend(env: &Env, job: &str, suspend: bool) -> anyhow::Result<()> {
    let patch = serde_json::json!({"spec": {"suspend": suspend}});
    env.jobs().patch(job, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

async fn scale(env: &Env, pool: &str, replicas: u32) -> anyhow::Result<()> {
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    env.pools().patch(pool, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Waits until a queue is empty (messages ready; the drops are acknowledged).
async fn wait_queue_empty(env: &Env, queue: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if env.queue_depth(queue).await? == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("queue {queue} did not drain within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn finished(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|s| s.phase.is_finished())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_job_is_dropped_by_workers_that_start_later_and_runs_once_on_resume() -> anyhow::Result<()> {
    let env = Env::start("suspend-queued").await?;
    release(&env, "batch").await?;
    // No workers yet: the tasks wait in the queue.
    env.create_pool("pool", pool_spec(&env, marking_handler(""), 0, 4)).await?;
    env.create_job("batch", serde_json::json!({"poolRef": "pool", "completions": 20})).await?;
    env.wait_job("batch", PATIENCE, |j| status(j).enqueued == 20).await?;
    set_suspend(&env, "batch", true).await?;
    let job = env.wait_job("batch", PATIENCE, |j| status(j).phase == JobPhase::Suspended).await?;
    let s = status(&job);
    let suspended = condition(&s, "Suspended").expect("Suspended condition");
    assert_eq!((suspended.0, suspended.1), ("True", "JobSuspended"));

    // Workers that start after the suspension drop every task without running it.
    scale(&env, "pool", 1).await?;
    let job = env.wait_job("batch", PATIENCE, |j| status(j).cancelled == 20).await?;
    let s = status(&job);
    assert_eq!((s.phase, s.succeeded, s.failed, s.queued, s.running), (JobPhase::Suspended, 0, 0, 0, 0), "{s:?}");
    assert_eq!(
        condition(&s, "Suspended").map(|c| c.2),
        Some("spec.suspend is true: nothing is enqueued or run; 20 cancelled tasks are re-enqueued on resume")
    );
    wait_queue_empty(&env, &names::work_queue(&env.namespace, "pool", "normal")).await?;
    assert!(markers(&env, "started", "batch").await?.is_empty(), "no task of a suspended Job ran");

    // Resume: exactly the dropped tasks are enqueued again, each runs once.
    set_suspend(&env, "batch", false).await?;
    let job = env.wait_job("batch", PATIENCE, finished).await?;
    let s = status(&job);
    assert_eq!((s.phase, s.succeeded, s.failed, s.cancelled), (JobPhase::Succeeded, 20, 0, 0), "{s:?}");
    assert_eq!(s.succeeded_indexes, "0-19");
    assert_eq!(condition(&s, "Suspended").map(|c| (c.0, c.1)), Some(("False", "JobResumed")));
    let runs: Vec<u32> = markers(&env, "done", "batch").await?.into_iter().map(|(i, _)| i).collect();
    assert_eq!(runs, (0..20).collect::<Vec<_>>(), "every task ran exactly once");
    // `kubectl describe wjob batch` tells the story, once each (created together with its pool,
    // the Job may first have waited for it: Block events, PoolNotFound or PoolNotReady).
    let events = env.wait_events("batch", PATIENCE, |e| e.iter().any(|(_, _, r)| r == "AllTasksSucceeded")).await?;
    let expected = [("Normal", "Suspend", "JobSuspended"), ("Normal", "Resume", "JobResumed"), ("Normal", "Complete", "AllTasksSucceeded")];
    let seen: Vec<(&str, &str, &str)> =
        events.iter().map(|(t, a, r)| (t.as_str(), a.as_str(), r.as_str())).filter(|(_, action, _)| *action != "Block").collect();
    assert_eq!(seen, expected, "{events:?}");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspending_cancels_running_tasks_kills_their_commands_and_leaves_other_jobs_alone() -> anyhow::Result<()> {
    let env = Env::start("suspend-running").await?;
    // Job "long" is held at its gate; "other" runs through.
    release(&env, "other").await?;
    env.create_pool("pool", pool_spec(&env, marking_handler(""), 1, 4)).await?;
    env.create_job("long", serde_json::json!({"poolRef": "pool", "completions": 4})).await?;
    env.wait_job("long", PATIENCE, |j| status(j).running == 4).await?;
    let running = wait_markers(&env, "started", "long", 4).await?;
    assert_eq!(running.len(), 4);

    set_suspend(&env, "long", true).await?;
    let job = env.wait_job("long", PATIENCE, |j| status(j).cancelled == 4).await?;
    let s = status(&job);
    assert_eq!((s.phase, s.running, s.succeeded, s.failed, s.retries), (JobPhase::Suspended, 0, 0, 0, 0), "{s:?}");
    // The commands were killed (and reaped) before the cancellation was reported. (On a real
    // cluster the pids are another machine's; the gate opened below shows it there: a command
    // still alive would go on and record `done`.)
    assert_commands_gone(&running);
    assert!(markers(&env, "done", "long").await?.is_empty());

    // Another Job on the same pool runs while the first stays suspended.
    env.create_job("other", serde_json::json!({"poolRef": "pool", "completions": 6})).await?;
    let other = env.wait_job("other", PATIENCE, finished).await?;
    let o = status(&other);
    assert_eq!((o.phase, o.succeeded, o.cancelled), (JobPhase::Succeeded, 6, 0), "{o:?}");
    let long = env.jobs().get("long").await?;
    assert_eq!((status(&long).phase, status(&long).succeeded), (JobPhase::Suspended, 0));
    assert!(markers(&env, "done", "long").await?.is_empty(), "the suspended Job did not run meanwhile");

    release(&env, "long").await?;
    set_suspend(&env, "long", false).await?;
    let job = env.wait_job("long", PATIENCE, finished).await?;
    let s = status(&job);
    assert_eq!((s.phase, s.succeeded, s.cancelled, s.retries), (JobPhase::Succeeded, 4, 0, 0), "{s:?}");
    assert_eq!(markers(&env, "started", "long").await?.len(), 8, "4 cancelled runs, 4 complete ones");
    let done: Vec<u32> = markers(&env, "done", "long").await?.into_iter().map(|(i, _)| i).collect();
    assert_eq!(done, vec![0, 1, 2, 3]);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_job_drops_its_queued_tasks_and_cancels_its_running_ones() -> anyhow::Result<()> {
    let env = Env::start("delete-job").await?;
    // Job "doomed" is held at its gate; "survivor" runs through.
    release(&env, "survivor").await?;
    env.create_pool("pool", pool_spec(&env, marking_handler(""), 1, 2)).await?;
    env.create_job("doomed", serde_json::json!({"poolRef": "pool", "completions": 12})).await?;
    env.wait_job("doomed", PATIENCE, |j| status(j).running == 2 && status(j).enqueued == 12).await?;
    let running = wait_markers(&env, "started", "doomed", 2).await?;
    assert_eq!(running.len(), 2);

    env.jobs().delete("doomed", &DeleteParams::default()).await?;
    // The running commands are killed; the 10 queued tasks are dropped, not run.
    wait_queue_empty(&env, &names::work_queue(&env.namespace, "pool", "normal")).await?;
    release(&env, "doomed").await?;
    env.create_job("survivor", serde_json::json!({"poolRef": "pool", "completions": 5})).await?;
    let job = env.wait_job("survivor", PATIENCE, finished).await?;
    let s = status(&job);
    assert_eq!((s.phase, s.succeeded, s.cancelled), (JobPhase::Succeeded, 5, 0), "{s:?}");
    assert_commands_gone(&running);
    assert_eq!(markers(&env, "started", "doomed").await?, running, "no further task of the deleted Job started");
    assert!(markers(&env, "done", "doomed").await?.is_empty(), "no task of the deleted Job finished");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_active_deadline_fails_with_deadline_exceeded_and_its_tasks_are_cancelled() -> anyhow::Result<()> {
    let env = Env::start("deadline").await?;
    // Job "slow" is held at its gate until the end (closed here only so that the cleanup knows
    // it: the handlers declare it too); "warm-up" runs through.
    env.side().close("release-slow").await?;
    release(&env, "warm-up").await?;
    env.create_pool("pool", pool_spec(&env, marking_handler(""), 1, 2)).await?;
    // A first Job shows the worker is consuming, so the deadline is spent on the second.
    env.create_job("warm-up", serde_json::json!({"poolRef": "pool"})).await?;
    env.wait_job("warm-up", PATIENCE, finished).await?;
    env.create_job("slow", serde_json::json!({"poolRef": "pool", "completions": 6, "activeDeadlineSeconds": 3})).await?;
    let job = env.wait_job("slow", PATIENCE, finished).await?;
    let s = status(&job);
    assert_eq!((s.phase, s.succeeded, s.failed), (JobPhase::Failed, 0, 0), "{s:?}");
    let failed = condition(&s, "Failed").expect("Failed condition");
    assert_eq!((failed.0, failed.1), ("True", "DeadlineExceeded"));
    assert_eq!(failed.2, "the Job was active longer than activeDeadlineSeconds (3s); its 6 unfinished tasks were cancelled");
    assert!(s.completion_time.is_some());
    // The 2 running tasks are cancelled and the 4 queued ones dropped: all 6 reported.
    let job = env.wait_job("slow", PATIENCE, |j| status(j).cancelled == 6).await?;
    let s = status(&job);
    assert_eq!((s.phase, s.running, s.queued, s.succeeded), (JobPhase::Failed, 0, 0, 0), "{s:?}");
    wait_queue_empty(&env, &names::work_queue(&env.namespace, "pool", "normal")).await?;
    assert!(markers(&env, "started", "slow").await?.len() <= 2, "only the tasks running at the deadline (concurrency 2) started");
    assert!(markers(&env, "done", "slow").await?.is_empty());
    let events = env.wait_events("slow", PATIENCE, |e| !e.is_empty()).await?;
    assert_eq!(events, [("Warning".into(), "Fail".into(), "DeadlineExceeded".into())], "one Warning");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_policy_tolerates_failed_tasks_or_fails_fast() -> anyhow::Result<()> {
    let env = Env::start("failure-policy").await?;
    // Task 2 of every Job fails permanently; the others succeed, or wait at their Job's gate.
    let handler = marking_handler("[ \"$WARREN_TASK_INDEX\" = 2 ] && exit 65;");
    release(&env, "tolerant").await?;
    env.create_pool("pool", pool_spec(&env, handler, 1, 3)).await?;

    // Tolerated: one failure allowed, the Job succeeds and says so.
    env.create_job("tolerant", serde_json::json!({"poolRef": "pool", "completions": 5, "failurePolicy": {"maxFailedTasks": 1}})).await?;
    let job = env.wait_job("tolerant", PATIENCE, finished).await?;
    let s = status(&job);
    assert_eq!((s.phase, s.succeeded, s.failed, s.failed_indexes.as_str()), (JobPhase::Succeeded, 4, 1, "2"), "{s:?}");
    let complete = condition(&s, "Complete").expect("Complete condition");
    assert_eq!((complete.0, complete.1), ("True", "FailuresWithinPolicy"));
    assert_eq!(complete.2, "4 tasks succeeded; 1 failed (indexes 2), within failurePolicy.maxFailedTasks (1)");

    // Fail fast: the first failure exceeds the budget of 0; the tasks held at the gate are
    // cancelled.
    env.create_job(
        "fast",
        serde_json::json!({
            "poolRef": "pool", "completions": 10, "failurePolicy": {"maxFailedTasks": 0, "failFast": true}
        }),
    )
    .await?;
    let job = env.wait_job("fast", PATIENCE, finished).await?;
    let s = status(&job);
    assert_eq!((s.phase, s.failed, s.failed_indexes.as_str(), s.succeeded), (JobPhase::Failed, 1, "2", 0), "{s:?}");
    let failed = condition(&s, "Failed").expect("Failed condition");
    assert_eq!((failed.0, failed.1), ("True", "MaxFailedTasksExceeded"));
    assert_eq!(failed.2, "1 tasks failed, more than failurePolicy.maxFailedTasks (0); its 9 unfinished tasks were cancelled");
    let job = env.wait_job("fast", PATIENCE, |j| status(j).cancelled == 9).await?;
    assert_eq!((status(&job).running, status(&job).succeeded), (0, 0));
    release(&env, "fast").await?;
    wait_queue_empty(&env, &names::work_queue(&env.namespace, "pool", "normal")).await?;
    assert!(markers(&env, "done", "fast").await?.is_empty(), "no task of the failed Job ran to the end");
    assert_eq!(env.jobs().get("fast").await?.status.map(|s| s.succeeded), Some(0));
    env.cleanup().await
}

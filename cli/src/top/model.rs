//! What `warren top` shows, as plain data: a [`Snapshot`] built from lists of API objects (and
//! optional samples of the operator's metrics), and the [`Trends`] that two or more snapshots
//! give (rates, ETAs, backlog history), kept by [`History`].
//!
//! Owns: which field of which status each number comes from, and the arithmetic of rates and
//! ETAs. Must not: talk to the API or the network, read a clock (the caller passes `at`), draw.

use std::collections::{BTreeMap, VecDeque};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use warren_operator::crd::{AttemptOutcome, Job, StepPhase, WorkerPool, Workflow};

/// Seconds over which rates are measured: long enough to smooth the operator's once-a-second
/// status writes, short enough to follow a change of pace.
pub const RATE_WINDOW_SECONDS: f64 = 30.0;
/// Backlog samples kept per pool for its sparkline.
pub const BACKLOG_HISTORY: usize = 120;
/// Failed attempts shown in a Job's detail.
pub const LAST_ERRORS: usize = 5;

/// Which namespaces are shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Namespace(String),
}

impl Scope {
    pub fn label(&self) -> String {
        match self {
            Scope::All => "all namespaces".into(),
            Scope::Namespace(ns) => format!("namespace {ns}"),
        }
    }
}

/// `namespace/name`: how pools, Jobs and Workflows are told apart across samples.
pub type Key = (String, String);

/// One condition, as shown.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cond {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

impl From<&Condition> for Cond {
    fn from(c: &Condition) -> Self {
        Cond { type_: c.type_.clone(), status: c.status.clone(), reason: c.reason.clone(), message: c.message.clone() }
    }
}

/// Samples of the operator's `/metrics` (Prometheus text exposition).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    series: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    /// Parses the text exposition format; lines it does not understand are skipped.
    pub fn parse(text: &str) -> Metrics {
        let series = text.lines().filter_map(parse_sample).collect();
        Metrics { series }
    }

    /// Sum of the series `name` whose labels include all of `labels`; `None` when none does.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for (n, l, v) in &self.series {
            if n == name && labels.iter().all(|(k, want)| l.get(*k).is_some_and(|have| have == want)) {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }
}

fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let close = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i,
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        };
        rest = &body[close + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

/// What the metrics endpoint gave.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum MetricsState {
    /// No `--metrics-url`.
    #[default]
    Off,
    /// Asked and not answered (the message says why); the view goes on from the API alone.
    Unreachable(String),
    Sampled(Metrics),
}

impl MetricsState {
    fn sampled(&self) -> Option<&Metrics> {
        match self {
            MetricsState::Sampled(m) => Some(m),
            _ => None,
        }
    }
}

/// Where a pool's backlog numbers come from, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BacklogSource {
    /// `status.autoscaling.backlogByPriority`: the autoscaler's passive declares.
    Autoscaler,
    /// `warren_operator_queue_ready_messages`.
    Metrics,
    /// The sum of the pool's Jobs' `status.queued` (an estimate: no queue was asked).
    Jobs,
}

/// A WorkerPool, as shown.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolView {
    pub namespace: String,
    pub name: String,
    pub ready: Option<Cond>,
    pub replicas: i32,
    pub ready_replicas: i32,
    pub desired: i32,
    /// Ready tasks per priority class, highest first.
    pub backlog: Vec<(String, i64)>,
    pub backlog_source: BacklogSource,
    pub in_flight: i64,
    /// Tasks per second published to / finished by the pool, as the autoscaler measured them.
    pub arrival_rate: Option<f64>,
    pub completion_rate: Option<f64>,
    /// Messages in the dead-letter queue (metrics), or the sum of its Jobs' `deadLettered`.
    pub dead_letters: i64,
    /// Counters from the metrics (tasks published; tasks finished for good), for rates.
    pub published_total: Option<f64>,
    pub finished_total: Option<f64>,
    /// Sums over the pool's Jobs (enqueued; finished), the rates' last resort.
    pub jobs_enqueued: u64,
    pub jobs_finished: u64,
}

impl PoolView {
    pub fn key(&self) -> Key {
        (self.namespace.clone(), self.name.clone())
    }

    pub fn backlog_total(&self) -> i64 {
        self.backlog.iter().map(|(_, n)| n).sum()
    }
}

/// A Job, as shown.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobView {
    pub namespace: String,
    pub name: String,
    pub pool: String,
    pub priority: String,
    pub phase: String,
    pub finished: bool,
    pub total: u64,
    pub enqueued: u64,
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub retries: u64,
    pub dead_lettered: u64,
    pub cancelled: u64,
    /// 0–100: the handler's own for a single task, else the share of finished tasks.
    pub percent: u8,
    pub progress_message: Option<String>,
    /// Why it waits: `status.waiting`, else its `Ready=False` condition (`PoolNotReady: …`,
    /// `DelayedUntil: …`).
    pub waiting: Option<String>,
    pub failed_indexes: String,
    /// The last failed attempts the Job keeps (`status.recentAttempts`), oldest first, one line
    /// each: index, attempt, outcome and the first line of the error.
    pub last_errors: Vec<String>,
    pub conditions: Vec<Cond>,
    /// Why it ended early (deadline, failure budget), or lost tasks the operator noticed.
    pub notes: Vec<String>,
}

impl JobView {
    pub fn key(&self) -> Key {
        (self.namespace.clone(), self.name.clone())
    }

    /// Tasks that finished (succeeded or failed for good).
    pub fn done(&self) -> u64 {
        self.succeeded + self.failed
    }
}

/// One step of a Workflow.
#[derive(Clone, Debug, PartialEq)]
pub struct StepView {
    pub name: String,
    pub phase: StepPhase,
    pub message: Option<String>,
}

/// A Workflow, as shown.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowView {
    pub namespace: String,
    pub name: String,
    pub phase: String,
    /// `finished/total` steps.
    pub progress: String,
    /// In spec order; `finally` last when due.
    pub steps: Vec<StepView>,
    pub message: Option<String>,
}

/// Everything one look at the API (and the metrics) showed.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Seconds on the caller's monotonic clock.
    pub at: f64,
    pub scope: Scope,
    /// `Some(false)`: the namespace asked for does not exist (`None`: not asked or unknown).
    pub namespace_exists: Option<bool>,
    pub pools: Vec<PoolView>,
    pub jobs: Vec<JobView>,
    pub workflows: Vec<WorkflowView>,
    /// Objects listed that did not deserialize as their kind (skipped, counted).
    pub unreadable: usize,
    pub metrics: MetricsState,
}

fn phase_name<T: serde::Serialize>(phase: &T) -> String {
    serde_json::to_value(phase).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// A Job's view from its status alone.
pub fn job_view(job: &Job) -> JobView {
    let status = job.status.clone().unwrap_or_default();
    let total = if status.total > 0 { u64::from(status.total) } else { u64::from(job.task_count()) };
    let done = u64::from(status.succeeded) + u64::from(status.failed);
    let percent = match &status.progress {
        Some(p) => p.percent.min(100),
        None if total > 0 => (done.min(total) * 100 / total) as u8,
        None => 0,
    };
    let finished = status.phase.is_finished();
    // The operator's own account of why tasks wait (`status.waiting`), else the Ready=False
    // condition (a Job that was never accepted: PoolNotFound, InvalidSpec, DelayedUntil, …).
    let waiting = if finished {
        None
    } else if let Some(w) = &status.waiting {
        let ahead = w.tasks_ahead.map(|n| format!(" ({n} task(s) ahead)")).unwrap_or_default();
        Some(format!("{}{ahead}", join_reason(&w.reason, &w.message)))
    } else {
        status.conditions.iter().find(|c| c.type_ == "Ready" && c.status == "False").map(|c| join_reason(&c.reason, &c.message))
    };
    let last_errors = status
        .recent_attempts
        .iter()
        .filter(|a| a.outcome != AttemptOutcome::Succeeded)
        .map(|a| {
            let error = a.error.as_deref().unwrap_or_default();
            // The first line says what failed; a command's stderr follows it.
            let first = error.lines().find(|l| !l.trim().is_empty()).unwrap_or("(no message)");
            format!("index {} attempt {} {}: {first}", a.index, a.attempt, phase_name(&a.outcome))
        })
        .collect::<Vec<_>>();
    let last_errors = last_errors[last_errors.len().saturating_sub(LAST_ERRORS)..].to_vec();
    let mut notes = Vec::new();
    if let Some(ledger) = &status.ledger {
        if let Some(t) = &ledger.terminated {
            notes.push(join_reason(&t.reason, &t.message));
        }
        if let Some(lost) = &ledger.lost {
            notes.push(format!("TasksLost: {} task(s) missing from the broker, {} requeued", lost.missing, lost.requeued));
        }
    }
    JobView {
        namespace: job.metadata.namespace.clone().unwrap_or_default(),
        name: job.metadata.name.clone().unwrap_or_default(),
        pool: job.spec.pool_ref.clone(),
        priority: job.spec.priority.clone(),
        phase: phase_name(&status.phase),
        finished,
        total,
        enqueued: u64::from(status.enqueued),
        queued: u64::from(status.queued),
        running: u64::from(status.running),
        succeeded: u64::from(status.succeeded),
        failed: u64::from(status.failed),
        retries: status.retries,
        dead_lettered: u64::from(status.dead_lettered),
        cancelled: u64::from(status.cancelled),
        percent,
        progress_message: status.progress.and_then(|p| p.message),
        waiting,
        failed_indexes: status.failed_indexes,
        last_errors,
        conditions: status.conditions.iter().map(Cond::from).collect(),
        notes,
    }
}

fn join_reason(reason: &str, message: &str) -> String {
    match (reason.is_empty(), message.is_empty()) {
        (false, false) => format!("{reason}: {message}"),
        (false, true) => reason.to_string(),
        _ => message.to_string(),
    }
}

/// A pool's view from its status, its Jobs' views, and the metrics when sampled.
pub fn pool_view(pool: &WorkerPool, jobs: &[JobView], metrics: Option<&Metrics>) -> PoolView {
    let status = pool.status.clone().unwrap_or_default();
    let namespace = pool.metadata.namespace.clone().unwrap_or_default();
    let name = pool.metadata.name.clone().unwrap_or_default();
    let own: Vec<&JobView> = jobs.iter().filter(|j| j.namespace == namespace && j.pool == name).collect();
    let labels = [("namespace", namespace.as_str()), ("pool", name.as_str())];
    let autoscaling = status.autoscaling.as_ref();
    let priorities = &pool.spec.priorities;

    let from_metrics = metrics.and_then(|m| {
        m.sum("warren_operator_queue_ready_messages", &labels)?;
        Some(
            priorities
                .iter()
                .map(|p| {
                    let mut with_priority = labels.to_vec();
                    with_priority.push(("priority", p));
                    (p.clone(), m.sum("warren_operator_queue_ready_messages", &with_priority).unwrap_or(0.0) as i64)
                })
                .collect::<Vec<_>>(),
        )
    });
    let (backlog, backlog_source) = match (autoscaling, from_metrics) {
        (Some(a), _) if !a.backlog_by_priority.is_empty() => {
            (a.backlog_by_priority.iter().map(|b| (b.priority.clone(), b.ready)).collect(), BacklogSource::Autoscaler)
        }
        (_, Some(by_priority)) => (by_priority, BacklogSource::Metrics),
        _ => {
            let by_priority = priorities
                .iter()
                .map(|p| (p.clone(), own.iter().filter(|j| &j.priority == p && !j.finished).map(|j| j.queued as i64).sum()))
                .collect();
            (by_priority, BacklogSource::Jobs)
        }
    };
    let in_flight = autoscaling
        .map(|a| a.in_flight)
        .or_else(|| metrics.and_then(|m| m.sum("warren_operator_tasks_in_flight", &labels)).map(|v| v as i64))
        .unwrap_or_else(|| own.iter().filter(|j| !j.finished).map(|j| j.running as i64).sum());
    let dead_letters = metrics
        .and_then(|m| m.sum("warren_operator_dead_letter_messages", &labels))
        .map(|v| v as i64)
        .unwrap_or_else(|| own.iter().map(|j| j.dead_lettered as i64).sum());
    let rate = |r: Option<&String>| r.and_then(|s| s.trim().parse::<f64>().ok()).filter(|r| r.is_finite() && *r >= 0.0);
    let finished_total = metrics.and_then(|m| {
        let succeeded = m.sum("warren_operator_tasks_succeeded_total", &labels)?;
        Some(succeeded + m.sum("warren_operator_tasks_dead_lettered_total", &labels).unwrap_or(0.0))
    });
    PoolView {
        ready: status.conditions.iter().find(|c| c.type_ == "Ready").map(Cond::from),
        replicas: status.replicas,
        ready_replicas: status.ready_replicas,
        desired: status.desired_replicas.unwrap_or(if pool.spec.autoscaling.is_some() { status.replicas } else { pool.spec.replicas }),
        backlog,
        backlog_source,
        in_flight,
        arrival_rate: rate(autoscaling.and_then(|a| a.arrival_rate.as_ref())),
        completion_rate: rate(autoscaling.and_then(|a| a.completion_rate.as_ref())),
        dead_letters,
        published_total: metrics.and_then(|m| m.sum("warren_operator_tasks_published_total", &labels)),
        finished_total,
        jobs_enqueued: own.iter().map(|j| j.enqueued).sum(),
        jobs_finished: own.iter().map(|j| j.done()).sum(),
        namespace,
        name,
    }
}

/// A Workflow's view: its steps in spec order with their status.
pub fn workflow_view(wf: &Workflow) -> WorkflowView {
    let status = wf.status.clone().unwrap_or_default();
    let mut steps: Vec<StepView> = wf
        .spec
        .steps
        .iter()
        .map(|s| {
            let st = status.steps.get(&s.name);
            StepView { name: s.name.clone(), phase: st.map(|s| s.phase).unwrap_or_default(), message: st.and_then(|s| s.message.clone()) }
        })
        .collect();
    if let Some(f) = &status.finally {
        steps.push(StepView { name: "finally".into(), phase: f.phase, message: f.message.clone() });
    }
    let finished = steps.iter().filter(|s| s.phase.is_finished()).count();
    WorkflowView {
        namespace: wf.metadata.namespace.clone().unwrap_or_default(),
        name: wf.metadata.name.clone().unwrap_or_default(),
        phase: phase_name(&status.phase),
        progress: status.progress.clone().unwrap_or_else(|| format!("{finished}/{}", wf.spec.steps.len())),
        steps,
        message: status.message.clone(),
    }
}

impl Snapshot {
    /// The view of what was listed, sorted by namespace and name.
    pub fn build(at: f64, scope: Scope, pools: &[WorkerPool], jobs: &[Job], workflows: &[Workflow], metrics: MetricsState) -> Snapshot {
        let mut jobs: Vec<JobView> = jobs.iter().map(job_view).collect();
        jobs.sort_by_key(JobView::key);
        let mut pools: Vec<PoolView> = pools.iter().map(|p| pool_view(p, &jobs, metrics.sampled())).collect();
        pools.sort_by_key(PoolView::key);
        let mut workflows: Vec<WorkflowView> = workflows.iter().map(workflow_view).collect();
        workflows.sort_by_key(|w| (w.namespace.clone(), w.name.clone()));
        Snapshot { at, scope, namespace_exists: None, pools, jobs, workflows, unreadable: 0, metrics }
    }

    pub fn is_empty(&self) -> bool {
        self.pools.is_empty() && self.jobs.is_empty() && self.workflows.is_empty()
    }
}

/// Tasks per second between two samples `(at, count)` of a growing count; `None` without time
/// between them or when the count went down (a reset: a restarted operator, a deleted Job).
pub fn rate(first: (f64, f64), last: (f64, f64)) -> Option<f64> {
    let dt = last.0 - first.0;
    let dv = last.1 - first.1;
    (dt > 0.0 && dv >= 0.0).then(|| dv / dt)
}

/// Seconds until `remaining` tasks are done at `rate` per second; `None` when nothing moves.
pub fn eta(remaining: u64, rate: Option<f64>) -> Option<f64> {
    match rate {
        _ if remaining == 0 => Some(0.0),
        Some(r) if r > 0.0 => Some(remaining as f64 / r),
        _ => None,
    }
}

/// The rate over the samples of the window: from the oldest to the newest.
fn window_rate(samples: &VecDeque<(f64, f64)>) -> Option<f64> {
    rate(*samples.front()?, *samples.back()?)
}

/// What a Job's successive samples tell.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobTrend {
    /// Tasks finished per second.
    pub rate: Option<f64>,
    /// Seconds until the last task finishes at that rate.
    pub eta: Option<f64>,
}

/// What a pool's successive samples tell.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolTrend {
    /// Tasks per second published to the pool.
    pub arrival: Option<f64>,
    /// Tasks per second finished by the pool.
    pub completion: Option<f64>,
    /// Total backlog per sample, oldest first.
    pub backlog: Vec<u64>,
}

/// Rates, ETAs and backlog histories of one moment, by object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trends {
    pub jobs: BTreeMap<Key, JobTrend>,
    pub pools: BTreeMap<Key, PoolTrend>,
}

#[derive(Clone, Debug, Default)]
struct PoolSamples {
    backlog: VecDeque<u64>,
    published: VecDeque<(f64, f64)>,
    finished: VecDeque<(f64, f64)>,
    jobs_enqueued: VecDeque<(f64, f64)>,
    jobs_finished: VecDeque<(f64, f64)>,
}

/// The samples `warren top` has taken so far, per object: what rates and sparklines are made of.
#[derive(Clone, Debug, Default)]
pub struct History {
    jobs: BTreeMap<Key, VecDeque<(f64, f64)>>,
    pools: BTreeMap<Key, PoolSamples>,
}

fn push_windowed(samples: &mut VecDeque<(f64, f64)>, sample: (f64, f64)) {
    // A count that went down starts over: the rate is measured from there.
    if samples.back().is_some_and(|last| sample.1 < last.1) {
        samples.clear();
    }
    samples.push_back(sample);
    while samples.len() > 2 && samples.front().is_some_and(|first| sample.0 - first.0 > RATE_WINDOW_SECONDS) {
        samples.pop_front();
    }
}

impl History {
    /// Records `snapshot` and returns the trends it gives with the samples before it. Objects no
    /// longer listed are forgotten (a namespace filter change starts their history over).
    pub fn observe(&mut self, snapshot: &Snapshot) -> Trends {
        let at = snapshot.at;
        let mut trends = Trends::default();
        self.jobs.retain(|k, _| snapshot.jobs.iter().any(|j| &j.key() == k));
        for job in &snapshot.jobs {
            let samples = self.jobs.entry(job.key()).or_default();
            push_windowed(samples, (at, job.done() as f64));
            let rate = if job.finished { None } else { window_rate(samples) };
            let eta = if job.finished { None } else { eta(job.total.saturating_sub(job.done()), rate) };
            trends.jobs.insert(job.key(), JobTrend { rate, eta });
        }
        self.pools.retain(|k, _| snapshot.pools.iter().any(|p| &p.key() == k));
        for pool in &snapshot.pools {
            let s = self.pools.entry(pool.key()).or_default();
            s.backlog.push_back(pool.backlog_total().max(0) as u64);
            while s.backlog.len() > BACKLOG_HISTORY {
                s.backlog.pop_front();
            }
            for (samples, value) in [(&mut s.published, pool.published_total), (&mut s.finished, pool.finished_total)] {
                match value {
                    Some(v) => push_windowed(samples, (at, v)),
                    None => samples.clear(),
                }
            }
            push_windowed(&mut s.jobs_enqueued, (at, pool.jobs_enqueued as f64));
            push_windowed(&mut s.jobs_finished, (at, pool.jobs_finished as f64));
            // The autoscaler's own measure first, then the operator's counters, then the Jobs.
            let arrival = pool.arrival_rate.or_else(|| window_rate(&s.published)).or_else(|| window_rate(&s.jobs_enqueued));
            let completion = pool.completion_rate.or_else(|| window_rate(&s.finished)).or_else(|| window_rate(&s.jobs_finished));
            trends.pools.insert(pool.key(), PoolTrend { arrival, completion, backlog: s.backlog.iter().copied().collect() });
        }
        trends
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, status: serde_json::Value) -> Job {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "Job",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"poolRef": "pool", "completions": 100}, "status": status,
        }))
        .unwrap()
    }

    fn pool(status: serde_json::Value) -> WorkerPool {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": "pool", "namespace": "ns"},
            "spec": {"workers": {"handler": ["true"]}, "priorities": ["high", "normal"]}, "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn rates_and_etas_come_from_two_samples() {
        for (first, last, want) in [
            ((0.0, 0.0), (10.0, 50.0), Some(5.0)),
            ((0.0, 10.0), (2.0, 10.0), Some(0.0)),
            ((5.0, 0.0), (5.0, 10.0), None),
            ((0.0, 10.0), (1.0, 3.0), None),
            ((3.0, 0.0), (1.0, 10.0), None),
        ] {
            assert_eq!(rate(first, last), want, "{first:?} → {last:?}");
        }
        for (remaining, r, want) in
            [(100, Some(5.0), Some(20.0)), (0, None, Some(0.0)), (10, Some(0.0), None), (10, None, None), (1, Some(4.0), Some(0.25))]
        {
            assert_eq!(eta(remaining, r), want, "{remaining} at {r:?}");
        }
    }

    #[test]
    fn a_job_view_takes_counts_progress_and_why_it_waits_from_its_status() {
        let running = job_view(&job(
            "a",
            serde_json::json!({"phase": "Running", "total": 100, "enqueued": 100, "succeeded": 48, "failed": 2,
                "retries": 7, "deadLettered": 2, "failedIndexes": "3,9"}),
        ));
        assert_eq!((running.done(), running.percent, running.retries, running.dead_lettered), (50, 50, 7, 2));
        assert_eq!((running.phase.as_str(), running.failed_indexes.as_str(), running.waiting.as_ref()), ("Running", "3,9", None));

        let waiting = job_view(&job(
            "b",
            serde_json::json!({"phase": "Pending", "conditions": [{"type": "Ready", "status": "False", "reason": "DelayedUntil",
                "message": "starts at 2026-12-07T02:00:00Z", "lastTransitionTime": "2026-12-07T01:00:00Z"}]}),
        ));
        assert_eq!(waiting.waiting.as_deref(), Some("DelayedUntil: starts at 2026-12-07T02:00:00Z"));
        assert_eq!(waiting.total, 100, "the spec's count before the operator wrote one");

        let behind = job_view(&job(
            "e",
            serde_json::json!({"phase": "Queued", "waiting": {"reason": "BehindHigherPriority", "message": "300 high tasks first",
                "tasksAhead": 300, "since": "2026-12-07T01:00:00Z"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "Enqueued", "message": "", "lastTransitionTime": "2026-12-07T01:00:00Z"}],
                "recentAttempts": [
                    {"index": 3, "attempt": 1, "outcome": "Retrying", "error": "\nexit 1: boom\nstderr: trace"},
                    {"index": 4, "attempt": 1, "outcome": "Succeeded", "output": "ok"},
                    {"index": 3, "attempt": 2, "outcome": "DeadLettered"}]}),
        ));
        assert_eq!(behind.waiting.as_deref(), Some("BehindHigherPriority: 300 high tasks first (300 task(s) ahead)"));
        assert_eq!(
            behind.last_errors,
            vec!["index 3 attempt 1 Retrying: exit 1: boom", "index 3 attempt 2 DeadLettered: (no message)"],
            "failed attempts only, the first line of each error"
        );
        let one_task = job_view(&job("c", serde_json::json!({"phase": "Running", "total": 1, "progress": {"percent": 30}})));
        assert_eq!(one_task.percent, 30, "a single task's own progress");
        let no_status = job_view(&job("d", serde_json::Value::Null));
        assert_eq!((no_status.phase.as_str(), no_status.percent), ("Pending", 0));
    }

    #[test]
    fn a_pool_backlog_comes_from_the_autoscaler_then_the_metrics_then_its_jobs() {
        let jobs = vec![JobView {
            namespace: "ns".into(),
            pool: "pool".into(),
            priority: "normal".into(),
            queued: 40,
            running: 3,
            dead_lettered: 1,
            ..JobView::default()
        }];
        let metrics = Metrics::parse(
            "# TYPE warren_operator_queue_ready_messages gauge\n\
             warren_operator_queue_ready_messages{namespace=\"ns\",pool=\"pool\",priority=\"high\"} 5\n\
             warren_operator_queue_ready_messages{namespace=\"ns\",pool=\"pool\",priority=\"normal\"} 38\n\
             warren_operator_queue_ready_messages{namespace=\"other\",pool=\"pool\",priority=\"normal\"} 1000\n\
             warren_operator_dead_letter_messages{namespace=\"ns\",pool=\"pool\"} 4\n",
        );
        let autoscaled = pool(serde_json::json!({"replicas": 2, "desiredReplicas": 4, "autoscaling": {"backlog": 12,
            "backlogByPriority": [{"priority": "high", "ready": 2}, {"priority": "normal", "ready": 10}], "inFlight": 8,
            "arrivalRate": "12.5", "completionRate": "bad"}}));
        for (p, metrics, backlog, source, in_flight, dead) in [
            (&autoscaled, Some(&metrics), vec![2, 10], BacklogSource::Autoscaler, 8, 4),
            (&pool(serde_json::json!({"replicas": 1})), Some(&metrics), vec![5, 38], BacklogSource::Metrics, 3, 4),
            (&pool(serde_json::json!({"replicas": 1})), None, vec![0, 40], BacklogSource::Jobs, 3, 1),
        ] {
            let view = pool_view(p, &jobs, metrics);
            assert_eq!(view.backlog.iter().map(|b| b.1).collect::<Vec<_>>(), backlog, "{source:?}");
            assert_eq!((view.backlog_source, view.in_flight, view.dead_letters), (source, in_flight, dead));
        }
        let view = pool_view(&autoscaled, &jobs, None);
        assert_eq!((view.replicas, view.desired, view.arrival_rate, view.completion_rate), (2, 4, Some(12.5), None));
    }

    #[test]
    fn the_exposition_format_is_parsed_with_its_escapes() {
        let m = Metrics::parse(
            "a_total 3\n\
             a_total{x=\"1\"} 4 1700000000\n\
             b{x=\"q\\\"uote\",y=\"z\"} +Inf\n\
             # HELP c ignored\n\
             garbage\n",
        );
        assert_eq!(m.sum("a_total", &[]), Some(7.0));
        assert_eq!(m.sum("a_total", &[("x", "1")]), Some(4.0));
        assert_eq!(m.sum("b", &[("x", "q\"uote")]), Some(f64::INFINITY));
        assert_eq!(m.sum("c", &[]), None);
    }

    #[test]
    fn history_gives_rates_etas_and_a_backlog_series() {
        let mut history = History::default();
        let snap = |at: f64, succeeded: u32, ready: i64| {
            let status = serde_json::json!({"phase": "Running", "total": 100, "enqueued": 100, "succeeded": succeeded});
            let backlog = serde_json::json!({"autoscaling": {"backlogByPriority": [{"priority": "normal", "ready": ready}]}});
            Snapshot::build(at, Scope::All, &[pool(backlog)], &[job("a", status)], &[], MetricsState::Off)
        };
        let key = ("ns".to_string(), "a".to_string());
        let first = history.observe(&snap(0.0, 0, 100));
        assert_eq!(first.jobs[&key], JobTrend { rate: None, eta: None }, "one sample: no rate yet");
        history.observe(&snap(1.0, 10, 90));
        let third = history.observe(&snap(2.0, 20, 80));
        assert_eq!(third.jobs[&key], JobTrend { rate: Some(10.0), eta: Some(8.0) });
        let pool = &third.pools[&("ns".to_string(), "pool".to_string())];
        assert_eq!(pool.backlog, vec![100, 90, 80]);
        assert_eq!(pool.completion, Some(10.0), "from the Jobs when neither the autoscaler nor the metrics tell");
        // Samples older than the window do not count.
        let later = history.observe(&snap(2.0 + RATE_WINDOW_SECONDS, 80, 20));
        assert_eq!(later.jobs[&key].rate.map(|r| (r * 100.0).round() / 100.0), Some(2.0));
        // A Job that went away and came back starts over.
        history.observe(&Snapshot::build(100.0, Scope::All, &[], &[], &[], MetricsState::Off));
        assert_eq!(history.observe(&snap(101.0, 90, 0)).jobs[&key].rate, None);
    }
}

//! What a Schedule does now: which slots fire, which are skipped or missed, which runs are
//! cancelled or deleted as history, and when to look again. Pure: the runs, the time and when
//! this operator started leading are arguments.
//!
//! Exactly once: a run's name is derived from its slot ([`run_name`]), so creating it twice
//! (two leaders, a restart before the status write) is refused by the API server, and slots up
//! to the newest run's are never looked at again even when the status write was lost.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::crd::{CatchupPolicy, ConcurrencyPolicy, Job, JobPhase, Schedule, Workflow, WorkflowPhase};

/// Label on every run: the schedule's name prefix ([`name_prefix`], at most 52 characters).
pub const SCHEDULE_LABEL: &str = "warren.dev/schedule";
/// Annotation on every run: its slot, RFC 3339.
pub const SCHEDULED_TIME_ANNOTATION: &str = "warren.dev/scheduled-time";
/// Default of `catchup.maxRuns`.
pub const DEFAULT_MAX_RUNS: u32 = 10;
/// Longest sleep between two looks (a yearly schedule still re-checks its clock hourly).
pub const MAX_WAKE: Duration = Duration::from_secs(3600);
/// Slots one look enumerates at most; beyond, missed slots are counted, not listed.
const MAX_ENUMERATED: u64 = 100_000;
/// Longest name of a run; a Kubernetes label value and DNS label limit.
const MAX_NAME: usize = 63;

/// Why a schedule is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("schedule {expr:?} does not parse: {problem}")]
    Schedule { expr: String, problem: String },
    #[error("unknown time zone {zone:?}: {problem}")]
    TimeZone { zone: String, problem: String },
}

impl Invalid {
    pub fn reason(&self) -> &'static str {
        match self {
            Invalid::Schedule { .. } => "InvalidSchedule",
            Invalid::TimeZone { .. } => "UnknownTimeZone",
        }
    }
}

/// A parsed `spec.schedule` with its time zone.
#[derive(Clone, Debug)]
pub enum Cadence {
    Cron {
        cron: Box<croner::Cron>,
        zone: jiff::tz::TimeZone,
    },
    /// `@every`: the multiples of this many seconds since the Unix epoch.
    Every {
        seconds: i64,
    },
}

/// Parses `spec.schedule` and `spec.timeZone`.
pub fn cadence(expr: &str, time_zone: Option<&str>) -> Result<Cadence, Invalid> {
    let invalid = |problem: String| Invalid::Schedule { expr: expr.to_string(), problem };
    let trimmed = expr.trim();
    if let Some(every) = trimmed.strip_prefix("@every") {
        let every = every.trim();
        let duration: SignedDuration = every.parse().map_err(|e: jiff::Error| invalid(format!("{every:?} is not a duration ({e})")))?;
        if duration < SignedDuration::from_secs(1) {
            return Err(invalid(format!("@every needs at least 1s, got {every}")));
        }
        if duration.subsec_nanos() != 0 {
            return Err(invalid(format!("@every needs whole seconds, got {every}")));
        }
        return Ok(Cadence::Every { seconds: duration.as_secs() });
    }
    let zone_name = time_zone.unwrap_or("UTC");
    let zone = jiff::tz::TimeZone::get(zone_name).map_err(|e| Invalid::TimeZone { zone: zone_name.to_string(), problem: e.to_string() })?;
    let pattern = if trimmed.eq_ignore_ascii_case("@midnight") { "@daily" } else { trimmed };
    if !pattern.starts_with('@') && pattern.split_whitespace().count() != 5 {
        return Err(invalid(format!(
            "want 5 fields (minute hour day-of-month month day-of-week), got {}",
            pattern.split_whitespace().count()
        )));
    }
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(pattern)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(Cadence::Cron { cron: Box::new(cron), zone })
}

impl Cadence {
    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        match self {
            Cadence::Every { seconds } => Timestamp::from_second((t.as_second().div_euclid(*seconds) + 1) * seconds).ok(),
            Cadence::Cron { cron, zone } => cron.find_next_occurrence(&t.to_zoned(zone.clone()), false).ok().map(|z| z.timestamp()),
        }
    }

    /// The slots in `(after, until]`: how many, and the latest `keep` of them, oldest first.
    pub fn slots(&self, after: Timestamp, until: Timestamp, keep: usize) -> Slots {
        let mut slots = Slots::default();
        if until <= after {
            return slots;
        }
        match self {
            Cadence::Every { seconds } => {
                let first = after.as_second().div_euclid(*seconds) + 1;
                let last = until.as_second().div_euclid(*seconds);
                if last >= first {
                    slots.total = (last - first + 1) as u64;
                    let from = (last - keep as i64 + 1).max(first);
                    slots.latest = (from..=last).filter_map(|k| Timestamp::from_second(k * seconds).ok()).collect();
                }
            }
            Cadence::Cron { .. } => {
                let mut latest = std::collections::VecDeque::with_capacity(keep + 1);
                let mut push = |slot: Timestamp| {
                    latest.push_back(slot);
                    if latest.len() > keep {
                        latest.pop_front();
                    }
                };
                let mut at = after;
                while let Some(next) = self.next_after(at).filter(|n| *n <= until) {
                    slots.total += 1;
                    push(next);
                    if slots.total >= MAX_ENUMERATED {
                        // Far behind (a minutely schedule down for months): the rest are counted
                        // as one more missed slot, and the latest slot is the one that is due.
                        if let Some(last) = self.latest_at_or_before(until)
                            && last > next
                        {
                            slots.total += 1;
                            push(last);
                        }
                        break;
                    }
                    at = next;
                }
                slots.latest = latest.into();
            }
        }
        slots
    }

    fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        match self {
            Cadence::Every { seconds } => Timestamp::from_second(t.as_second().div_euclid(*seconds) * seconds).ok(),
            Cadence::Cron { cron, zone } => cron.find_previous_occurrence(&t.to_zoned(zone.clone()), true).ok().map(|z| z.timestamp()),
        }
    }
}

/// Slots due in an interval.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Slots {
    /// How many (at least: see `MAX_ENUMERATED`).
    pub total: u64,
    /// The latest of them, oldest first.
    pub latest: Vec<Timestamp>,
}

/// The part of a run's name before its slot: the schedule's name, or (past 52 characters) its
/// first 43 and a hash of the whole, so that `<prefix>-<10-digit seconds>` fits in 63.
pub fn name_prefix(schedule: &str) -> String {
    const ROOM: usize = MAX_NAME - 11;
    if schedule.len() <= ROOM {
        return schedule.to_string();
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(schedule.as_bytes());
    let cut: String = schedule.chars().take(ROOM - 9).collect();
    format!("{}-{}", cut.trim_end_matches('-'), &hex::encode(digest)[..8])
}

/// The name of the run of `slot`: `<prefix>-<unix seconds>`.
pub fn run_name(schedule: &str, slot: Timestamp) -> String {
    format!("{}-{}", name_prefix(schedule), slot.as_second())
}

/// How a run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Active,
    Succeeded,
    Failed,
}

/// One run of the Schedule, as observed.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub name: String,
    /// Its slot (from its annotation), if readable.
    pub slot: Option<Timestamp>,
    pub state: RunState,
    pub finished_at: Option<Timestamp>,
    /// `Job` or `Workflow`.
    pub kind: &'static str,
    pub uid: Option<String>,
}

fn slot_of(meta: &ObjectMeta) -> Option<Timestamp> {
    meta.annotations.as_ref()?.get(SCHEDULED_TIME_ANNOTATION)?.parse().ok()
}

impl Run {
    pub fn from_job(job: &Job) -> Run {
        let status = job.status.as_ref();
        let state = match status.map(|s| s.phase) {
            Some(JobPhase::Succeeded) => RunState::Succeeded,
            Some(JobPhase::Failed) => RunState::Failed,
            _ => RunState::Active,
        };
        Run {
            name: job.name_any(),
            slot: slot_of(&job.metadata),
            state,
            finished_at: status.and_then(|s| s.completion_time.as_ref()).map(|t| t.0),
            kind: "Job",
            uid: job.uid(),
        }
    }

    pub fn from_workflow(wf: &Workflow) -> Run {
        let status = wf.status.as_ref();
        let state = match status.map(|s| s.phase) {
            Some(WorkflowPhase::Succeeded) => RunState::Succeeded,
            Some(WorkflowPhase::Failed) => RunState::Failed,
            _ => RunState::Active,
        };
        Run {
            name: wf.name_any(),
            slot: slot_of(&wf.metadata),
            state,
            finished_at: status.and_then(|s| s.finished_at),
            kind: "Workflow",
            uid: wf.uid(),
        }
    }
}

/// Why a due slot does not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Miss {
    /// `spec.suspend` was true.
    Suspended,
    /// Older than `startingDeadlineSeconds`.
    StartingDeadline,
    /// Catch-up `Latest`: an older slot than the latest passed.
    CatchupLatest,
    /// Catch-up `None`: passed while no operator led.
    CatchupNone,
    /// Catch-up `All`: beyond `maxRuns`.
    CatchupMaxRuns,
}

impl Miss {
    pub fn reason(self) -> &'static str {
        match self {
            Miss::Suspended => "Suspended",
            Miss::StartingDeadline => "StartingDeadline",
            Miss::CatchupLatest => "CatchupLatest",
            Miss::CatchupNone => "CatchupNone",
            Miss::CatchupMaxRuns => "CatchupMaxRuns",
        }
    }
}

/// Why a slot that was to run was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Skip {
    /// `Forbid`: a run was active.
    Forbid,
    /// `Replace`: a later slot of the same catch-up replaced it.
    Superseded,
}

impl Skip {
    pub fn reason(self) -> &'static str {
        match self {
            Skip::Forbid => "Forbid",
            Skip::Superseded => "Superseded",
        }
    }
}

/// What to do now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub invalid: Option<Invalid>,
    /// Slots whose run to create, oldest first.
    pub create: Vec<Timestamp>,
    /// Active runs to cancel (delete) first: `Replace`.
    pub cancel: Vec<String>,
    pub skipped: Vec<(Timestamp, Skip)>,
    /// Missed slots by why: how many, and the latest.
    pub missed: Vec<(Miss, u64, Timestamp)>,
    /// Finished runs beyond the history limits.
    pub delete_history: Vec<String>,
    /// The new `lastScheduleTime`: the latest slot dealt with.
    pub last_schedule_time: Option<Timestamp>,
    pub next_schedule_time: Option<Timestamp>,
    /// When to look again.
    pub wake_in: Option<Duration>,
}

/// Decides. `leading_since`: when this operator started leading (slots before it passed while
/// no operator ran, as far as catch-up `None` is concerned).
pub fn plan(schedule: &Schedule, runs: &[Run], now: Timestamp, leading_since: Timestamp) -> Plan {
    let spec = &schedule.spec;
    let cadence = match cadence(&spec.schedule, spec.time_zone.as_deref()) {
        Ok(c) => c,
        Err(invalid) => return Plan { invalid: Some(invalid), ..Plan::default() },
    };
    let mut plan =
        Plan { delete_history: history(runs, spec.successful_jobs_history_limit, spec.failed_jobs_history_limit), ..Plan::default() };
    let recorded = schedule.status.as_ref().and_then(|s| s.last_schedule_time.as_ref()).map(|t| t.0);
    let newest_run = runs.iter().filter_map(|r| r.slot).max();
    let created = schedule.meta().creation_timestamp.as_ref().map(|t| t.0).unwrap_or(now);
    let watermark = [recorded, newest_run].into_iter().flatten().max().unwrap_or(created);
    let catchup = spec.catchup.clone().unwrap_or_default();
    let max_runs = catchup.max_runs.unwrap_or(DEFAULT_MAX_RUNS).max(1) as usize;
    let due = cadence.slots(watermark, now, max_runs);
    plan.last_schedule_time = recorded.max(newest_run);
    if let Some(&latest) = due.latest.last() {
        plan.last_schedule_time = Some(latest);
        decide(&mut plan, schedule, runs, &due, latest, now, leading_since, catchup.policy, max_runs);
    }
    // Suspended, it still wakes at each slot: a slot that passes is counted as missed then, so
    // resuming never runs it late.
    let next = cadence.next_after(now);
    plan.wake_in = next.map(|next| now.duration_until(next).unsigned_abs().min(MAX_WAKE) + Duration::from_millis(5));
    if !spec.suspend {
        plan.next_schedule_time = next;
    }
    plan
}

#[allow(clippy::too_many_arguments)]
fn decide(
    plan: &mut Plan,
    schedule: &Schedule,
    runs: &[Run],
    due: &Slots,
    latest: Timestamp,
    now: Timestamp,
    leading_since: Timestamp,
    policy: CatchupPolicy,
    max_runs: usize,
) {
    let spec = &schedule.spec;
    let mut missed = std::collections::BTreeMap::<Miss, (u64, Timestamp)>::new();
    let mut miss = |why: Miss, count: u64, slot: Timestamp| {
        if count > 0 {
            let entry = missed.entry(why).or_insert((0, slot));
            entry.0 += count;
            entry.1 = entry.1.max(slot);
        }
    };
    let older = due.total - 1;
    let previous = due.latest.iter().rev().nth(1).copied().unwrap_or(latest);
    let candidates: Vec<Timestamp> = if spec.suspend {
        miss(Miss::Suspended, due.total, latest);
        Vec::new()
    } else {
        match policy {
            CatchupPolicy::Latest => {
                miss(Miss::CatchupLatest, older, previous);
                vec![latest]
            }
            CatchupPolicy::All => {
                let kept = due.latest.len().min(max_runs);
                let first_kept = due.latest[due.latest.len() - kept];
                miss(Miss::CatchupMaxRuns, due.total - kept as u64, first_kept - SignedDuration::from_secs(1));
                due.latest[due.latest.len() - kept..].to_vec()
            }
            CatchupPolicy::None => {
                miss(Miss::CatchupNone, older, previous);
                if latest > leading_since {
                    vec![latest]
                } else {
                    miss(Miss::CatchupNone, 1, latest);
                    Vec::new()
                }
            }
        }
    };
    let deadline = spec.starting_deadline_seconds.map(|s| now - SignedDuration::from_secs(s as i64));
    let (late, candidates): (Vec<Timestamp>, Vec<Timestamp>) = candidates.into_iter().partition(|slot| deadline.is_some_and(|d| *slot < d));
    if let Some(&last_late) = late.last() {
        miss(Miss::StartingDeadline, late.len() as u64, last_late);
    }
    // A run already there for a slot is not created again (nor does it count as skipped).
    let exists = |slot: &Timestamp| runs.iter().any(|r| r.slot == Some(*slot));
    let candidates: Vec<Timestamp> = candidates.into_iter().filter(|s| !exists(s)).collect();
    let active: Vec<&Run> = runs.iter().filter(|r| r.state == RunState::Active).collect();
    match spec.concurrency_policy {
        ConcurrencyPolicy::Allow => plan.create = candidates,
        ConcurrencyPolicy::Forbid => {
            for slot in candidates {
                if active.is_empty() && plan.create.is_empty() {
                    plan.create.push(slot);
                } else {
                    plan.skipped.push((slot, Skip::Forbid));
                }
            }
        }
        ConcurrencyPolicy::Replace => {
            if let Some((&last, earlier)) = candidates.split_last() {
                plan.skipped.extend(earlier.iter().map(|s| (*s, Skip::Superseded)));
                plan.create.push(last);
                plan.cancel = active.iter().map(|r| r.name.clone()).collect();
            }
        }
    }
    plan.missed = missed.into_iter().map(|(why, (count, slot))| (why, count, slot)).collect();
}

/// Finished runs beyond the limits, oldest first (by slot, then name).
pub fn history(runs: &[Run], successful: u32, failed: u32) -> Vec<String> {
    let mut delete = Vec::new();
    for (state, keep) in [(RunState::Succeeded, successful), (RunState::Failed, failed)] {
        let mut finished: Vec<&Run> = runs.iter().filter(|r| r.state == state).collect();
        finished.sort_by(|a, b| (a.slot, &a.name).cmp(&(b.slot, &b.name)));
        let excess = finished.len().saturating_sub(keep as usize);
        delete.extend(finished[..excess].iter().map(|r| r.name.clone()));
    }
    delete
}

/// The labels and annotations of the run of `slot`.
fn run_metadata(schedule: &Schedule, slot: Timestamp, template: Option<&crate::crd::RunMetadata>) -> ObjectMeta {
    let mut labels = template.map(|m| m.labels.clone()).unwrap_or_default();
    labels.insert(SCHEDULE_LABEL.into(), name_prefix(&schedule.name_any()));
    let mut annotations = template.map(|m| m.annotations.clone()).unwrap_or_default();
    annotations.insert(SCHEDULED_TIME_ANNOTATION.into(), slot.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    ObjectMeta {
        name: Some(run_name(&schedule.name_any(), slot)),
        namespace: schedule.namespace(),
        labels: Some(labels),
        annotations: Some(annotations),
        owner_references: schedule.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// What the run of `slot` is: a Job or a Workflow from the template.
#[derive(Clone, Debug)]
pub enum NewRun {
    Job(Box<Job>),
    Workflow(Box<Workflow>),
}

impl NewRun {
    pub fn name(&self) -> String {
        match self {
            NewRun::Job(j) => j.name_any(),
            NewRun::Workflow(w) => w.name_any(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            NewRun::Job(_) => "Job",
            NewRun::Workflow(_) => "Workflow",
        }
    }
}

/// The object to create for `slot` (none when the spec has no template, which the schema
/// refuses).
pub fn new_run(schedule: &Schedule, slot: Timestamp) -> Option<NewRun> {
    if let Some(t) = &schedule.spec.job_template {
        let mut job = Job::new("", t.spec.clone());
        job.metadata = run_metadata(schedule, slot, t.metadata.as_ref());
        return Some(NewRun::Job(Box::new(job)));
    }
    let t = schedule.spec.workflow_template.as_ref()?;
    let mut wf = Workflow::new("", t.spec.clone());
    wf.metadata = run_metadata(schedule, slot, t.metadata.as_ref());
    Some(NewRun::Workflow(Box::new(wf)))
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

//! The Schedule controller: at each slot of a Schedule it creates a Job or a Workflow named after
//! the slot (owned by the Schedule), skips or replaces according to `concurrencyPolicy`, catches
//! up missed slots per `catchup`, deletes finished runs beyond the history limits, and writes the
//! Schedule's status. Runs only while this operator leads.
//!
//! Owns: creating and deleting a Schedule's runs, its status and Events. Must not: touch a run's
//! spec or status (the Job and Workflow controllers own them).

pub mod plan;
pub mod status;

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tracing::Instrument;

use super::ErrorBackoff;
use crate::crd::{Job, Schedule, Workflow};
use crate::metrics::{self, ControllerLabels, ErrorLabels};
use plan::{NewRun, Run, RunState};

const CONTROLLER: &str = "schedule";

/// What a Schedule reconcile needs.
pub struct ScheduleContext {
    pub client: Client,
    pub backoff: ErrorBackoff,
    pub recorder: Recorder,
    /// When this operator started leading: slots before it passed with no operator running.
    pub leading_since: Timestamp,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Schedule has no uid")]
    MissingUid,
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApiError",
            Error::MissingUid => "MissingUid",
        }
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

async fn reconcile(schedule: Arc<Schedule>, ctx: Arc<ScheduleContext>) -> Result<Action, Error> {
    let started = Instant::now();
    metrics::global().reconciles.get_or_create(&ControllerLabels { controller: CONTROLLER }).inc();
    let span = tracing::info_span!("reconcile", kind = "Schedule", namespace = schedule.namespace(), name = schedule.name_any());
    let result = reconcile_inner(schedule, &ctx).instrument(span).await;
    metrics::global()
        .reconcile_duration
        .get_or_create(&ControllerLabels { controller: CONTROLLER })
        .observe(started.elapsed().as_secs_f64());
    result
}

/// The Schedule's runs, read from the API server (not a cache: a run created a moment ago must be
/// seen, or `Forbid` could start a second one).
async fn runs(client: &Client, schedule: &Schedule, uid: &str) -> Result<Vec<Run>, kube::Error> {
    let namespace = schedule.namespace().unwrap_or_default();
    let selector = ListParams::default().labels(&format!("{}={}", plan::SCHEDULE_LABEL, plan::name_prefix(&schedule.name_any())));
    let owned = |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| refs.iter().any(|o| o.uid == uid);
    let mut runs: Vec<Run> = Api::<Job>::namespaced(client.clone(), &namespace)
        .list(&selector)
        .await?
        .items
        .iter()
        .filter(|j| owned(j.owner_references()) && j.metadata.deletion_timestamp.is_none())
        .map(Run::from_job)
        .collect();
    runs.extend(
        Api::<Workflow>::namespaced(client.clone(), &namespace)
            .list(&selector)
            .await?
            .items
            .iter()
            .filter(|w| owned(w.owner_references()) && w.metadata.deletion_timestamp.is_none())
            .map(Run::from_workflow),
    );
    Ok(runs)
}

async fn reconcile_inner(schedule: Arc<Schedule>, ctx: &ScheduleContext) -> Result<Action, Error> {
    let uid = schedule.uid().ok_or(Error::MissingUid)?;
    if schedule.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = schedule.namespace().unwrap_or_default();
    let mut observed = runs(&ctx.client, &schedule, &uid).await?;
    let now = Timestamp::now();
    let plan = plan::plan(&schedule, &observed, now, ctx.leading_since);
    if let Some(invalid) = &plan.invalid {
        tracing::info!(reason = invalid.reason(), message = %invalid, "Schedule is invalid; nothing fires");
    }
    let m = metrics::global();
    let labels = |reason: &'static str| metrics::ScheduleLabels { namespace: namespace.clone(), reason };

    for (why, count, slot) in &plan.missed {
        m.schedule_slots_missed.get_or_create(&labels(why.reason())).inc_by(*count);
        let note = format!("{count} slot(s) up to {slot} not run: {}", why.reason());
        tracing::info!(reason = why.reason(), count, %slot, "slots missed");
        record(ctx, &schedule, EventType::Normal, "SlotMissed", "Skip", note).await;
    }
    // Replace: the active runs go first (their tasks are dropped by the workers).
    for name in &plan.cancel {
        let Some(run) = observed.iter().find(|r| &r.name == name) else { continue };
        let deleted = match run.kind {
            "Workflow" => {
                Api::<Workflow>::namespaced(ctx.client.clone(), &namespace).delete(name, &DeleteParams::background()).await.map(|_| ())
            }
            _ => Api::<Job>::namespaced(ctx.client.clone(), &namespace).delete(name, &DeleteParams::background()).await.map(|_| ()),
        };
        match deleted {
            Ok(()) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(e.into()),
        }
        m.schedule_runs_cancelled.get_or_create(&labels("Replace")).inc();
        tracing::info!(run = %name, "Replace: cancelled the active run");
        record(
            ctx,
            &schedule,
            EventType::Normal,
            "RunReplaced",
            "Cancel",
            format!("cancelled {} {name}: a new slot replaces it", run.kind),
        )
        .await;
    }
    observed.retain(|r| !plan.cancel.contains(&r.name));
    for (slot, why) in &plan.skipped {
        m.schedule_slots_skipped.get_or_create(&labels(why.reason())).inc();
        tracing::info!(%slot, reason = why.reason(), "slot skipped");
        record(ctx, &schedule, EventType::Normal, "SlotSkipped", "Skip", format!("slot {slot} skipped: {}", why.reason())).await;
    }
    for slot in &plan.create {
        let Some(run) = plan::new_run(&schedule, *slot) else { continue };
        let name = run.name();
        let created = match &run {
            NewRun::Job(job) => {
                Api::<Job>::namespaced(ctx.client.clone(), &namespace).create(&PostParams::default(), job).await.map(|_| ())
            }
            NewRun::Workflow(wf) => {
                Api::<Workflow>::namespaced(ctx.client.clone(), &namespace).create(&PostParams::default(), wf).await.map(|_| ())
            }
        };
        match created {
            Ok(()) => {
                m.schedule_runs_created.get_or_create(&labels(run.kind())).inc();
                tracing::info!(run = %name, %slot, "slot fired");
                record(ctx, &schedule, EventType::Normal, "SlotFired", "Create", format!("created {} {name} for slot {slot}", run.kind()))
                    .await;
            }
            // The slot fired already (another leader, or before a restart): exactly once.
            Err(e) if is_status(&e, 409) => tracing::info!(run = %name, %slot, "the slot's run exists already"),
            Err(e) => return Err(e.into()),
        }
        observed.push(Run { name, slot: Some(*slot), state: RunState::Active, finished_at: None, kind: run.kind(), uid: None });
    }

    let status = status::desired(
        &schedule,
        &plan,
        &observed.iter().filter(|r| !plan.delete_history.contains(&r.name)).cloned().collect::<Vec<_>>(),
        &Time(now),
    );
    if schedule.status.as_ref() != Some(&status) {
        let patch: json_patch::Patch =
            serde_json::from_value(serde_json::json!([{ "op": "add", "path": "/status", "value": status }])).expect("a JSON patch");
        let api: Api<Schedule> = Api::namespaced(ctx.client.clone(), &namespace);
        let written = api.patch_status(&schedule.name_any(), &PatchParams::default(), &Patch::Json::<()>(patch)).await;
        m.record_status_write(metrics::SCHEDULE, &written);
        match written {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
    }
    // History only once the status (the watermark) is written: a deleted run's slot is never
    // looked at again.
    for name in &plan.delete_history {
        let Some(run) = observed.iter().find(|r| &r.name == name) else { continue };
        let deleted = match run.kind {
            "Workflow" => {
                Api::<Workflow>::namespaced(ctx.client.clone(), &namespace).delete(name, &DeleteParams::background()).await.map(|_| ())
            }
            _ => Api::<Job>::namespaced(ctx.client.clone(), &namespace).delete(name, &DeleteParams::background()).await.map(|_| ()),
        };
        match deleted {
            Ok(()) => tracing::info!(run = %name, "deleted a finished run beyond the history limit"),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    ctx.backoff.reset(&uid);
    Ok(match plan.wake_in {
        Some(wake) => Action::requeue(wake),
        None => Action::await_change(),
    })
}

/// Records an Event about the Schedule (best effort: a lost Event is logged, never an error).
async fn record(ctx: &ScheduleContext, schedule: &Schedule, type_: EventType, reason: &str, action: &str, note: String) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
    if let Err(error) = ctx.recorder.publish(&event, &schedule.object_ref(&())).await {
        tracing::warn!(%error, "could not record a Schedule Event");
    }
}

fn error_policy(schedule: Arc<Schedule>, error: &Error, ctx: Arc<ScheduleContext>) -> Action {
    metrics::global().reconcile_errors.get_or_create(&ErrorLabels { controller: CONTROLLER, reason: error.reason() }).inc();
    let delay = ctx.backoff.next(&schedule.uid().unwrap_or_default());
    tracing::warn!(namespace = schedule.namespace(), name = schedule.name_any(), reason = error.reason(), %error, ?delay, "Schedule reconcile failed");
    Action::requeue(delay)
}

/// Runs the Schedule controller until the stream ends (in `config`'s watch namespace, if any).
/// Its runs are watched here, Jobs and Workflows labelled `warren.dev/schedule` only: a run
/// finishing triggers its Schedule (for `Forbid`, history and `lastSuccessfulTime`). Not a
/// subscriber of the operator's shared Job watch: with one, that watch stalled under a large Job
/// (every Job controller trigger with it; seen in `bad_input`), and a label-selected watch of the
/// runs is smaller anyway.
pub async fn run(client: Client, config: super::Config) {
    let ctx = Arc::new(ScheduleContext {
        client: client.clone(),
        backoff: ErrorBackoff::default(),
        recorder: crate::events::recorder(client.clone()),
        leading_since: Timestamp::now(),
    });
    Controller::new(config.watched::<Schedule>(client.clone()), watcher::Config::default())
        .owns(config.watched::<Job>(client.clone()), watcher::Config::default().labels(plan::SCHEDULE_LABEL))
        .owns(config.watched::<Workflow>(client), watcher::Config::default().labels(plan::SCHEDULE_LABEL))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

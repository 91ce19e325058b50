//! The status a Schedule should have, from its plan and its runs. Pure.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::plan::{Plan, Run, RunState};
use crate::conditions::{self, Desired};
use crate::crd::{GROUP, Schedule, ScheduleStatus};

/// Computes the full status. `runs` are the runs after the plan was carried out (created ones
/// included, cancelled and deleted ones left out); `now` only stamps condition transitions.
pub fn desired(schedule: &Schedule, plan: &Plan, runs: &[Run], now: &Time) -> ScheduleStatus {
    let previous = schedule.status.as_ref();
    let conditions_before = previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = schedule.metadata.generation;
    if let Some(invalid) = &plan.invalid {
        let wanted = [Desired::new("Ready", false, invalid.reason(), invalid.to_string())];
        return ScheduleStatus {
            last_schedule_time: previous.and_then(|s| s.last_schedule_time.clone()),
            last_successful_time: previous.and_then(|s| s.last_successful_time.clone()),
            next_schedule_time: None,
            active: active(schedule, runs),
            conditions: conditions::merge(conditions_before, &wanted, generation, now),
            observed_generation: generation,
        };
    }
    let ready = if schedule.spec.suspend {
        Desired::new("Ready", true, "Suspended", "suspended: no slot fires until spec.suspend is false")
    } else {
        let next = plan.next_schedule_time.map_or_else(|| "never".to_string(), |t| t.to_string());
        Desired::new("Ready", true, "Scheduled", format!("schedule {:?} is valid; next slot {next}", schedule.spec.schedule))
    };
    let succeeded = runs.iter().filter(|r| r.state == RunState::Succeeded).filter_map(|r| r.finished_at).max();
    let last_successful = previous.and_then(|s| s.last_successful_time.as_ref()).map(|t| t.0).max(succeeded);
    ScheduleStatus {
        last_schedule_time: plan.last_schedule_time.map(Time),
        last_successful_time: last_successful.map(Time),
        next_schedule_time: plan.next_schedule_time.map(Time),
        active: active(schedule, runs),
        conditions: conditions::merge(conditions_before, &[ready], generation, now),
        observed_generation: generation,
    }
}

fn active(schedule: &Schedule, runs: &[Run]) -> Vec<ObjectReference> {
    let mut active: Vec<&Run> = runs.iter().filter(|r| r.state == RunState::Active).collect();
    active.sort_by(|a, b| (a.slot, &a.name).cmp(&(b.slot, &b.name)));
    active
        .into_iter()
        .map(|r| ObjectReference {
            api_version: Some(format!("{GROUP}/v1alpha1")),
            kind: Some(r.kind.to_string()),
            name: Some(r.name.clone()),
            namespace: schedule.namespace(),
            uid: r.uid.clone(),
            ..ObjectReference::default()
        })
        .collect()
}

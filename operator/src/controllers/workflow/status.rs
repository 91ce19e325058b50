//! The status a Workflow should have, from its plan. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::plan::Plan;
use crate::conditions::{self, Desired};
use crate::crd::{StepPhase, Workflow, WorkflowPhase, WorkflowStatus};

/// Computes the full status. `now` only stamps condition transitions.
pub fn desired(wf: &Workflow, plan: &Plan, now: &Time) -> WorkflowStatus {
    let previous = wf.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    // Kept: written by the notifier (`crate::notify`), never computed here.
    let notifications = wf.status.as_ref().map(|s| s.notifications.clone()).unwrap_or_default();
    let total = wf.spec.steps.len();
    if let Some(invalid) = &plan.invalid {
        let wanted = [
            Desired::new("Ready", false, invalid.reason(), invalid.to_string()),
            Desired::new("Failed", true, invalid.reason(), invalid.to_string()),
        ];
        return WorkflowStatus {
            phase: WorkflowPhase::Failed,
            progress: Some(format!("0/{total}")),
            message: Some(format!("invalid spec, nothing runs: {invalid}")),
            conditions: conditions::merge(previous, &wanted, wf.metadata.generation, now),
            observed_generation: wf.metadata.generation,
            notifications,
            ..WorkflowStatus::default()
        };
    }
    let finished_steps = plan.steps.values().filter(|s| s.phase.is_finished()).count();
    let started = plan.steps.values().any(|s| s.phase != StepPhase::Pending);
    let phase = match (&plan.finished_at, &plan.failure) {
        (Some(_), Some(_)) => WorkflowPhase::Failed,
        (Some(_), None) => WorkflowPhase::Succeeded,
        (None, _) if plan.compensating => WorkflowPhase::Compensating,
        (None, _) if wf.spec.suspend => WorkflowPhase::Suspended,
        (None, _) if started => WorkflowPhase::Running,
        (None, _) => WorkflowPhase::Pending,
    };
    let mut wanted = vec![Desired::new("Ready", true, "Valid", format!("{total} steps, graph checked"))];
    let message = match (phase, &plan.failure) {
        (WorkflowPhase::Succeeded, _) => {
            let succeeded = plan.steps.values().filter(|s| s.phase == StepPhase::Succeeded).count();
            let message = format!("{succeeded} of {total} steps succeeded, the rest were skipped");
            wanted.push(Desired::new("Complete", true, "StepsSucceeded", message.clone()));
            Some(message)
        }
        (_, Some(failure)) => {
            let compensations = &plan.compensations;
            let mut message = failure.message.clone();
            if !compensations.is_empty() {
                let failed: Vec<&str> =
                    compensations.iter().filter(|c| c.run.phase == StepPhase::Failed).map(|c| c.step.as_str()).collect();
                let done = compensations.iter().filter(|c| c.run.phase.is_finished()).count();
                message.push_str(&format!("; compensations {done}/{} finished", compensations.len()));
                if !failed.is_empty() {
                    message.push_str(&format!(", failed: {}", failed.join(", ")));
                }
            }
            if phase == WorkflowPhase::Failed {
                wanted.push(Desired::new("Failed", true, failure.reason, message.clone()));
            }
            Some(message)
        }
        (WorkflowPhase::Suspended, None) => Some("suspended: no new step starts until spec.suspend is false".into()),
        _ => None,
    };
    WorkflowStatus {
        phase,
        progress: Some(format!("{finished_steps}/{total}")),
        started_at: plan.started_at,
        finished_at: plan.finished_at,
        steps: plan.steps.clone(),
        compensations: plan.compensations.clone(),
        finally: plan.finally.clone(),
        message,
        conditions: conditions::merge(previous, &wanted, wf.metadata.generation, now),
        observed_generation: wf.metadata.generation,
        notifications,
    }
}

//! The completion event: a CloudEvents 1.0 envelope in structured JSON mode, and its signature.
//! Pure.
//!
//! The envelope is written with serde rather than with `cloudevents-sdk`: Warren only ever
//! produces one event shape (the required attributes `specversion`, `id`, `source`, `type`, and
//! `time`, `datacontenttype`, `subject`, `data`), and the SDK would add a dependency tree (its
//! own HTTP integrations) for six string fields.

use serde::Serialize;

use crate::crd::{Job, NotifyPhase, Workflow};
use kube::ResourceExt;

/// The content type of a structured-mode CloudEvent.
pub const CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";
/// Header: the event id (the same as the envelope's `id`).
pub const ID_HEADER: &str = "webhook-id";
/// Header: seconds since the Unix epoch when the request was signed.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// Header: `v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// A CloudEvents 1.0 event (structured mode).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CloudEvent {
    pub specversion: &'static str,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub subject: String,
    pub time: String,
    pub datacontenttype: &'static str,
    pub data: serde_json::Value,
}

/// The kind of object an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Job,
    Workflow,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Job => crate::metrics::JOB,
            Kind::Workflow => crate::metrics::WORKFLOW,
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Job => "jobs",
            Kind::Workflow => "workflows",
        }
    }

    fn lower(self) -> &'static str {
        match self {
            Kind::Job => "job",
            Kind::Workflow => "workflow",
        }
    }
}

/// The event id of a phase of an object: its uid and the phase, the same in every attempt and
/// after an operator restart, so receivers de-duplicate on it.
pub fn event_id(uid: &str, phase: NotifyPhase) -> String {
    format!("{uid}.{}", phase.as_lower())
}

/// `dev.warren.<kind>.<phase>.v1`: the event's `type`, and its routing key on the exchange.
pub fn event_type(kind: Kind, phase: NotifyPhase) -> String {
    format!("dev.warren.{}.{}.v1", kind.lower(), phase.as_lower())
}

/// `/apis/warren.dev/v1alpha1/namespaces/<ns>/<plural>/<name>`.
pub fn source(kind: Kind, namespace: &str, name: &str) -> String {
    format!("/apis/{}/v1alpha1/namespaces/{namespace}/{}/{name}", crate::crd::GROUP, kind.plural())
}

fn envelope(kind: Kind, namespace: &str, name: &str, uid: &str, phase: NotifyPhase, time: String, data: serde_json::Value) -> CloudEvent {
    CloudEvent {
        specversion: "1.0",
        id: event_id(uid, phase),
        source: source(kind, namespace, name),
        type_: event_type(kind, phase),
        subject: name.to_string(),
        time,
        datacontenttype: "application/json",
        data,
    }
}

fn condition_of<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions.iter().find(|c| c.type_ == type_ && c.status == "True")
}

/// The event of a Job that ended in `phase`. `fallback_time` stamps it when the status has
/// neither a completion time nor an ending condition.
pub fn job_event(job: &Job, phase: NotifyPhase, fallback_time: jiff::Timestamp) -> CloudEvent {
    let status = job.status.clone().unwrap_or_default();
    let ending = match phase {
        NotifyPhase::Succeeded => condition_of(&status.conditions, "Complete"),
        NotifyPhase::Failed => condition_of(&status.conditions, "Failed"),
    };
    // The end as the status says it; an invalid Job has no completion time, but its `Failed`
    // condition has a transition time: both are the same in every attempt.
    let time = status.completion_time.as_ref().or(ending.map(|c| &c.last_transition_time)).map_or(fallback_time, |t| t.0);
    let data = serde_json::json!({
        "namespace": job.namespace().unwrap_or_default(),
        "name": job.name_any(),
        "uid": job.uid().unwrap_or_default(),
        "phase": format!("{:?}", status.phase),
        "total": status.total,
        "succeeded": status.succeeded,
        "failed": status.failed,
        "retries": status.retries,
        "deadLettered": status.dead_lettered,
        "cancelled": status.cancelled,
        "failedIndexes": status.failed_indexes,
        "reason": ending.map(|c| c.reason.clone()),
        "message": ending.map(|c| c.message.clone()),
        "result": status.result,
        "startTime": status.start_time.map(|t| t.0.to_string()),
        "completionTime": status.completion_time.map(|t| t.0.to_string()),
    });
    envelope(
        Kind::Job,
        &job.namespace().unwrap_or_default(),
        &job.name_any(),
        &job.uid().unwrap_or_default(),
        phase,
        time.to_string(),
        data,
    )
}

/// The event of a Workflow that ended in `phase`.
pub fn workflow_event(wf: &Workflow, phase: NotifyPhase, fallback_time: jiff::Timestamp) -> CloudEvent {
    let status = wf.status.clone().unwrap_or_default();
    let ending = match phase {
        NotifyPhase::Succeeded => condition_of(&status.conditions, "Complete"),
        NotifyPhase::Failed => condition_of(&status.conditions, "Failed"),
    };
    let steps: serde_json::Map<String, serde_json::Value> =
        status.steps.iter().map(|(name, step)| (name.clone(), serde_json::json!(format!("{:?}", step.phase)))).collect();
    let time = status.finished_at.or(ending.map(|c| c.last_transition_time.0)).unwrap_or(fallback_time);
    let data = serde_json::json!({
        "namespace": wf.namespace().unwrap_or_default(),
        "name": wf.name_any(),
        "uid": wf.uid().unwrap_or_default(),
        "phase": format!("{:?}", status.phase),
        "progress": status.progress,
        "steps": steps,
        "reason": ending.map(|c| c.reason.clone()),
        "message": status.message,
        "startedAt": status.started_at.map(|t| t.to_string()),
        "finishedAt": status.finished_at.map(|t| t.to_string()),
    });
    envelope(
        Kind::Workflow,
        &wf.namespace().unwrap_or_default(),
        &wf.name_any(),
        &wf.uid().unwrap_or_default(),
        phase,
        time.to_string(),
        data,
    )
}

/// The `webhook-signature` value of `body` sent at `timestamp` (Unix seconds) under `key`:
/// `v1=` and the hex HMAC-SHA256 of `<timestamp>.<body>`.
pub fn signature(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// What a receiver does (docs/notifications.md): recompute and compare in constant time, and
/// refuse a timestamp older than `tolerance_secs`. Here for the tests and as the reference.
pub fn verify(key: &[u8], timestamp: &str, body: &[u8], header: &str, now_secs: i64, tolerance_secs: i64) -> bool {
    use hmac::{Hmac, Mac};
    let Ok(ts) = timestamp.parse::<i64>() else { return false };
    if (now_secs - ts).abs() > tolerance_secs {
        return false;
    }
    let Some(tag) = header.strip_prefix("v1=").and_then(|h| hex::decode(h).ok()) else { return false };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{JobPhase, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn job() -> Job {
        let spec = serde_json::from_value(serde_json::json!({"poolRef": "p", "completions": 3})).unwrap();
        let mut job = Job::new("thumbs", spec);
        job.metadata.namespace = Some("media".into());
        job.metadata.uid = Some("u-1".into());
        let done: jiff::Timestamp = "2026-12-07T02:00:05Z".parse().unwrap();
        job.status = Some(JobStatus {
            phase: JobPhase::Failed,
            total: 3,
            succeeded: 2,
            failed: 1,
            retries: 4,
            dead_lettered: 1,
            failed_indexes: "2".into(),
            completion_time: Some(Time(done)),
            conditions: vec![Condition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: "TasksFailed".into(),
                message: "1 of 3 tasks failed (indexes 2)".into(),
                last_transition_time: Time(done),
                observed_generation: None,
            }],
            ..JobStatus::default()
        });
        job
    }

    #[test]
    fn a_job_event_is_a_structured_cloudevent_with_a_stable_id() {
        let now: jiff::Timestamp = "2026-12-07T03:00:00Z".parse().unwrap();
        let event = job_event(&job(), NotifyPhase::Failed, now);
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "dev.warren.job.failed.v1");
        assert_eq!(json["source"], "/apis/warren.dev/v1alpha1/namespaces/media/jobs/thumbs");
        assert_eq!(json["id"], "u-1.failed");
        assert_eq!(json["time"], "2026-12-07T02:00:05Z", "the completion time, not the sending time");
        assert_eq!(json["datacontenttype"], "application/json");
        let data = &json["data"];
        assert_eq!((data["succeeded"].as_u64(), data["failed"].as_u64(), data["retries"].as_u64()), (Some(2), Some(1), Some(4)));
        assert_eq!((data["reason"].as_str(), data["failedIndexes"].as_str()), (Some("TasksFailed"), Some("2")));
        let later = job_event(&job(), NotifyPhase::Failed, now + jiff::SignedDuration::from_secs(60));
        assert_eq!(event, later, "every attempt sends the same event");
        let mut invalid = job();
        invalid.status.as_mut().unwrap().completion_time = None;
        let json = serde_json::to_value(job_event(&invalid, NotifyPhase::Failed, now)).unwrap();
        assert_eq!(json["time"], "2026-12-07T02:00:05Z", "no completion time: the Failed condition's transition");
    }

    #[test]
    fn a_workflow_event_names_the_workflow() {
        let wf: Workflow = serde_json::from_value(serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "Workflow",
            "metadata": {"name": "order-1", "namespace": "shop", "uid": "w-9"},
            "spec": {"steps": [{"name": "a", "job": {"poolRef": "p", "payload": 1}}]},
            "status": {"phase": "Succeeded", "progress": "1/1", "finishedAt": "2026-12-07T02:00:00Z", "steps": {"a": {"phase": "Succeeded"}}}
        }))
        .unwrap();
        let json = serde_json::to_value(workflow_event(&wf, NotifyPhase::Succeeded, jiff::Timestamp::UNIX_EPOCH)).unwrap();
        assert_eq!(json["type"], "dev.warren.workflow.succeeded.v1");
        assert_eq!(json["source"], "/apis/warren.dev/v1alpha1/namespaces/shop/workflows/order-1");
        assert_eq!(json["id"], "w-9.succeeded");
        assert_eq!(json["data"]["steps"]["a"], "Succeeded");
        assert_eq!(json["time"], "2026-12-07T02:00:00Z");
    }

    #[test]
    fn a_signature_covers_timestamp_and_body_and_verifies_only_with_its_key() {
        let body = br#"{"id":"u-1.failed"}"#;
        let header = signature(b"secret", 1_700_000_000, body);
        assert!(header.starts_with("v1=") && header.len() == 3 + 64, "{header}");
        // The HMAC-SHA256 of "1700000000.{body}" under "secret", as any HMAC library computes it.
        assert_eq!(header, "v1=fb69b26842e06710fb5652521f2a31a706122339b4eadb621d799d286967919c");
        assert!(verify(b"secret", "1700000000", body, &header, 1_700_000_100, 300));
        assert!(!verify(b"other", "1700000000", body, &header, 1_700_000_100, 300), "another key");
        assert!(!verify(b"secret", "1700000001", body, &header, 1_700_000_100, 300), "another timestamp");
        assert!(!verify(b"secret", "1700000000", b"{}", &header, 1_700_000_100, 300), "another body");
        assert!(!verify(b"secret", "1700000000", body, &header, 1_700_001_000, 300), "too old: a replay");
        assert!(!verify(b"secret", "1700000000", body, "v1=zz", 1_700_000_100, 300));
    }
}

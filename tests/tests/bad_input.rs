//! Bad input end to end, each with the exact outcome a user sees: the API server's 422 for what
//! the CRD schema and CEL rules catch, the Job's conditions for what only the operator can check.
//! (An unknown pool is in `core_job_path.rs`; malformed messages and panicking handlers are in
//! the worker's tests.)

use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use warren_e2e::Env;
use warren_operator::crd::{Job, JobPhase};

/// Creates a Job as raw JSON (values the Rust types could not even hold, like a negative
/// number of seconds) and returns the API server's refusal: (HTTP code, message).
async fn refused(env: &Env, name: &str, spec: serde_json::Value) -> anyhow::Result<(u16, String)> {
    let resource = ApiResource::erase::<Job>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.namespace, &resource);
    let object: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "warren.dev/v1alpha1", "kind": "Job",
        "metadata": {"name": name, "namespace": env.namespace}, "spec": spec,
    }))?;
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => anyhow::bail!("Job {name} was accepted"),
        Err(kube::Error::Api(status)) => Ok((status.code, status.message)),
        Err(other) => anyhow::bail!("unexpected error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_numbers_are_rejected_by_the_api_server_with_the_field_named() -> anyhow::Result<()> {
    let env = Env::start("bad-numbers").await?;
    let cases = [
        (
            "zero-attempts",
            serde_json::json!({"poolRef": "p", "retry": {"maxAttempts": 0}}),
            "Job.warren.dev \"zero-attempts\" is invalid: spec.retry.maxAttempts: Invalid value: 0: spec.retry.maxAttempts in body should be greater than or equal to 1",
        ),
        (
            "slow-backoff",
            serde_json::json!({"poolRef": "p", "retry": {"backoff": {"factor": 0.5, "jitter": 2}}}),
            "Job.warren.dev \"slow-backoff\" is invalid: [spec.retry.backoff.factor: Invalid value: 0.5: spec.retry.backoff.factor in body should be greater than or equal to 1, spec.retry.backoff.jitter: Invalid value: 2: spec.retry.backoff.jitter in body should be less than or equal to 1]",
        ),
        (
            "negative-deadline",
            serde_json::json!({"poolRef": "p", "activeDeadlineSeconds": -5}),
            "Job.warren.dev \"negative-deadline\" is invalid: spec.activeDeadlineSeconds: Invalid value: -5: spec.activeDeadlineSeconds in body should be greater than or equal to 1",
        ),
        (
            "zero-timeout",
            serde_json::json!({"poolRef": "p", "timeoutSeconds": 0}),
            "Job.warren.dev \"zero-timeout\" is invalid: spec.timeoutSeconds: Invalid value: 0: spec.timeoutSeconds in body should be greater than or equal to 1",
        ),
        (
            "negative-budget",
            serde_json::json!({"poolRef": "p", "failurePolicy": {"maxFailedTasks": -1}}),
            "Job.warren.dev \"negative-budget\" is invalid: spec.failurePolicy.maxFailedTasks: Invalid value: -1: spec.failurePolicy.maxFailedTasks in body should be greater than or equal to 0",
        ),
        (
            "both-inputs",
            serde_json::json!({"poolRef": "p", "payload": 1, "items": [1]}),
            "Job.warren.dev \"both-inputs\" is invalid: spec: Invalid value: \"object\": set either items or payload, not both",
        ),
    ];
    for (name, spec, message) in cases {
        let (code, got) = refused(&env, name, spec).await?;
        assert_eq!((code, got.as_str()), (422, message), "{name}");
    }
    // Immutable fields: the update is refused, the Job stays as it was.
    env.create_job("keyed", serde_json::json!({"poolRef": "p", "idempotencyKey": "a", "suspend": true})).await?;
    let patch = serde_json::json!({"spec": {"idempotencyKey": "b"}});
    let err = env
        .jobs()
        .patch("keyed", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .expect_err("changing idempotencyKey must be refused");
    match err {
        kube::Error::Api(status) => assert_eq!(
            (status.code, status.message.as_str()),
            (422, "Job.warren.dev \"keyed\" is invalid: spec.idempotencyKey: Invalid value: \"string\": idempotencyKey is immutable")
        ),
        other => panic!("unexpected error: {other}"),
    }
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payloads_and_bad_durations_fail_the_job_with_a_clear_condition() -> anyhow::Result<()> {
    let env = Env::start("bad-input").await?;
    env.create_pool("pool", serde_json::json!({"workers": {"handler": ["true"]}, "replicas": 0})).await?;
    let big = "x".repeat(300 * 1024);
    let cases = [
        (
            "big-item",
            serde_json::json!({"poolRef": "pool", "items": [{"ok": true}, {"blob": big}]}),
            format!(
                "items[1] is {} bytes, over the limit of 262144 bytes per task; pass a reference to the data instead",
                300 * 1024 + 11
            ),
        ),
        (
            "big-payload",
            serde_json::json!({"poolRef": "pool", "completions": 3, "payload": big}),
            format!(
                "payload is {} bytes, over the limit of 262144 bytes per task; pass a reference to the data instead",
                300 * 1024 + 2
            ),
        ),
        (
            "bad-delay",
            serde_json::json!({"poolRef": "pool", "retry": {"backoff": {"initialDelay": "soon"}}}),
            "retry.backoff.initialDelay: \"soon\" is not a duration such as 500ms, 1s or 2m".to_string(),
        ),
    ];
    for (name, spec, message) in cases {
        env.create_job(name, spec).await?;
        let job = env
            .wait_job(name, Duration::from_secs(60), |j| j.status.as_ref().is_some_and(|s| s.phase == JobPhase::Failed))
            .await?;
        let status = job.status.expect("status");
        assert_eq!(status.enqueued, 0, "{name}: nothing was enqueued");
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready condition");
        assert_eq!((ready.status.as_str(), ready.reason.as_str(), ready.message.as_str()), ("False", "InvalidSpec", message.as_str()), "{name}");
        let failed = status.conditions.iter().find(|c| c.type_ == "Failed").expect("Failed condition");
        assert_eq!((failed.status.as_str(), failed.reason.as_str()), ("True", "InvalidSpec"), "{name}");
    }
    env.cleanup().await
}

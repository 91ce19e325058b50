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
        (
            "long-strings",
            serde_json::json!({"poolRef": "p", "priority": "p".repeat(33), "taskType": "t".repeat(254)}),
            "Job.warren.dev \"long-strings\" is invalid: [spec.priority: Too long: may not be more than 32 bytes, spec.taskType: Too long: may not be more than 253 bytes, <nil>: Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]",
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
async fn bad_pod_template_fields_of_a_pool_are_refused_with_the_field_named() -> anyhow::Result<()> {
    use warren_operator::crd::WorkerPool;
    let env = Env::start("bad-pod-template").await?;
    let resource = ApiResource::erase::<WorkerPool>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.namespace, &resource);
    let cases = [
        (
            "toleration",
            serde_json::json!({"tolerations": [{"key": "spot", "tolerationSeconds": "soon"}]}),
            "spec.workers.tolerations[0].tolerationSeconds",
        ),
        ("node-selector", serde_json::json!({"nodeSelector": {"gpu": 1}}), "spec.workers.nodeSelector.gpu"),
        ("volume", serde_json::json!({"volumes": [{"secret": {"secretName": "s"}}]}), "spec.workers.volumes[0].name"),
        ("mount", serde_json::json!({"volumeMounts": [{"name": "creds"}]}), "spec.workers.volumeMounts[0].mountPath"),
        ("pull-secrets", serde_json::json!({"imagePullSecrets": [{"name": 3}]}), "spec.workers.imagePullSecrets[0].name"),
        ("env-from", serde_json::json!({"envFrom": [{"secretRef": {"name": ["x"]}}]}), "spec.workers.envFrom[0].secretRef.name"),
    ];
    for (name, workers, field) in cases {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": name, "namespace": env.namespace}, "spec": {"workers": workers},
        }))?;
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => anyhow::bail!("WorkerPool {name} was accepted"),
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{name}: {}", status.message);
                assert!(status.message.contains(field), "{name}: the message names {field}: {}", status.message);
            }
            Err(other) => anyhow::bail!("unexpected error: {other}"),
        }
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
            format!("items[1] is {} bytes, over the limit of 262144 bytes per task; pass a reference to the data instead", 300 * 1024 + 11),
        ),
        (
            "big-payload",
            serde_json::json!({"poolRef": "pool", "completions": 3, "payload": big}),
            format!("payload is {} bytes, over the limit of 262144 bytes per task; pass a reference to the data instead", 300 * 1024 + 2),
        ),
        (
            // 1,000,000 tasks of a 2 KiB payload: 2 GB on the broker, over the default 1 GiB.
            "two-gigabytes",
            serde_json::json!({"poolRef": "pool", "completions": 1_000_000, "payload": "x".repeat(2046)}),
            "the Job's tasks carry 2048000000 bytes of payload in all, over the operator's limit of 1073741824 bytes \
             (--max-job-bytes); split the Job or pass references to the data"
                .to_string(),
        ),
        (
            "bad-delay",
            serde_json::json!({"poolRef": "pool", "retry": {"backoff": {"initialDelay": "soon"}}}),
            "retry.backoff.initialDelay: \"soon\" is not a duration such as 500ms, 1s or 2m".to_string(),
        ),
    ];
    for (name, spec, message) in cases {
        env.create_job(name, spec).await?;
        let job = env.wait_job(name, Duration::from_secs(60), |j| j.status.as_ref().is_some_and(|s| s.phase == JobPhase::Failed)).await?;
        let status = job.status.expect("status");
        assert_eq!(status.enqueued, 0, "{name}: nothing was enqueued");
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready condition");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str(), ready.message.as_str()),
            ("False", "InvalidSpec", message.as_str()),
            "{name}"
        );
        let failed = status.conditions.iter().find(|c| c.type_ == "Failed").expect("Failed condition");
        assert_eq!((failed.status.as_str(), failed.reason.as_str()), ("True", "InvalidSpec"), "{name}");
    }
    env.cleanup().await
}

/// Publishes `body` to the operator's reports queue as anyone with broker access could, and
/// waits for the broker's confirm (mandatory: the queue must exist).
/// Publishes a report as a worker would, signed with `key` when given (`warren-signature`).
async fn publish_report(channel: &lapin::Channel, queue: &str, body: &[u8], key: Option<&[u8]>) -> anyhow::Result<()> {
    use lapin::options::BasicPublishOptions;
    let mut properties = lapin::BasicProperties::default();
    if let Some(key) = key {
        let mut headers = lapin::types::FieldTable::default();
        let signature = warren_protocol::signature::sign(key, body);
        headers.insert("warren-signature".into(), lapin::types::AMQPValue::LongString(signature.into()));
        properties = properties.with_headers(headers);
    }
    let confirm = channel
        .basic_publish("".into(), queue.into(), BasicPublishOptions { mandatory: true, ..Default::default() }, body, properties)
        .await?
        .await?;
    anyhow::ensure!(confirm.is_ack() && confirm.take_message().is_none(), "the broker did not take the report");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_reports_are_dropped_and_counted_and_never_stop_another_jobs_accounting() -> anyhow::Result<()> {
    use warren_e2e::{OperatorOptions, free_port, http_get, sample};
    if Env::is_real_cluster() {
        eprintln!("*** SKIPPED on a real cluster: this test reads the metrics of the operator process it started.");
        return Ok(());
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let env = Env::start_with("hostile-reports", OperatorOptions { metrics_addr: addr.clone(), ..OperatorOptions::default() }).await?;
    env.create_pool(
        "pool",
        serde_json::json!({
            "workers": {"handler": ["sh", "-c", "cat >/dev/null; sleep 0.02"]}, "replicas": 1, "concurrency": 4
        }),
    )
    .await?;
    env.wait_pool_ready("pool", Duration::from_secs(60)).await?;
    let honest = env.create_job("honest", serde_json::json!({"poolRef": "pool", "completions": 300})).await?;
    let honest_uid = kube::ResourceExt::uid(&honest).expect("uid");
    // A Job of a pool without workers: nothing runs its tasks, so nothing may say they succeeded.
    env.create_pool("idle", serde_json::json!({"workers": {"handler": ["true"]}, "replicas": 0})).await?;
    let waiting = env.create_job("waiting", serde_json::json!({"poolRef": "idle", "completions": 5})).await?;
    let waiting_uid = kube::ResourceExt::uid(&waiting).expect("uid");
    env.wait_job("waiting", Duration::from_secs(60), |j| j.status.as_ref().is_some_and(|s| s.enqueued == 5)).await?;

    let connection = lapin::Connection::connect(env.amqp_url(), Default::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(Default::default()).await?;
    let queue = env.reports_queue();
    let ns = env.namespace.clone();
    let worker = serde_json::json!({"namespace": ns, "pool": "pool", "pod": "intruder-0"});
    let report = |jobs: serde_json::Value| {
        serde_json::to_vec(&serde_json::json!({"version": 1, "worker": worker, "sentAtMs": 1, "jobs": jobs})).unwrap()
    };
    let succeeded = |index: u32| serde_json::json!({"index": index, "attempt": 1, "atMs": 1, "kind": {"type": "succeeded"}});
    let ghost = "6f1c0d2e-0000-4000-8000-000000000001";
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\xff\x00 not json at all".to_vec()),
        ("over 1 MiB", vec![b' '; 2 * 1024 * 1024]),
        ("a future version", serde_json::to_vec(&serde_json::json!({"version": 9, "worker": worker, "sentAtMs": 1}))?),
        (
            "10,001 events",
            report(serde_json::json!([{"job": {"namespace": ns, "name": "honest", "uid": honest_uid},
            "events": (0..10_001).map(succeeded).collect::<Vec<_>>()}])),
        ),
        (
            "a worker that is no pod",
            serde_json::to_vec(&serde_json::json!({
            "version": 1, "worker": {"namespace": "Not A Namespace", "pool": "p", "pod": "x"}, "sentAtMs": 1, "jobs": []}))?,
        ),
        // 2,000 events under a 50 KB uid: 100 MB once expanded, if it were.
        (
            "a huge Job reference",
            report(serde_json::json!([
                {"job": {"namespace": ns, "name": "honest", "uid": "u".repeat(50_000)}, "events": (0..2_000).map(succeeded).collect::<Vec<_>>()},
                {"job": {"namespace": ns, "name": "Not_A_Name", "uid": ghost}, "events": [succeeded(0), succeeded(1), succeeded(2)]},
            ])),
        ),
        // The honest Job's name with another uid, a Job that never existed, a namespace that
        // does not exist: nothing to account, one lookup each at most.
        (
            "the honest Job's name, another uid",
            report(serde_json::json!([
            {"job": {"namespace": ns, "name": "honest", "uid": ghost}, "events": (0..300).map(succeeded).collect::<Vec<_>>()}])),
        ),
        (
            "a Job that never existed",
            report(serde_json::json!([
            {"job": {"namespace": ns, "name": "ghost", "uid": "6f1c0d2e-0000-4000-8000-000000000002"}, "events": [succeeded(0), succeeded(1)]}])),
        ),
        // Workers of another pool, or of a pool of the same name in another namespace, claim the
        // idle pool's tasks: only a Job's own pool runs them.
        (
            "another pool's worker",
            report(serde_json::json!([
            {"job": {"namespace": ns, "name": "waiting", "uid": waiting_uid}, "events": (0..5).map(succeeded).collect::<Vec<_>>()}])),
        ),
        (
            "another namespace's worker",
            serde_json::to_vec(&serde_json::json!({
            "version": 1, "worker": {"namespace": "elsewhere", "pool": "idle", "pod": "idle-0"}, "sentAtMs": 1,
            "jobs": [{"job": {"namespace": ns, "name": "waiting", "uid": waiting_uid}, "events": (0..5).map(succeeded).collect::<Vec<_>>()}]}))?,
        ),
        (
            "a namespace that does not exist",
            report(serde_json::json!([
            {"job": {"namespace": "no-such-namespace-e2e", "name": "ghost", "uid": "6f1c0d2e-0000-4000-8000-000000000003"}, "events": [succeeded(0)]}])),
        ),
    ];
    // Everything above comes from a compromised worker of pool `pool`: it holds that pool's
    // report key (from the Secret its pods mount) and signs with it.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(env.client.clone(), &ns);
    let secret = secrets.get("pool-warren-report-key").await?;
    let text = String::from_utf8(secret.data.as_ref().and_then(|d| d.get("key")).expect("the pool's report key").0.clone())?;
    let pool_key = warren_protocol::signature::parse_key(&text).map_err(anyhow::Error::msg)?;
    for (what, body) in &hostile {
        publish_report(&channel, &queue, body, Some(pool_key.bytes())).await.map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    }
    // The same worker speaking for the idle pool (its key is not that pool's), and anyone else
    // who may publish to the reports queue, unsigned: neither counts for the idle pool's Job.
    let as_idle = serde_json::to_vec(&serde_json::json!({
        "version": 1, "worker": {"namespace": ns, "pool": "idle", "pod": "idle-0"}, "sentAtMs": 1,
        "jobs": [{"job": {"namespace": ns, "name": "waiting", "uid": waiting_uid}, "events": (0..5).map(succeeded).collect::<Vec<_>>()}]}))?;
    publish_report(&channel, &queue, &as_idle, Some(pool_key.bytes())).await?;
    publish_report(&channel, &queue, &as_idle, None).await?;

    let job = env.wait_job("honest", Duration::from_secs(180), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    let status = job.status.expect("status");
    assert_eq!((status.phase, status.succeeded, status.failed), (JobPhase::Succeeded, 300, 0), "{status:?}");
    assert_eq!(status.succeeded_indexes, "0-299");
    assert_eq!(status.retries, 0);

    let expected = [
        ("malformed", 1.0),
        ("too_large", 1.0),
        ("unknown_version", 1.0),
        ("too_many_events", 1.0),
        ("invalid_worker", 1.0),
        ("invalid_job_ref", 2_003.0),
        ("unknown_job", 303.0),
        ("foreign_job", 5.0),
        ("unknown_pool", 1.0),
        ("bad_signature", 1.0),
        ("unsigned", 1.0),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (_, metrics) = http_get(&addr, "/metrics").await?;
        let counted = |reason: &str| sample(&metrics, &format!("warren_operator_reports_rejected_total{{reason=\"{reason}\"}}"));
        if expected.iter().all(|(reason, n)| counted(reason) == Some(*n)) {
            break metrics;
        }
        if tokio::time::Instant::now() > deadline {
            let seen: Vec<_> = expected.iter().map(|(reason, _)| (reason, counted(reason))).collect();
            anyhow::bail!("rejections counted: {seen:?}, expected {expected:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let waiting = env.jobs().get("waiting").await?.status.expect("status");
    assert_eq!((waiting.succeeded, waiting.phase), (0, JobPhase::Queued), "forged successes were not counted: {waiting:?}");
    // Dropped, not redelivered: the report consumer never reconnected, and the queue is empty.
    let reconnects = sample(&metrics, r#"warren_operator_broker_reconnects_total{connection="reports"}"#).unwrap_or(0.0);
    assert_eq!(reconnects, 0.0, "the report consumer reconnected");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while env.queue_depth(&queue).await? > 0 {
        assert!(tokio::time::Instant::now() < deadline, "reports are left in {queue}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    connection.close(200, "OK".into()).await?;
    env.cleanup().await
}

/// Messages of `queue` not yet acknowledged (delivered to a consumer and held), from rabbitmqctl
/// (AMQP has no way to ask).
fn unacknowledged(queue: &str) -> anyhow::Result<u64> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "--no-table-headers", "name", "messages_unacknowledged"])
        .output()?;
    anyhow::ensure!(out.status.success(), "rabbitmqctl list_queues: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(queue));
    Ok(line.and_then(|l| l.split_whitespace().nth(1)).and_then(|n| n.parse().ok()).unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_status_the_api_server_refuses_is_stopped_and_no_other_job_waits_for_it() -> anyhow::Result<()> {
    use warren_e2e::{OperatorOptions, free_port, http_get, sample};
    if Env::is_real_cluster() {
        eprintln!("*** SKIPPED on a real cluster: this test reads the metrics of the operator process it started.");
        return Ok(());
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let env = Env::start_with("status-refused", OperatorOptions { metrics_addr: addr.clone(), ..OperatorOptions::default() }).await?;
    env.create_pool(
        "pool",
        serde_json::json!({
            "workers": {"handler": ["sh", "-c", "cat >/dev/null; sleep 0.02"]}, "replicas": 1, "concurrency": 4
        }),
    )
    .await?;
    env.wait_pool_ready("pool", Duration::from_secs(60)).await?;

    // A Job just under what etcd stores (1.5 MiB): its spec fits, spec and any status do not.
    // A probe of the same shape measures what the server adds (metadata, managed fields).
    const LIMIT: usize = 1_572_864;
    let items = |bytes: usize| -> serde_json::Value {
        let per_item = bytes / 7;
        serde_json::json!((0..7).map(|i| serde_json::json!({"i": i, "pad": "x".repeat(per_item)})).collect::<Vec<_>>())
    };
    let probe = env.create_job("big-p", serde_json::json!({"poolRef": "absent", "items": items(700_000)})).await?;
    let probe_size = serde_json::to_vec(&probe)?.len();
    env.jobs().delete("big-p", &Default::default()).await?;
    let padding = 700_000 + (LIMIT - 400 - probe_size);
    let big = env.create_job("big-a", serde_json::json!({"poolRef": "pool", "items": items(padding)})).await?;
    let big_size = serde_json::to_vec(&big)?.len();
    assert!(big_size <= LIMIT && big_size + 400 > LIMIT - 100, "the Job is {big_size} bytes, just under {LIMIT}");
    env.create_job("small", serde_json::json!({"poolRef": "pool", "completions": 200})).await?;

    // The refused Job says why, in an Event (its status cannot hold it).
    let events =
        env.wait_events("big-a", Duration::from_secs(120), |seen| seen.iter().any(|(_, _, reason)| reason == "StatusTooLarge")).await?;
    assert!(events.iter().any(|e| e == &("Warning".into(), "Fail".into(), "StatusTooLarge".into())), "{events:?}");
    // The other Job runs to the end, exact.
    let small = env.wait_job("small", Duration::from_secs(180), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    let status = small.status.expect("status");
    assert_eq!((status.phase, status.succeeded, status.succeeded_indexes.as_str()), (JobPhase::Succeeded, 200, "0-199"));

    let (_, metrics) = http_get(&addr, "/metrics").await?;
    let refused = sample(&metrics, r#"warren_operator_status_write_errors_total{kind="Job",reason="RequestEntityTooLarge"}"#);
    assert!(refused.is_some_and(|n| n >= 2.0), "the full and the compacted status were refused: {refused:?}");
    // Every report was acknowledged: none is held back behind the refused Job's.
    let queue = env.reports_queue();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (ready, held) = (env.queue_depth(&queue).await?, unacknowledged(&queue)?);
        if ready == 0 && held == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{queue}: {ready} ready, {held} unacknowledged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.cleanup().await
}

/// Pool `pool` (1 worker, 2 slots) running `handler`, its worker's metrics on this host: their
/// address.
async fn pool_with_worker_metrics(env: &Env, handler: &str) -> anyhow::Result<String> {
    let worker_metrics = format!("127.0.0.1:{}", warren_e2e::free_port());
    env.create_pool(
        "pool",
        serde_json::json!({
            "workers": {"handler": ["sh", "-c", handler],
                        "env": [{"name": "WARREN_METRICS_ADDR", "value": worker_metrics}]},
            "replicas": 1, "concurrency": 2
        }),
    )
    .await?;
    Ok(worker_metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_control_messages_cancel_and_pause_nothing_and_are_counted() -> anyhow::Result<()> {
    use lapin::options::BasicPublishOptions;
    use warren_e2e::{http_get, sample};
    if Env::is_real_cluster() {
        eprintln!("*** SKIPPED on a real cluster: this test reads the metrics of a worker on this host.");
        return Ok(());
    }
    let env = Env::start("forged-control").await?;
    let worker_metrics = pool_with_worker_metrics(&env, "cat >/dev/null; sleep 0.1").await?;
    env.wait_pool_ready("pool", Duration::from_secs(60)).await?;
    // The workers were given the operator's public key, and nothing secret.
    let deployment: k8s_openapi::api::apps::v1::Deployment =
        kube::Api::namespaced(env.client.clone(), &env.namespace).get("pool-workers").await?;
    let container = &deployment.spec.template.spec.expect("pod spec").containers[0];
    let public_key = container.env.iter().flatten().find(|e| e.name == "WARREN_CONTROL_PUBLIC_KEY").and_then(|e| e.value.clone());
    assert!(public_key.as_ref().is_some_and(|k| k.len() == 64), "{public_key:?}");

    let victim = env.create_job("victim", serde_json::json!({"poolRef": "pool", "completions": 40})).await?;
    let victim_uid = kube::ResourceExt::uid(&victim).expect("uid");
    env.wait_job("victim", Duration::from_secs(60), |j| j.status.as_ref().is_some_and(|s| s.succeeded > 0)).await?;

    // Anyone who can publish to the control exchange: cancel the victim and pause the pool, from
    // far in the future (so that, if applied, no genuine message would ever replace it).
    let connection = lapin::Connection::connect(env.amqp_url(), Default::default()).await?;
    let channel = connection.create_channel().await?;
    let exchange = warren_protocol::names::control_exchange(&env.reports_queue());
    let forged = |sent_at_ms: u64| {
        serde_json::to_vec(&serde_json::json!({
            "version": 1, "sentAtMs": sent_at_ms,
            "cancelled": [{"uid": victim_uid, "reason": "forged"}],
            "paused": [{"namespace": env.namespace, "pool": "pool"}],
        }))
        .unwrap()
    };
    let now = warren_protocol::now_ms();
    let other_key = warren_protocol::control_signature::Signer::from_pkcs8(&warren_protocol::control_signature::generate()?)?;
    for (body, signature) in [(forged(now), None), (forged(u64::MAX / 2), None), (forged(now), Some(other_key.sign(&forged(now))))] {
        let mut properties = lapin::BasicProperties::default();
        if let Some(signature) = signature {
            let mut headers = lapin::types::FieldTable::default();
            headers.insert(warren_protocol::headers::CONTROL_SIGNATURE.into(), lapin::types::AMQPValue::LongString(signature.into()));
            properties = properties.with_headers(headers);
        }
        channel.basic_publish(exchange.as_str().into(), "".into(), BasicPublishOptions::default(), &body, properties).await?.await?;
    }

    // The victim runs to the end, nothing cancelled; the worker counted what it refused.
    let job = env.wait_job("victim", Duration::from_secs(120), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;
    let status = job.status.expect("status");
    assert_eq!((status.phase, status.succeeded, status.failed), (JobPhase::Succeeded, 40, 0), "{status:?}");
    let metrics = http_get(&worker_metrics, "/metrics").await?.1;
    let rejected = |reason: &str| {
        sample(&metrics, &format!("warren_worker_control_messages_rejected_total{{pool=\"pool\",reason=\"{reason}\"}}")).unwrap_or(0.0)
    };
    assert_eq!((rejected("unsigned"), rejected("bad_signature")), (2.0, 1.0), "{metrics}");
    connection.close(200, "done".into()).await?;
    env.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_put_into_a_pools_queue_without_its_key_never_run_and_are_counted() -> anyhow::Result<()> {
    use lapin::options::BasicPublishOptions;
    use warren_e2e::{http_get, sample, wait_metric};
    use warren_protocol::{JobRef, PROTOCOL_VERSION, RetryPolicy, TaskEnvelope};
    if Env::is_real_cluster() {
        eprintln!("*** SKIPPED on a real cluster: this test reads the metrics of a worker on this host.");
        return Ok(());
    }
    let env = Env::start("forged-tasks").await?;
    let worker_metrics = pool_with_worker_metrics(&env, "cat >/dev/null").await?;
    let victim = env.create_job("victim", serde_json::json!({"poolRef": "pool", "completions": 5})).await?;
    let victim_uid = kube::ResourceExt::uid(&victim).expect("uid");
    env.wait_job("victim", Duration::from_secs(120), |j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).await?;

    // Another namespace's worker (anyone who may publish on the vhost) puts tasks for the victim
    // Job into this pool's queue: one unsigned, one signed with another pool's key.
    let forged = TaskEnvelope {
        version: PROTOCOL_VERSION,
        job: JobRef { namespace: env.namespace.clone(), name: "victim".into(), uid: victim_uid.clone() },
        index: 0,
        total: 5,
        attempt: 1,
        priority: "normal".into(),
        task_type: None,
        payload: serde_json::json!({"rm": "-rf /"}),
        idempotency_key: TaskEnvelope::idempotency_key_for(&victim_uid, 0),
        retry: RetryPolicy::default(),
        timeout_seconds: None,
        replay: 0,
        enqueued_at_ms: 0,
    }
    .to_json();
    let connection = lapin::Connection::connect(env.amqp_url(), Default::default()).await?;
    let channel = connection.create_channel().await?;
    let exchange = warren_protocol::names::pool_exchange(&env.namespace, "pool");
    let other_pools_key = warren_protocol::signature::sign_task(&[0x11; 32], &forged);
    for signature in [None, Some(other_pools_key)] {
        let mut headers = lapin::types::FieldTable::default();
        if let Some(signature) = signature {
            headers.insert(warren_protocol::headers::TASK_SIGNATURE.into(), lapin::types::AMQPValue::LongString(signature.into()));
        }
        let properties = lapin::BasicProperties::default().with_delivery_mode(2).with_headers(headers);
        let options = BasicPublishOptions { mandatory: true, ..Default::default() };
        channel.basic_publish(exchange.as_str().into(), "normal".into(), options, &forged, properties).await?.await?;
    }

    // The worker dead-letters both without running them and counts them; the Job is untouched.
    for reason in ["unsigned", "bad-signature"] {
        let series = format!("warren_worker_tasks_refused_total{{pool=\"pool\",reason=\"{reason}\"}}");
        let counted = wait_metric(&worker_metrics, &series, 1.0, Duration::from_secs(30)).await;
        assert_eq!(counted, Ok(()), "{series}");
    }
    let metrics = http_get(&worker_metrics, "/metrics").await?.1;
    let succeeded = sample(&metrics, "warren_worker_tasks_total{pool=\"pool\",priority=\"normal\",outcome=\"succeeded\"}");
    assert_eq!(succeeded, Some(5.0), "only the Job's own 5 tasks ran: {metrics}");
    let job: Job = Api::namespaced(env.client.clone(), &env.namespace).get("victim").await?;
    let status = job.status.expect("status");
    assert_eq!((status.phase, status.succeeded, status.failed), (JobPhase::Succeeded, 5, 0), "{status:?}");

    // They wait in the dead-letter queue, with their reasons, and a replay does not sign them.
    let listing = env.warren(&["dlq", "list", "--pool", "pool"])?;
    // The worker dead-letters each refused message as it arrives, concurrently: in either order.
    let mut reasons: Vec<&str> = listing.lines().filter(|l| l.starts_with("victim ")).filter_map(|l| l.split_whitespace().nth(4)).collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["bad-signature", "unsigned"], "{listing}");
    let replayed = env.warren(&["dlq", "replay", "--pool", "pool"])?;
    assert!(replayed.contains("replayed 0 task(s)") && replayed.contains("2 not signed by the pool"), "{replayed}");
    let dlq = warren_protocol::names::dead_letter_queue(&env.namespace, "pool");
    assert_eq!(env.queue_depth(&dlq).await?, 2);
    connection.close(200, "done".into()).await?;
    env.cleanup().await?;
    Ok(())
}

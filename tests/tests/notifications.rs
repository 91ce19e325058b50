//! Completion events (issue #16.3) end to end: a Job's or Workflow's `spec.notify` webhook gets a
//! signed CloudEvent when it ends, at least once, recorded in `status.notifications`; a receiver
//! that is down or answers 500 is retried, one that succeeded is never called again (not even by
//! a restarted operator); a destination outside the allow-list is refused and said so.
//!
//! The receiver is a small HTTP server in the test on 127.0.0.1; the operator is started with
//! `WARREN_NOTIFY_ALLOWED_HOSTS=127.0.0.1` (loopback is refused by default).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_e2e::{Env, OperatorOptions};
use warren_operator::crd::{Job, JobPhase, NotificationStatus, NotifyPhase, WorkflowPhase};

const PATIENCE: Duration = Duration::from_secs(120);
const KEY: &str = "e2e-signing-key";

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    event: serde_json::Value,
    /// The signature verified against `<webhook-timestamp>.<body>` under [`KEY`].
    signed: bool,
    id_header: String,
    content_type: String,
    /// What the receiver answered.
    answered: u16,
}

/// A webhook receiver on 127.0.0.1: answers 500 to the first `failures` requests, then 200.
#[derive(Clone)]
struct Receiver {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(failures: usize) -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Ok(Self::serve(listener, failures))
    }

    /// Starts listening on `port` (which nothing listened on before).
    async fn start_on(port: u16) -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        Ok(Self::serve(listener, 0))
    }

    fn serve(listener: tokio::net::TcpListener, failures: usize) -> Receiver {
        let receiver = Receiver { port: listener.local_addr().expect("address").port(), received: Arc::default() };
        let received = receiver.received.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let received = received.clone();
                tokio::spawn(async move {
                    let Ok((path, headers, body)) = read_request(&mut stream).await else { return };
                    let answered = if received.lock().unwrap().len() < failures { 500 } else { 200 };
                    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default();
                    let signed = verify(header("webhook-timestamp").as_bytes(), &body, &header("webhook-signature"));
                    let event = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    received.lock().unwrap().push(Received {
                        path,
                        event,
                        signed,
                        id_header: header("webhook-id"),
                        content_type: header("content-type"),
                        answered,
                    });
                    let reason = if answered == 200 { "OK" } else { "Internal Server Error" };
                    let _ = stream
                        .write_all(format!("HTTP/1.1 {answered} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())
                        .await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        receiver
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self, path: &str) -> Vec<Received> {
        self.received.lock().unwrap().iter().filter(|r| r.path == path).cloned().collect()
    }
}

/// Reads one HTTP/1.1 request: (path, lower-case headers, body).
async fn read_request(stream: &mut tokio::net::TcpStream) -> anyhow::Result<(String, Vec<(String, String)>, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed before the headers ended");
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let path = lines.next().unwrap_or_default().split(' ').nth(1).unwrap_or_default().to_string();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    let length: usize = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed before the body ended");
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((path, headers, body))
}

/// The receiver's check, as docs/notifications.md shows it: HMAC-SHA256 of
/// `<timestamp>.<body>` under the key, hex, after `v1=`.
fn verify(timestamp: &[u8], body: &[u8], header: &str) -> bool {
    let Some(tag) = header.strip_prefix("v1=").and_then(|h| hex::decode(h).ok()) else { return false };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(KEY.as_bytes()).expect("a key");
    mac.update(timestamp);
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

fn options() -> OperatorOptions {
    OperatorOptions { env: vec![("WARREN_NOTIFY_ALLOWED_HOSTS".into(), "127.0.0.1".into())], ..OperatorOptions::default() }
}

async fn setup(test: &str) -> anyhow::Result<Env> {
    let env = Env::start_with(test, options()).await?;
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "hook", "namespace": env.namespace},
        "stringData": {"key": KEY},
    }))?;
    Api::<Secret>::namespaced(env.client.clone(), &env.namespace).create(&PostParams::default(), &secret).await?;
    env.create_pool("pool", serde_json::json!({"workers": {"handler": ["sh", "-c", "cat >/dev/null"]}, "replicas": 1})).await?;
    env.wait_pool_ready("pool", PATIENCE).await?;
    Ok(env)
}

fn notify(url: &str, on: &[&str]) -> serde_json::Value {
    serde_json::json!([{"webhook": {"url": url, "secretRef": {"name": "hook", "key": "key"}}, "on": on}])
}

fn records(job: &Job) -> Vec<NotificationStatus> {
    job.status.as_ref().map(|s| s.notifications.clone()).unwrap_or_default()
}

async fn wait_settled(env: &Env, name: &str) -> anyhow::Result<Job> {
    env.wait_job(name, PATIENCE, |j| {
        let r = records(j);
        !r.is_empty() && r.iter().all(|n| n.delivered.is_some() || n.abandoned.is_some())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_events_reach_the_receiver_once_for_jobs_and_workflows_even_across_a_restart() -> anyhow::Result<()> {
    if warren_e2e::skip_on_real_cluster(
        "the webhook receiver listens on this host's loopback, which the operator in a cluster cannot reach",
    ) {
        return Ok(());
    }
    let mut env = setup("notify-signed").await?;
    let receiver = Receiver::start(0).await?;
    env.create_job(
        "done",
        serde_json::json!({"poolRef": "pool", "completions": 3, "notify": notify(&receiver.url("/job"), &["Succeeded", "Failed"])}),
    )
    .await?;
    env.create_workflow(
        "flow",
        serde_json::json!({
            "steps": [{"name": "only", "job": {"poolRef": "pool", "payload": {"x": 1}}}],
            "notify": notify(&receiver.url("/workflow"), &["Succeeded"]),
        }),
    )
    .await?;
    // Refused by the allow-list: recorded, an Event, never sent.
    env.create_job("metadata", serde_json::json!({"poolRef": "pool", "completions": 1, "notify": notify("http://169.254.169.254/latest/meta-data", &["Succeeded"])}))
        .await?;

    let job = wait_settled(&env, "done").await?;
    let status = job.status.clone().expect("status");
    assert_eq!(status.phase, JobPhase::Succeeded);
    let record = &status.notifications[..];
    assert_eq!(record.len(), 1, "{record:?}");
    let uid = job.metadata.uid.clone().expect("uid");
    assert_eq!(
        (record[0].destination.as_str(), record[0].phase, record[0].id.as_str(), record[0].attempts, record[0].last_error.as_deref()),
        (receiver.url("/job").as_str(), NotifyPhase::Succeeded, format!("{uid}.succeeded").as_str(), 1, None)
    );
    let got = receiver.requests("/job");
    assert_eq!(got.len(), 1, "{got:?}");
    let event = &got[0].event;
    assert!(got[0].signed, "the signature verifies under the Secret's key: {got:?}");
    assert_eq!(got[0].content_type, "application/cloudevents+json; charset=utf-8");
    assert_eq!((event["specversion"].as_str(), event["type"].as_str()), (Some("1.0"), Some("dev.warren.job.succeeded.v1")));
    assert_eq!(event["source"].as_str().unwrap(), format!("/apis/warren.dev/v1alpha1/namespaces/{}/jobs/done", env.namespace));
    assert_eq!(
        (event["id"].as_str().unwrap(), got[0].id_header.as_str()),
        (format!("{uid}.succeeded").as_str(), format!("{uid}.succeeded").as_str())
    );
    assert_eq!(
        (event["data"]["total"].as_u64(), event["data"]["succeeded"].as_u64(), event["data"]["failed"].as_u64()),
        (Some(3), Some(3), Some(0))
    );
    assert_eq!(event["data"]["reason"].as_str(), Some("AllTasksSucceeded"));

    let wf = env
        .wait_workflow("flow", PATIENCE, |w| w.status.as_ref().is_some_and(|s| s.notifications.iter().any(|n| n.delivered.is_some())))
        .await?;
    let wf_status = wf.status.expect("status");
    assert_eq!((wf_status.phase, wf_status.notifications.len(), wf_status.notifications[0].attempts), (WorkflowPhase::Succeeded, 1, 1));
    let got = receiver.requests("/workflow");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].signed);
    assert_eq!(got[0].event["type"].as_str(), Some("dev.warren.workflow.succeeded.v1"));
    assert_eq!(got[0].event["source"].as_str().unwrap(), format!("/apis/warren.dev/v1alpha1/namespaces/{}/workflows/flow", env.namespace));
    assert_eq!(got[0].event["data"]["steps"]["only"].as_str(), Some("Succeeded"));

    let refused = wait_settled(&env, "metadata").await?;
    let r = &records(&refused)[0];
    assert_eq!((r.attempts, r.delivered.is_some(), r.reason.as_deref()), (0, false, Some("DestinationRefused")), "{r:?}");
    assert!(r.last_error.as_deref().unwrap_or_default().contains("169.254.169.254"), "{r:?}");
    assert_eq!(refused.status.expect("status").phase, JobPhase::Succeeded, "a refused destination changes nothing of the Job");
    env.wait_events("metadata", PATIENCE, |e| e.iter().any(|(t, _, reason)| t == "Warning" && reason == "NotificationDestinationRefused"))
        .await?;

    // A restarted operator reads what was delivered and sends none of it again; it delivers the
    // events of a Job that ends after the restart.
    env.kill_operator().await?;
    env.start_operator()?;
    env.create_job(
        "after",
        serde_json::json!({"poolRef": "pool", "completions": 1, "notify": notify(&receiver.url("/after"), &["Succeeded"])}),
    )
    .await?;
    wait_settled(&env, "after").await?;
    // The Workflow is re-read too: one more request to it would be here by now.
    env.wait_workflow("flow", PATIENCE, |w| w.status.as_ref().is_some_and(|s| s.notifications.iter().all(|n| n.delivered.is_some())))
        .await?;
    assert_eq!(receiver.requests("/after").len(), 1);
    assert_eq!((receiver.requests("/job").len(), receiver.requests("/workflow").len()), (1, 1), "nothing delivered was sent again");
    assert_eq!(records(&env.jobs().get("done").await?), record.to_vec(), "the record is kept as it was");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_ten_seconds_then_up_gets_exactly_one_delivery() -> anyhow::Result<()> {
    if warren_e2e::skip_on_real_cluster(
        "the webhook receiver listens on this host's loopback, which the operator in a cluster cannot reach",
    ) {
        return Ok(());
    }
    let env = setup("notify-down").await?;
    let port = warren_e2e::free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    env.create_job("job", serde_json::json!({"poolRef": "pool", "completions": 2, "notify": notify(&url, &["Succeeded"])})).await?;
    // The first attempts find nobody listening.
    let failing = env.wait_job("job", PATIENCE, |j| records(j).first().is_some_and(|r| r.attempts >= 1 && r.last_error.is_some())).await?;
    let first = records(&failing)[0].clone();
    assert!(first.delivered.is_none() && first.abandoned.is_none(), "{first:?}");
    assert!(first.last_error.as_deref().unwrap().contains("connecting"), "{first:?}");
    assert_eq!(failing.status.expect("status").phase, JobPhase::Succeeded, "a failing receiver never changes the Job's phase");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let receiver = Receiver::start_on(port).await?;

    let done = wait_settled(&env, "job").await?;
    let record = records(&done)[0].clone();
    assert!(record.delivered.is_some(), "{record:?}");
    assert!(record.attempts >= 2, "failed attempts before the delivery are counted: {record:?}");
    // Given time for a duplicate to arrive (the notifier looks twice a second), none does.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = receiver.requests("/hook");
    assert_eq!(got.len(), 1, "exactly one delivery: {got:?}");
    assert!(got[0].signed && got[0].answered == 200);
    assert_eq!(records(&env.jobs().get("job").await?), vec![record], "nothing more was attempted");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_500_is_retried_until_it_answers_200() -> anyhow::Result<()> {
    if warren_e2e::skip_on_real_cluster(
        "the webhook receiver listens on this host's loopback, which the operator in a cluster cannot reach",
    ) {
        return Ok(());
    }
    let env = setup("notify-500").await?;
    let receiver = Receiver::start(2).await?;
    // A Job that fails: the Failed event goes out.
    let pool_fail = serde_json::json!({"workers": {"handler": ["sh", "-c", "cat >/dev/null; exit 1"]}, "replicas": 1});
    env.create_pool("failing", pool_fail).await?;
    env.create_job(
        "job",
        serde_json::json!({"poolRef": "failing", "completions": 1, "retry": {"maxAttempts": 1}, "notify": notify(&receiver.url("/hook"), &["Failed"])}),
    )
    .await?;
    let done = wait_settled(&env, "job").await?;
    let status = done.status.clone().expect("status");
    assert_eq!(status.phase, JobPhase::Failed);
    let record = &status.notifications[0];
    assert_eq!((record.attempts, record.delivered.is_some(), record.phase), (3, true, NotifyPhase::Failed), "{record:?}");
    assert!(record.last_error.as_deref().unwrap_or_default().starts_with("HTTP 500"), "{record:?}");
    let got = receiver.requests("/hook");
    assert_eq!(got.iter().map(|r| r.answered).collect::<Vec<_>>(), vec![500, 500, 200]);
    assert!(got.iter().all(|r| r.signed), "every attempt is signed");
    let ids: std::collections::BTreeSet<&str> = got.iter().map(|r| r.event["id"].as_str().unwrap_or_default()).collect();
    assert_eq!(ids.len(), 1, "every attempt carries the same id: {ids:?}");
    assert_eq!(got[2].event["type"].as_str(), Some("dev.warren.job.failed.v1"));
    assert_eq!((got[2].event["data"]["failed"].as_u64(), got[2].event["data"]["reason"].as_str()), (Some(1), Some("TasksFailed")));
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_exchange_set_the_same_event_is_published_there_and_recorded() -> anyhow::Result<()> {
    if warren_e2e::skip_on_real_cluster(
        "the webhook receiver listens on this host's loopback, which the operator in a cluster cannot reach",
    ) {
        return Ok(());
    }
    let exchange = format!("e2e-notify-events-{:08x}", rand::random::<u32>());
    let mut options = options();
    options.env.push(("WARREN_NOTIFY_EXCHANGE".into(), exchange.clone()));
    let env = Env::start_with("notify-amqp", options).await?;
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "hook", "namespace": env.namespace},
        "stringData": {"key": KEY},
    }))?;
    Api::<Secret>::namespaced(env.client.clone(), &env.namespace).create(&PostParams::default(), &secret).await?;
    // A consumer's queue, bound before anything is published (exclusive: gone with the connection).
    let connection = warren_e2e::connect(env.amqp_url()).await?;
    let channel = connection.create_channel().await?;
    let durable = lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare(exchange.as_str().into(), lapin::ExchangeKind::Topic, durable, Default::default()).await?;
    let queue = format!("{exchange}-consumer");
    let exclusive = lapin::options::QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    channel.queue_declare(queue.as_str().into(), exclusive, Default::default()).await?;
    channel
        .queue_bind(queue.as_str().into(), exchange.as_str().into(), "dev.warren.job.#".into(), Default::default(), Default::default())
        .await?;

    env.create_pool("pool", serde_json::json!({"workers": {"handler": ["sh", "-c", "cat >/dev/null"]}, "replicas": 1})).await?;
    let receiver = Receiver::start(0).await?;
    env.create_job(
        "job",
        serde_json::json!({"poolRef": "pool", "completions": 2, "notify": notify(&receiver.url("/hook"), &["Succeeded"])}),
    )
    .await?;
    let done = wait_settled(&env, "job").await?;
    let uid = done.metadata.uid.clone().expect("uid");
    let mut destinations: Vec<(String, bool, u32)> =
        records(&done).iter().map(|r| (r.destination.clone(), r.delivered.is_some(), r.attempts)).collect();
    destinations.sort();
    assert_eq!(destinations, vec![(format!("exchange:{exchange}"), true, 1), (receiver.url("/hook"), true, 1)]);

    let message = channel
        .basic_get(queue.as_str().into(), lapin::options::BasicGetOptions { no_ack: true })
        .await?
        .expect("the event is in the bound queue");
    assert_eq!(message.delivery.routing_key.as_str(), "dev.warren.job.succeeded.v1");
    let event: serde_json::Value = serde_json::from_slice(&message.delivery.data)?;
    assert_eq!(event["id"].as_str().unwrap(), format!("{uid}.succeeded"));
    assert_eq!(event, receiver.requests("/hook")[0].event, "the same event as the webhook's");
    assert!(channel.basic_get(queue.as_str().into(), lapin::options::BasicGetOptions { no_ack: true }).await?.is_none(), "published once");
    let _ = connection.close(200, "".into()).await;
    env.cleanup().await?;
    warren_e2e::delete_exchange(&exchange).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_url_that_is_not_http_is_refused_with_a_422_naming_the_field() -> anyhow::Result<()> {
    let env = Env::start_with("notify-bad", options()).await?;
    let resource = ApiResource::erase::<Job>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.namespace, &resource);
    let cases = [
        (
            "ftp",
            notify("ftp://files.example.com/x", &["Succeeded"]),
            "spec.notify[0].webhook.url",
            "url must be an http:// or https:// URL with a host",
        ),
        (
            "no-host",
            notify("http:///x", &["Succeeded"]),
            "spec.notify[0].webhook.url",
            "url must be an http:// or https:// URL with a host",
        ),
        ("phase", notify("https://hooks.example.com/x", &["Running"]), "spec.notify[0].on[0]", "Unsupported value"),
    ];
    for (name, notify, field, message) in cases {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "Job",
            "metadata": {"name": name, "namespace": env.namespace}, "spec": {"poolRef": "p", "notify": notify},
        }))?;
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => anyhow::bail!("Job {name} was accepted"),
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{name}: {}", status.message);
                assert!(status.message.contains(field) && status.message.contains(message), "{name}: {}", status.message);
            }
            Err(other) => anyhow::bail!("unexpected error: {other}"),
        }
    }
    env.cleanup().await
}

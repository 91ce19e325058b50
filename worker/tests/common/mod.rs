//! Shared helpers for the broker tests: a uniquely named pool topology on the local RabbitMQ,
//! publishing, reading reports and queue depths, and cleanup.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
    message::Delivery,
    options::*,
    types::{AMQPValue, FieldTable},
};
use tokio_util::sync::CancellationToken;
use warren_protocol::{
    JobRef, PROTOCOL_VERSION, REPORT_CONTENT_TYPE, ReportBatch, RetryPolicy, TASK_CONTENT_TYPE, TaskEnvelope, TaskEvent, TaskEventKind,
    names,
};
use warren_worker::{WorkerBuilder, WorkerSummary, topology};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Safety net against hangs only: tests assert states, never durations.
pub const PATIENCE: Duration = Duration::from_secs(90);

pub struct TestPool {
    pub namespace: String,
    pub pool: String,
    pub classes: Vec<String>,
    pub reports_queue: String,
    pub job_uid: String,
    pub connection: Connection,
    pub channel: Channel,
}

pub async fn connect() -> Connection {
    Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("these tests need RabbitMQ on 127.0.0.1:5672 (guest/guest): {e}"))
}

impl TestPool {
    pub async fn new(classes: &[&str]) -> Self {
        Self::new_typed(classes, "classic").await
    }

    /// A pool whose queues have `queue_type` (`classic` or `quorum`).
    pub async fn new_typed(classes: &[&str], queue_type: &str) -> Self {
        let connection = connect().await;
        let channel = connection.create_channel().await.unwrap();
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let namespace = format!("wt-{:08x}", rand::random::<u32>());
        let pool = "pool".to_string();
        let classes: Vec<String> = classes.iter().map(|c| c.to_string()).collect();
        topology::declare_pool(&channel, &namespace, &pool, &classes, &topology::WorkQueueArgs::of_type(queue_type)).await.unwrap();
        let reports_queue = format!("warren.test-reports.{namespace}");
        topology::declare_reports_queue(&channel, &reports_queue, "classic").await.unwrap();
        let job_uid = format!("uid-{:08x}", rand::random::<u32>());
        TestPool { namespace, pool, classes, reports_queue, job_uid, connection, channel }
    }

    pub fn envelope(&self, index: u32, total: u32, priority: &str) -> TaskEnvelope {
        TaskEnvelope {
            version: PROTOCOL_VERSION,
            job: JobRef { namespace: self.namespace.clone(), name: "job".into(), uid: self.job_uid.clone() },
            index,
            total,
            attempt: 1,
            priority: priority.into(),
            task_type: None,
            payload: serde_json::json!({ "index": index }),
            idempotency_key: TaskEnvelope::idempotency_key_for(&self.job_uid, index),
            retry: RetryPolicy { max_attempts: 3, initial_delay_ms: 50, factor: 1.0, max_delay_ms: 50, jitter: 0.0 },
            timeout_seconds: None,
            replay: 0,
            enqueued_at_ms: warren_protocol::now_ms(),
        }
    }

    pub async fn publish(&self, envelope: &TaskEnvelope) {
        self.publish_raw(&envelope.priority, &envelope.to_json()).await;
    }

    pub async fn publish_raw(&self, class: &str, body: &[u8]) {
        self.publish_signed(class, body, None).await;
    }

    /// Publishes `body` with `signature` as its task signature header (none: unsigned).
    pub async fn publish_signed(&self, class: &str, body: &[u8], signature: Option<String>) {
        let mut headers = lapin::types::FieldTable::default();
        if let Some(signature) = signature {
            headers.insert(warren_protocol::headers::TASK_SIGNATURE.into(), lapin::types::AMQPValue::LongString(signature.into()));
        }
        let confirm = self
            .channel
            .basic_publish(
                names::pool_exchange(&self.namespace, &self.pool).as_str().into(),
                class.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                body,
                BasicProperties::default().with_delivery_mode(2).with_content_type(TASK_CONTENT_TYPE.into()).with_headers(headers),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
        assert!(confirm.take_message().is_none(), "task to class {class} was unroutable");
    }

    pub fn builder(&self) -> WorkerBuilder {
        warren_worker::Worker::builder()
            .amqp_url(AMQP_URL)
            .namespace(&self.namespace)
            .pool(&self.pool)
            .priorities(self.classes.clone())
            .pod_name(format!("{}-pod", self.namespace))
            .reports_queue(&self.reports_queue)
    }

    /// Environment for a `warren-worker` process serving this pool.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        vec![
            ("WARREN_AMQP_URL".into(), AMQP_URL.into()),
            ("WARREN_NAMESPACE".into(), self.namespace.clone()),
            ("WARREN_POOL".into(), self.pool.clone()),
            ("WARREN_PRIORITIES".into(), self.classes.join(",")),
            ("WARREN_POD_NAME".into(), format!("{}-exec", self.namespace)),
            ("WARREN_REPORTS_QUEUE".into(), self.reports_queue.clone()),
        ]
    }

    /// Re-declares `queue` with `args` on a fresh channel: true only if the queue has exactly them.
    pub async fn declares_with(&self, queue: &str, args: lapin::types::FieldTable) -> bool {
        let channel = self.connection.create_channel().await.unwrap();
        let ok = channel.queue_declare(queue.into(), lapin::options::QueueDeclareOptions::durable(), args).await.is_ok();
        let _ = channel.close(200, "OK".into()).await;
        ok
    }

    pub fn work_queue(&self, class: &str) -> String {
        names::work_queue(&self.namespace, &self.pool, class)
    }

    pub fn dlq(&self) -> String {
        names::dead_letter_queue(&self.namespace, &self.pool)
    }

    pub fn retry_queue(&self, delay_ms: u64) -> String {
        names::retry_queue(&self.namespace, &self.pool, delay_ms)
    }

    /// Messages ready in `queue`; `None` when the queue does not exist.
    pub async fn depth(&self, queue: &str) -> Option<u32> {
        // A passive declare of a missing queue closes its channel: use a fresh one.
        let channel = self.connection.create_channel().await.unwrap();
        let result =
            channel.queue_declare(queue.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default()).await;
        let _ = channel.close(200, "OK".into()).await;
        result.ok().map(|q| q.message_count())
    }

    pub async fn work_depth(&self) -> u32 {
        let mut total = 0;
        for class in &self.classes {
            total += self.depth(&self.work_queue(class)).await.unwrap();
        }
        total
    }

    /// Waits (bounded by [`PATIENCE`]) until `queue` holds `expected` ready messages.
    pub async fn wait_depth(&self, queue: &str, expected: u32) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let depth = self.depth(queue).await;
            if depth == Some(expected) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{queue} never reached depth {expected} (now {depth:?})");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Takes every message of the dead-letter queue (acked).
    pub async fn drain_dlq(&self) -> Vec<Delivery> {
        let mut out = Vec::new();
        while let Some(m) = self.channel.basic_get(self.dlq().as_str().into(), BasicGetOptions::default()).await.unwrap() {
            m.delivery.ack(BasicAckOptions::default()).await.unwrap();
            out.push(m.delivery);
        }
        out
    }

    pub async fn reports(&self) -> Reports {
        let channel = self.connection.create_channel().await.unwrap();
        let consumer = channel
            .basic_consume(
                self.reports_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Reports { consumer, batches: Vec::new(), events: Vec::new() }
    }

    pub async fn cleanup(self, retry_tiers: &[u64]) {
        // A fresh channel: a test's own may have been closed by the broker (e.g. a passive
        // declare of a queue that does not exist), and cleanup must still happen.
        let fresh = self.connection.create_channel().await;
        let ch = fresh.as_ref().unwrap_or(&self.channel);
        let mut queues: Vec<String> = self.classes.iter().map(|c| self.work_queue(c)).collect();
        queues.push(self.dlq());
        queues.push(names::suspect_queue(&self.namespace, &self.pool));
        queues.push(self.reports_queue.clone());
        queues.extend(retry_tiers.iter().map(|t| self.retry_queue(*t)));
        for q in queues {
            let _ = ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
        }
        for x in [
            names::pool_exchange(&self.namespace, &self.pool),
            topology::retry_exchange(&self.namespace, &self.pool),
            names::control_exchange(&self.reports_queue),
        ] {
            let _ = ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()).await;
        }
        let _ = self.connection.close(200, "OK".into()).await;
    }
}

pub struct Reports {
    consumer: Consumer,
    pub batches: Vec<ReportBatch>,
    pub events: Vec<TaskEvent>,
}

impl Reports {
    /// Reads the next report batch; fails after [`PATIENCE`].
    async fn next_batch(&mut self, what: &str) {
        let next = tokio::time::timeout(PATIENCE, self.consumer.next()).await;
        let delivery = match next {
            Ok(Some(Ok(d))) => d,
            Ok(other) => panic!("reports consumer ended: {other:?}"),
            Err(_) => panic!("gave up waiting for: {what}; events so far: {:#?}", self.events),
        };
        assert_eq!(delivery.properties.content_type().as_ref().map(|c| c.as_str()), Some(REPORT_CONTENT_TYPE));
        assert_eq!(delivery.properties.delivery_mode(), &Some(2), "reports are persistent");
        let batch = ReportBatch::from_json(&delivery.data).unwrap();
        assert!(batch.events.len() <= 500);
        self.events.extend(batch.events.iter().cloned());
        self.batches.push(batch);
    }

    /// Reads report batches until `done(events so far)` holds.
    pub async fn until(&mut self, what: &str, done: impl Fn(&[TaskEvent]) -> bool) {
        while !done(&self.events) {
            self.next_batch(what).await;
        }
    }

    /// Reads report batches until one carries a heartbeat matching `pred`.
    pub async fn until_heartbeat(&mut self, what: &str, pred: impl Fn(&warren_protocol::Heartbeat) -> bool) {
        while !self.batches.iter().any(|b| b.heartbeat.as_ref().is_some_and(&pred)) {
            self.next_batch(what).await;
        }
    }

    /// Final events (`Succeeded`, or `Failed` dead-lettered) per task index.
    pub fn finals(&self) -> HashMap<u32, Vec<TaskEventKind>> {
        let mut out: HashMap<u32, Vec<TaskEventKind>> = HashMap::new();
        for e in self.events.iter().filter(|e| e.kind.is_final()) {
            out.entry(e.index).or_default().push(e.kind.clone());
        }
        out
    }

    pub fn count(&self, pred: impl Fn(&TaskEvent) -> bool) -> usize {
        self.events.iter().filter(|e| pred(e)).count()
    }
}

pub fn final_count(events: &[TaskEvent]) -> usize {
    events.iter().filter(|e| e.kind.is_final()).count()
}

pub fn header_text(delivery: &Delivery, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Starts a worker in-process; cancel the token to shut it down.
pub fn spawn_worker(worker: warren_worker::Worker) -> (CancellationToken, tokio::task::JoinHandle<WorkerSummary>) {
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    (shutdown, handle)
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

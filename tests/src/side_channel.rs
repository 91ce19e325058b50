//! What a test's handlers tell the test, through the broker (issue #13, point 9).
//!
//! A test needs to see what its handlers did (which task ran, how often, when) and to hold or
//! release them (a gate). Files on the test host worked only while the pods ran on that host;
//! on a real cluster they run elsewhere. Both ends reach the broker, so the side channel is
//! there, apart from everything Warren declares:
//! - a **channel** is a queue `warren.<namespace>.side.<channel>`; a handler appends a line with
//!   `"$WARREN_E2E_PROBE" record <channel> <line>` (published with a confirm: once the probe has
//!   exited 0 the line is on the broker), and the test reads every line so far, in order of
//!   arrival, with [`SideChannel::lines`];
//! - a **gate** is a queue `warren.<namespace>.side.gate.<gate>`, open while it holds a message:
//!   the test opens and closes it, a handler blocks on `"$WARREN_E2E_PROBE" wait <gate>` or asks
//!   `"$WARREN_E2E_PROBE" is-open <gate>` (exit code 0 when open).
//!
//! The queues expire after ten minutes unused (a test killed before its cleanup leaves nothing
//! for long); [`SideChannel::delete`] removes the ones the test used.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable};

/// Longest line a handler may record (a frame of the probe).
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// A side-channel queue unused this long is deleted by the broker.
const EXPIRES_MS: i64 = 10 * 60 * 1000;

/// The environment variables of a pod that talks on the side channel.
pub const PROBE_ENV: &str = "WARREN_E2E_PROBE";
pub const URL_ENV: &str = "WARREN_E2E_SIDE_URL";
pub const PREFIX_ENV: &str = "WARREN_E2E_SIDE_PREFIX";

/// `warren.<namespace>.side`: every side-channel queue of a test starts with it.
pub fn prefix(namespace: &str) -> String {
    format!("warren.{namespace}.side")
}

/// The queue of a channel (records) under `prefix`.
pub fn channel_queue(prefix: &str, channel: &str) -> String {
    format!("{prefix}.{channel}")
}

/// The queue of a gate under `prefix`.
pub fn gate_queue(prefix: &str, gate: &str) -> String {
    format!("{prefix}.gate.{gate}")
}

/// Declares a side-channel queue (both ends declare it alike, whoever comes first).
pub async fn declare(channel: &lapin::Channel, queue: &str) -> anyhow::Result<u32> {
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongLongInt(EXPIRES_MS));
    let q = channel.queue_declare(queue.into(), QueueDeclareOptions::default(), args).await?;
    Ok(q.message_count())
}

/// Publishes one message to a side-channel queue and waits for the broker's confirm.
pub async fn publish(channel: &lapin::Channel, queue: &str, body: &[u8]) -> anyhow::Result<()> {
    let confirm = channel.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, Default::default()).await?;
    anyhow::ensure!(confirm.await?.is_ack(), "the broker did not confirm the message to {queue}");
    Ok(())
}

/// The test's end of the side channel.
pub struct SideChannel {
    url: String,
    pod_url: String,
    prefix: String,
    connection: tokio::sync::Mutex<Option<lapin::Channel>>,
    /// Lines read so far, per channel (reading takes them off the queue).
    lines: std::sync::Mutex<BTreeMap<String, Vec<String>>>,
    /// Every queue this test touched: what [`SideChannel::delete`] removes.
    queues: std::sync::Mutex<BTreeSet<String>>,
}

impl SideChannel {
    /// The side channel of the test in `namespace`, on the broker at `url` (as the test host
    /// reaches it; pods use `WARREN_E2E_POD_AMQP_URL` when set, as on a real cluster).
    pub fn new(url: &str, namespace: &str) -> Self {
        Self {
            url: url.to_string(),
            pod_url: std::env::var("WARREN_E2E_POD_AMQP_URL").unwrap_or_else(|_| url.to_string()),
            prefix: prefix(namespace),
            connection: Default::default(),
            lines: Default::default(),
            queues: Default::default(),
        }
    }

    /// The broker the test host reaches the side channel on.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The environment a pool's workers need for their handlers to use the probe (merge it into
    /// `spec.workers.env`); the probe's path is [`crate::pod_bin`]'s.
    pub fn pod_env(&self) -> Vec<serde_json::Value> {
        vec![
            serde_json::json!({"name": PROBE_ENV, "value": crate::pod_bin("warren-e2e-probe")}),
            serde_json::json!({"name": URL_ENV, "value": self.pod_url}),
            serde_json::json!({"name": PREFIX_ENV, "value": self.prefix}),
        ]
    }

    async fn channel(&self) -> anyhow::Result<tokio::sync::MutexGuard<'_, Option<lapin::Channel>>> {
        let mut guard = self.connection.lock().await;
        if !guard.as_ref().is_some_and(|c| c.status().connected()) {
            let conn = crate::connect(&self.url).await.context("connecting the side channel")?;
            let channel = conn.create_channel().await?;
            channel.confirm_select(ConfirmSelectOptions::default()).await?;
            *guard = Some(channel);
        }
        Ok(guard)
    }

    fn touch(&self, queue: &str) {
        self.queues.lock().unwrap().insert(queue.to_string());
    }

    /// Every line recorded on `channel` so far, oldest first.
    pub async fn lines(&self, channel: &str) -> anyhow::Result<Vec<String>> {
        let queue = channel_queue(&self.prefix, channel);
        self.touch(&queue);
        let guard = self.channel().await?;
        let amqp = guard.as_ref().expect("connected");
        declare(amqp, &queue).await?;
        let mut fresh = Vec::new();
        while let Some(message) = amqp.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }).await? {
            fresh.push(String::from_utf8_lossy(&message.delivery.data).into_owned());
        }
        drop(guard);
        let mut lines = self.lines.lock().unwrap();
        let kept = lines.entry(channel.to_string()).or_default();
        kept.extend(fresh);
        Ok(kept.clone())
    }

    /// Waits until `channel` holds at least `n` lines; returns them all.
    pub async fn wait_lines(&self, channel: &str, n: usize, timeout: Duration) -> anyhow::Result<Vec<String>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let lines = self.lines(channel).await?;
            if lines.len() >= n {
                return Ok(lines);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} lines on side channel {channel:?} after {timeout:?}: {lines:?}",
                lines.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Records a line on `channel` from this process (what the probe does for a handler).
    pub async fn record(&self, channel: &str, line: &str) -> anyhow::Result<()> {
        let queue = channel_queue(&self.prefix, channel);
        let guard = self.channel().await?;
        let amqp = guard.as_ref().expect("connected");
        declare(amqp, &queue).await?;
        publish(amqp, &queue, line.as_bytes()).await
    }

    /// The side channel a pod was given ([`SideChannel::pod_env`]), if it was.
    pub fn from_pod_env() -> Option<Self> {
        let (url, prefix) = (std::env::var(URL_ENV).ok()?, std::env::var(PREFIX_ENV).ok()?);
        Some(Self {
            url: url.clone(),
            pod_url: url,
            prefix,
            connection: Default::default(),
            lines: Default::default(),
            queues: Default::default(),
        })
    }

    /// Opens a gate: handlers waiting on it go on, `is-open` says yes.
    pub async fn open(&self, gate: &str) -> anyhow::Result<()> {
        let queue = gate_queue(&self.prefix, gate);
        self.touch(&queue);
        let guard = self.channel().await?;
        let amqp = guard.as_ref().expect("connected");
        if declare(amqp, &queue).await? == 0 {
            publish(amqp, &queue, b"open").await?;
        }
        Ok(())
    }

    /// Closes a gate (a gate never opened is closed).
    pub async fn close(&self, gate: &str) -> anyhow::Result<()> {
        let queue = gate_queue(&self.prefix, gate);
        self.touch(&queue);
        let guard = self.channel().await?;
        let amqp = guard.as_ref().expect("connected");
        declare(amqp, &queue).await?;
        amqp.queue_purge(queue.as_str().into(), QueuePurgeOptions::default()).await?;
        Ok(())
    }

    /// The names of the queues this test used (for a cleanup that has no async runtime).
    pub fn queues(&self) -> Vec<String> {
        self.queues.lock().unwrap().iter().cloned().collect()
    }

    /// Deletes the side-channel queues this test used.
    pub async fn delete(&self) -> anyhow::Result<()> {
        for queue in self.queues() {
            crate::delete_queue_at(&self.url, &queue).await?;
        }
        Ok(())
    }
}

//! The operator's RabbitMQ connection: topology declarations and confirmed publishing.
//!
//! Owns one connection and one confirm-mode channel, re-created on demand after a failure
//! (bounded retries, exponential backoff with jitter). Must not decide anything: callers say what
//! to declare and publish.

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;

/// Errors talking to RabbitMQ.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot reach RabbitMQ at {url}: {source}")]
    Unreachable { url: String, source: lapin::Error },
    #[error("RabbitMQ refused {what}: {source}")]
    Amqp { what: &'static str, source: lapin::Error },
    #[error("RabbitMQ did not confirm {count} of the published messages")]
    NotConfirmed { count: usize },
    #[error("queue {queue} does not exist")]
    Missing { queue: String },
}

impl BrokerError {
    /// Stable reason for metrics and events.
    pub fn reason(&self) -> &'static str {
        match self {
            BrokerError::Unreachable { .. } => "BrokerUnreachable",
            BrokerError::Amqp { .. } => "BrokerRefused",
            BrokerError::NotConfirmed { .. } => "PublishNotConfirmed",
            BrokerError::Missing { .. } => "QueueMissing",
        }
    }
}

/// Publisher confirmations still to come for one published batch.
pub struct Confirms(Vec<lapin::PublisherConfirm>);

impl Confirms {
    async fn wait(self) -> Result<(), BrokerError> {
        let mut refused = 0;
        for confirm in futures::future::join_all(self.0).await {
            match confirm {
                Ok(c) => {
                    if !c.is_ack() || c.take_message().is_some() {
                        refused += 1;
                    }
                }
                Err(source) => return Err(BrokerError::Amqp { what: "basic.publish confirm", source }),
            }
        }
        if refused > 0 {
            return Err(BrokerError::NotConfirmed { count: refused });
        }
        Ok(())
    }
}

/// Delay before reconnect attempt `n` (0-based): 100 ms doubling to 5 s, minus up to 30 % jitter.
pub fn reconnect_delay(attempt: u32, random: f64) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(16)).min(5_000) as f64;
    Duration::from_millis((base * (1.0 - 0.3 * random.clamp(0.0, 1.0))) as u64)
}

/// How long opening a channel may take before the connection is given up on.
pub const CHANNEL_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A shared, self-healing connection to the broker.
///
/// Operations that may be refused (passive declares of queues that may be missing, declarations,
/// deletes) run on scratch channels ([`Broker::scratch`]): a refusal closes only that channel,
/// never the publishing one. A failed publish drops the connection ([`Broker::reset`]); the next
/// one is counted in `warren_operator_broker_reconnects_total`.
pub struct Broker {
    url: String,
    state: Mutex<State>,
    /// A connection was up before: the next one is a reconnect (for the metrics).
    was_connected: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct State {
    connection: Option<Connection>,
    /// The confirm-mode publishing channel on `connection`.
    channel: Option<Channel>,
}

impl Broker {
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), state: Mutex::new(State::default()), was_connected: false.into() }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens a connection, retrying with backoff up to `attempts` times.
    pub async fn connect(url: &str, attempts: u32) -> Result<Connection, BrokerError> {
        let mut attempt = 0;
        loop {
            let props = ConnectionProperties::default().with_connection_name("warren-operator".into());
            match Connection::connect(url, props).await {
                Ok(conn) => return Ok(conn),
                Err(source) if attempt + 1 >= attempts => {
                    return Err(BrokerError::Unreachable { url: redact(url), source });
                }
                Err(error) => {
                    tracing::warn!(%error, attempt, "RabbitMQ connection failed; retrying");
                    tokio::time::sleep(reconnect_delay(attempt, rand::random())).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Opens a channel on the live connection, re-establishing it (counted as a reconnect) if it
    /// was lost. A connection that cannot open a channel is dropped.
    async fn open_channel(&self, state: &mut State) -> Result<Channel, BrokerError> {
        if !state.connection.as_ref().is_some_and(|c| c.status().connected()) {
            *state = State::default();
            let metrics = crate::metrics::global();
            metrics.broker_connected.get_or_create(&crate::metrics::PUBLISH_CONNECTION).set(0);
            state.connection = Some(Self::connect(&self.url, 8).await?);
            metrics.broker_connected.get_or_create(&crate::metrics::PUBLISH_CONNECTION).set(1);
            if self.was_connected.swap(true, std::sync::atomic::Ordering::SeqCst) {
                metrics.broker_reconnects.get_or_create(&crate::metrics::PUBLISH_CONNECTION).inc();
            }
        }
        let conn = state.connection.as_ref().expect("connected above");
        match tokio::time::timeout(CHANNEL_OPEN_TIMEOUT, conn.create_channel()).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(source)) => {
                *state = State::default();
                Err(BrokerError::Amqp { what: "channel.open", source })
            }
            Err(_) => {
                // A connection that cannot open a channel in time is not one to keep.
                *state = State::default();
                Err(BrokerError::Unreachable {
                    url: redact(&self.url),
                    source: lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed)),
                })
            }
        }
    }

    /// The confirm-mode channel, re-opened if the previous one was closed.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut state = self.state.lock().await;
        let connected = state.connection.as_ref().is_some_and(|c| c.status().connected());
        if let Some(channel) = state.channel.as_ref().filter(|c| connected && c.status().connected()) {
            return Ok(channel.clone());
        }
        state.channel = None;
        let channel = self.open_channel(&mut state).await?;
        if let Err(source) = channel.confirm_select(ConfirmSelectOptions::default()).await {
            *state = State::default();
            return Err(BrokerError::Amqp { what: "confirm.select", source });
        }
        state.channel = Some(channel.clone());
        Ok(channel)
    }

    /// A short-lived channel on the shared connection for an operation whose failure closes its
    /// channel (a passive declare of a queue that may be missing, a declaration that may be
    /// inequivalent): it never takes the publishing channel, or a publish in flight on it, down
    /// with it. Closed when dropped.
    pub async fn scratch(&self) -> Result<Scratch, BrokerError> {
        let mut state = self.state.lock().await;
        Ok(Scratch(self.open_channel(&mut state).await?))
    }

    /// Ready messages per queue, by passive declares on one scratch channel (a new one after each
    /// missing queue, whose 404 closes it); `None` for a queue that does not exist.
    pub async fn queue_depths(&self, queues: &[String]) -> Result<Vec<Option<u64>>, BrokerError> {
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let mut out = Vec::with_capacity(queues.len());
        let mut scratch = None;
        for queue in queues {
            let channel = match scratch.take() {
                Some(channel) => channel,
                None => self.scratch().await?,
            };
            match channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await {
                Ok(q) => {
                    out.push(Some(u64::from(q.message_count())));
                    scratch = Some(channel);
                }
                Err(source) if is_not_found(&source) => out.push(None),
                Err(source) => return Err(BrokerError::Amqp { what: "queue.declare (passive)", source }),
            }
        }
        Ok(out)
    }

    /// After a failed publish: forgets the connection and its channel, so that the next call
    /// connects afresh (a connection that looks up but no longer answers is not kept).
    pub async fn reset(&self) {
        *self.state.lock().await = State::default();
        crate::metrics::global().broker_connected.get_or_create(&crate::metrics::PUBLISH_CONNECTION).set(0);
    }

    /// Publishes persistent messages and waits until the broker confirmed every one of them
    /// (`mandatory`: an unroutable message is a failure, not a silent drop).
    pub async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        content_type: &str,
        bodies: &[Vec<u8>],
    ) -> Result<(), BrokerError> {
        let confirms = self.publish(exchange, routing_key, content_type, bodies).await?;
        self.confirmed(confirms).await
    }

    /// Publishes persistent, `mandatory` messages without waiting for their confirmations, so
    /// that a caller can publish the next batch while the broker confirms this one (confirms
    /// arrive in publishing order). Nothing is confirmed until [`Broker::confirmed`] says so.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        content_type: &str,
        bodies: &[Vec<u8>],
    ) -> Result<Confirms, BrokerError> {
        let result = self.try_publish(exchange, routing_key, content_type, bodies).await;
        self.reset_on_error(result).await
    }

    /// Waits until every message of a [`Broker::publish`] is confirmed (acked and routed).
    pub async fn confirmed(&self, confirms: Confirms) -> Result<(), BrokerError> {
        let result = confirms.wait().await;
        self.reset_on_error(result).await
    }

    /// After a failed publish the channel may be closed: the next call opens a fresh one.
    async fn reset_on_error<T>(&self, result: Result<T, BrokerError>) -> Result<T, BrokerError> {
        if result.is_err() {
            self.reset().await;
        }
        result
    }

    async fn try_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        content_type: &str,
        bodies: &[Vec<u8>],
    ) -> Result<Confirms, BrokerError> {
        let channel = self.channel().await?;
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from(content_type));
        let mut confirms = Vec::with_capacity(bodies.len());
        for body in bodies {
            let confirm = channel
                .basic_publish(
                    ShortString::from(exchange),
                    ShortString::from(routing_key),
                    BasicPublishOptions { mandatory: true, immediate: false },
                    body,
                    properties.clone(),
                )
                .await
                .map_err(|source| BrokerError::Amqp { what: "basic.publish", source })?;
            confirms.push(confirm);
        }
        Ok(Confirms(confirms))
    }

    /// Deletes queues and exchanges (missing ones are fine).
    pub async fn delete(&self, queues: &[String], exchanges: &[String]) -> Result<(), BrokerError> {
        let mut channel = self.scratch().await?;
        for queue in queues {
            if let Err(source) = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await {
                tracing::warn!(%queue, error = %source, "queue.delete failed");
                channel = self.scratch().await?;
            }
        }
        for exchange in exchanges {
            if let Err(source) = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await {
                tracing::warn!(%exchange, error = %source, "exchange.delete failed");
                channel = self.scratch().await?;
            }
        }
        Ok(())
    }
}

/// A channel from [`Broker::scratch`]; closed when dropped.
pub struct Scratch(Channel);

impl std::ops::Deref for Scratch {
    type Target = Channel;
    fn deref(&self) -> &Channel {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let channel = self.0.clone();
        if channel.status().connected() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = channel.close(200, "done".into()).await;
                });
            }
        }
    }
}

/// True when the broker answered 404 NOT_FOUND (a missing queue or exchange).
pub fn is_not_found(error: &lapin::Error) -> bool {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => {
            matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND))
        }
        _ => false,
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_grows_and_is_bounded() {
        assert_eq!(reconnect_delay(0, 0.0), Duration::from_millis(100));
        assert_eq!(reconnect_delay(3, 0.0), Duration::from_millis(800));
        assert_eq!(reconnect_delay(30, 0.0), Duration::from_millis(5_000));
        assert_eq!(reconnect_delay(30, 1.0), Duration::from_millis(3_500));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("amqp://guest:secret@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}

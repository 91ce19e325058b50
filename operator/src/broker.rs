//! The operator's RabbitMQ connection: topology declarations and confirmed publishing.
//!
//! Owns one connection and one confirm-mode channel, re-created on demand after a failure
//! (bounded retries, exponential backoff with jitter). Must not decide anything: callers say what
//! to declare and publish.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions};
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
}

impl BrokerError {
    /// Stable reason for metrics and events.
    pub fn reason(&self) -> &'static str {
        match self {
            BrokerError::Unreachable { .. } => "BrokerUnreachable",
            BrokerError::Amqp { .. } => "BrokerRefused",
            BrokerError::NotConfirmed { .. } => "PublishNotConfirmed",
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

/// A shared, self-healing connection to the broker.
pub struct Broker {
    url: String,
    state: Mutex<Option<(Connection, Channel)>>,
    /// A connection was up before: the next one is a reconnect (for the metrics).
    was_connected: std::sync::atomic::AtomicBool,
}

impl Broker {
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), state: Mutex::new(None), was_connected: false.into() }
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

    /// The confirm-mode channel, reconnecting if the previous one died.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut state = self.state.lock().await;
        if let Some((conn, channel)) = state.as_ref() {
            if conn.status().connected() && channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        *state = None;
        let metrics = crate::metrics::global();
        metrics.broker_connected.get_or_create(&crate::metrics::PUBLISH_CONNECTION).set(0);
        let conn = Self::connect(&self.url, 8).await?;
        let channel = conn.create_channel().await.map_err(|source| BrokerError::Amqp { what: "channel.open", source })?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|source| BrokerError::Amqp { what: "confirm.select", source })?;
        *state = Some((conn, channel.clone()));
        metrics.broker_connected.get_or_create(&crate::metrics::PUBLISH_CONNECTION).set(1);
        if self.was_connected.swap(true, std::sync::atomic::Ordering::SeqCst) {
            metrics.broker_reconnects.get_or_create(&crate::metrics::PUBLISH_CONNECTION).inc();
        }
        Ok(channel)
    }

    /// Forgets the current channel so the next call reconnects.
    pub async fn reset(&self) {
        *self.state.lock().await = None;
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
        for queue in queues {
            let channel = self.channel().await?;
            if let Err(source) = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await {
                self.reset().await;
                tracing::warn!(%queue, error = %source, "queue.delete failed");
            }
        }
        for exchange in exchanges {
            let channel = self.channel().await?;
            if let Err(source) = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await {
                self.reset().await;
                tracing::warn!(%exchange, error = %source, "exchange.delete failed");
            }
        }
        Ok(())
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

//! The operator's RabbitMQ connection: topology declarations and confirmed publishing.
//!
//! Owns one connection and one confirm-mode channel, re-created on demand after a failure
//! (bounded retries, exponential backoff with jitter). Must not decide anything: callers say what
//! to declare and publish.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::Mutex;
use warren_protocol::TASK_CONTENT_TYPE;
use warren_protocol::signature::ReportKey;

/// Errors talking to RabbitMQ.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot reach RabbitMQ at {url}: {source}")]
    Unreachable { url: String, source: lapin::Error },
    #[error("RabbitMQ refused {what}: {source}")]
    Amqp { what: &'static str, source: lapin::Error },
    #[error("RabbitMQ did not confirm {count} of the published messages")]
    NotConfirmed { count: usize },
    #[error(
        "RabbitMQ confirmed none of {count} published messages within {timeout:?} (a blocked publisher, a memory or disk alarm, or a connection that no longer answers)"
    )]
    ConfirmTimeout { count: usize, timeout: Duration },
    #[error("queue {queue} does not exist")]
    Missing { queue: String },
    #[error("queue {queue} is unavailable: {message}")]
    Unavailable { queue: String, message: String },
    #[error("RabbitMQ did not answer {what} within {timeout:?}; the connection is dropped")]
    NoAnswer { what: &'static str, timeout: Duration },
    #[error("invalid broker address: {0}")]
    InvalidAddress(#[from] warren_protocol::addresses::AddressError),
}

impl BrokerError {
    /// Stable reason for metrics and events.
    pub fn reason(&self) -> &'static str {
        match self {
            BrokerError::Unreachable { .. } => "BrokerUnreachable",
            BrokerError::Amqp { .. } => "BrokerRefused",
            BrokerError::NotConfirmed { .. } => "PublishNotConfirmed",
            BrokerError::ConfirmTimeout { .. } => "PublishConfirmTimeout",
            BrokerError::Missing { .. } => "QueueMissing",
            BrokerError::Unavailable { .. } => "QueueUnavailable",
            BrokerError::NoAnswer { .. } => "BrokerNoAnswer",
            BrokerError::InvalidAddress(_) => "InvalidBrokerAddress",
        }
    }
}

/// Publisher confirmations still to come for one published batch, and the publishing channel
/// (its epoch) they come on.
pub struct Confirms {
    confirms: Vec<lapin::PublisherConfirm>,
    epoch: u64,
}

/// How long the confirmations of one published batch may take. A confirm that never comes (the
/// broker blocks publishers during a memory or disk alarm; a connection that looks up but no
/// longer answers) must not hold a Job's reconcile forever: it fails, the connection is dropped,
/// and the reconcile retries from the Job's confirmed watermark (a re-sent task is counted once).
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

impl Confirms {
    async fn wait(self) -> Result<(), BrokerError> {
        let count = self.confirms.len();
        let Ok(confirms) = tokio::time::timeout(CONFIRM_TIMEOUT, futures::future::join_all(self.confirms)).await else {
            return Err(BrokerError::ConfirmTimeout { count, timeout: CONFIRM_TIMEOUT });
        };
        let mut refused = 0;
        for confirm in confirms {
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

/// The one reconnect policy of every Warren connection (100 ms doubling to 10 s, equal jitter).
pub use warren_protocol::retry::reconnect_delay;

/// How long opening a channel may take before the connection is given up on.
pub const CHANNEL_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one request on a scratch channel (a passive declare) may wait for its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub use warren_protocol::addresses::HANDSHAKE_TIMEOUT;

/// A shared, self-healing connection to the broker.
///
/// Operations that may be refused (passive declares of queues that may be missing, declarations,
/// deletes) run on scratch channels ([`Broker::scratch`]): a refusal closes only that channel,
/// never the publishing one. A failure is kept to what failed, because every Job publishes on
/// this one connection: a publish that failed retires only the publishing channel it was made on
/// (never a newer one another caller opened since), a message the broker refused (nacked or
/// unroutable) retires nothing, and a request that got no answer drops only its scratch channel.
/// The connection is dropped only when it cannot open a channel in time (a connection that looks
/// up but no longer answers) or is closed; the next one is counted in
/// `warren_operator_broker_reconnects_total`.
///
/// No lock is held while talking to the broker: the state lock only guards a swap of handles.
/// Connecting is single-flight (one caller connects, the others wait for its result), and callers
/// with a live connection never wait behind a reconnect or a slow channel open.
pub struct Broker {
    url: String,
    tls: warren_protocol::amqp::Tls,
    state: std::sync::Mutex<State>,
    /// Held by the one caller establishing a connection.
    connecting: Mutex<()>,
    /// Held by the one caller opening the publishing channel.
    opening_publisher: Mutex<()>,
    /// A connection was up before: the next one is a reconnect (for the metrics).
    was_connected: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct State {
    connection: Option<Arc<Connection>>,
    /// The confirm-mode publishing channel on `connection`, and its epoch (one per channel
    /// opened), so that a caller retires only the channel its own publish failed on.
    channel: Option<(u64, Channel)>,
    epochs: u64,
}

impl Broker {
    pub fn new(url: impl Into<String>, tls: warren_protocol::amqp::Tls) -> Self {
        Self {
            url: url.into(),
            tls,
            state: std::sync::Mutex::new(State::default()),
            connecting: Mutex::new(()),
            opening_publisher: Mutex::new(()),
            was_connected: false.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens a connection to one of the addresses in `url` (one URI, or several separated by
    /// commas: see [`warren_protocol::addresses`]), retrying with backoff up to `attempts`
    /// times. One attempt tries every address once, from a random one; each try is bounded by
    /// [`HANDSHAKE_TIMEOUT`]. `amqps://` addresses use `tls`.
    pub async fn connect(url: &str, tls: &warren_protocol::amqp::Tls, attempts: u32) -> Result<Connection, BrokerError> {
        let addresses = warren_protocol::addresses::parse(url)?;
        let mut attempt = 0;
        loop {
            let last = match warren_protocol::amqp::connect_any(&addresses, rand::random::<u32>() as usize, "warren-operator", tls).await {
                Ok((conn, _)) => return Ok(conn),
                Err(error) => {
                    tracing::warn!(%error, attempt, "no broker address answered");
                    error
                }
            };
            let source = last;
            if attempt + 1 >= attempts {
                return Err(BrokerError::Unreachable { url: redact(url), source });
            }
            tokio::time::sleep(reconnect_delay(attempt + 1, rand::random())).await;
            attempt += 1;
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn live(&self) -> Option<Arc<Connection>> {
        self.state().connection.clone().filter(|c| c.status().connected())
    }

    /// The live connection, re-established (counted as a reconnect) if it was lost.
    async fn connection(&self) -> Result<Arc<Connection>, BrokerError> {
        if let Some(conn) = self.live() {
            return Ok(conn);
        }
        let _turn = self.connecting.lock().await;
        // Whoever held the turn before may have connected already.
        if let Some(conn) = self.live() {
            return Ok(conn);
        }
        self.forget(None);
        let conn = Arc::new(Self::connect(&self.url, &self.tls, 8).await?);
        self.state().connection = Some(conn.clone());
        let metrics = crate::metrics::global();
        metrics.broker_connected.get_or_create(&crate::metrics::PUBLISH_CONNECTION).set(1);
        if self.was_connected.swap(true, std::sync::atomic::Ordering::SeqCst) {
            metrics.broker_reconnects.get_or_create(&crate::metrics::PUBLISH_CONNECTION).inc();
        }
        Ok(conn)
    }

    /// Drops the connection (only if it is still `which`, when given: a caller that saw an old
    /// connection fail must not drop the new one another caller just made) and closes it.
    fn forget(&self, which: Option<&Arc<Connection>>) {
        let old = {
            let mut state = self.state();
            if which.is_some_and(|w| !state.connection.as_ref().is_some_and(|c| Arc::ptr_eq(c, w))) {
                return;
            }
            std::mem::take(&mut *state).connection
        };
        crate::metrics::global().broker_connected.get_or_create(&crate::metrics::PUBLISH_CONNECTION).set(0);
        if let Some(old) = old.filter(|c| c.status().connected()) {
            // A connection that looks up but failed us: close it rather than leak its socket.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, old.close(200, "reconnecting".into())).await;
                });
            }
        }
    }

    /// Opens a channel on the live connection. A connection that cannot open a channel (in
    /// time) is dropped.
    async fn open_channel(&self) -> Result<Channel, BrokerError> {
        let conn = self.connection().await?;
        match tokio::time::timeout(CHANNEL_OPEN_TIMEOUT, conn.create_channel()).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(source)) => {
                self.forget(Some(&conn));
                Err(BrokerError::Amqp { what: "channel.open", source })
            }
            Err(_) => {
                // A connection that cannot open a channel in time is not one to keep.
                self.forget(Some(&conn));
                Err(BrokerError::Unreachable {
                    url: redact(&self.url),
                    source: lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed)),
                })
            }
        }
    }

    fn publisher(&self) -> Option<(u64, Channel)> {
        let state = self.state();
        let connected = state.connection.as_ref().is_some_and(|c| c.status().connected());
        state.channel.clone().filter(|(_, c)| connected && c.status().connected())
    }

    /// The confirm-mode channel and its epoch, re-opened if the previous one was closed or
    /// retired.
    async fn channel(&self) -> Result<(u64, Channel), BrokerError> {
        if let Some(channel) = self.publisher() {
            return Ok(channel);
        }
        let _turn = self.opening_publisher.lock().await;
        if let Some(channel) = self.publisher() {
            return Ok(channel);
        }
        let channel = self.open_channel().await?;
        if let Err(source) = channel.confirm_select(ConfirmSelectOptions::default()).await {
            let _ = channel.close(200, "confirm.select failed".into()).await;
            return Err(BrokerError::Amqp { what: "confirm.select", source });
        }
        let mut state = self.state();
        state.epochs += 1;
        let epoch = state.epochs;
        state.channel = Some((epoch, channel.clone()));
        Ok((epoch, channel))
    }

    /// Gives up publishing channel `epoch` after a publish on it failed (closed, or its confirms
    /// never came): the next publish opens a fresh one. A newer channel stays, and so does the
    /// connection.
    fn retire_channel(&self, epoch: u64) {
        let retired = {
            let mut state = self.state();
            if state.channel.as_ref().is_none_or(|(e, _)| *e != epoch) {
                return;
            }
            state.channel.take()
        };
        if let Some((_, channel)) = retired.filter(|(_, c)| c.status().connected())
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, channel.close(200, "retired after a failed publish".into())).await;
            });
        }
    }

    /// A short-lived channel on the shared connection for an operation whose failure closes its
    /// channel (a passive declare of a queue that may be missing, a declaration that may be
    /// inequivalent): it never takes the publishing channel, or a publish in flight on it, down
    /// with it. Closed when dropped.
    pub async fn scratch(&self) -> Result<Scratch, BrokerError> {
        Ok(Scratch(self.open_channel().await?))
    }

    /// Ready messages per queue, by passive declares on one scratch channel (a new one after each
    /// missing queue, whose 404 closes it); `None` for a queue that does not exist.
    pub async fn queue_depths(&self, queues: &[String]) -> Result<Vec<Option<u64>>, BrokerError> {
        self.queue_depths_on(&mut None, queues).await
    }

    /// [`Broker::queue_depths`] on the caller's scratch channel, kept open across calls (a sweep
    /// over every pool opens one channel, not one per pool: two round trips fewer per pool). It
    /// is replaced when a 404 closes it and dropped (closed) when a call fails.
    pub async fn queue_depths_on(&self, scratch: &mut Option<Scratch>, queues: &[String]) -> Result<Vec<Option<u64>>, BrokerError> {
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let mut out = Vec::with_capacity(queues.len());
        for queue in queues {
            let channel = match scratch.take() {
                Some(channel) => channel,
                None => self.scratch().await?,
            };
            // Bounded: a broker that stops answering (a node shutting down under the call, a broker
            // too busy to answer in time) must not hold the caller — the lost-task check, the
            // autoscaler — forever. Only this scratch channel is given up (closed as it drops):
            // the Jobs publishing on the connection meanwhile are not this caller's to fail; a
            // connection that no longer answers at all is dropped when the next channel cannot
            // be opened in time.
            let Ok(answer) =
                tokio::time::timeout(REQUEST_TIMEOUT, channel.queue_declare(queue.as_str().into(), passive, FieldTable::default())).await
            else {
                return Err(BrokerError::NoAnswer { what: "queue.declare (passive)", timeout: REQUEST_TIMEOUT });
            };
            match answer {
                Ok(q) => {
                    out.push(Some(u64::from(q.message_count())));
                    *scratch = Some(channel);
                }
                // A queue whose node is down answers 404 too; it is not missing (it comes back
                // with its messages): what it holds is unknown, so the whole count is.
                Err(source) if is_unavailable(&source) => {
                    return Err(BrokerError::Unavailable { queue: queue.clone(), message: reply_text(&source).unwrap_or_default() });
                }
                Err(source) if is_not_found(&source) => out.push(None),
                Err(source) => return Err(BrokerError::Amqp { what: "queue.declare (passive)", source }),
            }
        }
        Ok(out)
    }

    /// Publishes persistent messages (not tasks: see [`Broker::publish_tasks`]) and waits until
    /// the broker confirmed every one of them (`mandatory`: an unroutable message is a failure,
    /// not a silent drop).
    pub async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        content_type: &str,
        bodies: &[Vec<u8>],
    ) -> Result<(), BrokerError> {
        let confirms = self.try_publish(exchange, routing_key, content_type, None, bodies).await?;
        self.confirmed(confirms).await
    }

    /// Publishes persistent task messages, each signed with the pool's `key`, and waits until the
    /// broker confirmed every one of them (`mandatory`: an unroutable message is a failure, not a
    /// silent drop).
    pub async fn publish_tasks_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        key: &ReportKey,
        bodies: &[Vec<u8>],
    ) -> Result<(), BrokerError> {
        let confirms = self.publish_tasks(exchange, routing_key, key, bodies).await?;
        self.confirmed(confirms).await
    }

    /// Publishes persistent, `mandatory` task messages, each signed with the pool's `key`
    /// (header `warren-task-signature`: the pool's workers run nothing else), without waiting for
    /// their confirmations, so that a caller can publish the next batch while the broker confirms
    /// this one (confirms arrive in publishing order). Nothing is confirmed until
    /// [`Broker::confirmed`] says so.
    pub async fn publish_tasks(
        &self,
        exchange: &str,
        routing_key: &str,
        key: &ReportKey,
        bodies: &[Vec<u8>],
    ) -> Result<Confirms, BrokerError> {
        self.try_publish(exchange, routing_key, TASK_CONTENT_TYPE, Some(key), bodies).await
    }

    /// Waits until every message of a [`Broker::publish_tasks`] is confirmed (acked and routed).
    /// Confirms that failed or never came retire their channel; messages the broker refused
    /// (nacked, unroutable) say nothing against it.
    pub async fn confirmed(&self, confirms: Confirms) -> Result<(), BrokerError> {
        let epoch = confirms.epoch;
        let result = confirms.wait().await;
        if matches!(result, Err(BrokerError::ConfirmTimeout { .. } | BrokerError::Amqp { .. })) {
            self.retire_channel(epoch);
        }
        result
    }

    /// Publishes `bodies`; with a task `key`, each carries its signature.
    async fn try_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        content_type: &str,
        key: Option<&ReportKey>,
        bodies: &[Vec<u8>],
    ) -> Result<Confirms, BrokerError> {
        let (epoch, channel) = self.channel().await?;
        let properties = BasicProperties::default().with_delivery_mode(2).with_content_type(ShortString::from(content_type));
        let mut confirms = Vec::with_capacity(bodies.len());
        for body in bodies {
            let mut headers = FieldTable::default();
            if let Some(key) = key {
                warren_protocol::amqp::sign_task_into(&mut headers, key.bytes(), body);
            }
            let confirm = channel
                .basic_publish(
                    ShortString::from(exchange),
                    ShortString::from(routing_key),
                    BasicPublishOptions { mandatory: true, immediate: false },
                    body,
                    properties.clone().with_headers(headers),
                )
                .await;
            match confirm {
                Ok(confirm) => confirms.push(confirm),
                Err(source) => {
                    self.retire_channel(epoch);
                    return Err(BrokerError::Amqp { what: "basic.publish", source });
                }
            }
        }
        Ok(Confirms { confirms, epoch })
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
        if channel.status().connected()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = channel.close(200, "done".into()).await;
            });
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

/// The broker's reply text of a channel-level error.
fn reply_text(error: &lapin::Error) -> Option<String> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.get_message().to_string()),
        _ => None,
    }
}

/// True when the broker answered that a queue exists but its node is down: a durable classic
/// queue whose one node is stopped ("home node ... is down or inaccessible"), or a quorum queue
/// without a quorum of its members.
pub fn is_unavailable(error: &lapin::Error) -> bool {
    is_not_found(error) && reply_text(error).is_some_and(|t| is_unavailable_text(&t))
}

fn is_unavailable_text(text: &str) -> bool {
    text.contains("down or inaccessible")
}

/// The URL (or list of URLs) without its passwords, for messages.
pub fn redact(url: &str) -> String {
    warren_protocol::addresses::redact(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_on_a_stopped_node_is_unavailable_not_missing() {
        // RabbitMQ 3.10's reply for a durable classic queue whose node is stopped.
        assert!(is_unavailable_text(
            "NOT_FOUND - home node 'rabbit@n2' of durable queue 'warren.a.p.q.normal' in vhost '/' is down or inaccessible"
        ));
        assert!(!is_unavailable_text("NOT_FOUND - no queue 'warren.a.p.q.normal' in vhost '/'"));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("amqp://guest:secret@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}

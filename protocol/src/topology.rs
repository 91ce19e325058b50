//! Declaration of a pool's RabbitMQ objects (feature `amqp`). The operator and the workers call
//! these same functions, so the arguments of every queue and exchange are written down once and
//! always match (RabbitMQ refuses a re-declaration with different arguments).
//!
//! This module declares; it never deletes and never consumes.

use crate::headers::RETRY_TIER_HEADER;
use crate::names;
use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

/// Queue types a pool's work queues may have.
pub const QUEUE_TYPES: &[&str] = &["classic", "quorum"];

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("queue type {0:?} is not one of classic, quorum")]
    InvalidQueueType(String),
    #[error("declaring {object}: {source}")]
    Declare {
        object: String,
        #[source]
        source: lapin::Error,
    },
}

impl TopologyError {
    /// True when the broker refused a declaration because the existing object has another value
    /// of argument `arg` (`PRECONDITION_FAILED - inequivalent arg '<arg>' ...`).
    pub fn is_inequivalent_arg(&self, arg: &str) -> bool {
        match self {
            TopologyError::Declare { source, .. } => match source.kind() {
                lapin::ErrorKind::ProtocolError(e) => e.get_message().as_str().contains(&format!("inequivalent arg '{arg}'")),
                _ => false,
            },
            TopologyError::InvalidQueueType(_) => false,
        }
    }

    /// Stable name of the error kind.
    pub fn reason(&self) -> &'static str {
        match self {
            TopologyError::InvalidQueueType(_) => "InvalidQueueType",
            TopologyError::Declare { .. } => "DeclareFailed",
        }
    }
}

/// Name of the headers exchange the retry-tier queues of a pool are bound to.
pub fn retry_exchange(namespace: &str, pool: &str) -> String {
    format!("{}.retry", names::pool_exchange(namespace, pool))
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions { durable: true, ..Default::default() }
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn declare_err(object: impl Into<String>) -> impl FnOnce(lapin::Error) -> TopologyError {
    let object = object.into();
    move |source| TopologyError::Declare { object, source }
}

/// Arguments of a pool's work queues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkQueueArgs {
    /// `classic` or `quorum`.
    pub queue_type: String,
    /// `x-max-length`: ready messages per work queue; None = unbounded.
    pub max_length: Option<i64>,
    /// `x-overflow` when full: `reject-publish` or `drop-head`; only set with `max_length`.
    pub overflow: Option<String>,
    /// `x-queue-version` of classic queues ([`CLASSIC_QUEUE_VERSION`] for new ones); None = the
    /// broker's default, for queues declared before Warren set it (see [`WorkQueueArgs::legacy`]).
    pub classic_version: Option<u8>,
}

/// The classic queue version new classic work queues get: version 2 (RabbitMQ 3.10+; the only
/// one from 4.0), whose per-queue index stores small messages itself. Warren holds every delivery
/// until the task's report is confirmed, so its persistent messages often reach the disk before
/// they are acked; version 2 makes that cheaper (measured: README, Benchmarks).
pub const CLASSIC_QUEUE_VERSION: u8 = 2;

impl WorkQueueArgs {
    /// Unbounded queues of the given type.
    pub fn of_type(queue_type: &str) -> Self {
        let classic_version = (queue_type == "classic").then_some(CLASSIC_QUEUE_VERSION);
        Self { queue_type: queue_type.to_string(), max_length: None, overflow: None, classic_version }
    }

    /// The same arguments without `x-queue-version`: what queues declared before Warren set it
    /// have (RabbitMQ refuses to re-declare a queue with another version).
    pub fn legacy(&self) -> Self {
        Self { classic_version: None, ..self.clone() }
    }

    fn table(&self) -> FieldTable {
        let mut entries = vec![("x-queue-type", text(&self.queue_type))];
        if let Some(version) = self.classic_version.filter(|_| self.queue_type == "classic") {
            entries.push(("x-queue-version", AMQPValue::ShortShortInt(version as i8)));
        }
        if let Some(max) = self.max_length {
            entries.push(("x-max-length", AMQPValue::LongLongInt(max)));
            if let Some(overflow) = &self.overflow {
                entries.push(("x-overflow", text(overflow)));
            }
        }
        table(&entries)
    }
}

/// Declares a pool: its direct exchange, one durable work queue per priority class (bound
/// with the class as routing key, arguments from `args`), the retry headers exchange and the
/// dead-letter queue (same queue type, never length-limited: dead letters are not dropped).
/// Idempotent; RabbitMQ refuses a re-declaration with other arguments.
pub async fn declare_pool(
    channel: &Channel,
    namespace: &str,
    pool: &str,
    classes: &[String],
    args: &WorkQueueArgs,
) -> Result<(), TopologyError> {
    let queue_type = args.queue_type.as_str();
    if !QUEUE_TYPES.contains(&queue_type) {
        return Err(TopologyError::InvalidQueueType(queue_type.to_string()));
    }
    let exchange = names::pool_exchange(namespace, pool);
    channel
        .exchange_declare(exchange.as_str().into(), ExchangeKind::Direct, durable_exchange(), FieldTable::default())
        .await
        .map_err(declare_err(&exchange))?;
    let retry = retry_exchange(namespace, pool);
    channel
        .exchange_declare(retry.as_str().into(), ExchangeKind::Headers, durable_exchange(), FieldTable::default())
        .await
        .map_err(declare_err(&retry))?;
    for class in classes {
        let queue = names::work_queue(namespace, pool, class);
        channel.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args.table()).await.map_err(declare_err(&queue))?;
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                class.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(declare_err(format!("binding {queue}")))?;
    }
    let dlq = names::dead_letter_queue(namespace, pool);
    channel
        .queue_declare(dlq.as_str().into(), QueueDeclareOptions::durable(), table(&[("x-queue-type", text(queue_type))]))
        .await
        .map_err(declare_err(&dlq))?;
    declare_suspect_queue(channel, namespace, pool, queue_type).await
}

/// Declares the pool's suspect queue (see the worker's `lost` module): durable, of the pool's queue type,
/// published to directly (default exchange). Idempotent; workers declare it too.
pub async fn declare_suspect_queue(channel: &Channel, namespace: &str, pool: &str, queue_type: &str) -> Result<(), TopologyError> {
    if !QUEUE_TYPES.contains(&queue_type) {
        return Err(TopologyError::InvalidQueueType(queue_type.to_string()));
    }
    let queue = names::suspect_queue(namespace, pool);
    channel
        .queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), table(&[("x-queue-type", text(queue_type))]))
        .await
        .map_err(declare_err(&queue))?;
    Ok(())
}

/// Arguments of a retry-tier queue of a pool of `queue_type`.
///
/// Classic: TTL and dead-lettering back to the pool exchange (RabbitMQ's dead-lettering is
/// at-most-once there). Quorum: the same on a quorum queue with
/// `x-dead-letter-strategy: at-least-once` (RabbitMQ 3.10+; it requires
/// `x-overflow: reject-publish`): an expired retry is removed from the tier queue only once the
/// work queue confirmed it, so a retry survives a full work queue or a node failure.
pub fn retry_tier_args(namespace: &str, pool: &str, delay_ms: u64, queue_type: &str) -> Result<FieldTable, TopologyError> {
    let ttl = i64::try_from(delay_ms).unwrap_or(i64::MAX);
    let mut entries =
        vec![("x-dead-letter-exchange", text(&names::pool_exchange(namespace, pool))), ("x-message-ttl", AMQPValue::LongLongInt(ttl))];
    match queue_type {
        "classic" => {}
        "quorum" => entries.extend([
            ("x-queue-type", text("quorum")),
            ("x-dead-letter-strategy", text("at-least-once")),
            ("x-overflow", text("reject-publish")),
        ]),
        other => return Err(TopologyError::InvalidQueueType(other.to_string())),
    }
    Ok(table(&entries))
}

/// Declares the retry queue of one delay tier: a durable queue (of the pool's queue type, see
/// [`retry_tier_args`]) whose messages (published with a per-message expiration `<= delay_ms`)
/// dead-letter back into the pool exchange with their original routing key, bound to the retry
/// exchange on header `warren-retry-tier = "<delay_ms>"`. `x-message-ttl = delay_ms` bounds the
/// wait of a message queued behind a longer one. Idempotent; also (re)declares the retry exchange.
pub async fn declare_retry_tier(
    channel: &Channel,
    namespace: &str,
    pool: &str,
    delay_ms: u64,
    queue_type: &str,
) -> Result<(), TopologyError> {
    let args = retry_tier_args(namespace, pool, delay_ms, queue_type)?;
    let retry = retry_exchange(namespace, pool);
    channel
        .exchange_declare(retry.as_str().into(), ExchangeKind::Headers, durable_exchange(), FieldTable::default())
        .await
        .map_err(declare_err(&retry))?;
    let queue = names::retry_queue(namespace, pool, delay_ms);
    channel.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args).await.map_err(declare_err(&queue))?;
    channel
        .queue_bind(
            queue.as_str().into(),
            retry.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            table(&[("x-match", text("all")), (RETRY_TIER_HEADER, text(&delay_ms.to_string()))]),
        )
        .await
        .map_err(declare_err(format!("binding {queue}")))?;
    Ok(())
}

/// Declares the operator-wide reports queue: durable; `classic` (no arguments, as every Warren
/// before the setting existed declared it) or `quorum` (replicated: on a RabbitMQ cluster, the
/// loss of one node does not stop every Job's accounting).
pub async fn declare_reports_queue(channel: &Channel, queue: &str, queue_type: &str) -> Result<(), TopologyError> {
    let args = match queue_type {
        "classic" => FieldTable::default(),
        "quorum" => table(&[("x-queue-type", text("quorum"))]),
        other => return Err(TopologyError::InvalidQueueType(other.to_string())),
    };
    channel.queue_declare(queue.into(), QueueDeclareOptions::durable(), args).await.map_err(declare_err(queue))?;
    Ok(())
}

/// Declares an installation's control exchange ([`names::control_exchange`]): a fanout
/// exchange, not durable (it holds no state: the operator re-sends its whole set every second
/// and re-declares the exchange before each send). Operator and workers declare it alike.
pub async fn declare_control_exchange(channel: &Channel, exchange: &str) -> Result<(), TopologyError> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions { durable: false, ..ExchangeDeclareOptions::default() },
            FieldTable::default(),
        )
        .await
        .map_err(declare_err(exchange))?;
    Ok(())
}

/// Declares the control exchange and a server-named, exclusive, auto-delete queue bound to it
/// (one per worker connection: it disappears with the connection). Returns the queue name.
pub async fn declare_control_queue(channel: &Channel, exchange: &str) -> Result<String, TopologyError> {
    declare_control_exchange(channel, exchange).await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() },
            FieldTable::default(),
        )
        .await
        .map_err(declare_err(format!("the control queue of {exchange}")))?;
    let name = queue.name().to_string();
    channel
        .queue_bind(name.as_str().into(), exchange.into(), "".into(), QueueBindOptions::default(), FieldTable::default())
        .await
        .map_err(declare_err(format!("binding the control queue to {exchange}")))?;
    Ok(name)
}

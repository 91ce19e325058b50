//! Dead-letter replay: sends dead-lettered tasks of a pool — all, or one Job's — back to their
//! priority queue with fresh attempts, and lists what the dead-letter queue holds.
//!
//! Never loses a dead letter: one is removed (acknowledged) from the DLQ only after its replayed
//! copy is confirmed by the broker (persistent, mandatory, publisher confirms). Dead letters that
//! are not replayed stay unacknowledged while the DLQ is walked and are then returned with
//! `basic.nack(requeue)`, which puts them back in their original position, in order. If the
//! replaying process dies midway its unacknowledged messages return by themselves; at worst a
//! replayed task whose removal was not yet acknowledged is replayed twice — it runs twice and is
//! counted once.
//!
//! A replayed task has `attempt = 1` and `replay` one higher than the dead letter's: the operator's
//! ledger takes the first report of that run as the sign that the task left the dead letters (see
//! `ledger`). [`decide`] and [`replayed_body`] are pure; [`replay`] and [`list`] do the I/O.

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use warren_protocol::headers::{TASK_SIGNATURE, dead_letter_header};
use warren_protocol::signature::ReportKey;
use warren_protocol::{TASK_CONTENT_TYPE, TaskEnvelope, names};

/// Which dead letters to replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only the tasks of the Job with this name (in the pool's namespace).
    pub job: Option<String>,
    /// Only the tasks of the Job with this uid (not those of an earlier Job of the same name).
    pub job_uid: Option<String>,
    /// At most this many.
    pub limit: Option<u32>,
    /// At most this many replayed tasks per second (none: as fast as the broker confirms).
    pub rate: Option<u32>,
    /// Also the dead letters the pool's key did not sign (reason `unsigned` or `bad-signature`,
    /// or put into the dead-letter queue by someone else): the replay signs them, so that they
    /// run. Only for messages someone inspected (`warren dlq list`), e.g. tasks signed with a key
    /// rotated since.
    pub unsigned: bool,
}

/// Replayed tasks per second of the replay annotation: a Job with 100,000 dead letters does not
/// flood its pool's queue (and the workers' downstreams) at once.
pub const ANNOTATION_REPLAY_RATE: u32 = 500;

/// The exclusive queue whose holder is the one replay (or listing) of a pool's dead letters:
/// two walks of one DLQ at once would each hold messages the other cannot see. The broker
/// allows one connection to declare an exclusive queue and deletes it with that connection, so
/// the lock holds across processes (operator, CLI) and is freed by a crash.
pub fn replay_lock_queue(namespace: &str, pool: &str) -> String {
    format!("{}.replay-lock", names::dead_letter_queue(namespace, pool))
}

/// When the `n`-th replayed task (0-based) may be published, at `rate` per second from `start`.
/// Pure.
pub fn paced(start: std::time::Duration, n: u32, rate: Option<u32>) -> std::time::Duration {
    match rate {
        Some(rate) if rate > 0 => start + std::time::Duration::from_secs_f64(f64::from(n) / f64::from(rate)),
        _ => start,
    }
}

/// What to do with one dead letter.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Publish `body` to the pool exchange with routing key `priority`, then remove the dead letter.
    Replay { body: Vec<u8>, priority: String },
    /// Leave it in the dead-letter queue.
    Keep(KeepReason),
}

/// Why a dead letter stays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepReason {
    /// Another Job's task.
    OtherJob,
    /// The limit of replayed tasks is reached.
    Limit,
    /// Not a Warren task envelope (a malformed message): it cannot run, it stays for inspection.
    NotATask(String),
    /// Not signed with the pool's key (see [`Filter::unsigned`]): replaying it would make the
    /// operator sign whatever anyone put into the queue.
    Unsigned,
}

/// The body of the replayed task: the dead letter's envelope with `attempt = 1` and `replay`
/// incremented; every other field (including ones this version does not know) unchanged.
pub fn replayed_body(body: &[u8]) -> Result<(Vec<u8>, TaskEnvelope), String> {
    let envelope = TaskEnvelope::from_json(body)?;
    let mut value: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let object = value.as_object_mut().ok_or("not a JSON object")?;
    object.insert("attempt".into(), 1.into());
    object.insert("replay".into(), (envelope.replay + 1).into());
    Ok((serde_json::to_vec(&value).expect("JSON serializes"), envelope))
}

/// Decides the fate of one dead letter (`body` with its task `signature` header), given the
/// pool's `key` and how many were replayed so far.
pub fn decide(body: &[u8], signature: Option<&str>, key: &ReportKey, filter: &Filter, replayed_so_far: u32) -> Decision {
    let (replayed, envelope) = match replayed_body(body) {
        Ok(replayed) => replayed,
        Err(error) => return Decision::Keep(KeepReason::NotATask(error)),
    };
    if filter.job.as_ref().is_some_and(|job| *job != envelope.job.name)
        || filter.job_uid.as_ref().is_some_and(|uid| *uid != envelope.job.uid)
    {
        return Decision::Keep(KeepReason::OtherJob);
    }
    if !filter.unsigned && !signature.is_some_and(|signature| warren_protocol::signature::verify_task(key.bytes(), body, signature)) {
        return Decision::Keep(KeepReason::Unsigned);
    }
    if filter.limit.is_some_and(|limit| replayed_so_far >= limit) {
        return Decision::Keep(KeepReason::Limit);
    }
    Decision::Replay { body: replayed, priority: envelope.priority }
}

/// One message of a dead-letter queue, for `warren dlq list`.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// Job name and task index, when the message is a task.
    pub task: Option<(String, u32)>,
    pub priority: Option<String>,
    pub attempts: Option<i64>,
    pub replays: u32,
    pub reason: String,
    pub last_error: String,
}

fn header(properties: &BasicProperties, name: &str) -> Option<AMQPValue> {
    properties.headers().as_ref()?.inner().get(name).cloned()
}

fn header_text(properties: &BasicProperties, name: &str) -> String {
    match header(properties, name) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        Some(AMQPValue::ShortString(s)) => s.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn header_int(properties: &BasicProperties, name: &str) -> Option<i64> {
    match header(properties, name)? {
        AMQPValue::LongLongInt(n) => Some(n),
        AMQPValue::LongInt(n) => Some(i64::from(n)),
        AMQPValue::ShortInt(n) => Some(i64::from(n)),
        _ => None,
    }
}

impl DeadLetter {
    fn of(body: &[u8], properties: &BasicProperties) -> Self {
        let envelope = TaskEnvelope::from_json(body).ok();
        DeadLetter {
            task: envelope.as_ref().map(|e| (e.job.name.clone(), e.index)),
            priority: envelope.as_ref().map(|e| e.priority.clone()),
            attempts: header_int(properties, dead_letter_header::ATTEMPTS),
            replays: envelope.as_ref().map_or(0, |e| e.replay),
            reason: header_text(properties, dead_letter_header::REASON),
            last_error: header_text(properties, dead_letter_header::LAST_ERROR),
        }
    }
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Dead letters sent back to their queue and removed from the DLQ.
    pub replayed: u32,
    /// Dead letters left in the DLQ because of the filter (another Job, the limit).
    pub kept: u32,
    /// Messages left in the DLQ because they are not tasks.
    pub not_tasks: u32,
    /// Dead letters left in the DLQ because the pool's key did not sign them.
    pub unsigned: u32,
    /// Dead letters left in the DLQ because publishing their replay failed.
    pub failed: u32,
    /// The first publish error, if any.
    pub first_error: Option<String>,
}

/// Errors of a replay or a listing.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Broker(crate::broker::BrokerError),
    #[error("the dead-letter queue {queue} does not exist (wrong pool or namespace?)")]
    NoDeadLetterQueue { queue: String },
    #[error("RabbitMQ refused {what}: {source}")]
    Amqp { what: &'static str, source: lapin::Error },
    #[error("another replay or listing of {queue} is running; try again when it is done")]
    Busy { queue: String },
}

impl ReplayError {
    /// Stable reason for events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ReplayError::Broker(e) => e.reason(),
            ReplayError::NoDeadLetterQueue { .. } => "NoDeadLetterQueue",
            ReplayError::Amqp { .. } => "BrokerRefused",
            ReplayError::Busy { .. } => "ReplayBusy",
        }
    }
}

fn amqp(what: &'static str) -> impl FnOnce(lapin::Error) -> ReplayError {
    move |source| ReplayError::Amqp { what, source }
}

/// Opens a confirm-mode channel holding the pool's replay lock, and returns the number of
/// messages ready in the DLQ.
async fn open(
    url: &str,
    tls: &warren_protocol::amqp::Tls,
    namespace: &str,
    pool: &str,
    dlq: &str,
) -> Result<(Connection, Channel, u32), ReplayError> {
    let connection = crate::broker::Broker::connect(url, tls, 1).await.map_err(ReplayError::Broker)?;
    // A passive declare of a missing queue closes the channel: check on a throwaway one.
    let probe = connection.create_channel().await.map_err(amqp("channel.open"))?;
    let depth =
        match probe.queue_declare(dlq.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default()).await {
            Ok(queue) => queue.message_count(),
            Err(_) => return Err(ReplayError::NoDeadLetterQueue { queue: dlq.to_string() }),
        };
    let _ = probe.close(200, "OK".into()).await;
    // A queue another connection declared exclusive answers RESOURCE_LOCKED and closes the
    // channel: a throwaway one again.
    let lock = connection.create_channel().await.map_err(amqp("channel.open"))?;
    let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    if lock.queue_declare(replay_lock_queue(namespace, pool).as_str().into(), options, FieldTable::default()).await.is_err() {
        let _ = connection.close(200, "OK".into()).await;
        return Err(ReplayError::Busy { queue: dlq.to_string() });
    }
    let channel = connection.create_channel().await.map_err(amqp("channel.open"))?;
    channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(amqp("confirm.select"))?;
    Ok((connection, channel, depth))
}

/// A replayed task goes back persistent and mandatory, signed with the pool's key, and counts
/// only once the broker confirmed and routed it.
async fn publish_confirmed(channel: &Channel, exchange: &str, routing_key: &str, key: &ReportKey, body: &[u8]) -> Result<(), String> {
    let mut headers = FieldTable::default();
    warren_protocol::amqp::sign_task_into(&mut headers, key.bytes(), body);
    let properties = BasicProperties::default().with_content_type(ShortString::from(TASK_CONTENT_TYPE)).with_headers(headers);
    warren_protocol::amqp::publish_confirmed(channel, exchange, routing_key, body, properties).await.map_err(|e| match e {
        warren_protocol::amqp::PublishError::Nacked => "the broker refused (nacked) the replayed task".to_string(),
        warren_protocol::amqp::PublishError::Unroutable { .. } => {
            format!("no queue of exchange {exchange} is bound to priority {routing_key:?}")
        }
        other => other.to_string(),
    })
}

/// One pass over the pool's dead-letter queue, in order, up to its depth at the start. Each
/// message is settled by the caller (acked on `channel`) or kept ([`Walk::keep`]); the kept ones
/// go back to their positions at [`Walk::finish`], with one `nack` of every delivery up to the
/// last kept.
struct Walk {
    connection: lapin::Connection,
    channel: Channel,
    dlq: String,
    left: u32,
    last_kept: Option<u64>,
}

impl Walk {
    async fn start(url: &str, tls: &warren_protocol::amqp::Tls, namespace: &str, pool: &str) -> Result<Self, ReplayError> {
        let dlq = names::dead_letter_queue(namespace, pool);
        let (connection, channel, depth) = open(url, tls, namespace, pool, &dlq).await?;
        Ok(Self { connection, channel, dlq, left: depth, last_kept: None })
    }

    async fn next(&mut self) -> Result<Option<lapin::message::BasicGetMessage>, ReplayError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        self.channel.basic_get(self.dlq.as_str().into(), BasicGetOptions { no_ack: false }).await.map_err(amqp("basic.get"))
    }

    fn keep(&mut self, tag: u64) {
        self.last_kept = Some(tag);
    }

    async fn finish(self) -> Result<(), ReplayError> {
        if let Some(tag) = self.last_kept {
            self.channel.basic_nack(tag, BasicNackOptions { multiple: true, requeue: true }).await.map_err(amqp("basic.nack"))?;
        }
        let _ = self.channel.close(200, "OK".into()).await;
        let _ = self.connection.close(200, "OK".into()).await;
        Ok(())
    }
}

/// Replays the dead letters of pool `pool` in `namespace` that `filter` selects; `tls` for an
/// `amqps://` broker.
pub async fn replay(
    url: &str,
    tls: &warren_protocol::amqp::Tls,
    namespace: &str,
    pool: &str,
    key: &ReportKey,
    filter: &Filter,
) -> Result<Summary, ReplayError> {
    let exchange = names::pool_exchange(namespace, pool);
    let mut walk = Walk::start(url, tls, namespace, pool).await?;
    let mut summary = Summary::default();
    let start = tokio::time::Instant::now();
    while let Some(message) = walk.next().await? {
        let tag = message.delivery.delivery_tag;
        let signature = warren_protocol::amqp::text_header(&message.delivery.properties, TASK_SIGNATURE);
        match decide(&message.delivery.data, signature.as_deref(), key, filter, summary.replayed) {
            Decision::Replay { body, priority } => {
                let due = paced(std::time::Duration::ZERO, summary.replayed + summary.failed, filter.rate);
                tokio::time::sleep_until(start + due).await;
                match publish_confirmed(&walk.channel, &exchange, &priority, key, &body).await {
                    Ok(()) => {
                        walk.channel.basic_ack(tag, BasicAckOptions::default()).await.map_err(amqp("basic.ack"))?;
                        summary.replayed += 1;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "replaying a dead letter failed; it stays in the dead-letter queue");
                        summary.failed += 1;
                        summary.first_error.get_or_insert(error);
                        walk.keep(tag);
                    }
                }
            }
            Decision::Keep(KeepReason::NotATask(_)) => {
                summary.not_tasks += 1;
                walk.keep(tag);
            }
            Decision::Keep(KeepReason::Unsigned) => {
                summary.unsigned += 1;
                walk.keep(tag);
            }
            Decision::Keep(_) => {
                summary.kept += 1;
                walk.keep(tag);
            }
        }
    }
    walk.finish().await?;
    tracing::info!(namespace, pool, replayed = summary.replayed, kept = summary.kept, "dead letters replayed");
    Ok(summary)
}

/// Lists the messages of the pool's dead-letter queue (they all stay there, in order).
pub async fn list(url: &str, tls: &warren_protocol::amqp::Tls, namespace: &str, pool: &str) -> Result<Vec<DeadLetter>, ReplayError> {
    let mut walk = Walk::start(url, tls, namespace, pool).await?;
    let mut letters = Vec::new();
    while let Some(message) = walk.next().await? {
        letters.push(DeadLetter::of(&message.delivery.data, &message.delivery.properties));
        walk.keep(message.delivery.delivery_tag);
    }
    walk.finish().await?;
    Ok(letters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::{JobRef, PROTOCOL_VERSION, RetryPolicy};

    fn envelope(job: &str, index: u32, attempt: u32, replay: u32) -> Vec<u8> {
        TaskEnvelope {
            version: PROTOCOL_VERSION,
            job: JobRef { namespace: "ns".into(), name: job.into(), uid: format!("uid-{job}") },
            index,
            total: 10,
            attempt,
            priority: "high".into(),
            task_type: None,
            payload: serde_json::json!({"x": index}),
            idempotency_key: format!("uid-{job}/{index}"),
            retry: RetryPolicy::default(),
            timeout_seconds: None,
            replay,
            enqueued_at_ms: 0,
        }
        .to_json()
    }

    #[test]
    fn a_replayed_task_has_fresh_attempts_and_one_more_replay() {
        let (body, _) = replayed_body(&envelope("j", 3, 4, 0)).unwrap();
        let replayed = TaskEnvelope::from_json(&body).unwrap();
        assert_eq!((replayed.index, replayed.attempt, replayed.replay), (3, 1, 1));
        assert_eq!(replayed.payload, serde_json::json!({"x": 3}));
        let (again, _) = replayed_body(&body).unwrap();
        assert_eq!(TaskEnvelope::from_json(&again).unwrap().replay, 2);
    }

    #[test]
    fn fields_unknown_to_this_version_are_kept() {
        let mut value: serde_json::Value = serde_json::from_slice(&envelope("j", 1, 3, 0)).unwrap();
        value["futureField"] = "kept".into();
        let (body, _) = replayed_body(&serde_json::to_vec(&value).unwrap()).unwrap();
        let out: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(out["futureField"], "kept");
    }

    #[test]
    fn decide_table() {
        let key = ReportKey::new(vec![9; 32]);
        let all = Filter::default();
        let only_a = Filter { job: Some("a".into()), ..Filter::default() };
        let only_uid_b = Filter { job_uid: Some("uid-b".into()), ..Filter::default() };
        let two = Filter { limit: Some(2), ..Filter::default() };
        let sign = |body: &[u8]| warren_protocol::signature::sign_task(key.bytes(), body);
        let decide = |body: &[u8], filter: &Filter, n: u32| decide(body, Some(&sign(body)), &key, filter, n);
        for body in [&b"not json"[..], b"", br#"{"version": 1}"#] {
            assert!(matches!(decide(body, &all, 0), Decision::Keep(KeepReason::NotATask(_))), "{body:?}");
        }
        let a = envelope("a", 0, 3, 0);
        let b = envelope("b", 0, 3, 0);
        assert!(matches!(decide(&a, &all, 0), Decision::Replay { ref priority, .. } if priority == "high"));
        assert!(matches!(decide(&a, &only_a, 5), Decision::Replay { .. }));
        assert_eq!(decide(&b, &only_a, 0), Decision::Keep(KeepReason::OtherJob));
        assert_eq!(decide(&a, &only_uid_b, 0), Decision::Keep(KeepReason::OtherJob));
        assert!(matches!(decide(&b, &only_uid_b, 0), Decision::Replay { .. }));
        assert!(matches!(decide(&b, &two, 1), Decision::Replay { .. }));
        assert_eq!(decide(&b, &two, 2), Decision::Keep(KeepReason::Limit));
    }

    #[test]
    fn only_dead_letters_the_pools_key_signed_are_replayed_unless_asked() {
        let key = ReportKey::new(vec![9; 32]);
        let a = envelope("a", 0, 3, 0);
        let all = Filter::default();
        let other_key = warren_protocol::signature::sign_task(&[1; 32], &a);
        assert_eq!(super::decide(&a, None, &key, &all, 0), Decision::Keep(KeepReason::Unsigned), "put there by anyone");
        assert_eq!(super::decide(&a, Some(&other_key), &key, &all, 0), Decision::Keep(KeepReason::Unsigned), "another key");
        let asked = Filter { unsigned: true, ..Filter::default() };
        assert!(matches!(super::decide(&a, None, &key, &asked, 0), Decision::Replay { .. }));
        assert_eq!(
            super::decide(&a, None, &key, &Filter { job: Some("b".into()), unsigned: true, ..Filter::default() }, 0),
            Decision::Keep(KeepReason::OtherJob),
            "the filter still applies"
        );
    }

    #[test]
    fn replays_are_paced_at_the_rate_from_the_start() {
        use std::time::Duration;
        let start = Duration::from_secs(10);
        let cases = [
            (0, Some(20), Duration::from_secs(10)),
            (1, Some(20), Duration::from_millis(10_050)),
            (40, Some(20), Duration::from_secs(12)),
            (1_000, None, Duration::from_secs(10)),
            (1_000, Some(0), Duration::from_secs(10)),
        ];
        for (n, rate, due) in cases {
            assert_eq!(paced(start, n, rate), due, "{n} at {rate:?}/s");
        }
        assert_eq!(replay_lock_queue("ns", "pool"), "warren.ns.pool.dlq.replay-lock");
    }
}

//! Consumes the workers' report batches and folds them into the [`JobBook`].
//!
//! A report message is acknowledged only when every Job it touched has its status persisted past
//! the fold (see `book`), in delivery order, with `multiple` acks. A crash before that makes
//! RabbitMQ redeliver the message to the next operator, whose ledger ignores what it already has.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use warren_protocol::admit::{self, Admitted};

use kube::runtime::reflector::{ObjectRef, Store};
use warren_protocol::headers::REPORT_SIGNATURE;

use crate::broker::{Broker, reconnect_delay};
use crate::controllers::job::book::{Applied, JobBook};
use crate::crd::WorkerPool;
use crate::metrics::RejectionLabels;
use crate::report_keys::{self, ReportKeys, SignaturePolicy};
use crate::workers::WorkerRegistry;

/// Report messages the operator holds unacknowledged at most (each is a batch of events).
const PREFETCH: u16 = 2_000;

/// One received report message, waiting for its Jobs' statuses to be written.
struct Pending {
    delivery_tag: u64,
    needs: Vec<(String, u64)>,
}

/// Where reports come from and which are applied.
pub struct Wiring {
    pub url: String,
    pub tls: warren_protocol::amqp::Tls,
    pub queue: String,
    pub queue_type: String,
    pub signatures: SignaturePolicy,
}

/// What folding a report reads besides the report: the book it folds into, the workers'
/// heartbeats, the pools and their report keys.
struct Readers<'a> {
    book: &'a JobBook,
    workers: &'a WorkerRegistry,
    keys: &'a ReportKeys,
    circuits: &'a crate::admission::Circuits,
    pools: &'a Store<WorkerPool>,
    signatures: SignaturePolicy,
}

/// Runs forever: connects, consumes, reconnects with backoff on failure.
pub async fn run(
    wiring: Wiring,
    book: Arc<JobBook>,
    workers: Arc<WorkerRegistry>,
    keys: Arc<ReportKeys>,
    circuits: Arc<crate::admission::Circuits>,
    pools: Store<WorkerPool>,
) {
    let readers =
        Readers { book: &book, workers: &workers, keys: &keys, circuits: &circuits, pools: &pools, signatures: wiring.signatures };
    let mut attempt = 0u32;
    loop {
        match consume(&wiring.url, &wiring.tls, &wiring.queue, &wiring.queue_type, &readers).await {
            Ok(()) => attempt = 0,
            Err(error) => {
                tracing::warn!(%error, attempt, "report consumer lost its connection; reconnecting");
                crate::metrics::global().broker_reconnects.get_or_create(&crate::metrics::REPORTS_CONNECTION).inc();
            }
        }
        tokio::time::sleep(reconnect_delay(attempt, rand::random())).await;
        attempt = attempt.saturating_add(1);
    }
}

#[derive(Debug, thiserror::Error)]
enum ConsumeError {
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    #[error(transparent)]
    Topology(warren_protocol::topology::TopologyError),
    #[error("looking up the Job of a report: {0}")]
    JobLookup(kube::Error),
    #[error("reading the report key of a pool: {0}")]
    KeyLookup(kube::Error),
}

async fn consume(
    url: &str,
    tls: &warren_protocol::amqp::Tls,
    queue: &str,
    queue_type: &str,
    readers: &Readers<'_>,
) -> Result<(), ConsumeError> {
    let book = readers.book;
    let amqp = |what: &'static str| move |source: lapin::Error| ConsumeError::Broker(crate::broker::BrokerError::Amqp { what, source });
    let conn = Broker::connect(url, tls, 1).await?;
    let channel = conn.create_channel().await.map_err(amqp("channel.open"))?;
    channel.basic_qos(PREFETCH, BasicQosOptions::default()).await.map_err(amqp("basic.qos"))?;
    warren_protocol::topology::declare_reports_queue(&channel, queue, queue_type).await.map_err(ConsumeError::Topology)?;
    let mut consumer = channel
        .basic_consume(queue.into(), "warren-operator".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .map_err(amqp("basic.consume"))?;
    crate::metrics::global().broker_connected.get_or_create(&crate::metrics::REPORTS_CONNECTION).set(1);
    tracing::info!("consuming worker reports");

    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let result = loop {
        tokio::select! {
            delivery = consumer.next() => {
                let Some(delivery) = delivery else { break Ok(()) };
                let delivery = match delivery {
                    Ok(d) => d,
                    Err(source) => break Err(amqp("basic.deliver")(source)),
                };
                let signature = warren_protocol::amqp::text_header(&delivery.properties, REPORT_SIGNATURE);
                let needs = match fold(&delivery.data, signature.as_deref(), readers).await {
                    Ok(needs) => needs,
                    // Reconnect: the unacknowledged messages come back and are folded again.
                    Err(error) => break Err(error),
                };
                pending.push_back(Pending { delivery_tag: delivery.delivery_tag, needs });
            }
            _ = tick.tick() => {
                let mut last = None;
                while let Some(front) = pending.front() {
                    if front.needs.iter().all(|(uid, seq)| book.persisted_through(uid, *seq)) {
                        last = pending.pop_front().map(|p| p.delivery_tag);
                    } else {
                        break;
                    }
                }
                if let Some(tag) = last
                    && let Err(source) = channel.basic_ack(tag, BasicAckOptions { multiple: true }).await {
                        break Err(amqp("basic.ack")(source));
                    }
            }
        }
    };
    crate::metrics::global().broker_connected.get_or_create(&crate::metrics::REPORTS_CONNECTION).set(0);
    result
}

/// Why an event of an admitted report was dropped by the operator (after [`admit::report`]).
pub mod rejection {
    /// The event names a Job that does not exist (deleted, or never existed): nothing to account.
    pub const UNKNOWN_JOB: &str = "unknown_job";
    /// Looking the Job up was refused by the API server (e.g. a namespace the operator may not
    /// read): the event cannot be applied, and redelivering it would only be refused again.
    pub const JOB_LOOKUP_REFUSED: &str = "job_lookup_refused";
    /// The reporting worker is not of the Job's pool (its namespace and `poolRef`): only the
    /// Job's own workers receive its tasks, so such an event is forged or a bug.
    pub const FOREIGN_JOB: &str = "foreign_job";
}

fn count_rejected(reason: &'static str, n: u64) {
    if n > 0 {
        crate::metrics::global().reports_rejected.get_or_create(&RejectionLabels { reason }).inc_by(n);
    }
}

/// Folds one report message; returns what must be persisted before it may be acknowledged.
/// Whatever cannot be applied is dropped and counted, never redelivered in a loop: only a
/// transient failure to look a Job up (no answer, a 5xx) returns an error, and with it the
/// message to the queue.
async fn fold(body: &[u8], signature: Option<&str>, readers: &Readers<'_>) -> Result<Vec<(String, u64)>, ConsumeError> {
    let (book, workers) = (readers.book, readers.workers);
    let Admitted { batch, invalid_events } = match admit::report(body) {
        Ok(admitted) => admitted,
        Err(rejection) => {
            tracing::warn!(reason = rejection.reason(), error = %rejection, bytes = body.len(), "dropping a report message");
            count_rejected(rejection.reason(), 1);
            return Ok(Vec::new());
        }
    };
    if invalid_events > 0 {
        tracing::warn!(
            invalid_events,
            namespace = batch.worker.namespace,
            pool = batch.worker.pool,
            pod = batch.worker.pod,
            "dropping report events with an invalid Job reference"
        );
        count_rejected(admit::INVALID_JOB_REF, invalid_events as u64);
    }
    // Who sent it, before anything of it counts (its heartbeat too: it steers the autoscaler).
    if let Err(reason) = verify_origin(&batch.worker, body, signature, readers).await? {
        let w = &batch.worker;
        tracing::warn!(reason, namespace = w.namespace, pool = w.pool, pod = w.pod, "dropping a report its pool did not sign");
        count_rejected(reason, 1);
        return Ok(Vec::new());
    }
    workers.observe(&batch);
    let metrics = crate::metrics::global();
    metrics.report_messages.inc();
    metrics.report_events.inc_by(batch.events.len() as u64);
    let mut needs: Vec<(String, u64)> = Vec::new();
    let (mut unknown, mut refused, mut foreign) = (0u64, 0u64, 0u64);
    // The pool's circuit breaker counts its finished attempts (of its own Jobs only).
    let breaker = readers
        .pools
        .get(&ObjectRef::new(&batch.worker.pool).within(&batch.worker.namespace))
        .and_then(|pool| pool.spec.circuit_breaker.clone());
    for event in &batch.events {
        let mut applied = book.apply(event, &batch.worker);
        if applied == Applied::UnknownJob {
            let now_ms = warren_protocol::now_ms();
            if book.is_buried(&event.job.uid, now_ms) {
                // Known gone: refresh its tombstone (its tasks are still around), no lookup.
                book.bury(&event.job.uid, now_ms);
                unknown += 1;
                continue;
            }
            match book.load(&event.job).await {
                Ok(true) => {}
                Ok(false) => {
                    // The Job is gone: nothing to account, but its other tasks must not run (this
                    // also re-learns deletions that happened while no operator was watching).
                    book.bury(&event.job.uid, now_ms);
                    unknown += 1;
                    continue;
                }
                Err(kube::Error::Api(status)) if (400..500).contains(&status.code) => {
                    tracing::warn!(
                        code = status.code,
                        namespace = event.job.namespace,
                        name = event.job.name,
                        "the API server refused the lookup of a report's Job; dropping the event"
                    );
                    refused += 1;
                    continue;
                }
                Err(error) => return Err(ConsumeError::JobLookup(error)),
            }
            applied = book.apply(event, &batch.worker);
        }
        if let (Some(spec), Applied::Pending { .. }) = (&breaker, &applied) {
            let failed = match &event.kind {
                warren_protocol::TaskEventKind::Succeeded { .. } => Some(false),
                warren_protocol::TaskEventKind::Failed { .. } => Some(true),
                _ => None,
            };
            if let Some(failed) = failed {
                // The operator's clock, not the report's: a worker's timestamp is untrusted input.
                readers.circuits.record(&batch.worker.namespace, &batch.worker.pool, spec, failed, warren_protocol::now_ms());
            }
        }
        match applied {
            Applied::Pending { uid, seq } => match needs.iter_mut().find(|(u, _)| *u == uid) {
                Some(entry) => entry.1 = entry.1.max(seq),
                None => needs.push((uid, seq)),
            },
            Applied::Foreign => foreign += 1,
            Applied::UnknownJob => {}
        }
    }
    if foreign > 0 {
        let w = &batch.worker;
        tracing::warn!(foreign, namespace = w.namespace, pool = w.pool, pod = w.pod, "dropping report events for Jobs of another pool");
    }
    count_rejected(rejection::FOREIGN_JOB, foreign);
    count_rejected(rejection::UNKNOWN_JOB, unknown);
    count_rejected(rejection::JOB_LOOKUP_REFUSED, refused);
    Ok(needs)
}

/// Whether the pool the report claims signed it ([`report_keys::admit`]); `Err` only when its key
/// could not be read (the message comes back and is folded again).
async fn verify_origin(
    worker: &warren_protocol::WorkerId,
    body: &[u8],
    signature: Option<&str>,
    readers: &Readers<'_>,
) -> Result<Result<(), &'static str>, ConsumeError> {
    let exists = readers.pools.get(&ObjectRef::new(&worker.pool).within(&worker.namespace)).is_some();
    let key = readers.keys.get(&worker.namespace, &worker.pool, exists, false).await.map_err(ConsumeError::KeyLookup)?;
    let verdict = report_keys::admit(exists, key.as_ref(), body, signature, readers.signatures);
    if verdict == Err(report_keys::rejection::BAD_SIGNATURE) {
        // A key replaced since it was read (the Secret deleted and made again): read it again,
        // at most every REREAD per pool.
        let fresh = readers.keys.get(&worker.namespace, &worker.pool, exists, true).await.map_err(ConsumeError::KeyLookup)?;
        if fresh != key {
            return Ok(report_keys::admit(exists, fresh.as_ref(), body, signature, readers.signatures));
        }
    }
    Ok(verdict)
}

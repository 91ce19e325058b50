//! Reports to the operator: task events are batched with a heartbeat, and a batch is published
//! with publisher confirms. Whoever needs to know that an event is safely with the broker
//! (before acking a delivery) waits for its confirmation.
//!
//! Batching is group commit: an event someone waits for (a finished task, whose delivery is
//! acked only after the report is confirmed) is flushed as soon as every task slot of the worker
//! waits for a report (no other outcome can come: a worker of concurrency 1 never waits), or
//! after [`COALESCE_DELAY`] (2 ms). Waiting for free slots matters: when tasks trickle in as fast
//! as they are published, each finished task would otherwise go alone in a message of its own,
//! and the broker would handle two messages per task. Events nobody waits for (started,
//! progress) wait up to 100 ms to share a batch. Batches are pipelined (up to
//! [`MAX_BATCHES_IN_FLIGHT`] await their confirmations at once): a task's delivery stays
//! unacknowledged for one confirmation round trip, not two, and that time is what bounds a
//! worker's throughput (its prefetch window holds the deliveries that wait for it).
//!
//! The batching rules ([`push_event`], [`flush_due`], [`heartbeat`]) are pure; [`run`] does
//! the I/O. The reporter outlives broker connections: unpublished events wait for the next one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use lapin::{BasicProperties, Channel};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use warren_protocol::headers::REPORT_SIGNATURE;
use warren_protocol::{Heartbeat, PROTOCOL_VERSION, REPORT_CONTENT_TYPE, ReportBatch, TaskEnvelope, TaskEvent, TaskEventKind, WorkerId};

use crate::now_ms;

/// Flush pending events at least this often.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Flush as soon as this many events are pending; also the most events in one message.
pub const MAX_BATCH_EVENTS: usize = 500;
/// How long a finished task's report may wait for other tasks' outcomes to share its message,
/// unless every task slot of the worker is already waiting for it.
pub const COALESCE_DELAY: Duration = Duration::from_millis(2);
/// Send a heartbeat at least this often, even with no events.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// Report messages awaiting their confirmation at most; the next batch fills meanwhile.
pub const MAX_BATCHES_IN_FLIGHT: usize = 8;

/// One event waiting to be published, and who waits for its confirmation.
#[derive(Debug)]
pub struct PendingEvent {
    pub event: TaskEvent,
    pub confirmed: Option<oneshot::Sender<()>>,
}

/// Adds an event to the pending list. A progress event replaces a pending, unconfirmed
/// progress event of the same attempt (progress is coalesced: only the latest matters), and
/// the outcome of an attempt replaces its still-pending `Started` event (the operator learns
/// nothing from a start it hears of together with the end; short tasks send half the events).
pub fn push_event(pending: &mut Vec<PendingEvent>, event: TaskEvent, confirmed: Option<oneshot::Sender<()>>) {
    if matches!(event.kind, TaskEventKind::Succeeded { .. } | TaskEventKind::Failed { .. } | TaskEventKind::Cancelled { .. }) {
        pending.retain(|p| {
            !(p.confirmed.is_none()
                && matches!(p.event.kind, TaskEventKind::Started)
                && p.event.job.uid == event.job.uid
                && p.event.index == event.index
                && p.event.attempt == event.attempt)
        });
    }
    if matches!(event.kind, TaskEventKind::Progress { .. }) && confirmed.is_none() {
        let same = pending.iter_mut().rev().find(|p| {
            p.confirmed.is_none()
                && matches!(p.event.kind, TaskEventKind::Progress { .. })
                && p.event.job.uid == event.job.uid
                && p.event.index == event.index
                && p.event.attempt == event.attempt
        });
        if let Some(previous) = same {
            previous.event = event;
            return;
        }
    }
    pending.push(PendingEvent { event, confirmed });
}

/// True when a flush is due: finished tasks wait for their report (`awaited` of them pending,
/// `awaiting_confirm` more in published batches) and either together they fill every task slot
/// (`concurrency`: no other outcome can come) or the pending ones waited [`COALESCE_DELAY`]; a
/// full batch; pending events older than a flush interval; or a heartbeat interval without any
/// batch.
pub fn flush_due(
    pending: usize,
    awaited: usize,
    awaiting_confirm: usize,
    concurrency: u32,
    since_flush: Duration,
    since_batch: Duration,
) -> bool {
    (awaited > 0 && (awaited + awaiting_confirm >= concurrency as usize || since_flush >= COALESCE_DELAY))
        || pending >= MAX_BATCH_EVENTS
        || (pending > 0 && since_flush >= FLUSH_INTERVAL)
        || since_batch >= HEARTBEAT_INTERVAL
}

/// The worker's load counters, shared by the runtime (writer) and the reporter (reader).
#[derive(Debug)]
pub struct Stats {
    pub concurrency: u32,
    pub in_flight: AtomicU32,
    pub completed_total: AtomicU64,
    pub interrupted_total: AtomicU64,
    pub draining: AtomicBool,
    /// Delivered and not started (the runtime's buffer).
    pub buffered: AtomicU32,
    idle_since_ms: AtomicU64,
}

impl Stats {
    pub fn new(concurrency: u32) -> Self {
        Self {
            concurrency,
            in_flight: AtomicU32::new(0),
            completed_total: AtomicU64::new(0),
            interrupted_total: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            buffered: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(now_ms()),
        }
    }

    pub fn task_started(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// A task left the worker: `completed` (any outcome) or interrupted (returned to the queue).
    pub fn task_ended(&self, completed: bool) {
        if completed {
            self.completed_total.fetch_add(1, Ordering::SeqCst);
        } else {
            self.interrupted_total.fetch_add(1, Ordering::SeqCst);
        }
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle_since_ms.store(now_ms(), Ordering::SeqCst);
        }
    }

    pub fn snapshot(&self) -> Heartbeat {
        let in_flight = self.in_flight.load(Ordering::SeqCst);
        heartbeat(
            in_flight,
            self.concurrency,
            self.draining.load(Ordering::SeqCst),
            self.idle_since_ms.load(Ordering::SeqCst),
            self.completed_total.load(Ordering::SeqCst),
            self.interrupted_total.load(Ordering::SeqCst),
            self.buffered.load(Ordering::SeqCst),
        )
    }
}

/// Builds a heartbeat; a busy worker is not idle (`idle_since_ms = None`).
pub fn heartbeat(
    in_flight: u32,
    concurrency: u32,
    draining: bool,
    idle_since_ms: u64,
    completed_total: u64,
    interrupted_total: u64,
    buffered: u32,
) -> Heartbeat {
    Heartbeat {
        in_flight,
        concurrency,
        draining,
        idle_since_ms: (in_flight == 0).then_some(idle_since_ms),
        completed_total,
        interrupted_total,
        buffered: Some(buffered),
    }
}

pub(crate) enum Command {
    Event(PendingEvent),
    Flush(oneshot::Sender<()>),
}

/// Handle to the reporter task. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct Reporter {
    tx: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Event(p) => write!(f, "Event({:?})", p.event),
            Command::Flush(_) => write!(f, "Flush"),
        }
    }
}

fn event_of(envelope: &TaskEnvelope, kind: TaskEventKind, output: Option<String>) -> TaskEvent {
    TaskEvent {
        job: envelope.job.clone(),
        index: envelope.index,
        attempt: envelope.attempt,
        at_ms: now_ms(),
        kind,
        replay: envelope.replay,
        output,
    }
}

impl Reporter {
    pub(crate) fn channel() -> (Self, mpsc::UnboundedReceiver<Command>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, rx)
    }

    /// Queues an event; nobody waits for its confirmation.
    pub fn event(&self, envelope: &TaskEnvelope, kind: TaskEventKind) {
        let _ = self.tx.send(Command::Event(PendingEvent { event: event_of(envelope, kind, None), confirmed: None }));
    }

    /// Queues an event; the receiver completes once a batch containing it is confirmed.
    pub fn event_confirmed(&self, envelope: &TaskEnvelope, kind: TaskEventKind) -> oneshot::Receiver<()> {
        self.outcome_confirmed(envelope, kind, None)
    }

    /// As [`Reporter::event_confirmed`], with the end of what the attempt printed.
    pub fn outcome_confirmed(&self, envelope: &TaskEnvelope, kind: TaskEventKind, output: Option<String>) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Event(PendingEvent { event: event_of(envelope, kind, output), confirmed: Some(tx) }));
        rx
    }

    /// Publishes everything pending now (with a heartbeat); completes once confirmed.
    pub fn flush(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Flush(tx));
        rx
    }
}

/// The channel the reporter publishes on, and the token that tells the runtime the connection
/// is broken when publishing fails.
#[derive(Clone, Debug)]
pub(crate) struct ReportLink {
    pub channel: Channel,
    pub lost: CancellationToken,
}

pub use warren_protocol::amqp::{PublishError, publish, publish_confirmed};

pub(crate) struct ReporterTask {
    pub rx: mpsc::UnboundedReceiver<Command>,
    pub link: watch::Receiver<Option<ReportLink>>,
    pub stats: Arc<Stats>,
    pub worker: WorkerId,
    pub queue: String,
    /// The pool's report key; None: reports go out unsigned.
    pub key: Option<warren_protocol::signature::ReportKey>,
    pub stop: CancellationToken,
}

/// Report messages published and not yet confirmed, each with its events.
type InFlight = FuturesUnordered<BoxFuture<'static, (Result<(), PublishError>, Vec<PendingEvent>)>>;

impl ReporterTask {
    /// Runs until `stop`; then publishes once more (best effort) and returns.
    ///
    /// Batches are pipelined: up to [`MAX_BATCHES_IN_FLIGHT`] messages await their confirmations
    /// while the next batch fills, so a finished task waits for one confirmation, not for the one
    /// before it as well. A batch that fails goes back to the front of the pending events.
    pub(crate) async fn run(mut self) {
        let mut pending: Vec<PendingEvent> = Vec::new();
        let mut in_flight: InFlight = FuturesUnordered::new();
        let mut flush_waiters: Vec<oneshot::Sender<()>> = Vec::new();
        let mut forced = false;
        // Finished tasks whose report is published and awaits its confirmation.
        let mut awaiting_confirm = 0usize;
        let mut first_pending_at: Option<Instant> = None;
        let mut last_batch = Instant::now() - HEARTBEAT_INTERVAL;
        let mut failures = 0u32;
        let mut retry_at = Instant::now();
        let mut ticker = tokio::time::interval(FLUSH_INTERVAL / 4);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let coalesce_over = async {
                match first_pending_at {
                    Some(at) if pending.iter().any(|p| p.confirmed.is_some()) => tokio::time::sleep_until(at + COALESCE_DELAY).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = coalesce_over => {}
                _ = self.stop.cancelled() => break,
                command = self.rx.recv() => {
                    let Some(command) = command else { break };
                    // Take everything that queued up meanwhile: it all goes in one batch.
                    let mut next = Some(command);
                    while let Some(command) = next {
                        match command {
                            Command::Event(p) => {
                                first_pending_at.get_or_insert_with(Instant::now);
                                push_event(&mut pending, p.event, p.confirmed);
                            }
                            Command::Flush(waiter) => {
                                flush_waiters.push(waiter);
                                forced = true;
                            }
                        }
                        next = self.rx.try_recv().ok();
                    }
                }
                Some((result, events)) = in_flight.next(), if !in_flight.is_empty() => {
                    awaiting_confirm -= events.iter().filter(|p| p.confirmed.is_some()).count();
                    match result {
                        Ok(()) => {
                            failures = 0;
                            for c in events.into_iter().filter_map(|p| p.confirmed) {
                                let _ = c.send(());
                            }
                        }
                        Err(e) => {
                            failures += 1;
                            let delay = crate::retry::reconnect_delay(failures, rand::random::<f64>());
                            tracing::warn!(error = %e, reason = e.reason(), events = events.len(), retry_in_ms = delay.as_millis() as u64, "publishing reports failed");
                            retry_at = Instant::now() + delay;
                            first_pending_at.get_or_insert_with(Instant::now);
                            pending.splice(0..0, events);
                        }
                    }
                }
                _ = self.link.changed() => { retry_at = Instant::now(); }
                _ = ticker.tick() => {}
            }
            let now = Instant::now();
            let since_first = first_pending_at.map_or(Duration::ZERO, |at| now - at);
            // While disconnected there is nobody to talk to: events wait for the next link.
            let connected = self.link.borrow().is_some();
            let awaited = pending.iter().filter(|p| p.confirmed.is_some()).count();
            if connected
                && in_flight.len() < MAX_BATCHES_IN_FLIGHT
                && (forced || flush_due(pending.len(), awaited, awaiting_confirm, self.stats.concurrency, since_first, now - last_batch))
                && now >= retry_at
            {
                match self.publish(&mut pending, &mut in_flight).await {
                    Ok(()) => {
                        awaiting_confirm += awaited;
                        forced = false;
                        last_batch = Instant::now();
                        first_pending_at = None;
                    }
                    Err(e) => {
                        failures += 1;
                        let delay = crate::retry::reconnect_delay(failures, rand::random::<f64>());
                        tracing::warn!(error = %e, reason = e.reason(), pending = pending.len(), retry_in_ms = delay.as_millis() as u64, "publishing reports failed");
                        retry_at = Instant::now() + delay;
                    }
                }
            }
            if !forced && pending.is_empty() && in_flight.is_empty() {
                for w in flush_waiters.drain(..) {
                    let _ = w.send(());
                }
            }
        }
        // Last words, best effort: what is pending, then every confirmation.
        let unsent = pending.len();
        if (!pending.is_empty() || forced)
            && let Err(e) = self.publish(&mut pending, &mut in_flight).await
        {
            tracing::warn!(error = %e, lost_events = unsent, "final report flush failed");
        }
        while let Some((result, events)) = in_flight.next().await {
            match result {
                Ok(()) => {
                    for c in events.into_iter().filter_map(|p| p.confirmed) {
                        let _ = c.send(());
                    }
                }
                Err(e) => tracing::warn!(error = %e, lost_events = events.len(), "final report flush failed"),
            }
        }
        for w in flush_waiters.drain(..) {
            let _ = w.send(());
        }
    }

    /// Publishes all pending events (in messages of at most [`MAX_BATCH_EVENTS`]; at least one
    /// message, so a heartbeat goes out even with no events), each with a heartbeat, without
    /// waiting for the confirmations: they arrive through `in_flight`.
    async fn publish(&self, pending: &mut Vec<PendingEvent>, in_flight: &mut InFlight) -> Result<(), PublishError> {
        let link = self.link.borrow().clone();
        let Some(link) = link else {
            return Err(PublishError::NotConnected);
        };
        loop {
            let take = pending.len().min(MAX_BATCH_EVENTS);
            let batch = ReportBatch {
                version: PROTOCOL_VERSION,
                worker: self.worker.clone(),
                sent_at_ms: now_ms(),
                events: pending[..take].iter().map(|p| p.event.clone()).collect(),
                heartbeat: Some(self.stats.snapshot()),
            };
            let body = batch.to_json();
            let mut properties = BasicProperties::default().with_content_type(REPORT_CONTENT_TYPE.into());
            if let Some(key) = &self.key {
                // Signed with the pool's key: the operator applies only what its pool's workers sent.
                let signature = warren_protocol::signature::sign(key.bytes(), &body);
                let mut headers = lapin::types::FieldTable::default();
                headers.insert(REPORT_SIGNATURE.into(), lapin::types::AMQPValue::LongString(signature.into()));
                properties = properties.with_headers(headers);
            }
            let confirmed = match publish(&link.channel, "", &self.queue, &body, properties).await {
                Ok(confirmed) => confirmed,
                Err(e) => {
                    if matches!(e, PublishError::Broker(_)) {
                        link.lost.cancel();
                    }
                    return Err(e);
                }
            };
            tracing::debug!(events = take, "report batch published");
            let events: Vec<PendingEvent> = pending.drain(..take).collect();
            let lost = link.lost.clone();
            in_flight.push(Box::pin(async move {
                let result = confirmed.await;
                if matches!(result, Err(PublishError::Broker(_))) {
                    lost.cancel();
                }
                (result, events)
            }));
            if pending.is_empty() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::{FailureDisposition, JobRef};

    fn ev(uid: &str, index: u32, attempt: u32, kind: TaskEventKind) -> TaskEvent {
        TaskEvent {
            job: JobRef { namespace: "n".into(), name: "j".into(), uid: uid.into() },
            index,
            attempt,
            at_ms: 0,
            kind,
            replay: 0,
            output: None,
        }
    }

    fn progress(p: u8) -> TaskEventKind {
        TaskEventKind::Progress { percent: p, message: format!("{p}%") }
    }

    #[test]
    fn an_outcome_replaces_the_pending_start_of_its_attempt_only() {
        let mut pending = Vec::new();
        push_event(&mut pending, ev("a", 0, 1, TaskEventKind::Started), None);
        push_event(&mut pending, ev("a", 1, 1, TaskEventKind::Started), None);
        push_event(&mut pending, ev("a", 0, 1, progress(50)), None);
        let (tx, _rx) = oneshot::channel();
        push_event(&mut pending, ev("a", 0, 1, TaskEventKind::Succeeded { result: None }), Some(tx));
        let kinds: Vec<_> = pending.iter().map(|p| (p.event.index, p.event.kind.clone())).collect();
        assert_eq!(kinds, vec![(1, TaskEventKind::Started), (0, progress(50)), (0, TaskEventKind::Succeeded { result: None }),]);
    }

    #[test]
    fn progress_is_coalesced_per_attempt() {
        let mut pending = Vec::new();
        push_event(&mut pending, ev("a", 0, 1, TaskEventKind::Started), None);
        push_event(&mut pending, ev("a", 0, 1, progress(10)), None);
        push_event(&mut pending, ev("a", 1, 1, progress(5)), None);
        push_event(&mut pending, ev("a", 0, 1, progress(20)), None);
        push_event(&mut pending, ev("a", 0, 2, progress(1)), None);
        push_event(&mut pending, ev("b", 0, 1, progress(7)), None);
        push_event(&mut pending, ev("a", 0, 1, progress(30)), None);
        let kinds: Vec<_> =
            pending.iter().map(|p| (p.event.job.uid.as_str(), p.event.index, p.event.attempt, p.event.kind.clone())).collect();
        assert_eq!(
            kinds,
            vec![
                ("a", 0, 1, TaskEventKind::Started),
                ("a", 0, 1, progress(30)),
                ("a", 1, 1, progress(5)),
                ("a", 0, 2, progress(1)),
                ("b", 0, 1, progress(7)),
            ]
        );
    }

    #[test]
    fn final_events_are_never_coalesced() {
        let mut pending = Vec::new();
        let failed = TaskEventKind::Failed { error: "x".into(), disposition: FailureDisposition::Retrying { delay_ms: 1 } };
        push_event(&mut pending, ev("a", 0, 1, failed.clone()), None);
        push_event(&mut pending, ev("a", 0, 1, failed), None);
        let (tx, _rx) = oneshot::channel();
        push_event(&mut pending, ev("a", 0, 1, TaskEventKind::Succeeded { result: None }), Some(tx));
        assert_eq!(pending.len(), 3);
    }

    #[test]
    fn flush_due_table() {
        let ms = Duration::from_millis;
        let cases = [
            (0, 0, 0, 0, ms(0), ms(0), false, "nothing to say"),
            (0, 0, 0, 0, ms(0), ms(1999), false, "heartbeat not yet due"),
            (0, 0, 0, 0, ms(0), ms(2000), true, "idle heartbeat"),
            (1, 0, 0, 1, ms(99), ms(0), false, "young events nobody waits for wait for the interval"),
            (1, 1, 0, 1, ms(0), ms(0), true, "the only slot waits for this report: flush now"),
            (4, 4, 0, 4, ms(0), ms(0), true, "every slot waits: no other outcome can come"),
            (1, 1, 3, 4, ms(0), ms(0), true, "the other slots wait for published reports: no other outcome can come"),
            (0, 0, 4, 4, ms(5), ms(0), false, "everything published: nothing to flush"),
            (2, 1, 2, 4, ms(1), ms(0), false, "another task may finish within the coalescing delay"),
            (1, 1, 0, 64, ms(1), ms(0), false, "a lone finished task of a wide worker waits for company"),
            (2, 1, 0, 4, ms(2), ms(0), true, "coalescing delay over"),
            (1, 0, 0, 0, ms(100), ms(0), true, "flush interval reached"),
            (499, 0, 0, 4, ms(0), ms(0), false, "almost full"),
            (500, 0, 0, 4, ms(0), ms(0), true, "full batch"),
        ];
        for (pending, awaited, awaiting_confirm, concurrency, since_flush, since_batch, expected, why) in cases {
            assert_eq!(flush_due(pending, awaited, awaiting_confirm, concurrency, since_flush, since_batch), expected, "{why}");
        }
    }

    #[test]
    fn heartbeat_counts_and_idleness() {
        let stats = Stats::new(4);
        let hb = stats.snapshot();
        assert_eq!((hb.in_flight, hb.concurrency, hb.draining), (0, 4, false));
        assert!(hb.idle_since_ms.is_some());
        stats.task_started();
        stats.task_started();
        assert_eq!(stats.snapshot().idle_since_ms, None);
        stats.task_ended(true);
        stats.task_ended(false);
        let hb = stats.snapshot();
        assert_eq!((hb.in_flight, hb.completed_total, hb.interrupted_total), (0, 1, 1));
        assert!(hb.idle_since_ms.is_some());
    }
}

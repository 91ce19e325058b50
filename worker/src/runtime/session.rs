//! One connection's life: the reports link, the publish channel, the control subscription (the
//! cancelled Jobs, before any task is taken), one consumer channel per priority (or per task
//! slot with `channel_per_task`), the suspect queue, and the dispatch loop that buffers
//! deliveries, starts tasks in scheduler order and drains on shutdown.
//!
//! The loop only routes: running an attempt is [`super::task`]'s, settling a delivery that is
//! not run (cancelled, redelivered, malformed, handed back) is [`super::outcome`]'s. A broken
//! connection ends the session; the worker's run loop reconnects.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::{
    Channel, Connection,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{FieldTable, ShortString},
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use warren_protocol::{TaskEnvelope, names};

use crate::acks::{Acks, Receipt};
use crate::config::WorkerConfig;
use crate::control::FIRST_MESSAGE_WAIT;
use crate::report::ReportLink;
use crate::scheduler::Buffer;
use crate::topology;

use super::Shared;
use super::outcome::{OutcomeError, admit, dead_letter_refused, drop_cancelled, move_redelivered, return_unstarted};
use super::task::execute;

/// How often an idle or busy worker looks for suspect tasks (see [`crate::lost`]).
pub const SUSPECT_CHECK: Duration = Duration::from_secs(1);

/// The broker objects of one connection, shared by the tasks it runs.
pub(super) struct Session {
    pub(super) connection: Arc<Connection>,
    /// Confirm-mode channel for retries and dead letters.
    pub(super) publish: Channel,
    /// Fired when anything finds the connection broken.
    pub(super) lost: CancellationToken,
    /// Acknowledgements and returns of this connection's deliveries.
    pub(super) acks: Arc<Acks>,
}

/// A delivery that parsed as an envelope, waiting for a slot.
pub(super) struct Ready {
    pub(super) delivery: Delivery,
    pub(super) receipt: Receipt,
    pub(super) envelope: TaskEnvelope,
}

pub(super) enum SessionEnd {
    /// Shutdown completed: consumers cancelled, buffered tasks returned, running ones done.
    Drained,
    /// The connection broke; reconnect.
    Lost,
}

async fn confirm_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

/// One connection's life: set up channels and consumers, then dispatch until shutdown
/// completes or the connection breaks.
pub(super) async fn run_session(
    shared: &Arc<Shared>,
    connection: &Arc<Connection>,
    link_tx: &watch::Sender<Option<ReportLink>>,
    shutdown: &CancellationToken,
    failures: &mut u32,
) -> Result<SessionEnd, lapin::Error> {
    let config = &shared.config;
    let lost = CancellationToken::new();

    // A declaration with mismatched arguments closes its channel: use a throwaway one.
    let declare = connection.create_channel().await?;
    match topology::declare_reports_queue(&declare, &config.reports_queue, &config.reports_queue_type).await {
        Ok(()) => {
            let _ = declare.close(200, "OK".into()).await;
        }
        Err(e) => tracing::warn!(error = %e, "declaring the reports queue failed; using it as is"),
    }
    let _ = link_tx.send(Some(ReportLink { channel: confirm_channel(connection).await?, lost: lost.clone() }));
    let session =
        Arc::new(Session { connection: connection.clone(), publish: confirm_channel(connection).await?, lost, acks: Acks::new() });

    let (incoming_tx, mut incoming) = mpsc::unbounded_channel::<(usize, Receipt, Delivery)>();
    let consumers_cancelled = CancellationToken::new();
    let mut consumers: Vec<(Channel, ShortString)> = Vec::new();
    let mut forwarders = JoinSet::new();

    // Control messages first: a worker must know the cancelled Jobs before it takes tasks.
    // A broker that refuses the control queue does not stop the work: the session then runs
    // without cancellations, loudly.
    let control_exchange = names::control_exchange(&config.reports_queue);
    let first_control = match subscribe_control(shared, connection, &control_exchange, &session.lost, &mut forwarders).await {
        Ok(first) => Some(first),
        Err(e) => {
            tracing::error!(error = %e, exchange = %control_exchange, "cannot subscribe to control messages; Job cancellation is disabled for this connection");
            None
        }
    };
    if let Some(first) = first_control
        && tokio::time::timeout(FIRST_MESSAGE_WAIT, first).await.is_err()
    {
        tracing::info!(exchange = %control_exchange, "no control message from the operator yet; taking tasks anyway");
    }
    // One channel per priority with prefetch `concurrency`; or, with `channel_per_task`,
    // `concurrency` channels of prefetch 1 per priority, so that a channel the broker closes
    // (consumer_timeout) holds one delivery only.
    let (closed_tx, mut closed) = mpsc::unbounded_channel::<usize>();
    let consumer_link = ConsumerLink { incoming: incoming_tx.clone(), closed: closed_tx, cancelled: consumers_cancelled.clone() };
    let (per_priority, prefetch) = if config.channel_per_task { (config.concurrency, 1) } else { (1, config.concurrency) };
    // Which consumer channel (its acks index) consumes which priority class.
    let mut channel_class: HashMap<usize, usize> = HashMap::new();
    for (class, _) in config.priorities.iter().enumerate() {
        for _ in 0..per_priority {
            let (channel, tag, index) = start_consumer(&session, config, class, prefetch, &consumer_link, &mut forwarders).await?;
            channel_class.insert(index, class);
            consumers.push((channel, tag));
        }
    }
    // With `channel_per_task`, the interrupt of each running task by its delivery's channel.
    let mut task_interrupts: HashMap<usize, CancellationToken> = HashMap::new();
    drop(incoming_tx);
    // Tasks whose worker was lost while they ran wait in the pool's suspect queue, each to be run
    // alone (crate::lost). A refused declaration closes its channel: a throwaway one.
    let suspect_queue = names::suspect_queue(&config.namespace, &config.pool);
    let declare = connection.create_channel().await?;
    match topology::declare_suspect_queue(&declare, &config.namespace, &config.pool, &config.queue_type).await {
        Ok(()) => {
            let _ = declare.close(200, "OK".into()).await;
        }
        Err(e) => tracing::warn!(error = %e, queue = %suspect_queue, "declaring the suspect queue failed; using it as is"),
    }
    let mut suspect_channel = connection.create_channel().await?;
    let mut suspect_acks = session.acks.add_channel(suspect_channel.clone());
    // The interrupt of the suspect running now (its delivery is on the suspect channel).
    let mut suspect_interrupt: Option<CancellationToken> = None;
    let mut suspect_check = tokio::time::interval(SUSPECT_CHECK);
    suspect_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // True while suspects wait: start no other task, and run them one at a time once idle.
    let mut suspects = false;
    forwarders.spawn(session.acks.clone().run().in_current_span());
    *failures = 0;
    shared.metrics.set_consuming(true);
    tracing::info!(priorities = ?config.priorities, concurrency = config.concurrency, "consuming");

    let mut buffer: Buffer<Ready> = Buffer::new(config.priorities.len());
    let mut running: JoinSet<()> = JoinSet::new();
    let mut aux: JoinSet<()> = JoinSet::new();
    let interrupt = CancellationToken::new();
    let mut draining = false;
    let mut incoming_open = true;
    let mut grace_deadline: Option<Instant> = None;
    // The operator's control messages: a circuit opening or closing wakes the loop.
    let mut control = shared.cancels.subscribe();
    let mut probes = crate::control::ProbeCount::default();
    let end = loop {
        if !draining
            && suspects
            && running.is_empty()
            && shared.cancels.borrow().gate(&config.namespace, &config.pool, &config.pod_name) == crate::control::StartGate::Open
        {
            let get = BasicGetOptions { no_ack: false };
            match suspect_channel.basic_get(suspect_queue.as_str().into(), get).await {
                Ok(Some(message)) => {
                    let delivery = message.delivery;
                    let receipt = session.acks.delivered(suspect_acks, delivery.delivery_tag);
                    match admit(shared, &delivery) {
                        Ok(envelope) => match shared.cancel_reason(&envelope.job.uid) {
                            Some(reason) => {
                                aux.spawn(drop_cancelled(shared.clone(), session.clone(), receipt, envelope, reason));
                            }
                            None if delivery.redelivered => {
                                aux.spawn(move_redelivered(shared.clone(), session.clone(), receipt, delivery, envelope));
                            }
                            None => {
                                tracing::info!(job = %envelope.job.name, task = envelope.index, "running a suspect task alone");
                                shared.stats.task_started();
                                let ready = Ready { delivery, receipt, envelope };
                                let token = interrupt.child_token();
                                suspect_interrupt = Some(token.clone());
                                running.spawn(execute(shared.clone(), session.clone(), ready, token));
                            }
                        },
                        Err(refusal) => {
                            aux.spawn(dead_letter_refused(shared.clone(), session.clone(), delivery, receipt, refusal));
                        }
                    }
                    if running.is_empty() {
                        continue;
                    }
                }
                Ok(None) => suspects = false,
                Err(e) => {
                    tracing::warn!(error = %e, "taking a suspect task failed");
                    session.lost.cancel();
                }
            }
        }
        if !draining && !suspects {
            while running.len() < usize::from(config.concurrency) && !buffer.is_empty() {
                // The pool's circuit breaker: open, nothing starts (buffered tasks wait here).
                let gate = shared.cancels.borrow().gate(&config.namespace, &config.pool, &config.pod_name);
                if !probes.may_start(gate) {
                    break;
                }
                let Some((_, ready)) = buffer.pop_next(std::time::Instant::now(), config.starvation) else { break };
                if !session.acks.is_live(ready.receipt) {
                    // Its channel closed while it waited here (consumer_timeout): the broker took
                    // it back and delivers it again; running this copy would run it twice.
                    tracing::info!(job = %ready.envelope.job.name, task = ready.envelope.index, "dropping a buffered task whose channel closed; the broker redelivers it");
                    continue;
                }
                shared.stats.task_started();
                let task_interrupt = if config.channel_per_task {
                    let token = interrupt.child_token();
                    task_interrupts.insert(ready.receipt.channel, token.clone());
                    token
                } else {
                    interrupt.clone()
                };
                running.spawn(execute(shared.clone(), session.clone(), ready, task_interrupt));
            }
        } else if draining && running.is_empty() {
            break SessionEnd::Drained;
        }
        shared.stats.buffered.store(buffer.len() as u32, std::sync::atomic::Ordering::Relaxed);
        let grace_over = async {
            match grace_deadline {
                Some(at) if !interrupt.is_cancelled() => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = session.lost.cancelled() => break SessionEnd::Lost,
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                shared.metrics.set_consuming(false);
                shared.stats.draining.store(true, std::sync::atomic::Ordering::SeqCst);
                consumers_cancelled.cancel();
                for (channel, tag) in &consumers {
                    if let Err(e) = channel.basic_cancel(tag.clone(), BasicCancelOptions::default()).await {
                        tracing::warn!(error = %e, "cancelling a consumer failed");
                    }
                }
                let buffered = buffer.drain();
                tracing::info!(buffered = buffered.len(), running = running.len(), grace_s = config.grace.as_secs_f64(), "draining");
                for ready in buffered {
                    aux.spawn(return_unstarted(session.clone(), ready));
                }
                grace_deadline = Some(Instant::now() + config.grace);
                // Send the draining heartbeat now; nobody needs to wait for it.
                drop(shared.reporter.flush());
            }
            _ = grace_over => {
                tracing::warn!(running = running.len(), "grace period over; cancelling running tasks");
                interrupt.cancel();
            }
            Some(joined) = running.join_next(), if !running.is_empty() => {
                if let Err(e) = joined {
                    tracing::error!(error = %e, "task execution crashed");
                }
            }
            Some(_) = aux.join_next(), if !aux.is_empty() => {}
            Ok(()) = control.changed() => {}
            Some(index) = closed.recv() => {
                if !config.channel_per_task || !session.connection.status().connected() {
                    session.lost.cancel();
                } else {
                    // The broker closed one delivery's channel (e.g. consumer_timeout): it took
                    // that delivery back (redelivered, it runs alone next time); stop only its
                    // task and consume on a new channel.
                    if let Some(token) = task_interrupts.remove(&index) {
                        tracing::warn!(channel = index, "the broker closed a task's channel; interrupting only that task");
                        token.cancel();
                    }
                    // Its buffered delivery, if any, is the broker's again (redelivered later).
                    session.acks.release(index);
                    buffer.retain(|ready| session.acks.is_live(ready.receipt));
                    let class = channel_class.remove(&index).unwrap_or(0);
                    match start_consumer(&session, config, class, 1, &consumer_link, &mut forwarders).await {
                        Ok((channel, tag, new_index)) => {
                            channel_class.insert(new_index, class);
                            consumers.push((channel, tag));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "re-opening a consumer channel failed");
                            session.lost.cancel();
                        }
                    }
                }
            }
            _ = suspect_check.tick(), if !draining => {
                if !suspect_channel.status().connected() {
                    // The broker closed it (e.g. the running suspect outlived consumer_timeout):
                    // it took that delivery back. Stop the suspect and take a new channel.
                    if !config.channel_per_task || !session.connection.status().connected() {
                        session.lost.cancel();
                        continue;
                    }
                    if let Some(token) = suspect_interrupt.take() {
                        tracing::warn!("the broker closed the suspect channel; interrupting the suspect task");
                        token.cancel();
                    }
                    session.acks.release(suspect_acks);
                    match session.connection.create_channel().await {
                        Ok(channel) => {
                            suspect_acks = session.acks.add_channel(channel.clone());
                            suspect_channel = channel;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "re-opening the suspect channel failed");
                            session.lost.cancel();
                        }
                    }
                    continue;
                }
                if suspects {
                    continue;
                }
                let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
                match suspect_channel.queue_declare(suspect_queue.as_str().into(), passive, FieldTable::default()).await {
                    Ok(queue) if queue.message_count() > 0 => {
                        tracing::info!(waiting = queue.message_count(), running = running.len(), "suspect tasks wait; running them alone once idle");
                        suspects = true;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, queue = %suspect_queue, "checking the suspect queue failed");
                        session.lost.cancel();
                    }
                }
            }
            received = incoming.recv(), if incoming_open => match received {
                Some((_, receipt, _)) if draining => session.acks.requeue(receipt),
                // Its channel closed before it was read here: the broker delivers it again.
                Some((_, receipt, _)) if !session.acks.is_live(receipt) => {}
                Some((class, receipt, delivery)) => match admit(shared, &delivery) {
                    Ok(envelope) => match shared.cancel_reason(&envelope.job.uid) {
                        Some(reason) => {
                            aux.spawn(drop_cancelled(shared.clone(), session.clone(), receipt, envelope, reason));
                        }
                        // Its previous delivery ended unsettled: the worker was lost, maybe by it.
                        None if delivery.redelivered => {
                            aux.spawn(move_redelivered(shared.clone(), session.clone(), receipt, delivery, envelope));
                        }
                        None => buffer.push(class, std::time::Instant::now(), Ready { delivery, receipt, envelope }),
                    },
                    Err(refusal) => {
                        aux.spawn(dead_letter_refused(shared.clone(), session.clone(), delivery, receipt, refusal));
                    }
                },
                // All consumers ended: either cancelled (draining) or lost (handled above).
                None => {
                    incoming_open = false;
                    if !draining {
                        session.lost.cancel();
                    }
                }
            },
        }
    };
    shared.metrics.set_consuming(false);
    if matches!(end, SessionEnd::Lost) {
        // Unacked deliveries of a broken connection go back to their queues on their own;
        // stop the running attempts, whose outcome could not be acknowledged anyway.
        interrupt.cancel();
        tracing::warn!(running = running.len(), buffered = buffer.len(), "connection lost; interrupting running tasks");
    }
    while running.join_next().await.is_some() {}
    while aux.join_next().await.is_some() {}
    // Every outcome is settled now: send the last acknowledgements before the connection closes.
    // A lost connection takes nothing more: the broker redelivers what it did not settle.
    if matches!(end, SessionEnd::Drained) {
        session.acks.flush().await;
    }
    forwarders.abort_all();
    Ok(end)
}

/// Where a consumer forwards its deliveries, and says that its channel closed.
struct ConsumerLink {
    incoming: mpsc::UnboundedSender<(usize, Receipt, Delivery)>,
    /// The acks index of a consumer channel whose stream ended without us cancelling it.
    closed: mpsc::UnboundedSender<usize>,
    cancelled: CancellationToken,
}

/// Opens a channel of prefetch `prefetch` consuming the work queue of priority `class`.
async fn start_consumer(
    session: &Arc<Session>,
    config: &WorkerConfig,
    class: usize,
    prefetch: u16,
    link: &ConsumerLink,
    forwarders: &mut JoinSet<()>,
) -> Result<(Channel, ShortString, usize), lapin::Error> {
    let priority = &config.priorities[class];
    let channel = session.connection.create_channel().await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let queue = names::work_queue(&config.namespace, &config.pool, priority);
    let tag = ShortString::from(format!("{}.{priority}.{:08x}", config.pod_name, rand::random::<u32>()));
    let mut consumer =
        channel.basic_consume(queue.as_str().into(), tag.clone(), BasicConsumeOptions::default(), FieldTable::default()).await?;
    let (tx, closed, cancelled) = (link.incoming.clone(), link.closed.clone(), link.cancelled.clone());
    let (acks, acks_channel) = (session.acks.clone(), session.acks.add_channel(channel.clone()));
    forwarders.spawn(
        async move {
            while let Some(item) = consumer.next().await {
                match item {
                    Ok(delivery) => {
                        let receipt = acks.delivered(acks_channel, delivery.delivery_tag);
                        if tx.send((class, receipt, delivery)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer failed");
                        break;
                    }
                }
            }
            if !cancelled.is_cancelled() {
                let _ = closed.send(acks_channel);
            }
        }
        .in_current_span(),
    );
    Ok((channel, tag, acks_channel))
}

/// Binds this connection's control queue and forwards control messages into the cancel set.
/// The returned receiver completes with the first message.
async fn subscribe_control(
    shared: &Arc<Shared>,
    connection: &Connection,
    exchange: &str,
    lost: &CancellationToken,
    forwarders: &mut JoinSet<()>,
) -> Result<tokio::sync::oneshot::Receiver<()>, OutcomeError> {
    let control = connection.create_channel().await?;
    let queue = topology::declare_control_queue(&control, exchange).await?;
    let mut consumer = control
        .basic_consume(
            queue.as_str().into(),
            format!("{}.control", shared.config.pod_name).as_str().into(),
            BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() },
            FieldTable::default(),
        )
        .await?;
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let (shared, lost) = (shared.clone(), lost.clone());
    forwarders.spawn(
        async move {
            let mut first = Some(first_tx);
            while let Some(item) = consumer.next().await {
                let delivery = match item {
                    Ok(delivery) => delivery,
                    Err(e) => {
                        tracing::warn!(error = %e, "control consumer failed");
                        break;
                    }
                };
                let signature = warren_protocol::amqp::text_header(&delivery.properties, warren_protocol::headers::CONTROL_SIGNATURE);
                let admitted = crate::control::admit(
                    shared.config.control_key.as_ref(),
                    &delivery.data,
                    signature.as_deref(),
                    warren_protocol::now_ms(),
                );
                match admitted {
                    Ok(message) => {
                        shared.cancels.send_if_modified(|set| {
                            let paused_before = set.paused_count();
                            match set.apply(&message) {
                                Some(added) if !added.is_empty() => {
                                    tracing::info!(jobs = ?added, cancelled = set.len(), "Jobs cancelled");
                                    true
                                }
                                // A circuit opened or closed: the session looks at its gate again.
                                Some(_) => set.paused_count() != paused_before || !message.paused.is_empty(),
                                None => false,
                            }
                        });
                        if let Some(tx) = first.take() {
                            let _ = tx.send(());
                        }
                    }
                    Err(rejection) => {
                        // Counted, never applied: it may come from anyone who can publish to the
                        // control exchange.
                        shared.metrics.control_rejected(rejection.as_str());
                        tracing::warn!(reason = rejection.as_str(), "ignoring a control message the operator did not send");
                    }
                }
            }
            lost.cancel();
        }
        .in_current_span(),
    );
    Ok(first_rx)
}

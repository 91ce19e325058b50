//! The worker runtime: connection and reconnection, consumers, the local scheduler, task
//! execution, outcome handling (retry, dead letter, report-then-ack) and graceful shutdown.
//!
//! Decisions are delegated to the pure modules ([`crate::scheduler`], [`crate::retry`],
//! [`crate::report`]); this module only does what they decide.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use warren_protocol::{ControlMessage, FailureDisposition, TASK_CONTENT_TYPE, TaskEnvelope, TaskEventKind, WorkerId, names};

use crate::acks::{Acks, Receipt};
use crate::config::{ConfigError, ConfigOverrides, WorkerConfig};
use crate::context::{TaskContext, TaskError, TaskResult};
use crate::metrics::{TaskOutcome, WorkerMetrics};
use crate::control::{CancelSet, FIRST_MESSAGE_WAIT};
use crate::report::{PublishError, ReportLink, Reporter, ReporterTask, Stats, publish_confirmed};
use crate::retry::{FailureAction, decide_failure, reconnect_delay};
use crate::scheduler::Buffer;
use crate::topology::{self, TopologyError};
use crate::{RETRY_TIER_HEADER, dead_letter_header, dead_letter_reason, lost};

/// How long a cancelled handler gets to return before it is aborted (covers the exec mode's
/// SIGTERM-then-SIGKILL sequence).
pub const HANDLER_WIND_DOWN: Duration = Duration::from_secs(10);
/// How long shutdown waits for the last report batch to be confirmed.
pub const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before returning a task whose outcome could not be published, so that a missing
/// queue does not turn into a hot redelivery loop.
pub const REQUEUE_PAUSE: Duration = Duration::from_secs(1);
/// How often an idle or busy worker looks for suspect tasks (see [`crate::lost`]).
pub const SUSPECT_CHECK: Duration = Duration::from_secs(1);

type BoxedTask = Pin<Box<dyn Future<Output = TaskResult> + Send + 'static>>;
/// A registered task handler.
pub type Handler = Arc<dyn Fn(TaskContext) -> BoxedTask + Send + Sync>;

fn boxed<F, Fut>(f: F) -> Handler
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = TaskResult> + Send + 'static,
{
    Arc::new(move |ctx| Box::pin(f(ctx)) as BoxedTask)
}

#[derive(Clone, Default)]
struct Handlers {
    default: Option<Handler>,
    by_type: HashMap<String, Handler>,
}

impl Handlers {
    /// The handler for a task: the one registered for its type, else the default one.
    fn select(&self, task_type: Option<&str>) -> Option<&Handler> {
        task_type.and_then(|t| self.by_type.get(t)).or(self.default.as_ref())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("no task handler registered")]
    NoHandler,
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

impl WorkerError {
    /// Stable name of the error kind.
    pub fn reason(&self) -> &'static str {
        match self {
            WorkerError::Config(e) => e.reason(),
            WorkerError::NoHandler => "NoHandler",
            WorkerError::Signals(_) => "SignalSetupFailed",
        }
    }
}

/// Why handling the outcome of a task failed (the task is then returned to its queue).
#[derive(Debug, thiserror::Error)]
enum OutcomeError {
    #[error("opening a channel: {0}")]
    Channel(#[from] lapin::Error),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("publishing: {0}")]
    Publish(#[from] PublishError),
}

impl OutcomeError {
    fn reason(&self) -> &'static str {
        match self {
            OutcomeError::Channel(_) => "ChannelFailed",
            OutcomeError::Topology(e) => e.reason(),
            OutcomeError::Publish(e) => e.reason(),
        }
    }

    /// True when the error means the connection or a channel is broken.
    fn breaks_session(&self) -> bool {
        matches!(self, OutcomeError::Channel(_) | OutcomeError::Publish(PublishError::Broker(_)))
    }
}

/// What a worker did during its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerSummary {
    /// Tasks finished with any outcome (succeeded, retry scheduled, dead-lettered).
    pub completed_total: u64,
    /// Tasks returned to their queue unfinished (shutdown past grace, lost connection).
    pub interrupted_total: u64,
}

/// Builds a [`Worker`]: settings not given here come from the environment at [`build`](Self::build).
#[derive(Default)]
pub struct WorkerBuilder {
    overrides: ConfigOverrides,
    handlers: Handlers,
}

impl WorkerBuilder {
    pub fn amqp_url(mut self, url: impl Into<String>) -> Self {
        self.overrides.amqp_url = Some(url.into());
        self
    }
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.overrides.namespace = Some(namespace.into());
        self
    }
    pub fn pool(mut self, pool: impl Into<String>) -> Self {
        self.overrides.pool = Some(pool.into());
        self
    }
    /// Priority classes, highest first.
    pub fn priorities<I: IntoIterator<Item = S>, S: Into<String>>(mut self, classes: I) -> Self {
        self.overrides.priorities = Some(classes.into_iter().map(Into::into).collect());
        self
    }
    pub fn concurrency(mut self, concurrency: u16) -> Self {
        self.overrides.concurrency = Some(concurrency);
        self
    }
    pub fn pod_name(mut self, pod: impl Into<String>) -> Self {
        self.overrides.pod_name = Some(pod.into());
        self
    }
    pub fn starvation(mut self, limit: Duration) -> Self {
        self.overrides.starvation = Some(limit);
        self
    }
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.overrides.grace = Some(grace);
        self
    }
    pub fn reports_queue(mut self, queue: impl Into<String>) -> Self {
        self.overrides.reports_queue = Some(queue.into());
        self
    }
    /// Serve `/metrics`, `/healthz`, `/readyz` on this address (port 0 = any free port).
    pub fn metrics_addr(mut self, addr: std::net::SocketAddr) -> Self {
        self.overrides.metrics_addr = Some(addr);
        self
    }
    /// The pool's queue type (`classic` or `quorum`).
    pub fn queue_type(mut self, queue_type: impl Into<String>) -> Self {
        self.overrides.queue_type = Some(queue_type.into());
        self
    }
    /// Replaces all configuration overrides at once.
    pub fn overrides(mut self, overrides: ConfigOverrides) -> Self {
        self.overrides = overrides;
        self
    }

    /// The handler for tasks without a `taskType`, or with one no specific handler is for.
    pub fn handler<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.handlers.default = Some(boxed(f));
        self
    }

    /// The handler for tasks whose envelope says `taskType: task_type`.
    pub fn handler_for<F, Fut>(mut self, task_type: impl Into<String>, f: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.handlers.by_type.insert(task_type.into(), boxed(f));
        self
    }

    /// Resolves the configuration (overrides over environment) and checks a handler exists.
    pub fn build(self) -> Result<Worker, WorkerError> {
        if self.handlers.default.is_none() && self.handlers.by_type.is_empty() {
            return Err(WorkerError::NoHandler);
        }
        let config = WorkerConfig::from_env(&self.overrides)?;
        Ok(Worker { config, handlers: self.handlers })
    }
}

/// A configured worker, ready to [`run`](Worker::run).
pub struct Worker {
    config: WorkerConfig,
    handlers: Handlers,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("config", &self.config).finish_non_exhaustive()
    }
}

struct Shared {
    config: WorkerConfig,
    handlers: Handlers,
    reporter: Reporter,
    stats: Arc<Stats>,
    metrics: Arc<WorkerMetrics>,
    /// Retry tiers declared by this process (declaring is idempotent; this saves round trips).
    retry_tiers: Mutex<HashSet<u64>>,
    /// The operator's set of cancelled Jobs; receivers are woken when a Job is added.
    cancels: watch::Sender<CancelSet>,
}

impl Shared {
    /// Why the Job of a task is cancelled, if it is.
    fn cancel_reason(&self, job_uid: &str) -> Option<String> {
        self.cancels.borrow().reason(job_uid).map(str::to_string)
    }
}

/// The broker objects of one connection, shared by the tasks it runs.
struct Session {
    connection: Arc<Connection>,
    /// Confirm-mode channel for retries and dead letters.
    publish: Channel,
    /// Fired when anything finds the connection broken.
    lost: CancellationToken,
    /// Acknowledgements and returns of this connection's deliveries.
    acks: Arc<Acks>,
}

/// A delivery that parsed as an envelope, waiting for a slot.
struct Ready {
    delivery: Delivery,
    receipt: Receipt,
    envelope: TaskEnvelope,
}

enum SessionEnd {
    /// Shutdown completed: consumers cancelled, buffered tasks returned, running ones done.
    Drained,
    /// The connection broke; reconnect.
    Lost,
}

enum Outcome {
    Succeeded(Option<serde_json::Value>),
    Failed { error: TaskError, reason_override: Option<&'static str> },
    Interrupted,
    /// The task's Job was cancelled while the handler ran (reason from the control message).
    Cancelled(String),
}

impl Worker {
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::default()
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn run_until_signal(self) -> Result<WorkerSummary, WorkerError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(WorkerError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(WorkerError::Signals)?;
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
                _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
            }
            trigger.cancel();
        });
        Ok(self.run(shutdown).await)
    }

    /// Runs until `shutdown` is cancelled, then drains: stops consuming, returns buffered
    /// tasks to their queues, lets running tasks finish within the grace period (the rest
    /// are cancelled and returned), flushes reports and disconnects.
    pub async fn run(self, shutdown: CancellationToken) -> WorkerSummary {
        let config = self.config;
        let stats = Arc::new(Stats::new(u32::from(config.concurrency)));
        let metrics = Arc::new(WorkerMetrics::new(&config.pool));
        let metrics_server = match config.metrics_addr {
            Some(addr) => match crate::metrics::serve(addr, metrics.clone()).await {
                Ok((bound, handle)) => {
                    tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz");
                    Some(handle)
                }
                // Tasks still run; the readiness probe (if any) shows the problem.
                Err(error) => {
                    tracing::error!(%addr, %error, "cannot serve /metrics, /healthz, /readyz");
                    None
                }
            },
            None => None,
        };
        let (reporter, commands) = Reporter::channel();
        let (link_tx, link_rx) = watch::channel(None);
        let reporter_stop = CancellationToken::new();
        let reporter_task = tokio::spawn(
            ReporterTask {
                rx: commands,
                link: link_rx,
                stats: stats.clone(),
                worker: WorkerId {
                    namespace: config.namespace.clone(),
                    pool: config.pool.clone(),
                    pod: config.pod_name.clone(),
                },
                queue: config.reports_queue.clone(),
                stop: reporter_stop.clone(),
            }
            .run(),
        );
        let shared = Arc::new(Shared {
            config,
            handlers: self.handlers,
            reporter,
            stats: stats.clone(),
            metrics,
            retry_tiers: Mutex::default(),
            cancels: watch::Sender::new(CancelSet::default()),
        });
        let span = tracing::info_span!(
            "worker",
            namespace = %shared.config.namespace,
            pool = %shared.config.pool,
            pod = %shared.config.pod_name
        );
        async {
            let mut failures = 0u32;
            loop {
                if shutdown.is_cancelled() {
                    break;
                }
                let connected = tokio::select! {
                    c = Connection::connect(
                        &shared.config.amqp_url,
                        ConnectionProperties::default().with_connection_name(shared.config.pod_name.as_str().into()),
                    ) => Some(c),
                    _ = shutdown.cancelled() => None,
                };
                match connected {
                    None => break,
                    Some(Err(e)) => {
                        failures += 1;
                        tracing::warn!(error = %e, failures, "connecting to the broker failed");
                    }
                    Some(Ok(connection)) => {
                        let connection = Arc::new(connection);
                        match run_session(&shared, &connection, &link_tx, &shutdown, &mut failures).await {
                            Ok(SessionEnd::Drained) => {
                                if tokio::time::timeout(FINAL_FLUSH_TIMEOUT, shared.reporter.flush()).await.is_err() {
                                    tracing::warn!("final report flush timed out");
                                }
                                let _ = link_tx.send(None);
                                let _ = connection.close(200, "worker shut down".into()).await;
                                break;
                            }
                            Ok(SessionEnd::Lost) => {
                                failures += 1;
                                tracing::warn!(failures, "connection to the broker lost");
                            }
                            Err(e) => {
                                failures += 1;
                                tracing::warn!(error = %e, failures, "setting up consumers failed");
                            }
                        }
                        let _ = link_tx.send(None);
                        let _ = connection.close(320, "reconnecting".into()).await;
                    }
                }
                shared.metrics.set_consuming(false);
                shared.metrics.broker_reconnects.inc();
                let delay = reconnect_delay(failures, rand::random::<f64>());
                tracing::info!(delay_ms = delay.as_millis() as u64, "reconnecting after a pause");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
            reporter_stop.cancel();
            let _ = reporter_task.await;
        }
        .instrument(span)
        .await;
        if let Some(server) = metrics_server {
            server.abort();
        }
        let hb = stats.snapshot();
        WorkerSummary { completed_total: hb.completed_total, interrupted_total: hb.interrupted_total }
    }
}

async fn confirm_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

/// One connection's life: set up channels and consumers, then dispatch until shutdown
/// completes or the connection breaks.
async fn run_session(
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
    match topology::declare_reports_queue(&declare, &config.reports_queue).await {
        Ok(()) => {
            let _ = declare.close(200, "OK".into()).await;
        }
        Err(e) => tracing::warn!(error = %e, "declaring the reports queue failed; using it as is"),
    }
    let _ = link_tx.send(Some(ReportLink { channel: confirm_channel(connection).await?, lost: lost.clone() }));
    let session = Arc::new(Session {
        connection: connection.clone(),
        publish: confirm_channel(connection).await?,
        lost,
        acks: Acks::new(),
    });

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
    if let Some(first) = first_control {
        if tokio::time::timeout(FIRST_MESSAGE_WAIT, first).await.is_err() {
            tracing::info!(exchange = %control_exchange, "no control message from the operator yet; taking tasks anyway");
        }
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
    let end = loop {
        if !draining && suspects {
            if running.is_empty() {
                let get = BasicGetOptions { no_ack: false };
                match suspect_channel.basic_get(suspect_queue.as_str().into(), get).await {
                    Ok(Some(message)) => {
                        let delivery = message.delivery;
                        let receipt = session.acks.delivered(suspect_acks, delivery.delivery_tag);
                        match TaskEnvelope::from_json(&delivery.data) {
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
                            Err(error) => {
                                aux.spawn(dead_letter_malformed(shared.clone(), session.clone(), delivery, receipt, error));
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
        }
        if !draining && !suspects {
            while running.len() < usize::from(config.concurrency) {
                let Some((_, ready)) = buffer.pop_next(std::time::Instant::now(), config.starvation) else { break };
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
                Some((class, receipt, delivery)) => match TaskEnvelope::from_json(&delivery.data) {
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
                    Err(error) => {
                        aux.spawn(dead_letter_malformed(shared.clone(), session.clone(), delivery, receipt, error));
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
                match ControlMessage::from_json(&delivery.data) {
                    Ok(message) => {
                        shared.cancels.send_if_modified(|set| match set.apply(&message) {
                            Some(added) if !added.is_empty() => {
                                tracing::info!(jobs = ?added, cancelled = set.len(), "Jobs cancelled");
                                true
                            }
                            _ => false,
                        });
                        if let Some(tx) = first.take() {
                            let _ = tx.send(());
                        }
                    }
                    Err(error) => tracing::warn!(%error, "ignoring a malformed control message"),
                }
            }
            lost.cancel();
        }
        .in_current_span(),
    );
    Ok(first_rx)
}

fn text(s: impl Into<Vec<u8>>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn dead_letter_headers(reason: &str, last_error: &str, envelope: Option<&TaskEnvelope>) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(dead_letter_header::REASON.into(), text(reason));
    headers.insert(dead_letter_header::LAST_ERROR.into(), text(last_error));
    if let Some(e) = envelope {
        headers.insert(dead_letter_header::ATTEMPTS.into(), AMQPValue::LongLongInt(i64::from(e.attempt)));
        headers.insert(dead_letter_header::JOB_UID.into(), text(e.job.uid.as_str()));
        headers.insert(dead_letter_header::TASK_INDEX.into(), AMQPValue::LongLongInt(i64::from(e.index)));
    }
    headers
}

/// Publishes a dead letter (confirmed) with the standard headers and any `extra` ones.
async fn publish_dead_letter(
    shared: &Shared,
    session: &Session,
    delivery: &Delivery,
    reason: &str,
    last_error: &str,
    envelope: Option<&TaskEnvelope>,
    extra: &[(&str, AMQPValue)],
) -> Result<(), PublishError> {
    let dlq = names::dead_letter_queue(&shared.config.namespace, &shared.config.pool);
    let mut headers = dead_letter_headers(reason, last_error, envelope);
    for (name, value) in extra {
        headers.insert((*name).into(), value.clone());
    }
    let mut properties = BasicProperties::default().with_headers(headers);
    if let Some(content_type) = delivery.properties.content_type() {
        properties = properties.with_content_type(content_type.clone());
    }
    publish_confirmed(&session.publish, "", &dlq, &delivery.data, properties).await
}

/// After a publish that should have settled a delivery failed: the delivery goes back to its
/// queue after a pause (so that a missing queue is no hot loop), and a broken channel ends the
/// session.
async fn return_after_failed_publish(session: &Session, receipt: Receipt, e: &PublishError, what: &str) {
    tracing::warn!(error = %e, reason = e.reason(), "{what} failed; returning the delivery");
    if matches!(e, PublishError::Broker(_)) {
        session.lost.cancel();
    }
    tokio::time::sleep(REQUEUE_PAUSE).await;
    session.acks.requeue(receipt);
}

/// A message that is not a task goes to the dead-letter queue (reason `malformed`).
async fn dead_letter_malformed(shared: Arc<Shared>, session: Arc<Session>, delivery: Delivery, receipt: Receipt, error: String) {
    tracing::warn!(%error, routing_key = %delivery.routing_key, "dead-lettering a malformed message");
    match publish_dead_letter(&shared, &session, &delivery, dead_letter_reason::MALFORMED, &error, None, &[]).await {
        Ok(()) => session.acks.ack(receipt),
        Err(e) => return_after_failed_publish(&session, receipt, &e, "dead-lettering a malformed message").await,
    }
}

/// A task of a cancelled Job: reported `Cancelled` (so the operator can re-enqueue it if the
/// Job resumes), then acknowledged without running.
async fn drop_cancelled(shared: Arc<Shared>, session: Arc<Session>, receipt: Receipt, envelope: TaskEnvelope, reason: String) {
    let span = tracing::info_span!("task", job = %envelope.job.name, job_uid = %envelope.job.uid, task = envelope.index, attempt = envelope.attempt);
    async {
        tracing::info!(%reason, "dropping a task of a cancelled Job");
        report_then_ack(&shared, &session, receipt, &envelope, TaskEventKind::Cancelled { reason }).await;
    }
    .instrument(span)
    .await
}

/// A redelivered task (its worker was lost during its previous delivery): moved to the suspect
/// queue to run alone, or, at its delivery limit, dead-lettered (`worker-lost`) and reported
/// failed. See [`crate::lost`].
async fn move_redelivered(shared: Arc<Shared>, session: Arc<Session>, receipt: Receipt, delivery: Delivery, envelope: TaskEnvelope) {
    let span = tracing::info_span!("task", job = %envelope.job.name, job_uid = %envelope.job.uid, task = envelope.index, attempt = envelope.attempt);
    async {
        let headers = delivery.properties.headers().as_ref();
        let (was_suspect, lost_runs) = lost::read_headers(headers);
        match lost::on_redelivery(was_suspect, lost_runs, envelope.retry.max_attempts) {
            lost::Redelivered::Suspect { lost_runs } => {
                tracing::warn!(lost_runs, was_suspect, "the task's worker was lost during its previous delivery; moving it to the suspect queue to run alone");
                let queue = names::suspect_queue(&shared.config.namespace, &shared.config.pool);
                let properties = BasicProperties::default()
                    .with_content_type(TASK_CONTENT_TYPE.into())
                    .with_headers(lost::suspect_headers(headers, lost_runs));
                match publish_confirmed(&session.publish, "", &queue, &delivery.data, properties).await {
                    Ok(()) => {
                        shared.metrics.task_redelivered(&envelope.priority, false);
                        session.acks.ack(receipt);
                    }
                    Err(e) => return_after_failed_publish(&session, receipt, &e, "moving a task to the suspect queue").await,
                }
            }
            lost::Redelivered::DeadLetter { lost_runs } => {
                let error = format!(
                    "the worker was lost during {lost_runs} runs of this task, the last {} of them with the task running alone \
                     (killed, out of memory, or its channel closed, e.g. by the broker's consumer_timeout)",
                    lost_runs - 1
                );
                tracing::warn!(lost_runs, "the task took its worker down at every run; dead-lettering it");
                let reason = dead_letter_reason::WORKER_LOST;
                let extra = [(dead_letter_header::LOST_RUNS, AMQPValue::LongLongInt(i64::from(lost_runs)))];
                if let Err(e) = publish_dead_letter(&shared, &session, &delivery, reason, &error, Some(&envelope), &extra).await {
                    return_after_failed_publish(&session, receipt, &e, "dead-lettering a task").await;
                    return;
                }
                shared.metrics.task_redelivered(&envelope.priority, true);
                let disposition = FailureDisposition::DeadLettered { reason: reason.to_string() };
                report_then_ack(&shared, &session, receipt, &envelope, TaskEventKind::Failed { error, disposition }).await;
            }
        }
    }
    .instrument(span)
    .await
}

/// A buffered task that never started, handed back on shutdown: republished as it came (then
/// acknowledged) rather than returned with a nack, so that its next delivery is not flagged
/// `redelivered` and taken for a task that took its worker down.
async fn return_unstarted(session: Arc<Session>, ready: Ready) {
    let Ready { delivery, receipt, .. } = ready;
    let mut properties = BasicProperties::default().with_content_type(TASK_CONTENT_TYPE.into());
    if let Some(headers) = delivery.properties.headers() {
        properties = properties.with_headers(headers.clone());
    }
    match publish_confirmed(&session.publish, delivery.exchange.as_str(), delivery.routing_key.as_str(), &delivery.data, properties).await {
        Ok(()) => session.acks.ack(receipt),
        Err(e) => {
            tracing::debug!(error = %e, "republishing an unstarted task failed; returning it");
            session.acks.requeue(receipt);
        }
    }
}

/// Reports an outcome and acknowledges the delivery once the report is confirmed by the broker
/// (a crash before that means a redelivery, never a lost outcome). False if the connection was
/// lost first (the delivery is then redelivered).
async fn report_then_ack(
    shared: &Shared,
    session: &Session,
    receipt: Receipt,
    envelope: &TaskEnvelope,
    kind: TaskEventKind,
) -> TaskOutcome {
    let finished = match &kind {
        TaskEventKind::Failed { disposition: FailureDisposition::Retrying { .. }, .. } => TaskOutcome::Retried,
        TaskEventKind::Failed { disposition: FailureDisposition::DeadLettered { .. }, .. } => TaskOutcome::DeadLettered,
        TaskEventKind::Cancelled { .. } => TaskOutcome::Cancelled,
        _ => TaskOutcome::Succeeded,
    };
    let confirmed = shared.reporter.event_confirmed(envelope, kind);
    tokio::select! {
        _ = confirmed => {
            session.acks.ack(receipt);
            finished
        }
        _ = session.lost.cancelled() => {
            tracing::warn!("connection lost before the outcome was reported; the task will be redelivered");
            TaskOutcome::Interrupted
        }
    }
}

async fn ensure_retry_tier(shared: &Shared, session: &Session, tier_ms: u64) -> Result<(), OutcomeError> {
    if shared.retry_tiers.lock().unwrap().contains(&tier_ms) {
        return Ok(());
    }
    let channel = session.connection.create_channel().await?;
    let config = &shared.config;
    topology::declare_retry_tier(&channel, &config.namespace, &config.pool, tier_ms, &config.queue_type).await?;
    let _ = channel.close(200, "OK".into()).await;
    shared.retry_tiers.lock().unwrap().insert(tier_ms);
    Ok(())
}

async fn publish_retry(
    shared: &Shared,
    session: &Session,
    envelope: &TaskEnvelope,
    next_attempt: u32,
    tier_ms: u64,
    delay_ms: u64,
) -> Result<(), OutcomeError> {
    ensure_retry_tier(shared, session, tier_ms).await?;
    let next = TaskEnvelope { attempt: next_attempt, ..envelope.clone() };
    let mut headers = FieldTable::default();
    headers.insert(RETRY_TIER_HEADER.into(), text(tier_ms.to_string()));
    let properties = BasicProperties::default()
        .with_content_type(TASK_CONTENT_TYPE.into())
        .with_expiration(delay_ms.to_string().into())
        .with_headers(headers);
    let exchange = topology::retry_exchange(&shared.config.namespace, &shared.config.pool);
    publish_confirmed(&session.publish, &exchange, &envelope.priority, &next.to_json(), properties).await?;
    Ok(())
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// The error of a result over [`warren_protocol::MAX_RESULT_BYTES`], if it is.
fn result_too_large(result: Option<&serde_json::Value>) -> Option<String> {
    let size = serde_json::to_vec(result?).map_or(usize::MAX, |v| v.len());
    (size > warren_protocol::MAX_RESULT_BYTES).then(|| {
        format!(
            "the handler's result is {size} bytes, over the limit of {} bytes; return a reference to the data instead",
            warren_protocol::MAX_RESULT_BYTES
        )
    })
}

/// Runs the handler in its own tokio task, under the attempt's timeout and the session's
/// interrupt.
async fn run_handler(
    handler: Handler,
    ctx: TaskContext,
    timeout: Option<Duration>,
    interrupt: CancellationToken,
    mut cancels: watch::Receiver<CancelSet>,
) -> Outcome {
    let cancel = ctx.cancellation_token();
    let job_uid = ctx.job().uid.clone();
    let job_cancelled = async move {
        loop {
            let reason = cancels.borrow_and_update().reason(&job_uid).map(str::to_string);
            if let Some(reason) = reason {
                return reason;
            }
            if cancels.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    };
    let mut handle = tokio::spawn(handler(ctx).in_current_span());
    let time_limit = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let wind_down = async |handle: &mut tokio::task::JoinHandle<TaskResult>| {
        cancel.cancel();
        if tokio::time::timeout(HANDLER_WIND_DOWN, &mut *handle).await.is_err() {
            tracing::warn!("handler ignored cancellation; aborting it");
            handle.abort();
        }
    };
    tokio::select! {
        joined = &mut handle => match joined {
            Ok(Ok(result)) => match result_too_large(result.as_ref()) {
                None => Outcome::Succeeded(result),
                Some(error) => Outcome::Failed {
                    error: TaskError::permanent(error),
                    reason_override: Some(dead_letter_reason::RESULT_TOO_LARGE),
                },
            },
            Ok(Err(error)) => Outcome::Failed { error, reason_override: None },
            Err(e) if e.is_panic() => Outcome::Failed {
                error: TaskError::retryable(format!("handler panicked: {}", panic_message(e.into_panic()))),
                reason_override: None,
            },
            Err(e) => Outcome::Failed { error: TaskError::retryable(format!("handler aborted: {e}")), reason_override: None },
        },
        _ = time_limit => {
            wind_down(&mut handle).await;
            let secs = timeout.unwrap_or_default().as_secs();
            Outcome::Failed { error: TaskError::retryable(format!("timed out after {secs}s")), reason_override: None }
        }
        _ = interrupt.cancelled() => {
            wind_down(&mut handle).await;
            Outcome::Interrupted
        }
        reason = job_cancelled => {
            tracing::info!(%reason, "the task's Job was cancelled; cancelling the handler");
            wind_down(&mut handle).await;
            Outcome::Cancelled(reason)
        }
    }
}

/// Executes one task and disposes of its delivery.
async fn execute(shared: Arc<Shared>, session: Arc<Session>, ready: Ready, interrupt: CancellationToken) {
    let Ready { delivery, receipt, envelope } = ready;
    let envelope = Arc::new(envelope);
    let span = tracing::info_span!(
        "task",
        job = %envelope.job.name,
        job_namespace = %envelope.job.namespace,
        job_uid = %envelope.job.uid,
        task = envelope.index,
        attempt = envelope.attempt,
        priority = %envelope.priority,
    );
    async move {
        let priority = envelope.priority.clone();
        shared.metrics.task_started(&priority, envelope.attempt);
        let outcome = execute_attempt(&shared, &session, &delivery, receipt, envelope, interrupt).await;
        shared.metrics.task_ended(&priority, outcome);
        shared.stats.task_ended(outcome != TaskOutcome::Interrupted);
    }
    .instrument(span)
    .await
}

/// How the task left: completed (outcome recorded and delivery acked) or
/// [`TaskOutcome::Interrupted`] (returned to the broker).
async fn execute_attempt(
    shared: &Shared,
    session: &Session,
    delivery: &Delivery,
    receipt: Receipt,
    envelope: Arc<TaskEnvelope>,
    interrupt: CancellationToken,
) -> TaskOutcome {
    if let Some(reason) = shared.cancel_reason(&envelope.job.uid) {
        tracing::info!(%reason, "dropping a task of a cancelled Job");
        return report_then_ack(shared, session, receipt, &envelope, TaskEventKind::Cancelled { reason }).await;
    }
    // Per-task lines are debug: at thousands of tasks per second they would cost more CPU than
    // the tasks (`RUST_LOG=warren_worker=debug` shows them). Failures stay at warn.
    tracing::debug!("task started");
    shared.reporter.event(&envelope, TaskEventKind::Started);
    let handler_started = Instant::now();
    let outcome = match shared.handlers.select(envelope.task_type.as_deref()) {
        Some(handler) => {
            let ctx = TaskContext::new(envelope.clone(), CancellationToken::new(), shared.reporter.clone());
            let cancels = shared.cancels.subscribe();
            run_handler(handler.clone(), ctx, envelope.timeout_seconds.map(Duration::from_secs), interrupt, cancels).await
        }
        None => Outcome::Failed {
            error: TaskError::permanent(format!(
                "no handler for task type {:?}",
                envelope.task_type.as_deref().unwrap_or_default()
            )),
            reason_override: Some(dead_letter_reason::NO_HANDLER),
        },
    };
    match &outcome {
        Outcome::Succeeded(_) => shared.metrics.handler_returned(&envelope.priority, true, handler_started.elapsed()),
        Outcome::Failed { .. } => shared.metrics.handler_returned(&envelope.priority, false, handler_started.elapsed()),
        Outcome::Interrupted | Outcome::Cancelled(_) => {}
    }
    let kind = match outcome {
        Outcome::Interrupted => {
            tracing::warn!("task interrupted; returning it to its queue");
            session.acks.requeue(receipt);
            return TaskOutcome::Interrupted;
        }
        Outcome::Succeeded(result) => {
            tracing::debug!("task succeeded");
            TaskEventKind::Succeeded { result }
        }
        Outcome::Cancelled(reason) => TaskEventKind::Cancelled { reason },
        Outcome::Failed { error, reason_override } => {
            let action = match reason_override {
                Some(reason) => FailureAction::DeadLetter { reason },
                None => decide_failure(&envelope.retry, envelope.attempt, error.is_retryable(), rand::random::<f64>()),
            };
            let (published, disposition) = match action {
                FailureAction::Retry { next_attempt, delay } => {
                    tracing::warn!(error = %error, retry_in_ms = delay.delay_ms, tier_ms = delay.tier_ms, "task failed; retrying");
                    (
                        publish_retry(shared, session, &envelope, next_attempt, delay.tier_ms, delay.delay_ms).await,
                        FailureDisposition::Retrying { delay_ms: delay.delay_ms },
                    )
                }
                FailureAction::DeadLetter { reason } => {
                    tracing::warn!(error = %error, reason, "task failed; dead-lettering");
                    (
                        publish_dead_letter(shared, session, delivery, reason, error.message(), Some(&envelope), &[])
                            .await
                            .map_err(OutcomeError::from),
                        FailureDisposition::DeadLettered { reason: reason.to_string() },
                    )
                }
            };
            if let Err(e) = published {
                tracing::error!(error = %e, reason = e.reason(), "recording the failure failed; returning the task to its queue");
                if e.breaks_session() {
                    session.lost.cancel();
                }
                tokio::time::sleep(REQUEUE_PAUSE).await;
                session.acks.requeue(receipt);
                return TaskOutcome::Interrupted;
            }
            TaskEventKind::Failed { error: error.message().to_string(), disposition }
        }
    };
    report_then_ack(shared, session, receipt, &envelope, kind).await
}

#[cfg(test)]
mod result_limit_tests {
    use super::result_too_large;

    #[test]
    fn results_up_to_the_limit_pass_and_larger_ones_are_explained() {
        assert_eq!(result_too_large(None), None);
        // A JSON string of n characters serializes to n + 2 bytes.
        let at_limit = serde_json::Value::String("x".repeat(warren_protocol::MAX_RESULT_BYTES - 2));
        assert_eq!(result_too_large(Some(&at_limit)), None);
        let over = serde_json::Value::String("x".repeat(warren_protocol::MAX_RESULT_BYTES - 1));
        assert_eq!(
            result_too_large(Some(&over)).as_deref(),
            Some("the handler's result is 16385 bytes, over the limit of 16384 bytes; return a reference to the data instead")
        );
    }
}

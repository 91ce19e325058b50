//! The Warren operator: controllers for WorkerPool, Job, Workflow and Schedule, the report
//! consumer that keeps Job status true, and the `warren` CLI's building blocks.

pub mod admission;
pub mod autoscaler;
pub mod broker;
pub mod conditions;
pub mod control_key;
pub mod controllers;
pub mod crd;
pub mod events;
pub mod leader;
pub mod lost_tasks;
pub mod metrics;
pub mod notify;
pub mod pod_security;
pub mod queue_health;
pub mod queue_stats;
pub mod ranges;
pub mod replay;
pub mod report_keys;
pub mod server;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;

use controllers::{Config, Context, ErrorBackoff};

/// Runs the operator until SIGTERM/SIGINT: both controllers, the report consumer, the status
/// writer, and (if `metrics_addr` is set) the `/metrics`, `/healthz`, `/readyz` server.
///
/// With leader election (`config.leader_election`) the process first waits for the Lease,
/// serving its endpoints as a standby meanwhile; only the leader runs the controllers and the
/// report consumer. Losing the Lease stops everything and returns an error (the process exits
/// and is restarted as a candidate); a graceful stop releases the Lease.
pub async fn run(client: kube::Client, config: Config, metrics_addr: Option<SocketAddr>) -> anyhow::Result<()> {
    if let Some(addr) = metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
        tokio::spawn(server::serve(listener));
    }
    let mut elector = None;
    if let Some(settings) = &config.leader_election {
        settings.validate().map_err(anyhow::Error::msg)?;
        metrics::global().leader.set(0);
        let mut candidate = leader::Elector::new(client.clone(), settings.clone());
        tracing::info!(lease = %settings.name, namespace = %settings.namespace, identity = %settings.identity, "waiting to lead");
        tokio::select! {
            _ = candidate.acquire() => {}
            _ = shutdown_signal() => {
                tracing::info!("stopped while standing by");
                return Ok(());
            }
        }
        tracing::info!(identity = %settings.identity, "leading: starting the controllers");
        elector = Some(candidate);
    }
    metrics::global().leader.set(1);
    // The key the control broadcasts are signed with, and the workers told its public half.
    let key_namespace = config.leader_election.as_ref().map_or_else(|| client.default_namespace().to_string(), |l| l.namespace.clone());
    let signer = Arc::new(control_key::load(&client, &key_namespace).await);
    let config = Config { control_public_key: Some(signer.public_key_hex()), ..config };

    let pool_watch = controllers::PoolWatch::new(client.clone(), &config, controllers::index::no_keys);
    let (queue_health, health_triggers) = queue_health::QueueHealth::new();
    let queue_health = Arc::new(queue_health);
    let book = Arc::new(controllers::job::book::JobBook::new(
        client.clone(),
        config.status_interval,
        pool_watch.store.clone(),
        queue_health.clone(),
    ));
    let workers = Arc::new(workers::WorkerRegistry::default());
    let pool_changes = pool_watch.subscribe();
    let pool_controller = controllers::worker_pool::controller(client.clone(), &config, &pool_watch);
    let report_keys = Arc::new(report_keys::ReportKeys::new(client.clone()));
    let (circuits, circuit_triggers) = admission::Circuits::new(client.clone());
    let circuits = Arc::new(circuits);
    let ctx = Arc::new(Context {
        queue_health,
        report_keys: report_keys.clone(),
        circuits: circuits.clone(),
        client: client.clone(),
        broker: broker::Broker::new(config.amqp_url.clone(), config.amqp_tls.clone()),
        book: book.clone(),
        workers: workers.clone(),
        pools: pool_watch.store.clone(),
        pools_synced: pool_watch.synced(),
        control_signer: signer.clone(),
        config: config.clone(),
        backoff: ErrorBackoff::default(),
        autoscalers: controllers::worker_pool::scale::Autoscalers::new(client.clone()),
    });
    let flusher = tokio::spawn(book.clone().run_flusher());
    let lost_tasks = tokio::spawn(lost_tasks::run(ctx.clone()));
    let (admitted, admitted_jobs) = futures::channel::mpsc::unbounded();
    let admission = tokio::spawn(admission::run(ctx.clone(), admitted));
    let sampler = tokio::spawn(queue_stats::run(
        config.amqp_url.clone(),
        config.amqp_tls.clone(),
        config.reports_queue.clone(),
        ctx.pools.clone(),
        ctx.book.clone(),
        config.queue_stats_interval,
    ));
    metrics::global().on_scrape({
        let book = book.clone();
        move |m| book.export_gauges(m)
    });
    let consumer = tokio::spawn(controllers::job::reports::run(
        controllers::job::reports::Wiring {
            url: config.amqp_url.clone(),
            tls: config.amqp_tls.clone(),
            queue: config.reports_queue.clone(),
            queue_type: config.reports_queue_type.clone(),
            signatures: config.report_signatures,
        },
        book,
        workers,
        report_keys,
        circuits.clone(),
        ctx.pools.clone(),
    ));
    tracing::info!(amqp = %broker::redact(&config.amqp_url), watch_namespace = config.watch_namespace.as_deref().unwrap_or("(all)"), "Warren operator started");
    let job_watch = controllers::JobWatch::new(client.clone(), &config, controllers::index::job_keys);
    let (jobs, job_index, job_events, child_events) =
        (job_watch.store.clone(), job_watch.index(), job_watch.subscribe(), job_watch.subscribe());
    let notify_broker = config.notify.exchange.as_ref().map(|_| broker::Broker::new(config.amqp_url.clone(), config.amqp_tls.clone()));
    let notifier = Arc::new(notify::Notifier::new(client.clone(), config.notify.clone(), ctx.book.clone(), notify_broker));
    let notifier_jobs = jobs.clone();
    let controllers = async {
        tokio::select! {
            _ = async {
                tokio::join!(
                    controllers::worker_pool::run(pool_controller, ctx.clone(), health_triggers.pools, circuit_triggers),
                    controllers::job::run(
                        ctx.clone(),
                        jobs.clone(),
                        job_index.clone(),
                        job_events,
                        pool_changes,
                        health_triggers.jobs_of_pools,
                        admitted_jobs
                    ),
                    controllers::workflow::run(client.clone(), config.clone(), job_index, child_events),
                    controllers::schedule::run(client.clone(), config.clone()),
                )
            } => {}
            // Completion events: only while leading, stopped with the controllers.
            _ = notify::run(notifier, notifier_jobs, config.clone(), client.clone()) => tracing::error!("the notifier ended"),
            _ = job_watch.run() => tracing::error!("the Job watch ended"),
            _ = pool_watch.run() => tracing::error!("the WorkerPool watch ended"),
        }
    };
    let lost = match elector.as_mut() {
        None => {
            controllers.await;
            None
        }
        Some(elector) => tokio::select! {
            _ = controllers => None,
            lost = elector.hold() => Some(lost),
        },
    };
    flusher.abort();
    lost_tasks.abort();
    admission.abort();
    consumer.abort();
    sampler.abort();
    metrics::global().leader.set(0);
    if let Some(error) = lost {
        tracing::error!(%error, reason = error.reason(), "stopped reconciling: leadership lost");
        return Err(error.into());
    }
    if let Some(elector) = elector.as_mut() {
        elector.release().await;
    }
    tracing::info!("Warren operator stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Installs the `tracing` subscriber: JSON when `json`, else human-readable; `RUST_LOG` filters.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,lapin=warn"));
    // Colour only on a terminal: a log file or a log collector gets plain text it can grep.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

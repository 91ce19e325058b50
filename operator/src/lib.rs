//! The Warren operator: controllers for WorkerPool, Job and Workflow, the report consumer that keeps Job
//! status true, and the `warren` CLI's building blocks.

pub mod book;
pub mod broker;
pub mod conditions;
pub mod controllers;
pub mod crd;
pub mod ledger;
pub mod local;
pub mod metrics;
pub mod ranges;
pub mod reports;
pub mod server;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;

use controllers::{Config, Context, ErrorBackoff};

/// Runs the operator until SIGTERM/SIGINT: both controllers, the report consumer, the status
/// writer, and (if `metrics_addr` is set) the `/metrics`, `/healthz`, `/readyz` server.
pub async fn run(client: kube::Client, config: Config, metrics_addr: Option<SocketAddr>) -> anyhow::Result<()> {
    let book = Arc::new(book::JobBook::new(client.clone(), config.status_interval));
    let workers = Arc::new(workers::WorkerRegistry::default());
    let pool_controller = controllers::worker_pool::controller(client.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        broker: broker::Broker::new(config.amqp_url.clone()),
        book: book.clone(),
        workers: workers.clone(),
        pools: pool_controller.store(),
        config: config.clone(),
        backoff: ErrorBackoff::default(),
    });
    if let Some(addr) = metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
        tokio::spawn(server::serve(listener));
    }
    let flusher = tokio::spawn(book.clone().run_flusher());
    let consumer = tokio::spawn(reports::run(config.amqp_url.clone(), config.reports_queue.clone(), book, workers));
    tracing::info!(amqp = %broker::redact(&config.amqp_url), "Warren operator started");
    tokio::join!(
        controllers::worker_pool::run(pool_controller, ctx.clone()),
        controllers::job::run(ctx.clone()),
        controllers::workflow::run(client.clone()),
    );
    flusher.abort();
    consumer.abort();
    tracing::info!("Warren operator stopped");
    Ok(())
}

/// Installs the `tracing` subscriber: JSON when `json`, else human-readable; `RUST_LOG` filters.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,lapin=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

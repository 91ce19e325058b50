//! `warren-operator`: runs the controllers against the cluster of the current kubeconfig
//! (in a pod: its service account).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use warren_operator::controllers::Config;

#[derive(Parser, Debug)]
#[command(version, about = "Warren operator: WorkerPool and Job controllers")]
struct Args {
    /// AMQP URI of RabbitMQ.
    #[arg(long, env = "WARREN_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// AMQP URI given to worker pods; defaults to --amqp-url.
    #[arg(long, env = "WARREN_WORKER_AMQP_URL")]
    worker_amqp_url: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "WARREN_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    metrics_addr: SocketAddr,
    /// Tasks per confirmed publish batch.
    #[arg(long, default_value_t = 500)]
    publish_batch: u32,
    /// Minimum milliseconds between two status writes of one Job.
    #[arg(long, default_value_t = 1000)]
    status_interval_ms: u64,
    /// Queue the workers report to: one per Warren installation sharing a broker vhost.
    #[arg(long, env = "WARREN_REPORTS_QUEUE", default_value = warren_protocol::names::REPORTS_QUEUE)]
    reports_queue: String,
    /// Log as JSON.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    warren_operator::init_tracing(args.log_json);
    let client = kube::Client::try_default().await?;
    let config = Config {
        worker_amqp_url: args.worker_amqp_url.unwrap_or_else(|| args.amqp_url.clone()),
        amqp_url: args.amqp_url,
        publish_batch: args.publish_batch,
        status_interval: Duration::from_millis(args.status_interval_ms),
        reports_queue: args.reports_queue,
    };
    warren_operator::run(client, config, Some(args.metrics_addr)).await
}

//! `warren-operator`: runs the controllers against the cluster of the current kubeconfig
//! (in a pod: its service account).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use warren_operator::controllers::Config;
use warren_operator::leader::LeaseSettings;

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
    /// Most bytes of task payload one Job may put on the broker in all (completions × payload,
    /// or the items together); a larger Job fails with reason InvalidSpec naming the limit.
    #[arg(long, env = "WARREN_MAX_JOB_BYTES", default_value_t = warren_operator::controllers::job::plan::DEFAULT_MAX_JOB_BYTES)]
    max_job_bytes: u64,
    /// Minimum milliseconds between two status writes of one Job.
    #[arg(long, default_value_t = 1000)]
    status_interval_ms: u64,
    /// Queue the workers report to: one per Warren installation sharing a broker vhost.
    #[arg(long, env = "WARREN_REPORTS_QUEUE", default_value = warren_protocol::names::REPORTS_QUEUE)]
    reports_queue: String,
    /// Log as JSON.
    #[arg(long)]
    log_json: bool,
    /// Port of the workers' /metrics, /healthz, /readyz (container port and probes of the
    /// worker Deployments); 0 = workers serve none.
    #[arg(long, env = "WARREN_WORKER_METRICS_PORT", default_value_t = 9465)]
    worker_metrics_port: u16,
    /// Milliseconds between two samples of the queue depths (metrics).
    #[arg(long, default_value_t = 5000)]
    queue_stats_interval_ms: u64,
    /// Watch only this namespace (all namespaces when empty).
    #[arg(long, env = "WARREN_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Elect a leader through a Lease: only the holder reconciles (needed for more than one replica).
    #[arg(long, env = "WARREN_LEADER_ELECTION")]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, env = "WARREN_LEASE_NAME", default_value = "warren-operator")]
    lease_name: String,
    /// Namespace of the Lease; defaults to the client's namespace (in a pod: its own).
    #[arg(long, env = "WARREN_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This operator's identity in the Lease; defaults to the host name and process id.
    #[arg(long, env = "WARREN_POD_NAME")]
    identity: Option<String>,
    /// Seconds a Lease that is not renewed stays valid for the other candidates.
    #[arg(long, env = "WARREN_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Seconds the leader keeps leading while renewals fail (less than the lease duration).
    #[arg(long, env = "WARREN_LEASE_RENEW_DEADLINE_SECONDS", default_value_t = 10)]
    lease_renew_deadline_seconds: u64,
    /// Seconds between two attempts to acquire or renew the Lease.
    #[arg(long, env = "WARREN_LEASE_RETRY_PERIOD_SECONDS", default_value_t = 2)]
    lease_retry_period_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    warren_operator::init_tracing(args.log_json);
    let client = kube::Client::try_default().await?;
    let leader_election = args.leader_election.then(|| {
        let identity = args.identity.clone().filter(|i| !i.is_empty()).unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "warren-operator".into());
            format!("{host}-{}", std::process::id())
        });
        let namespace =
            args.lease_namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| client.default_namespace().to_string());
        LeaseSettings {
            lease_duration: Duration::from_secs(args.lease_duration_seconds),
            renew_deadline: Duration::from_secs(args.lease_renew_deadline_seconds),
            retry_period: Duration::from_secs(args.lease_retry_period_seconds),
            ..LeaseSettings::new(args.lease_name.clone(), namespace, identity)
        }
    });
    let config = Config {
        watch_namespace: args.watch_namespace.filter(|n| !n.is_empty()),
        worker_metrics_port: (args.worker_metrics_port != 0).then_some(args.worker_metrics_port),
        queue_stats_interval: Duration::from_millis(args.queue_stats_interval_ms.max(100)),
        leader_election,
        worker_amqp_url: args.worker_amqp_url.unwrap_or_else(|| args.amqp_url.clone()),
        amqp_url: args.amqp_url,
        limits: warren_operator::controllers::job::plan::Limits { publish_batch: args.publish_batch, max_job_bytes: args.max_job_bytes },
        status_interval: Duration::from_millis(args.status_interval_ms),
        reports_queue: args.reports_queue,
    };
    warren_operator::run(client, config, Some(args.metrics_addr)).await
}

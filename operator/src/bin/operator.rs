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
    /// AMQP URI of RabbitMQ, or the URIs of a cluster's nodes separated by commas (tried in
    /// turn; a comma in a password must be written %2C).
    #[arg(long, env = "WARREN_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// AMQP URI given to worker pods; defaults to --amqp-url.
    #[arg(long, env = "WARREN_WORKER_AMQP_URL")]
    worker_amqp_url: Option<String>,
    /// PEM file of CA certificates trusted for an amqps:// broker, besides the system's.
    #[arg(long, env = "WARREN_AMQP_CA_FILE")]
    amqp_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate (mutual TLS with the broker); needs --amqp-client-key-file.
    #[arg(long, env = "WARREN_AMQP_CLIENT_CERT_FILE")]
    amqp_client_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of --amqp-client-cert-file (PKCS#8, PKCS#1 or SEC1, not encrypted).
    #[arg(long, env = "WARREN_AMQP_CLIENT_KEY_FILE")]
    amqp_client_key_file: Option<std::path::PathBuf>,
    /// Secret mounted into every worker pod for broker TLS (it must exist in each pool's
    /// namespace): `ca.crt`, and `tls.crt` with `tls.key` for mutual TLS.
    #[arg(long, env = "WARREN_WORKER_TLS_SECRET")]
    worker_tls_secret: Option<String>,
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
    /// Type of the reports queue: classic, or quorum (replicated; for a RabbitMQ cluster). The
    /// queue's type is fixed when it is first declared: changing it needs the queue deleted.
    #[arg(long, env = "WARREN_REPORTS_QUEUE_TYPE", default_value = "classic", value_parser = ["classic", "quorum"])]
    reports_queue_type: String,
    /// Image of the workers of a pool that names none: the worker image of this operator's
    /// version by default; a tag other than `latest`, or a digest.
    #[arg(long, env = "WARREN_WORKER_IMAGE")]
    worker_image: Option<String>,
    /// Which worker reports are applied: `required` (only those signed with their pool's key) or
    /// `optional` (unsigned ones too, never wrongly signed ones; for an upgrade from workers that
    /// do not sign yet).
    #[arg(long, env = "WARREN_REPORT_SIGNATURES", value_enum, default_value_t = warren_operator::report_keys::SignaturePolicy::Required)]
    report_signatures: warren_operator::report_keys::SignaturePolicy,
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
    /// Destinations completion events (spec.notify) may go to: comma-separated host names
    /// (`*.example.com` for subdomains), IPs and CIDRs. Empty: any host, but never a
    /// cluster-internal address (loopback, RFC 1918, link-local with 169.254.169.254, …), which
    /// only an IP/CIDR entry allows. See docs/notifications.md.
    #[arg(long, env = "WARREN_NOTIFY_ALLOWED_HOSTS", default_value = "")]
    notify_allowed_hosts: String,
    /// Requests per completion event and destination before the operator gives up on it.
    #[arg(long, env = "WARREN_NOTIFY_MAX_ATTEMPTS", default_value_t = 12)]
    notify_max_attempts: u32,
    /// Milliseconds before the first retry of a completion event; doubles per attempt (±20 %
    /// jitter) up to 5 minutes.
    #[arg(long, env = "WARREN_NOTIFY_RETRY_BASE_MS", default_value_t = 1000)]
    notify_retry_base_ms: u64,
    /// Also publish every completion event to this topic exchange (declared durable) on the
    /// operator's broker, routing key = the event type (`dev.warren.job.succeeded.v1`), confirmed
    /// and recorded like a webhook. Empty: no exchange.
    #[arg(long, env = "WARREN_NOTIFY_EXCHANGE", default_value = "")]
    notify_exchange: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    warren_operator::init_tracing(args.log_json);
    let worker_image = args
        .worker_image
        .clone()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(warren_operator::controllers::worker_pool::plan::default_worker_image);
    warren_operator::controllers::worker_pool::plan::check_worker_image(&worker_image)
        .map_err(|e| anyhow::anyhow!("--worker-image: {e}"))?;
    // A malformed address list is a configuration error: say so at start, not at each reconnect.
    for (flag, list) in [("--amqp-url", Some(&args.amqp_url)), ("--worker-amqp-url", args.worker_amqp_url.as_ref())] {
        if let Some(list) = list {
            warren_protocol::addresses::parse(list).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
        }
    }
    // Broker TLS files that cannot be used stop the operator here, naming the file.
    let amqp_tls = broker_tls(&args)?;
    let client = kube::Client::try_default().await?;
    let leader_election = args.leader_election.then(|| {
        let identity = args.identity.clone().filter(|i| !i.is_empty()).unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "warren-operator".into());
            format!("{host}-{}", std::process::id())
        });
        let namespace = args.lease_namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| client.default_namespace().to_string());
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
        amqp_tls,
        worker_tls_secret: args.worker_tls_secret.filter(|s| !s.is_empty()),
        limits: warren_operator::controllers::job::plan::Limits { publish_batch: args.publish_batch, max_job_bytes: args.max_job_bytes },
        status_interval: Duration::from_millis(args.status_interval_ms),
        reports_queue: args.reports_queue,
        reports_queue_type: args.reports_queue_type,
        worker_image: worker_image.clone(),
        report_signatures: args.report_signatures,
        control_public_key: None,
        notify: warren_operator::notify::Settings {
            allow: warren_operator::notify::allow::AllowList::parse(&args.notify_allowed_hosts).map_err(anyhow::Error::msg)?,
            retry: warren_operator::notify::plan::RetryPolicy {
                max_attempts: args.notify_max_attempts.max(1),
                base_delay: Duration::from_millis(args.notify_retry_base_ms.max(100)),
                ..Default::default()
            },
            exchange: match args.notify_exchange.trim() {
                "" => None,
                name => {
                    warren_operator::notify::valid_exchange(name).map_err(anyhow::Error::msg)?;
                    Some(name.to_string())
                }
            },
            ..Default::default()
        },
    };
    warren_operator::run(client, config, Some(args.metrics_addr)).await
}

/// The operator's broker TLS settings, read and checked once.
fn broker_tls(args: &Args) -> anyhow::Result<warren_protocol::amqp::Tls> {
    let tls =
        warren_protocol::amqp::Tls::new(args.amqp_ca_file.clone(), args.amqp_client_cert_file.clone(), args.amqp_client_key_file.clone())
            .and_then(|tls| tls.check().map(|()| tls))
            .map_err(|e| anyhow::anyhow!("broker TLS: {e}"))?;
    let addresses = warren_protocol::addresses::parse(&args.amqp_url).unwrap_or_default();
    if !tls.is_empty() && !addresses.iter().any(|a| a.starts_with("amqps://")) {
        tracing::warn!("broker TLS files are set but no --amqp-url address is amqps://: they are not used");
    }
    Ok(tls)
}

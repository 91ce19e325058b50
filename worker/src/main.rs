//! `warren-worker`: the generic worker. Runs a command once per task (exec mode, see
//! `worker/README.md`). Only wiring here: parse the command line once, start the runtime,
//! exit 0 after a graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tracing_subscriber::EnvFilter;
use warren_worker::{HANDLER_COMMAND_ENV, Worker, config::ConfigOverrides, exec};

/// Runs `<command> [args...]` once per Warren task: the payload on stdin, task facts in
/// WARREN_* variables, exit 0 = success, 65 = permanent failure, anything else = retry.
/// Settings not given as flags come from the WARREN_* environment the operator sets.
#[derive(Debug, Parser)]
#[command(name = "warren-worker", version)]
struct Args {
    /// AMQP URI of the broker [env: WARREN_AMQP_URL].
    #[arg(long)]
    amqp_url: Option<String>,
    /// Namespace of the pool [env: WARREN_NAMESPACE].
    #[arg(long)]
    namespace: Option<String>,
    /// Name of the pool [env: WARREN_POOL].
    #[arg(long)]
    pool: Option<String>,
    /// Priority classes, highest first, comma-separated [env: WARREN_PRIORITIES].
    #[arg(long, value_delimiter = ',')]
    priorities: Option<Vec<String>>,
    /// Tasks run at once [env: WARREN_CONCURRENCY; default 1].
    #[arg(long)]
    concurrency: Option<u16>,
    /// Name of this worker in reports [env: WARREN_POD_NAME].
    #[arg(long)]
    pod_name: Option<String>,
    /// Seconds a lower-priority task may wait locally before it goes first
    /// [env: WARREN_STARVATION_SECONDS; default 60].
    #[arg(long)]
    starvation_seconds: Option<u64>,
    /// Seconds running tasks get to finish after SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 25)]
    grace_seconds: u64,
    /// Queue to publish reports to [env: WARREN_REPORTS_QUEUE; default warren.reports].
    #[arg(long)]
    reports_queue: Option<String>,
    /// Address of /metrics, /healthz and /readyz, e.g. 0.0.0.0:9465 [env: WARREN_METRICS_ADDR;
    /// default: not served].
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// PEM CA certificates trusted for an amqps:// broker besides the system's
    /// [env: WARREN_AMQP_CA_FILE].
    #[arg(long)]
    amqp_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate for mutual TLS with the broker [env: WARREN_AMQP_CLIENT_CERT_FILE].
    #[arg(long)]
    amqp_client_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of the client certificate [env: WARREN_AMQP_CLIENT_KEY_FILE].
    #[arg(long)]
    amqp_client_key_file: Option<std::path::PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// The command run per task; or set WARREN_HANDLER_COMMAND to a JSON array.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn handler_command(args: &Args) -> anyhow::Result<Vec<String>> {
    if !args.command.is_empty() {
        return Ok(args.command.clone());
    }
    match std::env::var(HANDLER_COMMAND_ENV) {
        Ok(raw) => exec::parse_command_json(&raw).map_err(anyhow::Error::msg),
        Err(_) => bail!("no handler command: give it after `--` or in {HANDLER_COMMAND_ENV}"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Handlers run as this process's user: without this they could read its environment (the
    // broker URI and the pool's report key, withheld from theirs) from /proc/<pid>/environ, or
    // ptrace it. Not dumpable: /proc/<pid> becomes root's, and no core dump holds the secrets.
    #[cfg(target_os = "linux")]
    if let Err(error) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("warren-worker: could not make the process non-dumpable ({error}); handlers of this user may read its secrets");
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match args.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        // Colour only on a terminal: a log file or a log collector gets plain text it can grep.
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let command = Arc::new(handler_command(&args)?);
    let command_for_log = command.clone();
    let overrides = ConfigOverrides {
        amqp_url: args.amqp_url,
        namespace: args.namespace,
        pool: args.pool,
        priorities: args.priorities,
        concurrency: args.concurrency,
        pod_name: args.pod_name,
        starvation: args.starvation_seconds.map(Duration::from_secs),
        grace: Some(Duration::from_secs(args.grace_seconds)),
        reports_queue: args.reports_queue,
        metrics_addr: args.metrics_addr,
        queue_type: None,
        reports_queue_type: None,
        channel_per_task: None,
        // From the environment only: a key on the command line would be in every `ps`.
        report_key: None,
        control_key: None,
        amqp_ca_file: args.amqp_ca_file,
        amqp_client_cert_file: args.amqp_client_cert_file,
        amqp_client_key_file: args.amqp_client_key_file,
    };
    let worker = Worker::builder()
        .overrides(overrides)
        .handler(move |ctx| exec::run_command(command.clone(), ctx))
        .build()
        .context("starting warren-worker")?;
    tracing::info!(worker = %describe(&worker), command = ?command_for_log, "warren-worker starting");
    let summary = worker.run_until_signal().await?;
    tracing::info!(completed = summary.completed_total, interrupted = summary.interrupted_total, "warren-worker stopped");
    Ok(())
}

fn describe(worker: &Worker) -> String {
    let c = worker.config();
    format!("{}/{} priorities={} concurrency={}", c.namespace, c.pool, c.priorities.join(","), c.concurrency)
}

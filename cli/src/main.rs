//! `warren`: the command-line tool. `warren local up` runs Warren on this machine;
//! `warren dlq list|replay` inspects a pool's dead-letter queue and sends tasks back; `warren wait`
//! waits for a Job or Workflow to reach a phase; `warren logs` shows what a task's last attempts printed.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(version, about = "Warren: Kubernetes-native jobs on RabbitMQ")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run Warren locally, without a cluster.
    Local {
        #[command(subcommand)]
        command: LocalCommand,
    },
    /// Print the CRDs as YAML.
    Crds,
    /// Wait until a Job or Workflow reaches a phase (exit 0), showing its progress. Exit 1: it
    /// ended in another phase; 2: timed out; 3: bad input or not found; 4: API server unreachable.
    Wait {
        /// wjob/<name> or wf/<name>.
        target: String,
        /// The phase to wait for: phase=<Phase>.
        #[arg(long = "for", default_value = "phase=Succeeded")]
        condition: String,
        /// How long to wait: 30s, 10m, 1h, or seconds.
        #[arg(long, default_value = "10m")]
        timeout: String,
        /// Namespace of the object (default: the kubeconfig's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Show what a Job's tasks printed and why they failed: the last attempts the Job keeps
    /// (status.recentAttempts). Exit 1: none kept for that task; 3: bad input or not found; 4: API
    /// server unreachable.
    Logs {
        /// wjob/<name>.
        target: String,
        /// Only this task's attempts.
        #[arg(long)]
        index: Option<u32>,
        /// Namespace of the Job (default: the kubeconfig's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// A live terminal view of pools, Jobs and Workflows (keys: README). Exit 1: terminal
    /// error; 3: bad input; 4: API server unreachable.
    Top {
        /// Only this namespace (default: the kubeconfig's).
        #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
        namespace: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Print one frame as plain text and exit (for scripts).
        #[arg(long)]
        once: bool,
        /// The operator's /metrics (e.g. http://127.0.0.1:9464/metrics), when reachable.
        #[arg(long, env = "WARREN_METRICS_URL")]
        metrics_url: Option<String>,
    },
    /// Inspect a WorkerPool's dead-letter queue and replay dead-lettered tasks.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(clap::Args, Debug)]
struct DlqTarget {
    /// The WorkerPool whose dead-letter queue to use.
    #[arg(long)]
    pool: String,
    /// Namespace of the WorkerPool.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// AMQP URI of RabbitMQ.
    #[arg(long, env = "WARREN_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    #[command(flatten)]
    tls: TlsArgs,
}

/// Broker TLS (`amqps://` addresses): as the operator's flags.
#[derive(clap::Args, Debug, Clone)]
struct TlsArgs {
    /// PEM file of CA certificates trusted for an amqps:// broker, besides the system's.
    #[arg(long, env = "WARREN_AMQP_CA_FILE")]
    amqp_ca_file: Option<PathBuf>,
    /// PEM client certificate (mutual TLS with the broker); needs --amqp-client-key-file.
    #[arg(long, env = "WARREN_AMQP_CLIENT_CERT_FILE")]
    amqp_client_cert_file: Option<PathBuf>,
    /// PEM private key of --amqp-client-cert-file.
    #[arg(long, env = "WARREN_AMQP_CLIENT_KEY_FILE")]
    amqp_client_key_file: Option<PathBuf>,
}

impl TlsArgs {
    /// The settings, with their files read and checked (a bad one is named).
    fn resolve(self) -> Result<warren_protocol::amqp::Tls, warren_protocol::amqp::TlsError> {
        let tls = warren_protocol::amqp::Tls::new(self.amqp_ca_file, self.amqp_client_cert_file, self.amqp_client_key_file)?;
        tls.check()?;
        Ok(tls)
    }
}

#[derive(Subcommand, Debug)]
enum DlqCommand {
    /// List the dead letters of a pool (they stay in the queue, in order).
    List {
        #[command(flatten)]
        target: DlqTarget,
    },
    /// Send dead-lettered tasks back to their priority queue with fresh attempts; the Job's
    /// status follows (the tasks leave `failedIndexes` and are counted when they end).
    Replay {
        #[command(flatten)]
        target: DlqTarget,
        /// Only the tasks of this Job (others stay in the dead-letter queue, in order).
        #[arg(long)]
        job: Option<String>,
        /// Replay at most this many tasks.
        #[arg(long)]
        limit: Option<u32>,
        /// Replay at most this many tasks per second (default: as fast as the broker confirms).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        rate: Option<u32>,
        /// The pool's key, which signs the replayed tasks (hex; default: read from the pool's
        /// Secret <pool>-warren-report-key with the kubeconfig's credentials).
        #[arg(long, env = "WARREN_POOL_KEY", hide_env_values = true)]
        pool_key: Option<String>,
        /// Also replay dead letters the pool's key did not sign (reason `unsigned` or
        /// `bad-signature`, or put into the queue by someone else): they will run. Only after
        /// inspecting them with `warren dlq list`.
        #[arg(long)]
        include_unsigned: bool,
    },
}

#[derive(Subcommand, Debug)]
enum LocalCommand {
    /// Start the local control plane, the runner and the operator (until Ctrl-C).
    Up {
        /// AMQP URI of RabbitMQ.
        #[arg(long, env = "WARREN_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        amqp_url: String,
        /// Port of the local API server.
        #[arg(long, default_value_t = 6443)]
        port: u16,
        /// Where the kubeconfig and worker logs go.
        #[arg(long, default_value = ".warren-local")]
        state_dir: PathBuf,
        /// Address of the operator's /metrics.
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics_addr: std::net::SocketAddr,
        /// Queue the workers report to (one per Warren installation on a broker vhost).
        #[arg(long, env = "WARREN_REPORTS_QUEUE", default_value = warren_protocol::names::REPORTS_QUEUE)]
        reports_queue: String,
        /// Also start a Prometheus (if installed) scraping the operator and the workers, with the
        /// chart's alert rules; its URL is printed.
        #[arg(long)]
        prometheus: bool,
        /// Destinations completion events (spec.notify) may go to, as the operator's flag:
        /// comma-separated host names, IPs or CIDRs (e.g. 127.0.0.1 for a receiver on this
        /// machine); empty: any host but cluster-internal and loopback addresses.
        #[arg(long, env = "WARREN_NOTIFY_ALLOWED_HOSTS", default_value = "")]
        notify_allowed_hosts: String,
        /// The operator's and the local workers' broker TLS.
        #[command(flatten)]
        tls: TlsArgs,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => {
            for crd in warren_operator::crd::all() {
                print!("{}", warren_operator::crd::to_yaml(&crd));
            }
            Ok(())
        }
        Command::Wait { target, condition, timeout, namespace } => {
            let client = match kube::Client::try_default().await {
                Ok(client) => client,
                Err(error) => {
                    eprintln!("warren wait: no Kubernetes API to ask ({error}); set KUBECONFIG");
                    std::process::exit(warren_cli::wait::Exit::Unreachable as i32);
                }
            };
            let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
            let exit = warren_cli::wait::run(client, &namespace, &target, &condition, &timeout).await;
            std::process::exit(exit as i32);
        }
        Command::Logs { target, index, namespace } => {
            let client = match kube::Client::try_default().await {
                Ok(client) => client,
                Err(error) => {
                    eprintln!("warren logs: no Kubernetes API to ask ({error}); set KUBECONFIG");
                    std::process::exit(warren_cli::logs::Exit::Unreachable as i32);
                }
            };
            let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
            let exit = warren_cli::logs::run(client, &namespace, &target, index).await;
            std::process::exit(exit as i32);
        }
        Command::Top { namespace, all_namespaces, once, metrics_url } => {
            let options = warren_cli::top::Options { namespace, all_namespaces, once, metrics_url };
            std::process::exit(warren_cli::top::main(options).await as i32);
        }
        Command::Dlq { command } => {
            if let Err(error) = dlq(command).await {
                eprintln!("warren dlq: {error}");
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Local {
            command: LocalCommand::Up { amqp_url, port, state_dir, metrics_addr, reports_queue, prometheus, notify_allowed_hosts, tls },
        } => {
            warren_operator::init_tracing(false);
            let bin_dir = std::env::current_exe()?.parent().map(PathBuf::from).unwrap_or_default();
            let amqp_tls = match tls.resolve() {
                Ok(tls) => tls,
                Err(error) => {
                    eprintln!("warren local up: broker TLS: {error}");
                    std::process::exit(1);
                }
            };
            let options = warren_cli::local::UpOptions {
                amqp_url,
                amqp_tls,
                port,
                state_dir,
                bin_dir,
                metrics_addr: Some(metrics_addr),
                reports_queue,
                prometheus,
                notify_allowed_hosts,
            };
            if let Err(error) = warren_cli::local::up(options).await {
                eprintln!("warren local up: {error}");
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// The pool's key, which signs replayed tasks: given, or read from the pool's Secret.
async fn replay_key(target: &DlqTarget, given: Option<&str>) -> anyhow::Result<warren_protocol::signature::ReportKey> {
    if let Some(text) = given {
        return warren_protocol::signature::parse_key(text).map_err(|problem| anyhow::anyhow!("--pool-key: {problem}"));
    }
    let secret = warren_operator::report_keys::secret_name(&target.pool);
    let cannot = |why: String| {
        anyhow::anyhow!(
            "cannot read Secret {}/{secret}, whose key signs the replayed tasks: {why}. Pass --pool-key, or let the operator replay one Job: \
             kubectl annotate wjob NAME -n {} warren.dev/replay-dead-letters=$(date +%s) --overwrite",
            target.namespace,
            target.namespace
        )
    };
    let client = kube::Client::try_default().await.map_err(|e| cannot(format!("no Kubernetes API to ask ({e})")))?;
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(client, &target.namespace);
    let found = api.get(&secret).await.map_err(|e| cannot(e.to_string()))?;
    warren_operator::report_keys::key_of(&found).ok_or_else(|| cannot("it holds no valid key".into()))
}

async fn dlq(command: DlqCommand) -> anyhow::Result<()> {
    use warren_operator::replay;
    match command {
        DlqCommand::List { target } => {
            let tls = target.tls.clone().resolve().map_err(|e| anyhow::anyhow!("broker TLS: {e}"))?;
            let letters = replay::list(&target.amqp_url, &tls, &target.namespace, &target.pool).await?;
            println!("{:<32} {:>6} {:>8} {:>7} {:<20} LAST ERROR", "JOB", "INDEX", "ATTEMPTS", "REPLAYS", "REASON");
            for l in &letters {
                let (job, index) = l.task.clone().map_or(("-".into(), "-".into()), |(j, i)| (j, i.to_string()));
                let attempts = l.attempts.map_or("-".into(), |n| n.to_string());
                let error: String = l.last_error.lines().next().unwrap_or_default().chars().take(80).collect();
                println!("{job:<32} {index:>6} {attempts:>8} {:>7} {:<20} {error}", l.replays, l.reason);
            }
            println!("{} dead letter(s) in {}", letters.len(), warren_protocol::names::dead_letter_queue(&target.namespace, &target.pool));
        }
        DlqCommand::Replay { target, job, limit, rate, pool_key, include_unsigned } => {
            let filter = replay::Filter { job, limit, rate, job_uid: None, unsigned: include_unsigned };
            let tls = target.tls.clone().resolve().map_err(|e| anyhow::anyhow!("broker TLS: {e}"))?;
            let key = replay_key(&target, pool_key.as_deref()).await?;
            let s = replay::replay(&target.amqp_url, &tls, &target.namespace, &target.pool, &key, &filter).await?;
            println!(
                "replayed {} task(s); {} left in the dead-letter queue by the filter, {} not tasks, {} not signed by the pool, {} failed",
                s.replayed, s.kept, s.not_tasks, s.unsigned, s.failed
            );
            if s.unsigned > 0 {
                eprintln!(
                    "warren dlq replay: {} dead letter(s) not signed with the pool's key stayed (see `warren dlq list`; --include-unsigned replays them)",
                    s.unsigned
                );
            }
            if let Some(error) = s.first_error {
                eprintln!("warren dlq replay: first failure: {error}");
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

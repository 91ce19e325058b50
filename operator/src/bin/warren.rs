//! `warren`: the command-line tool. `warren local up` runs Warren on this machine;
//! `warren dlq list|replay` inspects a pool's dead-letter queue and sends tasks back.

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
        Command::Dlq { command } => {
            if let Err(error) = dlq(command).await {
                eprintln!("warren dlq: {error}");
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Local { command: LocalCommand::Up { amqp_url, port, state_dir, metrics_addr, reports_queue } } => {
            warren_operator::init_tracing(false);
            let bin_dir = std::env::current_exe()?.parent().map(PathBuf::from).unwrap_or_default();
            let options = warren_operator::local::UpOptions {
                amqp_url,
                port,
                state_dir,
                bin_dir,
                metrics_addr: Some(metrics_addr),
                reports_queue,
            };
            if let Err(error) = warren_operator::local::up(options).await {
                eprintln!("warren local up: {error}");
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

async fn dlq(command: DlqCommand) -> Result<(), warren_operator::replay::ReplayError> {
    use warren_operator::replay;
    match command {
        DlqCommand::List { target } => {
            let letters = replay::list(&target.amqp_url, &target.namespace, &target.pool).await?;
            println!("{:<32} {:>6} {:>8} {:>7} {:<20} LAST ERROR", "JOB", "INDEX", "ATTEMPTS", "REPLAYS", "REASON");
            for l in &letters {
                let (job, index) = l.task.clone().map_or(("-".into(), "-".into()), |(j, i)| (j, i.to_string()));
                let attempts = l.attempts.map_or("-".into(), |n| n.to_string());
                let error: String = l.last_error.lines().next().unwrap_or_default().chars().take(80).collect();
                println!("{job:<32} {index:>6} {attempts:>8} {:>7} {:<20} {error}", l.replays, l.reason);
            }
            println!("{} dead letter(s) in {}", letters.len(), warren_protocol::names::dead_letter_queue(&target.namespace, &target.pool));
        }
        DlqCommand::Replay { target, job, limit, rate } => {
            let filter = replay::Filter { job, limit, rate, job_uid: None };
            let s = replay::replay(&target.amqp_url, &target.namespace, &target.pool, &filter).await?;
            println!(
                "replayed {} task(s); {} left in the dead-letter queue by the filter, {} not tasks, {} failed",
                s.replayed, s.kept, s.not_tasks, s.failed
            );
            if let Some(error) = s.first_error {
                eprintln!("warren dlq replay: first failure: {error}");
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

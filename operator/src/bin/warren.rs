//! `warren`: the command-line tool. `warren local up` runs Warren on this machine.

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

//! `warren local up`: Warren on one machine, without a cluster. Starts the local control plane
//! (Kubernetes-compatible API server + process runner), installs the CRDs and runs the operator.
//! The end-to-end tests reuse these pieces.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};

/// Errors a user can act on, each with the fix in its message.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(
        "RabbitMQ is not reachable at {url}: {reason}\n  fix: install and start it:  apt-get install -y rabbitmq-server && rabbitmq-server -detached\n       (or pass --amqp-url for another broker)"
    )]
    BrokerUnreachable { url: String, reason: String },
    #[error("the worker binary was not found at {0}: build it first with `cargo build --bins`")]
    WorkerBinaryMissing(PathBuf),
    #[error("installing CRD {name}: {source}")]
    InstallCrd { name: String, source: kube::Error },
    #[error("CRD {0} did not become Established")]
    CrdNotEstablished(String),
}

/// Connects once to RabbitMQ to tell the user early and clearly when it is not running.
pub async fn check_broker(url: &str) -> Result<(), LocalError> {
    let props = lapin::ConnectionProperties::default();
    match tokio::time::timeout(Duration::from_secs(5), lapin::Connection::connect(url, props)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "warren check".into()).await;
            Ok(())
        }
        Ok(Err(e)) => Err(LocalError::BrokerUnreachable { url: crate::broker::redact(url), reason: e.to_string() }),
        Err(_) => Err(LocalError::BrokerUnreachable { url: crate::broker::redact(url), reason: "timed out".into() }),
    }
}

/// Creates or updates Warren's CRDs (server-side apply) and waits until they are served.
pub async fn install_crds(client: &kube::Client) -> Result<(), LocalError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crate::crd::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::apply("warren-installer").force(), &Patch::Apply(&crd))
            .await
            .map_err(|source| LocalError::InstallCrd { name: name.clone(), source })?;
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .map_err(|_| LocalError::CrdNotEstablished(name.clone()))?
            .map_err(|_| LocalError::CrdNotEstablished(name.clone()))?;
    }
    Ok(())
}

/// The runner's image map: image `warren-worker` runs the `warren-worker` binary found in `bin_dir`.
pub fn runner_config(bin_dir: &Path, log_dir: &Path) -> Result<warren_sandbox::runner::RunnerConfig, LocalError> {
    let worker = bin_dir.join("warren-worker");
    if !worker.is_file() {
        return Err(LocalError::WorkerBinaryMissing(worker));
    }
    let mut config = warren_sandbox::runner::RunnerConfig::new(log_dir).image("warren-worker", worker);
    if let Some(path) = std::env::var_os("PATH") {
        let mut dirs = vec![bin_dir.to_path_buf()];
        dirs.extend(std::env::split_paths(&path));
        let joined = std::env::join_paths(dirs).unwrap_or(path);
        config.extra_env.push(("PATH".into(), joined.to_string_lossy().into_owned()));
    }
    Ok(config)
}

/// Options of `warren local up`.
#[derive(Clone, Debug)]
pub struct UpOptions {
    pub amqp_url: String,
    pub port: u16,
    pub state_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub reports_queue: String,
}

/// Runs the whole local stack until Ctrl-C.
pub async fn up(options: UpOptions) -> anyhow::Result<()> {
    check_broker(&options.amqp_url).await?;
    std::fs::create_dir_all(&options.state_dir)?;
    let log_dir = options.state_dir.join("logs");
    std::fs::create_dir_all(&log_dir)?;
    let runner_config = runner_config(&options.bin_dir, &log_dir)?;

    let server = warren_sandbox::ApiServer::start(warren_sandbox::ServerOptions {
        port: options.port,
        ..warren_sandbox::ServerOptions::default()
    })
    .await?;
    let kubeconfig = options.state_dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;
    let client = server.client();
    install_crds(&client).await?;
    let runner = warren_sandbox::runner::Runner::start(client.clone(), runner_config).await?;

    let kubeconfig = std::fs::canonicalize(&kubeconfig)?;
    let kubeconfig_arg = kubeconfig.display();
    println!(
        "Warren is running locally (state in memory: it is gone when this process stops).\n\n\
         API server:  {url}\n\
         kubeconfig:  {kubeconfig_arg}\n\
         worker logs: {logs}\n\n\
         Try:\n  \
         export KUBECONFIG={kubeconfig_arg}\n  \
         kubectl apply -f examples/\n  \
         kubectl get wp,wjob\n  \
         kubectl get wjob -w\n\n\
         Ctrl-C stops everything.",
        url = server.url(),
        logs = log_dir.display(),
    );

    let config = crate::controllers::Config {
        amqp_url: options.amqp_url.clone(),
        worker_amqp_url: options.amqp_url.clone(),
        reports_queue: options.reports_queue.clone(),
        ..crate::controllers::Config::default()
    };
    crate::run(client, config, options.metrics_addr).await?;
    runner.shutdown().await;
    server.shutdown().await;
    Ok(())
}

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
pub async fn check_broker(url: &str, tls: &warren_protocol::amqp::Tls) -> Result<(), LocalError> {
    match tokio::time::timeout(Duration::from_secs(15), warren_operator::broker::Broker::connect(url, tls, 1)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "warren check".into()).await;
            Ok(())
        }
        Ok(Err(e)) => Err(LocalError::BrokerUnreachable { url: warren_operator::broker::redact(url), reason: e.to_string() }),
        Err(_) => Err(LocalError::BrokerUnreachable { url: warren_operator::broker::redact(url), reason: "timed out".into() }),
    }
}

/// Creates or updates Warren's CRDs (server-side apply) and waits until they are served.
pub async fn install_crds(client: &kube::Client) -> Result<(), LocalError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in warren_operator::crd::all() {
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
    /// Broker TLS of the operator and, through the runner's environment, of every local worker.
    pub amqp_tls: warren_protocol::amqp::Tls,
    pub port: u16,
    pub state_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub reports_queue: String,
    /// Also start a Prometheus (when the `prometheus` binary is on PATH) scraping the operator
    /// and the workers, with the chart's alert rules.
    pub prometheus: bool,
    /// The operator's `--notify-allowed-hosts`: where completion events may go.
    pub notify_allowed_hosts: String,
}

/// Runs the whole local stack until Ctrl-C.
pub async fn up(options: UpOptions) -> anyhow::Result<()> {
    // Listening from the start: a Ctrl-C before the operator's controllers listen still stops
    // everything in order (Prometheus included) instead of killing the process.
    let mut stop = stop_signals()?;
    check_broker(&options.amqp_url, &options.amqp_tls).await?;
    std::fs::create_dir_all(&options.state_dir)?;
    let log_dir = options.state_dir.join("logs");
    std::fs::create_dir_all(&log_dir)?;
    let mut runner_config = runner_config(&options.bin_dir, &log_dir)?;
    // Local workers run on this host: they read the same files (the runner mounts no Secret).
    runner_config.extra_env.extend(tls_env(&options.amqp_tls));

    let server =
        warren_sandbox::ApiServer::start(warren_sandbox::ServerOptions { port: options.port, ..warren_sandbox::ServerOptions::default() })
            .await?;
    let kubeconfig = options.state_dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;
    let client = server.client();
    install_crds(&client).await?;
    let runner = warren_sandbox::runner::Runner::start(client.clone(), runner_config).await?;

    let kubeconfig = std::fs::canonicalize(&kubeconfig)?;
    let kubeconfig_arg = kubeconfig.display();
    let prometheus = match (options.prometheus, options.metrics_addr) {
        (false, _) => None,
        (true, None) => {
            eprintln!("warren local up: --prometheus needs the operator's metrics (--metrics-addr); running without Prometheus");
            None
        }
        (true, Some(metrics_addr)) => match find_on_path("prometheus") {
            None => {
                eprintln!(
                    "warren local up: --prometheus: no `prometheus` on PATH (install it: apt-get install -y prometheus); running without it"
                );
                None
            }
            Some(binary) => Some(LocalPrometheus::start(&binary, &options.state_dir, &log_dir, metrics_addr, client.clone())?),
        },
    };
    let prometheus_line = prometheus.as_ref().map(|p| format!("Prometheus:  {}\n", p.url)).unwrap_or_default();
    println!(
        "Warren is running locally (state in memory: it is gone when this process stops).\n\n\
         API server:  {url}\n\
         kubeconfig:  {kubeconfig_arg}\n\
         worker logs: {logs}\n\
         {prometheus_line}\n\
         Try:\n  \
         export KUBECONFIG={kubeconfig_arg}\n  \
         kubectl apply -f examples/\n  \
         kubectl get wp,wjob\n  \
         kubectl get wjob -w\n\n\
         Ctrl-C stops everything.",
        url = server.url(),
        logs = log_dir.display(),
    );

    let config = warren_operator::controllers::Config {
        amqp_url: options.amqp_url.clone(),
        amqp_tls: options.amqp_tls.clone(),
        worker_amqp_url: options.amqp_url.clone(),
        reports_queue: options.reports_queue.clone(),
        notify: warren_operator::notify::Settings {
            allow: warren_operator::notify::allow::AllowList::parse(&options.notify_allowed_hosts)
                .map_err(|e| anyhow::anyhow!("--notify-allowed-hosts: {e}"))?,
            ..warren_operator::notify::Settings::default()
        },
        ..warren_operator::controllers::Config::default()
    };
    let operator = warren_operator::run(client, config, options.metrics_addr);
    tokio::pin!(operator);
    let result = tokio::select! {
        result = &mut operator => result,
        () = stop.wait() => {
            // The operator stops on the same signal once its controllers listen; one that came
            // before they did is not seen there: give it a bounded time, then stop it here.
            tokio::time::timeout(OPERATOR_STOP_GRACE, &mut operator).await.unwrap_or(Ok(()))
        }
    };
    if let Some(prometheus) = prometheus {
        prometheus.stop().await;
    }
    result?;
    runner.shutdown().await;
    server.shutdown().await;
    Ok(())
}

/// How long `warren local up` waits for the operator to stop after SIGINT/SIGTERM.
const OPERATOR_STOP_GRACE: Duration = Duration::from_secs(10);

/// SIGINT and SIGTERM, listened to from its creation on.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

fn stop_signals() -> std::io::Result<StopSignals> {
    use tokio::signal::unix::{SignalKind, signal};
    Ok(StopSignals { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
}

impl StopSignals {
    async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// The broker TLS settings as the environment variables a worker reads.
pub fn tls_env(tls: &warren_protocol::amqp::Tls) -> Vec<(String, String)> {
    use warren_protocol::worker_env;
    [
        (worker_env::AMQP_CA_FILE, &tls.ca_file),
        (worker_env::AMQP_CLIENT_CERT_FILE, &tls.client_cert_file),
        (worker_env::AMQP_CLIENT_KEY_FILE, &tls.client_key_file),
    ]
    .into_iter()
    .filter_map(|(name, path)| path.as_ref().map(|p| (name.to_string(), p.display().to_string())))
    .collect()
}

/// The first executable called `name` in `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// Job label of the operator's scrape target: what cli/assets/alert-rules.yaml was rendered
/// with (charts/tests/test_local_prometheus.py), so `WarrenOperatorDown` watches it.
pub const PROMETHEUS_OPERATOR_JOB: &str = "warren-operator";
/// Namespace label of the operator's scrape target (the rules' release namespace).
pub const PROMETHEUS_OPERATOR_NAMESPACE: &str = "warren-local";
/// Job label of the workers' scrape targets.
pub const PROMETHEUS_WORKER_JOB: &str = "warren-worker";
/// The chart's alert rules (charts/warren/templates/prometheusrule.yaml), rendered for the local
/// scrape labels above; a chart test fails when this copy is stale.
pub const ALERT_RULES: &str = include_str!("../assets/alert-rules.yaml");

/// A Prometheus process started by `warren local up --prometheus`: config, rules and data under
/// `<state-dir>/prometheus/`, output in `<state-dir>/logs/prometheus.log`.
pub struct LocalPrometheus {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    child: tokio::process::Child,
    targets: tokio::task::JoinHandle<()>,
}

impl LocalPrometheus {
    /// Writes the config (operator at `metrics_addr`; workers from a file kept up to date from
    /// the local API's running Pods) and starts `binary` on a free 127.0.0.1 port.
    pub fn start(
        binary: &Path,
        state_dir: &Path,
        log_dir: &Path,
        metrics_addr: std::net::SocketAddr,
        client: kube::Client,
    ) -> anyhow::Result<Self> {
        let dir = state_dir.join("prometheus");
        std::fs::create_dir_all(&dir)?;
        let dir = std::fs::canonicalize(&dir)?;
        let rules = dir.join("alert-rules.yaml");
        std::fs::write(&rules, ALERT_RULES)?;
        let workers = dir.join("workers.json");
        std::fs::write(&workers, "[]\n")?;
        let operator = scrape_addr(metrics_addr);
        let config = serde_json::json!({
            "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
            "rule_files": [rules],
            "scrape_configs": [
                {"job_name": PROMETHEUS_OPERATOR_JOB, "honor_labels": true,
                 "static_configs": [{"targets": [operator], "labels": {"namespace": PROMETHEUS_OPERATOR_NAMESPACE}}]},
                {"job_name": PROMETHEUS_WORKER_JOB, "honor_labels": true,
                 "file_sd_configs": [{"files": [workers], "refresh_interval": "5s"}]},
            ],
        });
        // JSON is YAML: Prometheus reads it as its config file.
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, serde_json::to_vec_pretty(&config)?)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(log_dir.join("prometheus.log"))?;
        let child = tokio::process::Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", binary.display()))?;
        let targets = tokio::spawn(keep_worker_targets(client, workers));
        Ok(Self { url: format!("http://127.0.0.1:{port}"), child, targets })
    }

    /// Stops Prometheus and the target updates.
    pub async fn stop(mut self) {
        self.targets.abort();
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// The address to scrape a server listening on `addr` at (an unspecified IP means this host).
fn scrape_addr(addr: std::net::SocketAddr) -> String {
    if addr.ip().is_unspecified() { format!("127.0.0.1:{}", addr.port()) } else { addr.to_string() }
}

/// Every few seconds, writes the running Pods' metrics addresses (their `WARREN_METRICS_ADDR`,
/// as the operator sets it for a pool with metrics) to `file` as Prometheus file-based discovery.
async fn keep_worker_targets(client: kube::Client, file: PathBuf) {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::all(client);
    let mut last = String::new();
    loop {
        if let Ok(list) = pods.list(&Default::default()).await {
            let text = worker_targets(&list.items).to_string();
            if text != last {
                // Written whole, then renamed: Prometheus never reads half a file.
                let tmp = file.with_extension("json.tmp");
                if std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, &file)).is_ok() {
                    last = text;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// File-based discovery entries for the running Pods that serve metrics: one per address (local
/// processes share the host, so two Pods cannot serve on the same port).
pub fn worker_targets(pods: &[k8s_openapi::api::core::v1::Pod]) -> serde_json::Value {
    let mut seen = std::collections::BTreeSet::new();
    let mut entries = Vec::new();
    for pod in pods {
        if pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
            continue;
        }
        let Some(container) = pod.spec.as_ref().and_then(|s| s.containers.first()) else { continue };
        // The last definition wins, as in kubelet.
        let addr = container.env.iter().flatten().rev().find(|v| v.name == warren_protocol::worker_env::METRICS_ADDR);
        let Some(addr) = addr.and_then(|v| v.value.as_deref()).and_then(|v| v.parse::<std::net::SocketAddr>().ok()) else {
            continue;
        };
        let target = scrape_addr(addr);
        if !seen.insert(target.clone()) {
            continue;
        }
        let labels = serde_json::json!({
            "namespace": pod.metadata.namespace.clone().unwrap_or_default(),
            "pod": pod.metadata.name.clone().unwrap_or_default(),
        });
        entries.push(serde_json::json!({"targets": [target], "labels": labels}));
    }
    serde_json::Value::Array(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, phase: &str, env: &[(&str, &str)]) -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"containers": [{"name": "worker", "env": env.iter().map(|(n, v)| serde_json::json!({"name": n, "value": v})).collect::<Vec<_>>()}]},
            "status": {"phase": phase},
        }))
        .expect("a Pod")
    }

    #[test]
    fn worker_targets_are_the_running_pods_metrics_addresses_once_each() {
        let pods = [
            // The operator's default first, the pool's own value after it: the last one wins.
            pod("a", "Running", &[("WARREN_METRICS_ADDR", "0.0.0.0:9465"), ("WARREN_METRICS_ADDR", "127.0.0.1:7001")]),
            pod("b", "Running", &[("WARREN_METRICS_ADDR", "0.0.0.0:7002")]),
            pod("c", "Pending", &[("WARREN_METRICS_ADDR", "127.0.0.1:7003")]),
            pod("d", "Running", &[("OTHER", "1")]),
            pod("e", "Running", &[("WARREN_METRICS_ADDR", "127.0.0.1:7001")]),
        ];
        assert_eq!(
            worker_targets(&pods),
            serde_json::json!([
                {"targets": ["127.0.0.1:7001"], "labels": {"namespace": "ns", "pod": "a"}},
                {"targets": ["127.0.0.1:7002"], "labels": {"namespace": "ns", "pod": "b"}},
            ])
        );
    }

    #[test]
    fn the_alert_rules_are_the_charts_rendered_for_the_local_labels() {
        assert!(ALERT_RULES.starts_with("# Generated from charts/warren/templates/prometheusrule.yaml"));
        let down = format!("up{{job=\\\"{PROMETHEUS_OPERATOR_JOB}\\\", namespace=\\\"{PROMETHEUS_OPERATOR_NAMESPACE}\\\"}}");
        assert!(ALERT_RULES.contains(&down), "{down}");
    }
}

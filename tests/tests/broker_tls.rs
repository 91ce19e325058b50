//! Broker TLS (issue #13, part 5), against a private RabbitMQ node with a TLS listener and a CA,
//! a server certificate (for `localhost`, `127.0.0.1`) and a client certificate that this test
//! generates with `openssl`.
//!
//! - A private CA given by file (`WARREN_AMQP_CA_FILE`, to the operator and, through the pool's
//!   `spec.workers.env`, to the workers: the local runner mounts no Secret volume): a 200-task
//!   Job succeeds, each index once, and every connection of the operator and the workers is TLS.
//! - Without the CA the operator cannot connect and says so where a user looks: the pool's
//!   `Ready` condition (`BrokerUnreachable`, naming the untrusted certificate and the setting to
//!   give) and the metric `warren_operator_broker_connected` (0). A CA file that cannot be read
//!   stops the operator at start, naming the file.
//! - Mutual TLS (`verify_peer`, `fail_if_no_peer_cert`): without a client certificate the broker
//!   refuses the connection; with one, a Job runs.
//! - `warren local up --amqp-ca-file`: the local workers get the CA from it (pool without TLS env).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use warren_e2e::{Env, EnvOptions, OperatorOptions, PrivateBroker, SideChannel, free_port};
use warren_operator::crd::{Job, JobPhase};
use warren_protocol::amqp::Tls;

/// The side channel the handlers record their executions on (on the shared broker, in plain
/// AMQP: it is the test's, not Warren's, so it is not part of what must be TLS).
const EXECUTIONS: &str = "executions";

/// One at a time: each test runs a RabbitMQ node, an operator and workers on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The test's CA, the broker's certificate and a client certificate, as PEM files.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn generate() -> anyhow::Result<Pki> {
        let dir = std::env::temp_dir().join(format!("warren-e2e-tls-{}-{:06x}", std::process::id(), rand::random::<u32>() & 0xff_ffff));
        std::fs::create_dir_all(&dir)?;
        let openssl = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("openssl").args(args).current_dir(&dir).output().context("running openssl (is it installed?)")?;
            if !out.status.success() {
                bail!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        openssl(
            &[&["req", "-x509"], &ec[..], &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=warren e2e CA"]].concat(),
        )?;
        // X.509 v3 with the extensions rustls checks (a v1 certificate is refused).
        std::fs::write(
            dir.join("server.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )?;
        std::fs::write(dir.join("client.ext"), "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n")?;
        for (name, subject) in [("server", "/CN=localhost"), ("client", "/CN=warren-e2e-client")] {
            let (key, csr, crt, ext) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
            openssl(&[&["req"], &ec[..], &["-keyout", &key, "-out", &csr, "-subj", subject]].concat())?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ])?;
        }
        Ok(Pki { dir })
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// `rabbitmq.conf` lines of a TLS listener on `port`; `mutual`: a client certificate signed by
    /// the CA is required.
    fn listener(&self, port: u16, mutual: bool) -> String {
        let verify = if mutual { "verify_peer" } else { "verify_none" };
        format!(
            "listeners.ssl.1 = 127.0.0.1:{port}\nssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\n\
             ssl_options.verify = {verify}\nssl_options.fail_if_no_peer_cert = {mutual}\n",
            self.path("ca.crt"),
            self.path("server.crt"),
            self.path("server.key"),
        )
    }

    /// The broker TLS settings as environment variables, for the operator and the workers.
    fn env(&self, client_certificate: bool) -> Vec<(String, String)> {
        let mut env = vec![("WARREN_AMQP_CA_FILE".to_string(), self.path("ca.crt"))];
        if client_certificate {
            env.push(("WARREN_AMQP_CLIENT_CERT_FILE".into(), self.path("client.crt")));
            env.push(("WARREN_AMQP_CLIENT_KEY_FILE".into(), self.path("client.key")));
        }
        env
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn amqps(port: u16) -> String {
    format!("amqps://guest:guest@localhost:{port}/%2f")
}

/// The operator of a test: the private node's TLS address, more environment, its own metrics port.
fn operator_options(url: &str, env: Vec<(String, String)>) -> (OperatorOptions, String) {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut all = vec![("WARREN_AMQP_URL".to_string(), url.to_string())];
    all.extend(env);
    (OperatorOptions { env: all, metrics_addr: metrics_addr.clone(), ..OperatorOptions::default() }, metrics_addr)
}

/// A pool whose workers get the TLS settings through `spec.workers.env` and record each
/// execution on the side channel.
fn pool_spec(side: &SideChannel, tls_env: &[(String, String)]) -> serde_json::Value {
    let mut env = side.pod_env();
    env.extend(tls_env.iter().map(|(name, value)| serde_json::json!({"name": name, "value": value})));
    let handler = format!("cat >/dev/null; \"$WARREN_E2E_PROBE\" record {EXECUTIONS} done \"$WARREN_TASK_INDEX\"");
    serde_json::json!({
        "workers": {"handler": ["sh", "-c", handler], "env": env},
        "replicas": 2, "concurrency": 4,
    })
}

fn finished(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|s| s.phase.is_finished())
}

/// Runs a Job of `tasks` tasks and checks that each index succeeded, and executed, exactly once.
async fn run_job_exactly_once(env: &Env, name: &str, tasks: u32) -> anyhow::Result<()> {
    env.create_job(name, serde_json::json!({"poolRef": "pool", "completions": tasks})).await?;
    let job = env.wait_job(name, Duration::from_secs(180), finished).await?;
    let status = job.status.expect("status");
    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    assert_eq!((status.succeeded, status.failed), (tasks, 0), "{status:?}");
    assert_eq!(status.succeeded_indexes, format!("0-{}", tasks - 1));
    let mut executions = vec![0u32; tasks as usize];
    for line in env.side().lines(EXECUTIONS).await? {
        if let Some(index) = line.strip_prefix("done ").and_then(|i| i.trim().parse::<usize>().ok()) {
            executions[index] += 1;
        }
    }
    let not_once: Vec<(usize, u32)> = executions.iter().copied().enumerate().filter(|(_, n)| *n != 1).collect();
    assert!(not_once.is_empty(), "every index executed exactly once; (index, executions) otherwise: {not_once:?}");
    Ok(())
}

/// The node's client connections: (connection name, over TLS).
fn connections(broker: &PrivateBroker) -> anyhow::Result<Vec<(String, bool)>> {
    let out = broker.ctl("rabbitmqctl", &["list_connections", "ssl", "client_properties", "--formatter", "json", "-q"])?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).with_context(|| format!("list_connections said: {out}"))?;
    Ok(rows
        .iter()
        .map(|row| {
            let name = row["client_properties"]
                .as_array()
                .and_then(|props| props.iter().find(|p| p[0] == "connection_name"))
                .and_then(|p| p[2].as_str())
                .unwrap_or_default()
                .to_string();
            (name, row["ssl"].as_bool().unwrap_or(false))
        })
        .collect())
}

/// The one private TLS node a test runs against (one test at a time), with the test's PKI and
/// the node's TLS port; `mutual`: client certificates required. None (loudly) where it cannot run.
async fn tls_node(mutual: bool) -> anyhow::Result<Option<(tokio::sync::MutexGuard<'static, ()>, Pki, u16, PrivateBroker)>> {
    if !warren_e2e::can_run_private_brokers("the broker TLS test") {
        return Ok(None);
    }
    let turn = ONE_AT_A_TIME.lock().await;
    let pki = Pki::generate()?;
    let port = free_port();
    let broker = PrivateBroker::start_with(&pki.listener(port, mutual), "").await?;
    Ok(Some((turn, pki, port, broker)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_over_tls_with_a_private_ca_exactly_once() -> anyhow::Result<()> {
    let Some((_turn, pki, port, broker)) = tls_node(false).await? else { return Ok(()) };
    let (operator, metrics_addr) = operator_options(&amqps(port), pki.env(false));
    // The harness itself (checks, cleanup) uses the node's plain listener.
    let env = Env::start_custom("broker-tls", EnvOptions { amqp_url: Some(broker.url()), operator, ..EnvOptions::default() }).await?;
    env.create_pool("pool", pool_spec(env.side(), &pki.env(false))).await?;
    env.wait_pool_ready("pool", Duration::from_secs(60)).await?;
    run_job_exactly_once(&env, "over-tls", 200).await?;
    for connection in ["publish", "reports"] {
        let series = format!("warren_operator_broker_connected{{connection=\"{connection}\"}}");
        assert_eq!(warren_e2e::wait_metric(&metrics_addr, &series, 1.0, Duration::from_secs(10)).await, Ok(()), "{series}");
    }

    // Every connection of the operator (publishing, reports, control, queue sampler) and of
    // both workers is a TLS one.
    let connections = connections(&broker)?;
    let operator = connections.iter().filter(|(name, _)| name == "warren-operator").count();
    let workers = connections.iter().filter(|(name, _)| name.starts_with("pool-workers")).count();
    assert!(operator >= 4 && workers == 2, "the operator's 4 connections and one per worker: {connections:?}");
    assert!(connections.iter().all(|(_, tls)| *tls), "every connection is TLS: {connections:?}");
    env.cleanup().await?;
    drop(broker);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_the_operator_cannot_connect_and_says_why() -> anyhow::Result<()> {
    let Some((_turn, pki, port, broker)) = tls_node(false).await? else { return Ok(()) };
    // An operator given the broker's amqps:// address but not its CA.
    let (operator, metrics_addr) = operator_options(&amqps(port), Vec::new());
    let mut env =
        Env::start_custom("broker-tls-no-ca", EnvOptions { amqp_url: Some(broker.url()), operator, ..EnvOptions::default() }).await?;

    // A CA file that cannot be read: the operator does not start, and names the file.
    let missing = env.state_dir.join("no-such-ca.crt");
    let (bad, _) = operator_options(&amqps(port), vec![("WARREN_AMQP_CA_FILE".into(), missing.to_string_lossy().into_owned())]);
    let mut refused = env.spawn_operator(&bad, "operator-bad-ca.log")?;
    let exit = tokio::time::timeout(Duration::from_secs(30), refused.wait()).await.context("the operator kept running")??;
    assert!(!exit.success(), "{exit}");
    let said = std::fs::read_to_string(env.state_dir.join("operator-bad-ca.log"))?;
    assert!(said.contains(&format!("WARREN_AMQP_CA_FILE={:?}", missing.to_string_lossy())) && said.contains("cannot be read"), "{said}");

    env.create_pool("pool", pool_spec(env.side(), &[])).await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let ready = loop {
        let pool = env.pools().get("pool").await?;
        let ready = pool.status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"));
        if let Some(ready) = ready.filter(|c| c.status == "False") {
            break ready;
        }
        if Instant::now() > deadline {
            bail!("the pool did not say it cannot reach the broker within 90 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("the pool says: {}: {}", ready.reason, ready.message);
    assert_eq!(ready.reason, "BrokerUnreachable");
    assert!(
        ready.message.contains("not signed by a trusted CA") && ready.message.contains("WARREN_AMQP_CA_FILE"),
        "the message names the untrusted certificate and the setting to give: {}",
        ready.message
    );
    assert!(!ready.message.contains("guest:guest"), "the password is redacted: {}", ready.message);
    let series = "warren_operator_broker_connected{connection=\"publish\"}";
    assert_eq!(warren_e2e::wait_metric(&metrics_addr, series, 0.0, Duration::from_secs(10)).await, Ok(()), "{series}");
    let connections = connections(&broker)?;
    assert!(connections.iter().all(|(name, _)| name != "warren-operator"), "no operator connection got through: {connections:?}");

    // With the CA, an operator connects and finalizes the pool at cleanup.
    env.kill_operator().await?;
    let (good, _) = operator_options(&amqps(port), pki.env(false));
    let _good = env.spawn_operator(&good, "operator-with-ca.log")?;
    env.wait_pool_ready("pool", Duration::from_secs(60)).await?;
    env.cleanup().await?;
    drop(broker);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() -> anyhow::Result<()> {
    let Some((_turn, pki, port, broker)) = tls_node(true).await? else { return Ok(()) };
    let addresses = vec![amqps(port)];

    // The CA alone is not enough: the broker wants a client certificate.
    let ca_only = Tls::new(Some(pki.path("ca.crt").into()), None, None)?;
    let refused = warren_protocol::amqp::connect_any(&addresses, 0, "warren-e2e", &ca_only).await;
    let error = refused.err().context("the broker accepted a connection without a client certificate")?.to_string();
    eprintln!("without a client certificate: {error}");
    // The broker's alert (TLS 1.3), or only the reset of the connection when the alert is lost.
    assert!(
        (error.contains("CertificateRequired") || error.contains("reset by peer")) && error.contains("WARREN_AMQP_CLIENT_CERT_FILE"),
        "{error}"
    );
    let mutual = Tls::new(Some(pki.path("ca.crt").into()), Some(pki.path("client.crt").into()), Some(pki.path("client.key").into()))?;
    mutual.check()?;
    let (connection, _) = warren_protocol::amqp::connect_any(&addresses, 0, "warren-e2e", &mutual).await?;
    connection.close(200, "OK".into()).await?;

    // The operator and the workers with the client certificate: a Job runs.
    let (operator, _) = operator_options(&amqps(port), pki.env(true));
    let env = Env::start_custom("broker-mtls", EnvOptions { amqp_url: Some(broker.url()), operator, ..EnvOptions::default() }).await?;
    env.create_pool("pool", pool_spec(env.side(), &pki.env(true))).await?;
    env.wait_pool_ready("pool", Duration::from_secs(60)).await?;
    run_job_exactly_once(&env, "over-mtls", 50).await?;
    let connections = connections(&broker)?;
    assert!(connections.iter().filter(|(name, _)| name.starts_with("pool-workers")).count() == 2, "{connections:?}");
    assert!(connections.iter().all(|(_, tls)| *tls), "every connection is TLS: {connections:?}");
    env.cleanup().await?;
    drop(broker);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_local_up_gives_its_workers_the_ca() -> anyhow::Result<()> {
    let Some((_turn, pki, port, broker)) = tls_node(false).await? else { return Ok(()) };
    let state = std::env::temp_dir().join(format!("warren-local-up-tls-{:08x}", rand::random::<u32>()));
    let reports_queue = format!("warren.reports.local-up-tls-{:08x}", rand::random::<u32>());
    let mut child = tokio::process::Command::new(warren_e2e::bin_dir().join("warren"))
        .args(["local", "up", "--port", &free_port().to_string(), "--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--amqp-url", &amqps(port), "--amqp-ca-file", &pki.path("ca.crt"), "--state-dir"])
        .arg(&state)
        .env("WARREN_REPORTS_QUEUE", &reports_queue)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let result = async {
        let kubeconfig = state.join("kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !kubeconfig.is_file() {
            anyhow::ensure!(Instant::now() < deadline, "warren local up wrote no kubeconfig within 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let config = kube::Config::from_custom_kubeconfig(kube::config::Kubeconfig::read_from(&kubeconfig)?, &Default::default()).await?;
        let client = kube::Client::try_from(config)?;
        let pools: kube::Api<warren_operator::crd::WorkerPool> = kube::Api::namespaced(client.clone(), "default");
        let jobs: kube::Api<Job> = kube::Api::namespaced(client, "default");
        // No TLS settings in the pool: the workers get the CA from `warren local up`.
        let pool = serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "WorkerPool", "metadata": {"name": "pool"},
            "spec": {"workers": {"handler": ["sh", "-c", "cat >/dev/null"]}, "replicas": 1, "concurrency": 4, "deletionPolicy": "Delete"},
        });
        let job = serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "Job", "metadata": {"name": "local"},
            "spec": {"poolRef": "pool", "completions": 20},
        });
        // The CRDs are served, one after the other, shortly after the kubeconfig is written.
        let deadline = Instant::now() + Duration::from_secs(60);
        while pools.create(&Default::default(), &serde_json::from_value(pool.clone())?).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the WorkerPool CRD was not served within 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        while jobs.create(&Default::default(), &serde_json::from_value(job.clone())?).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the Job CRD was not served within 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = jobs.get("local").await?.status.filter(|s| s.phase.is_finished()) {
                break status;
            }
            anyhow::ensure!(Instant::now() < deadline, "the Job did not finish within 120 s");
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert_eq!((status.phase, status.succeeded, status.succeeded_indexes.as_str()), (JobPhase::Succeeded, 20, "0-19"));
        let connections = connections(&broker)?;
        assert!(connections.iter().any(|(name, _)| name.starts_with("pool-workers")), "{connections:?}");
        assert!(connections.iter().all(|(_, tls)| *tls), "every connection is TLS: {connections:?}");
        pools.delete("pool", &Default::default()).await?;
        Ok(())
    }
    .await;
    if let Some(pid) = child.id() {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGINT)?;
    }
    // The worst case by design: the operator's 10 s stop grace, then the runner stops the
    // workers within their 30 s termination grace; under a loaded CI machine 30 s was not enough.
    let stopped = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    let _ = std::fs::remove_dir_all(&state);
    result?;
    assert!(matches!(&stopped, Ok(Ok(s)) if s.success()), "warren local up stops on Ctrl-C: {stopped:?}");
    drop(broker);
    Ok(())
}

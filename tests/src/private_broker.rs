//! A private RabbitMQ node for tests that must restart (or stop) their broker: started from the
//! installed `rabbitmq-server` in a temporary directory, on free ports, with its own node name,
//! data directory, logs, Erlang cookie (`HOME`), configuration and (empty) plugin list — so it
//! never touches the shared broker on port 5672. Stopped (and its directory removed) on drop.
//!
//! Listeners come from the node's own config file (`listeners.tcp.1`): combined with
//! `RABBITMQ_NODE_PORT`, RabbitMQ 3.10 tries to open the port twice and fails with `eaddrinuse`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Directory of the RabbitMQ scripts that run as the calling user (the `/usr/sbin` wrappers
/// switch to the `rabbitmq` user and drop the environment).
const SCRIPT_DIRS: &[&str] = &["/usr/lib/rabbitmq/bin"];

/// How long a start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(90);

fn script(name: &str) -> PathBuf {
    SCRIPT_DIRS.iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file()).unwrap_or_else(|| PathBuf::from(name))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A RabbitMQ node of this test process only.
pub struct PrivateBroker {
    dir: PathBuf,
    node: String,
    amqp_port: u16,
    dist_port: u16,
    pid: Option<i32>,
    /// Extra `rabbitmq.conf` lines and the `advanced.config` term (empty: none).
    extra_conf: String,
    advanced: String,
    /// The Erlang cookie, shared by the members of a [`crate::PrivateCluster`]; none: the node
    /// makes its own.
    cookie: Option<String>,
}

impl PrivateBroker {
    /// Starts a fresh node and waits until it accepts AMQP connections. Fails loudly when
    /// RabbitMQ is not installed or does not start.
    pub async fn start() -> anyhow::Result<PrivateBroker> {
        Self::start_with("", "").await
    }

    /// Starts a node with extra `rabbitmq.conf` lines (e.g. `consumer_timeout = 3000`) and an
    /// `advanced.config` term (e.g. `[{rabbit, [{channel_tick_interval, 500}]}].`; empty: none).
    pub async fn start_with(extra_conf: &str, advanced: &str) -> anyhow::Result<PrivateBroker> {
        Self::start_member(extra_conf, advanced, None).await
    }

    /// Starts a node with the given Erlang cookie (so that nodes of one cluster may join).
    pub(crate) async fn start_member(extra_conf: &str, advanced: &str, cookie: Option<&str>) -> anyhow::Result<PrivateBroker> {
        let id = format!("{}-{:06x}", std::process::id(), rand::random::<u32>() & 0xff_ffff);
        let dir = std::env::temp_dir().join(format!("warren-e2e-broker-{id}"));
        std::fs::create_dir_all(&dir)?;
        let mut last_error = None;
        // A port picked free can be taken before the node binds it: try a few.
        for _ in 0..3 {
            let mut broker = PrivateBroker {
                dir: dir.clone(),
                node: format!("warren-e2e-{id}@localhost"),
                amqp_port: free_port()?,
                dist_port: free_port()?,
                pid: None,
                extra_conf: extra_conf.to_string(),
                advanced: advanced.to_string(),
                cookie: cookie.map(String::from),
            };
            broker.write_files()?;
            match broker.boot().await {
                Ok(()) => return Ok(broker),
                Err(e) => {
                    broker.stop_node();
                    let _ = std::fs::remove_dir_all(dir.join("mnesia"));
                    std::mem::forget(broker); // keep `dir` for the next attempt
                    last_error = Some(e);
                }
            }
        }
        let log = std::fs::read_to_string(dir.join("server.out")).unwrap_or_default();
        let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        let _ = std::fs::remove_dir_all(&dir);
        Err(last_error.expect("an attempt ran")).context(format!("starting a private RabbitMQ node; its output ended with:\n{tail}"))
    }

    /// AMQP URI of the node.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// The Erlang node name (`rabbitmqctl -n <node>`).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Stops the node gracefully (durable queues and persistent messages are kept on disk) and
    /// starts it again on the same port with the same data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop_node();
        self.boot().await
    }

    /// Stops the node (it stays stopped until [`PrivateBroker::boot`] or `restart`).
    pub fn stop(&mut self) {
        self.stop_node();
    }

    fn write_files(&self) -> anyhow::Result<()> {
        std::fs::write(self.dir.join("enabled_plugins"), "[].\n")?;
        std::fs::write(self.dir.join("rabbitmq-env.conf"), "")?;
        std::fs::write(
            self.dir.join("rabbitmq.conf"),
            format!("listeners.tcp.1 = 127.0.0.1:{}\nlog.file.level = warning\n{}\n", self.amqp_port, self.extra_conf),
        )?;
        let advanced = if self.advanced.is_empty() { "[].\n" } else { self.advanced.as_str() };
        std::fs::write(self.dir.join("advanced.config"), advanced)?;
        if let Some(cookie) = &self.cookie {
            use std::os::unix::fs::PermissionsExt as _;
            let path = self.dir.join(".erlang.cookie");
            std::fs::write(&path, cookie)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400))?;
        }
        Ok(())
    }

    /// Runs `rabbitmqctl -n <node> <args>` (or another CLI tool) against this node; its stdout.
    pub fn ctl(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command(program).arg("-n").arg(&self.node).args(args).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            bail!("{program} {} on {}: {}", args.join(" "), self.node, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// True while the node's process runs (between [`PrivateBroker::boot`] and a stop).
    pub fn is_running(&self) -> bool {
        self.pid.is_some()
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(script(program));
        let d = &self.dir;
        command
            // The CLI tools and the node share the cookie in $HOME/.erlang.cookie (created by
            // the node on first start; root's own cookie, if any, is not used).
            .env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env_remove("RABBITMQ_NODE_PORT")
            .env_remove("ERL_FLAGS")
            .current_dir(d);
        command
    }

    /// Starts the node process and waits for it to boot and accept AMQP connections.
    pub async fn boot(&mut self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(self.dir.join("pid"));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("server.out"))?;
        let mut server = self.command("rabbitmq-server");
        std::os::unix::process::CommandExt::process_group(&mut server, 0);
        let child = server
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .context("running rabbitmq-server (is RabbitMQ installed?)")?;
        // The script execs the Erlang VM (same pid). Reap it when it exits: `rabbitmqctl stop`
        // waits until the process is gone, and a zombie would never be.
        self.pid = Some(child.id() as i32);
        let mut child = child;
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let pid_file = self.dir.join("pid");
        let mut wait = self.command("rabbitmqctl");
        wait.args(["-n", &self.node, "wait", "--timeout", &START_TIMEOUT.as_secs().to_string()]).arg(&pid_file);
        let status = tokio::task::spawn_blocking(move || wait.stdout(Stdio::null()).stderr(Stdio::null()).status()).await??;
        if !status.success() {
            bail!("rabbitmqctl wait failed ({status}) for node {}", self.node);
        }
        if let Ok(pid) = std::fs::read_to_string(&pid_file)
            && let Ok(pid) = pid.trim().parse()
        {
            self.pid = Some(pid);
        }
        // The node is up; make sure AMQP answers too.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match lapin::Connection::connect(&self.url(), Default::default()).await {
                Ok(conn) => {
                    let _ = conn.close(200, "".into()).await;
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() > deadline => bail!("node {} does not accept AMQP: {e}", self.node),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    fn stop_node(&mut self) {
        let Some(pid) = self.pid.take() else { return };
        let status = self
            .command("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .arg(self.dir.join("pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            // Last resort, by the pid this helper started.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop_node();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

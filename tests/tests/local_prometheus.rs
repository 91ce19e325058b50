//! `warren local up --prometheus`: a Prometheus on a free 127.0.0.1 port scrapes the operator and
//! the workers, with the chart's alert rules loaded. Needs the `prometheus` binary
//! (scripts/setup-test.sh installs it); without it this test fails, it does not skip.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use warren_e2e::{amqp_url, bin_dir, free_port, http_get, kubectl};

/// `GET <path>` of the Prometheus API at `addr`, parsed.
fn prometheus_api(addr: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let (code, body) = tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(http_get(addr, path))?;
    anyhow::ensure!(code == 200, "{path}: HTTP {code}: {body}");
    Ok(serde_json::from_str(&body)?)
}

/// The scrape targets of `job` that Prometheus reports up.
fn targets_up(addr: &str, job: &str) -> anyhow::Result<Vec<String>> {
    let targets = prometheus_api(addr, "/api/v1/targets")?;
    let active = targets["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
    Ok(active
        .iter()
        .filter(|t| t["labels"]["job"] == job && t["health"] == "up")
        .map(|t| t["scrapeUrl"].as_str().unwrap_or_default().to_string())
        .collect())
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => last = Some(error),
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what} (last error: {last:?})");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn local_up_prometheus_scrapes_the_operator_and_workers_with_the_alert_rules() -> anyhow::Result<()> {
    let prometheus = warren_cli::local::find_on_path("prometheus");
    assert!(
        prometheus.is_some(),
        "the `prometheus` binary is not on PATH: install it with `apt-get install -y prometheus` (scripts/setup-test.sh does it)"
    );
    let suffix = format!("{:08x}", rand::random::<u32>());
    let state: PathBuf = std::env::temp_dir().join(format!("warren-local-prometheus-{suffix}"));
    let metrics = format!("127.0.0.1:{}", free_port());
    let reports_queue = format!("warren.reports.local-prom-{suffix}");
    // What `warren local up` says on stderr goes with a failure (CI shows only the failure).
    let stderr_path = std::env::temp_dir().join(format!("warren-local-prometheus-{suffix}.stderr"));
    let mut child = std::process::Command::new(bin_dir().join("warren"))
        .args(["local", "up", "--prometheus", "--port", &free_port().to_string(), "--metrics-addr", &metrics, "--state-dir"])
        .arg(&state)
        .env("WARREN_AMQP_URL", amqp_url())
        .env("WARREN_REPORTS_QUEUE", &reports_queue)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path)?)
        .spawn()?;
    // The banner, line by line, as it is printed.
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let kubeconfig = state.join("kubeconfig");
    let pool = format!("prom-{suffix}");
    let mut banner = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        let url = loop {
            let line = lines
                .recv_timeout(Duration::from_secs(90))
                .map_err(|_| anyhow::anyhow!("warren local up --prometheus printed no Prometheus URL; its output: {banner:#?}"))?;
            banner.push(line.clone());
            if let Some(url) = line.strip_prefix("Prometheus:") {
                break url.trim().to_string();
            }
        };
        let addr = url.strip_prefix("http://127.0.0.1:").map(|port| format!("127.0.0.1:{port}"));
        let addr = addr.ok_or_else(|| anyhow::anyhow!("Prometheus is not on 127.0.0.1: {url}"))?;

        wait_until("Prometheus to report the operator target up", Duration::from_secs(90), || {
            Ok(targets_up(&addr, warren_cli::local::PROMETHEUS_OPERATOR_JOB)?.iter().any(|u| u.contains(&metrics)))
        })?;
        anyhow::ensure!(state.join("prometheus/data").is_dir(), "Prometheus keeps no data in the state dir");

        // Every group of the chart's rules is loaded, with its alerting rules.
        let expected: Vec<&str> =
            warren_cli::local::ALERT_RULES.lines().filter_map(|l| l.strip_prefix("- name: ")).map(str::trim).collect();
        anyhow::ensure!(expected.contains(&"warren-operator"), "{expected:?}");
        let rules = prometheus_api(&addr, "/api/v1/rules")?;
        let groups = rules["data"]["groups"].as_array().cloned().unwrap_or_default();
        let loaded: Vec<&str> = groups.iter().filter_map(|g| g["name"].as_str()).collect();
        anyhow::ensure!(loaded == expected, "loaded rule groups {loaded:?}, expected {expected:?}: {rules}");
        let alerts: Vec<&str> = groups
            .iter()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .filter(|r| r["type"] == "alerting")
            .filter_map(|r| r["name"].as_str())
            .collect();
        anyhow::ensure!(alerts.contains(&"WarrenOperatorDown"), "{alerts:?}");
        anyhow::ensure!(alerts.len() == warren_cli::local::ALERT_RULES.matches("- alert: ").count(), "{alerts:?}");

        // A worker serving metrics becomes a scrape target.
        wait_until("the Warren CRDs to be served", Duration::from_secs(60), || Ok(kubectl(&kubeconfig, &["get", "wp"], None).is_ok()))?;
        let worker_addr = format!("127.0.0.1:{}", free_port());
        let pool_object = serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": pool, "namespace": "default"},
            "spec": {"workers": {"handler": ["true"], "env": [{"name": "WARREN_METRICS_ADDR", "value": worker_addr}]},
                     "replicas": 1, "deletionPolicy": "Delete"},
        });
        kubectl(&kubeconfig, &["apply", "-f", "-"], Some(&pool_object.to_string()))?;
        wait_until("Prometheus to report the worker target up", Duration::from_secs(120), || {
            Ok(targets_up(&addr, warren_cli::local::PROMETHEUS_WORKER_JOB)?.iter().any(|u| u.contains(&worker_addr)))
        })?;
        kubectl(&kubeconfig, &["delete", "wp", &pool, "--wait=true"], None)?;
        Ok(())
    })();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT)?;
    let status = child.wait()?;
    let _ = reader.join();
    let log = std::fs::read_to_string(state.join("logs/prometheus.log")).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let stderr: Vec<&str> = stderr.lines().collect();
    let stderr = stderr[stderr.len().saturating_sub(40)..].join("\n");
    let _ = std::fs::remove_file(&stderr_path);
    let _ = std::fs::remove_dir_all(&state);
    tokio::runtime::Runtime::new()?.block_on(async {
        warren_e2e::delete_queue(&reports_queue).await?;
        warren_e2e::delete_exchange(&warren_protocol::names::control_exchange(&reports_queue)).await
    })?;
    result.map_err(|e| e.context(format!("prometheus.log:\n{log}\nthe end of warren local up's stderr:\n{stderr}")))?;
    assert!(status.success(), "warren local up exited with {status} after Ctrl-C; the end of its stderr:\n{stderr}");
    Ok(())
}

#[test]
fn local_up_prometheus_without_prometheus_says_so_and_runs() -> anyhow::Result<()> {
    let state: PathBuf = std::env::temp_dir().join(format!("warren-local-no-prometheus-{:08x}", rand::random::<u32>()));
    let reports_queue = format!("warren.reports.local-noprom-{:08x}", rand::random::<u32>());
    let metrics = format!("127.0.0.1:{}", free_port());
    // A PATH without prometheus (the local workers find warren-worker in bin_dir anyway).
    let mut child = std::process::Command::new(bin_dir().join("warren"))
        .args(["local", "up", "--prometheus", "--port", &free_port().to_string(), "--metrics-addr", &metrics, "--state-dir"])
        .arg(&state)
        .env("PATH", "/nonexistent")
        .env("WARREN_AMQP_URL", amqp_url())
        .env("WARREN_REPORTS_QUEUE", &reports_queue)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // stderr, line by line: the log, and whether the operator got to its controllers (a Ctrl-C
    // before that is the operator's startup, not what this test is about).
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let stderr_pipe = child.stderr.take().expect("stderr");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in std::io::BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
            if line.contains("Warren operator started") {
                let _ = started_tx.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let stdout = child.stdout.take().expect("stdout");
    let mut banner = Vec::new();
    let mut ended = false;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        ended = line.starts_with("Ctrl-C stops everything");
        banner.push(line);
        if ended {
            break;
        }
    }
    let operator_started = started.recv_timeout(Duration::from_secs(60)).is_ok();
    // Warren still runs: its operator serves metrics.
    let served = tokio::runtime::Runtime::new()?.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http_get(&metrics, "/metrics").await {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT)?;
    let status = child.wait()?;
    let stderr = stderr_reader.join().unwrap_or_default();
    let _ = std::fs::remove_dir_all(&state);
    tokio::runtime::Runtime::new()?.block_on(async {
        warren_e2e::delete_queue(&reports_queue).await?;
        warren_e2e::delete_exchange(&warren_protocol::names::control_exchange(&reports_queue)).await
    })?;
    assert!(ended, "no banner: {banner:#?}\n{stderr}");
    assert!(!banner.iter().any(|l| l.starts_with("Prometheus:")), "{banner:#?}");
    assert!(
        stderr.contains(
            "warren local up: --prometheus: no `prometheus` on PATH (install it: apt-get install -y prometheus); running without it"
        ),
        "{stderr}"
    );
    assert!(operator_started && served, "the operator did not start and serve /metrics: Warren did not run without Prometheus\n{stderr}");
    assert!(status.success(), "warren local up exited with {status} after Ctrl-C\n{stderr}");
    Ok(())
}

//! Readiness and liveness probes of a local container, kubelet style: `exec` (a command with
//! the container's environment), `tcpSocket` (connect) and `httpGet` (plain HTTP, status
//! 200–399) against 127.0.0.1, every `periodSeconds` after `initialDelaySeconds`, flipping the
//! result after `successThreshold` successes or `failureThreshold` failures in a row.
//!
//! [`ProbeTracker`] is the pure threshold logic; [`run_probe`] does one attempt (I/O).
//! `startupProbe` and `grpc` are not supported (grpc probes always fail).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::launch::LOCAL_IP;

/// Timing and thresholds of a probe, with Kubernetes' defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTiming {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl ProbeTiming {
    pub fn of(probe: &Probe) -> Self {
        let secs = |v: Option<i32>, default: i32, min: i32| Duration::from_secs(v.unwrap_or(default).max(min) as u64);
        Self {
            initial_delay: secs(probe.initial_delay_seconds, 0, 0),
            period: secs(probe.period_seconds, 10, 1),
            timeout: secs(probe.timeout_seconds, 1, 1),
            success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

/// Consecutive results of one probe and the verdict they imply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTracker {
    pub timing: ProbeTiming,
    successes: u32,
    failures: u32,
    passing: bool,
}

impl ProbeTracker {
    /// `initially_passing`: liveness starts as alive, readiness as not ready.
    pub fn new(timing: ProbeTiming, initially_passing: bool) -> Self {
        Self { timing, successes: 0, failures: 0, passing: initially_passing }
    }

    pub fn passing(&self) -> bool {
        self.passing
    }

    /// Records one attempt; returns the new verdict when it flips.
    pub fn record(&mut self, success: bool) -> Option<bool> {
        if success {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.passing && self.successes >= self.timing.success_threshold {
                self.passing = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.passing && self.failures >= self.timing.failure_threshold {
                self.passing = false;
                return Some(false);
            }
        }
        None
    }
}

fn port_of(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok()),
    }
}

/// One probe attempt; false on failure, timeout or an unsupported handler.
pub async fn run_probe(probe: &Probe, container: &Container, env: &[(String, String)]) -> bool {
    let timeout = ProbeTiming::of(probe).timeout;
    let attempt = async {
        if let Some(exec) = &probe.exec {
            let command = exec.command.as_deref().unwrap_or_default();
            let Some((program, args)) = command.split_first() else {
                return false;
            };
            let status = tokio::process::Command::new(program)
                .args(args)
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await;
            return status.is_ok_and(|s| s.success());
        }
        if let Some(tcp) = &probe.tcp_socket {
            let Some(port) = port_of(&tcp.port, container) else {
                return false;
            };
            return TcpStream::connect((LOCAL_IP, port)).await.is_ok();
        }
        if let Some(http) = &probe.http_get {
            if http.scheme.as_deref().is_some_and(|s| !s.eq_ignore_ascii_case("HTTP")) {
                return false;
            }
            let Some(port) = port_of(&http.port, container) else {
                return false;
            };
            let path = http.path.as_deref().filter(|p| !p.is_empty()).unwrap_or("/");
            let mut request =
                format!("GET {path} HTTP/1.1\r\nHost: {LOCAL_IP}:{port}\r\nUser-Agent: kube-probe/warren\r\nConnection: close\r\n");
            for header in http.http_headers.iter().flatten() {
                request.push_str(&format!("{}: {}\r\n", header.name, header.value));
            }
            request.push_str("\r\n");
            let Ok(mut stream) = TcpStream::connect((LOCAL_IP, port)).await else {
                return false;
            };
            if stream.write_all(request.as_bytes()).await.is_err() {
                return false;
            }
            let mut head = [0u8; 64];
            let Ok(n) = stream.read(&mut head).await else {
                return false;
            };
            return http_success(&head[..n]);
        }
        false
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or(false)
}

/// Whether an HTTP response head reports 200–399.
pub fn http_success(head: &[u8]) -> bool {
    let line = String::from_utf8_lossy(head);
    let mut parts = line.split_whitespace();
    let version_ok = parts.next().is_some_and(|v| v.starts_with("HTTP/"));
    let code: Option<u16> = parts.next().and_then(|c| c.parse().ok());
    version_ok && code.is_some_and(|c| (200..400).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, ExecAction, HTTPGetAction, TCPSocketAction};

    fn timing(success: u32, failure: u32) -> ProbeTiming {
        ProbeTiming {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn thresholds_flip_the_verdict() {
        struct Case {
            name: &'static str,
            initially: bool,
            success: u32,
            failure: u32,
            results: Vec<bool>,
            flips: Vec<Option<bool>>,
        }
        let cases = vec![
            Case {
                name: "readiness: one success makes ready",
                initially: false,
                success: 1,
                failure: 3,
                results: vec![false, true, true],
                flips: vec![None, Some(true), None],
            },
            Case {
                name: "readiness: needs two successes in a row",
                initially: false,
                success: 2,
                failure: 3,
                results: vec![true, false, true, true],
                flips: vec![None, None, None, Some(true)],
            },
            Case {
                name: "liveness: three failures in a row",
                initially: true,
                success: 1,
                failure: 3,
                results: vec![false, false, true, false, false, false],
                flips: vec![None, None, None, None, None, Some(false)],
            },
        ];
        for case in cases {
            let mut tracker = ProbeTracker::new(timing(case.success, case.failure), case.initially);
            let flips: Vec<Option<bool>> = case.results.iter().map(|r| tracker.record(*r)).collect();
            assert_eq!(flips, case.flips, "case: {}", case.name);
        }
    }

    #[test]
    fn defaults() {
        let t = ProbeTiming::of(&Probe::default());
        assert_eq!(
            t,
            ProbeTiming {
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
    }

    #[test]
    fn http_status_lines() {
        for (head, ok) in [
            (&b"HTTP/1.1 200 OK\r\n"[..], true),
            (b"HTTP/1.0 302 Found\r\n", true),
            (b"HTTP/1.1 404 Not Found\r\n", false),
            (b"HTTP/1.1 500 Oops\r\n", false),
            (b"garbage", false),
            (b"", false),
        ] {
            assert_eq!(http_success(head), ok, "{}", String::from_utf8_lossy(head));
        }
    }

    #[tokio::test]
    async fn probes_against_local_endpoints() {
        let listener = tokio::net::TcpListener::bind((LOCAL_IP, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let reply = if request.starts_with("GET /healthz ") { "HTTP/1.1 200 OK\r\n\r\n" } else { "HTTP/1.1 503 No\r\n\r\n" };
                let _ = socket.write_all(reply.as_bytes()).await;
            }
        });
        let container = Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort { name: Some("http".into()), container_port: i32::from(port), ..Default::default() }]),
            ..Default::default()
        };
        let http = |path: &str, port: IntOrString| Probe {
            http_get: Some(HTTPGetAction { path: Some(path.into()), port, ..Default::default() }),
            ..Default::default()
        };
        assert!(run_probe(&http("/healthz", IntOrString::String("http".into())), &container, &[]).await);
        assert!(!run_probe(&http("/other", IntOrString::Int(i32::from(port))), &container, &[]).await);
        let tcp =
            |port: i32| Probe { tcp_socket: Some(TCPSocketAction { port: IntOrString::Int(port), host: None }), ..Default::default() };
        assert!(run_probe(&tcp(i32::from(port)), &container, &[]).await);
        server.abort();
        let _ = server.await;
        // Nothing listens on port 1 (privileged, unused); the port just released could be taken
        // by another process on a busy machine.
        assert!(!run_probe(&tcp(1), &container, &[]).await);

        let exec = |script: &str| Probe {
            exec: Some(ExecAction { command: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]) }),
            ..Default::default()
        };
        let env = vec![("WANT".to_string(), "yes".to_string())];
        assert!(run_probe(&exec("[ \"$WANT\" = yes ]"), &container, &env).await);
        assert!(!run_probe(&exec("exit 1"), &container, &env).await);
        assert!(!run_probe(&Probe::default(), &container, &env).await, "no handler fails");
    }
}

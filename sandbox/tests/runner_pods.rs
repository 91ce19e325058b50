//! The kubelet half of the runner on its own: bare Pods (no Deployment), restart policies,
//! startup errors reported in status, and the runner's own lifecycle (unreachable API server,
//! dropped without shutdown).

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde_json::json;
use warren_sandbox::runner::{Runner, RunnerConfig, RunnerError};
use warren_sandbox::{ApiServer, ServerOptions};

const DEADLINE: Duration = Duration::from_secs(90);

async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-runner-pods-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn config(dir: &std::path::Path) -> RunnerConfig {
    let mut config = RunnerConfig::new(dir.join("logs")).image("shell", "/bin/sh");
    config.crash_backoff = Duration::from_millis(200);
    config.max_crash_backoff = Duration::from_secs(1);
    config.extra_env.push(("DIR".into(), dir.display().to_string()));
    config
}

fn bare_pod(name: &str, restart_policy: &str, container: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"restartPolicy": restart_policy, "terminationGracePeriodSeconds": 5, "containers": [container]},
    }))
    .expect("valid pod")
}

async fn container_status(pods: &Api<Pod>, name: &str) -> Option<(String, ContainerStatus)> {
    let pod = pods.get(name).await.ok()?;
    let status = pod.status?;
    Some((status.phase?, status.container_statuses?.into_iter().next()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_pods_follow_restart_policy_and_report_start_errors() {
    let dir = scratch("policy");
    let server = ApiServer::start(ServerOptions::default()).await.expect("API server must start");
    let runner = Runner::start(server.client(), config(&dir)).await.expect("runner must start");
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");

    let cases = [
        ("succeeds", "Never", json!({"name": "c", "image": "shell", "args": ["-c", "exit 0"]}), "Succeeded", 0),
        ("fails", "Never", json!({"name": "c", "image": "shell", "args": ["-c", "exit 4"]}), "Failed", 4),
        (
            "retries-once",
            "OnFailure",
            json!({"name": "c", "image": "shell",
                   "args": ["-c", "if [ -f $DIR/retried ]; then exit 0; fi; touch $DIR/retried; exit 9"]}),
            "Succeeded",
            0,
        ),
    ];
    for (name, policy, container, _, _) in &cases {
        pods.create(&PostParams::default(), &bare_pod(name, policy, container.clone())).await.expect("create pod");
    }
    for (name, _, _, phase, code) in &cases {
        let (got_phase, cs) = eventually(&format!("{name} finished"), || async {
            let (phase, cs) = container_status(&pods, name).await?;
            (phase == "Succeeded" || phase == "Failed").then_some((phase, cs))
        })
        .await;
        assert_eq!(&got_phase, phase, "{name}");
        let terminated = cs.state.and_then(|s| s.terminated).expect("terminated state");
        assert_eq!(terminated.exit_code, *code, "{name}");
        assert!(!cs.ready);
    }
    let (_, cs) = container_status(&pods, "retries-once").await.unwrap();
    assert_eq!(cs.restart_count, 1, "OnFailure restarted the failed run once");

    // A command resolved through PATH, and an image nobody mapped.
    pods.create(&PostParams::default(), &bare_pod("sleeper", "Always", json!({"name": "c", "image": "any", "command": ["sleep", "600"]})))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &bare_pod("unmapped", "Always", json!({"name": "c", "image": "docker.io/nginx:1"}))).await.unwrap();
    let (phase, cs) = eventually("sleeper running", || async {
        let (phase, cs) = container_status(&pods, "sleeper").await?;
        cs.ready.then_some((phase, cs))
    })
    .await;
    assert_eq!(phase, "Running");
    assert!(cs.state.unwrap().running.is_some());
    let waiting = eventually("unmapped image reported", || async {
        let (phase, cs) = container_status(&pods, "unmapped").await?;
        let waiting = cs.state?.waiting?;
        (phase == "Pending" && waiting.reason.as_deref() == Some("ErrImageNeverPull")).then_some(waiting)
    })
    .await;
    assert!(waiting.message.unwrap_or_default().contains("docker.io/nginx:1"));
    assert_eq!(runner.process_count(), 1, "only the sleeper runs");

    runner.shutdown().await;
    let left = pods.list(&ListParams::default()).await.unwrap();
    assert!(left.items.is_empty(), "drain removed every pod it ran or tried to run");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_gate_readiness_and_restart_unhealthy_containers() {
    let dir = scratch("probes");
    let server = ApiServer::start(ServerOptions::default()).await.expect("API server must start");
    let runner = Runner::start(server.client(), config(&dir)).await.expect("runner must start");
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    let deployments: Api<Deployment> = Api::namespaced(server.client(), "default");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "gated", "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "gated"}},
            "template": {
                "metadata": {"labels": {"app": "gated"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": "shell",
                    "args": ["-c", "exec sleep 600"],
                    "readinessProbe": {"exec": {"command": ["/bin/sh", "-c", "test -f $DIR/open"]}, "periodSeconds": 1}}]},
            },
        },
    }))
    .unwrap();
    deployments.create(&PostParams::default(), &deployment).await.unwrap();
    let name = eventually("gated pod running", || async {
        let list = pods.list(&ListParams::default().labels("app=gated")).await.ok()?;
        let pod = list.items.into_iter().next()?;
        let cs = pod.status.as_ref()?.container_statuses.as_ref()?.first()?.clone();
        cs.state?.running.map(|_| pod.metadata.name.clone().unwrap())
    })
    .await;
    let (_, cs) = container_status(&pods, &name).await.unwrap();
    assert!(!cs.ready, "not ready before the probe passes");
    let status = eventually("deployment status seen", || async { deployments.get("gated").await.ok()?.status }).await;
    assert_eq!(status.available_replicas, Some(0));

    std::fs::write(dir.join("open"), "").unwrap();
    eventually("probe makes the pod ready", || async { container_status(&pods, &name).await?.1.ready.then_some(()) }).await;
    eventually("deployment available", || async {
        (deployments.get("gated").await.ok()?.status?.available_replicas == Some(1)).then_some(())
    })
    .await;

    // Liveness: once the probe fails the container is killed and restarted in place.
    let live = bare_pod(
        "watched",
        "Always",
        json!({"name": "c", "image": "shell", "args": ["-c", "exec sleep 600"],
               "livenessProbe": {"exec": {"command": ["/bin/sh", "-c", "test ! -f $DIR/dead"]},
                                 "periodSeconds": 1, "failureThreshold": 1}}),
    );
    pods.create(&PostParams::default(), &live).await.unwrap();
    eventually("watched pod ready", || async { container_status(&pods, "watched").await?.1.ready.then_some(()) }).await;
    std::fs::write(dir.join("dead"), "").unwrap();
    let cs = eventually("liveness restart", || async {
        let (_, cs) = container_status(&pods, "watched").await?;
        (cs.restart_count >= 1).then_some(cs)
    })
    .await;
    assert!(cs.last_state.and_then(|s| s.terminated).is_some());
    assert_eq!(pods.list(&ListParams::default().fields("metadata.name=watched")).await.map(|l| l.items.len()).unwrap_or(1), 1);

    runner.shutdown().await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_runner_kills_its_processes() {
    let dir = scratch("drop");
    let server = ApiServer::start(ServerOptions::default()).await.expect("API server must start");
    let runner = Runner::start(server.client(), config(&dir)).await.expect("runner must start");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "shell",
                    "args": ["-c", "trap '' TERM; echo $$$$ > $DIR/$(POD_NAME).pid; while true; do sleep 0.1; done"],
                    "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]},
            },
        },
    }))
    .unwrap();
    Api::<Deployment>::namespaced(server.client(), "default").create(&PostParams::default(), &deployment).await.unwrap();
    let pids: Vec<i32> = eventually("two pid files", || async {
        let pids: Vec<i32> = std::fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".pid"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
            .collect();
        (pids.len() == 2).then_some(pids)
    })
    .await;
    // The pid file may appear a moment before the runner has recorded the process.
    eventually("one process per replica", || async { (runner.process_count() == 2).then_some(()) }).await;
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    assert_eq!(pods.list(&ListParams::default()).await.unwrap().items.len(), 2);

    drop(runner);
    for pid in pids {
        eventually(&format!("process {pid} killed"), || async { kill(Pid::from_raw(pid), None).is_err().then_some(()) }).await;
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn start_fails_loudly_without_an_api_server() {
    // Bind and release a port so nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    let client = Client::try_from(config).unwrap();
    let dir = scratch("unreachable");
    let err = Runner::start(client, RunnerConfig::new(dir.join("logs"))).await.err().expect("start must fail");
    assert!(matches!(err, RunnerError::ApiUnreachable(_)), "{err}");
    assert_eq!(err.reason(), "ApiUnreachable");
    let _ = std::fs::remove_dir_all(&dir);
}

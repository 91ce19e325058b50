//! The local runner against the sandbox API server: Deployments become local processes, and
//! what a user sees (processes, their side effects, Pod and Deployment status) stays true
//! through scaling, crashes, deletions, rollouts and shutdown.
//!
//! Every test polls for the expected state with a generous deadline (the machine is noisy)
//! and asserts counts and states, never durations.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde_json::json;
use warren_sandbox::runner::{Runner, RunnerConfig};
use warren_sandbox::{ApiServer, ServerOptions};

const DEADLINE: Duration = Duration::from_secs(90);

struct Env {
    server: Option<ApiServer>,
    runner: Option<Runner>,
    client: Client,
    dir: PathBuf,
}

impl Env {
    async fn start(name: &str, crash_backoff: Duration) -> Env {
        let _ = tracing_subscriber::fmt().with_env_filter("warren_sandbox::runner=debug").with_test_writer().try_init();
        let dir = std::env::temp_dir().join(format!("warren-runner-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let server = ApiServer::start(ServerOptions::default()).await.expect("API server must start");
        let client = server.client();
        let mut config = RunnerConfig::new(dir.join("logs")).image("shell", "/bin/sh");
        config.crash_backoff = crash_backoff;
        config.max_crash_backoff = crash_backoff * 4;
        config.extra_env.push(("DIR".into(), dir.display().to_string()));
        let runner = Runner::start(client.clone(), config).await.expect("runner must start");
        Env { server: Some(server), runner: Some(runner), client, dir }
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    async fn create(&self, deployment: Deployment) -> Deployment {
        self.deployments().create(&PostParams::default(), &deployment).await.expect("create deployment")
    }

    /// Pods of the deployment `app`, by name.
    async fn pods_of(&self, app: &str) -> BTreeMap<String, Pod> {
        let list = self.pods().list(&ListParams::default().labels(&format!("app={app}"))).await.expect("list pods");
        list.items.into_iter().map(|p| (p.name_any(), p)).collect()
    }

    async fn wait_ready(&self, app: &str, replicas: usize) -> BTreeMap<String, Pod> {
        eventually(&format!("{replicas} ready pods of {app}"), || async {
            let pods = self.pods_of(app).await;
            (pods.len() == replicas && pods.values().all(is_ready)).then_some(pods)
        })
        .await
    }

    /// PID the pod's process wrote to `<dir>/<pod>.pid` (it is the process group leader).
    async fn pid_of(&self, pod: &str) -> i32 {
        let path = self.dir.join(format!("{pod}.pid"));
        eventually(&format!("pid file of {pod}"), || async { std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok()) })
            .await
    }

    async fn shutdown(mut self) {
        if let Some(runner) = self.runner.take() {
            runner.shutdown().await;
        }
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn runner(&self) -> &Runner {
        self.runner.as_ref().expect("runner running")
    }
}

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

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

fn is_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A Deployment of `/bin/sh -c <script>` (image "shell"), with `POD_NAME` from the downward API.
fn shell_deployment(name: &str, replicas: i32, grace_seconds: i64, script: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": grace_seconds,
                    "containers": [{
                        "name": "main",
                        "image": "ghcr.io/warren/shell:1.0",
                        "args": ["-c", script],
                        "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        ],
                    }],
                },
            },
        },
    }))
    .expect("valid deployment")
}

/// Writes its PID, then sleeps (exec: the PID stays the group leader's). `$$$$` because
/// Kubernetes expands `$(VAR)` in args and `$$` escapes a dollar.
const RECORD_PID_AND_SLEEP: &str = "echo $$$$ > $DIR/$POD_NAME.pid; exec sleep 600";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_run_as_processes_with_true_status_and_drain_on_shutdown() {
    let mut env = Env::start("replicas", Duration::from_secs(10)).await;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), "default");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}})).unwrap(),
        )
        .await
        .expect("create secret");
    let config_maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "settings"}, "data": {"level": "debug"}})).unwrap(),
        )
        .await
        .expect("create configmap");

    let mut deployment = shell_deployment(
        "web",
        3,
        30,
        "echo started $POD_NAME; echo \"$POD_NAME $POD_NS $POD_IP $TOKEN $LEVEL\" > $DIR/$POD_NAME.env; echo $$$$ > $DIR/$POD_NAME.pid; exec sleep 600",
    );
    let container = &mut deployment.spec.template.spec.as_mut().unwrap().containers[0];
    container.env.as_mut().unwrap().extend(
        serde_json::from_value::<Vec<k8s_openapi::api::core::v1::EnvVar>>(json!([
            {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}}},
        ]))
        .unwrap(),
    );
    let created = env.create(deployment).await;

    let pods = env.wait_ready("web", 3).await;
    let mut pids = BTreeSet::new();
    for (name, pod) in &pods {
        assert!(name.starts_with("web-") && name.len() == "web-".len() + 5, "pod name {name}");
        let labels = pod.labels();
        assert!(labels.contains_key("pod-template-hash"), "labels {labels:?}");
        let owner = &pod.owner_references()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Deployment", created.uid().unwrap().as_str()));
        assert_eq!(owner.controller, Some(true));
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("127.0.0.1"));
        assert!(status.start_time.is_some());
        let cs = &status.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready && cs.state.as_ref().unwrap().running.is_some());
        assert_eq!(cs.restart_count, 0);

        let pid = env.pid_of(name).await;
        assert!(alive(pid), "process of {name} runs");
        pids.insert(pid);
        let written = std::fs::read_to_string(env.dir.join(format!("{name}.env"))).unwrap();
        assert_eq!(written.trim(), format!("{name} default 127.0.0.1 s3cret debug"), "env of {name}");
        let log = std::fs::read_to_string(env.runner().log_path("default", name)).unwrap();
        assert_eq!(log.trim(), format!("started {name}"), "stdout goes to the pod's log");
    }
    assert_eq!(pids.len(), 3, "three distinct processes");
    eventually("runner tracks 3 processes", || async { (env.runner().process_count() == 3).then_some(()) }).await;

    let status = eventually("deployment status with 3 available", || async {
        let d = env.deployments().get("web").await.ok()?;
        let s = d.status?;
        (s.available_replicas == Some(3)).then_some(s)
    })
    .await;
    assert_eq!(status.replicas, Some(3));
    assert_eq!(status.ready_replicas, Some(3));
    assert_eq!(status.updated_replicas, Some(3));
    assert_eq!(status.unavailable_replicas, Some(0));
    assert_eq!(status.observed_generation, Some(1));
    let available = status.conditions.unwrap().into_iter().find(|c| c.type_.as_deref() == Some("Available")).unwrap();
    assert_eq!(available.status.as_deref(), Some("True"));

    let client = env.client.clone();
    env.shutdown_runner_only().await;
    for pid in &pids {
        assert!(!alive(*pid), "process {pid} stopped by the drain");
    }
    let left = Api::<Pod>::namespaced(client, "default").list(&ListParams::default()).await.unwrap();
    assert!(left.items.is_empty(), "drain deletes pod objects: {:?}", left.items.iter().map(|p| p.name_any()).collect::<Vec<_>>());
    env.shutdown().await;
}

impl Env {
    /// Shuts the runner down, keeping the server for assertions.
    async fn shutdown_runner_only(&mut self) {
        if let Some(runner) = self.runner.take() {
            runner.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_stops_the_lowest_deletion_cost_pods() {
    let env = Env::start("scale", Duration::from_secs(10)).await;
    env.create(shell_deployment("web", 3, 30, RECORD_PID_AND_SLEEP)).await;
    let pods = env.wait_ready("web", 3).await;
    let names: Vec<String> = pods.keys().cloned().collect();
    // Costs 10, 30, 20: the pod with cost 30 must survive.
    let costs = [10, 30, 20];
    let mut pids = BTreeMap::new();
    for (name, cost) in names.iter().zip(costs) {
        pids.insert(name.clone(), env.pid_of(name).await);
        let patch = json!({"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": cost.to_string()}}});
        env.pods().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("annotate pod");
    }
    let keeper = names[1].clone();

    env.deployments().patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 1}}))).await.expect("scale down");

    let remaining = eventually("one pod left", || async {
        let pods = env.pods_of("web").await;
        (pods.len() == 1).then_some(pods)
    })
    .await;
    assert_eq!(remaining.keys().cloned().collect::<Vec<_>>(), vec![keeper.clone()], "highest cost pod kept");
    for (name, pid) in &pids {
        if *name == keeper {
            assert!(alive(*pid), "kept pod {name} still runs");
        } else {
            eventually(&format!("process of {name} gone"), || async { (!alive(*pid)).then_some(()) }).await;
        }
    }
    let status = eventually("status shows 1 replica", || async {
        let s = env.deployments().get("web").await.ok()?.status?;
        (s.replicas == Some(1) && s.available_replicas == Some(1)).then_some(s)
    })
    .await;
    assert_eq!(status.ready_replicas, Some(1));
    assert_eq!(status.observed_generation, Some(2));
    // Stays at one: nothing is recreated.
    assert_eq!(env.pods_of("web").await.len(), 1);
    eventually("runner tracks 1 process", || async { (env.runner().process_count() == 1).then_some(()) }).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_pod_gets_sigterm_and_its_grace_period_then_a_replacement() {
    let env = Env::start("grace", Duration::from_secs(10)).await;
    // On TERM: keep working for a while, then leave a marker and exit cleanly.
    let graceful = "trap 'sleep 1; echo finished > $DIR/$POD_NAME.term; exit 0' TERM; \
                    echo $$$$ > $DIR/$POD_NAME.pid; while true; do sleep 0.1; done";
    env.create(shell_deployment("graceful", 1, 60, graceful)).await;
    let pods = env.wait_ready("graceful", 1).await;
    let victim = pods.keys().next().unwrap().clone();
    let pid = env.pid_of(&victim).await;

    env.pods().delete(&victim, &DeleteParams::default()).await.expect("delete pod");

    let marker = env.dir.join(format!("{victim}.term"));
    let text = eventually("TERM handler finished", || async { std::fs::read_to_string(&marker).ok() }).await;
    assert_eq!(text.trim(), "finished");
    eventually("old process exited", || async { (!alive(pid)).then_some(()) }).await;
    let replacement = eventually("a replacement pod is ready", || async {
        let pods = env.pods_of("graceful").await;
        (pods.len() == 1 && !pods.contains_key(&victim) && pods.values().all(is_ready)).then_some(pods)
    })
    .await;
    let new_pid = env.pid_of(replacement.keys().next().unwrap()).await;
    assert!(alive(new_pid));

    // A process ignoring TERM is killed once its (short) grace period is over, before its
    // handler could finish.
    let stubborn = "trap 'sleep 120; echo finished > $DIR/$POD_NAME.term' TERM; \
                    echo $$$$ > $DIR/$POD_NAME.pid; while true; do sleep 0.1; done";
    env.create(shell_deployment("stubborn", 1, 1, stubborn)).await;
    let pods = env.wait_ready("stubborn", 1).await;
    let victim = pods.keys().next().unwrap().clone();
    let pid = env.pid_of(&victim).await;
    env.pods().delete(&victim, &DeleteParams::default()).await.expect("delete pod");
    eventually("stubborn process killed", || async { (!alive(pid)).then_some(()) }).await;
    assert!(!env.dir.join(format!("{victim}.term")).exists(), "SIGKILL cut the handler short");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_process_restarts_with_restart_count() {
    let env = Env::start("crash", Duration::from_millis(200)).await;
    // First run crashes with 3; later runs stay up.
    let script = "echo run >> $DIR/$POD_NAME.runs; \
                  if [ -f $DIR/$POD_NAME.crashed ]; then exec sleep 600; fi; \
                  touch $DIR/$POD_NAME.crashed; exit 3";
    env.create(shell_deployment("flaky", 1, 30, script)).await;
    let pods = eventually("pod restarted once and ready", || async {
        let pods = env.pods_of("flaky").await;
        let pod = pods.values().next()?;
        let cs = pod.status.as_ref()?.container_statuses.as_ref()?.first()?.clone();
        (cs.restart_count == 1 && cs.ready).then_some(pods)
    })
    .await;
    let (name, pod) = pods.into_iter().next().unwrap();
    let cs = pod.status.unwrap().container_statuses.unwrap().remove(0);
    let last = cs.last_state.and_then(|s| s.terminated).expect("last state terminated");
    assert_eq!(last.exit_code, 3);
    assert!(cs.state.unwrap().running.is_some());
    let runs = std::fs::read_to_string(env.dir.join(format!("{name}.runs"))).unwrap();
    assert_eq!(runs.lines().count(), 2, "started twice");

    // A process that always crashes: restartCount keeps growing, state shows the back-off.
    env.create(shell_deployment("crashy", 1, 30, "exit 1")).await;
    let cs = eventually("restartCount reaches 3", || async {
        let pods = env.pods_of("crashy").await;
        let cs = pods.values().next()?.status.as_ref()?.container_statuses.as_ref()?.first()?.clone();
        (cs.restart_count >= 3).then_some(cs)
    })
    .await;
    assert!(!cs.ready);
    assert_eq!(cs.last_state.and_then(|s| s.terminated).map(|t| t.exit_code), Some(1));
    // Between crashes the pod is briefly running (and then truthfully ready); in back-off it
    // is not, and the deployment reports it.
    eventually("crashing deployment not available", || async {
        let s = env.deployments().get("crashy").await.ok()?.status?;
        (s.replicas == Some(1) && s.available_replicas == Some(0) && s.unavailable_replicas == Some(1)).then_some(s)
    })
    .await;
    assert_eq!(env.pods_of("crashy").await.len(), 1, "crashes restart in place, no new pods");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_deployment_stops_all_its_processes() {
    let env = Env::start("delete", Duration::from_secs(10)).await;
    env.create(shell_deployment("web", 2, 30, RECORD_PID_AND_SLEEP)).await;
    let pods = env.wait_ready("web", 2).await;
    let mut pids = vec![];
    for name in pods.keys() {
        pids.push(env.pid_of(name).await);
    }
    assert!(pids.iter().all(|p| alive(*p)));

    env.deployments().delete("web", &DeleteParams::background()).await.expect("delete deployment");

    eventually("pods gone", || async { env.pods_of("web").await.is_empty().then_some(()) }).await;
    for pid in pids {
        eventually(&format!("process {pid} stopped"), || async { (!alive(pid)).then_some(()) }).await;
    }
    eventually("no processes left", || async { (env.runner().process_count() == 0).then_some(()) }).await;
    // Nothing is recreated.
    assert!(env.pods_of("web").await.is_empty());
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_change_rolls_pods_one_at_a_time() {
    let env = Env::start("rollout", Duration::from_secs(10)).await;
    env.create(shell_deployment("web", 2, 30, RECORD_PID_AND_SLEEP)).await;
    let old = env.wait_ready("web", 2).await;
    eventually("deployment available before the change", || async {
        let s = env.deployments().get("web").await.ok()?.status?;
        (s.available_replicas == Some(2)).then_some(())
    })
    .await;
    let old_hash = old.values().next().unwrap().labels()["pod-template-hash"].clone();
    let mut old_pids = vec![];
    for name in old.keys() {
        old_pids.push(env.pid_of(name).await);
    }

    let patch = json!({"spec": {"template": {"metadata": {"labels": {"app": "web", "version": "2"}}}}});
    env.deployments().patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("change template");

    // Sampled while rolling: new pods come one at a time (never two unready new pods), and the
    // reported availability never drops below the desired count (maxUnavailable 0).
    let most_unready_new = std::cell::Cell::new(0);
    let least_available = std::cell::Cell::new(i32::MAX);
    let new = eventually("two new ready pods and no old ones", || {
        let env = &env;
        let old_hash = old_hash.clone();
        let (most_unready_new, least_available) = (&most_unready_new, &least_available);
        async move {
            let pods = env.pods_of("web").await;
            let is_new = |p: &Pod| p.labels()["pod-template-hash"] != old_hash;
            let unready_new = pods.values().filter(|p| is_new(p) && !is_ready(p)).count();
            most_unready_new.set(most_unready_new.get().max(unready_new));
            if let Some(available) = env.deployments().get("web").await.ok()?.status?.available_replicas {
                least_available.set(least_available.get().min(available));
            }
            let all_new = pods.values().all(is_new);
            (pods.len() == 2 && all_new && pods.values().all(is_ready)).then_some(pods)
        }
    })
    .await;
    assert!(most_unready_new.get() <= 1, "one new pod at a time, saw {}", most_unready_new.get());
    assert_eq!(least_available.get(), 2, "availability held during the rollout");
    assert!(new.values().all(|p| p.labels().get("version").map(String::as_str) == Some("2")));
    for pid in old_pids {
        eventually(&format!("old process {pid} stopped"), || async { (!alive(pid)).then_some(()) }).await;
    }
    let status = eventually("rollout complete in status", || async {
        let s = env.deployments().get("web").await.ok()?.status?;
        (s.observed_generation == Some(2) && s.updated_replicas == Some(2) && s.replicas == Some(2) && s.available_replicas == Some(2))
            .then_some(s)
    })
    .await;
    assert_eq!(status.unavailable_replicas, Some(0));
    env.shutdown().await;
}

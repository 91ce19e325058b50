//! Local runner: what kubelet and the Deployment/ReplicaSet controllers do in a cluster, done
//! with local processes. It keeps `spec.replicas` Pods per `apps/v1` Deployment, runs each Pod's
//! first container as a process in its own process group, restarts crashed processes with
//! kubelet's backoff, keeps Pod and Deployment status true, and stops processes gracefully
//! (SIGTERM, grace period, SIGKILL) on scale-down, rollout, deletion and shutdown.
//!
//! It talks to the API server only through a [`kube::Client`], so it works against any API
//! server. It owns no API objects' lifecycle beyond Pods of Deployments: garbage collection of
//! dependents is the API server's job (the runner only deletes leftover pods of a Deployment
//! that is gone, as a safety net).
//!
//! Layout: [`plan`] (pure: replica plans, victim ranking, Deployment status, backoff),
//! [`launch`] (pure: container → executable, arguments, environment), [`probe`] (readiness
//! and liveness probes: pure thresholds, one attempt as I/O), `process` (spawning and
//! signalling process groups), `pod_worker` (one task per pod: the kubelet part), and the
//! control loop below (watches, expectations, applying plans).

pub mod launch;
pub mod plan;
mod pod_worker;
pub mod probe;
mod process;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

pub use pod_worker::{ContainerPhase, ContainerRuntime, Termination, pod_status, restarts_after};
pub use process::{Exit, INHERITED_ENV};

use plan::{POD_DELETION_COST_ANNOTATION, POD_TEMPLATE_HASH_LABEL, PodPhaseRank, PodView, ReplicaState, Strategy};
use pod_worker::{StopRequest, WorkerContext, WorkerHandle, grace_period};
use process::ProcessGroups;

/// `spec.nodeName` of every pod the runner creates: the one node it stands in for.
pub const NODE_NAME: &str = "warren-sandbox";

/// How long a created pod counts as existing before the watch shows it (the ReplicaSet
/// controller's creation expectations).
const CREATION_EXPECTATION_TTL: Duration = Duration::from_secs(30);
/// How long a patched Deployment status may take to come back through the watch before it
/// is sent again.
const STATUS_ECHO_WAIT: Duration = Duration::from_secs(2);
/// Periodic resync even without watch events (minReadySeconds, expectations, retries).
const RESYNC_PERIOD: Duration = Duration::from_secs(1);

/// Configuration of a [`Runner`].
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Image name → local executable. Matched on the image's last path segment without
    /// tag/digest, e.g. "ghcr.io/warren/warren-worker:0.1" and "warren-worker" both match key
    /// "warren-worker".
    pub images: HashMap<String, PathBuf>,
    /// Where each pod's stdout/stderr go: `<log_dir>/<namespace>_<pod>.log`.
    pub log_dir: PathBuf,
    /// Extra environment given to every process (e.g. PATH additions); container `env`
    /// overrides it.
    pub extra_env: Vec<(String, String)>,
    /// Namespace to watch; None = all.
    pub namespace: Option<String>,
    /// Delay before the first restart of a crashed container; doubles per crash (kubelet: 10 s).
    pub crash_backoff: Duration,
    /// Cap of the crash backoff (kubelet: 5 min).
    pub max_crash_backoff: Duration,
}

impl Default for RunnerConfig {
    /// Logs under `<tmp>/warren-sandbox-logs`, kubelet backoff, no images, all namespaces.
    fn default() -> Self {
        Self::new(std::env::temp_dir().join("warren-sandbox-logs"))
    }
}

impl RunnerConfig {
    /// Kubelet defaults, no images, all namespaces.
    pub fn new(log_dir: impl Into<PathBuf>) -> Self {
        Self {
            images: HashMap::new(),
            log_dir: log_dir.into(),
            extra_env: Vec::new(),
            namespace: None,
            crash_backoff: Duration::from_secs(10),
            max_crash_backoff: Duration::from_secs(300),
        }
    }

    pub fn image(mut self, name: impl Into<String>, executable: impl Into<PathBuf>) -> Self {
        self.images.insert(name.into(), executable.into());
        self
    }
}

/// Why the runner could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("log directory {path}: {source}")]
    LogDir { path: PathBuf, source: std::io::Error },
    #[error("API server unreachable: {0}")]
    ApiUnreachable(#[source] kube::Error),
    #[error("watches did not sync within {0:?}")]
    WatchNotSynced(Duration),
    #[error("creating pod: {0}")]
    CreatePod(#[source] kube::Error),
    #[error("deleting pod: {0}")]
    DeletePod(#[source] kube::Error),
    #[error("reading deployment: {0}")]
    GetDeployment(#[source] kube::Error),
    #[error("listing pods: {0}")]
    ListPods(#[source] kube::Error),
    #[error("patching deployment status: {0}")]
    PatchStatus(#[source] kube::Error),
}

impl RunnerError {
    /// Stable name for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::LogDir { .. } => "LogDirUnavailable",
            Self::ApiUnreachable(_) => "ApiUnreachable",
            Self::WatchNotSynced(_) => "WatchNotSynced",
            Self::CreatePod(_) => "CreatePodFailed",
            Self::DeletePod(_) => "DeletePodFailed",
            Self::GetDeployment(_) => "GetDeploymentFailed",
            Self::ListPods(_) => "ListPodsFailed",
            Self::PatchStatus(_) => "PatchStatusFailed",
        }
    }
}

/// A running local node: watches Deployments and Pods and runs their processes until
/// [`Runner::shutdown`].
pub struct Runner {
    log_dir: PathBuf,
    cancel: CancellationToken,
    control_loop: Option<JoinHandle<()>>,
    watches: Vec<JoinHandle<()>>,
    groups: ProcessGroups,
}

const WATCH_SYNC_TIMEOUT: Duration = Duration::from_secs(60);

impl Runner {
    pub async fn start(client: Client, config: RunnerConfig) -> Result<Runner, RunnerError> {
        std::fs::create_dir_all(&config.log_dir).map_err(|source| RunnerError::LogDir { path: config.log_dir.clone(), source })?;
        let (deployments_api, pods_api): (Api<Deployment>, Api<Pod>) = match &config.namespace {
            Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
        deployments_api.list(&ListParams::default().limit(1)).await.map_err(RunnerError::ApiUnreachable)?;

        let wake = Arc::new(Notify::new());
        let (deployments, deployments_writer) = reflector::store::<Deployment>();
        let (pods, pods_writer) = reflector::store::<Pod>();
        let watches = vec![
            spawn_watch("deployments", deployments_api, deployments_writer, wake.clone()),
            spawn_watch("pods", pods_api, pods_writer, wake.clone()),
        ];
        let synced = async {
            let _ = deployments.wait_until_ready().await;
            let _ = pods.wait_until_ready().await;
        };
        if tokio::time::timeout(WATCH_SYNC_TIMEOUT, synced).await.is_err() {
            for w in &watches {
                w.abort();
            }
            return Err(RunnerError::WatchNotSynced(WATCH_SYNC_TIMEOUT));
        }

        let mut base_env: Vec<(String, String)> =
            INHERITED_ENV.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))).collect();
        for (k, v) in &config.extra_env {
            base_env.retain(|(existing, _)| existing != k);
            base_env.push((k.clone(), v.clone()));
        }
        let groups = ProcessGroups::default();
        let ctx = Arc::new(WorkerContext {
            client: client.clone(),
            images: config.images.clone(),
            log_dir: config.log_dir.clone(),
            base_env,
            crash_backoff: config.crash_backoff,
            max_crash_backoff: config.max_crash_backoff,
            groups: groups.clone(),
            wake: wake.clone(),
        });
        let cancel = CancellationToken::new();
        let control = ControlLoop {
            client,
            ctx,
            deployments,
            pods,
            workers: HashMap::new(),
            expected: HashMap::new(),
            patched: HashMap::new(),
            retry: HashMap::new(),
        };
        let control_loop = tokio::spawn(
            control.run(wake, cancel.clone()).instrument(info_span!("runner", namespace = config.namespace.as_deref().unwrap_or("*"))),
        );
        info!(namespace = config.namespace.as_deref().unwrap_or("*"), images = config.images.len(), "runner started");
        Ok(Runner { log_dir: config.log_dir.clone(), cancel, control_loop: Some(control_loop), watches, groups })
    }

    /// Stops all pods like a node drain: SIGTERM, wait each pod's grace period, SIGKILL;
    /// deletes their Pod objects.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(control_loop) = self.control_loop.take() {
            let _ = control_loop.await;
        }
        for w in self.watches.drain(..) {
            w.abort();
            let _ = w.await;
        }
        info!("runner stopped");
    }
}

/// `<log_dir>/<namespace>_<pod>.log`: where a pod's stdout and stderr go.
pub fn log_path(log_dir: &std::path::Path, namespace: &str, pod: &str) -> PathBuf {
    log_dir.join(format!("{namespace}_{pod}.log"))
}

impl Runner {
    /// The file a pod's stdout and stderr are appended to (across restarts).
    pub fn log_path(&self, namespace: &str, pod: &str) -> PathBuf {
        log_path(&self.log_dir, namespace, pod)
    }

    /// Number of local process groups alive right now (started and not yet reaped).
    pub fn process_count(&self) -> usize {
        self.groups.len()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // Dropped without shutdown (a panicking test): no process may outlive the runner.
        self.cancel.cancel();
        if let Some(control_loop) = self.control_loop.take() {
            control_loop.abort();
        }
        for w in &self.watches {
            w.abort();
        }
        self.groups.kill_all();
    }
}

fn spawn_watch<K>(kind: &'static str, api: Api<K>, writer: reflector::store::Writer<K>, wake: Arc<Notify>) -> JoinHandle<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    tokio::spawn(async move {
        watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .for_each(|event| {
                match event {
                    Ok(_) => wake.notify_one(),
                    Err(e) => warn!(kind, error = %e, "watch failed; retrying with backoff"),
                }
                futures::future::ready(())
            })
            .await;
    })
}

type PodKey = (String, String);

fn pod_key(pod: &Pod) -> PodKey {
    (pod.namespace().unwrap_or_default(), pod.name_any())
}

/// A pod this runner created that the watch has not shown yet.
#[derive(Clone, Debug)]
struct ExpectedPod {
    namespace: String,
    name: String,
    template_hash: String,
    created: Instant,
    created_at: Timestamp,
}

/// Per-deployment retry state after a failed sync: jittered exponential backoff, bounded.
#[derive(Clone, Copy, Debug)]
struct Retry {
    failures: u32,
    not_before: Instant,
}

struct ControlLoop {
    client: Client,
    ctx: Arc<WorkerContext>,
    deployments: Store<Deployment>,
    pods: Store<Pod>,
    workers: HashMap<PodKey, WorkerHandle>,
    /// Deployment UID → pods created but not observed yet.
    expected: HashMap<String, Vec<ExpectedPod>>,
    /// Deployment UID → (status last patched, when): avoids re-patching the same status while
    /// the watch catches up (the runner is the only writer of Deployment status).
    patched: HashMap<String, (DeploymentStatus, Instant)>,
    retry: HashMap<String, Retry>,
}

impl ControlLoop {
    async fn run(mut self, wake: Arc<Notify>, cancel: CancellationToken) {
        loop {
            self.sync_pods();
            self.sync_deployments().await;
            self.collect_orphans();
            self.reap_workers();
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(RESYNC_PERIOD) => {}
            }
        }
        self.drain().await;
    }

    /// Kubelet: a worker for every pod on this node; stop workers whose pod is being deleted
    /// or gone.
    fn sync_pods(&mut self) {
        let pods = self.pods.state();
        let mut present: HashMap<PodKey, &str> = HashMap::new();
        for pod in &pods {
            if !on_this_node(pod) {
                continue;
            }
            let key = pod_key(pod);
            let uid = pod.metadata.uid.as_deref().unwrap_or_default();
            present.insert(key.clone(), uid);
            match self.workers.get_mut(&key) {
                Some(worker) if worker.uid == uid => {
                    if pod.metadata.deletion_timestamp.is_some() && !worker.stopping() {
                        let grace = pod
                            .metadata
                            .deletion_grace_period_seconds
                            .map(|s| Duration::from_secs(s.max(0) as u64))
                            .unwrap_or_else(|| grace_period(pod));
                        worker.stop(StopRequest { grace, delete_object: true, reason: "PodDeleting" });
                    }
                }
                Some(worker) => {
                    // A new pod took the name; the old incarnation's object is gone.
                    if !worker.stopping() {
                        let grace = worker.grace;
                        worker.stop(StopRequest { grace, delete_object: false, reason: "PodReplaced" });
                    }
                }
                None if pod.metadata.deletion_timestamp.is_some() => {
                    self.workers.insert(key, WorkerHandle::spawn_finalizer(self.ctx.clone(), (**pod).clone()));
                }
                None if is_terminal(pod) => {}
                None => {
                    debug!(namespace = %key.0, pod = %key.1, "starting pod worker");
                    self.workers.insert(key, WorkerHandle::spawn(self.ctx.clone(), (**pod).clone()));
                }
            }
        }
        for (key, worker) in &mut self.workers {
            let gone = present.get(key).is_none_or(|uid| *uid != worker.uid);
            if gone && !worker.stopping() {
                let grace = worker.grace;
                info!(namespace = %key.0, pod = %key.1, "pod object deleted; stopping its process");
                worker.stop(StopRequest { grace, delete_object: false, reason: "PodDeleted" });
            }
        }
    }

    /// Forgets workers that are done once their pod is gone from the watch.
    fn reap_workers(&mut self) {
        let live: HashSet<String> = self.pods.state().iter().filter_map(|p| p.metadata.uid.clone()).collect();
        self.workers.retain(|_, w| !w.finished() || live.contains(&w.uid));
    }

    async fn sync_deployments(&mut self) {
        let now = Timestamp::now();
        let deployments = self.deployments.state();
        let live: HashSet<&str> = deployments.iter().filter_map(|d| d.metadata.uid.as_deref()).collect();
        self.expected.retain(|uid, _| live.contains(uid.as_str()));
        self.patched.retain(|uid, _| live.contains(uid.as_str()));
        self.retry.retain(|uid, _| live.contains(uid.as_str()));
        for deployment in deployments {
            if deployment.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let uid = deployment.metadata.uid.clone().unwrap_or_default();
            if self.retry.get(&uid).is_some_and(|r| r.not_before > Instant::now()) {
                continue;
            }
            let span =
                info_span!("deployment", namespace = deployment.namespace().unwrap_or_default(), deployment = deployment.name_any(),);
            match self.sync_deployment(&deployment, now).instrument(span.clone()).await {
                Ok(()) => {
                    self.retry.remove(&uid);
                }
                Err(e) => {
                    let failures = self.retry.get(&uid).map_or(1, |r| r.failures + 1);
                    let delay = pod_worker::retry_delay(failures.min(6)).max(Duration::from_millis(200));
                    span.in_scope(|| warn!(reason = e.reason(), error = %e, failures, "deployment sync failed"));
                    self.retry.insert(uid, Retry { failures, not_before: Instant::now() + delay });
                }
            }
        }
    }

    async fn sync_deployment(&mut self, deployment: &Deployment, now: Timestamp) -> Result<(), RunnerError> {
        let uid = deployment.metadata.uid.clone().unwrap_or_default();
        let namespace = deployment.namespace().unwrap_or_else(|| "default".into());
        let name = deployment.name_any();
        let spec = &deployment.spec;
        let desired = spec.replicas.unwrap_or(1).max(0);
        let current_hash = plan::template_hash(&spec.template);
        let strategy = Strategy::from_spec(spec.strategy.as_ref(), desired);
        let min_ready = Duration::from_secs(spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
        let paused = spec.paused.unwrap_or(false);

        let store_pods = self.pods.state();
        let observed = self.observe(&uid, store_pods.iter().map(|p| p.as_ref()), true);
        let mut plan = plan::plan_replicas(&observed.state(desired, &current_hash, strategy, min_ready, paused), now);

        if !plan.delete.is_empty() {
            // Choosing victims: rank on a fresh read, not a possibly stale watch cache
            // (deletion-cost annotations may have just changed).
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
            let fresh = api.list(&ListParams::default()).await.map_err(RunnerError::ListPods)?;
            let observed = self.observe(&uid, fresh.items.iter(), false);
            plan = plan::plan_replicas(&observed.state(desired, &current_hash, strategy, min_ready, paused), now);
        }

        let mut views = observed.views.clone();
        for victim in &plan.delete {
            self.delete_pod(&uid, &namespace, victim).await?;
            views.retain(|v| &v.name != victim);
        }
        if plan.create > 0 && !self.still_exists(deployment).await? {
            // The watch cache lags behind a deletion: creating now would leave orphans.
            debug!("deployment deleted meanwhile; not creating pods");
            return Ok(());
        }
        for _ in 0..plan.create {
            let pod = self.create_pod(deployment, &current_hash).await?;
            views.push(expected_view(&pod));
        }
        if plan.create > 0 || !plan.delete.is_empty() {
            info!(created = plan.create, deleted = ?plan.delete, desired, "scaled pods");
        }

        let terminating = observed.terminating + plan.delete.len();
        let state = ReplicaState { desired, current_hash: &current_hash, strategy, min_ready, pods: &views, terminating, paused };
        let status = plan::deployment_status(&name, deployment.metadata.generation, &state, deployment.status.as_ref(), now);
        self.patch_status(deployment, status).await
    }

    /// Active and terminating pods of one Deployment, from `pods` plus creation expectations
    /// not among them. Only the watch cache (`from_watch`) settles expectations: a fresh list
    /// may show a pod the cache doesn't have yet.
    fn observe<'a>(&mut self, deployment_uid: &str, pods: impl Iterator<Item = &'a Pod>, from_watch: bool) -> Observed {
        let mut observed = Observed::default();
        let mut seen_names = HashSet::new();
        for pod in pods {
            seen_names.insert(pod.name_any());
            if controller_uid(pod) != Some(deployment_uid) {
                continue;
            }
            let stopping =
                self.workers.get(&pod_key(pod)).is_some_and(|w| w.stopping() && Some(w.uid.as_str()) == pod.metadata.uid.as_deref());
            if stopping || pod.metadata.deletion_timestamp.is_some() {
                observed.terminating += 1;
            } else if !is_terminal(pod) {
                observed.views.push(pod_view(pod));
            }
        }
        if let Some(expected) = self.expected.get_mut(deployment_uid) {
            if from_watch {
                expected.retain(|e| !seen_names.contains(&e.name) && e.created.elapsed() < CREATION_EXPECTATION_TTL);
            }
            observed.views.extend(expected.iter().filter(|e| !seen_names.contains(&e.name)).map(|e| PodView {
                name: e.name.clone(),
                uid: String::new(),
                scheduled: true,
                phase: PodPhaseRank::Pending,
                ready_since: None,
                deletion_cost: 0,
                restarts: 0,
                created: Some(e.created_at),
                template_hash: Some(e.template_hash.clone()),
            }));
        }
        observed
    }

    /// A fresh read: is this Deployment (same UID) still there and not being deleted?
    async fn still_exists(&self, deployment: &Deployment) -> Result<bool, RunnerError> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &deployment.namespace().unwrap_or_else(|| "default".into()));
        let current = api.get_opt(&deployment.name_any()).await.map_err(RunnerError::GetDeployment)?;
        Ok(current.is_some_and(|d| d.metadata.uid == deployment.metadata.uid && d.metadata.deletion_timestamp.is_none()))
    }

    async fn create_pod(&mut self, deployment: &Deployment, template_hash: &str) -> Result<Pod, RunnerError> {
        let namespace = deployment.namespace().unwrap_or_else(|| "default".into());
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let pod = pod_for(deployment, template_hash);
        let mut last_err = None;
        for _attempt in 0..5 {
            let mut candidate = pod.clone();
            let name = format!("{}-{}", deployment.name_any(), random_suffix());
            candidate.metadata.name = Some(name.clone());
            match api.create(&PostParams::default(), &candidate).await {
                Ok(created) => {
                    info!(pod = %name, "pod created");
                    self.expected.entry(deployment.metadata.uid.clone().unwrap_or_default()).or_default().push(ExpectedPod {
                        namespace: namespace.clone(),
                        name,
                        template_hash: template_hash.to_string(),
                        created: Instant::now(),
                        created_at: Timestamp::now(),
                    });
                    return Ok(created);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => last_err = Some(kube::Error::Api(s)),
                Err(e) => return Err(RunnerError::CreatePod(e)),
            }
        }
        Err(RunnerError::CreatePod(last_err.expect("five name collisions")))
    }

    /// Scale-down of one pod: its worker stops the process gracefully, then deletes the object.
    async fn delete_pod(&mut self, deployment_uid: &str, namespace: &str, name: &str) -> Result<(), RunnerError> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(worker) = self.workers.get_mut(&key) {
            let grace = worker.grace;
            info!(pod = name, grace_seconds = grace.as_secs(), "stopping pod (scale-down)");
            worker.stop(StopRequest { grace, delete_object: true, reason: "ScaleDown" });
            return Ok(());
        }
        // Not running here (not observed yet, or on another node): delete the object directly.
        if let Some(expected) = self.expected.get_mut(deployment_uid) {
            expected.retain(|e| e.name != name);
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(RunnerError::DeletePod(e)),
        }
    }

    async fn patch_status(&mut self, deployment: &Deployment, status: DeploymentStatus) -> Result<(), RunnerError> {
        let uid = deployment.metadata.uid.clone().unwrap_or_default();
        if deployment.status.as_ref() == Some(&status) {
            self.patched.remove(&uid);
            return Ok(());
        }
        if self.patched.get(&uid).is_some_and(|(s, at)| s == &status && at.elapsed() < STATUS_ECHO_WAIT) {
            return Ok(()); // already sent; the watch has not caught up yet
        }
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &deployment.namespace().unwrap_or_else(|| "default".into()));
        let patch = serde_json::json!({ "status": status });
        api.patch_status(&deployment.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(RunnerError::PatchStatus)?;
        debug!(
            replicas = status.replicas,
            ready = status.ready_replicas,
            available = status.available_replicas,
            updated = status.updated_replicas,
            "deployment status patched"
        );
        self.patched.insert(uid, (status, Instant::now()));
        Ok(())
    }

    /// Safety net for garbage collection: pods on this node whose controlling Deployment no
    /// longer exists are stopped and deleted.
    fn collect_orphans(&mut self) {
        let live: HashSet<String> = self.deployments.state().iter().filter_map(|d| d.metadata.uid.clone()).collect();
        for pod in self.pods.state() {
            let Some(owner) = pod
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true) && o.kind == "Deployment" && o.api_version == "apps/v1")
            else {
                continue;
            };
            if live.contains(&owner.uid) || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Some(worker) = self.workers.get_mut(&pod_key(&pod))
                && !worker.stopping()
                && Some(worker.uid.as_str()) == pod.metadata.uid.as_deref()
            {
                info!(namespace = %pod.namespace().unwrap_or_default(), pod = %pod.name_any(), "deployment gone; stopping orphaned pod");
                worker.stop(StopRequest { grace: worker.grace, delete_object: true, reason: "OwnerDeleted" });
            }
        }
    }

    /// Node drain: every pod stops with its grace period (concurrently) and its object is deleted.
    async fn drain(mut self) {
        for (key, worker) in &mut self.workers {
            let grace = worker.grace;
            debug!(namespace = %key.0, pod = %key.1, "draining pod");
            worker.stop(StopRequest { grace, delete_object: true, reason: "NodeShutdown" });
        }
        let count = self.workers.len();
        futures::future::join_all(self.workers.drain().map(|(_, w)| w.join())).await;
        // Pods created but never observed have no worker; remove their objects too.
        for e in self.expected.drain().flat_map(|(_, expected)| expected) {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &e.namespace);
            if let Err(error) = api.delete(&e.name, &DeleteParams::default()).await {
                debug!(namespace = %e.namespace, pod = %e.name, %error, "unobserved pod not deleted");
            }
        }
        info!(pods = count, "node drained");
    }
}

#[derive(Clone, Debug, Default)]
struct Observed {
    views: Vec<PodView>,
    terminating: usize,
}

impl Observed {
    fn state<'a>(&'a self, desired: i32, current_hash: &'a str, strategy: Strategy, min_ready: Duration, paused: bool) -> ReplicaState<'a> {
        ReplicaState { desired, current_hash, strategy, min_ready, pods: &self.views, terminating: self.terminating, paused }
    }
}

fn on_this_node(pod: &Pod) -> bool {
    match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        None => true,
        Some(node) => node == NODE_NAME,
    }
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true)).map(|o| o.uid.as_str())
}

/// The ranking-relevant facts of an observed pod.
pub fn pod_view(pod: &Pod) -> PodView {
    let status = pod.status.as_ref();
    let ready_since = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH));
    PodView {
        name: pod.name_any(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        scheduled: pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some(),
        phase: PodPhaseRank::from_phase(status.and_then(|s| s.phase.as_deref())),
        ready_since,
        deletion_cost: plan::parse_deletion_cost(
            pod.metadata.annotations.as_ref().and_then(|a| a.get(POD_DELETION_COST_ANNOTATION)).map(String::as_str),
        ),
        restarts: status.and_then(|s| s.container_statuses.as_ref()).and_then(|cs| cs.iter().map(|c| c.restart_count).max()).unwrap_or(0),
        created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
        template_hash: pod.labels().get(POD_TEMPLATE_HASH_LABEL).cloned(),
    }
}

fn expected_view(pod: &Pod) -> PodView {
    PodView { ready_since: None, phase: PodPhaseRank::Pending, ..pod_view(pod) }
}

/// The Pod a Deployment's template describes (name left to the caller).
pub fn pod_for(deployment: &Deployment, template_hash: &str) -> Pod {
    let template = deployment.spec.template.clone();
    let template_meta = template.metadata.unwrap_or_default();
    let mut labels: BTreeMap<String, String> = template_meta.labels.unwrap_or_default();
    labels.insert(POD_TEMPLATE_HASH_LABEL.to_string(), template_hash.to_string());
    let spec = PodSpec { node_name: Some(NODE_NAME.to_string()), ..template.spec.unwrap_or_default() };
    Pod {
        metadata: ObjectMeta {
            namespace: deployment.namespace(),
            labels: Some(labels),
            annotations: template_meta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".to_string(),
                kind: "Deployment".to_string(),
                name: deployment.name_any(),
                uid: deployment.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..5).map(|_| plan::NAME_ALPHABET[rng.random_range(0..plan::NAME_ALPHABET.len())] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentSpec;
    use k8s_openapi::api::core::v1::{Container, PodCondition, PodStatus, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn deployment() -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("prod".into()),
                uid: Some("d-uid".into()),
                ..Default::default()
            },
            spec: DeploymentSpec {
                replicas: Some(2),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_string(), "web".to_string())].into()),
                        annotations: Some([("note".to_string(), "x".to_string())].into()),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container { name: "main".into(), image: Some("shell".into()), ..Default::default() }],
                        termination_grace_period_seconds: Some(5),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            },
            status: None,
        }
    }

    #[test]
    fn pods_carry_template_labels_hash_and_controller_reference() {
        let pod = pod_for(&deployment(), "abc12");
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(labels.get(POD_TEMPLATE_HASH_LABEL).map(String::as_str), Some("abc12"));
        assert_eq!(pod.metadata.annotations.unwrap().get("note").map(String::as_str), Some("x"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("prod"));
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("Deployment", "web", "d-uid"));
        assert_eq!((owner.controller, owner.block_owner_deletion), (Some(true), Some(true)));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(NODE_NAME));
        assert_eq!(spec.termination_grace_period_seconds, Some(5));
        assert_eq!(spec.containers[0].name, "main");
    }

    #[test]
    fn suffixes_are_five_lowercase_alnum() {
        let s = random_suffix();
        assert_eq!(s.len(), 5);
        assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    }

    #[test]
    fn views_read_readiness_cost_restarts_and_hash() {
        let mut pod = pod_for(&deployment(), "h");
        pod.metadata.name = Some("web-x".into());
        pod.metadata.annotations = Some([(POD_DELETION_COST_ANNOTATION.to_string(), "12".to_string())].into());
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(Time(t)),
                ..Default::default()
            }]),
            container_statuses: Some(vec![k8s_openapi::api::core::v1::ContainerStatus { restart_count: 3, ..Default::default() }]),
            ..Default::default()
        });
        let v = pod_view(&pod);
        assert_eq!(v.name, "web-x");
        assert_eq!(v.ready_since, Some(t));
        assert_eq!(v.deletion_cost, 12);
        assert_eq!(v.restarts, 3);
        assert_eq!(v.phase, PodPhaseRank::Running);
        assert_eq!(v.template_hash.as_deref(), Some("h"));
        assert!(v.scheduled);
        assert!(!expected_view(&pod).ready());
    }

    #[test]
    fn node_and_terminal_filters() {
        let mut pod = pod_for(&deployment(), "h");
        assert!(on_this_node(&pod));
        pod.spec.as_mut().unwrap().node_name = Some("elsewhere".into());
        assert!(!on_this_node(&pod));
        pod.spec.as_mut().unwrap().node_name = None;
        assert!(on_this_node(&pod));
        assert!(!is_terminal(&pod));
        pod.status = Some(PodStatus { phase: Some("Succeeded".into()), ..Default::default() });
        assert!(is_terminal(&pod));
        assert_eq!(controller_uid(&pod), Some("d-uid"));
    }
}

//! The kubelet half of the runner: one task per Pod that starts its first container as a local
//! process, restarts it according to `restartPolicy` with crash backoff, reports the truth in
//! the Pod's status subresource, and on request stops it (SIGTERM, grace, SIGKILL) and
//! deletes the Pod object.
//!
//! The status a worker reports is computed by the pure [`pod_status`] from its
//! [`ContainerRuntime`]; the task only does I/O and timing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, HostIP,
    Pod, PodCondition, PodIP, PodStatus, Probe, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::{Notify, oneshot};
use tracing::{Instrument, debug, info, info_span, warn};

use super::launch::{self, EnvSources, LOCAL_IP, LaunchContext, LaunchError, SourceRef};
use super::plan::next_crash_backoff;
use super::probe::{ProbeTiming, ProbeTracker, run_probe};
use super::process::{self, ContainerProcess, Exit, ProcessGroups};

/// Everything pod workers share.
pub(crate) struct WorkerContext {
    pub client: Client,
    pub images: std::collections::HashMap<String, PathBuf>,
    pub log_dir: PathBuf,
    /// Inherited host variables followed by the runner's `extra_env`.
    pub base_env: Vec<(String, String)>,
    pub crash_backoff: Duration,
    pub max_crash_backoff: Duration,
    pub groups: ProcessGroups,
    /// Wakes the runner's control loop (a worker finished).
    pub wake: Arc<Notify>,
}

/// Why and how to stop a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StopRequest {
    pub grace: Duration,
    /// Delete the Pod object once the process is gone (scale-down, graceful deletion, drain);
    /// false when the object is already gone.
    pub delete_object: bool,
    pub reason: &'static str,
}

/// The runner's handle on one pod's worker task.
pub(crate) struct WorkerHandle {
    pub uid: String,
    /// The pod's `terminationGracePeriodSeconds`, kept for when its object is already gone.
    pub grace: Duration,
    stop: Option<oneshot::Sender<StopRequest>>,
    task: tokio::task::JoinHandle<()>,
}

impl WorkerHandle {
    pub fn spawn(ctx: Arc<WorkerContext>, pod: Pod) -> Self {
        let (tx, rx) = oneshot::channel();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let grace = grace_period(&pod);
        let span = info_span!(
            "pod",
            namespace = pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod = pod.metadata.name.as_deref().unwrap_or_default(),
        );
        let task = tokio::spawn(run_pod(ctx, pod, rx).instrument(span));
        Self { uid, grace, stop: Some(tx), task }
    }

    /// A worker for a pod that has no process (already marked for deletion when first seen):
    /// it only deletes the object.
    pub fn spawn_finalizer(ctx: Arc<WorkerContext>, pod: Pod) -> Self {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let grace = grace_period(&pod);
        let span = info_span!(
            "pod",
            namespace = pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod = pod.metadata.name.as_deref().unwrap_or_default(),
        );
        let task = tokio::spawn(
            async move {
                delete_pod_object(&ctx, &pod).await;
                ctx.wake.notify_one();
            }
            .instrument(span),
        );
        Self { uid, grace, stop: None, task }
    }

    pub fn stopping(&self) -> bool {
        self.stop.is_none()
    }

    pub fn finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Asks the worker to stop; later requests are ignored (the first one wins).
    pub fn stop(&mut self, request: StopRequest) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(request);
        }
    }

    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// `terminationGracePeriodSeconds` (default 30 s).
pub(crate) fn grace_period(pod: &Pod) -> Duration {
    let secs = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64)
}

/// State of the pod's (single) container as the worker knows it.
#[derive(Clone, Debug, PartialEq)]
pub enum ContainerPhase {
    Waiting { reason: String, message: Option<String> },
    Running { started_at: Timestamp, pid: i32 },
    Terminated(Termination),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Termination {
    pub exit: Exit,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub pid: i32,
}

/// What [`pod_status`] needs to describe a pod.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerRuntime {
    pub container_name: String,
    pub image: String,
    pub state: ContainerPhase,
    pub last_termination: Option<Termination>,
    pub restart_count: i32,
    /// The pod will not run again (restartPolicy Never/OnFailure and it is done).
    pub finished: bool,
    /// When the pod was accepted by the runner (`status.startTime`).
    pub start_time: Timestamp,
    /// When readiness last flipped (condition `lastTransitionTime`).
    pub ready_changed_at: Timestamp,
    /// The readiness probe passes (true when there is none).
    pub probe_ready: bool,
}

impl ContainerRuntime {
    pub fn ready(&self) -> bool {
        self.probe_ready && matches!(self.state, ContainerPhase::Running { .. })
    }
}

fn termination_state(t: &Termination) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: t.exit.code,
            signal: t.exit.signal,
            reason: Some(if t.exit.code == 0 { "Completed" } else { "Error" }.to_string()),
            started_at: Some(Time(t.started_at)),
            finished_at: Some(Time(t.finished_at)),
            container_id: Some(container_id(t.pid)),
            message: None,
        }),
        ..Default::default()
    }
}

fn container_id(pid: i32) -> String {
    format!("warren://{pid}")
}

/// The Pod status implied by the container runtime (pure).
pub fn pod_status(rt: &ContainerRuntime) -> PodStatus {
    let ready = rt.ready();
    let (phase, state, container_id) = match &rt.state {
        ContainerPhase::Waiting { reason, message } => {
            let phase = if rt.restart_count > 0 || rt.last_termination.is_some() { "Running" } else { "Pending" };
            let state = ContainerState {
                waiting: Some(ContainerStateWaiting { reason: Some(reason.clone()), message: message.clone() }),
                ..Default::default()
            };
            (phase, state, rt.last_termination.as_ref().map(|t| container_id(t.pid)))
        }
        ContainerPhase::Running { started_at, pid } => (
            "Running",
            ContainerState { running: Some(ContainerStateRunning { started_at: Some(Time(*started_at)) }), ..Default::default() },
            Some(container_id(*pid)),
        ),
        ContainerPhase::Terminated(t) => {
            let phase = match (rt.finished, t.exit.code) {
                (true, 0) => "Succeeded",
                (true, _) => "Failed",
                (false, _) => "Running",
            };
            (phase, termination_state(t), Some(container_id(t.pid)))
        }
    };
    let flag = |b: bool| if b { "True" } else { "False" }.to_string();
    let not_ready_reason = (!ready).then(|| "ContainersNotReady".to_string());
    let not_ready_message = (!ready).then(|| format!("containers with unready status: [{}]", rt.container_name));
    let condition = |type_: &str, status: bool, with_reason: bool| PodCondition {
        type_: type_.to_string(),
        status: flag(status),
        last_transition_time: Some(Time(if with_reason { rt.ready_changed_at } else { rt.start_time })),
        reason: if with_reason { not_ready_reason.clone() } else { None },
        message: if with_reason { not_ready_message.clone() } else { None },
        ..Default::default()
    };
    PodStatus {
        phase: Some(phase.to_string()),
        pod_ip: Some(LOCAL_IP.to_string()),
        pod_ips: Some(vec![PodIP { ip: LOCAL_IP.to_string() }]),
        host_ip: Some(LOCAL_IP.to_string()),
        host_ips: Some(vec![HostIP { ip: LOCAL_IP.to_string() }]),
        start_time: Some(Time(rt.start_time)),
        qos_class: Some("BestEffort".to_string()),
        conditions: Some(vec![
            condition("PodScheduled", true, false),
            condition("Initialized", true, false),
            condition("ContainersReady", ready, true),
            condition("Ready", ready, true),
        ]),
        container_statuses: Some(vec![ContainerStatus {
            name: rt.container_name.clone(),
            image: rt.image.clone(),
            image_id: String::new(),
            container_id,
            ready,
            started: Some(matches!(rt.state, ContainerPhase::Running { .. })),
            restart_count: rt.restart_count,
            state: Some(state),
            last_state: rt.last_termination.as_ref().map(termination_state),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// What happens after the container exits, per `restartPolicy`.
pub fn restarts_after(policy: Option<&str>, exit: Exit) -> bool {
    match policy.unwrap_or("Always") {
        "Never" => false,
        "OnFailure" => exit.code != 0,
        _ => true,
    }
}

enum Outcome {
    Exited(std::io::Result<Exit>),
    Stop(StopRequest),
    /// Kill with this grace period and restart per policy.
    LivenessFailed(Duration),
}

/// A probe with its thresholds and next due time.
struct ScheduledProbe<'a> {
    spec: &'a Probe,
    tracker: ProbeTracker,
    due: tokio::time::Instant,
}

impl<'a> ScheduledProbe<'a> {
    fn new(spec: Option<&'a Probe>, initially_passing: bool) -> Option<Self> {
        let spec = spec?;
        let timing = ProbeTiming::of(spec);
        Some(Self { spec, tracker: ProbeTracker::new(timing, initially_passing), due: tokio::time::Instant::now() + timing.initial_delay })
    }

    /// Runs the probe once; the new verdict if it flipped.
    async fn attempt(&mut self, container: &Container, env: &[(String, String)]) -> Option<bool> {
        let success = run_probe(self.spec, container, env).await;
        self.due = tokio::time::Instant::now() + self.tracker.timing.period;
        debug!(success, "probe");
        self.tracker.record(success)
    }
}

/// A dropped sender means the runner itself went away: stop at once, leave the object.
fn stop_or_abandon(r: Result<StopRequest, oneshot::error::RecvError>) -> StopRequest {
    r.unwrap_or(StopRequest { grace: Duration::ZERO, delete_object: false, reason: "RunnerGone" })
}

async fn run_pod(ctx: Arc<WorkerContext>, pod: Pod, mut stop_rx: oneshot::Receiver<StopRequest>) {
    let container = pod.spec.as_ref().and_then(|s| s.containers.first());
    let now = Timestamp::now();
    let mut rt = ContainerRuntime {
        container_name: container.map(|c| c.name.clone()).unwrap_or_default(),
        image: container.and_then(|c| c.image.clone()).unwrap_or_default(),
        state: ContainerPhase::Waiting { reason: "ContainerCreating".into(), message: None },
        last_termination: None,
        restart_count: 0,
        finished: false,
        start_time: now,
        ready_changed_at: now,
        probe_ready: true,
    };
    let policy = pod.spec.as_ref().and_then(|s| s.restart_policy.clone());
    let log_path = super::log_path(
        &ctx.log_dir,
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default(),
    );
    let mut backoff: Option<Duration> = None;
    report(&ctx, &pod, &rt).await;

    let stop = loop {
        let attempt_started = Instant::now();
        let started = match prepare(&ctx, &pod).await {
            Ok(launch) => process::spawn(&launch, &log_path, &ctx.groups)
                .map(|child| (child, launch.env))
                .map_err(|e| ("RunContainerError", format!("starting {}: {e}", launch.program.display()))),
            Err(e) => Err((e.reason(), e.to_string())),
        };
        let (mut child, env): (ContainerProcess, Vec<(String, String)>) = match started {
            Ok(started) => started,
            Err((reason, message)) => {
                warn!(reason, message, "container cannot start");
                rt.state = ContainerPhase::Waiting { reason: reason.into(), message: Some(message) };
                report(&ctx, &pod, &rt).await;
                let delay = next_crash_backoff(backoff, ctx.crash_backoff, ctx.max_crash_backoff, Duration::ZERO);
                backoff = Some(delay);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    r = &mut stop_rx => break stop_or_abandon(r),
                }
            }
        };
        let started_at = Timestamp::now();
        info!(pid = child.pid(), restart_count = rt.restart_count, "container started");
        rt.state = ContainerPhase::Running { started_at, pid: child.pid() };
        rt.ready_changed_at = started_at;
        let mut readiness = ScheduledProbe::new(container.and_then(|c| c.readiness_probe.as_ref()), false);
        let mut liveness = ScheduledProbe::new(container.and_then(|c| c.liveness_probe.as_ref()), true);
        rt.probe_ready = readiness.is_none();
        report(&ctx, &pod, &rt).await;

        let outcome = loop {
            let next_due = [readiness.as_ref(), liveness.as_ref()]
                .into_iter()
                .flatten()
                .map(|p| p.due)
                .min()
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                r = child.wait() => break Outcome::Exited(r),
                r = &mut stop_rx => break Outcome::Stop(stop_or_abandon(r)),
                _ = tokio::time::sleep_until(next_due) => {}
            }
            let (Some(container), now) = (container, tokio::time::Instant::now()) else {
                continue;
            };
            if let Some(probe) = readiness.as_mut().filter(|p| p.due <= now)
                && let Some(ready) = probe.attempt(container, &env).await
            {
                info!(ready, "readiness changed");
                rt.probe_ready = ready;
                rt.ready_changed_at = Timestamp::now();
                report(&ctx, &pod, &rt).await;
            }
            if let Some(probe) = liveness.as_mut().filter(|p| p.due <= now)
                && probe.attempt(container, &env).await == Some(false)
            {
                let grace =
                    probe.spec.termination_grace_period_seconds.map_or(grace_period(&pod), |s| Duration::from_secs(s.max(0) as u64));
                break Outcome::LivenessFailed(grace);
            }
        };
        let exit = match outcome {
            Outcome::LivenessFailed(grace) => {
                warn!(pid = child.pid(), "liveness probe failed; restarting container");
                child.terminate(grace).await.unwrap_or(Exit { code: 137, signal: Some(9) })
            }
            Outcome::Stop(request) => {
                info!(pid = child.pid(), reason = request.reason, grace_seconds = request.grace.as_secs_f64(), "stopping container");
                match child.terminate(request.grace).await {
                    Ok(exit) => info!(exit_code = exit.code, "container stopped"),
                    Err(e) => warn!(error = %e, "waiting for the container failed"),
                }
                break request;
            }
            Outcome::Exited(Ok(exit)) => exit,
            Outcome::Exited(Err(e)) => {
                warn!(error = %e, "waiting for the container failed");
                Exit { code: 255, signal: None }
            }
        };
        let finished_at = Timestamp::now();
        let termination = Termination { exit, started_at, finished_at, pid: child.pid() };
        drop(child);
        rt.ready_changed_at = finished_at;
        if !restarts_after(policy.as_deref(), exit) {
            info!(exit_code = exit.code, "container exited; not restarting");
            rt.state = ContainerPhase::Terminated(termination);
            rt.finished = true;
            report(&ctx, &pod, &rt).await;
            break stop_or_abandon((&mut stop_rx).await);
        }
        let delay = next_crash_backoff(backoff, ctx.crash_backoff, ctx.max_crash_backoff, attempt_started.elapsed());
        backoff = Some(delay);
        rt.restart_count += 1;
        warn!(
            exit_code = exit.code,
            restart_count = rt.restart_count,
            backoff_seconds = delay.as_secs_f64(),
            "container exited; restarting after backoff"
        );
        rt.state = ContainerPhase::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some(format!(
                "back-off {}s restarting failed container={} pod={}",
                delay.as_secs(),
                rt.container_name,
                pod.metadata.name.as_deref().unwrap_or_default()
            )),
        };
        rt.last_termination = Some(termination);
        report(&ctx, &pod, &rt).await;
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            r = &mut stop_rx => break stop_or_abandon(r),
        }
    };

    if stop.delete_object {
        delete_pod_object(&ctx, &pod).await;
    }
    ctx.wake.notify_one();
}

/// Fetches the Secrets/ConfigMaps the container refers to and builds its launch.
async fn prepare(ctx: &WorkerContext, pod: &Pod) -> Result<launch::Launch, LaunchError> {
    let container = pod.spec.as_ref().and_then(|s| s.containers.first()).ok_or(LaunchError::NoContainer)?;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut sources = EnvSources::default();
    for source in launch::referenced_sources(container) {
        let data = match &source {
            SourceRef::Secret(name) => {
                let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
                api.get_opt(name).await.ok().flatten().map(secret_strings)
            }
            SourceRef::ConfigMap(name) => {
                let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
                api.get_opt(name).await.ok().flatten().map(|cm| cm.data.unwrap_or_default())
            }
        };
        if let Some(data) = data {
            sources.found.insert(source, data);
        }
    }
    let is_executable = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    };
    launch::plan_launch(pod, &sources, &LaunchContext { images: &ctx.images, base_env: &ctx.base_env, is_executable: &is_executable })
}

fn secret_strings(secret: Secret) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = secret.string_data.unwrap_or_default();
    for (k, v) in secret.data.unwrap_or_default() {
        out.insert(k, String::from_utf8_lossy(&v.0).into_owned());
    }
    out
}

/// Patches the Pod status subresource; a few jittered retries, then gives up (the next
/// state change reports again).
async fn report(ctx: &WorkerContext, pod: &Pod, rt: &ContainerRuntime) {
    let (Some(ns), Some(name)) = (pod.metadata.namespace.as_deref(), pod.metadata.name.as_deref()) else {
        return;
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({ "status": pod_status(rt) });
    for attempt in 0..4u32 {
        match api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => return,
            Err(kube::Error::Api(status)) if status.code == 404 => {
                debug!("pod is gone; status not reported");
                return;
            }
            Err(e) => {
                warn!(error = %e, attempt, "pod status patch failed");
                tokio::time::sleep(retry_delay(attempt)).await;
            }
        }
    }
}

/// 100 ms doubling per attempt, ±20 % jitter.
pub(crate) fn retry_delay(attempt: u32) -> Duration {
    let base = 0.1 * f64::from(2u32.saturating_pow(attempt.min(6)));
    Duration::from_secs_f64(base * (0.8 + 0.4 * rand::random::<f64>()))
}

/// Deletes the Pod object right away (the process is already gone), guarded by its UID so a
/// newer pod with the same name is never hit.
pub(crate) async fn delete_pod_object(ctx: &WorkerContext, pod: &Pod) {
    let (Some(ns), Some(name)) = (pod.metadata.namespace.as_deref(), pod.metadata.name.as_deref()) else {
        return;
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: pod.metadata.uid.clone().map(|uid| Preconditions { uid: Some(uid), resource_version: None }),
        ..Default::default()
    };
    for attempt in 0..5u32 {
        match api.delete(name, &params).await {
            Ok(_) => {
                info!("pod object deleted");
                return;
            }
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => return,
            Err(e) => {
                warn!(error = %e, attempt, "pod delete failed");
                tokio::time::sleep(retry_delay(attempt)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn runtime(state: ContainerPhase) -> ContainerRuntime {
        ContainerRuntime {
            container_name: "main".into(),
            image: "shell".into(),
            state,
            last_termination: None,
            restart_count: 0,
            finished: false,
            start_time: ts(0),
            ready_changed_at: ts(5),
            probe_ready: true,
        }
    }

    fn condition<'a>(s: &'a PodStatus, type_: &str) -> &'a PodCondition {
        s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn pending_until_started() {
        let s = pod_status(&runtime(ContainerPhase::Waiting { reason: "ContainerCreating".into(), message: None }));
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(condition(&s, "Ready").status, "False");
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(!cs.ready);
        assert_eq!(cs.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("ContainerCreating"));
    }

    #[test]
    fn running_is_ready_with_ip_and_times() {
        let s = pod_status(&runtime(ContainerPhase::Running { started_at: ts(5), pid: 42 }));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some(LOCAL_IP));
        assert_eq!(s.host_ip.as_deref(), Some(LOCAL_IP));
        assert_eq!(s.start_time, Some(Time(ts(0))));
        for c in ["Ready", "ContainersReady", "PodScheduled", "Initialized"] {
            assert_eq!(condition(&s, c).status, "True", "{c}");
        }
        assert_eq!(condition(&s, "Ready").last_transition_time, Some(Time(ts(5))));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready);
        assert_eq!(cs.container_id.as_deref(), Some("warren://42"));
        assert!(cs.state.as_ref().unwrap().running.is_some());
    }

    #[test]
    fn running_but_failing_readiness_is_not_ready() {
        let mut rt = runtime(ContainerPhase::Running { started_at: ts(5), pid: 42 });
        rt.probe_ready = false;
        let s = pod_status(&rt);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(condition(&s, "Ready").status, "False");
        assert_eq!(condition(&s, "Ready").reason.as_deref(), Some("ContainersNotReady"));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(!cs.ready);
        assert_eq!(cs.started, Some(true));
    }

    #[test]
    fn crash_loop_reports_waiting_with_last_state() {
        let mut rt = runtime(ContainerPhase::Waiting { reason: "CrashLoopBackOff".into(), message: None });
        rt.restart_count = 2;
        rt.last_termination = Some(Termination { exit: Exit { code: 1, signal: None }, started_at: ts(1), finished_at: ts(2), pid: 7 });
        let s = pod_status(&rt);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.restart_count, 2);
        assert!(!cs.ready);
        assert_eq!(cs.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("CrashLoopBackOff"));
        let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
    }

    #[test]
    fn finished_pods_succeed_or_fail() {
        for (code, phase) in [(0, "Succeeded"), (2, "Failed")] {
            let mut rt = runtime(ContainerPhase::Terminated(Termination {
                exit: Exit { code, signal: None },
                started_at: ts(1),
                finished_at: ts(2),
                pid: 7,
            }));
            rt.finished = true;
            let s = pod_status(&rt);
            assert_eq!(s.phase.as_deref(), Some(phase));
            let t = s.container_statuses.as_ref().unwrap()[0].state.clone().unwrap().terminated.unwrap();
            assert_eq!(t.exit_code, code);
        }
    }

    #[test]
    fn restart_policy() {
        let ok = Exit { code: 0, signal: None };
        let bad = Exit { code: 1, signal: None };
        assert!(restarts_after(None, ok));
        assert!(restarts_after(Some("Always"), ok));
        assert!(restarts_after(Some("OnFailure"), bad));
        assert!(!restarts_after(Some("OnFailure"), ok));
        assert!(!restarts_after(Some("Never"), bad));
    }
}

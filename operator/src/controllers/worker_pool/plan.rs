//! The Deployment a WorkerPool should own, and the RabbitMQ objects it should have. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, EnvVar, EnvVarSource, ObjectFieldSelector, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{Resource, ResourceExt};
use warren_protocol::{names, worker_env};

use crate::crd::WorkerPool;

/// Label every worker pod of a pool carries.
pub const POOL_LABEL: &str = "warren.dev/pool";

/// The queues and exchanges of a pool, as named on the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub exchange: String,
    pub work_queues: Vec<String>,
    pub dead_letter_queue: String,
    /// Tasks whose worker was lost while they ran, waiting to run alone (`warren_worker::lost`).
    pub suspect_queue: String,
}

pub fn topology(pool: &WorkerPool) -> Topology {
    let namespace = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    Topology {
        exchange: names::pool_exchange(&namespace, &name),
        work_queues: pool.spec.priorities.iter().map(|p| names::work_queue(&namespace, &name, p)).collect(),
        dead_letter_queue: names::dead_letter_queue(&namespace, &name),
        suspect_queue: names::suspect_queue(&namespace, &name),
    }
}

/// The retry-tier queues tasks under `policy` may use, by delay in ms (the keys of
/// `status.retryQueues`).
pub fn retry_queues(namespace: &str, pool: &str, policy: &warren_protocol::RetryPolicy) -> BTreeMap<String, String> {
    warren_worker::retry::tiers(policy)
        .into_iter()
        .map(|ms| (ms.to_string(), names::retry_queue(namespace, pool, ms)))
        .collect()
}

/// Most retry tiers remembered per pool (a policy has a handful; Jobs with other policies add
/// theirs). Bounds what a status patched by hand can make the operator declare or delete.
pub const MAX_RECORDED_RETRY_TIERS: usize = 256;

/// `status.retryQueues` after this reconcile: the tiers recorded (never forgotten: a Job that is
/// gone may have left tasks behind in them) plus the tiers of the pool's own policy.
///
/// Only the recorded *delays* are read; every queue name is derived again from the pool and the
/// delay. Whoever may patch the status could otherwise list another namespace's queues there and
/// have them deleted with this pool.
pub fn recorded_retry_queues(pool: &WorkerPool) -> BTreeMap<String, String> {
    let namespace = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let recorded = pool.status.as_ref().map(|s| &s.retry_queues);
    let mut queues: BTreeMap<String, String> = recorded
        .into_iter()
        .flat_map(|r| r.keys())
        .filter_map(|delay| delay.parse::<u64>().ok())
        .take(MAX_RECORDED_RETRY_TIERS)
        .map(|ms| (ms.to_string(), names::retry_queue(&namespace, &name, ms)))
        .collect();
    if let Ok(policy) = crate::controllers::job::plan::resolve_retry(pool.spec.retry.as_ref(), None) {
        queues.extend(retry_queues(&namespace, &name, &policy));
    }
    queues
}

/// True when `name` is one of the pool's own broker objects (its exchange, or a name under it):
/// the last check before the operator deletes anything.
pub fn owned_by_pool(pool: &WorkerPool, name: &str) -> bool {
    let own = names::pool_exchange(&pool.namespace().unwrap_or_default(), &pool.name_any());
    name == own || name.strip_prefix(own.as_str()).is_some_and(|rest| rest.starts_with('.'))
}

/// Arguments of the pool's work queues.
pub fn work_queue_args(pool: &WorkerPool) -> warren_worker::topology::WorkQueueArgs {
    warren_worker::topology::WorkQueueArgs {
        max_length: pool.spec.max_queue_length,
        overflow: pool.spec.max_queue_length.map(|_| pool.spec.overflow.as_amqp().to_string()),
        ..warren_worker::topology::WorkQueueArgs::of_type(pool.spec.queue_type.as_str())
    }
}

/// The worker Deployment `<pool>-workers`, owned by the pool, with `replicas` workers
/// (`spec.replicas`, or the autoscaler's decision).
pub fn deployment(pool: &WorkerPool, replicas: i32, worker_amqp_url: &str, reports_queue: &str) -> Deployment {
    let namespace = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "warren-worker".to_string()),
        ("app.kubernetes.io/instance".to_string(), name.clone()),
        ("app.kubernetes.io/managed-by".to_string(), "warren".to_string()),
        (POOL_LABEL.to_string(), name.clone()),
    ]);
    let spec = &pool.spec;
    let plain = |k: &str, v: String| EnvVar { name: k.to_string(), value: Some(v), value_from: None };
    let mut env = vec![
        plain(worker_env::AMQP_URL, worker_amqp_url.to_string()),
        plain(worker_env::NAMESPACE, namespace.clone()),
        plain(worker_env::POOL, name.clone()),
        plain(worker_env::PRIORITIES, spec.priorities.join(",")),
        plain(worker_env::CONCURRENCY, spec.concurrency.to_string()),
        plain(worker_env::STARVATION_SECONDS, spec.starvation_seconds.to_string()),
        plain(worker_env::QUEUE_TYPE, spec.queue_type.as_str().to_string()),
        plain(worker_env::CHANNEL_PER_TASK, spec.channel_per_task.to_string()),
        plain(warren_worker::REPORTS_QUEUE_ENV, reports_queue.to_string()),
        EnvVar {
            name: worker_env::POD_NAME.to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), api_version: None }),
                ..EnvVarSource::default()
            }),
        },
    ];
    env.extend(spec.workers.env.iter().cloned());
    let args = spec.workers.handler.as_ref().map(|handler| {
        let mut args = vec!["--".to_string()];
        args.extend(handler.iter().cloned());
        args
    });
    // The restricted Pod Security Standard by default (crate::pod_security); workers never call
    // the Kubernetes API, so no service-account token is mounted.
    let (tmp_volume, tmp_mount) = crate::pod_security::tmp_volume();
    let container_security = spec.workers.security_context.clone().unwrap_or_else(crate::pod_security::container_defaults);
    let pod_security = spec.workers.pod_security_context.clone().unwrap_or_else(crate::pod_security::pod_defaults);
    Deployment {
        metadata: ObjectMeta {
            name: Some(pool.deployment_name()),
            namespace: Some(namespace),
            labels: Some(labels.clone()),
            owner_references: pool.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(POOL_LABEL.to_string(), name)])),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "worker".into(),
                        image: Some(spec.workers.image.clone()),
                        command: spec.workers.command.clone(),
                        args,
                        env: Some(env),
                        resources: spec.workers.resources.clone(),
                        security_context: Some(container_security),
                        volume_mounts: Some(vec![tmp_mount]),
                        ..Container::default()
                    }],
                    automount_service_account_token: Some(false),
                    security_context: Some(pod_security),
                    volumes: Some(vec![tmp_volume]),
                    termination_grace_period_seconds: Some(
                        spec.workers.termination_grace_period_seconds.unwrap_or(30),
                    ),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

/// Name of the worker container's metrics port.
pub const METRICS_PORT_NAME: &str = "metrics";

/// Makes the worker container serve `/metrics`, `/healthz`, `/readyz` on `port`: the
/// `WARREN_METRICS_ADDR` variable (before the pool's own env, which may override it), a named
/// container port for scraping (PodMonitor), a readiness probe (ready = consuming) and a lenient
/// liveness probe (the process answers).
pub fn expose_metrics(deployment: &mut Deployment, port: u16) {
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction, Probe};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let Some(pod) = deployment.spec.template.spec.as_mut() else { return };
    let Some(container) = pod.containers.first_mut() else { return };
    let env = container.env.get_or_insert_with(Vec::new);
    env.insert(0, EnvVar { name: warren_worker::METRICS_ADDR_ENV.into(), value: Some(format!("0.0.0.0:{port}")), value_from: None });
    container.ports = Some(vec![ContainerPort {
        name: Some(METRICS_PORT_NAME.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }]);
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction { path: Some(path.into()), port: IntOrString::String(METRICS_PORT_NAME.into()), ..HTTPGetAction::default() }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    container.readiness_probe = Some(probe("/readyz", 5, 3));
    container.liveness_probe = Some(probe("/healthz", 10, 6));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::WorkerPoolSpec;

    fn pool(spec: serde_json::Value) -> WorkerPool {
        let spec: WorkerPoolSpec = serde_json::from_value(spec).unwrap();
        let mut pool = WorkerPool::new("images", spec);
        pool.metadata.namespace = Some("media".into());
        pool.metadata.uid = Some("uid-1".into());
        pool
    }

    #[test]
    fn metrics_port_adds_env_port_and_probes_and_the_pool_env_still_wins() {
        let p = pool(serde_json::json!({"workers": {"env": [{"name": "WARREN_METRICS_ADDR", "value": "0.0.0.0:9999"}]}}));
        let mut d = deployment(&p, 1, "amqp://rabbit", "warren.reports");
        assert_eq!(d.spec.template.spec.as_ref().unwrap().containers[0].ports, None);
        expose_metrics(&mut d, 9465);
        let c = &d.spec.template.spec.unwrap().containers[0];
        let addrs: Vec<_> = c.env.as_ref().unwrap().iter().filter(|e| e.name == "WARREN_METRICS_ADDR").map(|e| e.value.clone().unwrap()).collect();
        assert_eq!(addrs, ["0.0.0.0:9465", "0.0.0.0:9999"], "the operator's first, the pool's last (last wins)");
        let port = &c.ports.as_ref().unwrap()[0];
        assert_eq!((port.name.as_deref(), port.container_port), (Some("metrics"), 9465));
        let ready = c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        let live = c.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(live.path.as_deref(), Some("/healthz"));
    }

    #[test]
    fn deployment_runs_the_handler_with_the_pool_settings() {
        let p = pool(serde_json::json!({
            "workers": {"handler": ["python3", "resize.py"], "env": [{"name": "MODE", "value": "fast"}]},
            "concurrency": 4, "replicas": 2, "priorities": ["high", "low"]
        }));
        let d = deployment(&p, p.spec.replicas, "amqp://rabbit", "warren.reports");
        assert_eq!(d.metadata.name.as_deref(), Some("images-workers"));
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("WorkerPool", "uid-1", Some(true)));
        let spec = d.spec;
        assert_eq!(spec.replicas, Some(2));
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("warren-worker"));
        assert_eq!(c.command, None);
        assert_eq!(c.args.as_deref().unwrap(), ["--", "python3", "resize.py"]);
        let env: BTreeMap<_, _> = c.env.as_ref().unwrap().iter().map(|e| (e.name.as_str(), e.value.clone())).collect();
        assert_eq!(env["WARREN_PRIORITIES"].as_deref(), Some("high,low"));
        assert_eq!(env["WARREN_CONCURRENCY"].as_deref(), Some("4"));
        assert_eq!(env["WARREN_QUEUE_TYPE"].as_deref(), Some("classic"));
        assert_eq!(env["WARREN_NAMESPACE"].as_deref(), Some("media"));
        assert_eq!(env["MODE"].as_deref(), Some("fast"));
        assert_eq!(env["WARREN_REPORTS_QUEUE"].as_deref(), Some("warren.reports"));
        assert_eq!(env["WARREN_POD_NAME"], None, "pod name comes from the downward API");
        assert_eq!(pod.termination_grace_period_seconds, Some(30));
    }

    #[test]
    fn worker_pods_meet_the_restricted_pod_security_standard_and_mount_no_token() {
        let p = pool(serde_json::json!({"workers": {"handler": ["sh", "-c", "true"]}}));
        let mut d = deployment(&p, 1, "amqp://rabbit", "warren.reports");
        expose_metrics(&mut d, 9465);
        let pod = d.spec.template.spec.unwrap();
        assert_eq!(crate::pod_security::restricted_violations(&pod), Vec::<String>::new());
        assert_eq!(pod.automount_service_account_token, Some(false), "workers never call the API");
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!((psc.run_as_user, psc.run_as_group), (Some(65532), Some(65532)));
        // The read-only root filesystem leaves /tmp writable, from an emptyDir.
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(mount.mount_path, "/tmp");
        let volume = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == mount.name).unwrap();
        assert!(volume.empty_dir.is_some());
    }

    #[test]
    fn a_pool_may_replace_the_security_contexts() {
        let p = pool(serde_json::json!({"workers": {
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": false},
            "podSecurityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
        }}));
        let pod = deployment(&p, 1, "amqp://rabbit", "warren.reports").spec.template.spec.unwrap();
        assert_eq!(pod.containers[0].security_context.as_ref().unwrap().read_only_root_filesystem, Some(false));
        assert_eq!(pod.security_context.as_ref().unwrap().run_as_user, Some(1000));
        assert_eq!(crate::pod_security::restricted_violations(&pod), Vec::<String>::new(), "still restricted");
        let root = pool(serde_json::json!({"workers": {"podSecurityContext": {"runAsUser": 0}}}));
        let pod = deployment(&root, 1, "amqp://rabbit", "warren.reports").spec.template.spec.unwrap();
        let violations = crate::pod_security::restricted_violations(&pod);
        assert!(violations.iter().any(|v| v.contains("runAsUser must not be 0")), "{violations:?}");
    }

    #[test]
    fn retry_queues_are_recorded_from_the_policy_and_never_forgotten() {
        let mut p = pool(serde_json::json!({"workers": {}, "retry": {"maxAttempts": 3, "backoff": {"initialDelay": "500ms"}}}));
        let recorded = recorded_retry_queues(&p);
        assert_eq!(
            recorded.into_iter().collect::<Vec<_>>(),
            [("1000".into(), "warren.media.images.retry.1000ms".into()), ("500".into(), "warren.media.images.retry.500ms".into())]
        );
        p.status = Some(crate::crd::WorkerPoolStatus {
            retry_queues: BTreeMap::from([("7000".into(), "warren.media.images.retry.7000ms".into())]),
            ..Default::default()
        });
        let recorded = recorded_retry_queues(&p);
        assert_eq!(recorded.keys().map(String::as_str).collect::<Vec<_>>(), ["1000", "500", "7000"]);
    }

    #[test]
    fn deletion_trusts_only_names_derived_from_the_pool_never_those_in_its_status() {
        let mut p = pool(serde_json::json!({"workers": {}, "retry": {"maxAttempts": 1}}));
        p.status = Some(crate::crd::WorkerPoolStatus {
            retry_queues: BTreeMap::from([
                // A forged value under a real delay: the name is derived again.
                ("7000".into(), "warren.other.victim.q.high".into()),
                // Not a delay: ignored.
                ("evil".into(), "warren.other.victim.dlq".into()),
            ]),
            ..Default::default()
        });
        let recorded = recorded_retry_queues(&p);
        assert_eq!(recorded.into_iter().collect::<Vec<_>>(), [("7000".into(), "warren.media.images.retry.7000ms".into())]);

        let many: BTreeMap<String, String> = (0..10_000u64).map(|ms| (ms.to_string(), String::new())).collect();
        p.status = Some(crate::crd::WorkerPoolStatus { retry_queues: many, ..Default::default() });
        assert_eq!(recorded_retry_queues(&p).len(), MAX_RECORDED_RETRY_TIERS);

        for (name, owned) in [
            ("warren.media.images", true),
            ("warren.media.images.q.high", true),
            ("warren.media.images.retry.1000ms", true),
            ("warren.media.imagesx.q.high", false),
            ("warren.other.victim.q.high", false),
            ("warren.media", false),
        ] {
            assert_eq!(owned_by_pool(&p, name), owned, "{name}");
        }
    }

    #[test]
    fn topology_names_one_queue_per_class() {
        let t = topology(&pool(serde_json::json!({"workers": {}})));
        assert_eq!(t.work_queues, ["warren.media.images.q.high", "warren.media.images.q.normal", "warren.media.images.q.low"]);
        assert_eq!(t.dead_letter_queue, "warren.media.images.dlq");
    }
}

//! The Deployment a WorkerPool should own, and the RabbitMQ objects it should have. Pure.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ObjectFieldSelector, PodSpec, PodTemplateSpec, Secret, SecretKeySelector,
};
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
    /// Tasks whose worker was lost while they ran, waiting to run alone (the worker's `lost` module).
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
    warren_protocol::retry::tiers(policy).into_iter().map(|ms| (ms.to_string(), names::retry_queue(namespace, pool, ms))).collect()
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
pub fn work_queue_args(pool: &WorkerPool) -> warren_protocol::topology::WorkQueueArgs {
    warren_protocol::topology::WorkQueueArgs {
        max_length: pool.spec.max_queue_length,
        overflow: pool.spec.max_queue_length.map(|_| pool.spec.overflow.as_amqp().to_string()),
        ..warren_protocol::topology::WorkQueueArgs::of_type(pool.spec.queue_type.as_str())
    }
}

/// The worker Deployment `<pool>-workers`, owned by the pool, with `replicas` workers
/// (`spec.replicas`, or the autoscaler's decision).
/// Key of the URI in the Secret the operator writes for a pool.
pub const BROKER_SECRET_KEY: &str = "url";

/// The Secret and key the pool's workers read their broker URI from: the pool's own
/// `brokerSecretRef`, or the one the operator writes for it ([`broker_secret`]).
pub fn broker_secret_key(pool: &WorkerPool) -> (String, String) {
    match &pool.spec.workers.broker_secret_ref {
        Some(r) => (r.name.clone(), r.key.clone()),
        None => (owned_broker_secret_name(pool), BROKER_SECRET_KEY.to_string()),
    }
}

/// Name of the Secret the operator writes for a pool without `brokerSecretRef`.
pub fn owned_broker_secret_name(pool: &WorkerPool) -> String {
    format!("{}-warren-broker", pool.name_any())
}

/// The Secret holding the workers' broker URI, owned by the pool (deleted with it); `None` when
/// the pool names its own.
pub fn broker_secret(pool: &WorkerPool, worker_amqp_url: &str) -> Option<Secret> {
    if pool.spec.workers.broker_secret_ref.is_some() {
        return None;
    }
    Some(Secret {
        metadata: ObjectMeta {
            name: Some(owned_broker_secret_name(pool)),
            namespace: pool.namespace(),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/managed-by".to_string(), "warren".to_string()),
                (POOL_LABEL.to_string(), pool.name_any()),
            ])),
            owner_references: pool.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(BROKER_SECRET_KEY.to_string(), ByteString(worker_amqp_url.as_bytes().to_vec()))])),
        ..Secret::default()
    })
}

/// Why a Secret the pool names cannot serve its workers: missing, or without the key.
pub fn broker_secret_problem(pool: &WorkerPool, found: Option<&Secret>) -> Option<String> {
    let r = pool.spec.workers.broker_secret_ref.as_ref()?;
    let namespace = pool.namespace().unwrap_or_default();
    match found {
        None => Some(format!("Secret {:?} (spec.workers.brokerSecretRef) not found in namespace {namespace:?}", r.name)),
        Some(secret) => {
            let has = secret.data.as_ref().is_some_and(|d| d.contains_key(&r.key))
                || secret.string_data.as_ref().is_some_and(|d| d.contains_key(&r.key));
            (!has).then(|| format!("Secret {:?} has no key {:?} (spec.workers.brokerSecretRef.key)", r.name, r.key))
        }
    }
}

/// How the workers reach the broker and the operator: the same for every pool of an operator.
#[derive(Clone, Copy, Debug)]
pub struct Wiring<'a> {
    /// The broker address (or comma-separated addresses) as the worker pods see it.
    pub amqp_url: &'a str,
    pub reports_queue: &'a str,
    /// `classic` or `quorum`, as the operator declares the reports queue.
    pub reports_queue_type: &'a str,
    /// Image of a pool that names none.
    pub worker_image: &'a str,
    /// The operator's control-message public key (hex): the workers apply only what it signed.
    pub control_public_key: Option<&'a str>,
}

/// The operator's default worker image: `warren-worker` of its own version.
pub fn default_worker_image() -> String {
    format!("warren-worker:{}", env!("CARGO_PKG_VERSION"))
}

/// A default worker image must say which build it is: a tag other than `latest`, or a digest.
/// (A pool's own `image` is the user's choice.)
pub fn check_worker_image(image: &str) -> Result<(), String> {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    // The tag follows the last ':' after the last '/' (a registry host may have a port).
    let last = name.rsplit('/').next().unwrap_or(name);
    let tag = last.split_once(':').map(|(_, tag)| tag);
    match (tag, digest) {
        (_, Some(d)) if d.starts_with("sha256:") && d.len() == 71 => Ok(()),
        (_, Some(d)) => Err(format!("worker image {image:?}: digest {d:?} is not sha256:<64 hex digits>")),
        (Some("latest"), None) => Err(format!("worker image {image:?}: `latest` does not say which build runs; use the version tag")),
        (Some(t), None) if !t.is_empty() => Ok(()),
        _ => Err(format!("worker image {image:?} has no tag; use the version tag (e.g. warren-worker:{})", env!("CARGO_PKG_VERSION"))),
    }
}

pub fn deployment(pool: &WorkerPool, replicas: i32, wiring: &Wiring) -> Deployment {
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
        // Never a literal: whoever may read Deployments must not learn the broker password.
        EnvVar {
            name: worker_env::AMQP_URL.to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some({
                    let (name, key) = broker_secret_key(pool);
                    SecretKeySelector { name, key, optional: Some(false) }
                }),
                ..EnvVarSource::default()
            }),
        },
        // The pool's report key, with which its workers sign their reports: only this pool's
        // pods mount it (docs/security.md).
        EnvVar {
            name: worker_env::REPORT_KEY.to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: crate::report_keys::secret_name(&name),
                    key: crate::report_keys::SECRET_KEY.to_string(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        },
        plain(worker_env::NAMESPACE, namespace.clone()),
        plain(worker_env::POOL, name.clone()),
        plain(worker_env::PRIORITIES, spec.priorities.join(",")),
        plain(worker_env::CONCURRENCY, spec.concurrency.to_string()),
        plain(worker_env::STARVATION_SECONDS, spec.starvation_seconds.to_string()),
        plain(worker_env::QUEUE_TYPE, spec.queue_type.as_str().to_string()),
        plain(worker_env::CHANNEL_PER_TASK, spec.channel_per_task.to_string()),
        plain(warren_protocol::worker_env::REPORTS_QUEUE, wiring.reports_queue.to_string()),
        plain(worker_env::REPORTS_QUEUE_TYPE, wiring.reports_queue_type.to_string()),
    ];
    if let Some(key) = wiring.control_public_key {
        // Public: only the operator's private key signs what it verifies.
        env.push(plain(worker_env::CONTROL_PUBLIC_KEY, key.to_string()));
    }
    env.extend([EnvVar {
        name: worker_env::POD_NAME.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), api_version: None }),
            ..EnvVarSource::default()
        }),
    }]);
    env.extend(spec.workers.env.iter().cloned());
    let args = spec.workers.handler.as_ref().map(|handler| {
        let mut args = vec!["--".to_string()];
        args.extend(handler.iter().cloned());
        args
    });
    // The restricted Pod Security Standard by default (crate::pod_security); workers never call
    // the Kubernetes API, so no service-account token is mounted.
    let workers = &spec.workers;
    let (tmp_volume, tmp_mount) = crate::pod_security::tmp_volume();
    let container_security = workers.security_context.clone().unwrap_or_else(crate::pod_security::container_defaults);
    let pod_security = workers.pod_security_context.clone().unwrap_or_else(crate::pod_security::pod_defaults);
    // The pool's own volumes and mounts; the default /tmp unless the pool brings its own.
    let mut volumes = workers.volumes.clone();
    if !volumes.iter().any(|v| v.name == tmp_volume.name) {
        volumes.push(tmp_volume);
    }
    let mut mounts = workers.volume_mounts.clone();
    if !mounts.iter().any(|m| m.mount_path == tmp_mount.mount_path) {
        mounts.push(tmp_mount);
    }
    // Warren's labels win: the Deployment's selector and the autoscaler rely on them.
    let mut pod_labels = workers.pod_labels.clone();
    pod_labels.extend(labels.clone());
    let some = |map: &BTreeMap<String, String>| (!map.is_empty()).then(|| map.clone());
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
            selector: LabelSelector { match_labels: Some(BTreeMap::from([(POOL_LABEL.to_string(), name)])), match_expressions: None },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: some(&workers.pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "worker".into(),
                        image: Some(spec.workers.image.clone().unwrap_or_else(|| wiring.worker_image.to_string())),
                        command: spec.workers.command.clone(),
                        args,
                        env: Some(env),
                        env_from: (!workers.env_from.is_empty()).then(|| workers.env_from.clone()),
                        resources: spec.workers.resources.clone(),
                        security_context: Some(container_security),
                        volume_mounts: Some(mounts),
                        ..Container::default()
                    }],
                    automount_service_account_token: Some(workers.automount_service_account_token.unwrap_or(false)),
                    service_account_name: workers.service_account_name.clone(),
                    image_pull_secrets: (!workers.image_pull_secrets.is_empty()).then(|| workers.image_pull_secrets.clone()),
                    node_selector: some(&workers.node_selector),
                    tolerations: (!workers.tolerations.is_empty()).then(|| workers.tolerations.clone()),
                    affinity: workers.affinity.clone(),
                    topology_spread_constraints: (!workers.topology_spread_constraints.is_empty())
                        .then(|| workers.topology_spread_constraints.clone()),
                    priority_class_name: workers.priority_class_name.clone(),
                    security_context: Some(pod_security),
                    volumes: Some(volumes),
                    termination_grace_period_seconds: Some(spec.workers.termination_grace_period_seconds.unwrap_or(30)),
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
    env.insert(
        0,
        EnvVar { name: warren_protocol::worker_env::METRICS_ADDR.into(), value: Some(format!("0.0.0.0:{port}")), value_from: None },
    );
    container.ports = Some(vec![ContainerPort {
        name: Some(METRICS_PORT_NAME.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }]);
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(METRICS_PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    container.readiness_probe = Some(probe("/readyz", 5, 3));
    container.liveness_probe = Some(probe("/healthz", 10, 6));
}

/// Where the broker TLS Secret (`--worker-tls-secret`) is mounted in a worker container.
pub const BROKER_TLS_DIR: &str = "/etc/warren/broker-tls";
/// The name of its volume in the worker pod.
pub const BROKER_TLS_VOLUME: &str = "warren-broker-tls";
/// The Secret's keys, as cert-manager and `kubectl create secret tls` write them: the CA that
/// signed the broker's certificate, and the workers' client certificate and key (mutual TLS).
pub const TLS_CA_KEY: &str = "ca.crt";
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";

/// What the broker TLS Secret gives the workers of a pool: its name, and whether it holds the CA
/// and a client certificate with its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerTls {
    pub secret: String,
    pub ca: bool,
    pub client_certificate: bool,
}

/// The broker TLS mount of a pool from the Secret found in its namespace, and what is wrong with
/// it (for the pool's `Ready` condition, reason `SecretNotFound`). A missing Secret is still
/// mounted (as holding `ca.crt`): the pods wait for it, as the kubelet makes them, and start once
/// it exists.
pub fn broker_tls(secret: &str, namespace: &str, found: Option<&Secret>) -> (BrokerTls, Option<String>) {
    let Some(found) = found else {
        let problem = format!("Secret {secret:?} (the broker TLS Secret, --worker-tls-secret) not found in namespace {namespace:?}");
        return (BrokerTls { secret: secret.to_string(), ca: true, client_certificate: false }, Some(problem));
    };
    let has = |key: &str| {
        found.data.as_ref().is_some_and(|d| d.contains_key(key)) || found.string_data.as_ref().is_some_and(|d| d.contains_key(key))
    };
    let (ca, cert, key) = (has(TLS_CA_KEY), has(TLS_CERT_KEY), has(TLS_KEY_KEY));
    let problem = match (ca, cert, key) {
        (_, true, false) | (_, false, true) => Some(format!(
            "Secret {secret:?} (broker TLS) holds only one of {TLS_CERT_KEY:?} and {TLS_KEY_KEY:?}: a client certificate needs both"
        )),
        (false, false, false) => {
            Some(format!("Secret {secret:?} (broker TLS) holds none of {TLS_CA_KEY:?}, {TLS_CERT_KEY:?} with {TLS_KEY_KEY:?}"))
        }
        _ => None,
    };
    (BrokerTls { secret: secret.to_string(), ca, client_certificate: cert && key }, problem)
}

/// Mounts the broker TLS Secret read-only at [`BROKER_TLS_DIR`] in the worker container and
/// points the worker at its files (`WARREN_AMQP_CA_FILE`, and `WARREN_AMQP_CLIENT_CERT_FILE` /
/// `WARREN_AMQP_CLIENT_KEY_FILE` for mutual TLS), before the pool's own env, which may override
/// them. The files are used for `amqps://` broker addresses only.
pub fn mount_broker_tls(deployment: &mut Deployment, tls: &BrokerTls) {
    use k8s_openapi::api::core::v1::{SecretVolumeSource, Volume, VolumeMount};
    let Some(pod) = deployment.spec.template.spec.as_mut() else { return };
    let volumes = pod.volumes.get_or_insert_with(Vec::new);
    volumes.retain(|v| v.name != BROKER_TLS_VOLUME);
    volumes.push(Volume {
        name: BROKER_TLS_VOLUME.into(),
        secret: Some(SecretVolumeSource { secret_name: Some(tls.secret.clone()), optional: Some(false), ..SecretVolumeSource::default() }),
        ..Volume::default()
    });
    let Some(container) = pod.containers.first_mut() else { return };
    let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
    mounts.retain(|m| m.name != BROKER_TLS_VOLUME);
    mounts.push(VolumeMount {
        name: BROKER_TLS_VOLUME.into(),
        mount_path: BROKER_TLS_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    let file = |name: &str, key: &str| EnvVar { name: name.into(), value: Some(format!("{BROKER_TLS_DIR}/{key}")), value_from: None };
    let mut vars = Vec::new();
    if tls.ca {
        vars.push(file(worker_env::AMQP_CA_FILE, TLS_CA_KEY));
    }
    if tls.client_certificate {
        vars.push(file(worker_env::AMQP_CLIENT_CERT_FILE, TLS_CERT_KEY));
        vars.push(file(worker_env::AMQP_CLIENT_KEY_FILE, TLS_KEY_KEY));
    }
    let env = container.env.get_or_insert_with(Vec::new);
    env.splice(0..0, vars);
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIRING: Wiring<'static> = Wiring {
        amqp_url: "amqp://rabbit",
        reports_queue: "warren.reports",
        reports_queue_type: "classic",
        worker_image: "warren-worker:1.2.3",
        control_public_key: None,
    };

    #[test]
    fn a_default_worker_image_says_which_build_it_is() {
        assert_eq!(default_worker_image(), format!("warren-worker:{}", env!("CARGO_PKG_VERSION")));
        for ok in ["warren-worker:0.1.0", "registry.example:5000/team/warren-worker:0.1.0", &format!("w@sha256:{}", "a".repeat(64))] {
            assert_eq!(check_worker_image(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("warren-worker", "has no tag"),
            ("registry.example:5000/warren-worker", "has no tag"),
            ("warren-worker:latest", "`latest`"),
            ("warren-worker@md5:00", "is not sha256"),
        ] {
            let err = check_worker_image(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
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
        let mut d = deployment(&p, 1, &WIRING);
        assert_eq!(d.spec.template.spec.as_ref().unwrap().containers[0].ports, None);
        expose_metrics(&mut d, 9465);
        let c = &d.spec.template.spec.unwrap().containers[0];
        let addrs: Vec<_> =
            c.env.as_ref().unwrap().iter().filter(|e| e.name == "WARREN_METRICS_ADDR").map(|e| e.value.clone().unwrap()).collect();
        assert_eq!(addrs, ["0.0.0.0:9465", "0.0.0.0:9999"], "the operator's first, the pool's last (last wins)");
        let port = &c.ports.as_ref().unwrap()[0];
        assert_eq!((port.name.as_deref(), port.container_port), (Some("metrics"), 9465));
        let ready = c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        let live = c.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(live.path.as_deref(), Some("/healthz"));
    }

    #[test]
    fn the_report_key_reaches_workers_only_through_the_pools_own_secret() {
        let p = pool(serde_json::json!({"workers": {}}));
        let pod = deployment(&p, 1, &WIRING).spec.template.spec.unwrap();
        let key = pod.containers[0].env.as_ref().unwrap().iter().find(|e| e.name == "WARREN_REPORT_KEY").unwrap().clone();
        assert_eq!(key.value, None, "never a literal");
        let selector = key.value_from.unwrap().secret_key_ref.unwrap();
        assert_eq!((selector.name.as_str(), selector.key.as_str(), selector.optional), ("images-warren-report-key", "key", Some(false)));
    }

    #[test]
    fn the_broker_tls_secret_is_mounted_read_only_and_the_worker_pointed_at_its_files() {
        let secret = |keys: &[&str]| Secret {
            data: Some(keys.iter().map(|k| (k.to_string(), ByteString(b"PEM".to_vec()))).collect()),
            ..Secret::default()
        };
        let p = pool(serde_json::json!({"workers": {"env": [{"name": "WARREN_AMQP_CA_FILE", "value": "/mine/ca.pem"}]}}));
        let (tls, problem) = broker_tls("rabbit-tls", "media", Some(&secret(&["ca.crt", "tls.crt", "tls.key"])));
        assert_eq!((tls.ca, tls.client_certificate, problem), (true, true, None));
        let mut d = deployment(&p, 1, &WIRING);
        mount_broker_tls(&mut d, &tls);
        let pod = d.spec.template.spec.unwrap();
        let volumes: Vec<_> = pod.volumes.unwrap().into_iter().filter(|v| v.name == "warren-broker-tls").collect();
        assert_eq!(volumes.len(), 1);
        let source = volumes[0].secret.clone().unwrap();
        assert_eq!((source.secret_name.as_deref(), source.optional), (Some("rabbit-tls"), Some(false)));
        let c = &pod.containers[0];
        let mounts: Vec<_> = c.volume_mounts.clone().unwrap().into_iter().filter(|m| m.name == "warren-broker-tls").collect();
        assert_eq!(mounts.len(), 1);
        assert_eq!((mounts[0].mount_path.as_str(), mounts[0].read_only), ("/etc/warren/broker-tls", Some(true)));
        let env = c.env.clone().unwrap();
        let values = |name: &str| env.iter().filter(|e| e.name == name).map(|e| e.value.clone().unwrap()).collect::<Vec<_>>();
        assert_eq!(
            values("WARREN_AMQP_CA_FILE"),
            ["/etc/warren/broker-tls/ca.crt", "/mine/ca.pem"],
            "the pool's own env comes last: it wins"
        );
        assert_eq!(values("WARREN_AMQP_CLIENT_CERT_FILE"), ["/etc/warren/broker-tls/tls.crt"]);
        assert_eq!(values("WARREN_AMQP_CLIENT_KEY_FILE"), ["/etc/warren/broker-tls/tls.key"]);
        assert!(env.iter().all(|e| e.value.as_deref().is_none_or(|v| !v.contains("PEM"))), "only paths, never the contents");

        // A CA only: no client certificate variables.
        let (ca_only, problem) = broker_tls("rabbit-tls", "media", Some(&secret(&["ca.crt"])));
        assert_eq!((ca_only.ca, ca_only.client_certificate, problem), (true, false, None));
        let mut d = deployment(&p, 1, &WIRING);
        mount_broker_tls(&mut d, &ca_only);
        let env = d.spec.template.spec.unwrap().containers[0].env.clone().unwrap();
        assert!(!env.iter().any(|e| e.name.starts_with("WARREN_AMQP_CLIENT_")));

        // What is wrong with the Secret is said on the pool.
        let (missing, problem) = broker_tls("rabbit-tls", "media", None);
        assert!(missing.ca, "mounted anyway: the pods wait for the Secret");
        assert_eq!(
            problem.as_deref(),
            Some("Secret \"rabbit-tls\" (the broker TLS Secret, --worker-tls-secret) not found in namespace \"media\"")
        );
        assert!(broker_tls("t", "media", Some(&secret(&["ca.crt", "tls.crt"]))).1.unwrap().contains("only one of"));
        assert!(broker_tls("t", "media", Some(&secret(&["url"]))).1.unwrap().contains("holds none of"));
        let (client_only, problem) = broker_tls("t", "media", Some(&secret(&["tls.crt", "tls.key"])));
        assert_eq!((client_only.ca, client_only.client_certificate, problem), (false, true, None), "a public CA needs no ca.crt");
    }

    #[test]
    fn the_broker_uri_reaches_workers_only_through_a_secret() {
        let p = pool(serde_json::json!({"workers": {}}));
        let env_of = |p: &WorkerPool| {
            let pod = deployment(p, 1, &WIRING).spec.template.spec.unwrap();
            pod.containers[0].env.clone().unwrap().into_iter().find(|e| e.name == "WARREN_AMQP_URL").unwrap()
        };
        let url = env_of(&p);
        assert_eq!(url.value, None, "never a literal value in the Deployment");
        let selector = url.value_from.unwrap().secret_key_ref.unwrap();
        assert_eq!((selector.name.as_str(), selector.key.as_str()), ("images-warren-broker", "url"));
        let secret = broker_secret(&p, "amqp://u:secret@rabbit/%2f").expect("the operator writes one");
        assert_eq!(secret.metadata.name.as_deref(), Some("images-warren-broker"));
        assert_eq!(secret.data.unwrap()["url"].0, b"amqp://u:secret@rabbit/%2f");
        assert_eq!(secret.metadata.owner_references.unwrap()[0].kind, "WorkerPool", "deleted with the pool");
        assert_eq!(broker_secret_problem(&p, None), None, "an operator-written Secret is never missing");

        // A pool naming its own Secret: used as is, checked for existence and key.
        let own = pool(serde_json::json!({"workers": {"brokerSecretRef": {"name": "rabbit-creds", "key": "uri"}}}));
        let selector = env_of(&own).value_from.unwrap().secret_key_ref.unwrap();
        assert_eq!((selector.name.as_str(), selector.key.as_str()), ("rabbit-creds", "uri"));
        assert!(broker_secret(&own, "amqp://x").is_none(), "the operator writes none");
        assert_eq!(
            broker_secret_problem(&own, None).as_deref(),
            Some("Secret \"rabbit-creds\" (spec.workers.brokerSecretRef) not found in namespace \"media\"")
        );
        let mut found = Secret { data: Some(BTreeMap::from([("url".to_string(), ByteString(b"amqp://x".to_vec()))])), ..Secret::default() };
        assert_eq!(
            broker_secret_problem(&own, Some(&found)).as_deref(),
            Some("Secret \"rabbit-creds\" has no key \"uri\" (spec.workers.brokerSecretRef.key)")
        );
        found.data.as_mut().unwrap().insert("uri".into(), ByteString(b"amqp://x".to_vec()));
        assert_eq!(broker_secret_problem(&own, Some(&found)), None);
    }

    #[test]
    fn the_pod_template_fields_of_a_pool_land_in_the_worker_pod() {
        let p = pool(serde_json::json!({"workers": {
            "serviceAccountName": "resizer",
            "automountServiceAccountToken": true,
            "imagePullSecrets": [{"name": "registry"}],
            "nodeSelector": {"gpu": "a100"},
            "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}],
            "priorityClassName": "batch-low",
            "volumes": [{"name": "creds", "secret": {"secretName": "s3"}}],
            "volumeMounts": [{"name": "creds", "mountPath": "/creds", "readOnly": true}],
            "envFrom": [{"configMapRef": {"name": "settings"}}],
            "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}],
            "podLabels": {"team": "media", "warren.dev/pool": "forged"},
            "podAnnotations": {"sidecar.istio.io/inject": "false"},
        }}));
        let d = deployment(&p, 1, &WIRING);
        let template = d.spec.template;
        let meta = template.metadata.unwrap();
        let labels = meta.labels.unwrap();
        assert_eq!(labels["team"], "media");
        assert_eq!(labels["warren.dev/pool"], "images", "Warren's labels win: the selector relies on them");
        assert_eq!(meta.annotations.unwrap()["sidecar.istio.io/inject"], "false");
        let pod = template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("resizer"));
        assert_eq!(pod.automount_service_account_token, Some(true), "turned back on by the user");
        assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "registry");
        assert_eq!(pod.node_selector.unwrap()["gpu"], "a100");
        assert_eq!(pod.tolerations.unwrap()[0].key.as_deref(), Some("spot"));
        assert!(pod.affinity.unwrap().node_affinity.is_some());
        assert_eq!(pod.topology_spread_constraints.unwrap()[0].topology_key, "zone");
        assert_eq!(pod.priority_class_name.as_deref(), Some("batch-low"));
        let volumes: Vec<_> = pod.volumes.unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(volumes, ["creds", "tmp"], "the pool's volumes, and the default /tmp");
        let c = &pod.containers[0];
        let mounts: Vec<_> = c.volume_mounts.as_ref().unwrap().iter().map(|m| m.mount_path.as_str()).collect();
        assert_eq!(mounts, ["/creds", "/tmp"]);
        assert_eq!(c.env_from.as_ref().unwrap()[0].config_map_ref.as_ref().unwrap().name, "settings");
        let token = c.env.as_ref().unwrap().iter().find(|e| e.name == "TOKEN").unwrap();
        assert_eq!(token.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().name, "api");
        // A pool bringing its own /tmp gets no second one.
        let own = pool(serde_json::json!({"workers": {
            "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory"}}],
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        }}));
        let pod = deployment(&own, 1, &WIRING).spec.template.spec.unwrap();
        let volumes = pod.volumes.unwrap();
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0].empty_dir.as_ref().unwrap().medium.as_deref(), Some("Memory"));
        assert_eq!(pod.containers[0].volume_mounts.as_ref().unwrap().len(), 1);
        assert_eq!(pod.automount_service_account_token, Some(false), "off unless asked for");
    }

    #[test]
    fn deployment_runs_the_handler_with_the_pool_settings() {
        let p = pool(serde_json::json!({
            "workers": {"handler": ["python3", "resize.py"], "env": [{"name": "MODE", "value": "fast"}]},
            "concurrency": 4, "replicas": 2, "priorities": ["high", "low"]
        }));
        let d = deployment(&p, p.spec.replicas, &WIRING);
        assert_eq!(d.metadata.name.as_deref(), Some("images-workers"));
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("WorkerPool", "uid-1", Some(true)));
        let spec = d.spec;
        assert_eq!(spec.replicas, Some(2));
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("warren-worker:1.2.3"), "the operator's worker image");
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
        let mut d = deployment(&p, 1, &WIRING);
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
        let pod = deployment(&p, 1, &WIRING).spec.template.spec.unwrap();
        assert_eq!(pod.containers[0].security_context.as_ref().unwrap().read_only_root_filesystem, Some(false));
        assert_eq!(pod.security_context.as_ref().unwrap().run_as_user, Some(1000));
        assert_eq!(crate::pod_security::restricted_violations(&pod), Vec::<String>::new(), "still restricted");
        let root = pool(serde_json::json!({"workers": {"podSecurityContext": {"runAsUser": 0}}}));
        let pod = deployment(&root, 1, &WIRING).spec.template.spec.unwrap();
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

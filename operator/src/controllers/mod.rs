//! The controllers and what they share.

pub mod index;
pub mod job;
pub mod schedule;
pub mod worker_pool;
pub mod workflow;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::broker::Broker;
use crate::crd::{Job, WorkerPool};
use crate::workers::WorkerRegistry;
use job::book::JobBook;

/// Operator settings, parsed once at start.
#[derive(Clone, Debug)]
pub struct Config {
    /// AMQP URI the operator connects with.
    pub amqp_url: String,
    /// AMQP URI given to worker pods (the same broker, as seen from the pods).
    pub worker_amqp_url: String,
    /// Broker TLS of the operator's own connections (`amqps://` addresses): `--amqp-ca-file`,
    /// `--amqp-client-cert-file`, `--amqp-client-key-file`.
    pub amqp_tls: warren_protocol::amqp::Tls,
    /// Secret (in each pool's namespace) mounted into every worker pod for broker TLS
    /// (`--worker-tls-secret`): keys `ca.crt`, and `tls.crt` with `tls.key` for mutual TLS.
    pub worker_tls_secret: Option<String>,
    /// Tasks per confirmed publish batch, and the most bytes of payload one Job may enqueue.
    pub limits: job::plan::Limits,
    /// Minimum time between two status writes of one Job.
    pub status_interval: Duration,
    /// Queue the workers report to; one per Warren installation on a broker (vhost).
    pub reports_queue: String,
    /// `classic` (default) or `quorum`: replicated, so that on a RabbitMQ cluster the loss of one
    /// node does not stop every Job's accounting.
    pub reports_queue_type: String,
    /// Image of the workers of a pool that names none (`--worker-image`).
    pub worker_image: String,
    /// The only namespace watched (`WARREN_WATCH_NAMESPACE`); all namespaces when unset.
    pub watch_namespace: Option<String>,
    /// How often queue depths are sampled for the metrics.
    pub queue_stats_interval: Duration,
    /// Port of the workers' `/metrics`, `/healthz`, `/readyz` (container port and probes of the
    /// worker Deployment); none = the workers serve no endpoints (local runs: all pods share one
    /// host, so a fixed port would clash).
    pub worker_metrics_port: Option<u16>,
    /// Lease-based leader election (more than one operator replica); none = always lead.
    pub leader_election: Option<crate::leader::LeaseSettings>,
    /// Which worker reports are applied, by their signature.
    pub report_signatures: crate::report_keys::SignaturePolicy,
    /// The control-message public key (hex) the workers verify with; set by [`crate::run`]
    /// from [`crate::control_key`].
    pub control_public_key: Option<String>,
    /// Completion events (`spec.notify`): allowed destinations, retries.
    pub notify: crate::notify::Settings,
}

impl Default for Config {
    fn default() -> Self {
        let url = "amqp://guest:guest@127.0.0.1:5672/%2f".to_string();
        Self {
            amqp_url: url.clone(),
            worker_amqp_url: url,
            amqp_tls: warren_protocol::amqp::Tls::default(),
            worker_tls_secret: None,
            limits: job::plan::Limits::default(),
            status_interval: Duration::from_secs(1),
            reports_queue: warren_protocol::names::REPORTS_QUEUE.to_string(),
            reports_queue_type: "classic".to_string(),
            worker_image: worker_pool::plan::default_worker_image(),
            watch_namespace: None,
            queue_stats_interval: Duration::from_secs(5),
            worker_metrics_port: None,
            leader_election: None,
            report_signatures: crate::report_keys::SignaturePolicy::Required,
            control_public_key: None,
            notify: crate::notify::Settings::default(),
        }
    }
}

impl Config {
    /// What every worker Deployment is told about the broker and the reports queue.
    pub fn wiring(&self) -> worker_pool::plan::Wiring<'_> {
        worker_pool::plan::Wiring {
            amqp_url: &self.worker_amqp_url,
            reports_queue: &self.reports_queue,
            reports_queue_type: &self.reports_queue_type,
            worker_image: &self.worker_image,
            control_public_key: self.control_public_key.as_deref(),
        }
    }

    /// An API over the watched namespace, or over all namespaces when none is set.
    pub fn watched<K>(&self, client: Client) -> kube::Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match &self.watch_namespace {
            Some(namespace) => kube::Api::namespaced(client, namespace),
            None => kube::Api::all(client),
        }
    }
}

/// Everything a reconcile needs; built once in [`crate::run`].
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub broker: Broker,
    pub book: Arc<JobBook>,
    pub workers: Arc<WorkerRegistry>,
    pub pools: Store<WorkerPool>,
    /// Signs the control broadcasts ([`crate::control_key`]).
    pub control_signer: Arc<warren_protocol::control_signature::Signer>,
    /// True once `pools` holds the first list.
    pub pools_synced: tokio::sync::watch::Receiver<bool>,
    pub backoff: ErrorBackoff,
    /// Per-pool autoscaler state (history, rates) and its Event recorder.
    pub autoscalers: worker_pool::scale::Autoscalers,
    /// Pools with a queue on a broker node that is down.
    pub queue_health: Arc<crate::queue_health::QueueHealth>,
    /// The pools' report keys (written by the pool controller, read by the report consumer).
    pub report_keys: Arc<crate::report_keys::ReportKeys>,
    /// The pools' circuit breakers.
    pub circuits: Arc<crate::admission::Circuits>,
}

/// Per-object exponential backoff with jitter for failed reconciles.
#[derive(Default)]
pub struct ErrorBackoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl ErrorBackoff {
    /// Delay before retrying `key` after one more failure: 1 s doubling to 5 min, ±20 % jitter.
    pub fn next(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("backoff lock");
        let n = failures.entry(key.to_string()).or_default();
        *n = n.saturating_add(1);
        let base = (1u64 << (*n - 1).min(9)).min(300) as f64;
        Duration::from_secs_f64(base * (0.8 + 0.4 * rand::random::<f64>()))
    }

    pub fn reset(&self, key: &str) {
        self.failures.lock().expect("backoff lock").remove(key);
    }
}

/// One watch of a kind shared by the controllers that read it: one cache (without
/// `managedFields`, which nothing reads) instead of one per controller, and one stream of the
/// objects that change, each controller subscribing to it. The store is updated before an object
/// reaches a subscriber, so a reconcile never reads an older object than its trigger — a Job
/// triggered by its pool's change reads that change. [`SharedWatch::run`] must be driven for the
/// subscribers to see anything.
///
/// The objects are broadcast by this module, not by kube's `store_shared` dispatcher: its
/// subscriber stream (`ReflectHandle`, kube-runtime 5.0) answers `Pending` without asking to be
/// woken when the object it was told about is gone from the store (deleted in between). Inside
/// a controller's set of trigger streams such a subscriber is never polled again; its channel
/// then fills and the whole watch waits on it — every controller of the kind stops seeing
/// changes (seen as an operator that went silent right after a Job was deleted). Here a
/// subscriber receives the object itself, so there is nothing to look up and nothing to lose.
pub struct SharedWatch<K: Resource<DynamicType = ()> + Clone + 'static> {
    pub store: Store<K>,
    writer: reflector::store::Writer<K>,
    api: kube::Api<K>,
    changes: async_broadcast::Sender<Arc<K>>,
    /// True once the first list is in the store.
    synced: tokio::sync::watch::Sender<bool>,
    /// The store's objects by relation ([`index`]).
    index: Arc<index::Index<K>>,
    /// Keeps the channel open while no subscriber is (subscribers are made before `run`).
    _inactive: async_broadcast::InactiveReceiver<Arc<K>>,
}

/// The Jobs, for the Job and the Workflow controllers.
pub type JobWatch = SharedWatch<Job>;
/// The WorkerPools, for the pool controller and the Job controller (a Job waits for its pool).
pub type PoolWatch = SharedWatch<WorkerPool>;

/// A subscriber's stream of changed objects (see [`SharedWatch::subscribe`]).
pub type Changes<K> = async_broadcast::Receiver<Arc<K>>;

/// Objects a subscriber may fall behind by before the watch waits for it.
const EVENT_BUFFER: usize = 1024;

impl<K> SharedWatch<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    /// A watch of every object of the kind, indexed by `keys` ([`index::no_keys`]: none).
    pub fn new(client: Client, config: &Config, keys: index::Keys<K>) -> Self {
        let (store, writer) = reflector::store();
        let (mut changes, inactive) = async_broadcast::broadcast(EVENT_BUFFER);
        // Wait for slow subscribers rather than drop a change they must see; send even while
        // none is subscribed (then nobody waits).
        changes.set_overflow(false);
        changes.set_await_active(false);
        let (synced, _) = tokio::sync::watch::channel(false);
        let index = Arc::new(index::Index::new(keys, store.clone()));
        Self { store, writer, api: config.watched(client), changes, synced, index, _inactive: inactive.deactivate() }
    }

    /// The store's objects by relation.
    pub fn index(&self) -> Arc<index::Index<K>> {
        self.index.clone()
    }

    /// Turns true once the store holds the first list (what a consumer that must see every
    /// object, not an empty store at start-up, waits for).
    pub fn synced(&self) -> tokio::sync::watch::Receiver<bool> {
        self.synced.subscribe()
    }

    /// A stream of the objects the watch sees change (subscribe before [`SharedWatch::run`]).
    pub fn subscribe(&self) -> Changes<K> {
        self.changes.new_receiver()
    }

    /// Watches until the stream ends; watch errors are retried with backoff.
    pub async fn run(self) {
        let kind = K::kind(&());
        let changes = self.changes;
        // A (re)list's objects are sent once the store holds all of them (at `InitDone`).
        let mut listed: Vec<Arc<K>> = Vec::new();
        let mut events = std::pin::pin!(
            watcher(self.api, watcher::Config::default())
                .default_backoff()
                .modify(|object: &mut K| object.managed_fields_mut().clear())
                .reflect(self.writer)
        );
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(object)) => {
                    self.index.apply(&object);
                    let _ = changes.broadcast_direct(Arc::new(object)).await;
                }
                Ok(watcher::Event::InitApply(object)) => listed.push(Arc::new(object)),
                Ok(watcher::Event::InitDone) => {
                    self.index.relisted(&listed);
                    self.synced.send_replace(true);
                    for object in std::mem::take(&mut listed) {
                        let _ = changes.broadcast_direct(object).await;
                    }
                }
                Ok(watcher::Event::Delete(object)) => self.index.delete(&object),
                Ok(watcher::Event::Init) => listed.clear(),
                Err(error) => tracing::warn!(%error, %kind, "watching failed; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_per_object_and_resets() {
        let b = ErrorBackoff::default();
        let first = b.next("a");
        assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
        for _ in 0..20 {
            b.next("a");
        }
        assert!(b.next("a") <= Duration::from_secs(360));
        assert!(b.next("b") <= Duration::from_millis(1200), "other objects are not affected");
        b.reset("a");
        assert!(b.next("a") <= Duration::from_millis(1200));
    }
}

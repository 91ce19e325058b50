//! The controllers and what they share.

pub mod job;
pub mod worker_pool;
pub mod workflow;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::reflector::{self, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::book::JobBook;
use crate::broker::Broker;
use crate::crd::{Job, WorkerPool};
use crate::workers::WorkerRegistry;

/// The recorder of the Events the operator emits (scaling, Job transitions).
pub fn event_recorder(client: Client) -> kube::runtime::events::Recorder {
    let reporter = kube::runtime::events::Reporter { controller: "warren-operator".into(), instance: None };
    kube::runtime::events::Recorder::new(client, reporter)
}

/// Operator settings, parsed once at start.
#[derive(Clone, Debug)]
pub struct Config {
    /// AMQP URI the operator connects with.
    pub amqp_url: String,
    /// AMQP URI given to worker pods (the same broker, as seen from the pods).
    pub worker_amqp_url: String,
    /// Tasks per confirmed publish batch, and the most bytes of payload one Job may enqueue.
    pub limits: job::plan::Limits,
    /// Minimum time between two status writes of one Job.
    pub status_interval: Duration,
    /// Queue the workers report to; one per Warren installation on a broker (vhost).
    pub reports_queue: String,
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
}

impl Default for Config {
    fn default() -> Self {
        let url = "amqp://guest:guest@127.0.0.1:5672/%2f".to_string();
        Self {
            amqp_url: url.clone(),
            worker_amqp_url: url,
            limits: job::plan::Limits::default(),
            status_interval: Duration::from_secs(1),
            reports_queue: warren_protocol::names::REPORTS_QUEUE.to_string(),
            watch_namespace: None,
            queue_stats_interval: Duration::from_secs(5),
            worker_metrics_port: None,
            leader_election: None,
        }
    }
}

impl Config {
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
    pub backoff: ErrorBackoff,
    /// Per-pool autoscaler state (history, rates) and its Event recorder.
    pub autoscalers: worker_pool::scale::Autoscalers,
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

/// The operator's one watch of the Jobs, shared by the Job and the Workflow controllers: one
/// cache (without `managedFields`, which nothing reads) instead of one per controller, and one
/// stream of events each controller subscribes to. The store is updated before an event reaches
/// a subscriber, so a reconcile never reads an older Job than its trigger. [`JobWatch::run`]
/// must be driven for the subscribers to see anything.
pub struct JobWatch {
    pub store: Store<Job>,
    writer: reflector::store::Writer<Job>,
    api: kube::Api<Job>,
}

/// Events a subscriber may fall behind by before the watch waits for it.
const JOB_EVENT_BUFFER: usize = 1024;

impl JobWatch {
    pub fn new(client: Client, config: &Config) -> Self {
        let (store, writer) = reflector::store_shared(JOB_EVENT_BUFFER);
        Self { store, writer, api: config.watched(client) }
    }

    /// A stream of the Jobs the watch sees change (subscribe before [`JobWatch::run`]).
    pub fn subscribe(&self) -> ReflectHandle<Job> {
        self.writer.subscribe().expect("a shared store hands out subscribers")
    }

    /// Watches until the stream ends; watch errors are retried with backoff.
    pub async fn run(self) {
        watcher(self.api, watcher::Config::default())
            .default_backoff()
            .modify(|job: &mut Job| job.managed_fields_mut().clear())
            .reflect_shared(self.writer)
            .for_each(|event| {
                if let Err(error) = event {
                    tracing::warn!(%error, "watching Jobs failed; retrying");
                }
                futures::future::ready(())
            })
            .await;
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

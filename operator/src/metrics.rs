//! Every metric of the operator, prefix `warren_operator_`. Labels are bounded: controller,
//! reason, namespace, pool, priority — never a Job name.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub namespace: String,
    pub pool: String,
    pub priority: String,
}

/// Labels of the autoscaler's per-pool gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScalePoolLabels {
    pub namespace: String,
    pub pool: String,
}

/// Labels of a replica change by the autoscaler.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleLabels {
    pub namespace: String,
    pub pool: String,
    /// `up` or `down`.
    pub direction: &'static str,
    /// The decision's reason (`autoscaler::Reason::as_str`).
    pub reason: &'static str,
}

pub struct Metrics {
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub tasks_published: Family<PoolLabels, Counter>,
    pub status_writes: Counter,
    pub broker_connected: Gauge,
    pub broker_reconnects: Counter,
    pub autoscaler_desired_replicas: Family<ScalePoolLabels, Gauge>,
    pub autoscaler_backlog: Family<ScalePoolLabels, Gauge>,
    pub autoscaler_scales: Family<ScaleLabels, Counter>,
    registry: Registry,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("warren_operator");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        let tasks_published = Family::<PoolLabels, Counter>::default();
        let status_writes = Counter::default();
        let broker_connected = Gauge::default();
        let broker_reconnects = Counter::default();
        registry.register("reconcile", "Reconcile runs per controller", reconciles.clone());
        registry.register("reconcile_errors", "Failed reconciles per controller and reason", reconcile_errors.clone());
        registry.register("reconcile_duration_seconds", "Reconcile duration per controller", reconcile_duration.clone());
        registry.register("tasks_published", "Tasks published to RabbitMQ and confirmed", tasks_published.clone());
        registry.register("status_writes", "Job status writes", status_writes.clone());
        registry.register("broker_connected", "1 while the report consumer is connected to RabbitMQ", broker_connected.clone());
        registry.register("broker_reconnects", "Reconnects to RabbitMQ", broker_reconnects.clone());
        let autoscaler_desired_replicas = Family::<ScalePoolLabels, Gauge>::default();
        let autoscaler_backlog = Family::<ScalePoolLabels, Gauge>::default();
        let autoscaler_scales = Family::<ScaleLabels, Counter>::default();
        registry.register("autoscaler_desired_replicas", "Worker replicas the autoscaler last decided per pool", autoscaler_desired_replicas.clone());
        registry.register("autoscaler_backlog", "Ready tasks in a pool's work queues at the last autoscaler poll", autoscaler_backlog.clone());
        registry.register("autoscaler_scales", "Replica changes by the autoscaler per pool, direction and reason", autoscaler_scales.clone());
        Self {
            reconciles,
            reconcile_errors,
            reconcile_duration,
            tasks_published,
            status_writes,
            broker_connected,
            broker_reconnects,
            autoscaler_desired_replicas,
            autoscaler_backlog,
            autoscaler_scales,
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("metrics encode");
        out
    }
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

//! The WorkerPool controller: declares the pool's RabbitMQ topology, owns its worker Deployment,
//! and removes the queues on deletion when `deletionPolicy: Delete` (via a finalizer, because
//! the queues live outside Kubernetes).

pub mod plan;
pub mod scale;
pub mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::watcher;
use tracing::Instrument;

use super::Context;
use crate::broker::BrokerError;
use crate::conditions;
use crate::crd::{DeletionPolicy, WorkerPool, WorkerPoolStatus};
use crate::metrics::{self, ControllerLabels, ErrorLabels};

const CONTROLLER: &str = "workerpool";
/// Finalizer guarding the pool's queues.
pub const FINALIZER: &str = "warren.dev/queues";
/// Field manager of every server-side apply of the operator.
pub const FIELD_MANAGER: &str = "warren-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("declaring the pool's queues: {0}")]
    Topology(#[from] warren_protocol::topology::TopologyError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Broker(e) => e.reason(),
            // A queue on a stopped broker node: not a refusal, and it comes back with the node.
            Error::Topology(warren_protocol::topology::TopologyError::Declare { source, .. }) if crate::broker::is_unavailable(source) => {
                "QueueUnavailable"
            }
            Error::Topology(e) => e.reason(),
            Error::Kube(_) => "KubeApiError",
            Error::Finalizer(_) => "FinalizerError",
        }
    }
}

/// How soon a pool whose broker Secret is missing looks again.
const SECRET_RECHECK: Duration = Duration::from_secs(10);

async fn reconcile(pool: Arc<WorkerPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    metrics::global().reconciles.get_or_create(&ControllerLabels { controller: CONTROLLER }).inc();
    let span = tracing::info_span!("reconcile", kind = "WorkerPool", namespace = pool.namespace(), name = pool.name_any());
    let api: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), &pool.namespace().unwrap_or_default());
    let result = finalizer(&api, FINALIZER, pool, |event| async {
        match event {
            Event::Apply(pool) => apply(pool, &ctx).await,
            Event::Cleanup(pool) => cleanup(pool, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    metrics::global()
        .reconcile_duration
        .get_or_create(&ControllerLabels { controller: CONTROLLER })
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn apply(pool: Arc<WorkerPool>, ctx: &Context) -> Result<Action, Error> {
    let namespace = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let topology = plan::topology(&pool);

    // An autoscaled pool is reconciled every poll interval: re-declare its topology only on a
    // new generation, after a failure, or every minute.
    let uid = pool.uid().unwrap_or_default();
    let declared = if pool.spec.autoscaling.is_some() && ctx.autoscalers.declared_recently(&uid, pool.metadata.generation) {
        Ok(())
    } else {
        let result = declare(&pool, ctx).await;
        ctx.autoscalers.set_declared(&uid, pool.metadata.generation, result.is_ok());
        result
    };
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);

    // Autoscaling: observe, decide, and (before a scale-down) mark idle pods cheapest to delete.
    let mut scaled = None;
    let mut scaling_error = None;
    let replicas = match (&pool.spec.autoscaling, &declared) {
        (Some(spec), Ok(())) => {
            let existing = deployments.get_opt(&pool.deployment_name()).await?;
            let current = existing.as_ref().and_then(|d| d.spec.replicas).unwrap_or(0).max(0) as u32;
            // Retries due and suspects waiting to run alone both need a worker.
            let mut retry_queues: Vec<String> = plan::recorded_retry_queues(&pool).into_values().collect();
            retry_queues.push(topology.suspect_queue.clone());
            match ctx.autoscalers.poll(&pool, spec, current, &topology.work_queues, &retry_queues, ctx).await {
                Ok(s) => {
                    if s.decision.desired < current {
                        ctx.autoscalers.mark_deletion_costs(&ctx.client, &pool, &ctx.workers).await?;
                    }
                    let desired = s.decision.desired as i32;
                    scaled = Some(s);
                    desired
                }
                Err(e) => {
                    // Cannot see the queues: keep the current count, declare again next time.
                    ctx.autoscalers.set_declared(&uid, pool.metadata.generation, false);
                    scaling_error = Some((e.reason(), e.to_string()));
                    current as i32
                }
            }
        }
        (Some(_), Err(_)) => {
            let existing = deployments.get_opt(&pool.deployment_name()).await?;
            existing.and_then(|d| d.spec.replicas).unwrap_or(0)
        }
        (None, _) => pool.spec.replicas,
    };
    // The workers' broker URI: in the Secret the operator writes for the pool, or in the one the
    // pool names (which must exist and hold the key).
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret_problem = match plan::broker_secret(&pool, &ctx.config.worker_amqp_url) {
        Some(secret) => {
            let name = secret.metadata.name.clone().unwrap_or_default();
            secrets.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&secret)).await?;
            None
        }
        None => {
            let (name, _) = plan::broker_secret_key(&pool);
            plan::broker_secret_problem(&pool, secrets.get_opt(&name).await?.as_ref())
        }
    };
    // The report key before the workers: a worker never runs without the key it signs with.
    ctx.report_keys.ensure(&pool).await?;
    let mut desired = plan::deployment(&pool, replicas, &ctx.config.wiring());
    if let Some(port) = ctx.config.worker_metrics_port {
        plan::expose_metrics(&mut desired, port);
    }
    let tls_problem = mount_broker_tls(&mut desired, &secrets, &namespace, ctx).await?;
    let secret_problem = secret_problem.or(tls_problem);
    let applied = deployments.patch(&pool.deployment_name(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&desired)).await?;
    if let Some(s) = scaled.as_mut()
        && s.decision.desired != s.current
    {
        ctx.autoscalers.scaled(&pool, s).await;
    }

    let ready = applied.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
    let replicas_now = applied.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let unavailable = ctx.queue_health.unavailable(&namespace, &name);
    let mut wanted = vec![status::ready_condition(
        declared.as_ref().err(),
        secret_problem.as_deref(),
        unavailable.as_deref(),
        topology.work_queues.len(),
        (ready, replicas),
    )];
    if pool.spec.autoscaling.is_some() {
        wanted.extend(status::scaling_conditions(scaled.as_ref(), scaling_error.as_ref(), declared.as_ref().err()));
    }
    let circuit = status::circuit_condition(&ctx.circuits.state(&namespace, &name), pool.spec.circuit_breaker.as_ref());
    let previous = pool.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    if let Some(circuit) = &circuit {
        // An Event when the circuit changes (not when it was already so).
        let before = previous.iter().find(|c| c.type_ == "CircuitOpen");
        if before.is_none_or(|c| c.reason != circuit.reason) && (circuit.status || before.is_some()) {
            let event = kube::runtime::events::Event {
                type_: if circuit.status { kube::runtime::events::EventType::Warning } else { kube::runtime::events::EventType::Normal },
                reason: format!("Circuit{}", circuit.reason),
                note: Some(circuit.message.clone()),
                action: "CircuitBreaker".into(),
                secondary: None,
            };
            ctx.circuits.announce(&pool, event).await;
        }
    }
    wanted.extend(circuit);
    let status = WorkerPoolStatus {
        replicas: replicas_now,
        ready_replicas: ready,
        queues: topology.work_queues.clone(),
        dead_letter_queue: Some(topology.dead_letter_queue.clone()),
        retry_queues: plan::recorded_retry_queues(&pool),
        conditions: conditions::merge(previous, &wanted, pool.metadata.generation, &Time(jiff::Timestamp::now())),
        observed_generation: pool.metadata.generation,
        desired_replicas: Some(replicas),
        autoscaling: match scaled {
            Some(s) => Some(s.status),
            None => pool.spec.autoscaling.as_ref().and_then(|_| pool.status.as_ref().and_then(|s| s.autoscaling.clone())),
        },
        // The admission loop writes the backlog (crate::admission::backlog); compared as it is,
        // and left out of this patch so that a cached copy never overwrites a newer one.
        backlog: pool.status.as_ref().and_then(|s| s.backlog.clone()),
    };
    if pool.status.as_ref() != Some(&status) {
        let api: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = serde_json::json!({ "status": WorkerPoolStatus { backlog: None, ..status } });
        let written = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await;
        metrics::global().record_status_write(metrics::WORKER_POOL, &written);
        written?;
    }
    declared?;
    ctx.backoff.reset(&pool.uid().unwrap_or_default());
    if secret_problem.is_some() {
        // Nothing watches the Secret: look again soon for it to appear.
        return Ok(Action::requeue(SECRET_RECHECK));
    }
    Ok(match &pool.spec.autoscaling {
        Some(spec) => Action::requeue(Duration::from_secs(spec.poll_interval_seconds.clamp(1, 300) as u64)),
        None => {
            ctx.autoscalers.forget(&pool.uid().unwrap_or_default());
            Action::requeue(Duration::from_secs(300))
        }
    })
}

/// With `--worker-tls-secret`: mounts the broker TLS Secret into the worker pods, as the Secret
/// of that name in the pool's namespace says (CA, client certificate); what is wrong with it.
async fn mount_broker_tls(
    desired: &mut Deployment,
    secrets: &Api<Secret>,
    namespace: &str,
    ctx: &Context,
) -> Result<Option<String>, Error> {
    let Some(name) = &ctx.config.worker_tls_secret else { return Ok(None) };
    let (tls, problem) = plan::broker_tls(name, namespace, secrets.get_opt(name).await?.as_ref());
    plan::mount_broker_tls(desired, &tls);
    Ok(problem)
}

async fn declare(pool: &WorkerPool, ctx: &Context) -> Result<(), Error> {
    let args = plan::work_queue_args(pool);
    match declare_with(pool, ctx, &args).await {
        // Queues declared before Warren set `x-queue-version` keep their version: RabbitMQ does
        // not change it on a re-declaration (delete the queues to move them to version 2).
        Err(Error::Topology(e)) if args.classic_version.is_some() && e.is_inequivalent_arg("x-queue-version") => {
            tracing::info!("the pool's classic queues exist with another queue version; keeping it");
            declare_with(pool, ctx, &args.legacy()).await
        }
        result => result,
    }
}

async fn declare_with(pool: &WorkerPool, ctx: &Context, args: &warren_protocol::topology::WorkQueueArgs) -> Result<(), Error> {
    // Scratch channels: a refused (inequivalent) declaration closes its channel, and must not
    // close the one the Job controller publishes on.
    let channel = ctx.broker.scratch().await?;
    let (namespace, name) = (pool.namespace().unwrap_or_default(), pool.name_any());
    warren_protocol::topology::declare_pool(&channel, &namespace, &name, &pool.spec.priorities, args).await?;
    // Every recorded retry tier too, the way workers declare theirs on demand: the autoscaler
    // counts the retries waiting in them. Not fatal: a tier an older version declared otherwise
    // still works for the workers, and a missing one counts 0.
    let mut channel = channel;
    for delay in plan::recorded_retry_queues(pool).keys().filter_map(|k| k.parse::<u64>().ok()) {
        let queue_type = pool.spec.queue_type.as_str();
        if let Err(error) = warren_protocol::topology::declare_retry_tier(&channel, &namespace, &name, delay, queue_type).await {
            tracing::warn!(%error, delay_ms = delay, "could not declare a retry tier of the pool");
            channel = ctx.broker.scratch().await?;
        }
    }
    Ok(())
}

async fn cleanup(pool: Arc<WorkerPool>, ctx: &Context) -> Result<Action, Error> {
    ctx.autoscalers.forget(&pool.uid().unwrap_or_default());
    if pool.spec.deletion_policy == DeletionPolicy::Delete {
        let topology = plan::topology(&pool);
        let mut queues = topology.work_queues.clone();
        queues.push(topology.dead_letter_queue.clone());
        queues.push(topology.suspect_queue.clone());
        // Workers declare retry tiers on demand; every tier a Job of this pool may use was
        // recorded in the status before its tasks were enqueued.
        queues.extend(plan::recorded_retry_queues(&pool).into_values());
        let namespace = pool.namespace().unwrap_or_default();
        let retry_exchange = warren_protocol::topology::retry_exchange(&namespace, &pool.name_any());
        let mut exchanges = vec![topology.exchange.clone(), retry_exchange];
        for names in [&mut queues, &mut exchanges] {
            names.retain(|name| {
                let owned = plan::owned_by_pool(&pool, name);
                if !owned {
                    tracing::error!(name, "refusing to delete a broker object outside the pool's prefix");
                }
                owned
            });
        }
        ctx.broker.delete(&queues, &exchanges).await?;
        tracing::info!(queues = queues.len(), "deleted the pool's queues (deletionPolicy: Delete)");
    } else {
        tracing::info!("kept the pool's queues (deletionPolicy: Retain)");
    }
    Ok(Action::await_change())
}

fn error_policy(pool: Arc<WorkerPool>, error: &Error, ctx: Arc<Context>) -> Action {
    metrics::global().reconcile_errors.get_or_create(&ErrorLabels { controller: CONTROLLER, reason: error.reason() }).inc();
    let delay = ctx.backoff.next(&pool.uid().unwrap_or_default());
    tracing::warn!(namespace = pool.namespace(), name = pool.name_any(), reason = error.reason(), %error, ?delay, "WorkerPool reconcile failed");
    Action::requeue(delay)
}

/// The pool controller, not yet running: it reads the operator's shared pool watch.
pub fn controller(client: kube::Client, config: &super::Config, pools: &super::PoolWatch) -> Controller<WorkerPool> {
    let deployments: Api<Deployment> = config.watched(client);
    Controller::for_shared_stream(pools.subscribe(), pools.store.clone()).owns(deployments, watcher::Config::default())
}

/// Runs the controller; `triggers` asks for reconciles from outside the watches (a pool whose
/// queues became unavailable or available again: [`crate::queue_health`]).
pub async fn run(
    controller: Controller<WorkerPool>,
    ctx: Arc<Context>,
    triggers: futures::channel::mpsc::UnboundedReceiver<kube::runtime::reflector::ObjectRef<WorkerPool>>,
    circuit_triggers: futures::channel::mpsc::UnboundedReceiver<kube::runtime::reflector::ObjectRef<WorkerPool>>,
) {
    controller
        .reconcile_on(triggers)
        .reconcile_on(circuit_triggers)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

//! Building a [`Worker`]: the configuration overrides given in code (the rest comes from the
//! environment at [`WorkerBuilder::build`]) and the registered task handlers, with the rule that
//! picks a task's handler. Configuration only: nothing here touches the broker.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ConfigOverrides, WorkerConfig};
use crate::context::{TaskContext, TaskResult};

use super::{Worker, WorkerError};

type BoxedTask = Pin<Box<dyn Future<Output = TaskResult> + Send + 'static>>;
/// A registered task handler.
pub type Handler = Arc<dyn Fn(TaskContext) -> BoxedTask + Send + Sync>;

fn boxed<F, Fut>(f: F) -> Handler
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = TaskResult> + Send + 'static,
{
    Arc::new(move |ctx| Box::pin(f(ctx)) as BoxedTask)
}

#[derive(Clone, Default)]
pub(super) struct Handlers {
    default: Option<Handler>,
    by_type: HashMap<String, Handler>,
}

impl Handlers {
    /// The handler for a task: the one registered for its type, else the default one.
    pub(super) fn select(&self, task_type: Option<&str>) -> Option<&Handler> {
        task_type.and_then(|t| self.by_type.get(t)).or(self.default.as_ref())
    }
}

/// Builds a [`Worker`]: settings not given here come from the environment at [`build`](Self::build).
#[derive(Default)]
pub struct WorkerBuilder {
    overrides: ConfigOverrides,
    handlers: Handlers,
}

impl WorkerBuilder {
    pub fn amqp_url(mut self, url: impl Into<String>) -> Self {
        self.overrides.amqp_url = Some(url.into());
        self
    }
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.overrides.namespace = Some(namespace.into());
        self
    }
    pub fn pool(mut self, pool: impl Into<String>) -> Self {
        self.overrides.pool = Some(pool.into());
        self
    }
    /// Priority classes, highest first.
    pub fn priorities<I: IntoIterator<Item = S>, S: Into<String>>(mut self, classes: I) -> Self {
        self.overrides.priorities = Some(classes.into_iter().map(Into::into).collect());
        self
    }
    pub fn concurrency(mut self, concurrency: u16) -> Self {
        self.overrides.concurrency = Some(concurrency);
        self
    }
    pub fn pod_name(mut self, pod: impl Into<String>) -> Self {
        self.overrides.pod_name = Some(pod.into());
        self
    }
    pub fn starvation(mut self, limit: Duration) -> Self {
        self.overrides.starvation = Some(limit);
        self
    }
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.overrides.grace = Some(grace);
        self
    }
    pub fn reports_queue(mut self, queue: impl Into<String>) -> Self {
        self.overrides.reports_queue = Some(queue.into());
        self
    }
    /// Serve `/metrics`, `/healthz`, `/readyz` on this address (port 0 = any free port).
    pub fn metrics_addr(mut self, addr: std::net::SocketAddr) -> Self {
        self.overrides.metrics_addr = Some(addr);
        self
    }
    /// The pool's key (env `WARREN_REPORT_KEY`): it signs this worker's reports and retries,
    /// and only tasks it signed run here.
    pub fn pool_key(mut self, key: warren_protocol::signature::ReportKey) -> Self {
        self.overrides.report_key = Some(key);
        self
    }
    /// The pool's queue type (`classic` or `quorum`).
    pub fn queue_type(mut self, queue_type: impl Into<String>) -> Self {
        self.overrides.queue_type = Some(queue_type.into());
        self
    }
    /// Replaces all configuration overrides at once.
    pub fn overrides(mut self, overrides: ConfigOverrides) -> Self {
        self.overrides = overrides;
        self
    }

    /// The handler for tasks without a `taskType`, or with one no specific handler is for.
    pub fn handler<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.handlers.default = Some(boxed(f));
        self
    }

    /// The handler for tasks whose envelope says `taskType: task_type`.
    pub fn handler_for<F, Fut>(mut self, task_type: impl Into<String>, f: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.handlers.by_type.insert(task_type.into(), boxed(f));
        self
    }

    /// Resolves the configuration (overrides over environment) and checks a handler exists.
    pub fn build(self) -> Result<Worker, WorkerError> {
        if self.handlers.default.is_none() && self.handlers.by_type.is_empty() {
            return Err(WorkerError::NoHandler);
        }
        let config = WorkerConfig::from_env(&self.overrides)?;
        Ok(Worker { config, handlers: self.handlers })
    }
}

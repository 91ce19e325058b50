//! The worker's configuration: resolved once, from explicit overrides over environment
//! variables ([`warren_protocol::worker_env`]). Resolution is pure (the environment is passed
//! in as a lookup function) so every rule is unit-tested.

use std::time::Duration;

use warren_protocol::{names, worker_env};

/// Default broker when `WARREN_AMQP_URL` is not set (a local RabbitMQ).
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default wait after which a lower-priority buffered task is taken ahead of higher ones.
pub const DEFAULT_STARVATION: Duration = Duration::from_secs(60);
/// Default time running tasks get to finish after SIGTERM.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(25);

/// Everything a [`Worker`](crate::Worker) needs to know about where it runs.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerConfig {
    pub amqp_url: String,
    pub namespace: String,
    pub pool: String,
    /// Priority classes, highest first. One work queue (and one channel) each.
    pub priorities: Vec<String>,
    /// Tasks executed at once; also the prefetch of every priority channel.
    pub concurrency: u16,
    pub pod_name: String,
    pub starvation: Duration,
    /// Time running tasks get to finish once shutdown starts.
    pub grace: Duration,
    /// Queue report batches are published to.
    pub reports_queue: String,
    /// Where `/metrics`, `/healthz`, `/readyz` are served; none = not served.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The pool's queue type, `classic` or `quorum` (of the retry-tier queues this worker declares).
    pub queue_type: String,
    /// Every delivery on its own channel (prefetch 1 each, `concurrency` channels per priority):
    /// a channel the broker closes (`consumer_timeout`) interrupts only its own task.
    pub channel_per_task: bool,
}

/// Explicit settings that win over the environment. `None` = take it from the environment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigOverrides {
    pub amqp_url: Option<String>,
    pub namespace: Option<String>,
    pub pool: Option<String>,
    pub priorities: Option<Vec<String>>,
    pub concurrency: Option<u16>,
    pub pod_name: Option<String>,
    pub starvation: Option<Duration>,
    pub grace: Option<Duration>,
    pub reports_queue: Option<String>,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub queue_type: Option<String>,
    pub channel_per_task: Option<bool>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{variable} is not set (and no override was given)")]
    Missing { variable: &'static str },
    #[error("{variable}={value:?} is invalid: {problem}")]
    Invalid { variable: &'static str, value: String, problem: String },
}

impl ConfigError {
    /// Stable name of the error kind.
    pub fn reason(&self) -> &'static str {
        match self {
            ConfigError::Missing { .. } => "ConfigMissing",
            ConfigError::Invalid { .. } => "ConfigInvalid",
        }
    }
}

impl WorkerConfig {
    /// Reads the process environment.
    pub fn from_env(overrides: &ConfigOverrides) -> Result<Self, ConfigError> {
        Self::resolve(overrides, |name| std::env::var(name).ok())
    }

    /// Resolves the configuration from `overrides` over `env` (a variable lookup). Pure.
    pub fn resolve(
        overrides: &ConfigOverrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let env = |name: &str| env(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let required = |value: &Option<String>, variable: &'static str| {
            value.clone().or_else(|| env(variable)).ok_or(ConfigError::Missing { variable })
        };
        let amqp_url =
            overrides.amqp_url.clone().or_else(|| env(worker_env::AMQP_URL)).unwrap_or_else(|| DEFAULT_AMQP_URL.into());
        let namespace = required(&overrides.namespace, worker_env::NAMESPACE)?;
        let pool = required(&overrides.pool, worker_env::POOL)?;
        let priorities = match &overrides.priorities {
            Some(p) => p.clone(),
            None => {
                let raw = env(worker_env::PRIORITIES)
                    .ok_or(ConfigError::Missing { variable: worker_env::PRIORITIES })?;
                raw.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
            }
        };
        if priorities.is_empty() {
            return Err(ConfigError::Invalid {
                variable: worker_env::PRIORITIES,
                value: String::new(),
                problem: "at least one priority class is required".into(),
            });
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = priorities.iter().find(|p| !seen.insert(p.as_str())) {
            return Err(ConfigError::Invalid {
                variable: worker_env::PRIORITIES,
                value: priorities.join(","),
                problem: format!("priority class {dup:?} is listed twice"),
            });
        }
        let concurrency = match overrides.concurrency {
            Some(c) => c,
            None => match env(worker_env::CONCURRENCY) {
                Some(raw) => raw.parse::<u16>().map_err(|e| ConfigError::Invalid {
                    variable: worker_env::CONCURRENCY,
                    value: raw.clone(),
                    problem: e.to_string(),
                })?,
                None => 1,
            },
        };
        if concurrency == 0 {
            return Err(ConfigError::Invalid {
                variable: worker_env::CONCURRENCY,
                value: "0".into(),
                problem: "must be at least 1".into(),
            });
        }
        let pod_name = overrides
            .pod_name
            .clone()
            .or_else(|| env(worker_env::POD_NAME))
            .or_else(|| env("HOSTNAME"))
            .unwrap_or_else(|| format!("warren-worker-{}", std::process::id()));
        let starvation = match overrides.starvation {
            Some(s) => s,
            None => match env(worker_env::STARVATION_SECONDS) {
                Some(raw) => Duration::from_secs(raw.parse::<u64>().map_err(|e| {
                    ConfigError::Invalid {
                        variable: worker_env::STARVATION_SECONDS,
                        value: raw.clone(),
                        problem: e.to_string(),
                    }
                })?),
                None => DEFAULT_STARVATION,
            },
        };
        let reports_queue = overrides
            .reports_queue
            .clone()
            .or_else(|| env(crate::REPORTS_QUEUE_ENV))
            .unwrap_or_else(|| names::REPORTS_QUEUE.into());
        let metrics_addr = match overrides.metrics_addr {
            Some(addr) => Some(addr),
            None => match env(crate::METRICS_ADDR_ENV) {
                Some(raw) => Some(raw.parse::<std::net::SocketAddr>().map_err(|e| ConfigError::Invalid {
                    variable: crate::METRICS_ADDR_ENV,
                    value: raw.clone(),
                    problem: format!("{e} (expected host:port, e.g. 0.0.0.0:9465)"),
                })?),
                None => None,
            },
        };
        let queue_type = overrides
            .queue_type
            .clone()
            .or_else(|| env(worker_env::QUEUE_TYPE))
            .unwrap_or_else(|| "classic".into());
        if !crate::topology::QUEUE_TYPES.contains(&queue_type.as_str()) {
            return Err(ConfigError::Invalid {
                variable: worker_env::QUEUE_TYPE,
                value: queue_type,
                problem: "must be classic or quorum".into(),
            });
        }
        let channel_per_task = match overrides.channel_per_task {
            Some(on) => on,
            None => match env(worker_env::CHANNEL_PER_TASK).as_deref() {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        variable: worker_env::CHANNEL_PER_TASK,
                        value: other.to_string(),
                        problem: "must be true or false".into(),
                    });
                }
            },
        };
        Ok(WorkerConfig {
            metrics_addr,
            queue_type,
            channel_per_task,
            amqp_url,
            namespace,
            pool,
            priorities,
            concurrency,
            pod_name,
            starvation,
            grace: overrides.grace.unwrap_or(DEFAULT_GRACE),
            reports_queue,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    const BASE: &[(&str, &str)] = &[
        ("WARREN_NAMESPACE", "ns"),
        ("WARREN_POOL", "p"),
        ("WARREN_PRIORITIES", "high, normal ,low"),
    ];

    #[test]
    fn environment_fills_everything_with_defaults() {
        let c = WorkerConfig::resolve(&ConfigOverrides::default(), env_of(BASE)).unwrap();
        assert_eq!(c.priorities, vec!["high", "normal", "low"]);
        assert_eq!(c.concurrency, 1);
        assert_eq!(c.amqp_url, DEFAULT_AMQP_URL);
        assert_eq!(c.starvation, DEFAULT_STARVATION);
        assert_eq!(c.grace, DEFAULT_GRACE);
        assert_eq!(c.reports_queue, names::REPORTS_QUEUE);
        assert_eq!(c.queue_type, "classic");
        assert!(c.pod_name.starts_with("warren-worker-"));
        assert_eq!(c.metrics_addr, None, "no endpoints unless asked for");
        let mut env = BASE.to_vec();
        env.push(("WARREN_METRICS_ADDR", "0.0.0.0:9465"));
        let c = WorkerConfig::resolve(&ConfigOverrides::default(), env_of(&env)).unwrap();
        assert_eq!(c.metrics_addr, Some("0.0.0.0:9465".parse().unwrap()));
        let mut quorum = BASE.to_vec();
        quorum.push(("WARREN_QUEUE_TYPE", "quorum"));
        assert_eq!(WorkerConfig::resolve(&ConfigOverrides::default(), env_of(&quorum)).unwrap().queue_type, "quorum");
        let mut bad = BASE.to_vec();
        bad.push(("WARREN_QUEUE_TYPE", "stream"));
        assert_eq!(
            WorkerConfig::resolve(&ConfigOverrides::default(), env_of(&bad)).unwrap_err().to_string(),
            "WARREN_QUEUE_TYPE=\"stream\" is invalid: must be classic or quorum"
        );
    }

    #[test]
    fn overrides_win_over_environment() {
        let mut env = BASE.to_vec();
        env.extend([("WARREN_CONCURRENCY", "8"), ("WARREN_POD_NAME", "pod-a"), ("WARREN_STARVATION_SECONDS", "5")]);
        let o = ConfigOverrides {
            pool: Some("other".into()),
            concurrency: Some(2),
            priorities: Some(vec!["only".into()]),
            ..Default::default()
        };
        let c = WorkerConfig::resolve(&o, env_of(&env)).unwrap();
        assert_eq!((c.pool.as_str(), c.concurrency), ("other", 2));
        assert_eq!(c.priorities, vec!["only"]);
        assert_eq!(c.pod_name, "pod-a");
        assert_eq!(c.starvation, Duration::from_secs(5));
    }

    #[test]
    fn invalid_settings_are_rejected_with_the_variable() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (&[("WARREN_POOL", "p"), ("WARREN_PRIORITIES", "a")], "WARREN_NAMESPACE", "ConfigMissing"),
            (&[("WARREN_NAMESPACE", "n"), ("WARREN_PRIORITIES", "a")], "WARREN_POOL", "ConfigMissing"),
            (&[("WARREN_NAMESPACE", "n"), ("WARREN_POOL", "p")], "WARREN_PRIORITIES", "ConfigMissing"),
            (&[("WARREN_NAMESPACE", "n"), ("WARREN_POOL", "p"), ("WARREN_PRIORITIES", " , ")], "WARREN_PRIORITIES", "ConfigInvalid"),
            (&[("WARREN_NAMESPACE", "n"), ("WARREN_POOL", "p"), ("WARREN_PRIORITIES", "a,a")], "WARREN_PRIORITIES", "ConfigInvalid"),
            (&[("WARREN_NAMESPACE", "n"), ("WARREN_POOL", "p"), ("WARREN_PRIORITIES", "a"), ("WARREN_CONCURRENCY", "x")], "WARREN_CONCURRENCY", "ConfigInvalid"),
            (&[("WARREN_NAMESPACE", "n"), ("WARREN_POOL", "p"), ("WARREN_PRIORITIES", "a"), ("WARREN_CONCURRENCY", "0")], "WARREN_CONCURRENCY", "ConfigInvalid"),
            (&[("WARREN_NAMESPACE", "n"), ("WARREN_POOL", "p"), ("WARREN_PRIORITIES", "a"), ("WARREN_STARVATION_SECONDS", "-1")], "WARREN_STARVATION_SECONDS", "ConfigInvalid"),
            (&[("WARREN_NAMESPACE", "n"), ("WARREN_POOL", "p"), ("WARREN_PRIORITIES", "a"), ("WARREN_METRICS_ADDR", "9465")], "WARREN_METRICS_ADDR", "ConfigInvalid"),
        ];
        for (env, variable, reason) in cases {
            let err = WorkerConfig::resolve(&ConfigOverrides::default(), env_of(env)).unwrap_err();
            assert_eq!(err.reason(), *reason, "{env:?}");
            assert!(err.to_string().contains(variable), "{env:?}: {err}");
        }
    }
}

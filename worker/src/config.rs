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
    /// The reports queue's type, `classic` or `quorum`: as the operator declares it.
    pub reports_queue_type: String,
    /// Every delivery on its own channel (prefetch 1 each, `concurrency` channels per priority):
    /// a channel the broker closes (`consumer_timeout`) interrupts only its own task.
    pub channel_per_task: bool,
    /// Broker TLS for `amqps://` addresses: a private CA, a client certificate (mutual TLS).
    pub amqp_tls: warren_protocol::amqp::Tls,
    /// The pool's report key: every report message is signed with it. None: unsigned.
    pub report_key: Option<warren_protocol::signature::ReportKey>,
    /// The operator's public key: only control messages it signed are applied. None: every
    /// control message is (an operator that does not sign them).
    pub control_key: Option<warren_protocol::control_signature::Verifier>,
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
    pub reports_queue_type: Option<String>,
    pub channel_per_task: Option<bool>,
    pub amqp_ca_file: Option<std::path::PathBuf>,
    pub amqp_client_cert_file: Option<std::path::PathBuf>,
    pub amqp_client_key_file: Option<std::path::PathBuf>,
    pub report_key: Option<warren_protocol::signature::ReportKey>,
    pub control_key: Option<warren_protocol::control_signature::Verifier>,
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
    /// Reads the process environment, and the broker TLS files it names (a file that cannot be
    /// used is an error here, at start, not a handshake failing at every reconnect).
    pub fn from_env(overrides: &ConfigOverrides) -> Result<Self, ConfigError> {
        let config = Self::resolve(overrides, |name| std::env::var(name).ok())?;
        config.amqp_tls.check().map_err(tls_error)?;
        Ok(config)
    }

    /// Resolves the configuration from `overrides` over `env` (a variable lookup). Pure.
    pub fn resolve(overrides: &ConfigOverrides, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = |name: &str| env(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let required = |value: &Option<String>, variable: &'static str| {
            value.clone().or_else(|| env(variable)).ok_or(ConfigError::Missing { variable })
        };
        let amqp_url = overrides.amqp_url.clone().or_else(|| env(worker_env::AMQP_URL)).unwrap_or_else(|| DEFAULT_AMQP_URL.into());
        if let Err(e) = warren_protocol::addresses::parse(&amqp_url) {
            return Err(ConfigError::Invalid {
                variable: worker_env::AMQP_URL,
                value: warren_protocol::addresses::redact(&amqp_url),
                problem: e.to_string(),
            });
        }
        let namespace = required(&overrides.namespace, worker_env::NAMESPACE)?;
        let pool = required(&overrides.pool, worker_env::POOL)?;
        let priorities = match &overrides.priorities {
            Some(p) => p.clone(),
            None => {
                let raw = env(worker_env::PRIORITIES).ok_or(ConfigError::Missing { variable: worker_env::PRIORITIES })?;
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
                Some(raw) => Duration::from_secs(raw.parse::<u64>().map_err(|e| ConfigError::Invalid {
                    variable: worker_env::STARVATION_SECONDS,
                    value: raw.clone(),
                    problem: e.to_string(),
                })?),
                None => DEFAULT_STARVATION,
            },
        };
        let reports_queue =
            overrides.reports_queue.clone().or_else(|| env(crate::REPORTS_QUEUE_ENV)).unwrap_or_else(|| names::REPORTS_QUEUE.into());
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
        let queue_type = overrides.queue_type.clone().or_else(|| env(worker_env::QUEUE_TYPE)).unwrap_or_else(|| "classic".into());
        if !crate::topology::QUEUE_TYPES.contains(&queue_type.as_str()) {
            return Err(ConfigError::Invalid {
                variable: worker_env::QUEUE_TYPE,
                value: queue_type,
                problem: "must be classic or quorum".into(),
            });
        }
        let reports_queue_type =
            overrides.reports_queue_type.clone().or_else(|| env(worker_env::REPORTS_QUEUE_TYPE)).unwrap_or_else(|| "classic".into());
        if !crate::topology::QUEUE_TYPES.contains(&reports_queue_type.as_str()) {
            return Err(ConfigError::Invalid {
                variable: worker_env::REPORTS_QUEUE_TYPE,
                value: reports_queue_type,
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
        let report_key = match overrides.report_key.clone() {
            Some(key) => Some(key),
            None => match env(worker_env::REPORT_KEY) {
                Some(raw) => Some(warren_protocol::signature::parse_key(&raw).map_err(|problem| ConfigError::Invalid {
                    variable: worker_env::REPORT_KEY,
                    // The key itself is never repeated in an error.
                    value: format!("({} characters)", raw.len()),
                    problem,
                })?),
                None => None,
            },
        };
        let control_key = match overrides.control_key.clone() {
            Some(key) => Some(key),
            None => match env(worker_env::CONTROL_PUBLIC_KEY) {
                Some(raw) => Some(warren_protocol::control_signature::Verifier::from_hex(&raw).map_err(|problem| {
                    ConfigError::Invalid { variable: worker_env::CONTROL_PUBLIC_KEY, value: raw.clone(), problem: problem.to_string() }
                })?),
                None => None,
            },
        };
        let amqp_tls = amqp_tls(overrides, &env)?;
        Ok(WorkerConfig {
            amqp_tls,
            report_key,
            control_key,
            metrics_addr,
            queue_type,
            reports_queue_type,
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

/// The broker TLS paths, each from its override or its variable (not read here: pure).
fn amqp_tls(overrides: &ConfigOverrides, env: &impl Fn(&str) -> Option<String>) -> Result<warren_protocol::amqp::Tls, ConfigError> {
    let path = |value: &Option<std::path::PathBuf>, variable: &str| value.clone().or_else(|| env(variable).map(Into::into));
    warren_protocol::amqp::Tls::new(
        path(&overrides.amqp_ca_file, worker_env::AMQP_CA_FILE),
        path(&overrides.amqp_client_cert_file, worker_env::AMQP_CLIENT_CERT_FILE),
        path(&overrides.amqp_client_key_file, worker_env::AMQP_CLIENT_KEY_FILE),
    )
    .map_err(tls_error)
}

fn tls_error(error: warren_protocol::amqp::TlsError) -> ConfigError {
    use warren_protocol::amqp::TlsError;
    match error {
        TlsError::File { setting, path, problem } => ConfigError::Invalid { variable: setting, value: path, problem },
        // A certificate without its key, or a key without its certificate.
        TlsError::HalfIdentity { missing, .. } => ConfigError::Missing { variable: missing },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    const BASE: &[(&str, &str)] = &[("WARREN_NAMESPACE", "ns"), ("WARREN_POOL", "p"), ("WARREN_PRIORITIES", "high, normal ,low")];

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
    fn a_cluster_is_a_list_of_addresses_and_the_reports_queue_may_be_quorum() {
        let mut env = BASE.to_vec();
        env.extend([("WARREN_AMQP_URL", "amqp://u:p@n1:5672/%2f,amqp://u:p@n2:5672/%2f"), ("WARREN_REPORTS_QUEUE_TYPE", "quorum")]);
        let c = WorkerConfig::resolve(&ConfigOverrides::default(), env_of(&env)).unwrap();
        assert_eq!(c.amqp_url, "amqp://u:p@n1:5672/%2f,amqp://u:p@n2:5672/%2f");
        assert_eq!(c.reports_queue_type, "quorum");
        let mut bad = BASE.to_vec();
        bad.push(("WARREN_AMQP_URL", "amqp://u:p@n1,redis://u:secret@n2"));
        let err = WorkerConfig::resolve(&ConfigOverrides::default(), env_of(&bad)).unwrap_err().to_string();
        assert!(err.contains("broker address 1") && !err.contains("secret"), "{err}");
        let mut bad = BASE.to_vec();
        bad.push(("WARREN_REPORTS_QUEUE_TYPE", "stream"));
        assert!(WorkerConfig::resolve(&ConfigOverrides::default(), env_of(&bad)).is_err());
    }

    #[test]
    fn the_report_key_is_hex_and_never_repeated_in_an_error() {
        let key = "ab".repeat(32);
        let mut env = BASE.to_vec();
        env.push(("WARREN_REPORT_KEY", key.as_str()));
        let c = WorkerConfig::resolve(&ConfigOverrides::default(), env_of(&env)).unwrap();
        assert_eq!(c.report_key.as_ref().map(|k| k.bytes().len()), Some(32));
        assert_eq!(WorkerConfig::resolve(&ConfigOverrides::default(), env_of(BASE)).unwrap().report_key, None, "unsigned");
        let mut bad = BASE.to_vec();
        bad.push(("WARREN_REPORT_KEY", "secret-but-short"));
        let err = WorkerConfig::resolve(&ConfigOverrides::default(), env_of(&bad)).unwrap_err().to_string();
        assert!(err.starts_with("WARREN_REPORT_KEY=") && !err.contains("secret-but-short"), "{err}");
    }

    #[test]
    fn broker_tls_paths_come_from_the_environment_or_overrides_and_a_certificate_needs_its_key() {
        assert!(
            WorkerConfig::resolve(&ConfigOverrides::default(), env_of(BASE)).unwrap().amqp_tls.is_empty(),
            "no TLS settings by default"
        );
        let mut env = BASE.to_vec();
        env.extend([
            ("WARREN_AMQP_URL", "amqps://u:p@rabbit:5671/%2f"),
            ("WARREN_AMQP_CA_FILE", "/etc/warren/broker-tls/ca.crt"),
            ("WARREN_AMQP_CLIENT_CERT_FILE", "/etc/warren/broker-tls/tls.crt"),
            ("WARREN_AMQP_CLIENT_KEY_FILE", "/etc/warren/broker-tls/tls.key"),
        ]);
        let o = ConfigOverrides { amqp_ca_file: Some("/other/ca.pem".into()), ..Default::default() };
        let tls = WorkerConfig::resolve(&o, env_of(&env)).unwrap().amqp_tls;
        assert_eq!(tls.ca_file.as_deref(), Some(std::path::Path::new("/other/ca.pem")), "the override wins");
        assert_eq!(tls.client_key_file.as_deref(), Some(std::path::Path::new("/etc/warren/broker-tls/tls.key")));
        let mut half = BASE.to_vec();
        half.push(("WARREN_AMQP_CLIENT_CERT_FILE", "/etc/warren/broker-tls/tls.crt"));
        let err = WorkerConfig::resolve(&ConfigOverrides::default(), env_of(&half)).unwrap_err();
        assert_eq!(err, ConfigError::Missing { variable: "WARREN_AMQP_CLIENT_KEY_FILE" });
        // Resolving is pure: the files are read by `from_env`, where a missing one is refused.
        let missing = ConfigOverrides {
            namespace: Some("ns".into()),
            pool: Some("p".into()),
            priorities: Some(vec!["normal".into()]),
            amqp_ca_file: Some("/nonexistent/ca.crt".into()),
            ..Default::default()
        };
        let err = WorkerConfig::from_env(&missing).unwrap_err().to_string();
        assert!(err.starts_with("WARREN_AMQP_CA_FILE=\"/nonexistent/ca.crt\" is invalid: cannot be read"), "{err}");
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
            (
                &[("WARREN_NAMESPACE", "n"), ("WARREN_POOL", "p"), ("WARREN_PRIORITIES", "a"), ("WARREN_CONCURRENCY", "x")],
                "WARREN_CONCURRENCY",
                "ConfigInvalid",
            ),
            (
                &[("WARREN_NAMESPACE", "n"), ("WARREN_POOL", "p"), ("WARREN_PRIORITIES", "a"), ("WARREN_CONCURRENCY", "0")],
                "WARREN_CONCURRENCY",
                "ConfigInvalid",
            ),
            (
                &[("WARREN_NAMESPACE", "n"), ("WARREN_POOL", "p"), ("WARREN_PRIORITIES", "a"), ("WARREN_STARVATION_SECONDS", "-1")],
                "WARREN_STARVATION_SECONDS",
                "ConfigInvalid",
            ),
            (
                &[("WARREN_NAMESPACE", "n"), ("WARREN_POOL", "p"), ("WARREN_PRIORITIES", "a"), ("WARREN_METRICS_ADDR", "9465")],
                "WARREN_METRICS_ADDR",
                "ConfigInvalid",
            ),
        ];
        for (env, variable, reason) in cases {
            let err = WorkerConfig::resolve(&ConfigOverrides::default(), env_of(env)).unwrap_err();
            assert_eq!(err.reason(), *reason, "{env:?}");
            assert!(err.to_string().contains(variable), "{env:?}: {err}");
        }
    }
}

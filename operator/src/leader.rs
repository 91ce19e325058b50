//! Leader election through a `coordination.k8s.io/v1` Lease, so that several operator replicas
//! can run and exactly one reconciles.
//!
//! The decision is pure ([`decide`]: the observed Lease, this process's identity and the clock in,
//! create / acquire / renew / follow out) and copies client-go's rules: a Lease is expired when
//! *this process* has not seen it change for `leaseDurationSeconds` (a local, monotonic
//! observation, so clock skew between nodes does not matter). The I/O ([`Elector`]) reads the
//! Lease and writes it with optimistic concurrency (`resourceVersion`): two candidates racing for
//! an expired Lease cannot both win, the loser gets a 409 Conflict.
//!
//! A leader that cannot renew within `renew_deadline` (or sees another holder) has lost the Lease
//! and must stop reconciling at once: [`Elector::hold`] returns, and the operator exits (its
//! Deployment restarts it as a candidate). On a graceful stop the leader releases the Lease, so the
//! next candidate takes over after one retry period instead of a whole lease duration.
//!
//! This module must not start or stop controllers: it only says who leads.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

/// Settings of the election, parsed once at start.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseSettings {
    /// Name of the Lease object.
    pub name: String,
    /// Namespace of the Lease object (the operator's own).
    pub namespace: String,
    /// This process's identity in `holderIdentity` (the pod name).
    pub identity: String,
    /// How long a Lease that is not renewed stays valid for the others.
    pub lease_duration: Duration,
    /// How long the leader keeps leading while renewals fail; less than `lease_duration`.
    pub renew_deadline: Duration,
    /// Pause between two attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// Defaults of client-go and controller-runtime: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Checks the timing rules a working election needs.
    pub fn validate(&self) -> Result<(), String> {
        if self.identity.is_empty() {
            return Err("the leader election identity is empty (set WARREN_POD_NAME)".into());
        }
        if self.retry_period.is_zero() || self.renew_deadline <= self.retry_period {
            return Err(format!(
                "the lease renew deadline ({:?}) must be longer than the retry period ({:?})",
                self.renew_deadline, self.retry_period
            ));
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(format!(
                "the lease duration ({:?}) must be longer than the renew deadline ({:?}): a leader that \
                 cannot renew must stop before another one can take over",
                self.lease_duration, self.renew_deadline
            ));
        }
        Ok(())
    }
}

/// What the Lease says, as far as the election is concerned.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Record {
    pub holder: Option<String>,
    /// `leaseDurationSeconds` as written by the holder.
    pub lease_duration: Option<Duration>,
    pub transitions: i32,
}

impl Record {
    pub fn from_spec(spec: Option<&LeaseSpec>) -> Self {
        let Some(spec) = spec else { return Self::default() };
        Self {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            lease_duration: spec.lease_duration_seconds.filter(|s| *s > 0).map(|s| Duration::from_secs(s as u64)),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }
}

/// The Lease as this process last saw it, and since when it has looked like that.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub resource_version: String,
    pub record: Record,
    /// When this process first saw this `resource_version`.
    pub since: Instant,
}

/// What to do with the Lease in this round.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// There is no Lease: create it, holding it.
    Create,
    /// Take the Lease over: it is free or its holder stopped renewing it.
    Acquire { previous: Option<String> },
    /// This process holds the Lease: renew it.
    Renew,
    /// Another process holds a live Lease.
    Follow { holder: String, expires_in: Duration },
}

/// Decides one round of the election. Pure.
pub fn decide(observed: Option<&Observed>, identity: &str, default_duration: Duration, now: Instant) -> Decision {
    let Some(observed) = observed else { return Decision::Create };
    let record = &observed.record;
    match &record.holder {
        Some(holder) if holder == identity => Decision::Renew,
        None => Decision::Acquire { previous: None },
        Some(holder) => {
            let valid_for = record.lease_duration.unwrap_or(default_duration);
            let age = now.saturating_duration_since(observed.since);
            if age >= valid_for {
                Decision::Acquire { previous: Some(holder.clone()) }
            } else {
                Decision::Follow { holder: holder.clone(), expires_in: valid_for - age }
            }
        }
    }
}

/// The Lease spec to write for a decision that takes or keeps the Lease.
pub fn desired_spec(decision: &Decision, current: Option<&LeaseSpec>, settings: &LeaseSettings, now: jiff::Timestamp) -> LeaseSpec {
    let record = Record::from_spec(current);
    let now = MicroTime(now);
    let seconds = settings.lease_duration.as_secs().max(1) as i32;
    match decision {
        Decision::Renew => LeaseSpec {
            holder_identity: Some(settings.identity.clone()),
            lease_duration_seconds: Some(seconds),
            renew_time: Some(now.clone()),
            acquire_time: current.and_then(|s| s.acquire_time.clone()).or(Some(now)),
            lease_transitions: Some(record.transitions),
            ..current.cloned().unwrap_or_default()
        },
        Decision::Create | Decision::Acquire { .. } | Decision::Follow { .. } => LeaseSpec {
            holder_identity: Some(settings.identity.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            // A change of holder is a transition; taking back a Lease one released is one too.
            lease_transitions: Some(if matches!(decision, Decision::Create) { 0 } else { record.transitions + 1 }),
            ..current.cloned().unwrap_or_default()
        },
    }
}

/// True when a leader whose last successful renewal was at `last_renewed` must give up.
pub fn renew_deadline_passed(last_renewed: Instant, renew_deadline: Duration, now: Instant) -> bool {
    now.saturating_duration_since(last_renewed) >= renew_deadline
}

/// Why leadership ended or a round failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("Lease {namespace}/{name}: {source}")]
    Api { namespace: String, name: String, source: kube::Error },
    #[error("lost the Lease {namespace}/{name}: {holder} holds it now")]
    Taken { namespace: String, name: String, holder: String },
    #[error("lost the Lease {namespace}/{name}: not renewed within the renew deadline of {deadline:?} ({last_error})")]
    RenewDeadline { namespace: String, name: String, deadline: Duration, last_error: String },
}

impl LeaderError {
    /// Stable reason for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            LeaderError::Api { .. } => "LeaseApiError",
            LeaderError::Taken { .. } => "LeaseTaken",
            LeaderError::RenewDeadline { .. } => "LeaseRenewDeadline",
        }
    }
}

/// What a round ended with.
#[derive(Clone, Debug, PartialEq)]
pub enum RoundOutcome {
    /// This process holds the Lease (just created, acquired or renewed).
    Leading,
    /// Another process holds it (or won a race for it); it expires in `expires_in` unless renewed.
    Following { holder: Option<String>, expires_in: Option<Duration> },
}

/// Takes part in the election: reads and writes the Lease.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Option<Observed>,
    leading: bool,
}

impl Elector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self { api: Api::namespaced(client, &settings.namespace), settings, observed: None, leading: false }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    fn api_error(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api { namespace: self.settings.namespace.clone(), name: self.settings.name.clone(), source }
    }

    /// One round: read the Lease, decide, write it if the decision takes or keeps it.
    pub async fn round(&mut self) -> Result<RoundOutcome, LeaderError> {
        let current = self.api.get_opt(&self.settings.name).await.map_err(|e| self.api_error(e))?;
        let now = Instant::now();
        self.observed = current.as_ref().map(|lease| {
            let resource_version = lease.resource_version().unwrap_or_default();
            let since = match &self.observed {
                Some(previous) if previous.resource_version == resource_version => previous.since,
                _ => now,
            };
            Observed { resource_version, record: Record::from_spec(lease.spec.as_ref()), since }
        });
        let decision = decide(self.observed.as_ref(), &self.settings.identity, self.settings.lease_duration, now);
        if let Decision::Follow { holder, expires_in } = decision {
            self.leading = false;
            return Ok(RoundOutcome::Following { holder: Some(holder), expires_in: Some(expires_in) });
        }
        let spec = desired_spec(&decision, current.as_ref().and_then(|l| l.spec.as_ref()), &self.settings, jiff::Timestamp::now());
        let written = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // `resourceVersion` stays as read: a concurrent write makes this a 409 Conflict.
                lease.spec = Some(spec);
                self.api.replace(&self.settings.name, &PostParams::default(), &lease).await
            }
        };
        match written {
            Ok(lease) => {
                if let Decision::Acquire { previous } = &decision {
                    tracing::info!(lease = %self.settings.name, identity = %self.settings.identity, previous = previous.as_deref().unwrap_or(""), "acquired the Lease");
                } else if decision == Decision::Create {
                    tracing::info!(lease = %self.settings.name, identity = %self.settings.identity, "created the Lease");
                }
                self.observed = Some(Observed {
                    resource_version: lease.resource_version().unwrap_or_default(),
                    record: Record::from_spec(lease.spec.as_ref()),
                    since: now,
                });
                self.leading = true;
                Ok(RoundOutcome::Leading)
            }
            // Someone else wrote first (created it, or changed it since we read it).
            Err(kube::Error::Api(status)) if status.code == 409 => {
                self.leading = false;
                self.observed = None;
                Ok(RoundOutcome::Following { holder: None, expires_in: None })
            }
            Err(e) => Err(self.api_error(e)),
        }
    }

    fn pause(&self) -> Duration {
        // Up to 20 % jitter so candidates do not poll in lockstep.
        self.settings.retry_period.mul_f64(1.0 + 0.2 * rand::random::<f64>())
    }

    /// Returns once this process holds the Lease. Errors are logged and retried.
    pub async fn acquire(&mut self) {
        let mut last_holder: Option<String> = None;
        loop {
            let mut pause = self.pause();
            match self.round().await {
                Ok(RoundOutcome::Leading) => return,
                Ok(RoundOutcome::Following { holder, expires_in }) => {
                    if holder.is_some() && holder != last_holder {
                        tracing::info!(lease = %self.settings.name, holder = holder.as_deref().unwrap_or(""), "another operator leads; standing by");
                        last_holder = holder;
                    }
                    // Look again right when the Lease would expire, not up to a retry period later.
                    if let Some(expires_in) = expires_in {
                        pause = pause.min(expires_in + Duration::from_millis(10));
                    }
                }
                Err(error) => tracing::warn!(%error, reason = error.reason(), "leader election round failed; retrying"),
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Keeps renewing the Lease; returns when leadership is lost (never while it is held).
    pub async fn hold(&mut self) -> LeaderError {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.settings.retry_period).await;
            match self.round().await {
                Ok(RoundOutcome::Leading) => last_renewed = Instant::now(),
                Ok(RoundOutcome::Following { holder: Some(holder), .. }) => {
                    return LeaderError::Taken { namespace: self.settings.namespace.clone(), name: self.settings.name.clone(), holder };
                }
                // A conflict: read again at once, within the deadline.
                Ok(RoundOutcome::Following { holder: None, .. }) => {}
                Err(error) => {
                    tracing::warn!(%error, reason = error.reason(), "renewing the Lease failed");
                    if renew_deadline_passed(last_renewed, self.settings.renew_deadline, Instant::now()) {
                        return LeaderError::RenewDeadline {
                            namespace: self.settings.namespace.clone(),
                            name: self.settings.name.clone(),
                            deadline: self.settings.renew_deadline,
                            last_error: error.to_string(),
                        };
                    }
                    continue;
                }
            }
            if renew_deadline_passed(last_renewed, self.settings.renew_deadline, Instant::now()) {
                return LeaderError::RenewDeadline {
                    namespace: self.settings.namespace.clone(),
                    name: self.settings.name.clone(),
                    deadline: self.settings.renew_deadline,
                    last_error: "conflicting writes".into(),
                };
            }
        }
    }

    /// Gives the Lease up (graceful stop): empties the holder so a candidate takes it at its
    /// next round. Best effort; a failure only means the others wait for the Lease to expire.
    pub async fn release(&mut self) {
        if !self.leading {
            return;
        }
        self.leading = false;
        let lease = match self.api.get_opt(&self.settings.name).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "releasing the Lease: reading it failed");
                return;
            }
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return;
        }
        let released = Lease {
            spec: Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                renew_time: Some(MicroTime(jiff::Timestamp::now())),
                ..spec
            }),
            ..lease
        };
        match self.api.replace(&self.settings.name, &PostParams::default(), &released).await {
            Ok(_) => tracing::info!(lease = %self.settings.name, "released the Lease"),
            Err(error) => tracing::warn!(%error, "releasing the Lease failed; the others wait for it to expire"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "op-a";
    const DEFAULT: Duration = Duration::from_secs(15);

    fn observed(holder: Option<&str>, duration_s: Option<u64>, age: Duration, now: Instant) -> Observed {
        Observed {
            resource_version: "7".into(),
            record: Record { holder: holder.map(String::from), lease_duration: duration_s.map(Duration::from_secs), transitions: 3 },
            since: now - age,
        }
    }

    #[test]
    fn decisions_table() {
        let now = Instant::now() + Duration::from_secs(3600);
        let s = Duration::from_secs;
        let cases: Vec<(&str, Option<Observed>, Decision)> = vec![
            ("no Lease", None, Decision::Create),
            ("we hold it", Some(observed(Some(ME), Some(15), s(1), now)), Decision::Renew),
            ("we hold it, even if stale", Some(observed(Some(ME), Some(15), s(60), now)), Decision::Renew),
            ("released", Some(observed(None, Some(1), s(0), now)), Decision::Acquire { previous: None }),
            (
                "other holder, fresh",
                Some(observed(Some("op-b"), Some(15), s(5), now)),
                Decision::Follow { holder: "op-b".into(), expires_in: s(10) },
            ),
            (
                "other holder, expired",
                Some(observed(Some("op-b"), Some(15), s(15), now)),
                Decision::Acquire { previous: Some("op-b".into()) },
            ),
            (
                "other holder's own shorter duration applies",
                Some(observed(Some("op-b"), Some(4), s(5), now)),
                Decision::Acquire { previous: Some("op-b".into()) },
            ),
            (
                "no duration written: the default applies",
                Some(observed(Some("op-b"), None, s(14), now)),
                Decision::Follow { holder: "op-b".into(), expires_in: s(1) },
            ),
        ];
        for (name, obs, expected) in cases {
            assert_eq!(decide(obs.as_ref(), ME, DEFAULT, now), expected, "{name}");
        }
    }

    #[test]
    fn record_treats_an_empty_holder_as_free() {
        let spec = LeaseSpec { holder_identity: Some(String::new()), lease_duration_seconds: Some(0), ..Default::default() };
        let record = Record::from_spec(Some(&spec));
        assert_eq!(record, Record { holder: None, lease_duration: None, transitions: 0 });
    }

    #[test]
    fn desired_spec_counts_transitions_and_keeps_the_acquire_time_on_renewal() {
        let settings = LeaseSettings::new("warren-operator", "warren-system", ME);
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: jiff::Timestamp = "2026-01-01T00:00:02Z".parse().unwrap();
        let created = desired_spec(&Decision::Create, None, &settings, t0);
        assert_eq!(created.holder_identity.as_deref(), Some(ME));
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.lease_duration_seconds, Some(15));
        let renewed = desired_spec(&Decision::Renew, Some(&created), &settings, t1);
        assert_eq!(renewed.acquire_time, Some(MicroTime(t0)));
        assert_eq!(renewed.renew_time, Some(MicroTime(t1)));
        assert_eq!(renewed.lease_transitions, Some(0));
        let other = LeaseSpec { holder_identity: Some("op-b".into()), lease_transitions: Some(4), ..created.clone() };
        let taken = desired_spec(&Decision::Acquire { previous: Some("op-b".into()) }, Some(&other), &settings, t1);
        assert_eq!(taken.holder_identity.as_deref(), Some(ME));
        assert_eq!(taken.lease_transitions, Some(5));
        assert_eq!(taken.acquire_time, Some(MicroTime(t1)));
    }

    #[test]
    fn renew_deadline() {
        let t = Instant::now();
        let deadline = Duration::from_secs(10);
        assert!(!renew_deadline_passed(t, deadline, t + Duration::from_secs(9)));
        assert!(renew_deadline_passed(t, deadline, t + Duration::from_secs(10)));
    }

    #[test]
    fn settings_validation() {
        let ok = LeaseSettings::new("l", "ns", ME);
        assert_eq!(ok.validate(), Ok(()));
        let cases = [
            (LeaseSettings { identity: String::new(), ..ok.clone() }, "identity is empty"),
            (LeaseSettings { renew_deadline: Duration::from_secs(2), ..ok.clone() }, "longer than the retry period"),
            (LeaseSettings { lease_duration: Duration::from_secs(10), ..ok.clone() }, "longer than the renew deadline"),
        ];
        for (settings, message) in cases {
            let error = settings.validate().unwrap_err();
            assert!(error.contains(message), "{error}");
        }
    }
}

//! Completion events (`spec.notify` of Jobs and Workflows): a signed CloudEvents POST to each
//! webhook when the object ends in one of its `on` phases, at least once, recorded in
//! `status.notifications` (docs/notifications.md).
//!
//! Owns: the notifier task (it runs only while this operator leads), the allow-list, the
//! delivery records. Must not: change an object's phase or conditions (a failing receiver never
//! changes a Job's outcome), or write a Job's status itself — the Job book writes the whole
//! status, so a Job's records go through [`JobBook::set_notifications`] and are written with it;
//! a Workflow's are patched here (its controller keeps them when it writes its status).
//!
//! Delivery: the record is updated after each attempt, so a restarted operator resumes from the
//! stored records: a delivered event is never sent again, one whose success was not yet stored is
//! sent again with the same `id` (receivers de-duplicate on it).

pub mod allow;
pub mod deliver;
pub mod event;
pub mod plan;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};

use crate::controllers::job::book::JobBook;
use crate::crd::{Job, JobPhase, Notification, NotificationStatus, NotifyPhase, Workflow, WorkflowPhase};
use event::Kind;
use plan::{Outcome, RetryPolicy};

/// The notifier's settings (`--notify-*` flags, chart `notify.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub allow: allow::AllowList,
    pub retry: RetryPolicy,
    /// Longest wait for one request (connect, TLS, answer).
    pub timeout: Duration,
    /// Also publish every event to this topic exchange on the operator's broker
    /// (`--notify-exchange`), routing key = the event type.
    pub exchange: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self { allow: allow::AllowList::default(), retry: RetryPolicy::default(), timeout: Duration::from_secs(10), exchange: None }
    }
}

/// How often the notifier looks for due deliveries.
const TICK: Duration = Duration::from_millis(500);
/// How long after patching a Workflow's records a stored copy that differs counts as stale.
const REPATCH_AFTER: Duration = Duration::from_secs(5);
/// Deliveries in flight at once.
const CONCURRENCY: usize = 16;

/// Errors of one delivery that are no receiver's fault (reason = metric label and Event reason).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading Secret {name}: {source}")]
    Secret { name: String, source: kube::Error },
    #[error("Secret {name} has no key {key}")]
    SecretKey { name: String, key: String },
    #[error("no --notify-exchange is set")]
    NoExchange,
    #[error("declaring exchange {exchange}: {source}")]
    Declare { exchange: String, source: crate::broker::BrokerError },
    #[error("publishing to exchange {exchange}: {source}")]
    Publish { exchange: String, source: crate::broker::BrokerError },
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Secret { .. } => "SecretUnreadable",
            Error::SecretKey { .. } => "SecretKeyMissing",
            Error::NoExchange => "NoExchange",
            Error::Declare { source, .. } | Error::Publish { source, .. } => source.reason(),
        }
    }
}

/// The phase that sends events, if the Job is in one.
fn job_phase(job: &Job) -> Option<NotifyPhase> {
    match job.status.as_ref()?.phase {
        JobPhase::Succeeded => Some(NotifyPhase::Succeeded),
        JobPhase::Failed => Some(NotifyPhase::Failed),
        _ => None,
    }
}

fn workflow_phase(wf: &Workflow) -> Option<NotifyPhase> {
    match wf.status.as_ref()?.phase {
        WorkflowPhase::Succeeded => Some(NotifyPhase::Succeeded),
        WorkflowPhase::Failed => Some(NotifyPhase::Failed),
        _ => None,
    }
}

/// One object with notifications to look at.
#[derive(Clone)]
enum Subject {
    Job(Arc<Job>),
    Workflow(Arc<Workflow>),
}

impl Subject {
    fn kind(&self) -> Kind {
        match self {
            Subject::Job(_) => Kind::Job,
            Subject::Workflow(_) => Kind::Workflow,
        }
    }
    fn notify(&self) -> &[Notification] {
        match self {
            Subject::Job(j) => &j.spec.notify,
            Subject::Workflow(w) => &w.spec.notify,
        }
    }
    fn uid(&self) -> String {
        match self {
            Subject::Job(j) => j.uid().unwrap_or_default(),
            Subject::Workflow(w) => w.uid().unwrap_or_default(),
        }
    }
    fn namespace(&self) -> String {
        match self {
            Subject::Job(j) => j.namespace().unwrap_or_default(),
            Subject::Workflow(w) => w.namespace().unwrap_or_default(),
        }
    }
    fn name(&self) -> String {
        match self {
            Subject::Job(j) => j.name_any(),
            Subject::Workflow(w) => w.name_any(),
        }
    }
    fn phase(&self) -> Option<NotifyPhase> {
        match self {
            Subject::Job(j) => job_phase(j),
            Subject::Workflow(w) => workflow_phase(w),
        }
    }
    fn stored(&self) -> Vec<NotificationStatus> {
        match self {
            Subject::Job(j) => j.status.as_ref().map(|s| s.notifications.clone()).unwrap_or_default(),
            Subject::Workflow(w) => w.status.as_ref().map(|s| s.notifications.clone()).unwrap_or_default(),
        }
    }
    fn body(&self, phase: NotifyPhase, now: jiff::Timestamp) -> Vec<u8> {
        let event = match self {
            Subject::Job(j) => event::job_event(j, phase, now),
            Subject::Workflow(w) => event::workflow_event(w, phase, now),
        };
        serde_json::to_vec(&event).expect("an event serializes")
    }
    fn object_ref(&self) -> k8s_openapi::api::core::v1::ObjectReference {
        match self {
            Subject::Job(j) => j.object_ref(&()),
            Subject::Workflow(w) => w.object_ref(&()),
        }
    }
}

/// An exchange name `--notify-exchange` accepts: 1-255 bytes, not RabbitMQ's reserved `amq.`.
pub fn valid_exchange(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with("amq.")
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok { Ok(()) } else { Err(format!("--notify-exchange {name:?}: 1-255 of a-z, A-Z, 0-9, '-', '_', '.', ':', not starting with amq.")) }
}

/// The notifier: what it needs to deliver and record.
pub struct Notifier {
    client: Client,
    /// The operator's broker, for `--notify-exchange` (a connection of its own, made on first use).
    broker: Option<crate::broker::Broker>,
    /// The exchange was declared on the current connection.
    declared: std::sync::atomic::AtomicBool,
    settings: Settings,
    book: Arc<JobBook>,
    recorder: Recorder,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// A Workflow's records, by uid, as last decided here (restored from its status on first
    /// sight): the source of truth while this operator leads.
    workflows: std::sync::Mutex<HashMap<String, Vec<NotificationStatus>>>,
    /// When each Workflow's records were last patched: the watch shows a patch a moment later,
    /// and until then the stored records only look stale.
    patched: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

impl Notifier {
    pub fn new(client: Client, settings: Settings, book: Arc<JobBook>, broker: Option<crate::broker::Broker>) -> Self {
        let tls = match deliver::tls_config() {
            Ok(tls) => Some(tls),
            Err(error) => {
                tracing::error!(%error, "no TLS for https:// webhooks: their deliveries fail");
                None
            }
        };
        Self {
            broker: broker.filter(|_| settings.exchange.is_some()),
            declared: false.into(),
            recorder: crate::events::recorder(client.clone()),
            client,
            settings,
            book,
            tls,
            workflows: Default::default(),
            patched: Default::default(),
        }
    }

    /// The records of `subject` as they stand now; None while a Job is not in the book yet
    /// (its reconcile restores its status first).
    fn records(&self, subject: &Subject) -> Option<Vec<NotificationStatus>> {
        match subject {
            Subject::Job(_) => self.book.notifications(&subject.uid()),
            Subject::Workflow(_) => {
                Some(self.workflows.lock().expect("notifier lock").entry(subject.uid()).or_insert_with(|| subject.stored()).clone())
            }
        }
    }

    /// Stores `records` of `subject`: a Job's through the book, a Workflow's by a status patch.
    async fn store(&self, subject: &Subject, records: Vec<NotificationStatus>) {
        match subject {
            Subject::Job(_) => {
                self.book.set_notifications(&subject.uid(), records);
            }
            Subject::Workflow(_) => {
                self.workflows.lock().expect("notifier lock").insert(subject.uid(), records.clone());
                self.patch_workflow(subject, &records).await;
            }
        }
    }

    async fn patch_workflow(&self, subject: &Subject, records: &[NotificationStatus]) {
        self.patched.lock().expect("notifier lock").insert(subject.uid(), std::time::Instant::now());
        let api: Api<Workflow> = Api::namespaced(self.client.clone(), &subject.namespace());
        let patch = serde_json::json!({ "status": { "notifications": records } });
        let written = api.patch_status(&subject.name(), &PatchParams::default(), &Patch::Merge(&patch)).await;
        crate::metrics::global().record_status_write(crate::metrics::WORKFLOW, &written);
        if let Err(error) = written {
            // Kept in memory; the next tick writes it again (see `reconcile_workflows`).
            tracing::warn!(%error, namespace = subject.namespace(), name = subject.name(), "writing Workflow notifications failed; will retry");
        }
    }

    /// Re-writes the records of Workflows whose stored status lost them (a status write by the
    /// Workflow controller from an older copy), and forgets Workflows that are gone.
    async fn reconcile_workflows(&self, workflows: &[Arc<Workflow>]) {
        let stale: Vec<(Subject, Vec<NotificationStatus>)> = {
            let mut memory = self.workflows.lock().expect("notifier lock");
            let mut patched = self.patched.lock().expect("notifier lock");
            let live: std::collections::HashSet<String> = workflows.iter().filter_map(|w| w.uid()).collect();
            memory.retain(|uid, _| live.contains(uid));
            patched.retain(|uid, _| live.contains(uid));
            workflows
                .iter()
                .filter_map(|w| {
                    let uid = w.uid()?;
                    if patched.get(&uid).is_some_and(|at| at.elapsed() < REPATCH_AFTER) {
                        return None;
                    }
                    let records = memory.get(&uid)?;
                    let stored = w.status.as_ref().map(|s| s.notifications.as_slice()).unwrap_or_default();
                    (stored != records.as_slice()).then(|| (Subject::Workflow(w.clone()), records.clone()))
                })
                .collect()
        };
        for (subject, records) in stale {
            self.patch_workflow(&subject, &records).await;
        }
    }

    async fn signing_key(&self, namespace: &str, notification: &Notification) -> Result<Vec<u8>, Error> {
        let secret_ref = &notification.webhook.secret_ref;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = api.get(&secret_ref.name).await.map_err(|source| Error::Secret { name: secret_ref.name.clone(), source })?;
        let key = secret.data.as_ref().and_then(|d| d.get(&secret_ref.key)).map(|b| b.0.clone());
        let key = key.or_else(|| secret.string_data.as_ref().and_then(|d| d.get(&secret_ref.key)).map(|s| s.clone().into_bytes()));
        key.filter(|k| !k.is_empty()).ok_or_else(|| Error::SecretKey { name: secret_ref.name.clone(), key: secret_ref.key.clone() })
    }

    /// Publishes the event to the operator's exchange, confirmed and `mandatory` (an exchange
    /// with no queue bound for it is a failed attempt, not a silent drop).
    async fn publish(&self, subject: &Subject, due: &plan::Due) -> Result<(), Error> {
        let (Some(broker), Some(exchange)) = (&self.broker, &self.settings.exchange) else { return Err(Error::NoExchange) };
        if !self.declared.load(std::sync::atomic::Ordering::Relaxed) {
            let declare = async {
                let channel = broker.scratch().await?;
                let options = lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() };
                channel
                    .exchange_declare(exchange.as_str().into(), lapin::ExchangeKind::Topic, options, Default::default())
                    .await
                    .map_err(|source| crate::broker::BrokerError::Amqp { what: "exchange.declare", source })
            };
            tokio::time::timeout(self.settings.timeout, declare)
                .await
                .unwrap_or(Err(crate::broker::BrokerError::NoAnswer { what: "exchange.declare", timeout: self.settings.timeout }))
                .map_err(|source| Error::Declare { exchange: exchange.clone(), source })?;
            self.declared.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let body = subject.body(due.phase, jiff::Timestamp::now());
        let routing_key = event::event_type(subject.kind(), due.phase);
        broker.publish_confirmed(exchange, &routing_key, event::CONTENT_TYPE, &[body]).await.map_err(|source| {
            // Declare again after a failure: the broker may have lost the exchange with the connection.
            self.declared.store(false, std::sync::atomic::Ordering::Relaxed);
            Error::Publish { exchange: exchange.clone(), source }
        })
    }

    /// One attempt of `due` for `subject`.
    async fn attempt(&self, subject: &Subject, due: &plan::Due) -> Outcome {
        if due.notification >= subject.notify().len() {
            return match self.publish(subject, due).await {
                Ok(()) => Outcome::Delivered,
                Err(error) => Outcome::Failed(format!("{error} ({})", error.reason())),
            };
        }
        let notification = &subject.notify()[due.notification];
        let target = match deliver::target(&notification.webhook.url) {
            Ok(target) => target,
            Err(error) => return Outcome::Refused(error),
        };
        let addr = match deliver::resolve(&target, &self.settings.allow).await {
            Ok(addr) => addr,
            Err(outcome) => return outcome,
        };
        let key = match self.signing_key(&subject.namespace(), notification).await {
            Ok(key) => key,
            Err(error) => return Outcome::Failed(format!("{error} ({})", error.reason())),
        };
        let now = jiff::Timestamp::now();
        let body = subject.body(due.phase, now);
        let timestamp = now.as_second();
        let headers = vec![
            ("content-type", event::CONTENT_TYPE.to_string()),
            (event::ID_HEADER, due.id.clone()),
            (event::TIMESTAMP_HEADER, timestamp.to_string()),
            (event::SIGNATURE_HEADER, event::signature(&key, timestamp, &body)),
        ];
        deliver::post(deliver::Request { target: &target, addr, headers, body }, self.tls.as_ref(), self.settings.timeout).await
    }

    /// Delivers what is due for `subject` and records each outcome.
    async fn serve(&self, subject: Subject) {
        let Some(records) = self.records(&subject) else { return };
        let now = jiff::Timestamp::now();
        let destinations = plan::destinations(subject.notify(), self.settings.exchange.as_deref());
        let (deliveries, mut records, _next) =
            plan::due(&destinations, subject.phase(), &subject.uid(), &records, &self.settings.retry, now);
        if deliveries.is_empty() {
            return;
        }
        for due in &deliveries {
            let outcome = self.attempt(&subject, due).await;
            let url = &destinations[due.notification].name;
            let Some(record) = records.iter().find(|r| &r.destination == url && r.phase == due.phase) else { continue };
            let (updated, abandoned) = plan::record_outcome(record, &outcome, &self.settings.retry, jiff::Timestamp::now());
            let label = match (&outcome, abandoned) {
                (Outcome::Delivered, _) => "delivered",
                (Outcome::Refused(_), _) => "refused",
                (Outcome::Failed(_), true) => "exhausted",
                (Outcome::Failed(_), false) => "failed",
            };
            crate::metrics::global().record_notification(subject.kind().label(), label);
            match &outcome {
                Outcome::Delivered => {
                    tracing::info!(kind = subject.kind().label(), namespace = subject.namespace(), name = subject.name(), id = %due.id, attempts = updated.attempts, "completion event delivered")
                }
                Outcome::Failed(error) | Outcome::Refused(error) => {
                    tracing::warn!(kind = subject.kind().label(), namespace = subject.namespace(), name = subject.name(), id = %due.id, attempts = updated.attempts, outcome = label, %error, "completion event not delivered")
                }
            }
            if abandoned {
                let (reason, what) = match &outcome {
                    Outcome::Refused(_) => (plan::DESTINATION_REFUSED, "refused by the operator's allow-list".to_string()),
                    _ => (plan::ATTEMPTS_EXHAUSTED, format!("not delivered after {} attempts", updated.attempts)),
                };
                let note = format!("completion event {} to {url} {what}: {}", due.id, updated.last_error.as_deref().unwrap_or(""));
                self.record_event(&subject, reason, note).await;
            }
            plan::replace(&mut records, updated);
        }
        self.store(&subject, records).await;
    }

    async fn record_event(&self, subject: &Subject, reason: &str, note: String) {
        let event = Event {
            type_: EventType::Warning,
            reason: format!("Notification{reason}"),
            note: Some(note.chars().take(1000).collect()),
            action: "Notify".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &subject.object_ref()).await {
            tracing::warn!(%error, namespace = subject.namespace(), name = subject.name(), "could not record a notification Event");
        }
    }

    /// One pass: every finished Job and Workflow with `spec.notify`.
    pub async fn tick(&self, jobs: &Store<Job>, workflows: &Store<Workflow>) {
        let workflow_list = workflows.state();
        self.reconcile_workflows(&workflow_list).await;
        let subjects: Vec<Subject> = jobs
            .state()
            .into_iter()
            .filter(|j| !j.spec.notify.is_empty() && job_phase(j).is_some() && j.metadata.deletion_timestamp.is_none())
            .map(Subject::Job)
            .chain(
                workflow_list
                    .into_iter()
                    .filter(|w| !w.spec.notify.is_empty() && workflow_phase(w).is_some() && w.metadata.deletion_timestamp.is_none())
                    .map(Subject::Workflow),
            )
            .collect();
        futures::stream::iter(subjects).for_each_concurrent(CONCURRENCY, |subject| self.serve(subject)).await;
    }
}

/// Runs the notifier until the process stops (only while leading: [`crate::run`] starts it with
/// the controllers). `jobs` is the shared Job watch's store; the Workflows are watched here.
pub async fn run(notifier: Arc<Notifier>, jobs: Store<Job>, config: crate::controllers::Config, client: Client) {
    let watch = crate::controllers::SharedWatch::<Workflow>::new(client, &config, crate::controllers::index::no_keys);
    let workflows = watch.store.clone();
    let ticks = async {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            notifier.tick(&jobs, &workflows).await;
        }
    };
    tokio::select! {
        _ = ticks => {}
        _ = watch.run() => tracing::error!("the notifier's Workflow watch ended"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_notified_job_parses_and_names_a_webhook_the_notifier_can_call() {
        let text = include_str!("../../../examples/notifications/notified-job.yaml");
        let job_doc = text.split("\n---\n").find(|d| d.contains("kind: Job")).expect("a Job document");
        let job: Job = serde_saphyr::from_str(job_doc).expect("the example Job parses");
        assert_eq!(job.spec.notify.len(), 1);
        let n = &job.spec.notify[0];
        assert_eq!(n.on, vec![NotifyPhase::Succeeded, NotifyPhase::Failed]);
        assert!(text.contains(&format!("name: {}", n.webhook.secret_ref.name)), "the example ships its Secret");
        let target = deliver::target(&n.webhook.url).expect("a URL the notifier calls");
        assert_eq!((target.https, target.port), (false, 8080));
    }

    fn record(destination: &str) -> NotificationStatus {
        NotificationStatus {
            destination: destination.into(),
            phase: NotifyPhase::Succeeded,
            id: "u.succeeded".into(),
            attempts: 2,
            last_attempt_time: None,
            delivered: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH)),
            abandoned: None,
            reason: None,
            last_error: Some("HTTP 500".into()),
        }
    }

    /// The Job and Workflow controllers write whole statuses: the records must survive them.
    #[test]
    fn the_status_the_controllers_write_keeps_the_notification_records() {
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH);
        let spec = serde_json::from_value(serde_json::json!({"poolRef": "p", "completions": 2})).unwrap();
        let mut job = Job::new("j", spec);
        job.status = Some(crate::crd::JobStatus { notifications: vec![record("http://a/")], ..Default::default() });
        let ledger = crate::controllers::job::ledger::Ledger::restore(2, job.status.as_ref());
        let desired = crate::controllers::job::status::desired(&job, &ledger, None, &now);
        assert_eq!(desired.notifications, vec![record("http://a/")]);

        let mut wf: Workflow = serde_json::from_value(serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "Workflow",
            "metadata": {"name": "w", "namespace": "n", "uid": "w-1"},
            "spec": {"steps": [{"name": "a", "job": {"poolRef": "p", "payload": 1}}]},
        }))
        .unwrap();
        wf.status = Some(crate::crd::WorkflowStatus { notifications: vec![record("http://b/")], ..Default::default() });
        let plan = crate::controllers::workflow::plan::plan(&wf, &Default::default(), jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(crate::controllers::workflow::status::desired(&wf, &plan, &now).notifications, vec![record("http://b/")]);
        // An invalid Workflow's status too.
        wf.spec.steps[0].depends_on = vec!["a".into()];
        let plan = crate::controllers::workflow::plan::plan(&wf, &Default::default(), jiff::Timestamp::UNIX_EPOCH);
        assert!(plan.invalid.is_some());
        assert_eq!(crate::controllers::workflow::status::desired(&wf, &plan, &now).notifications, vec![record("http://b/")]);
    }

    #[test]
    fn exchange_names_are_checked_at_start() {
        for good in ["warren.events", "team-a:jobs_v1", "x"] {
            assert_eq!(valid_exchange(good), Ok(()), "{good}");
        }
        for bad in ["", "amq.topic", "has space", "slash/no", &"x".repeat(256)] {
            assert!(valid_exchange(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_finished_phases_send_events() {
        let spec = serde_json::from_value(serde_json::json!({"poolRef": "p", "completions": 1})).unwrap();
        let mut job = Job::new("j", spec);
        for (phase, expected) in [
            (JobPhase::Pending, None),
            (JobPhase::Running, None),
            (JobPhase::Suspended, None),
            (JobPhase::Succeeded, Some(NotifyPhase::Succeeded)),
            (JobPhase::Failed, Some(NotifyPhase::Failed)),
        ] {
            job.status = Some(crate::crd::JobStatus { phase, ..Default::default() });
            assert_eq!(job_phase(&job), expected, "{phase:?}");
        }
        job.status = None;
        assert_eq!(job_phase(&job), None);
    }
}

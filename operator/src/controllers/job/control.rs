//! The operator's side of the control exchange: it broadcasts the set of cancelled Jobs
//! ([`ControlMessage`]) to every worker of the installation.
//!
//! The whole set is sent every [`BROADCAST_INTERVAL`] and at once (within [`CHECK_INTERVAL`])
//! when it changes, so a worker that starts or reconnects learns it within a second, and a
//! resumed Job simply leaves it. Deletions are seen by diffing the Job store: a uid that leaves
//! it is buried in the [`JobBook`] (its tasks are dropped for a while). Owns no decision about
//! *which* Jobs are cancelled: that is the book's ([`JobBook::cancelled_jobs`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use warren_protocol::headers::CONTROL_SIGNATURE;
use warren_protocol::{CONTROL_CONTENT_TYPE, CancelledJob, ControlMessage, PROTOCOL_VERSION, PausedPool, now_ms};

use crate::broker::{Broker, BrokerError, reconnect_delay};
use crate::controllers::job::book::JobBook;
use crate::crd::Job;

/// The whole set is re-sent at least this often.
pub const BROADCAST_INTERVAL: Duration = Duration::from_secs(1);
/// How often the set is recomputed (a change is sent at once).
pub const CHECK_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
enum ControlError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Topology(#[from] warren_protocol::topology::TopologyError),
}

/// Uids that were in the store at the last look and are not any more.
pub fn deleted_since(previous: &HashSet<String>, current: &HashSet<String>) -> Vec<String> {
    let mut gone: Vec<String> = previous.difference(current).cloned().collect();
    gone.sort();
    gone
}

/// What the broadcast says, and what signs it.
pub struct Sources {
    pub book: Arc<JobBook>,
    pub jobs: Store<Job>,
    pub circuits: Arc<crate::admission::Circuits>,
    pub signer: Arc<warren_protocol::control_signature::Signer>,
}

/// Runs forever: watches for deletions, broadcasts the set, reconnects with backoff.
pub async fn run(url: String, tls: warren_protocol::amqp::Tls, exchange: String, sources: Sources) {
    let mut attempt = 0u32;
    let mut known: HashSet<String> = HashSet::new();
    loop {
        match broadcast(&url, &tls, &exchange, &sources, &mut known).await {
            Ok(()) => attempt = 0,
            Err(error) => tracing::warn!(%error, attempt, "control broadcaster lost its connection; reconnecting"),
        }
        tokio::time::sleep(reconnect_delay(attempt, rand::random())).await;
        attempt = attempt.saturating_add(1);
    }
}

async fn broadcast(
    url: &str,
    tls: &warren_protocol::amqp::Tls,
    exchange: &str,
    sources: &Sources,
    known: &mut HashSet<String>,
) -> Result<(), ControlError> {
    let Sources { book, jobs, circuits, signer } = sources;
    let amqp = |what: &'static str| move |source: lapin::Error| ControlError::Broker(BrokerError::Amqp { what, source });
    let conn = Broker::connect(url, tls, 1).await?;
    let channel = conn.create_channel().await.map_err(amqp("channel.open"))?;
    let mut last: Option<((Vec<CancelledJob>, Vec<PausedPool>), Instant)> = None;
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let current: HashSet<String> = jobs.state().iter().filter_map(|j| j.uid()).collect();
        for uid in deleted_since(known, &current) {
            tracing::info!(job_uid = %uid, "Job deleted; its remaining tasks will be dropped");
            book.bury(&uid, now_ms());
        }
        *known = current;
        // Until the admission has resumed every pool's circuit from its status (the first
        // 100 ms after a start), an empty `paused` list would let the workers of an open pool
        // start their buffered tasks.
        if !circuits.primed() {
            continue;
        }
        let cancelled = book.cancelled_jobs(now_ms());
        let paused = circuits.paused();
        let due = match &last {
            Some(((sent, sent_paused), at)) => *sent != cancelled || *sent_paused != paused || at.elapsed() >= BROADCAST_INTERVAL,
            None => true,
        };
        if !due {
            continue;
        }
        // Re-declared every time: cheap, and the exchange may have been deleted meanwhile.
        warren_protocol::topology::declare_control_exchange(&channel, exchange).await?;
        let message =
            ControlMessage { version: PROTOCOL_VERSION, sent_at_ms: now_ms(), cancelled: cancelled.clone(), paused: paused.clone() };
        let body = message.to_json();
        // Signed: every worker of the installation applies it, so it must be the operator's.
        let mut headers = lapin::types::FieldTable::default();
        headers.insert(CONTROL_SIGNATURE.into(), lapin::types::AMQPValue::LongString(signer.sign(&body).into()));
        channel
            .basic_publish(
                exchange.into(),
                "".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_content_type(CONTROL_CONTENT_TYPE.into()).with_headers(headers),
            )
            .await
            .map_err(amqp("basic.publish"))?;
        if last.as_ref().is_none_or(|((sent, _), _)| *sent != cancelled) {
            tracing::info!(cancelled = cancelled.len(), "broadcast the cancelled Jobs");
        }
        if last.as_ref().is_none_or(|((_, sent_paused), _)| *sent_paused != paused) {
            tracing::info!(paused = paused.len(), "broadcast the pools whose circuit is open");
        }
        book.set_broadcast(cancelled.iter().map(|c| c.uid.clone()).collect());
        last = Some(((cancelled, paused), Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletions_are_uids_that_left_the_store() {
        let set = |uids: &[&str]| uids.iter().map(|u| u.to_string()).collect::<HashSet<_>>();
        assert_eq!(deleted_since(&set(&["a", "b", "c"]), &set(&["b", "d"])), vec!["a".to_string(), "c".to_string()]);
        assert!(deleted_since(&set(&[]), &set(&["a"])).is_empty(), "a fresh operator sees no deletions");
    }
}

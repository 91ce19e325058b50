//! Samples queue depths from RabbitMQ for the metrics: every pool's work queues (ready tasks,
//! consumers), its dead-letter queue, and the reports queue.
//!
//! A pool none of whose Jobs may run and whose queues had no consumer is sampled every
//! [`QUIET_INTERVAL`] only (its numbers stay as last sampled meanwhile).
//!
//! Runs on the leader only, on its own connection: a passive declare of a missing queue closes
//! its channel, which must not disturb publishing. Sampling is periodic (not per scrape) so that
//! scrapes never wait for the broker. Must not declare or change anything on the broker.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use warren_protocol::names;

use crate::broker::{Broker, reconnect_delay};
use crate::controllers::job::book::JobBook;
use crate::crd::WorkerPool;
use crate::metrics::{self, PoolLabels, PoolOnlyLabels};

/// One queue to sample and where its numbers go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sampled {
    Work { queue: String, labels: PoolLabels },
    DeadLetter { queue: String, labels: PoolOnlyLabels },
}

/// The queues of the pools, in a stable order. Pure.
pub fn queues_of<'a>(pools: impl IntoIterator<Item = &'a WorkerPool>) -> Vec<Sampled> {
    let mut out = Vec::new();
    for pool in pools {
        let namespace = pool.namespace().unwrap_or_default();
        let name = pool.name_any();
        for priority in &pool.spec.priorities {
            out.push(Sampled::Work {
                queue: names::work_queue(&namespace, &name, priority),
                labels: PoolLabels { namespace: namespace.clone(), pool: name.clone(), priority: priority.clone() },
            });
        }
        out.push(Sampled::DeadLetter {
            queue: names::dead_letter_queue(&namespace, &name),
            labels: PoolOnlyLabels { namespace, pool: name },
        });
    }
    out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    out
}

/// (ready messages, consumers) of a queue; `None` when it does not exist (yet).
async fn inspect(connection: &lapin::Connection, channel: &mut lapin::Channel, queue: &str) -> Result<Option<(u32, u32)>, lapin::Error> {
    let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    match channel.queue_declare(queue.into(), options, FieldTable::default()).await {
        Ok(q) => Ok(Some((q.message_count(), q.consumer_count()))),
        Err(error) if connection.status().connected() => {
            // 404: the channel is closed by the broker; open another one for the next queue.
            tracing::debug!(%queue, %error, "queue not inspectable");
            *channel = connection.create_channel().await?;
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// A pool none of whose Jobs may run and whose work queues had no consumer at its last sample
/// changes only through a publisher outside the operator (a `warren dlq replay`, a stray
/// message): it is sampled this often instead of every interval, so that idle pools cost little.
pub const QUIET_INTERVAL: Duration = Duration::from_secs(30);

/// The numbers of one queue at its last sample (`None`: it did not exist).
type Numbers = Option<(u32, u32)>;

/// What the sampler knows between samples: per pool, when its queues were last sampled; per
/// queue, what that sample said.
#[derive(Default)]
struct Memory {
    sampled_at: HashMap<String, Instant>,
    numbers: HashMap<String, Numbers>,
}

/// Whether a pool's queues are sampled now. Pure.
pub fn due(sampled_at: Option<Instant>, quiet: bool, now: Instant) -> bool {
    match sampled_at {
        None => true,
        Some(at) => !quiet || now.duration_since(at) >= QUIET_INTERVAL,
    }
}

fn pool_of(sampled: &Sampled) -> String {
    match sampled {
        Sampled::Work { labels, .. } => format!("{}/{}", labels.namespace, labels.pool),
        Sampled::DeadLetter { labels, .. } => format!("{}/{}", labels.namespace, labels.pool),
    }
}

fn queue_of(sampled: &Sampled) -> &str {
    match sampled {
        Sampled::Work { queue, .. } | Sampled::DeadLetter { queue, .. } => queue,
    }
}

async fn sample_once(
    connection: &lapin::Connection,
    channel: &mut lapin::Channel,
    pools: &Store<WorkerPool>,
    book: &JobBook,
    memory: &mut Memory,
    reports_queue: &str,
) -> Result<(), lapin::Error> {
    let state = pools.state();
    let live: Vec<&WorkerPool> = state.iter().map(|p| p.as_ref()).filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    let queues = queues_of(live.iter().copied());
    let now = Instant::now();
    // Which pools are due: by what their last sample said and whether a Job of theirs may run.
    let mut due_pools = HashSet::new();
    for pool in &live {
        let (namespace, name) = (pool.namespace().unwrap_or_default(), pool.name_any());
        let key = format!("{namespace}/{name}");
        let consumed = pool.spec.priorities.iter().any(|priority| {
            memory
                .numbers
                .get(&names::work_queue(&namespace, &name, priority))
                .is_some_and(|n| n.is_some_and(|(_, consumers)| consumers > 0))
        });
        let quiet = !consumed && !book.has_live_jobs(&namespace, &name);
        if due(memory.sampled_at.get(&key).copied(), quiet, now) {
            due_pools.insert(key);
        }
    }
    for sampled in &queues {
        if due_pools.contains(&pool_of(sampled)) {
            let numbers = inspect(connection, channel, queue_of(sampled)).await?;
            memory.numbers.insert(queue_of(sampled).to_string(), numbers);
        }
    }
    for key in due_pools {
        memory.sampled_at.insert(key, now);
    }
    // Forget the pools and queues that are gone.
    let current: HashSet<&str> = queues.iter().map(queue_of).collect();
    memory.numbers.retain(|queue, _| current.contains(queue.as_str()));
    let pool_keys: HashSet<String> = queues.iter().map(pool_of).collect();
    memory.sampled_at.retain(|key, _| pool_keys.contains(key));

    let reports = inspect(connection, channel, reports_queue).await?;
    let m = metrics::global();
    m.queue_ready.clear();
    m.queue_consumers.clear();
    m.dead_letter_messages.clear();
    for sampled in queues {
        let Some(Some((ready, consumers))) = memory.numbers.get(queue_of(&sampled)).copied() else { continue };
        match sampled {
            Sampled::Work { labels, .. } => {
                m.queue_ready.get_or_create(&labels).set(i64::from(ready));
                m.queue_consumers.get_or_create(&labels).set(i64::from(consumers));
            }
            Sampled::DeadLetter { labels, .. } => {
                m.dead_letter_messages.get_or_create(&labels).set(i64::from(ready));
            }
        }
    }
    if let Some((ready, _)) = reports {
        m.reports_queue_messages.set(i64::from(ready));
    }
    Ok(())
}

/// Samples every `interval` forever, reconnecting with backoff.
pub async fn run(
    url: String,
    tls: warren_protocol::amqp::Tls,
    reports_queue: String,
    pools: Store<WorkerPool>,
    book: Arc<JobBook>,
    interval: Duration,
) {
    let mut attempt = 0u32;
    let mut memory = Memory::default();
    loop {
        match Broker::connect(&url, &tls, 1).await {
            Ok(connection) => match connection.create_channel().await {
                Ok(mut channel) => {
                    attempt = 0;
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        if let Err(error) = sample_once(&connection, &mut channel, &pools, &book, &mut memory, &reports_queue).await {
                            tracing::warn!(%error, "sampling queue depths failed; reconnecting");
                            break;
                        }
                    }
                    let _ = connection.close(200, "reconnecting".into()).await;
                }
                Err(error) => tracing::warn!(%error, "queue sampler: opening a channel failed"),
            },
            Err(error) => tracing::warn!(%error, "queue sampler: cannot connect"),
        }
        tokio::time::sleep(reconnect_delay(attempt, rand::random())).await;
        attempt = attempt.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::WorkerPoolSpec;

    #[test]
    fn a_quiet_pool_is_sampled_every_quiet_interval_a_busy_one_every_time() {
        let now = Instant::now();
        let recent = now - Duration::from_secs(5);
        let old = now - QUIET_INTERVAL;
        assert!(due(None, true, now), "never sampled: now");
        assert!(due(Some(recent), false, now), "busy: every interval");
        assert!(!due(Some(recent), true, now), "quiet, sampled 5 s ago: not yet");
        assert!(due(Some(old), true, now), "quiet, sampled a quiet interval ago: now");
    }

    #[test]
    fn every_priority_queue_and_the_dead_letter_queue_are_sampled() {
        let spec: WorkerPoolSpec = serde_json::from_value(serde_json::json!({"workers": {}, "priorities": ["high", "low"]})).unwrap();
        let mut pool = WorkerPool::new("images", spec);
        pool.metadata.namespace = Some("media".into());
        let queues = queues_of([&pool]);
        let labels = |priority: &str| PoolLabels { namespace: "media".into(), pool: "images".into(), priority: priority.into() };
        assert_eq!(
            queues,
            vec![
                Sampled::DeadLetter {
                    queue: names::dead_letter_queue("media", "images"),
                    labels: PoolOnlyLabels { namespace: "media".into(), pool: "images".into() },
                },
                Sampled::Work { queue: names::work_queue("media", "images", "high"), labels: labels("high") },
                Sampled::Work { queue: names::work_queue("media", "images", "low"), labels: labels("low") },
            ]
        );
    }
}

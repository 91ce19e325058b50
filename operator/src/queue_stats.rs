//! Samples queue depths from RabbitMQ for the metrics: every pool's work queues (ready tasks,
//! consumers), its dead-letter queue, and the reports queue.
//!
//! Runs on the leader only, on its own connection: a passive declare of a missing queue closes
//! its channel, which must not disturb publishing. Sampling is periodic (not per scrape) so that
//! scrapes never wait for the broker. Must not declare or change anything on the broker.

use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use warren_protocol::names;

use crate::broker::{Broker, reconnect_delay};
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

async fn sample_once(
    connection: &lapin::Connection,
    channel: &mut lapin::Channel,
    pools: &Store<WorkerPool>,
    reports_queue: &str,
) -> Result<(), lapin::Error> {
    let state = pools.state();
    let queues = queues_of(state.iter().map(|p| p.as_ref()).filter(|p| p.metadata.deletion_timestamp.is_none()));
    let mut work = Vec::new();
    let mut dead = Vec::new();
    for sampled in queues {
        match sampled {
            Sampled::Work { queue, labels } => {
                if let Some(numbers) = inspect(connection, channel, &queue).await? {
                    work.push((labels, numbers));
                }
            }
            Sampled::DeadLetter { queue, labels } => {
                if let Some((ready, _)) = inspect(connection, channel, &queue).await? {
                    dead.push((labels, ready));
                }
            }
        }
    }
    let reports = inspect(connection, channel, reports_queue).await?;
    let m = metrics::global();
    m.queue_ready.clear();
    m.queue_consumers.clear();
    for (labels, (ready, consumers)) in work {
        m.queue_ready.get_or_create(&labels).set(i64::from(ready));
        m.queue_consumers.get_or_create(&labels).set(i64::from(consumers));
    }
    m.dead_letter_messages.clear();
    for (labels, ready) in dead {
        m.dead_letter_messages.get_or_create(&labels).set(i64::from(ready));
    }
    if let Some((ready, _)) = reports {
        m.reports_queue_messages.set(i64::from(ready));
    }
    Ok(())
}

/// Samples every `interval` forever, reconnecting with backoff.
pub async fn run(url: String, tls: warren_protocol::amqp::Tls, reports_queue: String, pools: Store<WorkerPool>, interval: Duration) {
    let mut attempt = 0u32;
    loop {
        match Broker::connect(&url, &tls, 1).await {
            Ok(connection) => match connection.create_channel().await {
                Ok(mut channel) => {
                    attempt = 0;
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        if let Err(error) = sample_once(&connection, &mut channel, &pools, &reports_queue).await {
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

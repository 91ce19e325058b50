//! Classic work queues are declared as version 2 (`x-queue-version: 2`), and a pool whose queues
//! were declared before that (without the argument) is recognised, so the operator can keep them.

mod common;

use common::*;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use warren_worker::topology;

fn classic(version: Option<i8>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("classic".into()));
    if let Some(v) = version {
        args.insert("x-queue-version".into(), AMQPValue::ShortShortInt(v));
    }
    args
}

#[tokio::test]
async fn classic_work_queues_are_version_2_and_older_ones_are_recognised() {
    let pool = TestPool::new(&["high", "normal"]).await;
    let queue = pool.work_queue("normal");
    assert_eq!(topology::WorkQueueArgs::of_type("classic").classic_version, Some(2));
    assert_eq!(topology::WorkQueueArgs::of_type("quorum").classic_version, None);
    assert!(pool.declares_with(&queue, classic(Some(2))).await, "the work queue is version 2");
    assert!(!pool.declares_with(&queue, classic(None)).await, "the broker tells a version-2 queue from a default one");

    // Queues declared before Warren set the version: declaring the pool again is refused with
    // an error that names the argument, and the legacy arguments are accepted.
    let old = TestPool::new(&["normal"]).await;
    let old_queue = old.work_queue("normal");
    let ch = old.connection.create_channel().await.unwrap();
    ch.queue_delete(old_queue.as_str().into(), Default::default()).await.unwrap();
    ch.queue_declare(old_queue.as_str().into(), QueueDeclareOptions::durable(), classic(None)).await.unwrap();
    let args = topology::WorkQueueArgs::of_type("classic");
    let refused = topology::declare_pool(&ch, &old.namespace, &old.pool, &old.classes, &args).await.unwrap_err();
    assert!(refused.is_inequivalent_arg("x-queue-version"), "{refused}");
    assert!(!refused.is_inequivalent_arg("x-max-length"), "{refused}");
    let ch = old.connection.create_channel().await.unwrap();
    topology::declare_pool(&ch, &old.namespace, &old.pool, &old.classes, &args.legacy()).await.unwrap();
    assert!(old.declares_with(&old_queue, classic(None)).await, "the old queue kept its version");

    pool.cleanup(&[]).await;
    old.cleanup(&[]).await;
}

//! Classic work queues are declared as version 2 (`x-queue-version: 2`), and a pool whose queues
//! were declared before that (without the argument) is recognised, so the operator can keep them.

mod common;

use common::*;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use warren_worker::topology;

/// Re-declares `queue` with `args` on a fresh channel: Ok only if the queue has exactly them.
async fn declares_with(pool: &TestPool, queue: &str, args: FieldTable) -> bool {
    let channel = pool.connection.create_channel().await.unwrap();
    let ok = channel.queue_declare(queue.into(), QueueDeclareOptions::durable(), args).await.is_ok();
    let _ = channel.close(200, "OK".into()).await;
    ok
}

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
    assert!(declares_with(&pool, &queue, classic(Some(2))).await, "the work queue is version 2");
    assert!(!declares_with(&pool, &queue, classic(None)).await, "the broker tells a version-2 queue from a default one");

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
    assert!(declares_with(&old, &old_queue, classic(None)).await, "the old queue kept its version");

    pool.cleanup(&[]).await;
    old.cleanup(&[]).await;
}

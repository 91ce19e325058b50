//! The operator's shared broker connection against the real RabbitMQ: every Job publishes on it,
//! so one publish that fails must not fail the others (issue #17: at 1,000 pools, every failed
//! publish dropped the connection for every Job).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use warren_operator::broker::{Broker, BrokerError};
use warren_operator::metrics::{PUBLISH_CONNECTION, global};

fn amqp_url() -> String {
    std::env::var("WARREN_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn reconnects() -> u64 {
    global().broker_reconnects.get_or_create(&PUBLISH_CONNECTION).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_fails_only_itself_and_keeps_the_connection() {
    let broker = Broker::new(amqp_url(), Default::default());
    let name = format!("warren.test-broker-{:08x}", rand::random::<u32>());
    {
        let setup = broker.scratch().await.expect("scratch channel");
        setup
            .exchange_declare(name.as_str().into(), lapin::ExchangeKind::Direct, ExchangeDeclareOptions::default(), FieldTable::default())
            .await
            .unwrap();
        setup.queue_declare(name.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
        setup
            .queue_bind(name.as_str().into(), name.as_str().into(), "k".into(), QueueBindOptions::default(), FieldTable::default())
            .await
            .unwrap();
    }
    let body = vec![b"{}".to_vec()];
    broker.publish_confirmed(&name, "k", "application/json", &body).await.expect("first publish");
    let before = reconnects();

    // Unroutable (mandatory, no queue bound to the key): refused, and nothing else is touched.
    let unroutable = broker.publish_confirmed(&name, "nobody", "application/json", &body).await;
    assert!(matches!(unroutable, Err(BrokerError::NotConfirmed { count: 1 })), "{unroutable:?}");
    // An exchange that does not exist: the broker closes the publishing channel.
    let missing = broker.publish_confirmed(&format!("{name}.missing"), "k", "application/json", &body).await;
    assert!(missing.is_err(), "{missing:?}");

    // The next publishes — another Job's — go through on the same connection.
    for _ in 0..3 {
        broker.publish_confirmed(&name, "k", "application/json", &body).await.expect("a publish after another's failure");
    }
    assert_eq!(reconnects(), before, "no failure above may drop the shared connection");
    let cleanup = broker.scratch().await.expect("scratch channel");
    let deleted = cleanup.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
    assert_eq!(deleted, 4, "the first publish and the three after the failures arrived");
    cleanup.exchange_delete(name.as_str().into(), Default::default()).await.unwrap();
}

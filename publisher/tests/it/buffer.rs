//! All workers down: the buffer fills, then the full-buffer policy applies, counted exactly;
//! deadlines and close.

use std::time::Duration;

use shardtally_publisher::{
    DROPPED_BUFFER_FULL, FAILED_CLOSED, FAILED_DEADLINE, FullPolicy, PublishError, Publisher,
};

use crate::common::{
    Ledger, ServerConfig, TestServer, bounded, free_addr, geo_schema, geo_values, publish_geo,
};

fn down_publisher(url: &str, policy: FullPolicy) -> Publisher {
    Publisher::builder(url)
        .schema(geo_schema())
        .batch_max_events(10)
        .buffer_max_events(100)
        .full_policy(policy)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .build()
        .unwrap()
}

#[tokio::test]
async fn drop_newest_counts_every_drop_and_delivers_the_rest_once_a_worker_is_up() {
    let (x, y) = (free_addr().await, free_addr().await);
    let publisher = down_publisher(&format!("{{tcp://{x},tcp://{y}}}"), FullPolicy::DropNewest);
    let mut refused = 0;
    for i in 0..150 {
        match publisher.publish_values("geo", &geo_values(i)).await {
            Ok(()) => {}
            Err(PublishError::BufferFull { events, .. }) => {
                assert_eq!(events, 100);
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(refused, 50);
    let stats = publisher.stats();
    assert_eq!(stats.published, 100);
    assert_eq!(stats.dropped.get(DROPPED_BUFFER_FULL), Some(&50));
    assert_eq!((stats.queued, stats.in_flight, stats.acked), (100, 0, 0));
    // A worker comes up where the publisher points: the buffer drains.
    let ledger = Ledger::new();
    let _w = TestServer::start_on(y, ServerConfig::new("late"), ledger.clone()).await;
    bounded(30, "flush", publisher.flush()).await.unwrap();
    let stats = publisher.stats();
    assert_eq!(stats.acked, 100);
    assert_eq!(stats.dropped.get(DROPPED_BUFFER_FULL), Some(&50));
    assert_eq!(stats.failed_total(), 0);
    ledger.assert_each_ts_once(100);
}

#[tokio::test]
async fn block_waits_for_its_timeout_then_drops() {
    let x = free_addr().await;
    let timeout = Duration::from_millis(50);
    let publisher = down_publisher(&format!("tcp://{x}"), FullPolicy::Block { timeout });
    publish_geo(&publisher, 0..100).await;
    let err = bounded(
        10,
        "blocked publish",
        publisher.publish_values("geo", &geo_values(100)),
    )
    .await
    .unwrap_err();
    let PublishError::BufferFull { waited, events, .. } = err else {
        panic!("{err}");
    };
    assert!(waited >= timeout, "{waited:?}");
    assert_eq!(events, 100);
    // The sync variant never waits.
    assert!(matches!(
        publisher.try_publish_values("geo", &geo_values(101)),
        Err(PublishError::BufferFull { .. })
    ));
    let stats = publisher.stats();
    assert_eq!(stats.published, 100);
    assert_eq!(stats.dropped.get(DROPPED_BUFFER_FULL), Some(&2));
}

#[tokio::test]
async fn a_blocked_publish_proceeds_when_space_frees_up() {
    let x = free_addr().await;
    let publisher = Publisher::builder(&format!("tcp://{x}"))
        .schema(geo_schema())
        .batch_max_events(10)
        .buffer_max_events(20)
        .full_policy(FullPolicy::Block {
            timeout: Duration::from_secs(30),
        })
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(20))
        .build()
        .unwrap();
    publish_geo(&publisher, 0..20).await;
    let blocked = {
        let p = publisher.clone();
        tokio::spawn(async move { p.publish_values("geo", &geo_values(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!blocked.is_finished());
    let ledger = Ledger::new();
    let _w = TestServer::start_on(x, ServerConfig::new("w"), ledger.clone()).await;
    bounded(30, "blocked publish", blocked)
        .await
        .unwrap()
        .unwrap();
    bounded(30, "flush", publisher.flush()).await.unwrap();
    let stats = publisher.stats();
    assert_eq!((stats.published, stats.acked), (21, 21));
    assert_eq!(stats.dropped_total(), 0);
    ledger.assert_each_ts_once(21);
}

#[tokio::test]
async fn the_delivery_deadline_fails_what_cannot_be_delivered() {
    let x = free_addr().await;
    let publisher = Publisher::builder(&format!("tcp://{x}"))
        .schema(geo_schema())
        .delivery_deadline(Duration::from_millis(200))
        .delivery_reports(true)
        .build()
        .unwrap();
    let mut reports = publisher.take_delivery_reports().unwrap();
    publish_geo(&publisher, 0..10).await;
    bounded(10, "flush", publisher.flush()).await.unwrap();
    let stats = publisher.stats();
    assert_eq!(stats.failed.get(FAILED_DEADLINE), Some(&10));
    assert_eq!((stats.queued, stats.in_flight, stats.acked), (0, 0, 0));
    assert_eq!(stats.buffered_bytes, 0);
    let r = reports.try_recv().unwrap();
    assert_eq!(r.events, 10);
    assert!(
        matches!(r.outcome, shardtally_publisher::Outcome::Failed { ref reason, .. } if reason == "deadline")
    );
}

#[tokio::test]
async fn close_gives_up_after_its_timeout_and_counts_what_was_left() {
    let x = free_addr().await;
    let publisher = down_publisher(&format!("tcp://{x}"), FullPolicy::DropNewest);
    publish_geo(&publisher, 0..15).await;
    let err = bounded(10, "close", publisher.close(Duration::from_millis(50)))
        .await
        .unwrap_err();
    assert_eq!(err, PublishError::CloseTimeout { undelivered: 15 });
    let stats = publisher.stats();
    assert_eq!(stats.failed.get(FAILED_CLOSED), Some(&15));
    assert_eq!(stats.queued, 0);
    assert_eq!(
        publisher.publish_values("geo", &geo_values(0)).await,
        Err(PublishError::Closed)
    );
    assert_eq!(publisher.flush().await, Err(PublishError::Closed));
    // Closing again is harmless.
    publisher.close(Duration::from_millis(1)).await.unwrap();
}

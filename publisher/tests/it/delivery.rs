//! Happy paths: delivery, balancing, failover order, replication, delivery reports.

use std::sync::Arc;
use std::time::Duration;

use shardtally_publisher::{Event, Outcome, Publisher};

use crate::common::{
    Ledger, ServerConfig, TestServer, assert_nothing_held, bounded, endpoint, geo_schema,
    publish_geo, wait_connected,
};

#[tokio::test]
async fn events_are_delivered_and_acked_exactly_once() {
    let ledger = Ledger::new();
    let a = TestServer::start(ServerConfig::new("node-a"), ledger.clone()).await;
    let publisher = Publisher::builder(&a.url())
        .schema(geo_schema())
        .batch_max_events(100)
        .build()
        .unwrap();
    bounded(30, "publish and flush", async {
        publish_geo(&publisher, 0..1234).await;
        publisher.flush().await.unwrap();
    })
    .await;
    let stats = publisher.stats();
    assert_eq!(stats.published, 1234);
    assert_eq!(stats.acked, 1234);
    assert_nothing_held(&stats);
    assert_eq!(stats.batches, 13);
    assert_eq!(stats.dropped_total() + stats.failed_total(), 0);
    let ep = endpoint(&stats, &a.url());
    assert_eq!((ep.acked, ep.acked_batches), (1234, 13));
    assert_eq!(ep.node_id.as_deref(), Some("node-a"));
    assert_eq!(ledger.events(), 1234);
    ledger.assert_each_ts_once(1234);
    bounded(10, "close", publisher.close(Duration::from_secs(5)))
        .await
        .unwrap();
}

/// Three servers in one round-robin group; 3,000 events in batches of 10, in turns of `turn`
/// batches (`None`: the default), published and flushed.
async fn three_servers_in_turns(
    turn: Option<usize>,
) -> (Arc<Ledger>, [TestServer; 3], shardtally_publisher::Stats) {
    let ledger = Ledger::new();
    let a = TestServer::start(ServerConfig::new("a"), ledger.clone()).await;
    let b = TestServer::start(ServerConfig::new("b"), ledger.clone()).await;
    let c = TestServer::start(ServerConfig::new("c"), ledger.clone()).await;
    let mut builder = Publisher::builder(&format!("{{{},{},{}}}", a.url(), b.url(), c.url()))
        .schema(geo_schema())
        .batch_max_events(10)
        .max_in_flight_per_connection(10_000);
    if let Some(n) = turn {
        builder = builder.batches_per_turn(n);
    }
    let publisher = builder.build().unwrap();
    wait_connected(&publisher).await;
    bounded(30, "publish and flush", async {
        publish_geo(&publisher, 0..3000).await;
        publisher.flush().await.unwrap();
    })
    .await;
    let stats = publisher.stats();
    assert_eq!(stats.acked, 3000);
    ledger.assert_each_ts_once(3000);
    (ledger, [a, b, c], stats)
}

#[tokio::test]
async fn round_robin_is_even_over_healthy_members() {
    let (ledger, servers, stats) = three_servers_in_turns(Some(1)).await;
    for s in &servers {
        assert_eq!(endpoint(&stats, &s.url()).acked_batches, 100, "{}", s.url());
        assert_eq!(ledger.events_by(s.node_id()), 1000);
    }
}

#[tokio::test]
async fn round_robin_goes_in_turns_of_consecutive_batches() {
    assert_eq!(shardtally_publisher::DEFAULT_BATCHES_PER_TURN, 8);
    let (ledger, servers, stats) = three_servers_in_turns(None).await;
    // 300 batches: 37 full turns of 8 in URL order from a random first member (say b: b, c, a,
    // b, …), and 4 more batches on the second.
    let first = servers
        .iter()
        .position(|s| endpoint(&stats, &s.url()).acked_batches == 104)
        .expect("a member with 13 turns");
    for (i, batches) in [104, 100, 96].into_iter().enumerate() {
        let s = &servers[(first + i) % 3];
        assert_eq!(
            endpoint(&stats, &s.url()).acked_batches,
            batches,
            "{}",
            s.url()
        );
        assert_eq!(ledger.events_by(s.node_id()), batches * 10);
        // Each turn is 8 consecutive seqs on one server (the last one 4).
        let seqs = ledger.seqs_by(s.node_id());
        let mut runs = vec![1u64];
        for w in seqs.windows(2) {
            if w[1] == w[0] + 1 {
                *runs.last_mut().unwrap() += 1;
            } else {
                runs.push(1);
            }
        }
        let mut expected = vec![8; usize::try_from(batches / 8).unwrap()];
        if batches % 8 != 0 {
            expected.push(batches % 8);
        }
        assert_eq!(runs, expected, "{}", s.url());
    }
}

#[tokio::test]
async fn failover_group_uses_the_first_healthy_member_in_order() {
    let ledger = Ledger::new();
    let a = TestServer::start(ServerConfig::new("a"), ledger.clone()).await;
    let b = TestServer::start(ServerConfig::new("b"), ledger.clone()).await;
    let publisher = Publisher::builder(&format!("{{{}|{}}}", a.url(), b.url()))
        .schema(geo_schema())
        .batch_max_events(10)
        .reconnect_backoff(Duration::from_secs(30), Duration::from_secs(30))
        .build()
        .unwrap();
    wait_connected(&publisher).await;
    bounded(30, "first half", async {
        publish_geo(&publisher, 0..500).await;
        publisher.flush().await.unwrap();
    })
    .await;
    let stats = publisher.stats();
    assert_eq!(endpoint(&stats, &a.url()).acked, 500);
    assert_eq!(endpoint(&stats, &b.url()).acked, 0);
    a.kill();
    bounded(30, "second half", async {
        publish_geo(&publisher, 500..1000).await;
        publisher.flush().await.unwrap();
    })
    .await;
    let stats = publisher.stats();
    assert_eq!(endpoint(&stats, &a.url()).acked, 500);
    assert_eq!(endpoint(&stats, &b.url()).acked, 500);
    assert_eq!(stats.acked, 1000);
    assert_eq!(stats.failed_total(), 0);
    ledger.assert_each_ts_once(1000);
}

#[tokio::test]
async fn every_group_receives_every_batch() {
    let (ledger1, ledger2) = (Ledger::new(), Ledger::new());
    let a = TestServer::start(ServerConfig::new("a"), ledger1.clone()).await;
    let b = TestServer::start(ServerConfig::new("b"), ledger1.clone()).await;
    let c = TestServer::start(ServerConfig::new("c"), ledger2.clone()).await;
    let publisher = Publisher::builder(&format!("{{{},{}}},{{{}}}", a.url(), b.url(), c.url()))
        .schema(geo_schema())
        .batch_max_events(25)
        .delivery_reports(true)
        .build()
        .unwrap();
    let mut reports = publisher.take_delivery_reports().unwrap();
    assert!(publisher.take_delivery_reports().is_none());
    bounded(30, "publish and flush", async {
        publish_geo(&publisher, 0..1000).await;
        publisher.flush().await.unwrap();
    })
    .await;
    assert_eq!(ledger1.events(), 1000);
    assert_eq!(ledger2.events(), 1000);
    ledger1.assert_each_ts_once(1000);
    ledger2.assert_each_ts_once(1000);
    let stats = publisher.stats();
    assert_eq!(stats.acked, 1000);
    assert_eq!(endpoint(&stats, &c.url()).acked, 1000);
    assert_eq!(
        endpoint(&stats, &a.url()).acked + endpoint(&stats, &b.url()).acked,
        1000
    );
    // One report per batch per group, each with one publish time per event.
    let mut per_group = [0u32; 2];
    let mut batches = 0;
    while let Ok(r) = reports.try_recv() {
        batches += 1;
        assert_eq!(r.stream, "geo");
        assert_eq!(r.published_at.len(), r.events as usize);
        let Outcome::Acked { node_id, .. } = &r.outcome else {
            panic!("not acked: {r:?}");
        };
        if r.group == 1 {
            assert_eq!(node_id, "c");
        }
        per_group[r.group] += r.events;
    }
    assert_eq!(per_group, [1000, 1000]);
    assert_eq!(batches, 80);
}

#[tokio::test]
async fn events_and_serde_structs_are_mapped_onto_the_announced_schema() {
    #[derive(serde::Serialize)]
    struct Geo<'a> {
        api: &'a str,
        city: &'a str,
        ts: i64,
    }
    let ledger = Ledger::new();
    let a = TestServer::start(ServerConfig::new("a"), ledger.clone()).await;
    // No schema given: it is learned from the worker's WELCOME.
    let publisher = Publisher::builder(&a.url()).build().unwrap();
    wait_connected(&publisher).await;
    crate::common::wait_until(10, "schema learned", || publisher.schema("geo").is_some()).await;
    bounded(30, "publish", async {
        publisher
            .publish("geo", &Event::new().with("ts", 0i64).with("city", "Naples"))
            .await
            .unwrap();
        let e = Event::from_serialize(&Geo {
            api: "x",
            city: "Rome",
            ts: 1,
        })
        .unwrap();
        publisher.publish("geo", &e).await.unwrap();
        // An int widens to the long attribute.
        publisher
            .publish("geo", &Event::new().with("ts", 2i32))
            .await
            .unwrap();
        let err = publisher
            .publish("geo", &Event::new().with("country", "Italy"))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "stream \"geo\" has no attribute \"country\" (attributes: api, city, ts)"
        );
        publisher.flush().await.unwrap();
    })
    .await;
    let stats = publisher.stats();
    assert_eq!((stats.published, stats.acked, stats.invalid), (3, 3, 1));
    ledger.assert_each_ts_once(3);
}

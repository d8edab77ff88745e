//! Failures: a killed member, ack timeouts, silent workers, goodbye, rejects.

use std::sync::Arc;
use std::time::Duration;

use shardtally_publisher::{
    EndpointState, Event, FAILED_CLOSED, FAILED_DEADLINE, FAILED_REJECTED, Outcome, PublishError,
    Publisher,
};

use crate::common::{
    Ledger, ServerConfig, TestServer, assert_nothing_held, bounded, endpoint, free_addr,
    geo_schema, geo_values, publish_geo, wait_connected, wait_endpoint_connected, wait_until,
};

#[tokio::test]
async fn a_member_killed_mid_stream_loses_and_duplicates_nothing() {
    let ledger = Ledger::new();
    let a = TestServer::start(ServerConfig::new("a"), ledger.clone()).await;
    let b = TestServer::start(ServerConfig::new("b"), ledger.clone()).await;
    let publisher = Publisher::builder(&format!("{{{},{}}}", a.url(), b.url()))
        .schema(geo_schema())
        .batch_max_events(50)
        .ack_timeout(Duration::from_secs(60))
        .reconnect_backoff(Duration::from_secs(60), Duration::from_secs(60))
        .build()
        .unwrap();
    wait_connected(&publisher).await;
    bounded(30, "first half", async {
        publish_geo(&publisher, 0..2500).await;
        publisher.flush().await.unwrap();
    })
    .await;
    // A commits what it receives from now on but never acks it; then it dies.
    a.stop_acking();
    publish_geo(&publisher, 2500..5000).await;
    wait_until(10, "a holds unacked batches", || a.held() > 0).await;
    a.kill();
    bounded(30, "flush after the kill", publisher.flush())
        .await
        .unwrap();

    let stats = publisher.stats();
    assert_eq!(stats.published, 5000);
    assert_eq!(stats.acked, 5000);
    assert_eq!(stats.failed_total() + stats.dropped_total(), 0, "{stats:?}");
    assert_eq!((stats.queued, stats.in_flight), (0, 0));
    assert!(
        stats.retried >= a.held(),
        "{} < {}",
        stats.retried,
        a.held()
    );
    assert_eq!(stats.failed_over, 1);
    let ep_a = endpoint(&stats, &a.url());
    assert_eq!(ep_a.state, EndpointState::BackingOff);
    assert!(ep_a.last_error.is_some());
    // Every event committed exactly once; the held batches reached B again and were deduplicated.
    assert_eq!(ledger.events(), 5000);
    ledger.assert_each_ts_once(5000);
    assert!(ledger.duplicate_batches() >= 1);
    assert_eq!(
        endpoint(&stats, &a.url()).acked + endpoint(&stats, &b.url()).acked,
        5000
    );
}

/// A batch sent to a worker that then died, and too large for the only other one (which announced
/// smaller limits): it is neither split (its seq may be committed already) nor sent there, but
/// waits for a worker that admits it, and later batches are not held behind it.
#[tokio::test]
async fn a_resent_batch_too_large_for_the_others_waits_for_a_worker_that_admits_it() {
    let ledger = Ledger::new();
    let big = TestServer::start(ServerConfig::new("big"), ledger.clone()).await;
    let small_addr = free_addr().await;
    let publisher = Publisher::builder(&format!("{{{},tcp://{small_addr}}}", big.url()))
        .schema(geo_schema())
        .batch_max_events(1000)
        .ack_timeout(Duration::from_secs(60))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .build()
        .unwrap();
    wait_endpoint_connected(&publisher, &big.url()).await;
    // One 1,000-event batch, committed by `big` but not acked.
    big.stop_acking();
    publish_geo(&publisher, 0..1000).await;
    wait_until(10, "big holds the batch", || big.held() == 1).await;
    let mut config = ServerConfig::new("small");
    config.max_batch_events = 100;
    let small = TestServer::start_on(small_addr, config, ledger.clone()).await;
    wait_endpoint_connected(&publisher, &small.url()).await;
    big.kill();
    // New batches (sealed at small's 100 events) go to small meanwhile.
    publish_geo(&publisher, 1000..1200).await;
    wait_until(10, "small commits the new events", || {
        ledger.events_by("small") == 200
    })
    .await;
    assert_eq!(small.rejected(), 0);
    wait_until(10, "the new events are acked", || {
        publisher.stats().acked == 200
    })
    .await;
    let big_again = TestServer::start_on(big.addr, ServerConfig::new("big"), ledger.clone()).await;
    bounded(30, "flush", publisher.flush()).await.unwrap();
    let stats = publisher.stats();
    assert_eq!(stats.acked, 1200, "{stats:?}");
    assert_eq!(stats.failed_total(), 0, "{stats:?}");
    assert_eq!((small.received_batches(), small.rejected()), (2, 0));
    assert_eq!(big_again.received_batches(), 1);
    assert_eq!(ledger.events(), 1200);
    ledger.assert_each_ts_once(1200);
    assert_eq!(ledger.duplicate_batches(), 1);
}

/// Two groups (two clusters): a 1,000-event batch already sent to group 0's worker, then group
/// 1's only worker comes up announcing at most 100 events per batch. The batch cannot be split
/// for both groups (group 0 may have committed its seq), but group 1 never saw it: it is split
/// there alone, and each cluster gets every event once.
async fn two_groups_with_one_sent_batch(
    small_acks: u64,
    deadline: Duration,
) -> (Publisher, Arc<Ledger>, Arc<Ledger>, TestServer, TestServer) {
    let (ledger0, ledger1) = (Ledger::new(), Ledger::new());
    let big = TestServer::start(ServerConfig::new("big"), ledger0.clone()).await;
    let small_addr = free_addr().await;
    let publisher = Publisher::builder(&format!("{{{}}},{{tcp://{small_addr}}}", big.url()))
        .schema(geo_schema())
        .batch_max_events(1000)
        .delivery_deadline(deadline)
        .delivery_reports(true)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .build()
        .unwrap();
    wait_endpoint_connected(&publisher, &big.url()).await;
    publish_geo(&publisher, 0..1000).await;
    wait_until(10, "group 0 commits the batch", || ledger0.events() == 1000).await;
    let mut config = ServerConfig::new("small");
    config.max_batch_events = 100;
    config.acks = small_acks;
    let small = TestServer::start_on(small_addr, config, ledger1.clone()).await;
    (publisher, ledger0, ledger1, big, small)
}

#[tokio::test]
async fn a_batch_sent_in_one_group_is_split_for_a_group_whose_workers_admit_less() {
    let (publisher, ledger0, ledger1, big, small) =
        two_groups_with_one_sent_batch(u64::MAX, Duration::from_secs(120)).await;
    let mut reports = publisher.take_delivery_reports().unwrap();
    bounded(30, "flush", publisher.flush()).await.unwrap();
    let stats = publisher.stats();
    assert_eq!(stats.acked, 1000, "{stats:?}");
    assert_eq!(stats.failed_total(), 0, "{stats:?}");
    assert_nothing_held(&stats);
    // The batch, and its ten parts in group 1.
    assert_eq!(stats.batches, 11);
    assert_eq!((big.received_batches(), big.rejected()), (1, 0));
    assert_eq!((small.received_batches(), small.rejected()), (10, 0));
    assert_eq!(endpoint(&stats, &small.url()).acked, 1000);
    ledger0.assert_each_ts_once(1000);
    ledger1.assert_each_ts_once(1000);
    assert_eq!(ledger1.duplicate_batches(), 0);
    let mut per_group = [(0u32, 0u32); 2];
    while let Ok(r) = reports.try_recv() {
        assert!(matches!(r.outcome, Outcome::Acked { .. }), "{r:?}");
        assert_eq!(r.published_at.len(), r.events as usize);
        per_group[r.group].0 += 1;
        per_group[r.group].1 += r.events;
    }
    assert_eq!(per_group, [(1, 1000), (10, 1000)]);
}

#[tokio::test]
async fn parts_for_one_group_that_miss_the_deadline_fail_their_events_once() {
    // Group 1's worker acks 4 of the 10 parts and holds the other 6.
    let (publisher, ledger0, ledger1, _big, small) =
        two_groups_with_one_sent_batch(4, Duration::from_secs(8)).await;
    wait_until(10, "group 1 holds the parts", || small.held() == 6).await;
    // Sent, not acked by every group: in flight while some of its parts are.
    let stats = publisher.stats();
    assert_eq!(
        (stats.queued, stats.in_flight, stats.acked),
        (0, 1000, 0),
        "{stats:?}"
    );
    bounded(30, "flush", publisher.flush()).await.unwrap();
    let stats = publisher.stats();
    // Committed by both clusters: 400 events, acked; by group 0 only: 600, failed.
    assert_eq!(stats.acked, 400, "{stats:?}");
    assert_eq!(stats.failed.get(FAILED_DEADLINE), Some(&600), "{stats:?}");
    assert_eq!(stats.failed_total(), 600, "{stats:?}");
    assert_nothing_held(&stats);
    assert_eq!((ledger0.events(), ledger1.events()), (1000, 1000));
}

#[tokio::test]
async fn closing_with_parts_for_one_group_unacked_fails_their_events_once() {
    let (publisher, _ledger0, _ledger1, _big, small) =
        two_groups_with_one_sent_batch(0, Duration::from_secs(120)).await;
    wait_until(10, "group 1 holds the parts", || small.held() == 10).await;
    let stats = publisher.stats();
    assert_eq!((stats.queued, stats.in_flight), (0, 1000), "{stats:?}");
    let closed = bounded(30, "close", publisher.close(Duration::from_millis(200))).await;
    assert!(
        matches!(
            closed,
            Err(PublishError::CloseTimeout { undelivered: 1000 })
        ),
        "{closed:?}"
    );
    let stats = publisher.stats();
    assert_eq!(stats.acked, 0, "{stats:?}");
    assert_eq!(stats.failed.get(FAILED_CLOSED), Some(&1000), "{stats:?}");
    assert_eq!(stats.failed_total(), 1000, "{stats:?}");
    assert_nothing_held(&stats);
}

#[tokio::test]
async fn an_ack_timeout_resends_elsewhere() {
    let ledger = Ledger::new();
    let a = TestServer::start(ServerConfig::new("a"), ledger.clone()).await;
    let b = TestServer::start(ServerConfig::new("b"), ledger.clone()).await;
    a.stop_acking();
    let publisher = Publisher::builder(&format!("{{{},{}}}", a.url(), b.url()))
        .schema(geo_schema())
        .batch_max_events(10)
        .ack_timeout(Duration::from_millis(300))
        // Short backoff: a noisy machine may also time B out once; it must come back.
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(50))
        .build()
        .unwrap();
    wait_connected(&publisher).await;
    bounded(30, "publish and flush", async {
        publish_geo(&publisher, 0..1000).await;
        publisher.flush().await.unwrap();
    })
    .await;
    let stats = publisher.stats();
    assert_eq!(stats.acked, 1000);
    assert_eq!(stats.failed_total(), 0);
    let ep_a = endpoint(&stats, &a.url());
    assert_eq!(ep_a.acked, 0);
    assert_eq!(endpoint(&stats, &b.url()).acked, 1000);
    // Every batch A held was re-sent (and B may have had to re-send some too).
    assert!(a.held() >= 1);
    assert!(
        stats.retried >= a.held(),
        "{} < {}",
        stats.retried,
        a.held()
    );
    assert!(stats.failed_over >= 1);
    assert_eq!(
        ep_a.last_error.as_deref(),
        Some("no ack within 300ms"),
        "{stats:?}"
    );
    assert_eq!(ledger.events(), 1000);
    ledger.assert_each_ts_once(1000);
}

#[tokio::test]
async fn a_silent_worker_is_detected_by_heartbeats() {
    let ledger = Ledger::new();
    let a = TestServer::start(ServerConfig::new("a"), ledger.clone()).await;
    let b = TestServer::start(ServerConfig::new("b"), ledger.clone()).await;
    let publisher = Publisher::builder(&format!("{{{}|{}}}", a.url(), b.url()))
        .schema(geo_schema())
        .batch_max_events(10)
        .heartbeat_interval(Duration::from_millis(100))
        .ack_timeout(Duration::from_secs(60))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(50))
        .build()
        .unwrap();
    wait_connected(&publisher).await;
    a.freeze();
    bounded(30, "publish and flush", async {
        publish_geo(&publisher, 0..100).await;
        publisher.flush().await.unwrap();
    })
    .await;
    let stats = publisher.stats();
    assert_eq!(stats.acked, 100);
    assert_eq!(endpoint(&stats, &b.url()).acked, 100);
    let err = endpoint(&stats, &a.url())
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(err.contains("missed heartbeats"), "{err}");
    ledger.assert_each_ts_once(100);
}

#[tokio::test]
async fn after_goodbye_new_batches_go_elsewhere() {
    let ledger = Ledger::new();
    let a = TestServer::start(ServerConfig::new("a"), ledger.clone()).await;
    let b = TestServer::start(ServerConfig::new("b"), ledger.clone()).await;
    let publisher = Publisher::builder(&format!("{{{}|{}}}", a.url(), b.url()))
        .schema(geo_schema())
        .batch_max_events(10)
        .reconnect_backoff(Duration::from_secs(60), Duration::from_secs(60))
        .build()
        .unwrap();
    wait_connected(&publisher).await;
    a.goodbye("draining for upgrade");
    wait_until(10, "a draining or closed", || {
        endpoint(&publisher.stats(), &a.url()).state != EndpointState::Connected
    })
    .await;
    bounded(30, "publish and flush", async {
        publish_geo(&publisher, 0..200).await;
        publisher.flush().await.unwrap();
    })
    .await;
    let stats = publisher.stats();
    assert_eq!(endpoint(&stats, &a.url()).acked, 0);
    assert_eq!(endpoint(&stats, &b.url()).acked, 200);
    assert_eq!(a.received_batches(), 0);
    assert_eq!(
        endpoint(&stats, &a.url()).last_error.as_deref(),
        Some("goodbye: draining for upgrade")
    );
}

#[tokio::test]
async fn a_rejected_batch_is_failed_and_never_retried() {
    // The publisher starts while its worker is down, so it knows no schema and buffers events
    // the worker will reject.
    let addr = free_addr().await;
    let publisher = Publisher::builder(&format!("tcp://{addr}"))
        .batch_max_events(1000)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .build()
        .unwrap();
    for i in 0..5i64 {
        publisher
            .publish("geo", &Event::new().with("ts", i).with("country", "Italy"))
            .await
            .unwrap();
    }
    // Events of a stream the worker does not know at all.
    publisher
        .publish("other", &Event::new().with("x", 1))
        .await
        .unwrap();
    let ledger = Ledger::new();
    let a = TestServer::start_on(addr, ServerConfig::new("a"), ledger.clone()).await;
    bounded(30, "flush", publisher.flush()).await.unwrap();
    let stats = publisher.stats();
    assert_eq!(stats.failed.get(FAILED_REJECTED), Some(&6), "{stats:?}");
    assert_eq!(stats.acked, 0);
    assert_eq!(a.received_batches(), 2);
    assert_eq!(a.rejected(), 2);
    assert_eq!(ledger.events(), 0);
    assert!(stats.last_failure.unwrap_or_default().contains("rejected"));
    // Now the schema is known: an invalid event is refused before the wire.
    let err = publisher
        .publish("geo", &Event::new().with("country", "Italy"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no attribute \"country\""),
        "{err}"
    );
    assert_eq!(publisher.stats().invalid, 1);
    bounded(10, "flush", publisher.flush()).await.unwrap();
    assert_eq!(a.received_batches(), 2);
}

#[tokio::test]
async fn a_wrong_auth_token_keeps_the_worker_unused() {
    let ledger = Ledger::new();
    let mut config = ServerConfig::new("a");
    config.auth_token = Some("right".into());
    let a = TestServer::start(config, ledger.clone()).await;
    let publisher = Publisher::builder(&a.url())
        .schema(geo_schema())
        .auth_token("wrong")
        .delivery_deadline(Duration::from_millis(300))
        .build()
        .unwrap();
    wait_until(10, "auth failure seen", || {
        endpoint(&publisher.stats(), &a.url())
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("AuthFailed"))
    })
    .await;
    publisher
        .publish_values("geo", &geo_values(0))
        .await
        .unwrap();
    bounded(10, "flush until the deadline", publisher.flush())
        .await
        .unwrap();
    let stats = publisher.stats();
    assert_eq!(stats.failed.get("deadline"), Some(&1));
    assert_eq!(a.received_batches(), 0);
    assert_eq!(ledger.events(), 0);
}

#[tokio::test]
async fn a_tls_member_whose_peer_does_not_speak_tls_fails_over_to_the_next() {
    let ledger = Ledger::new();
    // `a` is a plaintext test worker: a TLS ClientHello gets a plaintext ERROR back, which
    // fails the TLS handshake.
    let a = TestServer::start(ServerConfig::new("a"), ledger.clone()).await;
    let b = TestServer::start(ServerConfig::new("b"), ledger.clone()).await;
    let tls_url = format!("ssl://{}", a.url().trim_start_matches("tcp://"));
    let ca = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/tls/ca.pem"
    ))
    .unwrap();
    let publisher = Publisher::builder(&format!("{{{tls_url}|{}}}", b.url()))
        .schema(geo_schema())
        .tls_root_certificates_pem(ca)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .unwrap();
    let shown = tls_url.replacen("ssl", "tls", 1);
    wait_until(10, "tls endpoint failed", || {
        endpoint(&publisher.stats(), &shown).last_error.is_some()
    })
    .await;
    let error = endpoint(&publisher.stats(), &shown)
        .last_error
        .clone()
        .unwrap();
    assert!(error.starts_with("TLS handshake failed"), "{error}");
    bounded(30, "publish and flush", async {
        publish_geo(&publisher, 0..10).await;
        publisher.flush().await.unwrap();
    })
    .await;
    assert_eq!(endpoint(&publisher.stats(), &b.url()).acked, 10);
    assert_eq!(endpoint(&publisher.stats(), &shown).acked, 0);
    ledger.assert_each_ts_once(10);
}

#[tokio::test]
async fn unusable_tls_material_is_a_build_error() {
    let err = Publisher::builder("tls://127.0.0.1:1")
        .tls_root_certificates_pem("not a certificate")
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "TLS root certificates: no PEM certificate found"
    );
}

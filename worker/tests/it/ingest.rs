//! Exactly-once ingestion and bad input, through real worker processes and raw protocol frames.

use std::io::Write;
use std::net::TcpStream;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use shardtally_publisher::protocol::{ErrorCode, Frame, RejectCode, Value};

use crate::cluster::{
    GEO_COLUMNS, RawClient, WorkerProc, app_file, http, metric, naples_encoder, naples_rows,
    query_records, read_some, scratch_dir, serve_args, set_arg,
};
use crate::common::{TestDb, on_every_backend};
use shardtally_worker::store::Backend;

const HOUR_QUERY: &str = r#"from GeoLocationAgg within "2026-11-20 10:**:**" per "hours" select country, city, totalRequestCount"#;

fn naples(n: i64) -> Vec<Vec<serde_json::Value>> {
    vec![vec![json!("Italy"), json!("Naples"), json!(n)]]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_batch_sent_to_two_workers_counts_once() {
    on_every_backend(|db| async move {
        let w1 = WorkerProc::start(&serve_args(&db.url, "wso2-am-analytics-1"));
        let w2 = WorkerProc::start(&serve_args(&db.url, "wso2-am-analytics-2"));
        let rows = naples_rows(1_000);
        let mut c1 = RawClient::connect(w1.listen, "gw-dup", "")
            .await
            .expect("hello 1");
        let mut c2 = RawClient::connect(w2.listen, "gw-dup", "")
            .await
            .expect("hello 2");
        // Both workers receive batch 7 (a publisher re-sending after a lost ack); both must ack it.
        c1.send_batch(7, "geoTempStream", &GEO_COLUMNS, &rows).await;
        c2.send_batch(7, "geoTempStream", &GEO_COLUMNS, &rows).await;
        assert_eq!(c1.recv().await, Frame::Ack { seq: 7 });
        assert_eq!(c2.recv().await, Frame::Ack { seq: 7 });
        // And again to the same worker.
        c1.send_batch(7, "geoTempStream", &GEO_COLUMNS, &rows).await;
        assert_eq!(c1.recv().await, Frame::Ack { seq: 7 });
        // A different batch id does count.
        c2.send_batch(8, "geoTempStream", &GEO_COLUMNS, &rows[..250])
            .await;
        assert_eq!(c2.recv().await, Frame::Ack { seq: 8 });
        assert_eq!(query_records(&db.url, HOUR_QUERY), naples(1_250));
        db
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_batches_are_rejected_and_never_counted() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = WorkerProc::start(&serve_args(&db.url, "node-a"));
    let mut c = RawClient::connect(w.listen, "gw-bad", "")
        .await
        .expect("hello");
    assert_eq!(c.welcome.node_id, "node-a");
    assert_eq!(c.welcome.shard_id, "node-a");
    assert_eq!(c.welcome.streams[0].name, "geoTempStream");

    c.send_batch(1, "noSuchStream", &GEO_COLUMNS, &naples_rows(3))
        .await;
    assert!(matches!(
        c.recv().await,
        Frame::Reject {
            seq: 1,
            code: RejectCode::UnknownStream,
            ..
        }
    ));

    c.send_batch(
        2,
        "geoTempStream",
        &["apiName", "planet"],
        &[vec![Value::from("x"), Value::from("Mars")]],
    )
    .await;
    assert!(matches!(
        c.recv().await,
        Frame::Reject {
            seq: 2,
            code: RejectCode::SchemaMismatch,
            ..
        }
    ));

    // requestTimestamp is a long; a string there is a schema mismatch.
    let mut bad = naples_rows(2);
    bad[1][3] = Value::from("yesterday");
    c.send_batch(3, "geoTempStream", &GEO_COLUMNS, &bad).await;
    match c.recv().await {
        Frame::Reject {
            seq: 3,
            code: RejectCode::SchemaMismatch,
            reason,
        } => {
            assert!(reason.contains("event #1"), "{reason}");
            assert!(reason.contains("requestTimestamp"), "{reason}");
        }
        other => panic!("expected a reject, got {other:?}"),
    }

    // The connection still works, and only the valid batch counts.
    c.send_batch(4, "geoTempStream", &GEO_COLUMNS, &naples_rows(10))
        .await;
    assert_eq!(c.recv().await, Frame::Ack { seq: 4 });
    assert_eq!(query_records(&db.url, HOUR_QUERY), naples(10));
    drop(w);
    db.cleanup().await;
}

/// Protocol version 2's WELCOME says what the store holds of each attribute; a version-1
/// publisher still gets a version-1 WELCOME (types only) and its batches count; version 3 is
/// refused, naming the versions the worker speaks.
#[tokio::test(flavor = "multi_thread")]
async fn welcome_carries_the_constraints_and_a_version_1_publisher_is_still_served() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = WorkerProc::start(&serve_args(&db.url, "node-v"));

    let c2 = RawClient::connect_version(w.listen, "gw-v2", "", 2)
        .await
        .expect("hello v2");
    assert_eq!(c2.welcome.version, 2);
    let geo = &c2.welcome.streams[0];
    let constraints: Vec<_> = geo
        .attributes
        .iter()
        .map(|a| (a.name.as_str(), a.required, a.max_chars))
        .collect();
    assert_eq!(
        constraints,
        [
            ("apiName", false, Some(254)),
            ("country", true, Some(254)),
            ("city", true, Some(254)),
            ("requestTimestamp", false, None),
        ],
        "GeoLocationAgg groups by country and city"
    );

    let mut c1 = RawClient::connect_version(w.listen, "gw-v1", "", 1)
        .await
        .expect("hello v1");
    assert_eq!(c1.welcome.version, 1);
    let geo = &c1.welcome.streams[0];
    assert!(
        geo.attributes
            .iter()
            .all(|a| !a.required && a.max_chars.is_none()),
        "{geo:?}"
    );
    c1.send_batch(1, "geoTempStream", &GEO_COLUMNS, &naples_rows(25))
        .await;
    assert_eq!(c1.recv().await, Frame::Ack { seq: 1 });
    assert_eq!(query_records(&db.url, HOUR_QUERY), naples(25));

    match RawClient::connect_version(w.listen, "gw-v3", "", 3).await {
        Err(Frame::Error {
            code: ErrorCode::UnsupportedVersion,
            message,
        }) => assert_eq!(
            message,
            "unsupported protocol version 3 (this side speaks 1 to 2)"
        ),
        other => panic!("version 3 must be refused: {:?}", other.map(|c| c.welcome)),
    }
    drop(w);
    db.cleanup().await;
}

/// Waits (10 s at most) until `p` knows the worker's constraints on `geoTempStream` (`country`
/// is a group-by key of GeoLocationAgg).
async fn wait_for_constraints(p: &shardtally_publisher::Publisher) {
    let start = std::time::Instant::now();
    while !p
        .schema("geoTempStream")
        .is_some_and(|s| s.attributes[1].required)
    {
        assert!(start.elapsed().as_secs() < 10, "no constraints announced");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A publisher that learned the schema from the worker refuses an unstorable event alone, at
/// `publish` (nothing of it reaches the wire), where it used to cost its whole batch: every
/// valid event around it counts.
#[tokio::test(flavor = "multi_thread")]
async fn a_publisher_refuses_unstorable_events_alone_and_every_other_event_counts() {
    use shardtally_publisher::{Event, PublishError, Publisher, ValueRef};

    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = WorkerProc::start(&serve_args(&db.url, "node-u"));
    let publisher = Publisher::builder(&format!("{{{}}}", w.endpoint()))
        .publisher_id("gw-unstorable")
        .build()
        .expect("publisher");
    wait_for_constraints(&publisher).await;
    let long_city = "à".repeat(255);
    let refused: [(Vec<ValueRef<'_>>, &str); 3] = [
        (
            vec![
                ValueRef::String("x"),
                ValueRef::Null,
                ValueRef::String("Naples"),
                ValueRef::Long(0),
            ],
            "attribute geoTempStream.country: null, but it is a group-by key, which must not be \
             null",
        ),
        (
            vec![
                ValueRef::String("x"),
                ValueRef::String("Italy"),
                ValueRef::String(&long_city),
                ValueRef::Long(0),
            ],
            "attribute geoTempStream.city: a string of 255 characters; the store holds at most 254",
        ),
        (
            vec![
                ValueRef::String("a\0b"),
                ValueRef::String("Italy"),
                ValueRef::String("Naples"),
                ValueRef::Long(0),
            ],
            "attribute geoTempStream.apiName: strings must not contain NUL characters",
        ),
    ];
    let rows = naples_rows(30);
    for (i, row) in rows.iter().enumerate() {
        let values: Vec<_> = row.iter().map(Value::as_ref).collect();
        publisher
            .publish_values("geoTempStream", &values)
            .await
            .expect("a valid event");
        if let Some((bad, reason)) = refused.get(i) {
            let err = publisher
                .publish_values("geoTempStream", bad)
                .await
                .unwrap_err();
            assert!(matches!(err, PublishError::InvalidValue { .. }), "{err:?}");
            assert_eq!(err.to_string(), *reason);
        }
    }
    // The named-field path too: a left-out group-by key is null.
    let err = publisher
        .publish(
            "geoTempStream",
            &Event::new()
                .with("country", "Italy")
                .with("requestTimestamp", 0i64),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "attribute geoTempStream.city: null, but it is a group-by key, which must not be null"
    );
    publisher.flush().await.expect("flush");
    let stats = publisher.stats();
    assert_eq!(
        (
            stats.published,
            stats.acked,
            stats.invalid,
            stats.failed_total()
        ),
        (30, 30, 4, 0),
        "{stats:?}"
    );
    assert_eq!(query_records(&db.url, HOUR_QUERY), naples(30));
    publisher
        .close(std::time::Duration::from_secs(5))
        .await
        .expect("close");

    // A schema given up front without constraints takes the worker's once connected.
    use shardtally_publisher::{AttrType, Attribute, StreamSchema};
    let plain = StreamSchema::new(
        "geoTempStream",
        ["apiName", "country", "city"]
            .map(|a| Attribute::new(a, AttrType::String))
            .into_iter()
            .chain([Attribute::new("requestTimestamp", AttrType::Long)])
            .collect(),
    );
    let given = Publisher::builder(&w.endpoint())
        .publisher_id("gw-given")
        .schema(plain)
        .build()
        .expect("publisher");
    wait_for_constraints(&given).await;
    let err = given
        .publish_values("geoTempStream", &refused[0].0)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), refused[0].1);
    given
        .close(std::time::Duration::from_secs(5))
        .await
        .expect("close");
    drop(w);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_event_bytes_close_the_connection_and_count_nothing() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = WorkerProc::start(&serve_args(&db.url, "node-a"));
    let mut bad = RawClient::connect(w.listen, "gw-malformed", "")
        .await
        .expect("hello");
    // A valid batch of two events whose header claims three: the third cannot be decoded.
    let enc = naples_encoder(2);
    let count_at = enc.header_len() - 4;
    let mut frame = BytesMut::from(&enc.finish(1)[..]);
    frame[count_at..count_at + 4].copy_from_slice(&3u32.to_be_bytes());
    bad.framed.send(frame.freeze()).await.expect("send");
    match bad.recv().await {
        Frame::Error { code, message } => {
            assert_eq!(code, ErrorCode::Malformed, "{message}");
        }
        other => panic!("expected an ERROR frame, got {other:?}"),
    }
    assert!(
        matches!(bad.framed.next().await, None | Some(Err(_))),
        "the connection is closed"
    );

    // The worker still serves, and counts only the valid batch.
    let mut c = RawClient::connect(w.listen, "gw-ok", "")
        .await
        .expect("hello");
    c.send_batch(1, "geoTempStream", &GEO_COLUMNS, &naples_rows(10))
        .await;
    assert_eq!(c.recv().await, Frame::Ack { seq: 1 });
    assert_eq!(query_records(&db.url, HOUR_QUERY), naples(10));
    let (status, metrics) = http(w.http, "GET", "/metrics", "");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            "shardtally_protocol_errors_total{node_id=\"node-a\",shard_id=\"node-a\"} 1\n"
        ),
        "{metrics}"
    );
    drop(w);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_oversize_and_wrong_tokens_close_one_connection_not_the_worker() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let dir = std::env::temp_dir().join(format!("shardtally-it-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("dir");
    let token = dir.join("token");
    std::fs::write(&token, "s3cret\n").expect("token");
    let mut args = serve_args(&db.url, "node-a");
    args.extend(["--auth-token-file".into(), token.display().to_string()]);
    let w = WorkerProc::start(&args);

    // Junk bytes: an ERROR frame comes back and the connection closes.
    let mut junk = TcpStream::connect(w.listen).expect("connect");
    junk.write_all(b"\x00\x00\x00\x05\xffGARBAGE")
        .expect("write");
    let answer = read_some(&mut junk, 1024);
    assert!(
        answer.len() > 5 && answer[4] == 0x08,
        "expected an ERROR frame, got {answer:?}"
    );

    // A 4 GiB length prefix: refused before allocating.
    let mut huge = TcpStream::connect(w.listen).expect("connect");
    huge.write_all(&[0xff, 0xff, 0xff, 0xff, 0x01])
        .expect("write");
    let answer = read_some(&mut huge, 1024);
    assert!(
        answer.len() > 5 && answer[4] == 0x08,
        "expected an ERROR frame, got {answer:?}"
    );

    // A wrong token: rejected before any event is read.
    match RawClient::connect(w.listen, "intruder", "wrong").await {
        Err(Frame::Error {
            code: ErrorCode::AuthFailed,
            ..
        }) => {}
        other => panic!(
            "expected an auth failure, got {:?}",
            other.map(|c| c.welcome)
        ),
    }

    // The worker still serves a valid publisher, and counts exactly its events.
    let mut c = RawClient::connect(w.listen, "gw-ok", "s3cret")
        .await
        .expect("hello");
    c.send_batch(1, "geoTempStream", &GEO_COLUMNS, &naples_rows(42))
        .await;
    assert_eq!(c.recv().await, Frame::Ack { seq: 1 });
    assert_eq!(query_records(&db.url, HOUR_QUERY), naples(42));

    // With a token, /metrics wants it too.
    assert_eq!(http(w.http, "GET", "/metrics", "").0, 401);
    let (status, metrics) = crate::cluster::http_with(
        w.http,
        "GET",
        "/metrics",
        "Authorization: Bearer s3cret\r\n",
        "",
    );
    assert_eq!(status, 200);
    assert!(
        metrics
            .contains("shardtally_auth_failures_total{node_id=\"node-a\",shard_id=\"node-a\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "shardtally_events_committed_total{node_id=\"node-a\",shard_id=\"node-a\"} 42\n"
        ),
        "{metrics}"
    );
    drop(w);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_store_api_answers_like_siddhi() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = WorkerProc::start(&serve_args(&db.url, "node-a"));
    let mut c = RawClient::connect(w.listen, "gw-http", "")
        .await
        .expect("hello");
    c.send_batch(1, "geoTempStream", &GEO_COLUMNS, &naples_rows(30))
        .await;
    assert_eq!(c.recv().await, Frame::Ack { seq: 1 });

    let body = json!({ "appName": "APIM_ANALYTICS_GEO", "query": HOUR_QUERY }).to_string();
    let (status, text) = http(w.http, "POST", "/stores/query", &body);
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v, json!({ "records": [["Italy", "Naples", 30]] }));

    let unknown = json!({ "appName": "Nope", "query": HOUR_QUERY }).to_string();
    assert_eq!(http(w.http, "POST", "/stores/query", &unknown).0, 404);
    let empty = json!({ "appName": "APIM_ANALYTICS_GEO", "query": "" }).to_string();
    assert_eq!(http(w.http, "POST", "/stores/query", &empty).0, 400);
    let bad = json!({ "appName": "APIM_ANALYTICS_GEO", "query": "from GeoLocationAgg within" })
        .to_string();
    assert_eq!(http(w.http, "POST", "/stores/query", &bad).0, 400);

    let (status, health) = http(w.http, "GET", "/health", "");
    assert_eq!(status, 200, "{health}");
    let h: serde_json::Value = serde_json::from_str(&health).expect("json");
    assert_eq!(h["status"], "ok");
    assert_eq!(h["shard_id"], "node-a");
    drop(w);
    db.cleanup().await;
}

/// Takes an SQLite database's write lock (`BEGIN EXCLUSIVE`) away from its workers: their
/// commits fail (SQLITE_BUSY) until [`unlock_sqlite`].
async fn lock_sqlite(url: &str) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let mut blocker = sqlx::SqliteConnection::connect(url).await.expect("connect");
    sqlx::raw_sql("BEGIN EXCLUSIVE")
        .execute(&mut blocker)
        .await
        .expect("lock");
    blocker
}

/// Gives the write lock of [`lock_sqlite`] back.
async fn unlock_sqlite(mut blocker: sqlx::SqliteConnection) {
    use sqlx::Connection;
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut blocker)
        .await
        .expect("unlock");
    blocker.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_holds_acks_reports_unhealthy_and_recovers_without_loss() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = WorkerProc::start(&serve_args(&db.url, "node-a"));
    let mut c = RawClient::connect(w.listen, "gw-outage", "")
        .await
        .expect("hello");

    // Take the database's write lock away from the worker: its commits now fail (SQLITE_BUSY).
    let blocker = lock_sqlite(&db.url).await;

    c.send_batch(1, "geoTempStream", &GEO_COLUMNS, &naples_rows(100))
        .await;
    // No ack while the batch is not committed.
    let early = tokio::time::timeout(std::time::Duration::from_secs(3), c.framed.next()).await;
    assert!(early.is_err(), "acked before commit: {early:?}");
    let http_addr = w.http;
    let unhealthy = tokio::task::spawn_blocking(move || {
        crate::cluster::eventually(std::time::Duration::from_secs(60), || {
            http(http_addr, "GET", "/health", "").0 == 503
        })
    })
    .await
    .expect("join");
    assert!(unhealthy, "/health should report the failing database");

    // The database comes back: the same batch commits once, then it is acked.
    unlock_sqlite(blocker).await;
    assert_eq!(c.recv().await, Frame::Ack { seq: 1 });
    assert_eq!(query_records(&db.url, HOUR_QUERY), naples(100));
    assert_eq!(http(w.http, "GET", "/health", "").0, 200);
    drop(w);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_deletes_buckets_past_their_retention_and_keeps_the_rest() {
    use shardtally_worker::bucket::Granularity;
    use shardtally_worker::catalog::Catalog;
    let db = TestDb::fresh(Backend::Sqlite).await;
    let text = shardtally_worker::siddhi::BUNDLED_GEO_APP.replace(
        "define aggregation",
        "@purge(enable='true', interval='1 sec', @retentionPeriod(sec='2 min', min='2 hours', hours='all', days='all', months='all', years='all'))\ndefine aggregation",
    );
    let app = app_file("purging.siddhi", &text);
    let mut args = serve_args(&db.url, "node-a");
    args.extend(["--app".into(), app]);
    let w = WorkerProc::start(&args);

    // 10 events stamped three hours ago, 5 stamped now.
    let now = jiff::Timestamp::now().as_millisecond();
    let row = |ts: i64| {
        vec![
            Value::from("PizzaShackAPI"),
            Value::from("Italy"),
            Value::from("Naples"),
            Value::Long(ts),
        ]
    };
    let mut rows: Vec<_> = (0..10).map(|i| row(now - 3 * 3_600_000 + i)).collect();
    rows.extend((0..5).map(|i| row(now - i)));
    let mut c = RawClient::connect(w.listen, "gw-purge", "")
        .await
        .expect("hello");
    c.send_batch(1, "geoTempStream", &GEO_COLUMNS, &rows).await;
    assert_eq!(c.recv().await, Frame::Ack { seq: 1 });

    let catalog = Catalog::from_text(&text, true, "purging.siddhi").expect("app");
    let (_, layout) = catalog.aggregation("GeoLocationAgg").expect("agg");
    let store = db.store().await;
    let count = |g| {
        let store = store.clone();
        let layout = layout.clone();
        async move {
            store
                .fetch(&layout, g, i64::MIN / 4, i64::MAX / 4)
                .await
                .expect("fetch")
                .iter()
                .map(|r| r.row.count)
                .sum::<i64>()
        }
    };
    let mut purged = false;
    for _ in 0..100 {
        if count(Granularity::Seconds).await == 5 && count(Granularity::Minutes).await == 5 {
            purged = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        purged,
        "seconds and minutes older than their retention should be purged"
    );
    assert_eq!(count(Granularity::Hours).await, 15);
    assert_eq!(count(Granularity::Years).await, 15);
    store.close().await;
    drop(w);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_the_database_refuses_is_rejected_and_the_others_in_its_flush_commit() {
    on_every_backend(|db| async move {
        // A long sum that overflows BIGINT: refused by PostgreSQL and MySQL, and by the worker's
        // SQLite upsert (SQLite itself would store the sum as a float).
        let app = app_file(
            "sums.siddhi",
            "@app:name('Sums')\ndefine stream s (k string, x long, ts long);\n\
             define aggregation SumAgg from s select k, sum(x) as total group by k aggregate by ts every sec ... year;\n",
        );
        let mut args = serve_args(&db.url, "node-a");
        args.extend(["--app".into(), app.clone()]);
        let w = WorkerProc::start(&args);
        let mut c = RawClient::connect(w.listen, "gw-overflow", "").await.expect("hello");
        let row = |k: &str, x: i64| vec![Value::from(k), Value::Long(x), Value::Long(1_795_168_800_000)];
        c.send_batch(1, "s", &["k", "x", "ts"], &[row("a", i64::MAX - 10)]).await;
        assert_eq!(c.recv().await, Frame::Ack { seq: 1 });

        // Batch 2 overflows key `a`; batch 3 is fine. Whether or not they share a flush, 2 is
        // rejected (never retried) and 3 commits.
        c.send_batch(2, "s", &["k", "x", "ts"], &[row("a", 100)]).await;
        c.send_batch(3, "s", &["k", "x", "ts"], &[row("b", 7)]).await;
        let mut replies = vec![c.recv().await, c.recv().await];
        replies.sort_by_key(|f| match f {
            Frame::Ack { seq } | Frame::Reject { seq, .. } => *seq,
            _ => 0,
        });
        assert!(
            matches!(&replies[0], Frame::Reject { seq: 2, code: RejectCode::Invalid, .. }),
            "{replies:?}"
        );
        assert_eq!(replies[1], Frame::Ack { seq: 3 });

        // Sums that overflow before they reach the database: within one row of one batch (4),
        // and only where two seconds roll up into their minute (5). Each is rejected; 6, in the
        // same flush or not, commits.
        let at = |k: &str, x: i64, ts: i64| vec![Value::from(k), Value::Long(x), Value::Long(ts)];
        let t = 1_795_168_800_000;
        c.send_batch(4, "s", &["k", "x", "ts"], &[at("c", i64::MAX - 1, t), at("c", 5, t)])
            .await;
        let half = i64::MAX / 2 + 1;
        c.send_batch(5, "s", &["k", "x", "ts"], &[at("d", half, t), at("d", half, t + 1000)])
            .await;
        c.send_batch(6, "s", &["k", "x", "ts"], &[at("e", 1, t)]).await;
        let mut replies = vec![c.recv().await, c.recv().await, c.recv().await];
        replies.sort_by_key(|f| match f {
            Frame::Ack { seq } | Frame::Reject { seq, .. } => *seq,
            _ => 0,
        });
        for (reply, seq) in replies.iter().zip([4, 5]) {
            assert!(
                matches!(reply, Frame::Reject { seq: s, code: RejectCode::Invalid, reason }
                    if *s == seq && reason.contains("the sum in `AGG_SUM_x` overflows a 64-bit long")),
                "{replies:?}"
            );
        }
        assert_eq!(replies[2], Frame::Ack { seq: 6 });

        let q = "from SumAgg within 0, 4102444800000 per \"years\" select k, total order by k";
        assert_eq!(
            crate::cluster::query_records_with(&db.url, &["--app", &app], q),
            vec![
                vec![json!("a"), json!(i64::MAX - 10)],
                vec![json!("b"), json!(7)],
                vec![json!("e"), json!(1)]
            ]
        );
        drop(w);
        db
    })
    .await;
}

/// A double group-by key of -0.0 and one of 0.0 are one row on every backend (their primary keys
/// hold them equal), in one batch or across flushes.
#[tokio::test(flavor = "multi_thread")]
async fn minus_zero_and_zero_keys_count_as_one_group_on_every_backend() {
    on_every_backend(|db| async move {
        let app = app_file(
            "zeros.siddhi",
            "@app:name('Zeros')\ndefine stream s (k double, ts long);\n\
             define aggregation ZAgg from s select k, count() as n group by k aggregate by ts every sec ... year;\n",
        );
        let mut args = serve_args(&db.url, "node-z");
        args.extend(["--app".into(), app.clone()]);
        let w = WorkerProc::start(&args);
        let mut c = RawClient::connect(w.listen, "gw-zeros", "").await.expect("hello");
        let row = |k: f64| vec![Value::Double(k), Value::Long(1_795_168_800_000)];
        c.send_batch(1, "s", &["k", "ts"], &[row(0.0), row(-0.0), row(2.5)]).await;
        assert_eq!(c.recv().await, Frame::Ack { seq: 1 });
        c.send_batch(2, "s", &["k", "ts"], &[row(-0.0)]).await;
        assert_eq!(c.recv().await, Frame::Ack { seq: 2 });
        let q = "from ZAgg within 0, 4102444800000 per \"seconds\" select k, n order by k";
        assert_eq!(
            crate::cluster::query_records_with(&db.url, &["--app", &app], q),
            vec![vec![json!(0.0), json!(3)], vec![json!(2.5), json!(1)]]
        );
        drop(w);
        db
    })
    .await;
}

/// A worker whose deployment file sets `yaml` under `shardtally:`, flushing every `flush`.
fn worker_with(db: &TestDb, node: &str, flush: &str, yaml: &str) -> WorkerProc {
    let config = scratch_dir().join("deployment.yaml");
    std::fs::write(&config, format!("shardtally:\n{yaml}")).expect("config");
    let mut args = serve_args(&db.url, node);
    set_arg(&mut args, "--flush-interval", flush);
    args.extend(["--config".into(), config.display().to_string()]);
    WorkerProc::start(&args)
}

/// The next `n` frames, which must all be acks: their seqs, sorted.
async fn recv_acks(c: &mut RawClient, n: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(n);
    for _ in 0..n {
        match c.recv().await {
            Frame::Ack { seq } => seqs.push(seq),
            other => panic!("expected an ack, got {other:?}"),
        }
    }
    seqs.sort_unstable();
    seqs
}

/// Nothing (no ack) arrives within a second.
async fn assert_no_frame_within_a_second(c: &mut RawClient, why: &str) {
    let early = tokio::time::timeout(std::time::Duration::from_secs(1), c.recv()).await;
    assert!(early.is_err(), "{why}: got {early:?}");
}

/// `max_pending_rows` counts the rows a commit would write at every granularity: with flushes an
/// hour apart, a commit starts once the pending events would write half the cap, whether those
/// rows are seconds or the minutes … years above them.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_is_due_when_the_rows_of_every_granularity_reach_half_the_cap() {
    // 10 events 6 minutes apart: 10 seconds + 10 minutes + 1 hour, day, month, year = 24 rows;
    // then 30 more, 2 minutes apart (every third on a second of the first batch): 30 seconds +
    // 30 minutes + 4 = 64 rows ≥ 50, though only 30 of them are seconds.
    a_commit_is_due_at_the_second_batch(
        "node-cap",
        "  max_pending_rows: 100\n",
        (10, 30),
        "24 pending rows of a 100-row cap: nothing is due before the hour's flush",
    )
    .await;
}

/// With flushes an hour apart, a worker configured by `yaml` acks nothing after a first batch of
/// `events.0` Naples events (`why`), and both batches, counted once, after a second of
/// `events.1`: the pending batches reached half a cap.
async fn a_commit_is_due_at_the_second_batch(
    node: &str,
    yaml: &str,
    events: (usize, usize),
    why: &str,
) {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = worker_with(&db, node, "1h", yaml);
    let mut c = RawClient::connect(w.listen, &format!("gw-{node}"), "")
        .await
        .expect("hello");
    c.send_batch(1, "geoTempStream", &GEO_COLUMNS, &naples_rows(events.0))
        .await;
    assert_no_frame_within_a_second(&mut c, why).await;
    c.send_batch(2, "geoTempStream", &GEO_COLUMNS, &naples_rows(events.1))
        .await;
    assert_eq!(recv_acks(&mut c, 2).await, [1, 2]);
    let total = i64::try_from(events.0 + events.1).expect("events");
    assert_eq!(query_records(&db.url, HOUR_QUERY), naples(total));
    drop(w);
    db.cleanup().await;
}

/// The event bytes of a batch of `naples_rows(n)`: what a worker's byte budget counts for it.
fn naples_event_bytes(n: usize) -> usize {
    use shardtally_publisher::protocol::FrameCodec;
    use tokio_util::codec::Decoder;
    let mut frame = BytesMut::from(&naples_encoder(n).finish(1)[..]);
    match FrameCodec::default().decode(&mut frame) {
        Ok(Some(Frame::Batch(b))) => b.events.len(),
        other => panic!("not a batch: {other:?}"),
    }
}

/// `max_pending_bytes` bounds the bytes of every batch not yet acked: with the database locked,
/// a worker takes batches until their bytes reach the budget, then stops reading the socket —
/// the next batch waits, the rest stay unread — and once the database is back every one of them
/// commits, exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_database_holds_no_more_batch_bytes_than_the_budget_and_loses_nothing() {
    let per_batch = naples_event_bytes(25);
    let budget = 3 * per_batch;
    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = worker_with(
        &db,
        "node-bytes",
        "200ms",
        &format!(
            "  max_frame_len: {}\n  max_pending_bytes: {budget}\n",
            budget / 2
        ),
    );
    let blocker = lock_sqlite(&db.url).await;
    let mut c = RawClient::connect(w.listen, "gw-bytes", "")
        .await
        .expect("hello");
    // 20 batches of 25 events: 20 × ~1 KB, all in the socket's buffers at once.
    for seq in 1..=20 {
        c.send_batch(seq, "geoTempStream", &GEO_COLUMNS, &naples_rows(25))
            .await;
    }
    let http_addr = w.http;
    let gauges = move || {
        let text = http(http_addr, "GET", "/metrics", "").1;
        ["batches_received_total", "pending_bytes", "pending_events"]
            .map(|name| metric(&text, name).unwrap_or(-1.0))
    };
    let held = [4.0, budget as f64, 75.0];
    let settled = tokio::task::spawn_blocking(move || {
        crate::cluster::eventually(std::time::Duration::from_secs(30), || gauges() == held)
    })
    .await
    .expect("join");
    assert!(settled, "expected 4 batches read, 3 held: {:?}", gauges());
    // It stays so while the database is locked: nothing more is read.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(gauges(), held);

    unlock_sqlite(blocker).await;
    assert_eq!(recv_acks(&mut c, 20).await, (1..=20).collect::<Vec<u64>>());
    assert_eq!(query_records(&db.url, HOUR_QUERY), naples(500));
    let text = http(w.http, "GET", "/metrics", "").1;
    assert_eq!(metric(&text, "pending_bytes"), Some(0.0));
    assert_eq!(metric(&text, "events_committed_total"), Some(500.0));
    drop(w);
    db.cleanup().await;
}

/// A commit is due once the pending batches hold half of `max_pending_bytes`, flush or not.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_is_due_when_the_batches_held_reach_half_the_byte_budget() {
    // Two batches are half the budget; one is not.
    let budget = 4 * naples_event_bytes(25);
    a_commit_is_due_at_the_second_batch(
        "node-half-bytes",
        &format!(
            "  max_frame_len: {}\n  max_pending_bytes: {budget}\n",
            budget / 2
        ),
        (25, 25),
        "a quarter of the budget: nothing is due before the hour's flush",
    )
    .await;
}

//! The seeds' example and a real crash, end to end: the publisher SDK → real worker processes on
//! loopback → one shared database → merged queries, on every backend.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use shardtally_publisher::{Publisher, Stats, Value};
use shardtally_worker::bucket::Granularity;
use shardtally_worker::catalog::Catalog;
use shardtally_worker::config::AppSource;
use shardtally_worker::store::{Backend, Store};

use crate::cluster::{
    WorkerProc, naples_hour, naples_rows, query_records, scratch_dir, serve_args, set_arg,
};
use crate::common::{TestDb, on_every_backend};

const HOUR_QUERY: &str = r#"from GeoLocationAgg within "2026-11-20 10:**:**" per "hours" select country, city, totalRequestCount"#;

fn publisher(url_set: &str, catalog: &Catalog) -> Publisher {
    let mut b = Publisher::builder(url_set)
        .publisher_id("it-gateway")
        .batch_max_events(500)
        // Every other batch to each worker: a worker killed mid-stream holds unacked batches.
        .batches_per_turn(1)
        .ack_timeout(Duration::from_secs(2))
        .heartbeat_interval(Duration::from_millis(500))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500));
    for s in catalog.streams() {
        b = b.schema(s.clone());
    }
    b.build().expect("publisher")
}

async fn publish_all(p: &Publisher, rows: &[Vec<Value>]) {
    for row in rows {
        let refs: Vec<_> = row.iter().map(Value::as_ref).collect();
        p.publish_values("geoTempStream", &refs)
            .await
            .expect("publish");
    }
}

fn assert_delivered(stats: &Stats, n: u64) {
    assert_eq!(stats.published, n, "{stats:?}");
    assert_eq!(stats.acked, n, "{stats:?}");
    assert!(stats.dropped.values().all(|&d| d == 0), "{stats:?}");
    assert!(stats.failed.values().all(|&f| f == 0), "{stats:?}");
}

/// Sum of AGG_COUNT per shard in one granularity table, all time.
async fn counts_per_shard(
    store: &Store,
    catalog: &Catalog,
    per: Granularity,
) -> BTreeMap<String, i64> {
    let (_, layout) = catalog.aggregation("GeoLocationAgg").expect("aggregation");
    let rows = store
        .fetch(layout, per, i64::MIN / 4, i64::MAX / 4)
        .await
        .expect("fetch");
    let mut out = BTreeMap::new();
    for r in rows {
        *out.entry(r.shard_id.unwrap_or_default()).or_insert(0) += r.row.count;
    }
    out
}

fn bundled() -> Catalog {
    Catalog::load(&AppSource::Bundled, true).expect("bundled app")
}

#[tokio::test(flavor = "multi_thread")]
async fn seeds_example_30k_on_node_1_plus_40k_on_node_2_reads_70k() {
    on_every_backend(|db| async move {
        let catalog = bundled();
        let w1 = WorkerProc::start(&serve_args(&db.url, "wso2-am-analytics-1"));
        let w2 = WorkerProc::start(&serve_args(&db.url, "wso2-am-analytics-2"));
        let via1 = publisher(&format!("{{{}}}", w1.endpoint()), &catalog);
        let via2 = publisher(&format!("{{{}}}", w2.endpoint()), &catalog);
        let (rows1, rows2) = (naples_rows(30_000), naples_rows(40_000));
        tokio::join!(publish_all(&via1, &rows1), publish_all(&via2, &rows2));
        via1.flush().await.expect("flush 1");
        via2.flush().await.expect("flush 2");
        assert_delivered(&via1.stats(), 30_000);
        assert_delivered(&via2.stats(), 40_000);

        assert_eq!(
            query_records(&db.url, HOUR_QUERY),
            vec![vec![json!("Italy"), json!("Naples"), json!(70_000)]]
        );
        let store = db.store().await;
        let expected: BTreeMap<String, i64> = [
            ("wso2-am-analytics-1".to_owned(), 30_000),
            ("wso2-am-analytics-2".to_owned(), 40_000),
        ]
        .into();
        assert_eq!(
            counts_per_shard(&store, &catalog, Granularity::Hours).await,
            expected
        );
        // Every granularity agrees with the hour.
        for g in Granularity::ALL {
            assert_eq!(counts_per_shard(&store, &catalog, g).await, expected, "{g}");
        }
        store.close().await;
        via1.close(Duration::from_secs(5)).await.expect("close");
        via2.close(Duration::from_secs(5)).await.expect("close");
        db
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_stream_loses_and_doubles_nothing() {
    on_every_backend(|db| async move {
        const N: usize = 60_000;
        let catalog = bundled();
        let w1 = WorkerProc::start(&serve_args(&db.url, "wso2-am-analytics-1"));
        let mut w2 = WorkerProc::start(&serve_args(&db.url, "wso2-am-analytics-2"));
        let p = publisher(
            &format!("{{{},{}}}", w1.endpoint(), w2.endpoint()),
            &catalog,
        );
        let rows = naples_rows(N);
        publish_all(&p, &rows[..N / 3]).await;
        // Wait until node 2 holds unacked batches, then crash it: SIGKILL, no flush, no goodbye.
        let mut waited = 0;
        while p.stats().in_flight == 0 && waited < 200 {
            publish_all(&p, &rows[N / 3..N / 3 + 1]).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            waited += 1;
        }
        w2.kill9();
        let extra = waited; // events published while waiting
        publish_all(&p, &rows[N / 3 + extra..]).await;
        p.flush().await.expect("flush");
        let stats = p.stats();
        let total = u64::try_from(N).expect("n");
        assert_delivered(&stats, total);
        eprintln!(
            "retried {} batches, failed over {}",
            stats.retried, stats.failed_over
        );
        assert!(
            stats.failed_over >= 1,
            "the crash must have been noticed: {stats:?}"
        );

        let store = db.store().await;
        for g in Granularity::ALL {
            let counts = counts_per_shard(&store, &catalog, g).await;
            assert_eq!(
                counts.values().sum::<i64>(),
                i64::try_from(N).expect("n"),
                "{g}: {counts:?}"
            );
        }
        store.close().await;
        drop(w1);
        db
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_strings_travel_publisher_to_worker_to_database_to_http_verbatim() {
    on_every_backend(|db| async move {
        let pizza_254 = "🍕".repeat(254);
        let cities: Vec<String> = [
            "O'Brien",
            "\"quoted\"",
            "Robert'); DROP TABLE GeoLocationAgg_HOURS;--",
            "back\\slash\\",
            "\\'; -- \\\"",
            "%_wild*?",
            "Zürich",
            "Zurich",
            "naples",
            "Naples",
            "Naples ",
            "東京",
            "👩‍👩‍👧 family",
            "tab\there\nnewline",
            pizza_254.as_str(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let w = WorkerProc::start(&serve_args(&db.url, "node-u"));
        let p = publisher(&format!("{{{}}}", w.endpoint()), &bundled());
        const START: i64 = 1_795_168_800_000; // 2026-11-20T10:00:00Z
        let mut expected = BTreeMap::new();
        for (i, city) in cities.iter().enumerate() {
            let n = i64::try_from(i).expect("i") + 1;
            for k in 0..n {
                let row = vec![
                    Value::from("API 'quoted' \\ ✓"),
                    Value::from("Ünïcode-land"),
                    Value::from(city.as_str()),
                    Value::Long(START + k),
                ];
                publish_all(&p, std::slice::from_ref(&row)).await;
            }
            expected.insert(city.clone(), n);
        }
        p.flush().await.expect("flush");
        assert_delivered(&p.stats(), expected.values().sum::<i64>().unsigned_abs());

        let query = r#"from GeoLocationAgg within "2026-11-20 10:**:**" per "hours" select apiName, country, city, totalRequestCount"#;
        let body = json!({ "appName": "APIM_ANALYTICS_GEO", "query": query }).to_string();
        let (status, text) = crate::cluster::http(w.http, "POST", "/stores/query", &body);
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let mut got = BTreeMap::new();
        for r in v["records"].as_array().expect("records") {
            assert_eq!(r[0], json!("API 'quoted' \\ ✓"), "{r}");
            assert_eq!(r[1], json!("Ünïcode-land"), "{r}");
            got.insert(
                r[2].as_str().expect("city").to_owned(),
                r[3].as_i64().expect("count"),
            );
        }
        assert_eq!(got, expected, "on {}", db.backend);
        p.close(Duration::from_secs(10)).await.expect("close");
        drop(w);
        db
    })
    .await;
}

/// A worker that announces smaller limits than the publisher's: the batches sealed before its
/// WELCOME (1,000 events, ~52 KB frames, against 100 events and 2,000 bytes) are split into parts
/// it accepts — not rejected as `TooLarge`, not sent into an ERROR `FrameTooLarge` reconnect
/// loop — and every event is counted once.
#[tokio::test(flavor = "multi_thread")]
async fn batches_sealed_before_a_worker_announced_smaller_limits_are_split_and_all_counted() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let catalog = bundled();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut b = Publisher::builder(&format!("tcp://127.0.0.1:{port}"))
        .publisher_id("it-split")
        .batch_max_events(1000)
        .delivery_deadline(Duration::from_secs(30))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200));
    for s in catalog.streams() {
        b = b.schema(s.clone());
    }
    let p = b.build().expect("publisher");
    publish_all(&p, &naples_rows(2_500)).await;
    let config = scratch_dir().join("deployment.yaml");
    std::fs::write(
        &config,
        "shardtally:\n  max_batch_events: 100\n  max_frame_len: 2000\n",
    )
    .expect("config");
    let mut args = serve_args(&db.url, "node-small");
    set_arg(&mut args, "--listen", &format!("127.0.0.1:{port}"));
    args.extend(["--config".into(), config.display().to_string()]);
    let w = WorkerProc::start(&args);
    tokio::time::timeout(Duration::from_secs(60), p.flush())
        .await
        .expect("flushed")
        .expect("flush");
    let stats = p.stats();
    assert_delivered(&stats, 2_500);
    assert_eq!(stats.retried, 0, "nothing re-sent: {stats:?}");
    // Sealed as 1,000 + 1,000 + 500; a 2,000-byte frame holds an 86-byte header and 39 of
    // these 48-byte events: 26 + 26 + 13 parts.
    assert_eq!(stats.batches, 65, "{stats:?}");
    assert_eq!(query_records(&db.url, HOUR_QUERY), naples_hour(2_500));
    p.close(Duration::from_secs(5)).await.expect("close");
    drop(w);
    db.cleanup().await;
}

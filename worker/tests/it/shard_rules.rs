//! SPEC §4.2, each rule through the real `shardtally-worker` binary on every backend.

use std::time::Duration;

use crate::cluster::{
    GEO_COLUMNS, RawClient, WorkerProc, http, naples_rows, query_records_with, run_cli, serve_args,
    set_arg,
};
use crate::common::on_every_backend;
use shardtally_publisher::protocol::Frame;

const HOUR_QUERY: &str = r#"from GeoLocationAgg within "2026-11-20 10:**:**" per "hours" select country, city, totalRequestCount"#;

#[tokio::test(flavor = "multi_thread")]
async fn shard_id_longer_than_20_characters_is_refused() {
    // No database needed: the check happens before connecting.
    let dir = tempdir();
    let url = format!("sqlite://{}/x.db", dir.display());
    let mut args = serve_args(&url, "wso2-am-analytics-node-1");
    args.retain(|a| a != "--partition-by-id" && a != "true");
    let refused = WorkerProc::try_start(&args, Duration::from_secs(30))
        .err()
        .expect("must not start");
    assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
    assert!(refused.stderr.contains("shard-id"), "{}", refused.stderr);
    assert!(refused.stderr.contains("at most 20"), "{}", refused.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_shard_id_is_refused_unless_overridden() {
    on_every_backend(|db| async move {
        let mut args = serve_args(&db.url, "node-a");
        args.extend(["--shard-id".into(), "shard-a".into()]);
        let mut w = WorkerProc::start(&args);
        assert!(w.terminate().success());

        let mut changed = serve_args(&db.url, "node-a");
        changed.extend(["--shard-id".into(), "shard-b".into()]);
        let refused = WorkerProc::try_start(&changed, Duration::from_secs(30))
            .err()
            .expect("must refuse");
        assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
        assert!(refused.stderr.contains("shard-a"), "{}", refused.stderr);
        assert!(refused.stderr.contains("shard-b"), "{}", refused.stderr);

        changed.push("--allow-shard-change".into());
        let mut w = WorkerProc::start(&changed);
        assert!(w.terminate().success());
        db
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_served_by_another_live_node_is_refused_at_once() {
    on_every_backend(|db| async move {
        // A lease far longer than the start-up timeout below: a worker that waited for it to
        // expire instead of refusing would time out, and would log that it waits.
        let long_lease = |mut args: Vec<String>| {
            set_arg(&mut args, "--lease-ttl", "60s");
            args.extend(["--shard-id".into(), "shared".into()]);
            args
        };
        let _first = WorkerProc::start(&long_lease(serve_args(&db.url, "node-a")));
        let refused = WorkerProc::try_start(
            &long_lease(serve_args(&db.url, "node-b")),
            Duration::from_secs(30),
        )
        .err()
        .expect("must refuse");
        assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
        assert!(
            refused.stderr.contains("live node `node-a`"),
            "{}",
            refused.stderr
        );
        assert!(!refused.stderr.contains("waiting"), "{}", refused.stderr);
        db
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_node_restarting_waits_for_its_lease_then_takes_over() {
    on_every_backend(|db| async move {
        let args = serve_args(&db.url, "node-a");
        let mut w = WorkerProc::start(&args);
        w.kill9();
        let w2 = WorkerProc::start(&args);
        assert!(
            w2.log_text().contains("waiting"),
            "the restarted node should say it waits for the old lease:\n{}",
            w2.log_text()
        );
        db
    })
    .await;
}

/// A second instance of a node that is alive (the lease renewed through two lease periods while
/// it waited for it to expire) refuses to start; the first serves on.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_live_instance_of_the_same_node_is_refused() {
    on_every_backend(|db| async move {
        let args = serve_args(&db.url, "node-a");
        let first = WorkerProc::start(&args);
        let refused = WorkerProc::try_start(&args, Duration::from_secs(30))
            .err()
            .expect("must refuse");
        assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
        assert!(
            refused.stderr.contains(
                "node `node-a` is already running: another live instance of it renewed the lease \
                 on shard `node-a`"
            ),
            "{}",
            refused.stderr
        );
        let (status, body) = http(first.http, "GET", "/health", "");
        assert_eq!(status, 200, "the first instance serves on: {body}");
        db
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_stop_releases_the_lease_for_another_node() {
    on_every_backend(|db| async move {
        let mut a = serve_args(&db.url, "node-a");
        a.extend(["--shard-id".into(), "handover".into()]);
        let mut first = WorkerProc::start(&a);
        assert!(first.terminate().success());
        let mut b = serve_args(&db.url, "node-b");
        b.extend([
            "--shard-id".into(),
            "handover".into(),
            "--allow-shard-change".into(),
        ]);
        let second = WorkerProc::start(&b);
        assert!(
            !second.log_text().contains("waiting"),
            "{}",
            second.log_text()
        );
        db
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_without_shard_id_are_refused_then_migrated_without_loss() {
    on_every_backend(|db| async move {
        // The seeds' app without its @PartitionById annotation, so the global flag decides.
        let dir = tempdir();
        let app = dir.join("geo.siddhi");
        let text =
            shardtally_worker::siddhi::BUNDLED_GEO_APP.replace("@PartitionById(enable='true')", "");
        assert_ne!(text, shardtally_worker::siddhi::BUNDLED_GEO_APP);
        std::fs::write(&app, text).expect("app");
        let app = app.display().to_string();
        let with_app = |mut args: Vec<String>| {
            args.extend(["--app".to_owned(), app.clone()]);
            args
        };
        // Unpartitioned first: tables without SHARD_ID, 500 events in them.
        let mut plain = with_app(serve_args(&db.url, "node-a"));
        set_arg(&mut plain, "--partition-by-id", "false");
        let mut w = WorkerProc::start(&plain);
        let mut c = RawClient::connect(w.listen, "migrate-test", "")
            .await
            .expect("handshake");
        c.send_batch(1, "geoTempStream", &GEO_COLUMNS, &naples_rows(500))
            .await;
        assert_eq!(c.recv().await, Frame::Ack { seq: 1 });
        assert!(w.terminate().success());

        // Partitioning on: refused with both remedies, nothing dropped.
        let refused = WorkerProc::try_start(
            &with_app(serve_args(&db.url, "node-a")),
            Duration::from_secs(30),
        )
        .err()
        .expect("must refuse");
        assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
        assert!(refused.stderr.contains("SHARD_ID"), "{}", refused.stderr);
        assert!(
            refused.stderr.contains("migrate --add-shard-id"),
            "{}",
            refused.stderr
        );
        assert!(
            refused.stderr.to_lowercase().contains("drop"),
            "{}",
            refused.stderr
        );

        let (code, out, err) = run_cli(&[
            "migrate",
            "--database-url",
            &db.url,
            "--node-id",
            "node-a",
            "--partition-by-id",
            "true",
            "--app",
            &app,
            "--add-shard-id",
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("GeoLocationAgg_HOURS"), "{out}");

        let _w = WorkerProc::start(&with_app(serve_args(&db.url, "node-a")));
        assert_eq!(
            query_records_with(&db.url, &["--app", &app], HOUR_QUERY),
            vec![vec![
                serde_json::json!("Italy"),
                serde_json::json!("Naples"),
                serde_json::json!(500)
            ]]
        );
        db
    })
    .await;
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shardtally-it-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("tempdir");
    dir
}

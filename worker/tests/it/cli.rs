//! The `shardtally-worker` command line: output formats, exit codes for bad input, graceful stop.

use shardtally_publisher::protocol::Frame;
use shardtally_worker::store::Backend;

use crate::cluster::{
    GEO_COLUMNS, RawClient, WorkerProc, naples_rows, query_records, run_cli, scratch_dir,
    serve_args, set_arg,
};
use crate::common::TestDb;

const HOUR_QUERY: &str = r#"from GeoLocationAgg within "2026-11-20 10:**:**" per "hours" select country, city, totalRequestCount"#;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_flushes_pending_batches_and_acks_them_before_exiting() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let mut args = serve_args(&db.url, "node-a");
    // A flush interval far longer than the test: only the shutdown flush can commit.
    set_arg(&mut args, "--flush-interval", "1h");
    let mut w = WorkerProc::start(&args);
    let mut c = RawClient::connect(w.listen, "gw-term", "")
        .await
        .expect("hello");
    c.send_batch(1, "geoTempStream", &GEO_COLUMNS, &naples_rows(321))
        .await;
    // Let the batch reach the ingest task, then stop the worker gracefully.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = w.terminate();
        (s, w)
    });
    let mut saw_goodbye = false;
    let ack = loop {
        match c.recv().await {
            Frame::Goodbye { .. } => saw_goodbye = true,
            other => break other,
        }
    };
    assert_eq!(ack, Frame::Ack { seq: 1 });
    assert!(saw_goodbye, "publishers are told the worker is draining");
    let (status, _w) = status.await.expect("join");
    assert!(status.success(), "graceful stop exits 0: {status}");
    assert_eq!(
        query_records(&db.url, HOUR_QUERY),
        vec![vec![
            serde_json::json!("Italy"),
            serde_json::json!("Naples"),
            serde_json::json!(321)
        ]]
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_http_connections_without_a_request_in_progress_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let db = TestDb::fresh(Backend::Sqlite).await;
    // The default handshake_timeout (10 s: a request's head must arrive within it) is longer
    // than the worker gives its HTTP side to stop (5 s).
    let mut w = WorkerProc::start(&serve_args(&db.url, "node-a"));
    // A connection that never sends a request (a browser's or a balancer's preconnect) …
    let mut silent = TcpStream::connect(w.http).await.expect("connect");
    // … and one kept alive after its request was answered.
    let mut kept = TcpStream::connect(w.http).await.expect("connect");
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: worker\r\n\r\n")
        .await
        .expect("request");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = kept.read(&mut buf).await.expect("answer");
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let stopped = tokio::task::spawn_blocking(move || {
        let s = w.terminate();
        (s, w)
    });
    for (name, conn) in [("silent", &mut silent), ("kept alive", &mut kept)] {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            conn.read_to_end(&mut rest),
        )
        .await;
        assert!(
            matches!(read, Ok(Ok(_))) && !rest.windows(4).any(|w| w == b"HTTP"),
            "the {name} connection is closed without an answer: {read:?} {rest:?}"
        );
    }
    let (status, w) = stopped.await.expect("join");
    assert!(status.success(), "graceful stop exits 0: {status}");
    let log = w.log_text();
    assert!(log.contains("stopped"), "{log}");
    assert!(
        !log.contains("HTTP connections still open"),
        "no connection held the stop up: {log}"
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn query_renders_table_csv_and_json_and_bad_queries_exit_2_with_a_position() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    {
        let w = WorkerProc::start(&serve_args(&db.url, "node-a"));
        let mut c = RawClient::connect(w.listen, "gw-cli", "")
            .await
            .expect("hello");
        c.send_batch(1, "geoTempStream", &GEO_COLUMNS, &naples_rows(7))
            .await;
        assert_eq!(c.recv().await, Frame::Ack { seq: 1 });
    }
    let run = |format: &str, q: &str| {
        run_cli(&["query", "--database-url", &db.url, "--format", format, q])
    };

    let (code, out, err) = run("table", HOUR_QUERY);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "country | city   | totalRequestCount\n--------+--------+------------------\nItaly   | Naples | 7\n(1 row)\n"
    );
    let (code, out, err) = run("csv", HOUR_QUERY);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "country,city,totalRequestCount\nItaly,Naples,7\n");
    let (code, out, err) = run("json", HOUR_QUERY);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"columns": ["country", "city", "totalRequestCount"], "records": [["Italy", "Naples", 7]]})
    );

    // A query serves nothing and writes under no shard: a node id too long to be a shard id
    // (as a long host name is, by default) and a config file for a public address without a
    // token — both refused by `serve` — do not stop it.
    let long_node = "analytics-node-with-a-long-host-name";
    let (code, out, err) = run_cli(&[
        "query",
        "--database-url",
        &db.url,
        "--node-id",
        long_node,
        "--format",
        "csv",
        HOUR_QUERY,
    ]);
    assert_eq!(
        (code, out.as_str()),
        (0, "country,city,totalRequestCount\nItaly,Naples,7\n"),
        "{err}"
    );
    let (code, _, err) = run_cli(&["serve", "--database-url", &db.url, "--node-id", long_node]);
    assert_eq!(code, 2, "serve refuses the shard id: {err}");
    let dir = scratch_dir();
    let config = dir.join("deployment.yaml");
    std::fs::write(
        &config,
        format!(
            "shardtally:\n  listen: 0.0.0.0:9611\n  database_url: {}\n",
            db.url
        ),
    )
    .expect("config");
    let config = config.display().to_string();
    let (code, out, err) = run_cli(&["query", "--config", &config, "--format", "csv", HOUR_QUERY]);
    assert_eq!(
        (code, out.as_str()),
        (0, "country,city,totalRequestCount\nItaly,Naples,7\n"),
        "{err}"
    );
    let (code, _, err) = run_cli(&["serve", "--config", &config, "--node-id", "node-q"]);
    assert_eq!(
        code, 2,
        "serve refuses a public address without a token: {err}"
    );
    assert!(err.contains("listen"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);

    let (code, _, err) = run(
        "table",
        "from GeoLocationAgg within 0, 10 per \"fortnights\"",
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 1, column"), "{err}");
    let (code, _, err) = run("table", "from NoSuchAgg within 0, 10 per \"hours\"");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("NoSuchAgg"), "{err}");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_configuration_exits_2_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("shardtally-it-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("deployment.yaml");
    std::fs::write(
        &config,
        "wso2.carbon:\n  id: node-a\nshardtally:\n  flush_intervall: 1s\n",
    )
    .expect("write");
    let (code, _, err) = run_cli(&["serve", "--config", &config.display().to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("flush_intervall"), "{err}");
    assert!(err.contains("deployment.yaml:4:"), "{err}");

    let (code, _, err) = run_cli(&["serve", "--node-id", "n", "--flush-interval", "soon"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("flush-interval"), "{err}");

    let app = dir.join("broken.siddhi");
    std::fs::write(&app, "@app:name('x')\ndefine stream s (a strin);\n").expect("write");
    let (code, _, err) = run_cli(&[
        "serve",
        "--node-id",
        "n",
        "--database-url",
        &format!("sqlite://{}/x.db", dir.display()),
        "--app",
        &app.display().to_string(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 2, column"), "{err}");
}

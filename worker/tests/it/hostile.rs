//! Hostile networks, through real sockets on 127.0.0.1: floods of junk, silent, truncated and
//! unauthenticated connections — after all of which the worker serves a valid publisher and
//! counts exactly its events — and the token on the HTTP side.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use shardtally_publisher::protocol::{
    ErrorCode, Frame, FrameCodec, Hello, PROTOCOL_VERSION, Value,
};
use shardtally_publisher::{FullPolicy, Publisher};
use shardtally_worker::catalog::Catalog;
use shardtally_worker::config::AppSource;
use shardtally_worker::store::Backend;
use tokio_util::codec::{Encoder, Framed};

use crate::cluster::{
    HOUR_QUERY, WorkerProc, http, http_with, metric, naples_encoder, naples_hour, naples_rows,
    publish_rows, query_records, scratch_dir, serve_args,
};
use crate::common::TestDb;

const TOKEN: &str = "s3cret-token";

/// A worker requiring [`TOKEN`], with short handshake and idle timeouts.
fn start_protected(db_url: &str) -> WorkerProc {
    start_protected_with(db_url, "")
}

/// [`start_protected`], with more `shardtally:` settings (indented lines).
fn start_protected_with(db_url: &str, settings: &str) -> WorkerProc {
    let dir = scratch_dir();
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    let config = dir.join("deployment.yaml");
    std::fs::write(
        &config,
        format!("shardtally:\n  handshake_timeout: 2s\n  idle_timeout: 4s\n{settings}"),
    )
    .expect("config");
    let mut args = serve_args(db_url, "node-h");
    args.extend([
        "--auth-token-file".into(),
        token.display().to_string(),
        "--config".into(),
        config.display().to_string(),
    ]);
    WorkerProc::start(&args)
}

fn geo_publisher(url_set: &str, token: &str) -> Publisher {
    let catalog = Catalog::load(&AppSource::Bundled, true).expect("bundled app");
    let mut b = Publisher::builder(url_set)
        .auth_token(token)
        .publisher_id("it-valid")
        .batch_max_events(500)
        .full_policy(FullPolicy::DropNewest)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500));
    for s in catalog.streams() {
        b = b.schema(s.clone());
    }
    b.build().expect("publisher")
}

fn hello(token: &str) -> Frame {
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        publisher_id: format!("intruder-{token}"),
        auth_token: token.to_owned(),
        client_name: "it".to_owned(),
    })
}

/// HELLO with `token` and, in the same write, a batch of 100 events: the batch must never count.
async fn pipelined_hello_and_batch(addr: std::net::SocketAddr, token: &str) -> Vec<Frame> {
    let socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut framed = Framed::new(socket, FrameCodec::default());
    let enc = naples_encoder(100);
    framed.feed(hello(token)).await.expect("hello");
    framed.feed(enc.finish(1)).await.expect("batch");
    SinkExt::<Frame>::flush(&mut framed).await.expect("flush");
    let mut answers = Vec::new();
    while let Ok(Some(Ok(frame))) =
        tokio::time::timeout(Duration::from_secs(10), framed.next()).await
    {
        answers.push(frame);
    }
    answers
}

fn auth_failed(frames: &[Frame]) -> bool {
    matches!(
        frames,
        [Frame::Error {
            code: ErrorCode::AuthFailed,
            ..
        }]
    )
}

fn metrics_text(w: &WorkerProc) -> String {
    let (status, text) = http_with(
        w.http,
        "GET",
        "/metrics",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
        "",
    );
    assert_eq!(status, 200, "{text}");
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn junk_silent_truncated_and_unauthenticated_clients_leave_one_valid_publisher_exact() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = start_protected(&db.url);

    // Fifty silent connections, held open while everything else happens.
    let silent: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(w.listen).expect("connect silent"))
        .collect();

    // Hundreds of short junk connections: random bytes (a random length prefix included), close.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    for _ in 0..300 {
        let mut s = TcpStream::connect(w.listen).expect("connect junk");
        let len = rng.random_range(1..256);
        let junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let _ = s.write_all(&junk);
    }

    // A truncated frame: half a HELLO, then the connection closes.
    let mut whole = BytesMut::new();
    FrameCodec::default()
        .encode(hello(TOKEN), &mut whole)
        .expect("encode");
    let mut truncated = TcpStream::connect(w.listen).expect("connect truncated");
    truncated
        .write_all(&whole[..whole.len() / 2])
        .expect("write");
    drop(truncated);

    // A wrong token and no token, each with a batch pipelined behind the HELLO.
    assert!(auth_failed(
        &pipelined_hello_and_batch(w.listen, "wrong").await
    ));
    assert!(auth_failed(&pipelined_hello_and_batch(w.listen, "").await));

    // The valid publisher, while the silent connections are still open.
    let p = geo_publisher(&format!("{{{}}}", w.endpoint()), TOKEN);
    publish_rows(&p, &naples_rows(10_000)).await;
    p.flush().await.expect("flush");
    let stats = p.stats();
    assert_eq!(
        (stats.published, stats.acked),
        (10_000, 10_000),
        "{stats:?}"
    );
    assert_eq!(query_records(&db.url, HOUR_QUERY), naples_hour(10_000));

    // The silent ones are told why and closed at the handshake timeout (2 s).
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(15))).ok();
        let mut bytes = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut bytes);
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = tokio_util::codec::Decoder::decode(&mut FrameCodec::default(), &mut buf);
        assert!(
            matches!(
                frame,
                Ok(Some(Frame::Error {
                    code: ErrorCode::HandshakeTimeout,
                    ..
                }))
            ),
            "{frame:?}"
        );
    }

    let text = metrics_text(&w);
    assert_eq!(metric(&text, "auth_failures_total"), Some(2.0), "{text}");
    assert_eq!(
        metric(&text, "events_committed_total"),
        Some(10_000.0),
        "{text}"
    );
    p.close(Duration::from_secs(10)).await.expect("close");
    drop(w);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_wrong_tokens_is_counted_every_time_and_logged_at_most_once_a_second() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = start_protected(&db.url);
    let started = Instant::now();
    let attempts: Vec<_> = (0..60)
        .map(|i| {
            tokio::spawn(pipelined_hello_and_batch(
                w.listen,
                if i % 2 == 0 { "" } else { "nope" },
            ))
        })
        .collect();
    for a in attempts {
        assert!(auth_failed(&a.await.expect("task")));
    }
    let elapsed = started.elapsed();
    let text = metrics_text(&w);
    assert_eq!(metric(&text, "auth_failures_total"), Some(60.0), "{text}");
    assert_eq!(metric(&text, "events_committed_total"), Some(0.0), "{text}");
    let logged = w
        .log_text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("authentication failed"))
        .count();
    let bound = usize::try_from(elapsed.as_secs()).expect("secs") + 1;
    assert!(
        (1..=bound).contains(&logged),
        "{logged} log lines for 60 failures in {elapsed:?}"
    );
    drop(w);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_the_query_and_metrics_endpoints_need_it_and_health_does_not() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = start_protected(&db.url);
    let p = geo_publisher(&format!("{{{}}}", w.endpoint()), TOKEN);
    publish_rows(&p, &naples_rows(7)).await;
    p.flush().await.expect("flush");

    let body =
        serde_json::json!({ "appName": "APIM_ANALYTICS_GEO", "query": HOUR_QUERY }).to_string();
    let (status, text) = http(w.http, "POST", "/stores/query", &body);
    assert_eq!(status, 401, "{text}");
    let wrong = "Authorization: Bearer guess\r\n";
    assert_eq!(
        http_with(w.http, "POST", "/stores/query", wrong, &body).0,
        401
    );
    assert_eq!(http(w.http, "GET", "/metrics", "").0, 401);
    let right = format!("Authorization: Bearer {TOKEN}\r\n");
    let (status, text) = http_with(w.http, "POST", "/stores/query", &right, &body);
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        v,
        serde_json::json!({ "records": [["Italy", "Naples", 7]] })
    );
    assert_eq!(http(w.http, "GET", "/health", "").0, 200);
    let text = metrics_text(&w);
    assert_eq!(metric(&text, "auth_failures_total"), Some(3.0), "{text}");
    p.close(Duration::from_secs(10)).await.expect("close");
    drop(w);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_http_connection_is_closed_at_the_idle_timeout() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = start_protected(&db.url); // idle_timeout: 4s
    // Half a request line, then silence (slowloris): closed at the head's 2 s handshake timeout,
    // or at the latest at the idle timeout.
    let mut slow = TcpStream::connect(w.http).expect("connect");
    slow.write_all(b"GET /health HT").expect("write");
    let started = Instant::now();
    slow.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut rest = Vec::new();
    let read = std::io::Read::read_to_end(&mut slow, &mut rest);
    // Closed by the worker (EOF or reset), not by our 30 s read timeout.
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(25),
        "still open after {waited:?}: {read:?}"
    );
    // The HTTP side still answers.
    assert_eq!(http(w.http, "GET", "/health", "").0, 200);
    drop(w);
    db.cleanup().await;
}

/// Sends `head`, then `trickle` one byte every 300 ms (well inside the 4 s idle timeout) from
/// another thread, while reading what the worker answers. Returns the answer and whether the
/// worker closed the connection while bytes were still arriving.
fn trickle(w: &WorkerProc, head: &str, trickle: &[u8]) -> (String, bool) {
    let mut conn = TcpStream::connect(w.http).expect("connect");
    conn.write_all(head.as_bytes()).expect("head");
    let mut writer = conn.try_clone().expect("clone");
    let bytes = trickle.to_vec();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender_done = done.clone();
    let sender = std::thread::spawn(move || {
        for b in bytes {
            std::thread::sleep(Duration::from_millis(300));
            if writer.write_all(&[b]).is_err() {
                return;
            }
        }
        sender_done.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    conn.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut conn, &mut answer);
    let cut_off = !done.load(std::sync::atomic::Ordering::SeqCst);
    let _ = conn.shutdown(std::net::Shutdown::Both);
    let _ = sender.join();
    (String::from_utf8_lossy(&answer).into_owned(), cut_off)
}

/// Slowloris that keeps the connection busy: a request's head or body that trickles in a byte at
/// a time never lets the idle timeout fire, so each has the handshake timeout (2 s) to arrive
/// whole; the 60 bytes here would take 18 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_trickled_in_is_cut_off_at_the_handshake_timeout_head_or_body() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = start_protected(&db.url); // handshake_timeout: 2s, idle_timeout: 4s
    let (answer, cut_off) = trickle(&w, "GET /health HTTP/1.1\r\n", &[b'x'; 60]);
    assert!(
        cut_off,
        "the head arrived whole before the worker gave up: {answer:?}"
    );
    let body = "x".repeat(60);
    let head = format!(
        "POST /stores/query HTTP/1.1\r\nHost: w\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (answer, cut_off) = trickle(&w, &head, body.as_bytes());
    assert!(cut_off, "{answer:?}");
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer:?}"
    );
    assert!(
        answer.contains("the request body did not arrive within 2s (handshake_timeout)"),
        "{answer:?}"
    );
    // The HTTP side still answers.
    assert_eq!(http(w.http, "GET", "/health", "").0, 200);
    drop(w);
    db.cleanup().await;
}

/// A length prefix announcing a 1 MiB HELLO is refused at once (ERROR `FrameTooLarge`), not
/// buffered until the handshake timeout: before it is authenticated, a peer's frames are limited
/// to 64 KiB.
#[tokio::test(flavor = "multi_thread")]
async fn a_hello_longer_than_64_kib_is_refused_before_it_is_read() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = start_protected(&db.url); // handshake_timeout: 2s
    let mut socket = tokio::net::TcpStream::connect(w.listen)
        .await
        .expect("connect");
    let mut head = (1u32 << 20).to_be_bytes().to_vec();
    head.push(0x01);
    tokio::io::AsyncWriteExt::write_all(&mut socket, &head)
        .await
        .expect("head");
    let mut framed = Framed::new(socket, FrameCodec::default());
    let reply = tokio::time::timeout(Duration::from_secs(10), framed.next()).await;
    match reply {
        Ok(Some(Ok(Frame::Error { code, message }))) => {
            assert_eq!(code, ErrorCode::FrameTooLarge, "{message}");
            assert!(message.contains("65536"), "{message}");
        }
        other => panic!("expected ERROR FrameTooLarge, got {other:?}"),
    }
    // Once HELLO is accepted, frames up to max_frame_len (16 MiB) are read again.
    let socket = tokio::net::TcpStream::connect(w.listen)
        .await
        .expect("connect");
    let mut framed = Framed::new(socket, FrameCodec::default());
    framed.send(hello(TOKEN)).await.expect("hello");
    let welcome = tokio::time::timeout(Duration::from_secs(10), framed.next()).await;
    assert!(
        matches!(welcome, Ok(Some(Ok(Frame::Welcome(_))))),
        "{welcome:?}"
    );
    let batch = naples_encoder(2_000).finish(1);
    assert!(batch.len() > 64 * 1024, "{} bytes", batch.len());
    framed.send(batch).await.expect("batch");
    let ack = tokio::time::timeout(Duration::from_secs(10), framed.next()).await;
    assert!(
        matches!(ack, Ok(Some(Ok(Frame::Ack { seq: 1 })))),
        "{ack:?}"
    );
    assert_eq!(query_records(&db.url, HOUR_QUERY), naples_hour(2_000));
    drop(w);
    db.cleanup().await;
}

/// `POST /stores/query` with the token; (status, body).
fn store_query(w: &WorkerProc, query: &str) -> (u16, String) {
    let body = serde_json::json!({ "appName": "APIM_ANALYTICS_GEO", "query": query }).to_string();
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    http_with(w.http, "POST", "/stores/query", &auth, &body)
}

/// A query whose range holds more stored rows than `max_query_rows` is a 400 that says how to
/// narrow it, having read no more than that; a coarser `per` over the same events answers.
#[tokio::test(flavor = "multi_thread")]
async fn a_query_reading_more_than_max_query_rows_is_a_400() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = start_protected_with(&db.url, "  max_query_rows: 5\n");
    let p = geo_publisher(&format!("{{{}}}", w.endpoint()), TOKEN);
    publish_rows(&p, &naples_rows(7)).await;
    p.flush().await.expect("flush");
    let seconds = r#"from GeoLocationAgg within "2026-11-20 10:**:**" per "seconds" select country, sum(totalRequestCount) as n group by country"#;
    let (status, text) = store_query(&w, seconds);
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains(
            "the query reads more than 5 stored rows of `GeoLocationAgg_SECONDS` \
             (max_query_rows); narrow `within` or use a coarser `per`"
        ),
        "{text}"
    );
    let (status, text) = store_query(&w, &seconds.replace("\"seconds\"", "\"hours\""));
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v, serde_json::json!({ "records": [["Italy", 7]] }));
    // `shardtally-worker query` reads the same limit from the same configuration.
    let config = scratch_dir().join("deployment.yaml");
    std::fs::write(&config, "shardtally:\n  max_query_rows: 5\n").expect("config");
    let config = config.display().to_string();
    let (code, _, err) = crate::cluster::run_cli(&[
        "query",
        "--database-url",
        &db.url,
        "--partition-by-id",
        "true",
        "--config",
        &config,
        seconds,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("the query reads more than 5 stored rows of `GeoLocationAgg_SECONDS`"),
        "{err}"
    );
    p.close(Duration::from_secs(10)).await.expect("close");
    drop(w);
    db.cleanup().await;
}

/// A query the database does not answer in time (its table locked by another session) is a 503
/// at `query_timeout`; the same query answers once the lock is gone. On PostgreSQL and
/// MySQL/MariaDB (SQLite readers are not blocked by a writer in WAL mode).
#[tokio::test(flavor = "multi_thread")]
async fn a_query_the_database_does_not_answer_is_a_503_at_query_timeout() {
    for backend in crate::common::backends() {
        let Some((lock, unlock)) = table_lock(backend, "GeoLocationAgg_HOURS") else {
            continue;
        };
        let db = TestDb::fresh(backend).await;
        let w = start_protected_with(&db.url, "  query_timeout: 1s\n");
        let p = geo_publisher(&format!("{{{}}}", w.endpoint()), TOKEN);
        publish_rows(&p, &naples_rows(7)).await;
        p.flush().await.expect("flush");
        let mut holder = <sqlx::AnyConnection as sqlx::Connection>::connect(&db.url)
            .await
            .expect("connect");
        sqlx::raw_sql(&lock)
            .execute(&mut holder)
            .await
            .expect("lock");
        let (status, text) = store_query(&w, HOUR_QUERY);
        assert_eq!(status, 503, "{backend:?}: {text}");
        assert!(
            text.contains("the query did not finish within 1s (query_timeout)"),
            "{backend:?}: {text}"
        );
        // The database stopped the statement too: it is not left waiting on the lock (it
        // would wait until the lock went), holding a connection and the database's resources.
        let left = statements_reading(&db.url, backend, "GeoLocationAgg_HOURS", 0).await;
        assert_eq!(left, 0, "{backend:?}: the timed-out statement still runs");
        sqlx::raw_sql(unlock)
            .execute(&mut holder)
            .await
            .expect("unlock");
        let (status, text) = store_query(&w, HOUR_QUERY);
        assert_eq!(status, 200, "{backend:?}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            v,
            serde_json::json!({ "records": [["Italy", "Naples", 7]] })
        );
        drop(holder);
        p.close(Duration::from_secs(10)).await.expect("close");
        drop(w);
        db.cleanup().await;
    }
}

/// The statements that lock `table` against every other session (reads included) and unlock it
/// again; `None` on SQLite, whose WAL readers a writer never blocks.
fn table_lock(backend: Backend, table: &str) -> Option<(String, &'static str)> {
    match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some((
            format!(r#"BEGIN; LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE"#),
            "ROLLBACK",
        )),
        Backend::MySql => Some((format!("LOCK TABLES `{table}` WRITE"), "UNLOCK TABLES")),
    }
}

/// How many statements of other sessions are reading `table` in the test's database, polled
/// (100 ms apart, for up to 10 s) until there are `want`.
async fn statements_reading(db_url: &str, backend: Backend, table: &str, want: i64) -> i64 {
    let mut watcher = <sqlx::AnyConnection as sqlx::Connection>::connect(db_url)
        .await
        .expect("connect");
    let sql = match backend {
        Backend::Postgres => format!(
            "SELECT CAST(count(*) AS BIGINT) FROM pg_stat_activity WHERE state = 'active' \
             AND pid <> pg_backend_pid() AND datname = current_database() \
             AND query LIKE 'SELECT %{table}%'"
        ),
        Backend::MySql | Backend::Sqlite => format!(
            "SELECT CAST(count(*) AS SIGNED) FROM information_schema.PROCESSLIST \
             WHERE INFO LIKE '%SELECT %{table}%' AND INFO NOT LIKE '%PROCESSLIST%' \
             AND DB = DATABASE()"
        ),
    };
    let mut n = -1;
    for _ in 0..100 {
        n = sqlx::query_scalar::<_, i64>(&sql)
            .fetch_one(&mut watcher)
            .await
            .expect("statements");
        if n == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    n
}

/// Store queries read on connections of their own: a query stuck in the database (here on a
/// lock) does not hold up the commits and acks of other events, even with one connection per
/// pool (`maxPoolSize: 1`). SQLite is skipped: a WAL reader is never blocked.
#[tokio::test(flavor = "multi_thread")]
async fn a_query_stuck_in_the_database_does_not_hold_up_commits() {
    for backend in crate::common::backends() {
        let Some((lock, unlock)) = table_lock(backend, "BAgg_HOURS") else {
            continue;
        };
        let db = TestDb::fresh(backend).await;
        let app = crate::cluster::app_file(
            "two.siddhi",
            "@app:name('Two')\ndefine stream a (k string, ts long);\n\
             define stream b (k string, ts long);\n\
             define aggregation AAgg from a select k, count() as n group by k aggregate by ts every sec ... year;\n\
             define aggregation BAgg from b select k, count() as n group by k aggregate by ts every sec ... year;\n",
        );
        let config = scratch_dir().join("deployment.yaml");
        std::fs::write(
            &config,
            "wso2.datasources:\n  dataSources:\n    - name: APIM_ANALYTICS_DB\n      definition:\n        \
             type: RDBMS\n        configuration:\n          maxPoolSize: 1\nshardtally:\n  query_timeout: 60s\n",
        )
        .expect("config");
        let mut args = serve_args(&db.url, "node-q");
        args.extend([
            "--app".into(),
            app,
            "--config".into(),
            config.display().to_string(),
        ]);
        let w = WorkerProc::start(&args);
        let mut holder = <sqlx::AnyConnection as sqlx::Connection>::connect(&db.url)
            .await
            .expect("connect");
        sqlx::raw_sql(&lock)
            .execute(&mut holder)
            .await
            .expect("lock");
        let http_addr = w.http;
        let query = std::thread::spawn(move || {
            let body = serde_json::json!({
                "appName": "Two",
                "query": "from BAgg within 0, 4102444800000 per \"hours\" select k, n",
            })
            .to_string();
            http_with(http_addr, "POST", "/stores/query", "", &body)
        });
        let stuck = statements_reading(&db.url, backend, "BAgg_HOURS", 1).await;
        assert_eq!(stuck, 1, "{backend:?}: the query waits on the lock");
        // Events of the other aggregation commit and are acked while the query waits (sharing
        // the one connection, they waited for the query's 503 at 60 s).
        let mut c = crate::cluster::RawClient::connect(w.listen, "gw-reads", "")
            .await
            .expect("hello");
        let row = |k: &str| vec![Value::from(k), Value::Long(1_795_168_800_000)];
        c.send_batch(1, "a", &["k", "ts"], &[row("x"), row("x"), row("y")])
            .await;
        let ack = tokio::time::timeout(Duration::from_secs(30), c.recv()).await;
        assert_eq!(ack, Ok(Frame::Ack { seq: 1 }), "{backend:?}");
        assert!(!query.is_finished(), "{backend:?}: the query still waits");
        sqlx::raw_sql(unlock)
            .execute(&mut holder)
            .await
            .expect("unlock");
        let (status, text) = query.join().expect("query");
        assert_eq!(status, 200, "{backend:?}: {text}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).expect("json"),
            serde_json::json!({ "records": [] })
        );
        let body = serde_json::json!({
            "appName": "Two",
            "query": "from AAgg within 0, 4102444800000 per \"years\" select k, n order by k",
        })
        .to_string();
        let (status, text) = http_with(w.http, "POST", "/stores/query", "", &body);
        assert_eq!(status, 200, "{backend:?}: {text}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).expect("json"),
            serde_json::json!({ "records": [["x", 2], ["y", 1]] })
        );
        drop((holder, c, w));
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_nested_without_bound_is_a_400_and_the_worker_goes_on() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = start_protected(&db.url);
    let p = geo_publisher(&format!("{{{}}}", w.endpoint()), TOKEN);
    publish_rows(&p, &naples_rows(7)).await;
    p.flush().await.expect("flush");
    // 8,000 postfix `is null`s fit in the 64 KiB body: as a tree that deep, checking or
    // evaluating it would overflow the stack of the worker's runtime thread — the whole process.
    let deep = format!(
        "from GeoLocationAgg within 0, 4102444800000 per \"hours\" select AGG_TIMESTAMP{} as n",
        " is null".repeat(8_000)
    );
    let (status, text) = store_query(&w, &deep);
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("expression has more than 256 operators"),
        "{text}"
    );
    // Still up, and still exact.
    let (status, text) = store_query(&w, HOUR_QUERY);
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        v,
        serde_json::json!({ "records": [["Italy", "Naples", 7]] })
    );
    p.close(Duration::from_secs(10)).await.expect("close");
    drop(w);
    db.cleanup().await;
}

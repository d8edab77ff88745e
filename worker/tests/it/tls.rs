//! TLS end to end: the publisher SDK over `tls://` into a real worker process started with
//! `--tls-cert/--tls-key` (and `--tls-client-ca`), with the test CA in `testdata/tls`.

use std::io::Read as _;
use std::time::Duration;

use shardtally_publisher::protocol::{ErrorCode, Frame};
use shardtally_publisher::{EndpointState, FullPolicy, Publisher, PublisherBuilder, Stats};
use shardtally_worker::catalog::Catalog;
use shardtally_worker::config::AppSource;
use shardtally_worker::store::Backend;

use crate::cluster::{
    HOUR_QUERY, HttpsClient, RawClient, WorkerProc, eventually, http, https, metric, naples_hour,
    naples_rows, publish_rows, query_records, run_cli, scratch_dir, serve_args, tls_fixture,
};
use crate::common::TestDb;

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(tls_fixture(name)).expect("fixture")
}

fn tls_worker(db_url: &str, client_ca: bool) -> WorkerProc {
    WorkerProc::start(&tls_args(db_url, client_ca))
}

/// `serve` arguments for a TLS worker with the test certificate (and client CA).
fn tls_args(db_url: &str, client_ca: bool) -> Vec<String> {
    let mut args = serve_args(db_url, "node-tls");
    args.extend([
        "--tls-cert".into(),
        tls_fixture("server.pem").display().to_string(),
        "--tls-key".into(),
        tls_fixture("server.key").display().to_string(),
    ]);
    if client_ca {
        args.extend([
            "--tls-client-ca".into(),
            tls_fixture("ca.pem").display().to_string(),
        ]);
    }
    args
}

/// An HTTPS client trusting `roots`, without a client certificate.
fn trusting(roots: &[u8]) -> HttpsClient<'_> {
    HttpsClient {
        roots,
        client_auth: None,
    }
}

fn builder(url_set: &str) -> PublisherBuilder {
    let catalog = Catalog::load(&AppSource::Bundled, true).expect("bundled app");
    let mut b = Publisher::builder(url_set)
        .publisher_id("it-tls")
        .batch_max_events(500)
        .full_policy(FullPolicy::DropNewest)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200));
    for s in catalog.streams() {
        b = b.schema(s.clone());
    }
    b
}

/// Waits until the (only) endpoint reports an error, and returns it.
async fn endpoint_error(p: &Publisher) -> String {
    for _ in 0..200 {
        let s: Stats = p.stats();
        if let Some(e) = &s.endpoints[0].last_error {
            return e.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no endpoint error: {:?}", p.stats());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_round_trip_counts_exactly_and_a_plaintext_client_is_refused() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = tls_worker(&db.url, false);
    let port = w.listen.port();

    // By IP address and by DNS name: both are in the certificate.
    for (host, n) in [("127.0.0.1", 3_000), ("localhost", 2_000)] {
        let p = builder(&format!("{{tls://{host}:{port}}}"))
            .tls_root_certificates_pem(pem("ca.pem"))
            .build()
            .expect("publisher");
        publish_rows(&p, &naples_rows(n)).await;
        p.flush().await.expect("flush");
        let s = p.stats();
        assert_eq!((s.published, s.acked), (n as u64, n as u64), "{s:?}");
        assert_eq!(s.endpoints[0].state, EndpointState::Connected, "{s:?}");
        p.close(Duration::from_secs(10)).await.expect("close");
    }
    assert_eq!(query_records(&db.url, HOUR_QUERY), naples_hour(5_000));

    // A plaintext client gets a plaintext ERROR it can read, and the connection closes.
    match RawClient::connect(w.listen, "plain", "").await {
        Err(Frame::Error {
            code: ErrorCode::TlsRequired,
            message,
        }) => assert!(message.contains("tls://"), "{message}"),
        other => panic!("expected TlsRequired, got {:?}", other.map(|c| c.welcome)),
    }
    // The SDK over tcp:// is told the same, stops trying, and its events stay undelivered.
    let p = builder(&format!("{{tcp://{}}}", w.listen))
        .build()
        .expect("publisher");
    publish_rows(&p, &naples_rows(10)).await;
    let error = endpoint_error(&p).await;
    assert!(error.contains("TlsRequired"), "{error}");
    assert!(
        eventually(Duration::from_secs(10), || p.stats().endpoints[0].state
            == EndpointState::Down),
        "{:?}",
        p.stats()
    );
    assert_eq!(p.stats().acked, 0);

    let ca = pem("ca.pem");
    let (status, text) = https(w.http, &trusting(&ca), "GET", "/metrics", "", "").expect("https");
    assert_eq!(status, 200, "{text}");
    assert!(metric(&text, "tls_failures_total") >= Some(2.0), "{text}");
    assert_eq!(
        metric(&text, "events_committed_total"),
        Some(5_000.0),
        "{text}"
    );
    assert_eq!(query_records(&db.url, HOUR_QUERY), naples_hour(5_000));
    drop(p);
    drop(w);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publisher_that_does_not_trust_the_certificate_sends_nothing() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = tls_worker(&db.url, false);
    let p = builder(&format!("{{tls://127.0.0.1:{}}}", w.listen.port()))
        .tls_root_certificates_pem(pem("other-ca.pem"))
        .build()
        .expect("publisher");
    publish_rows(&p, &naples_rows(10)).await;
    let error = endpoint_error(&p).await;
    assert!(error.contains("TLS handshake failed"), "{error}");
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert_eq!(p.stats().acked, 0);
    assert_eq!(
        query_records(&db.url, HOUR_QUERY),
        Vec::<Vec<serde_json::Value>>::new()
    );
    drop(p);
    drop(w);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_requiring_client_certificates_serves_only_publishers_with_one() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = tls_worker(&db.url, true);
    let url = format!("{{tls://localhost:{}}}", w.listen.port());

    let anonymous = builder(&url)
        .tls_root_certificates_pem(pem("ca.pem"))
        .build()
        .expect("publisher");
    publish_rows(&anonymous, &naples_rows(10)).await;
    let error = endpoint_error(&anonymous).await;
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    assert_eq!(anonymous.stats().acked, 0);

    let with_cert = builder(&url)
        .tls_root_certificates_pem(pem("ca.pem"))
        .tls_client_auth_pem(pem("client.pem"), pem("client.key"))
        .build()
        .expect("publisher");
    publish_rows(&with_cert, &naples_rows(1_000)).await;
    with_cert.flush().await.expect("flush");
    assert_eq!(with_cert.stats().acked, 1_000);
    assert_eq!(query_records(&db.url, HOUR_QUERY), naples_hour(1_000));
    with_cert
        .close(Duration::from_secs(10))
        .await
        .expect("close");
    drop(anonymous);
    drop(w);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_side_of_a_tls_worker_speaks_https_only_with_the_same_certificate() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    // A handshake timeout far beyond this test's length: the silent client below stays open.
    let config = scratch_dir().join("deployment.yaml");
    std::fs::write(&config, "shardtally:\n  handshake_timeout: 120s\n").expect("config");
    let mut args = tls_args(&db.url, false);
    args.extend(["--config".into(), config.display().to_string()]);
    let w = WorkerProc::start(&args);
    // A client that connects and says nothing holds one connection slot, not the accept loop:
    // everything below is served while it waits.
    let silent = std::net::TcpStream::connect(w.http).expect("connect");
    let p = builder(&format!("{{tls://localhost:{}}}", w.listen.port()))
        .tls_root_certificates_pem(pem("ca.pem"))
        .build()
        .expect("publisher");
    publish_rows(&p, &naples_rows(1_500)).await;
    p.flush().await.expect("flush");
    assert_eq!(p.stats().acked, 1_500);

    // The store API over HTTPS reads back exactly what was published.
    let ca = pem("ca.pem");
    let body =
        serde_json::json!({ "appName": "APIM_ANALYTICS_GEO", "query": HOUR_QUERY }).to_string();
    let (status, text) =
        https(w.http, &trusting(&ca), "POST", "/stores/query", "", &body).expect("https");
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        v,
        serde_json::json!({ "records": [["Italy", "Naples", 1_500]] })
    );

    // Plaintext HTTP is answered in plaintext, saying what to use; no request is served.
    let (status, text) = http(w.http, "POST", "/stores/query", &body);
    assert_eq!(status, 400, "{text}");
    assert_eq!(
        text,
        "this worker's HTTP side only accepts HTTPS: https://\n"
    );
    // A client that does not trust the certificate gets no answer at all.
    let other = pem("other-ca.pem");
    let err = https(w.http, &trusting(&other), "GET", "/health", "", "")
        .expect_err("an untrusted certificate");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    // Both refusals are counted; the worker serves on.
    assert!(
        eventually(Duration::from_secs(10), || {
            let (_, text) =
                https(w.http, &trusting(&ca), "GET", "/metrics", "", "").expect("https");
            metric(&text, "tls_failures_total") == Some(2.0)
        }),
        "tls_failures_total should be exactly 2"
    );
    let (status, text) = https(w.http, &trusting(&ca), "GET", "/health", "", "").expect("https");
    assert_eq!(status, 200, "{text}");
    // The silent client is still waiting for its handshake: open, nothing sent to it.
    silent.set_nonblocking(true).expect("nonblocking");
    let waiting = (&silent).read(&mut [0u8; 1]);
    assert!(
        matches!(&waiting, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{waiting:?}"
    );
    drop(silent);
    p.close(Duration::from_secs(10)).await.expect("close");
    drop(w);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_client_certificates_required_the_http_side_asks_for_one_too() {
    let db = TestDb::fresh(Backend::Sqlite).await;
    let w = tls_worker(&db.url, true);
    let (ca, cert, key) = (pem("ca.pem"), pem("client.pem"), pem("client.key"));

    // Without a client certificate the handshake fails: TLS 1.3 reports it at the first read.
    let anonymous = https(w.http, &trusting(&ca), "GET", "/health", "", "");
    assert!(anonymous.is_err(), "{anonymous:?}");
    let client = HttpsClient {
        roots: &ca,
        client_auth: Some((&cert, &key)),
    };
    let (status, text) = https(w.http, &client, "GET", "/metrics", "", "").expect("https");
    assert_eq!(status, 200, "{text}");
    assert_eq!(metric(&text, "tls_failures_total"), Some(1.0), "{text}");
    drop(w);
    db.cleanup().await;
}

#[test]
fn unusable_tls_material_is_refused_at_startup_naming_the_flag() {
    let cert = tls_fixture("server.pem").display().to_string();
    let key = tls_fixture("server.key").display().to_string();
    let wrong_key = tls_fixture("client.key").display().to_string();
    let ca = tls_fixture("ca.pem").display().to_string();
    let cases: [(&[&str], &str); 4] = [
        (&["--tls-cert", &cert], "tls-cert/tls-key"),
        (
            &["--tls-cert", &cert, "--tls-key", "/nonexistent/key.pem"],
            "tls-key",
        ),
        (&["--tls-cert", &cert, "--tls-key", &wrong_key], "tls-key"),
        (&["--tls-client-ca", &ca], "tls-client-ca"),
    ];
    for (flags, key_named) in cases {
        let mut args = vec![
            "serve",
            "--database-url",
            "sqlite::memory:",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(flags);
        let (code, _out, err) = run_cli(&args);
        assert_eq!(code, 2, "{flags:?}: {err}");
        assert!(
            err.contains(&format!("invalid `{key_named}`")),
            "{flags:?}: {err}"
        );
    }
    // A client CA file that holds no certificate.
    let (code, _out, err) = run_cli(&[
        "serve",
        "--database-url",
        "sqlite::memory:",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &key,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid `tls-client-ca`"), "{err}");
}

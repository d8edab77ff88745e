//! `shardtally-loadgen publish < events.jsonl` against a worker the test starts (the loadgen's
//! own hidden `worker serve`).

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::common::{Output, TempDir, Worker, run, run_piped, scenarios_dir};

const BY_CITY: &str = "from GeoLocationAgg within \"2026-11-20 10:**:**\" per \"hours\" \
                       select country, city, totalRequestCount order by country, city";

fn geo_app() -> PathBuf {
    scenarios_dir().join("apps/geo.siddhi")
}

const GOOD: &str = r#"{"apiName": "PizzaShackAPI", "country": "Italy", "city": "Naples", "requestTimestamp": "2026-11-20T10:00:00Z"}
{"apiName": "PizzaShackAPI", "country": "Italy", "city": "Naples", "requestTimestamp": 1795168860000}

{"country": "Côte d'Ivoire", "city": "Abidjan \"🌴\"", "requestTimestamp": "2026-11-20T11:30:00+01:00"}
{"country": "Italy", "city": "Naples", "requestTimestamp": "2026-11-20T10:59:59.999Z"}
"#;

/// `out` reports every event of [`GOOD`] acked.
fn assert_good_acked(out: &Output) {
    assert!(
        out.stderr.contains("4 event(s) to geoTempStream: 4 acked"),
        "{}",
        out.text()
    );
}

/// The worker's hour holds [`GOOD`]'s events `times` times over.
fn assert_good_stored(worker: &Worker, app: &Path, times: i64) {
    assert_eq!(
        worker.query(app, BY_CITY),
        [
            vec![
                json!("Côte d'Ivoire"),
                json!("Abidjan \"🌴\""),
                json!(times)
            ],
            vec![json!("Italy"), json!("Naples"), json!(3 * times)],
        ]
    );
}

#[test]
fn publish_over_tls_with_a_client_certificate() {
    let dir = TempDir::new("publish-tls");
    let app = geo_app();
    let tls = scenarios_dir().join("../testdata/tls");
    let file = |name: &str| tls.join(name).display().to_string();
    let worker = Worker::start_with(
        dir.path(),
        "pub-tls",
        &app,
        &[
            "--tls-cert",
            &file("server.pem"),
            "--tls-key",
            &file("server.key"),
            "--tls-client-ca",
            &file("ca.pem"),
        ],
    );
    let events = dir.write("events.jsonl", GOOD);
    let endpoints = format!("{{{}}}", worker.endpoint().replace("tcp://", "tls://"));
    let out = run(
        &[
            "publish",
            "--endpoints",
            &endpoints,
            "--app",
            app.to_str().expect("path"),
            "--tls-ca",
            &file("ca.pem"),
            "--tls-client-cert",
            &file("client.pem"),
            "--tls-client-key",
            &file("client.key"),
        ],
        Some(&events),
    );
    assert_eq!(out.code, 0, "{}", out.text());
    assert_good_acked(&out);
    assert_good_stored(&worker, &app, 1);

    // A file that is not PEM: exit 2 naming the flag's material.
    let out = run(
        &[
            "publish",
            "--endpoints",
            &endpoints,
            "--app",
            app.to_str().expect("path"),
            "--tls-ca",
            events.to_str().expect("path"),
        ],
        Some(&events),
    );
    assert_eq!(out.code, 2, "{}", out.text());
    assert!(
        out.stderr
            .contains("TLS root certificates: no PEM certificate found"),
        "{}",
        out.text()
    );
}

#[test]
fn a_jsonl_file_is_published_and_queryable() {
    let dir = TempDir::new("publish");
    let app = geo_app();
    let worker = Worker::start(dir.path(), "pub-1", &app);
    let events = dir.write("events.jsonl", GOOD);
    let endpoints = format!("{{{}}}", worker.endpoint());

    // With the app's schema (its only stream is the default).
    let out = run(
        &[
            "publish",
            "--endpoints",
            &endpoints,
            "--app",
            app.to_str().expect("path"),
        ],
        Some(&events),
    );
    assert_eq!(out.code, 0, "{}", out.text());
    assert_good_acked(&out);
    assert_good_stored(&worker, &app, 1);

    // Again with the schema the worker announces, paced.
    let out = run(
        &[
            "publish",
            "--endpoints",
            &worker.endpoint(),
            "--stream",
            "geoTempStream",
            "--rate",
            "200",
        ],
        Some(&events),
    );
    assert_eq!(out.code, 0, "{}", out.text());
    assert_good_stored(&worker, &app, 2);
}

#[test]
fn bad_lines_are_reported_with_their_line_number() {
    let dir = TempDir::new("publish-bad");
    let app = geo_app();
    let worker = Worker::start(dir.path(), "pub-2", &app);
    let endpoints = worker.endpoint();
    let bad = format!(
        "{GOOD}{}\n{}\n{}\n",
        r#"{"country": "Italy", "requestTimestamp": "last tuesday"}"#,
        r#"{"country": "Italy", "town": "Naples"}"#,
        r#"{"country": "Italy", "requestTimestamp": "2026-11-20T10:00:00Z"}"#
    );

    // A file: every line is checked first; nothing is sent.
    let file = dir.write("bad.jsonl", &bad);
    let out = run(
        &[
            "publish",
            "--endpoints",
            &endpoints,
            "--app",
            app.to_str().expect("path"),
        ],
        Some(&file),
    );
    assert_eq!(out.code, 2, "{}", out.text());
    assert!(
        out.stderr.contains(
            "error: line 6: attribute `requestTimestamp` is long, got the string \"last tuesday\" \
             (not an RFC 3339 timestamp)"
        ),
        "{}",
        out.text()
    );
    assert!(
        out.stderr.contains(
            "error: line 7: stream geoTempStream has no attribute `town` (attributes: apiName, \
             country, city, requestTimestamp)"
        ),
        "{}",
        out.text()
    );
    // No city: GeoLocationAgg groups by it, and no store holds a null key.
    assert!(
        out.stderr.contains(
            "error: line 8: attribute `city`: null, but it is a group-by key, which must not be \
             null"
        ),
        "{}",
        out.text()
    );
    assert!(out.stderr.contains("nothing was sent"), "{}", out.text());
    assert_eq!(
        worker.query(&app, BY_CITY),
        Vec::<Vec<serde_json::Value>>::new()
    );

    // A pipe: lines are sent as they come, up to the bad one.
    let out = run_piped(
        &[
            "publish",
            "--endpoints",
            &endpoints,
            "--app",
            app.to_str().expect("path"),
        ],
        &bad,
    );
    assert_eq!(out.code, 2, "{}", out.text());
    assert!(
        out.stderr
            .contains("error: line 6: attribute `requestTimestamp` is long"),
        "{}",
        out.text()
    );
    assert_good_acked(&out);
    assert_good_stored(&worker, &app, 1);

    // Not JSON at all.
    let first = GOOD.lines().next().expect("a line");
    let file = dir.write("garbage.jsonl", &format!("{first}\nnot json\n"));
    let out = run(
        &[
            "publish",
            "--endpoints",
            &endpoints,
            "--app",
            app.to_str().expect("path"),
        ],
        Some(&file),
    );
    assert_eq!(out.code, 2, "{}", out.text());
    assert!(
        out.stderr.contains("error: line 2: not JSON: "),
        "{}",
        out.text()
    );
}

#[test]
fn publish_without_a_reachable_worker_fails() {
    // A port nothing listens on: without --app the schema cannot be learned.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let dir = TempDir::new("publish-down");
    let events = dir.write("events.jsonl", GOOD);
    let out = run(
        &[
            "publish",
            "--endpoints",
            &format!("tcp://127.0.0.1:{port}"),
            "--stream",
            "geoTempStream",
        ],
        Some(&events),
    );
    assert_eq!(out.code, 1, "{}", out.text());
    assert!(
        out.stderr
            .contains("no worker answered within 10s, so the schema of `geoTempStream` is unknown"),
        "{}",
        out.text()
    );
}

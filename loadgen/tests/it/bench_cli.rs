//! `shardtally-loadgen bench`: a small bounded run through the CLI on every backend — it exits 0,
//! writes `summary.json` with the keys other tools read, and every event sent is acked and
//! committed exactly once. No timing is asserted (a benchmark's figures are not a test's).

use crate::common::{TempDir, database_servers, run, run_dir};

/// A few thousand events, every stage of the bench, each bounded to a fraction of a second.
fn small_bench(results: &std::path::Path, database: Option<&str>) -> serde_json::Value {
    let mut args = vec![
        "bench",
        "--events",
        "3000",
        "--keys",
        "25",
        "--time-spread",
        "1m",
        "--workers",
        "2",
        "--publishers",
        "2",
        "--half-rate-seconds",
        "0.2",
        "--naive-seconds",
        "0.2",
        "--calibrate-seconds",
        "0.2",
        "--flush-interval",
        "50ms",
        "--results",
        results.to_str().expect("a UTF-8 path"),
    ];
    if let Some(url) = database {
        args.extend(["--database-url", url]);
    }
    let out = run(&args, None);
    assert_eq!(out.code, 0, "{}", out.text());
    assert!(out.stdout.contains("shardtally/naive"), "{}", out.text());
    let dir = run_dir(results, "bench");
    for file in ["summary.json", "table.txt"] {
        assert!(dir.join(file).is_file(), "{file} in {}", dir.display());
    }
    let text = std::fs::read_to_string(dir.join("summary.json")).expect("summary.json");
    serde_json::from_str(&text).expect("summary.json is JSON")
}

fn number(summary: &serde_json::Value, path: &[&str]) -> f64 {
    let mut v = summary;
    for key in path {
        v = &v[*key];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("{} is not a number in {summary:#}", path.join(".")))
}

fn check(summary: &serde_json::Value) {
    // The keys other tools read.
    for path in [
        &["shardtally", "events_per_sec"][..],
        &["shardtally", "p99_ms"],
        &["naive", "events_per_sec"],
        &["wire", "events_per_sec"],
        &["ratios", "vs_naive"],
        &["ratios", "vs_wire"],
    ] {
        let x = number(summary, path);
        assert!(x.is_finite() && x > 0.0, "{}: {x}", path.join("."));
    }
    // Exactly once: every event sent acked, and committed once.
    let st = &summary["shardtally"];
    assert_eq!(st["events"], 3000);
    assert_eq!(st["published"], 3000);
    assert_eq!(st["acked"], 3000);
    assert_eq!(st["committed"], 3000);
    assert_eq!(st["lost"], 0);
    assert_eq!(summary["exactly_once"], true);
    let half = &summary["half_rate"];
    assert_eq!(half["acked"], half["events"]);
    assert_eq!(half["committed"], half["events"]);
    // The wire baseline acks every event too (and stores none).
    assert_eq!(summary["wire"]["acked"], 3000);
    assert_eq!(summary["wire"]["committed"], serde_json::Value::Null);
    assert_eq!(summary["naive"]["extrapolated"], true);
    assert!(number(summary, &["naive", "sample_events"]) >= 1.0);
    assert!(number(summary, &["shardtally", "rows_written"]) >= 1.0);
    // Commit durations come from the workers' histogram: bucket bounds, p50 ≤ p99.
    assert!(number(summary, &["shardtally", "commits"]) >= 1.0);
    let bounds = shardtally_worker::metrics::COMMIT_BUCKETS_MS.map(|ms| ms as f64);
    let p50 = number(summary, &["shardtally", "commit_p50_ms"]);
    let p99 = number(summary, &["shardtally", "commit_p99_ms"]);
    assert!(
        bounds.contains(&p50) && bounds.contains(&p99) && p50 <= p99,
        "{p50} {p99}"
    );
    assert_eq!(summary["wire"]["commit_p99_ms"], serde_json::Value::Null);
    assert_eq!(summary["config"]["events"], 3000);
    assert_eq!(summary["config"]["keys"], 25);
}

#[test]
fn bench_on_the_embedded_database() {
    let tmp = TempDir::new("bench-sqlite");
    let summary = small_bench(tmp.path(), None);
    check(&summary);
    assert_eq!(summary["database"]["backend"], "sqlite");
}

#[test]
fn bench_on_database_servers() {
    for (name, url) in database_servers() {
        let tmp = TempDir::new("bench-server");
        let summary = small_bench(tmp.path(), Some(&url));
        check(&summary);
        assert_ne!(summary["database"]["backend"], "sqlite", "{name}");
    }
}

#[test]
fn bench_refuses_bad_flags() {
    for args in [
        &["bench", "--events", "0"][..],
        &["bench", "--database-url", "redis://localhost"],
        &["bench", "--rate", "-5"],
        &["bench", "--time-spread", "soon"],
    ] {
        let out = run(args, None);
        assert_eq!(out.code, 2, "{args:?}: {}", out.text());
    }
}

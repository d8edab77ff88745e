use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::measure::{LatencyRecorder, NodeCounters, Throughput};
use crate::scenario::Scenario;

const NAPLES: &str = include_str!("../../tests/it/fixtures/spec-example.yaml");

fn naples() -> Scenario {
    Scenario::parse(NAPLES, "scenarios/naples.yaml", "scenarios").unwrap_or_else(|e| panic!("{e}"))
}

fn started() -> jiff::Timestamp {
    "2026-11-20T10:15:30.25Z"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A run of the naples scenario with made-up but plausible measurements.
fn measured() -> (Summary, LatencyRecorder) {
    let s = naples();
    let mut summary = Summary::new(&s, started());
    let mut latency = LatencyRecorder::new();
    let mut throughput = Throughput::default();
    let mut nodes = NodeCounters::new();
    for i in 0..70_000u64 {
        latency.record(Duration::from_micros(500 + (i * 7919) % 4_000));
    }
    latency.record(Duration::from_millis(250));
    for b in 0..70u64 {
        throughput.record(Duration::from_millis(b * 100), 1_000);
    }
    nodes.add("wso2-am-analytics-1", 30_000);
    nodes.add("wso2-am-analytics-2", 40_000);
    for (p, (acked, node)) in summary.phases.iter_mut().zip([
        (30_000u64, "wso2-am-analytics-1"),
        (40_000, "wso2-am-analytics-2"),
    ]) {
        p.published = acked;
        p.acked = acked;
        p.duration_ms = acked as f64 / 10.0;
        p.latency = latency.summary();
        p.nodes.add(node, acked);
    }
    summary.phases[1].started_ms = 3_000.0;
    summary.duration_ms = 7_000.0;
    summary.nodes = nodes;
    summary.throughput = ThroughputSummary::from(&throughput);
    summary.latency = LatencySection::from(&latency);
    summary.faults[0].fired_ms = Some(2_800.0);
    summary.faults[0].fired_at_event = Some(28_000);
    summary.faults[1].fired_ms = Some(4_200.0);
    summary.faults[1].fired_at_event = Some(42_000);
    let e = &s.expect;
    summary.expectations = vec![
        ExpectationResult::new(&e[0], serde_json::json!([["Italy", "Naples", 70000]]), true),
        ExpectationResult::new(
            &e[1],
            serde_json::json!({"wso2-am-analytics-1": 30000, "wso2-am-analytics-2": 39998}),
            false,
        ),
        ExpectationResult::new(&e[2], serde_json::json!("exactly-once"), true),
        ExpectationResult::error(&e[3], "no latency <recorded>"),
    ];
    (summary, latency)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("shardtally-loadgen-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn summary_starts_from_the_scenario() {
    let s = Summary::new(&naples(), started());
    assert_eq!(s.scenario, "naples-70k");
    assert_eq!(s.started_at, "2026-11-20T10:15:30.250Z");
    assert_eq!(s.seed, crate::scenario::DEFAULT_SEED);
    assert_eq!(s.config.database, "sqlite");
    assert_eq!(s.config.app.as_deref(), Some("scenarios/apps/geo.siddhi"));
    assert_eq!(
        s.config.workers,
        vec![
            WorkerConfig {
                node_id: "wso2-am-analytics-1".into(),
                shard_id: "wso2-am-analytics-1".into(),
            },
            WorkerConfig {
                node_id: "wso2-am-analytics-2".into(),
                shard_id: "wso2-am-analytics-2".into(),
            },
        ]
    );
    let phases: Vec<(&str, u64, &str, &[String])> = s
        .phases
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.events,
                p.rate.as_str(),
                p.route.as_slice(),
            )
        })
        .collect();
    assert_eq!(
        phases,
        [
            (
                "via node 1",
                30_000,
                "max",
                &["wso2-am-analytics-1".to_owned()][..]
            ),
            (
                "via node 2",
                40_000,
                "max",
                &["wso2-am-analytics-2".to_owned()][..]
            ),
        ]
    );
    let faults: Vec<(&str, &str, &str)> = s
        .faults
        .iter()
        .map(|f| (f.action.as_str(), f.node_id.as_str(), f.planned.as_str()))
        .collect();
    assert_eq!(
        faults,
        [
            ("kill", "wso2-am-analytics-2", "40% (event 28000)"),
            ("restart", "wso2-am-analytics-2", "60% (event 42000)"),
        ]
    );
}

#[test]
fn finish_derives_rates_and_the_verdict() {
    let (mut s, _) = measured();
    s.finish();
    assert!(!s.passed);
    assert_eq!(s.phases[0].events_per_s, 10_000.0);
    assert_eq!(s.totals(), (70_000, 70_000, 70_000, 0, 0));
    s.expectations.retain(|e| e.passed);
    s.finish();
    assert!(s.passed);
}

#[test]
fn passwords_are_masked() {
    assert_eq!(
        mask_password("postgres://user:secret@db:5432/x?sslmode=require"),
        "postgres://user:***@db:5432/x?sslmode=require"
    );
    assert_eq!(
        mask_password("mysql://root@127.0.0.1:3306/test"),
        "mysql://root@127.0.0.1:3306/test"
    );
    assert_eq!(mask_password("sqlite:run.db"), "sqlite:run.db");
}

#[test]
fn results_folder_is_per_scenario_and_timestamp() {
    let tmp = TempDir::new("dirs");
    let a = create_results_dir(&tmp.0, "naples-70k", started()).unwrap_or_else(|e| panic!("{e}"));
    let b = create_results_dir(&tmp.0, "naples-70k", started()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a, tmp.0.join("naples-70k").join("2026-11-20T10-15-30Z"));
    assert_eq!(b, tmp.0.join("naples-70k").join("2026-11-20T10-15-30Z-2"));
    assert!(a.is_dir() && b.is_dir());
}

#[test]
fn writes_every_file() {
    let tmp = TempDir::new("write");
    let out =
        std::env::var_os("SHARDTALLY_REPORT_DIR").map_or_else(|| tmp.0.clone(), PathBuf::from);
    let (summary, latency) = measured();
    let dir =
        create_results_dir(&out, &summary.scenario, started()).unwrap_or_else(|e| panic!("{e}"));
    let files = write_results(&dir, &summary, &latency).unwrap_or_else(|e| panic!("{e}"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .map(|e| {
            e.map(|e| e.file_name().to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "latency-raw.hgrm",
            "latency.hgrm",
            "report.html",
            "summary.json"
        ]
    );
    assert_eq!(files.summary, dir.join("summary.json"));

    let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{e}"));
    // summary.json is the finished summary, and reads back.
    let mut finished = summary.clone();
    finished.finish();
    let text = serde_json::to_string_pretty(&finished).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read(&files.summary), text + "\n");
    let back: Summary =
        serde_json::from_str(&read(&files.summary)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (back.expectations, back.phases.len(), back.passed),
        (finished.expectations, 2, false)
    );
    let json: serde_json::Value =
        serde_json::from_str(&read(&files.summary)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json["passed"], serde_json::json!(false));
    assert_eq!(
        json["nodes"]["wso2-am-analytics-2"],
        serde_json::json!(40000)
    );
    assert_eq!(
        json["expectations"][1]["expected"]["wso2-am-analytics-2"],
        serde_json::json!(40000)
    );
    assert_eq!(
        json["expectations"][1]["actual"]["wso2-am-analytics-2"],
        serde_json::json!(39998)
    );
    assert_eq!(json["expectations"][1]["line"], serde_json::json!(35));

    assert_eq!(read(&files.latency), latency.hgrm());
    assert_eq!(read(&files.latency_raw), latency.raw_hgrm());
    assert!(
        read(&files.latency)
            .ends_with("#[Buckets =           22, SubBuckets     =         2048]\n")
    );

    let html = read(&files.report);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.trim_end().ends_with("</html>"));
    // Three charts: throughput (one series, two fault markers), latency (two series), nodes (two bars).
    assert_eq!(html.matches("<svg class=\"chart").count(), 3);
    assert_eq!(html.matches("<svg class=\"chart line-chart\"").count(), 2);
    assert_eq!(html.matches("<path class=\"series\"").count(), 3);
    assert_eq!(html.matches("<line class=\"marker\"").count(), 2);
    assert_eq!(html.matches("<rect class=\"bar\"").count(), 2);
    assert!(html.contains(">kill wso2-am-analytics-2</text>"));
    assert!(html.contains(">99.9%</text>"));
    // Expectations table: two pass, two fail; text escaped.
    assert_eq!(html.matches("<tr class=\"pass\">").count(), 2);
    assert_eq!(html.matches("<tr class=\"fail\">").count(), 2);
    assert!(html.contains("no latency &lt;recorded&gt;"));
    assert!(html.contains("Expectations — 2 of 4 hold"));
    assert!(html.contains("&quot;wso2-am-analytics-2&quot;:39998"));
    // Self-contained: no scripts, no links, nothing fetched.
    for needle in ["<script", "<link", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(needle), "report.html contains {needle}");
    }
}

#[test]
fn console_table_lists_phases_nodes_and_expectations() {
    let (mut summary, _) = measured();
    summary.finish();
    let text = console_table(&summary);
    let l = &summary.latency.corrected;
    let expected = format!(
        "naples-70k: 70,000 of 70,000 events acked in 7 s (seed {seed})

phase       events   acked  failed  dropped  events/s  p50 ms  p99 ms
via node 1  30,000  30,000       0        0    10,000   {p50}   {p99}
via node 2  40,000  40,000       0        0    10,000   {p50}   {p99}
total       70,000  70,000       0        0    10,000   {p50}   {p99}

node                  acked  share
wso2-am-analytics-1  30,000  42.9%
wso2-am-analytics-2  40,000  57.1%

latency (ms, corrected): p50 {p50}  p90 {p90}  p99 {p99}  p99.9 {p999}  max {max}

PASS  query from GeoLocationAgg within \"2026-11-20 10:**:**\" per \"hours\" select country, city, totalRequestCount (line 31)
      expected: [[\"Italy\",\"Naples\",70000]]
      actual:   [[\"Italy\",\"Naples\",70000]]
FAIL  shards GeoLocationAgg per hours (line 35)
      expected: {{\"wso2-am-analytics-1\":30000,\"wso2-am-analytics-2\":40000}}
      actual:   {{\"wso2-am-analytics-1\":30000,\"wso2-am-analytics-2\":39998}}
PASS  delivered exactly-once (line 36)
      expected: \"exactly-once\"
      actual:   \"exactly-once\"
FAIL  latency (line 37)
      expected: {{\"p99\":\"500ms\"}}
      actual:   null
      no latency <recorded>

2 of 4 expectations hold: FAIL
",
        seed = crate::scenario::DEFAULT_SEED,
        p50 = super::html::num(l.p50_ms),
        p90 = super::html::num(l.p90_ms),
        p99 = super::html::num(l.p99_ms),
        p999 = super::html::num(l.p999_ms),
        max = super::html::num(l.max_ms),
    );
    assert_eq!(text, expected);
    assert_eq!(
        (super::html::num(l.p50_ms), super::html::num(l.p99_ms)),
        ("2.501".to_owned(), "4.463".to_owned())
    );
}

//! The ready scenario files under `scenarios/` parse and validate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use shardtally_loadgen::scenario::{
    Database, ExpectKind, Fault, FaultAction, FaultAt, GeneratorSpec, Item, LatencyBounds, Literal,
    Pos, Rate, Route, Scenario, ShardCount, WorkerSpec,
};
use shardtally_worker::bucket::Granularity;

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

fn lit(s: &str, line: u64, column: u64) -> Item {
    Item {
        value: Literal::Str(s.to_owned()),
        pos: Some(Pos::new(line, column)),
    }
}

/// SPEC §5.1's example, verbatim (every key the format shows, faults included). The shipped
/// `scenarios/naples.yaml` is the seeds' example without the kill/restart of a pinned node.
const SPEC_EXAMPLE: &str = include_str!("fixtures/spec-example.yaml");

#[test]
fn naples_example_from_the_spec() {
    let path = scenarios_dir().join("naples.yaml");
    let s = Scenario::parse(SPEC_EXAMPLE, &path, scenarios_dir()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.name, "naples-70k");
    assert_eq!(
        s.description.as_deref(),
        Some("Node 1 sees 30,000 Naples requests, node 2 sees 40,000; the hour reads 70,000.")
    );
    assert_eq!(s.app, Some(scenarios_dir().join("apps/geo.siddhi")));
    assert_eq!(s.app_pos, Some(Pos::new(3, 6)));
    assert_eq!(s.seed, None);
    assert_eq!(
        s.cluster.workers,
        vec![
            WorkerSpec {
                node_id: "wso2-am-analytics-1".into(),
                shard_id: None,
                pos: Some(Pos::new(6, 7)),
            },
            WorkerSpec {
                node_id: "wso2-am-analytics-2".into(),
                shard_id: Some("wso2-am-analytics-2".into()),
                pos: Some(Pos::new(7, 7)),
            },
        ]
    );
    assert_eq!(s.cluster.database, Database::EmbeddedSqlite);
    assert_eq!(s.cluster.endpoints, None);
    assert_eq!(s.cluster.flush_interval, None);

    assert_eq!(s.phases.len(), 2);
    let (p1, p2) = (&s.phases[0], &s.phases[1]);
    assert_eq!(
        (
            p1.name.as_str(),
            p1.stream.as_str(),
            p1.events,
            p1.first_event
        ),
        ("via node 1", "geoTempStream", 30_000, 0)
    );
    assert_eq!(
        (
            p2.name.as_str(),
            p2.stream.as_str(),
            p2.events,
            p2.first_event
        ),
        ("via node 2", "geoTempStream", 40_000, 30_000)
    );
    assert_eq!((p1.rate, p2.rate), (Rate::Max, Rate::Max));
    assert_eq!((p1.publishers, p2.publishers), (1, 1));
    assert_eq!(p1.route, Route::Workers(vec!["wso2-am-analytics-1".into()]));
    assert_eq!(p2.route, Route::Workers(vec!["wso2-am-analytics-2".into()]));
    assert_eq!(p1.stream_pos, Some(Pos::new(12, 13)));
    assert_eq!(s.total_events(), 70_000);

    let names: Vec<&str> = p1.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["apiName", "country", "city", "requestTimestamp"]);
    assert_eq!(
        p1.fields[0].generator,
        GeneratorSpec::Constant(lit("PizzaShackAPI", 17, 16))
    );
    assert_eq!(
        p1.fields[2].generator,
        GeneratorSpec::Constant(lit("Naples", 19, 13))
    );
    assert_eq!(
        p1.fields[3].generator,
        GeneratorSpec::Between {
            lo: lit("2026-11-20T10:00:00Z", 20, 37),
            hi: lit("2026-11-20T10:59:59Z", 20, 61),
        }
    );
    // The flow-style phase holds the same generators (positions differ).
    let shapes = |p: &shardtally_loadgen::scenario::Phase| -> Vec<String> {
        p.fields
            .iter()
            .map(|f| match &f.generator {
                GeneratorSpec::Constant(i) => format!("{}={}", f.name, i.value),
                GeneratorSpec::Between { lo, hi } => {
                    format!("{}={}..{}", f.name, lo.value, hi.value)
                }
                other => format!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(shapes(p1), shapes(p2));
    assert_eq!(p2.fields[3].pos, Some(Pos::new(26, 15)));

    assert_eq!(
        s.faults,
        vec![
            Fault {
                at: FaultAt::Event(28_000),
                action: FaultAction::Kill,
                node_id: "wso2-am-analytics-2".into(),
                pos: Some(Pos::new(28, 5)),
            },
            Fault {
                at: FaultAt::Event(42_000),
                action: FaultAction::Restart,
                node_id: "wso2-am-analytics-2".into(),
                pos: Some(Pos::new(29, 5)),
            },
        ]
    );

    assert_eq!(s.expect.len(), 4);
    assert_eq!(
        s.expect[0].kind,
        ExpectKind::Query {
            query: "from GeoLocationAgg within \"2026-11-20 10:**:**\" per \"hours\" select country, city, totalRequestCount".into(),
            query_pos: Some(Pos::new(32, 7)),
            rows: vec![vec![json!("Italy"), json!("Naples"), json!(70_000)]],
        }
    );
    assert_eq!(
        s.expect[1].kind,
        ExpectKind::Shards {
            aggregation: "GeoLocationAgg".into(),
            per: Granularity::Hours,
            counts: vec![
                ShardCount {
                    key: "wso2-am-analytics-1".into(),
                    shard_id: "wso2-am-analytics-1".into(),
                    count: 30_000,
                    pos: Some(Pos::new(35, 66)),
                },
                ShardCount {
                    key: "wso2-am-analytics-2".into(),
                    shard_id: "wso2-am-analytics-2".into(),
                    count: 40_000,
                    pos: Some(Pos::new(35, 94)),
                },
            ],
        }
    );
    assert_eq!(s.expect[2].kind, ExpectKind::Delivered);
    assert_eq!(
        s.expect[3].kind,
        ExpectKind::Latency(LatencyBounds {
            p99: Some(Duration::from_millis(500)),
            ..LatencyBounds::default()
        })
    );
    assert_eq!(
        s.expect[1].kind.expected_json(),
        json!({"wso2-am-analytics-1": 30000, "wso2-am-analytics-2": 40000})
    );
}

/// Every scenario under `scenarios/` parses (apps are checked by the run, not here).
#[test]
fn every_ready_scenario_parses() {
    let mut n = 0;
    for entry in std::fs::read_dir(scenarios_dir()).unwrap_or_else(|e| panic!("{e}")) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            if let Err(e) = Scenario::load(&path) {
                panic!("{e}");
            }
            n += 1;
        }
    }
    assert!(n >= 1, "no scenario files found");
}

use std::path::PathBuf;
use std::time::Duration;

use super::*;

const BASE: &str = "name: t
cluster:
  workers:
    - { node_id: n1 }
    - { node_id: n2 }
phases:
  - name: p
    stream: s
    events: 10
";

fn parse(text: &str) -> Scenario {
    match Scenario::parse(text, "t.yaml", "/base") {
        Ok(s) => s,
        Err(e) => panic!("expected a scenario, got {e}"),
    }
}

fn error_of(text: &str) -> String {
    match Scenario::parse(text, "t.yaml", "/base") {
        Ok(s) => panic!("expected an error, parsed {s:?}"),
        Err(e) => e.to_string(),
    }
}

fn with(extra: &str) -> String {
    format!("{BASE}{extra}")
}

#[test]
fn minimal_scenario_gets_the_defaults() {
    let s = parse(BASE);
    assert_eq!(s.name, "t");
    assert_eq!(s.app, None);
    assert_eq!(s.seed, None);
    assert_eq!(s.effective_seed(), DEFAULT_SEED);
    assert_eq!(s.cluster.database, Database::EmbeddedSqlite);
    assert_eq!(s.cluster.flush_interval, None);
    assert_eq!(s.cluster.endpoints, None);
    assert_eq!(
        s.cluster.workers,
        vec![
            WorkerSpec {
                node_id: "n1".into(),
                shard_id: None,
                pos: Some(Pos::new(4, 7)),
            },
            WorkerSpec {
                node_id: "n2".into(),
                shard_id: None,
                pos: Some(Pos::new(5, 7)),
            },
        ]
    );
    let p = &s.phases[0];
    assert_eq!(p.rate, Rate::Max);
    assert_eq!(p.route, Route::AllWorkers);
    assert_eq!(p.publishers, 1);
    assert_eq!(p.fields, vec![]);
    assert_eq!(p.first_event, 0);
    assert_eq!(p.stream_pos, Some(Pos::new(8, 13)));
    assert_eq!(s.total_events(), 10);
    assert!(s.faults.is_empty() && s.expect.is_empty());
}

#[test]
fn full_cluster_and_phase_options() {
    let s = parse(
        "name: full.run_1
description: all the knobs
app: apps/x.siddhi
seed: 42
cluster:
  workers:
    - { node_id: n1, shard_id: s1 }
    - { node_id: n2 }
  database: postgres://postgres@127.0.0.1:5432/test
  flush_interval: 250ms
phases:
  - name: warm
    stream: s
    events: 5
    rate: 100
    publishers: 3
  - name: burst
    stream: s
    events: 7
    rate: 2.5
    route: { workers: [n2, n1] }
faults:
  - { at: 2s, kill: n1 }
  - { at: 1500ms, kill: n2 }
  - { at: 3s, restart: n1 }
",
    );
    assert_eq!(s.description.as_deref(), Some("all the knobs"));
    assert_eq!(s.app, Some(PathBuf::from("/base/apps/x.siddhi")));
    assert_eq!(s.effective_seed(), 42);
    assert_eq!(
        s.cluster.database,
        Database::Url("postgres://postgres@127.0.0.1:5432/test".into())
    );
    assert_eq!(s.cluster.flush_interval, Some(Duration::from_millis(250)));
    assert_eq!(
        s.worker("n1").map(WorkerSpec::effective_shard_id),
        Some("s1")
    );
    assert_eq!(
        s.worker("n2").map(WorkerSpec::effective_shard_id),
        Some("n2")
    );
    assert_eq!(s.phases[0].rate, Rate::PerSecond(100.0));
    assert_eq!(s.phases[0].rate.interval(), Some(Duration::from_millis(10)));
    assert_eq!(s.phases[0].publishers, 3);
    assert_eq!(s.phases[1].rate, Rate::PerSecond(2.5));
    assert_eq!(s.phases[1].first_event, 5);
    assert_eq!(
        s.phases[1].route,
        Route::Workers(vec!["n2".into(), "n1".into()])
    );
    assert_eq!(s.total_events(), 12);
    let ats: Vec<FaultAt> = s.faults.iter().map(|f| f.at).collect();
    assert_eq!(
        ats,
        vec![
            FaultAt::Elapsed(Duration::from_secs(2)),
            FaultAt::Elapsed(Duration::from_millis(1500)),
            FaultAt::Elapsed(Duration::from_secs(3)),
        ]
    );
    let mut s = s;
    s.set_seed(None);
    assert_eq!(s.effective_seed(), 42);
    s.set_seed(Some(7));
    assert_eq!(s.effective_seed(), 7);
}

#[test]
fn percentages_resolve_to_event_indices_over_all_phases() {
    let s = parse(&with(
        "  - name: q
    stream: s
    events: 3
faults:
  - { at: 0%, kill: n1 }
  - { at: 50%, restart: n1 }
  - { at: 12.5%, kill: n2 }
  - { at: 100%, restart: n2 }
",
    ));
    let ats: Vec<FaultAt> = s.faults.iter().map(|f| f.at).collect();
    // 13 events in all: 0, floor(6.5), floor(1.625), 13.
    assert_eq!(
        ats,
        vec![
            FaultAt::Event(0),
            FaultAt::Event(6),
            FaultAt::Event(1),
            FaultAt::Event(13)
        ]
    );
    assert_eq!(s.faults[1].action, FaultAction::Restart);
    assert_eq!(s.faults[1].node_id, "n1");
}

#[test]
fn generators_are_read_in_file_order() {
    let s = parse(&with(
        r#"    fields:
      c: Italy
      n: 5
      x: ~
      w: { one_of: [a, b], weights: [3, 1] }
      u: { one_of: [1, 2.5] }
      b: { between: ["2026-11-20T10:00:00Z", 1790000000000] }
      z: { zipf: { values: [x, y, z], s: 1.1 } }
      z1: { zipf: { values: [x] } }
      q: { sequence: [a, b] }
      k: { sequence: { start: 10, step: 2 } }
      k0: { sequence: {} }
"#,
    ));
    let f = &s.phases[0].fields;
    let names: Vec<&str> = f.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["c", "n", "x", "w", "u", "b", "z", "z1", "q", "k", "k0"]
    );
    let item = |value: Literal, line: u64, column: u64| Item {
        value,
        pos: Some(Pos::new(line, column)),
    };
    assert_eq!(
        f[0].generator,
        GeneratorSpec::Constant(item(Literal::Str("Italy".into()), 11, 10))
    );
    assert_eq!(f[0].pos, Some(Pos::new(11, 7)));
    assert_eq!(
        f[1].generator,
        GeneratorSpec::Constant(item(Literal::Int(5), 12, 10))
    );
    assert_eq!(
        f[2].generator,
        GeneratorSpec::Constant(item(Literal::Null, 13, 10))
    );
    assert_eq!(
        f[3].generator,
        GeneratorSpec::OneOf {
            values: vec![
                item(Literal::Str("a".into()), 14, 21),
                item(Literal::Str("b".into()), 14, 24)
            ],
            weights: Some(vec![3.0, 1.0]),
        }
    );
    assert_eq!(
        f[4].generator,
        GeneratorSpec::OneOf {
            values: vec![
                item(Literal::Int(1), 15, 21),
                item(Literal::Float(2.5), 15, 24)
            ],
            weights: None,
        }
    );
    assert_eq!(
        f[5].generator,
        GeneratorSpec::Between {
            lo: item(Literal::Str("2026-11-20T10:00:00Z".into()), 16, 22),
            hi: item(Literal::Int(1_790_000_000_000), 16, 46),
        }
    );
    assert!(
        matches!(&f[6].generator, GeneratorSpec::Zipf { values, s } if values.len() == 3 && *s == 1.1)
    );
    assert!(matches!(&f[7].generator, GeneratorSpec::Zipf { s, .. } if *s == 1.0));
    assert!(matches!(&f[8].generator, GeneratorSpec::Cycle { values } if values.len() == 2));
    assert_eq!(
        f[9].generator,
        GeneratorSpec::Counter {
            start: Some(item(Literal::Int(10), 20, 31)),
            step: Some(item(Literal::Int(2), 20, 41)),
        }
    );
    assert_eq!(
        f[10].generator,
        GeneratorSpec::Counter {
            start: None,
            step: None
        }
    );
}

#[test]
fn expectations_of_every_kind() {
    let s = parse(&with(
        "expect:
  - query: from A within 0, 10 per \"hours\" select c, n
    rows: [[Italy, 70000, 1.5, true, ~, \"7\"]]
  - shards: { aggregation: A, per: hour, counts: { n1: 3, n2: 7 } }
  - delivered: exactly-once
  - latency: { p50: 10ms, p90: 20ms, p99: 500ms, p999: 1s, max: 2s }
",
    ));
    assert_eq!(
        s.expect[0].kind,
        ExpectKind::Query {
            query: "from A within 0, 10 per \"hours\" select c, n".into(),
            query_pos: Some(Pos::new(11, 12)),
            rows: vec![vec![
                serde_json::json!("Italy"),
                serde_json::json!(70000),
                serde_json::json!(1.5),
                serde_json::json!(true),
                serde_json::Value::Null,
                serde_json::json!("7"),
            ]],
        }
    );
    assert_eq!(s.expect[0].pos, Some(Pos::new(11, 5)));
    match &s.expect[1].kind {
        ExpectKind::Shards {
            aggregation,
            per,
            counts,
        } => {
            assert_eq!(aggregation, "A");
            assert_eq!(*per, shardtally_worker::bucket::Granularity::Hours);
            let c: Vec<(&str, u64)> = counts
                .iter()
                .map(|c| (c.shard_id.as_str(), c.count))
                .collect();
            assert_eq!(c, [("n1", 3), ("n2", 7)]);
        }
        other => panic!("not shards: {other:?}"),
    }
    assert_eq!(s.expect[2].kind, ExpectKind::Delivered);
    assert_eq!(
        s.expect[3].kind,
        ExpectKind::Latency(LatencyBounds {
            p50: Some(Duration::from_millis(10)),
            p90: Some(Duration::from_millis(20)),
            p99: Some(Duration::from_millis(500)),
            p999: Some(Duration::from_secs(1)),
            max: Some(Duration::from_secs(2)),
        })
    );
    assert_eq!(
        s.expect[3].kind.expected_json(),
        serde_json::json!({"p50": "10ms", "p90": "20ms", "p99": "500ms", "p99.9": "1s", "max": "2s"})
    );
}

#[test]
fn shard_counts_accept_node_or_shard_ids() {
    let s = parse(
        "name: t
cluster:
  workers:
    - { node_id: n1, shard_id: s1 }
    - { node_id: n2, shard_id: s2 }
phases:
  - { name: p, stream: s, events: 1 }
expect:
  - shards: { aggregation: A, per: days, counts: { n1: 1, s2: 2 } }
",
    );
    let ExpectKind::Shards { counts, .. } = &s.expect[0].kind else {
        panic!("not shards");
    };
    let c: Vec<(&str, &str, u64)> = counts
        .iter()
        .map(|c| (c.key.as_str(), c.shard_id.as_str(), c.count))
        .collect();
    assert_eq!(c, [("n1", "s1", 1), ("s2", "s2", 2)]);
}

#[test]
fn endpoints_cluster() {
    let s = parse(
        "name: t
cluster: { endpoints: \"{tcp://127.0.0.1:9611,tcp://127.0.0.1:9612}\", database: mysql://root@127.0.0.1:3306/test }
phases:
  - { name: p, stream: s, events: 1 }
",
    );
    assert!(s.cluster.workers.is_empty());
    assert_eq!(
        s.cluster.endpoints,
        Some(Endpoints {
            url_set: "{tcp://127.0.0.1:9611,tcp://127.0.0.1:9612}".into(),
            pos: Some(Pos::new(2, 23)),
        })
    );
}

#[test]
fn error_at_formats_later_errors() {
    let s = parse(BASE);
    let e = s.error_at(s.phases[0].stream_pos, "no stream `s` in the app");
    assert_eq!(e.to_string(), "t.yaml:8:13: no stream `s` in the app");
    assert_eq!(e.pos(), Some(Pos::new(8, 13)));
    assert_eq!(e.message(), "no stream `s` in the app");
}

#[test]
fn yaml_syntax_errors() {
    assert_eq!(
        error_of("name: t\n  bad indent: 1\n"),
        "t.yaml:2:13: mapping values are not allowed in this context"
    );
    assert_eq!(
        error_of("name: \"unterminated\ncluster: {}\n"),
        "t.yaml:2:1: invalid indentation in multiline quoted scalar"
    );
    assert_eq!(error_of(""), "t.yaml:1:1: unexpected end of file");
    assert_eq!(error_of("- 1\n"), "t.yaml:1:1: expected mapping start");
}

#[test]
fn unknown_keys() {
    assert_eq!(
        error_of("nmae: t\n"),
        "t.yaml:1:1: unknown field `nmae`, expected one of name, description, app, seed, cluster, phases, faults, expect"
    );
    assert_eq!(
        error_of(&with("    evnts: 3\n")),
        "t.yaml:10:5: unknown field `evnts`, expected one of name, stream, events, rate, route, publishers, fields"
    );
    assert_eq!(
        error_of(&with("    fields:\n      a: { betwen: [1, 2] }\n")),
        "t.yaml:11:12: unknown field `betwen`, expected one of one_of, weights, between, zipf, sequence"
    );
    assert_eq!(
        error_of(&BASE.replace("{ node_id: n1 }", "{ node_id: n1, shard: x }")),
        "t.yaml:4:22: unknown field `shard`, expected one of node_id, shard_id"
    );
    assert_eq!(
        error_of(&with("expect:\n  - { latency: { p95: 1s } }\n")),
        "t.yaml:11:18: unknown field `p95`, expected one of p50, p90, p99, p999, max"
    );
}

#[test]
fn wrong_types() {
    assert_eq!(
        error_of(&BASE.replace("{ node_id: n1 }", "{ node_id: [1] }")),
        "t.yaml:4:18: expected string scalar"
    );
    assert_eq!(
        error_of(&BASE.replace("events: 10", "events: [1]")),
        "t.yaml:9:5: invalid type: sequence, expected a scalar (string, number, bool or null)"
    );
    assert_eq!(
        error_of(&BASE.replace("events: 10", "events: ten")),
        "t.yaml:9:13: events must be an integer ≥ 1, got \"ten\""
    );
    assert_eq!(
        error_of(&with("    fields:\n      a: [1, 2]\n")),
        "t.yaml:11:10: a list is not a field value; write { one_of: [...] } to pick from it or { sequence: [...] } to cycle through it"
    );
    assert_eq!(
        error_of(&format!("seed: -1\n{BASE}")),
        "t.yaml:1:7: seed must be an integer ≥ 0, got -1"
    );
}

#[test]
fn cluster_errors() {
    assert_eq!(
        error_of(&BASE.replace("node_id: n2", "node_id: n1")),
        "t.yaml:5:18: duplicate node id `n1` (first at line 4)"
    );
    assert_eq!(
        error_of(&BASE.replace(
            "{ node_id: n2 }",
            "{ node_id: n2, shard_id: abcdefghijklmnopqrstu }"
        )),
        "t.yaml:5:32: shard id `abcdefghijklmnopqrstu` is 21 characters long; at most 20 are allowed"
    );
    assert_eq!(
        error_of(&BASE.replace("node_id: n2", "node_id: abcdefghijklmnopqrstuvwxyz")),
        "t.yaml:5:18: shard id (the node id by default) `abcdefghijklmnopqrstuvwxyz` is 26 characters long; at most 20 are allowed"
    );
    // Exactly 20 characters, multi-byte ones counted as one.
    parse(&BASE.replace(
        "{ node_id: n2 }",
        "{ node_id: n2, shard_id: ééééééééééééééééééé2 }",
    ));
    assert_eq!(
        error_of(&BASE.replace("{ node_id: n2 }", "{ node_id: n2, shard_id: n1 }")),
        "t.yaml:5:32: shard id `n1` is already served by node `n1`; two live workers must not share a shard id"
    );
    assert_eq!(
        error_of(&BASE.replace("cluster:\n", "cluster:\n  endpoints: \"{tcp://a:1}\"\n")),
        "t.yaml:3:14: `workers` and `endpoints` are mutually exclusive: `workers` are spawned by loadgen, `endpoints` name a running cluster"
    );
    assert_eq!(
        error_of(&BASE.replace("cluster:\n", "cluster:\n  database: oracle://x\n")),
        "t.yaml:3:13: database `oracle://x` is not `sqlite` or a postgres://, mysql:// (or sqlite:) database URL"
    );
    assert_eq!(
        error_of(&BASE.replace("cluster:\n", "cluster:\n  flush_interval: soon\n")),
        "t.yaml:3:19: flush_interval: `soon` is not a duration (e.g. 500ms, 2s, 1m30s)"
    );
    assert_eq!(
        error_of("name: t\ncluster: { database: sqlite }\nphases: []\n"),
        "t.yaml:2:10: `cluster` needs `workers` (spawned by loadgen) or `endpoints` (a running cluster)"
    );
    assert_eq!(
        error_of(&BASE.replace("name: t", "name: \"a/b\"")),
        "t.yaml:1:7: name `a/b` must be 1-100 characters of letters, digits, `.`, `_` and `-`, not starting with `.` (it names the results folder)"
    );
}

#[test]
fn phase_errors() {
    assert_eq!(
        error_of(&with("    route: { workers: [n1, n3] }\n")),
        "t.yaml:10:28: unknown worker `n3` in route (cluster.workers: n1, n2)"
    );
    assert_eq!(
        error_of(&with("    rate: 0\n")),
        "t.yaml:10:11: rate must be `max` or events per second > 0, got 0"
    );
    assert_eq!(
        error_of(&with("    rate: fast\n")),
        "t.yaml:10:11: rate must be `max` or events per second > 0, got \"fast\""
    );
    assert_eq!(
        error_of(&BASE.replace("events: 10", "events: 0")),
        "t.yaml:9:13: events must be an integer ≥ 1, got 0"
    );
    assert_eq!(
        error_of(&with("    publishers: 0\n")),
        "t.yaml:10:17: publishers must be an integer ≥ 1, got 0"
    );
    assert_eq!(
        error_of(&with("  - { name: p, stream: s, events: 1 }\n")),
        "t.yaml:10:13: duplicate phase name `p` (first at line 7)"
    );
    assert_eq!(
        error_of("name: t\ncluster: { workers: [{ node_id: a }] }\nphases: []\n"),
        "t.yaml:3:9: `phases` needs at least one phase"
    );
    assert_eq!(
        error_of(
            "name: t\ncluster: { endpoints: \"{tcp://a:1}\" }\nphases:\n  - { name: p, stream: s, events: 1, route: { workers: [a] } }\n"
        ),
        "t.yaml:4:45: `route` names spawned workers, but this cluster is given by `endpoints`"
    );
}

#[test]
fn generator_shape_errors() {
    let field = |f: &str| error_of(&with(&format!("    fields:\n      a: {f}\n")));
    assert_eq!(
        field("{ between: [1] }"),
        "t.yaml:11:21: `between` takes two bounds [lo, hi], got 1"
    );
    assert_eq!(
        field("{ between: [1, true] }"),
        "t.yaml:11:25: a `between` bound is a number or a timestamp, got true"
    );
    assert_eq!(
        field("{ one_of: [x, y], weights: [1] }"),
        "t.yaml:11:37: 1 weight(s) for 2 values; give one weight per value"
    );
    assert_eq!(
        field("{ one_of: [x, y], weights: [1, -1] }"),
        "t.yaml:11:41: a weight must be a number ≥ 0, got -1"
    );
    assert_eq!(
        field("{ one_of: [x, y], weights: [0, 0.0] }"),
        "t.yaml:11:37: the weights must not all be 0"
    );
    assert_eq!(
        field("{ one_of: [] }"),
        "t.yaml:11:20: `one_of` needs at least one value"
    );
    assert_eq!(
        field("{ weights: [1] }"),
        "t.yaml:11:10: `weights` go with `one_of`: { one_of: [a, b], weights: [3, 1] }"
    );
    assert_eq!(
        field("{ between: [1, 2], weights: [1] }"),
        "t.yaml:11:38: `weights` go with `one_of` only"
    );
    assert_eq!(
        field("{ between: [1, 2], one_of: [1] }"),
        "t.yaml:11:10: a field takes one generator: `one_of`, `between`, `zipf` or `sequence`"
    );
    assert_eq!(
        field("{}"),
        "t.yaml:11:10: a generator needs one of `one_of`, `between`, `zipf` or `sequence`"
    );
    assert_eq!(
        field("{ zipf: { values: [a], s: 0 } }"),
        "t.yaml:11:36: zipf `s` must be a number > 0, got 0"
    );
    assert_eq!(
        field("{ zipf: { values: [] } }"),
        "t.yaml:11:28: `zipf.values` needs at least one value"
    );
    assert_eq!(
        field("{ sequence: [] }"),
        "t.yaml:11:22: `sequence` needs at least one value"
    );
    assert_eq!(
        field("{ sequence: { start: [1] } }"),
        "t.yaml:11:24: invalid type: sequence, expected a scalar (string, number, bool or null)"
    );
    assert_eq!(
        field("{ sequence: { begin: 1 } }"),
        "t.yaml:11:24: unknown field `begin`, expected one of start, step"
    );
}

#[test]
fn fault_errors() {
    let fault = |f: &str| error_of(&with(&format!("faults:\n  - {f}\n")));
    assert_eq!(
        fault("{ at: 140%, kill: n1 }"),
        "t.yaml:11:11: `at` percentage must be between 0% and 100%, got 140%"
    );
    assert_eq!(
        fault("{ at: abc%, kill: n1 }"),
        "t.yaml:11:11: `at` must be a percentage of the scenario's events (40%) or a duration (2s), got \"abc%\""
    );
    assert_eq!(
        fault("{ at: 10, kill: n1 }"),
        "t.yaml:11:11: `at` must be a percentage of the scenario's events (40%) or a duration (2s), got 10"
    );
    assert_eq!(
        fault("{ at: -2s, kill: n1 }"),
        "t.yaml:11:11: `at`: `-2s` must not be negative"
    );
    assert_eq!(
        fault("{ at: 10%, kill: n9 }"),
        "t.yaml:11:22: unknown worker `n9` in fault (cluster.workers: n1, n2)"
    );
    assert_eq!(
        fault("{ at: 10%, restart: n1 }"),
        "t.yaml:11:5: node `n1` is running at this point; a restart follows a kill"
    );
    assert_eq!(
        fault("{ at: 10% }"),
        "t.yaml:11:5: a fault needs `kill: NODE` or `restart: NODE`"
    );
    assert_eq!(
        fault("{ at: 10%, kill: n1, restart: n1 }"),
        "t.yaml:11:35: a fault either kills or restarts a node, not both"
    );
    assert_eq!(
        error_of(&with(
            "faults:\n  - { at: 10%, kill: n1 }\n  - { at: 20%, kill: n1 }\n"
        )),
        "t.yaml:12:5: node `n1` is already killed at this point (by the fault at line 11)"
    );
    // Mixed kinds cannot be ordered, so they are not checked against each other.
    parse(&with(
        "faults:\n  - { at: 10%, kill: n1 }\n  - { at: 2s, restart: n1 }\n",
    ));
}

#[test]
fn expectation_errors() {
    let expect = |e: &str| error_of(&with(&format!("expect:\n  - {e}\n")));
    assert_eq!(
        expect("latency: { p99: 5 parsecs }"),
        "t.yaml:11:21: p99: `5 parsecs` is not a duration (e.g. 500ms, 2s, 1m30s)"
    );
    assert_eq!(
        expect("latency: { p99: 500 }"),
        "t.yaml:11:21: p99: `500` has no unit; write e.g. 500ms or 500s"
    );
    assert_eq!(
        expect("latency: {}"),
        "t.yaml:11:14: `latency` needs at least one of p50, p90, p99, p999, max"
    );
    assert_eq!(
        expect("{ delivered: exactly-once, latency: { p99: 1s } }"),
        "t.yaml:11:5: an expectation is exactly one of `query` (with `rows`), `shards`, `delivered` or `latency`"
    );
    assert_eq!(
        expect("delivered: at-most-once"),
        "t.yaml:11:16: `delivered` must be `exactly-once`, got `at-most-once`"
    );
    assert_eq!(
        expect("query: from A"),
        "t.yaml:11:12: a `query` expectation needs `rows: [[...], ...]`"
    );
    assert_eq!(
        expect("{ query: from A, rows: [[[1]]] }"),
        "t.yaml:11:30: a row cell must be a scalar"
    );
    assert_eq!(
        expect("{ shards: { aggregation: A, per: weeks, counts: { n1: 1 } } }"),
        "t.yaml:11:38: unknown granularity `weeks` (expected seconds, minutes, hours, days, months or years)"
    );
    assert_eq!(
        expect("{ shards: { aggregation: A, per: hours, counts: { n7: 1 } } }"),
        "t.yaml:11:55: `n7` is neither a node id nor a shard id of cluster.workers"
    );
    assert_eq!(
        expect("{ shards: { aggregation: A, per: hours, counts: { n1: -1 } } }"),
        "t.yaml:11:59: a shard count must be an integer ≥ 0, got -1"
    );
}

#[test]
fn read_errors_name_the_file() {
    let e = Scenario::load("/nonexistent/dir/x.yaml").unwrap_err();
    assert!(matches!(e, ScenarioError::Read { .. }));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/dir/x.yaml: cannot read the scenario file: "),
        "{e}"
    );
}

#[test]
fn empty_optional_keys_mean_their_defaults() {
    for extra in [
        "    fields:\n",
        "    route:\n",
        "faults:\n",
        "expect:\n",
        "description:\n",
    ] {
        let s = parse(&with(extra));
        assert_eq!(
            (
                s.phases[0].fields.len(),
                &s.phases[0].route,
                s.faults.len(),
                s.expect.len()
            ),
            (0, &Route::AllWorkers, 0, 0),
            "{extra:?}"
        );
        assert_eq!(s.description, None);
    }
}

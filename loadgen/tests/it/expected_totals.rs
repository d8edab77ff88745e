//! The exact totals written in scenario files are what their generators produce: counted here
//! from the generators themselves, independently of any cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use shardtally_loadgen::generate::PhaseGenerator;
use shardtally_loadgen::scenario::{ExpectKind, Scenario};
use shardtally_publisher::Value;
use shardtally_worker::catalog::Catalog;
use shardtally_worker::config::AppSource;

fn scenario(name: &str) -> Scenario {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(name);
    Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Events per value of `attribute` over every phase, as the run's publishers produce them.
fn totals_by(s: &Scenario, attribute: &str) -> BTreeMap<String, u64> {
    let source = s.app.clone().map_or(AppSource::Bundled, AppSource::File);
    let catalog = Catalog::load(&source, true).unwrap_or_else(|e| panic!("{e}"));
    let mut out = BTreeMap::new();
    for phase in &s.phases {
        let schema = catalog
            .streams()
            .iter()
            .find(|x| x.name == phase.stream)
            .expect("the phase's stream");
        let at = schema.position(attribute).expect("the attribute");
        let generator = PhaseGenerator::compile(s, phase, schema).unwrap_or_else(|e| panic!("{e}"));
        for mut cursor in generator.split(phase.publishers, s.effective_seed()) {
            while let Some(row) = cursor.next_event() {
                let Value::String(key) = &row[at] else {
                    panic!("{attribute} is not a string: {:?}", row[at]);
                };
                *out.entry(key.clone()).or_default() += 1;
            }
        }
    }
    out
}

/// The rows of the first `query` expectation whose query contains `needle`, as (key, total).
fn expected_rows(s: &Scenario, needle: &str) -> BTreeMap<String, u64> {
    s.expect
        .iter()
        .find_map(|e| match &e.kind {
            ExpectKind::Query { query, rows, .. } if query.contains(needle) => Some(rows),
            _ => None,
        })
        .expect("the expectation")
        .iter()
        .map(|r| {
            (
                r[0].as_str().expect("a key").to_owned(),
                r[1].as_u64().expect("a count"),
            )
        })
        .collect()
}

#[test]
fn gateways_country_totals_are_the_generators() {
    let s = scenario("gateways.yaml");
    let generated = totals_by(&s, "country");
    assert_eq!(generated.values().sum::<u64>(), 50_000);
    assert_eq!(
        expected_rows(&s, "group by country"),
        generated,
        "gateways.yaml's per-country rows must be the generators' totals"
    );
}

/// Every event of a scenario's phases, as the run's publishers produce them, with its stream's
/// schema.
fn events(s: &Scenario) -> Vec<(shardtally_publisher::StreamSchema, Vec<Value>)> {
    let source = s.app.clone().map_or(AppSource::Bundled, AppSource::File);
    let catalog = Catalog::load(&source, true).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    for phase in &s.phases {
        let schema = catalog
            .streams()
            .iter()
            .find(|x| x.name == phase.stream)
            .expect("the phase's stream");
        let generator = PhaseGenerator::compile(s, phase, schema).unwrap_or_else(|e| panic!("{e}"));
        for mut cursor in generator.split(phase.publishers, s.effective_seed()) {
            while let Some(row) = cursor.next_event() {
                out.push((schema.clone(), row.to_vec()));
            }
        }
    }
    out
}

#[test]
fn apim_requests_latency_rows_are_the_generators() {
    let s = scenario("apim-requests.yaml");
    let events = events(&s);
    assert_eq!(events.len(), 8400);
    let get = |schema: &shardtally_publisher::StreamSchema, row: &[Value], name: &str| {
        row[schema.position(name).expect("the attribute")].clone()
    };
    let long = |v: Value| match v {
        Value::Long(n) => n,
        other => panic!("not a long: {other:?}"),
    };
    // Per (minute, API): count, sum, min, max of responseTime; per API: backend and service
    // time sums, min and max.
    let mut minutes: BTreeMap<(i64, String), (i64, i64, i64, i64)> = BTreeMap::new();
    let mut hours: BTreeMap<String, (i64, i64, i64, i64, i64, i64)> = BTreeMap::new();
    for (schema, row) in &events {
        let Value::String(api) = get(schema, row, "apiName") else {
            panic!("apiName");
        };
        let ts = long(get(schema, row, "requestTimestamp"));
        let rt = long(get(schema, row, "responseTime"));
        let m = minutes
            .entry((ts - ts.rem_euclid(60_000), api.clone()))
            .or_insert((0, 0, i64::MAX, i64::MIN));
        *m = (m.0 + 1, m.1 + rt, m.2.min(rt), m.3.max(rt));
        let bt = long(get(schema, row, "backendTime"));
        let st = long(get(schema, row, "serviceTime"));
        let h = hours
            .entry(api)
            .or_insert((0, 0, i64::MAX, i64::MIN, 0, i64::MIN));
        *h = (
            h.0 + 1,
            h.1 + bt,
            h.2.min(bt),
            h.3.max(bt),
            h.4 + st,
            h.5.max(st),
        );
    }
    let rows = |needle: &str| {
        s.expect
            .iter()
            .find_map(|e| match &e.kind {
                ExpectKind::Query { query, rows, .. } if query.contains(needle) => Some(rows),
                _ => None,
            })
            .expect("the expectation")
            .clone()
    };
    let int = |v: &serde_json::Value| v.as_i64().expect("an integer");
    let written: BTreeMap<(i64, String), (i64, i64, i64, i64)> = rows("per \"minutes\"")
        .iter()
        .map(|r| {
            let (count, sum) = (int(&r[3]), int(&r[4]));
            #[allow(clippy::cast_precision_loss)]
            let avg = sum as f64 / count as f64;
            assert_eq!(r[5].as_f64(), Some(avg), "avg of {r:?}");
            (
                (int(&r[0]), r[1].as_str().expect("apiName").to_owned()),
                (count, sum, int(&r[6]), int(&r[7])),
            )
        })
        .collect();
    assert_eq!(written, minutes, "apim-requests.yaml's per-minute rows");
    let written: BTreeMap<String, (i64, i64, i64, i64, i64, i64)> = rows("per \"hours\"")
        .iter()
        .filter(|r| r.len() == 9)
        .map(|r| {
            (
                r[0].as_str().expect("apiName").to_owned(),
                (
                    int(&r[2]),
                    int(&r[3]),
                    int(&r[5]),
                    int(&r[6]),
                    int(&r[7]),
                    int(&r[8]),
                ),
            )
        })
        .collect();
    assert_eq!(written, hours, "apim-requests.yaml's per-hour rows");
}

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

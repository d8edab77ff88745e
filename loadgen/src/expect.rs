//! The checks behind a scenario's `expect:` items, each giving an [`ExpectationResult`] with
//! the expected and the actual value.
//!
//! - `query`: the store query's rows (all shards merged) equal the expected rows. Numbers are
//!   compared by value — integral numbers exactly (`70000` = `70000`), others with a relative
//!   tolerance of 1e-9 (so a `double` average written as `2.5` matches); strings, bools and
//!   nulls exactly. With `order by` the order counts; without it the rows are compared as a
//!   multiset (bucket order is fixed, but the order of groups within a bucket is the backend's).
//! - `shards`: `AGG_COUNT` summed per shard over the `per` table, all time; every listed shard
//!   must match (shards not listed are shown, not checked).
//! - `delivered: exactly-once`: every event the run meant to publish was published and acked,
//!   none dropped, failed or refused; and for every stream, the count committed to the database
//!   during the run — `AGG_COUNT` summed over an aggregation of that stream without a filter, at
//!   its coarsest granularity, minus what was there before the run — equals the events published
//!   to it. Each differing number is named.
//! - `latency`: each bound is an upper bound on that percentile of publish→ack latency
//!   (coordinated-omission corrected for rate-limited phases).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value as Json, json};
use shardtally_loadgen::measure::LatencyRecorder;
use shardtally_loadgen::report::ExpectationResult;
use shardtally_loadgen::scenario::{
    ExpectKind, Expectation, LatencyBounds, ShardCount, format_duration,
};
use shardtally_worker::bucket::Granularity;
use shardtally_worker::catalog::Catalog;
use shardtally_worker::http::json_value;
use shardtally_worker::query::StoreQuery;
use shardtally_worker::store::{Store, StoreError};

/// Relative tolerance for comparing non-integral numbers.
const REL_TOLERANCE: f64 = 1e-9;

/// What the publishers saw, over the whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// Events the scenario's phases asked for.
    pub(crate) planned: u64,
    /// Events accepted by the publishers.
    pub(crate) published: u64,
    /// Events acked as committed.
    pub(crate) acked: u64,
    /// Events dropped before delivery (full buffer).
    pub(crate) dropped: u64,
    /// Events whose delivery failed (rejected, deadline, closed).
    pub(crate) failed: u64,
    /// Events refused at `publish` for another reason (schema), or not published at all.
    pub(crate) refused: u64,
    /// Events published per stream.
    pub(crate) per_stream: BTreeMap<String, u64>,
    /// The last failure the publishers reported, if any.
    pub(crate) last_failure: Option<String>,
}

/// Everything the checks read.
pub(crate) struct Observed<'a> {
    /// The app (layouts of the aggregations).
    pub(crate) catalog: &'a Catalog,
    /// The database, when the run has one to read.
    pub(crate) store: Option<&'a Store>,
    /// The publishers' numbers.
    pub(crate) delivery: &'a Delivery,
    /// Per stream, the count committed before the run started.
    pub(crate) baseline: &'a BTreeMap<String, i64>,
    /// Publish→ack latencies.
    pub(crate) latency: &'a LatencyRecorder,
}

/// Checks one expectation.
pub(crate) async fn check(e: &Expectation, obs: &Observed<'_>) -> ExpectationResult {
    match &e.kind {
        ExpectKind::Query { query, rows, .. } => check_query(e, obs, query, rows).await,
        ExpectKind::Shards {
            aggregation,
            per,
            counts,
        } => check_shards(e, obs, aggregation, *per, counts).await,
        ExpectKind::Delivered => check_delivered(e, obs).await,
        ExpectKind::Latency(bounds) => check_latency(e, bounds, obs.latency),
    }
}

fn no_store(e: &Expectation) -> ExpectationResult {
    ExpectationResult::error(e, "no database to read (give --database-url)")
}

async fn check_query(
    e: &Expectation,
    obs: &Observed<'_>,
    query: &str,
    expected: &[Vec<Json>],
) -> ExpectationResult {
    let Some(store) = obs.store else {
        return no_store(e);
    };
    let ordered = StoreQuery::parse(query).is_ok_and(|q| !q.order_by.is_empty());
    match shardtally_worker::retrieve::run(obs.catalog, store, query).await {
        Ok(rs) => {
            let actual: Vec<Vec<Json>> = rs
                .rows
                .iter()
                .map(|r| r.iter().map(json_value).collect())
                .collect();
            let passed = rows_match(expected, &actual, ordered);
            let mut r = ExpectationResult::new(e, json!(actual), passed);
            if !passed && !ordered && expected.len() > 1 && expected.len() == actual.len() {
                r.message = Some("rows compared in any order (the query has no `order by`)".into());
            }
            r
        }
        Err(err) => ExpectationResult::error(e, format!("the query failed: {err}")),
    }
}

async fn check_shards(
    e: &Expectation,
    obs: &Observed<'_>,
    aggregation: &str,
    per: Granularity,
    expected: &[ShardCount],
) -> ExpectationResult {
    let Some(store) = obs.store else {
        return no_store(e);
    };
    let Some((_, layout)) = obs.catalog.aggregation(aggregation) else {
        return ExpectationResult::error(e, format!("the app has no aggregation `{aggregation}`"));
    };
    let rows = match store.fetch(layout, per, i64::MIN, i64::MAX).await {
        Ok(rows) => rows,
        Err(err) => return ExpectationResult::error(e, format!("reading the database: {err}")),
    };
    let mut actual: BTreeMap<String, i64> = BTreeMap::new();
    for r in rows {
        let shard = r.shard_id.unwrap_or_else(|| "(unpartitioned)".to_owned());
        *actual.entry(shard).or_default() += r.row.count;
    }
    let problems = shard_problems(expected, &actual);
    let mut r = ExpectationResult::new(e, json!(actual), problems.is_empty());
    if !problems.is_empty() {
        r.message = Some(problems.join("; "));
    }
    r
}

/// One line per listed shard whose count differs.
fn shard_problems(expected: &[ShardCount], actual: &BTreeMap<String, i64>) -> Vec<String> {
    expected
        .iter()
        .filter_map(|c| {
            let got = actual.get(&c.shard_id).copied().unwrap_or(0);
            (i128::from(got) != i128::from(c.count)).then(|| {
                let who = if c.key == c.shard_id {
                    format!("shard {}", c.shard_id)
                } else {
                    format!("shard {} (node {})", c.shard_id, c.key)
                };
                format!("{who}: expected {} / actual {got}", c.count)
            })
        })
        .collect()
}

/// The count committed per stream: `AGG_COUNT` summed over all shards of the coarsest table of
/// an aggregation of the stream that has no filter. A stream without such an aggregation maps
/// to the reason it cannot be counted.
pub(crate) async fn committed_by_stream(
    catalog: &Catalog,
    store: &Store,
) -> Result<BTreeMap<String, Result<i64, String>>, StoreError> {
    let mut out = BTreeMap::new();
    for (i, stream) in catalog.streams().iter().enumerate() {
        let counting = catalog
            .aggregations_of(i)
            .into_iter()
            .find(|&a| catalog.app.aggregations[a].filter.is_none());
        let Some(a) = counting else {
            out.insert(
                stream.name.clone(),
                Err(format!(
                    "no aggregation of stream {} counts every event (each has a filter)",
                    stream.name
                )),
            );
            continue;
        };
        let layout = &catalog.layouts[a];
        let Some(&coarsest) = layout.granularities.last() else {
            out.insert(
                stream.name.clone(),
                Err(format!(
                    "aggregation {} keeps no granularity",
                    layout.aggregation
                )),
            );
            continue;
        };
        let rows = store.fetch(layout, coarsest, i64::MIN, i64::MAX).await?;
        out.insert(
            stream.name.clone(),
            Ok(rows.iter().map(|r| r.row.count).sum()),
        );
    }
    Ok(out)
}

async fn check_delivered(e: &Expectation, obs: &Observed<'_>) -> ExpectationResult {
    let Some(store) = obs.store else {
        return no_store(e);
    };
    let committed = match committed_by_stream(obs.catalog, store).await {
        Ok(c) => c,
        Err(err) => return ExpectationResult::error(e, format!("reading the database: {err}")),
    };
    // Only the streams this run published to, net of what was there before.
    let net: BTreeMap<String, Result<i64, String>> = obs
        .delivery
        .per_stream
        .keys()
        .map(|s| {
            let c = match committed.get(s) {
                Some(Ok(n)) => Ok(n - obs.baseline.get(s).copied().unwrap_or(0)),
                Some(Err(why)) => Err(why.clone()),
                None => Err(format!("the app has no stream {s}")),
            };
            (s.clone(), c)
        })
        .collect();
    let problems = delivery_problems(obs.delivery, &net);
    let d = obs.delivery;
    let actual = json!({
        "planned": d.planned,
        "published": d.published,
        "acked": d.acked,
        "dropped": d.dropped,
        "failed": d.failed,
        "refused": d.refused,
        "published_per_stream": d.per_stream,
        "committed_per_stream": net
            .iter()
            .map(|(s, c)| (s.clone(), c.as_ref().map_or(Json::Null, |n| json!(n))))
            .collect::<serde_json::Map<_, _>>(),
    });
    let mut r = ExpectationResult::new(e, actual, problems.is_empty());
    if !problems.is_empty() {
        r.message = Some(problems.join("; "));
    }
    r
}

/// Every way the run's numbers fall short of exactly-once, in words.
fn delivery_problems(
    d: &Delivery,
    committed: &BTreeMap<String, Result<i64, String>>,
) -> Vec<String> {
    let mut out = Vec::new();
    if d.published != d.planned {
        out.push(format!(
            "published {} of {} planned events",
            d.published, d.planned
        ));
    }
    if d.acked != d.published {
        out.push(format!("acked {} ≠ published {}", d.acked, d.published));
    }
    if d.dropped > 0 {
        out.push(format!("{} dropped (buffer full)", d.dropped));
    }
    if d.failed > 0 {
        let why = d
            .last_failure
            .as_deref()
            .map(|f| format!(" (last: {f})"))
            .unwrap_or_default();
        out.push(format!("{} failed{why}", d.failed));
    }
    if d.refused > 0 {
        out.push(format!("{} refused at publish", d.refused));
    }
    for (stream, published) in &d.per_stream {
        match committed.get(stream) {
            Some(Ok(c)) if i128::from(*c) == i128::from(*published) => {}
            Some(Ok(c)) => {
                let how = if i128::from(*c) > i128::from(*published) {
                    "counted twice or more"
                } else {
                    "lost"
                };
                out.push(format!(
                    "stream {stream}: committed {c} ≠ published {published} ({} {how})",
                    (i128::from(*c) - i128::from(*published)).abs()
                ));
            }
            Some(Err(why)) => out.push(format!("stream {stream}: cannot count: {why}")),
            None => out.push(format!("stream {stream}: nothing committed")),
        }
    }
    out
}

fn check_latency(
    e: &Expectation,
    bounds: &LatencyBounds,
    latency: &LatencyRecorder,
) -> ExpectationResult {
    if latency.count() == 0 {
        return ExpectationResult::error(e, "no latency was measured: no event was acked");
    }
    let (actual, problems) = latency_problems(bounds, |p| latency.value_at_percentile(p));
    let mut r = ExpectationResult::new(e, actual, problems.is_empty());
    if !problems.is_empty() {
        r.message = Some(problems.join("; "));
    }
    r
}

/// The measured value of every bounded percentile, and the bounds exceeded.
fn latency_problems(bounds: &LatencyBounds, at: impl Fn(f64) -> Duration) -> (Json, Vec<String>) {
    let mut actual = serde_json::Map::new();
    let mut problems = Vec::new();
    for (label, p, bound) in bounds.iter() {
        let v = at(p);
        actual.insert(label.to_owned(), json!(format_duration(v)));
        if v > bound {
            problems.push(format!(
                "{label}: expected ≤ {} / actual {}",
                format_duration(bound),
                format_duration(v)
            ));
        }
    }
    (Json::Object(actual), problems)
}

/// Whether two cells are equal: numbers by value (integral ones exactly, others within a
/// relative tolerance), everything else exactly.
pub(crate) fn cells_equal(expected: &Json, actual: &Json) -> bool {
    match (expected, actual) {
        (Json::Number(a), Json::Number(b)) => {
            let int = |n: &serde_json::Number| {
                n.as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from))
            };
            match (int(a), int(b)) {
                (Some(x), Some(y)) => x == y,
                _ => match (a.as_f64(), b.as_f64()) {
                    (Some(x), Some(y)) => {
                        x == y || (x - y).abs() <= REL_TOLERANCE * x.abs().max(y.abs())
                    }
                    _ => false,
                },
            }
        }
        (a, b) => a == b,
    }
}

fn row_equal(expected: &[Json], actual: &[Json]) -> bool {
    expected.len() == actual.len() && expected.iter().zip(actual).all(|(e, a)| cells_equal(e, a))
}

/// Whether the rows match: in order when `ordered`, else as a multiset.
pub(crate) fn rows_match(expected: &[Vec<Json>], actual: &[Vec<Json>], ordered: bool) -> bool {
    if expected.len() != actual.len() {
        return false;
    }
    if ordered {
        return expected.iter().zip(actual).all(|(e, a)| row_equal(e, a));
    }
    let mut used = vec![false; actual.len()];
    expected.iter().all(|e| {
        let found = actual
            .iter()
            .enumerate()
            .find(|(i, a)| !used[*i] && row_equal(e, a))
            .map(|(i, _)| i);
        found.is_some_and(|i| {
            used[i] = true;
            true
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_numbers_compare_by_value() {
        assert!(cells_equal(&json!(70000), &json!(70000i64)));
        assert!(cells_equal(&json!(70000u64), &json!(70000i64)));
        assert!(!cells_equal(&json!(70000), &json!(69999)));
        assert!(cells_equal(&json!(70000), &json!(70000.0)));
        assert!(!cells_equal(&json!(70000), &json!("70000")));
        assert!(cells_equal(&json!(u64::MAX), &json!(u64::MAX)));
        assert!(!cells_equal(&json!(u64::MAX), &json!(-1)));
    }

    #[test]
    fn doubles_compare_with_a_tiny_relative_tolerance() {
        assert!(cells_equal(&json!(0.1 + 0.2), &json!(0.3)));
        assert!(cells_equal(&json!(2.5), &json!(2.5000000000001)));
        assert!(!cells_equal(&json!(2.5), &json!(2.5001)));
        assert!(cells_equal(&json!(0.0), &json!(0.0)));
        assert!(!cells_equal(&json!(0.0), &json!(1e-300)));
    }

    #[test]
    fn other_cells_compare_exactly() {
        assert!(cells_equal(&json!("Naples"), &json!("Naples")));
        assert!(!cells_equal(&json!("Naples"), &json!("naples")));
        assert!(cells_equal(&Json::Null, &Json::Null));
        assert!(!cells_equal(&Json::Null, &json!(0)));
        assert!(cells_equal(&json!(true), &json!(true)));
    }

    #[test]
    fn rows_match_in_order_or_as_a_multiset() {
        let e = vec![vec![json!("a"), json!(1)], vec![json!("b"), json!(2)]];
        let swapped = vec![vec![json!("b"), json!(2)], vec![json!("a"), json!(1)]];
        assert!(rows_match(&e, &e, true));
        assert!(!rows_match(&e, &swapped, true));
        assert!(rows_match(&e, &swapped, false));
        // A multiset: one actual row cannot match two expected ones.
        let twice = vec![vec![json!("a"), json!(1)], vec![json!("a"), json!(1)]];
        let once = vec![vec![json!("a"), json!(1)], vec![json!("b"), json!(2)]];
        assert!(!rows_match(&twice, &once, false));
        assert!(!rows_match(&e, &e[..1], false));
        assert!(!rows_match(
            &[vec![json!(1), json!(2)]],
            &[vec![json!(1)]],
            false
        ));
        assert!(rows_match(&[], &[], true));
    }

    fn shard(key: &str, shard_id: &str, count: u64) -> ShardCount {
        ShardCount {
            key: key.into(),
            shard_id: shard_id.into(),
            count,
            pos: None,
        }
    }

    #[test]
    fn shard_problems_name_the_shard_and_both_numbers() {
        let actual: BTreeMap<String, i64> = [
            ("s1".to_owned(), 30000),
            ("s2".to_owned(), 39000),
            ("s3".to_owned(), 5),
        ]
        .into_iter()
        .collect();
        assert!(shard_problems(&[shard("s1", "s1", 30000)], &actual).is_empty());
        assert_eq!(
            shard_problems(&[shard("n2", "s2", 40000), shard("s4", "s4", 1)], &actual),
            [
                "shard s2 (node n2): expected 40000 / actual 39000",
                "shard s4: expected 1 / actual 0"
            ]
        );
    }

    fn delivery(planned: u64) -> Delivery {
        Delivery {
            planned,
            published: planned,
            acked: planned,
            per_stream: [("geo".to_owned(), planned)].into_iter().collect(),
            ..Delivery::default()
        }
    }

    #[test]
    fn exactly_once_holds_when_every_number_agrees() {
        let committed = [("geo".to_owned(), Ok(100))].into_iter().collect();
        assert!(delivery_problems(&delivery(100), &committed).is_empty());
    }

    #[test]
    fn exactly_once_names_each_differing_number() {
        let mut d = delivery(100);
        d.acked = 98;
        d.failed = 2;
        d.last_failure = Some("deadline".into());
        let committed = [("geo".to_owned(), Ok(101))].into_iter().collect();
        assert_eq!(
            delivery_problems(&d, &committed),
            [
                "acked 98 ≠ published 100",
                "2 failed (last: deadline)",
                "stream geo: committed 101 ≠ published 100 (1 counted twice or more)",
            ]
        );
        let lost = [("geo".to_owned(), Ok(97))].into_iter().collect();
        assert_eq!(
            delivery_problems(&delivery(100), &lost),
            ["stream geo: committed 97 ≠ published 100 (3 lost)"]
        );
        let mut dropped = delivery(100);
        dropped.published = 90;
        dropped.acked = 90;
        dropped.dropped = 10;
        dropped.per_stream.insert("geo".into(), 90);
        let committed = [("geo".to_owned(), Ok(90))].into_iter().collect();
        assert_eq!(
            delivery_problems(&dropped, &committed),
            [
                "published 90 of 100 planned events",
                "10 dropped (buffer full)"
            ]
        );
        let uncountable = [("geo".to_owned(), Err("each has a filter".to_owned()))]
            .into_iter()
            .collect();
        assert_eq!(
            delivery_problems(&delivery(1), &uncountable),
            ["stream geo: cannot count: each has a filter"]
        );
    }

    #[test]
    fn latency_bounds_are_upper_bounds() {
        let bounds = LatencyBounds {
            p50: Some(Duration::from_millis(10)),
            p99: Some(Duration::from_millis(500)),
            ..LatencyBounds::default()
        };
        let (actual, problems) = latency_problems(&bounds, |p| {
            Duration::from_millis(if p < 90.0 { 10 } else { 700 })
        });
        assert_eq!(actual, json!({"p50": "10ms", "p99": "700ms"}));
        assert_eq!(problems, ["p99: expected ≤ 500ms / actual 700ms"]);
    }
}

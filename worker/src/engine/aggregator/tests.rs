use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::engine::layout;
use crate::siddhi::BUNDLED_GEO_APP;

fn ms(s: &str) -> i64 {
    s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

fn aggregator(src: &str, global: bool) -> Aggregator {
    let app = App::parse(src).unwrap();
    let agg = &app.aggregations[0];
    Aggregator::new(&app, agg, layout(&app, agg, global)).unwrap()
}

fn s(v: &str) -> Value {
    Value::from(v)
}

fn rows_of(delta: &Delta, g: Granularity) -> &[AggRow] {
    &delta.rows.iter().find(|(rg, _)| *rg == g).unwrap().1
}

#[test]
fn geo_counts_per_bucket_and_city() {
    let mut agg = aggregator(BUNDLED_GEO_APP, false);
    let t1 = ms("2026-11-20T10:15:00.250Z");
    let t2 = ms("2026-11-20T10:15:00.900Z");
    let t3 = ms("2026-11-20T11:00:00Z");
    for (api, country, city, t) in [
        ("PizzaShackAPI", "Italy", "Naples", t1),
        ("OrderAPI", "Italy", "Naples", t2),
        ("PizzaShackAPI", "Italy", "Rome", t1),
        ("MenuAPI", "Italy", "Naples", t3),
    ] {
        agg.record(
            &[
                ValueRef::String(api),
                ValueRef::String(country),
                ValueRef::String(city),
                ValueRef::Long(t),
            ],
            0,
        );
    }
    assert_eq!(agg.pending_rows(), 3);
    assert_eq!(agg.drain_rows_bound(), 3 + 3 + 3 + 2 + 2 + 2);
    let delta = agg.drain().expect("drain");
    assert_eq!(agg.pending_rows(), 0);
    assert_eq!(agg.drain_rows_bound(), 0);
    assert_eq!(
        delta.rows.iter().map(|(g, _)| *g).collect::<Vec<_>>(),
        Granularity::ALL
    );
    assert_eq!(delta.row_count(), 3 + 3 + 3 + 2 + 2 + 2);
    let row = |bucket: i64, city: &str, last: i64, api: &str, count: i64| AggRow {
        bucket,
        keys: [s("Italy"), s(city)].into(),
        last_event_ts: last,
        latest: vec![s(api)],
        count,
        measures: vec![],
    };
    assert_eq!(
        rows_of(&delta, Granularity::Seconds),
        [
            row(ms("2026-11-20T10:15:00Z"), "Naples", t2, "OrderAPI", 2),
            row(ms("2026-11-20T10:15:00Z"), "Rome", t1, "PizzaShackAPI", 1),
            row(ms("2026-11-20T11:00:00Z"), "Naples", t3, "MenuAPI", 1),
        ]
    );
    assert_eq!(
        rows_of(&delta, Granularity::Hours),
        [
            row(ms("2026-11-20T10:00:00Z"), "Naples", t2, "OrderAPI", 2),
            row(ms("2026-11-20T10:00:00Z"), "Rome", t1, "PizzaShackAPI", 1),
            row(ms("2026-11-20T11:00:00Z"), "Naples", t3, "MenuAPI", 1),
        ]
    );
    assert_eq!(
        rows_of(&delta, Granularity::Years),
        [
            row(ms("2026-01-01T00:00:00Z"), "Naples", t3, "MenuAPI", 3),
            row(ms("2026-01-01T00:00:00Z"), "Rome", t1, "PizzaShackAPI", 1),
        ]
    );
    assert!(agg.drain().expect("drain").is_empty());
}

const STOCK: &str = "@app:name('Stocks')
define stream stockStream (symbol string, price float, lastClosingPrice float, volume long, quantity int, timestamp long);
define aggregation stockAggregation
from stockStream
select symbol, avg(price) as avgPrice, sum(price) as totalPrice, (price * quantity) as lastTradeValue,
       max(price) as maxPrice, min(price) as minPrice, count() as n
group by symbol
aggregate by timestamp every sec...hour;
";

fn stock_event(
    symbol: &str,
    price: f32,
    closing: Option<f32>,
    volume: i64,
    quantity: i32,
    ts: i64,
) -> Vec<ValueRef<'_>> {
    vec![
        ValueRef::String(symbol),
        ValueRef::Float(price),
        closing.map_or(ValueRef::Null, ValueRef::Float),
        ValueRef::Long(volume),
        ValueRef::Int(quantity),
        ValueRef::Long(ts),
    ]
}

#[test]
fn siddhi_test5_seconds_rows() {
    // Siddhi's incrementalStreamProcessorTest5 events, in its order.
    let mut agg = aggregator(STOCK, false);
    for e in [
        stock_event("WSO2", 50.0, Some(60.0), 90, 6, 1_496_289_950_000),
        stock_event("WSO2", 70.0, None, 40, 10, 1_496_289_950_000),
        stock_event("WSO2", 60.0, Some(44.0), 200, 56, 1_496_289_952_000),
        stock_event("WSO2", 100.0, None, 200, 16, 1_496_289_952_000),
        stock_event("IBM", 100.0, None, 200, 26, 1_496_289_954_000),
        stock_event("IBM", 100.0, None, 200, 96, 1_496_289_954_000),
    ] {
        agg.record(&e, 0);
    }
    let l = agg.layout().clone();
    let cols: Vec<&str> = l.measures.iter().map(|m| m.column.as_str()).collect();
    assert_eq!(
        cols,
        [
            "AGG_SUM_price",
            "AGG_COUNT_price",
            "AGG_MAX_price",
            "AGG_MIN_price"
        ]
    );
    let delta = agg.drain().expect("drain");
    let row = |bucket: i64, sym: &str, last_trade: f32, sum: f64, max: f32, min: f32| AggRow {
        bucket,
        keys: [s(sym)].into(),
        last_event_ts: bucket,
        latest: vec![Value::Float(last_trade)],
        count: 2,
        measures: vec![
            Value::Double(sum),
            Value::Long(2),
            Value::Float(max),
            Value::Float(min),
        ],
    };
    // Same-timestamp events: the later-recorded one is the latest (1600 = 100 * 16, not 3360).
    assert_eq!(
        rows_of(&delta, Granularity::Seconds),
        [
            row(1_496_289_950_000, "WSO2", 700.0, 120.0, 70.0, 50.0),
            row(1_496_289_952_000, "WSO2", 1600.0, 160.0, 100.0, 60.0),
            row(1_496_289_954_000, "IBM", 9600.0, 200.0, 100.0, 100.0),
        ]
    );
    let hours = rows_of(&delta, Granularity::Hours);
    assert_eq!(hours.len(), 2);
    assert_eq!(*hours[1].keys, [s("WSO2")]);
    assert_eq!(hours[1].count, 4);
    assert_eq!(hours[1].last_event_ts, 1_496_289_952_000);
    assert_eq!(hours[1].latest, [Value::Float(1600.0)]);
    assert_eq!(
        hours[1].measures,
        [
            Value::Double(280.0),
            Value::Long(4),
            Value::Float(100.0),
            Value::Float(50.0)
        ]
    );
}

fn geo_event(city: &str, t: i64) -> [ValueRef<'_>; 4] {
    [
        ValueRef::String("PizzaShackAPI"),
        ValueRef::String("Italy"),
        ValueRef::String(city),
        ValueRef::Long(t),
    ]
}

/// A replay (few keys, events in time order) makes many finest rows and few coarser ones; the
/// bound a commit is sized by counts what a drain returns, at every granularity.
#[test]
fn drain_rows_bound_counts_a_replay_exactly() {
    let mut agg = aggregator(BUNDLED_GEO_APP, false);
    let cities: Vec<String> = (0..10).map(|i| format!("city-{i}")).collect();
    let start = ms("2026-11-20T10:59:00Z");
    // Two minutes (10:59 and 11:00, across an hour), every city every second.
    for sec in 0..120 {
        for c in &cities {
            agg.record(&geo_event(c, start + sec * 1000 + 500), 0);
        }
    }
    assert_eq!(agg.pending_rows(), 1200);
    // 1,200 seconds; 20 minutes; 20 hours; 10 days, months, years.
    assert_eq!(agg.drain_rows_bound(), 1200 + 20 + 20 + 10 + 10 + 10);
    assert_eq!(agg.drain().expect("drain").row_count(), 1270);
    // The next drain's bound starts from nothing: one city, one second.
    agg.record(&geo_event("city-3", start + 200_000), 0);
    assert_eq!(agg.drain_rows_bound(), 6);
    assert_eq!(agg.drain().expect("drain").row_count(), 6);
    assert_eq!(agg.drain_rows_bound(), 0);
}

/// Interned groups are kept across drains up to a memory budget: long keys (up to 254
/// characters each) must not let a million retained groups hold most of a gigabyte. Past the
/// budget a drain forgets them all; counts stay exact either way.
#[test]
fn groups_past_their_memory_budget_are_forgotten_at_a_drain() {
    let mut agg = aggregator(BUNDLED_GEO_APP, false);
    let cities: Vec<String> = (0..60).map(|i| format!("{i:0>254}")).collect();
    // The app groups by country and city.
    let footprint = Groups::footprint(&[s("Italy"), s(&cities[0])]);
    assert!(footprint > 254 + 5, "{footprint} bytes per group");
    agg.groups.retained_bytes = 50 * footprint;
    let t = ms("2026-11-20T10:15:00.500Z");
    let seconds_counts = |agg: &mut Aggregator, cities: &[String]| -> BTreeMap<String, i64> {
        for c in cities {
            agg.record(&geo_event(c, t), 0);
        }
        let delta = agg.drain().expect("drain");
        rows_of(&delta, Granularity::Seconds)
            .iter()
            .map(|r| match &r.keys[1] {
                Value::String(city) => (city.clone(), r.count),
                other => panic!("city {other:?}"),
            })
            .collect()
    };
    let ones = |cities: &[String]| {
        cities
            .iter()
            .map(|c| (c.clone(), 1))
            .collect::<BTreeMap<_, _>>()
    };

    // 40 groups: within the budget, kept.
    assert_eq!(seconds_counts(&mut agg, &cities[..40]), ones(&cities[..40]));
    assert_eq!(agg.groups.keys.len(), 40);
    assert_eq!(agg.groups.bytes, 40 * footprint);
    // 20 more: 60 groups' worth is over it; the drain forgets them all.
    assert_eq!(seconds_counts(&mut agg, &cities[40..]), ones(&cities[40..]));
    assert_eq!(agg.groups.keys.len(), 0);
    assert_eq!(agg.groups.bytes, 0);
    // Seen again, they are interned again, and counted as before.
    assert_eq!(seconds_counts(&mut agg, &cities[..45]), ones(&cities[..45]));
    assert_eq!(agg.groups.keys.len(), 45);
}

/// Out of time order the bound may over-count (groups × buckets, capped by the finest rows),
/// never under: a commit is sized before it is drained.
#[test]
fn drain_rows_bound_is_an_upper_bound_out_of_order() {
    let mut agg = aggregator(BUNDLED_GEO_APP, false);
    let t = ms("2026-11-20T10:00:00Z");
    let hour = 3_600_000;
    // Two cities in two hours each, crossed: 4 rows at seconds, minutes and hours (the bound:
    // 2 groups × 2 buckets), 2 at days, months, years (2 groups × 1 bucket).
    for (city, at) in [
        ("Naples", t),
        ("Rome", t + hour),
        ("Rome", t),
        ("Naples", t + hour),
    ] {
        agg.record(&geo_event(city, at), 0);
    }
    assert_eq!(agg.drain_rows_bound(), 4 + 4 + 4 + 2 + 2 + 2);
    assert_eq!(
        agg.drain().expect("drain").row_count(),
        4 + 4 + 4 + 2 + 2 + 2
    );
    // Naples in minute 10:00, Rome in 10:01, two seconds each: 2 minute rows, where the bound
    // (2 groups × 2 minutes, capped at 4 finest rows) says 4.
    for (city, at) in [
        ("Naples", t),
        ("Naples", t + 1_000),
        ("Rome", t + 60_000),
        ("Rome", t + 61_000),
    ] {
        agg.record(&geo_event(city, at), 0);
    }
    assert_eq!(agg.drain_rows_bound(), 4 + 4 + 2 + 2 + 2 + 2);
    assert_eq!(
        agg.drain().expect("drain").row_count(),
        4 + 2 + 2 + 2 + 2 + 2
    );
}

#[test]
fn late_events_do_not_replace_the_latest_value() {
    let mut agg = aggregator(STOCK, false);
    agg.record(&stock_event("IBM", 10.0, None, 1, 2, 5_000), 0);
    agg.record(&stock_event("IBM", 20.0, None, 1, 3, 4_000), 0);
    let delta = agg.drain().expect("drain");
    let secs = rows_of(&delta, Granularity::Seconds);
    assert_eq!(secs.len(), 2);
    assert_eq!(secs[0].bucket, 4_000);
    assert_eq!(secs[0].latest, [Value::Float(60.0)]);
    let minutes = rows_of(&delta, Granularity::Minutes);
    assert_eq!(minutes.len(), 1);
    assert_eq!(minutes[0].last_event_ts, 5_000);
    assert_eq!(minutes[0].latest, [Value::Float(20.0)]);
    assert_eq!(minutes[0].count, 2);
}

#[test]
fn nulls_are_valid_keys_and_values() {
    let src = "@app:name('N') define stream S (k string, x int, t long);
        define aggregation A from S select k, x, sum(x) as sx, avg(x) as ax, min(x) as mx, count() as n
        group by k aggregate by t every sec, min;";
    let mut agg = aggregator(src, true);
    assert!(agg.layout().partitioned);
    agg.record(
        &[ValueRef::Null, ValueRef::Null, ValueRef::Long(1_000)],
        77_000,
    );
    agg.record(
        &[ValueRef::Null, ValueRef::Int(4), ValueRef::Long(1_500)],
        77_000,
    );
    // Null event time: bucketed by arrival.
    agg.record(
        &[ValueRef::String("a"), ValueRef::Int(-3), ValueRef::Null],
        77_123,
    );
    // Event time out of range: arrival as well; a short event reads missing attributes as null.
    agg.record(
        &[
            ValueRef::String("a"),
            ValueRef::Int(1),
            ValueRef::Long(i64::MIN),
        ],
        77_999,
    );
    agg.record(&[ValueRef::String("b")], 3_000);
    let delta = agg.drain().expect("drain");
    let secs = rows_of(&delta, Granularity::Seconds);
    type Summary = (i64, Vec<Value>, i64, Vec<Value>, i64, Vec<Value>);
    let summary: Vec<Summary> = secs
        .iter()
        .map(|r| {
            (
                r.bucket,
                r.keys.to_vec(),
                r.last_event_ts,
                r.latest.clone(),
                r.count,
                r.measures.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                1_000,
                vec![Value::Null],
                1_500,
                vec![Value::Int(4)],
                2,
                vec![Value::Long(4), Value::Long(1), Value::Int(4)]
            ),
            (
                3_000,
                vec![s("b")],
                3_000,
                vec![Value::Null],
                1,
                vec![Value::Null, Value::Long(0), Value::Null]
            ),
            (
                77_000,
                vec![s("a")],
                77_999,
                vec![Value::Int(1)],
                2,
                vec![Value::Long(-2), Value::Long(2), Value::Int(-3)]
            ),
        ]
    );
    assert_eq!(
        agg.event_time(&[ValueRef::Null, ValueRef::Null, ValueRef::Long(5)]),
        Some(5)
    );
    assert_eq!(
        agg.event_time(&[ValueRef::Null, ValueRef::Null, ValueRef::Long(i64::MAX)]),
        None
    );
}

#[test]
fn arrival_time_and_filters() {
    let src = "@app:name('F') define stream S (k string, x double);
        define aggregation A from S[x > 1.0] select sum(x) as sx aggregate every day...month;";
    let mut agg = aggregator(src, false);
    let day = ms("2024-02-29T23:59:59.999Z");
    agg.record(&[ValueRef::String("a"), ValueRef::Double(2.5)], day);
    agg.record(&[ValueRef::String("a"), ValueRef::Double(0.5)], day);
    agg.record(&[ValueRef::String("a"), ValueRef::Null], day);
    agg.record(&[ValueRef::String("a"), ValueRef::Double(4.0)], day + 1);
    let delta = agg.drain().expect("drain");
    let days = rows_of(&delta, Granularity::Days);
    assert_eq!(days.len(), 2);
    assert_eq!(
        (days[0].bucket, days[0].count, &days[0].measures),
        (ms("2024-02-29T00:00:00Z"), 1, &vec![Value::Double(2.5)])
    );
    assert_eq!(
        (days[1].bucket, days[1].count, &days[1].measures),
        (ms("2024-03-01T00:00:00Z"), 1, &vec![Value::Double(4.0)])
    );
    let months = rows_of(&delta, Granularity::Months);
    assert_eq!(
        months
            .iter()
            .map(|r| (r.bucket, r.count))
            .collect::<Vec<_>>(),
        [
            (ms("2024-02-01T00:00:00Z"), 1),
            (ms("2024-03-01T00:00:00Z"), 1)
        ]
    );
}

#[test]
fn rejects_a_layout_that_does_not_match() {
    let app = App::parse(BUNDLED_GEO_APP).unwrap();
    let agg = &app.aggregations[0];
    let mut l = layout(&app, agg, false);
    l.keys.pop();
    assert_eq!(
        Aggregator::new(&app, agg, l).unwrap_err(),
        EngineError::LayoutMismatch {
            aggregation: "GeoLocationAgg".into()
        }
    );
    let mut other = agg.clone();
    other.stream = "nope".into();
    assert_eq!(
        Aggregator::new(&app, &other, layout(&app, agg, false))
            .unwrap_err()
            .to_string(),
        "aggregation `GeoLocationAgg` reads unknown stream `nope`"
    );
}

// ---------------------------------------------------------------------------------------------
// Property: incremental aggregation with drains in between, merged, equals a recompute from
// scratch over the whole event list.

const MODEL_GROUPED: &str =
    "@app:name('P') define stream S (k string, g int, x int, y double, t long);
    define aggregation A from S
    select k, g, x as lastX, (x * 2 + g) as expr, count() as n, sum(x) as sx, sum(y) as sy,
           avg(x) as ax, avg(y) as ay, min(x) as mnx, max(x) as mxx, min(y) as mny, max(y) as mxy,
           sum(x * g) as sxg
    group by k, g
    aggregate by t every sec...year;";

const MODEL_PLAIN: &str =
    "@app:name('P') define stream S (k string, g int, x int, y double, t long);
    define aggregation A from S
    select k, avg(y) as ay, max(y) as mxy, count() as n
    aggregate every min, day, month;";

#[derive(Debug, Clone)]
struct Ev {
    k: Option<&'static str>,
    g: Option<i32>,
    x: Option<i32>,
    y: Option<f64>,
    t: Option<i64>,
    arrival: i64,
}

impl Ev {
    fn values(&self) -> [ValueRef<'static>; 5] {
        [
            self.k.map_or(ValueRef::Null, ValueRef::String),
            self.g.map_or(ValueRef::Null, ValueRef::Int),
            self.x.map_or(ValueRef::Null, ValueRef::Int),
            self.y.map_or(ValueRef::Null, ValueRef::Double),
            self.t.map_or(ValueRef::Null, ValueRef::Long),
        ]
    }
}

const BASE: i64 = 1_546_300_800_000; // 2019-01-01T00:00:00Z
const SPAN: i64 = 5 * 366 * 86_400_000;

fn ev_strategy() -> impl Strategy<Value = Ev> {
    let t = prop_oneof![
        4 => (0..SPAN).prop_map(|d| Some(BASE + d)),
        // Clusters inside a few seconds and minutes, to share buckets.
        4 => (0..180_000i64).prop_map(|d| Some(BASE + SPAN / 2 + d)),
        1 => Just(None),
    ];
    (
        proptest::option::weighted(0.8, proptest::sample::select(vec!["a", "b", "c"])),
        proptest::option::weighted(0.8, 1..3i32),
        proptest::option::weighted(0.8, -100..100i32),
        // Quarters: every sum of them is exact in f64, whatever the order.
        proptest::option::weighted(0.8, (-400..400i32).prop_map(|q| f64::from(q) / 4.0)),
        t,
        0..SPAN,
    )
        .prop_map(|(k, g, x, y, t, a)| Ev {
            k,
            g,
            x,
            y,
            t,
            arrival: BASE + a,
        })
}

type Key = (Granularity, i64, Vec<String>);

fn key_of(g: Granularity, r: &AggRow) -> Key {
    (
        g,
        r.bucket,
        r.keys.iter().map(|v| format!("{v:?}")).collect(),
    )
}

fn model(src: &str, events: &[Ev]) -> BTreeMap<Key, AggRow> {
    let app = App::parse(src).unwrap();
    let agg = &app.aggregations[0];
    let l = layout(&app, agg, false);
    let grouped = !agg.group_by.is_empty();
    let mut groups: BTreeMap<Key, Vec<usize>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let ts = if agg.aggregate_by.is_some() {
            e.t.unwrap_or(e.arrival)
        } else {
            e.arrival
        };
        let keys = if grouped {
            vec![
                e.k.map_or(Value::Null, Value::from),
                e.g.map_or(Value::Null, Value::Int),
            ]
        } else {
            vec![]
        };
        for &g in &l.granularities {
            let probe = AggRow {
                bucket: g.bucket_start(ts),
                keys: keys.clone().into(),
                last_event_ts: 0,
                latest: vec![],
                count: 0,
                measures: vec![],
            };
            groups.entry(key_of(g, &probe)).or_default().push(i);
        }
    }
    let ts_of = |e: &Ev| {
        if agg.aggregate_by.is_some() {
            e.t.unwrap_or(e.arrival)
        } else {
            e.arrival
        }
    };
    groups
        .into_iter()
        .map(|(key, idx)| {
            let evs: Vec<&Ev> = idx.iter().map(|&i| &events[i]).collect();
            // Latest: greatest event time, ties to the later-recorded event.
            let last = idx
                .iter()
                .copied()
                .max_by_key(|&i| (ts_of(&events[i]), i))
                .unwrap();
            let le = &events[last];
            let first = evs[0];
            let bucket = key.0.bucket_start(ts_of(first));
            let keys = if grouped {
                vec![
                    first.k.map_or(Value::Null, Value::from),
                    first.g.map_or(Value::Null, Value::Int),
                ]
            } else {
                vec![]
            };
            let latest = l
                .latest
                .iter()
                .map(|c| match c.name.as_str() {
                    "lastX" => le.x.map_or(Value::Null, Value::Int),
                    "expr" => match (le.x, le.g) {
                        (Some(x), Some(g)) => Value::Int(x * 2 + g),
                        _ => Value::Null,
                    },
                    "k" => le.k.map_or(Value::Null, Value::from),
                    other => panic!("no model for latest {other}"),
                })
                .collect();
            let xs: Vec<i64> = evs.iter().filter_map(|e| e.x.map(i64::from)).collect();
            let ys: Vec<f64> = evs.iter().filter_map(|e| e.y).collect();
            let xgs: Vec<i64> = evs
                .iter()
                .filter_map(|e| Some(i64::from(e.x?) * i64::from(e.g?)))
                .collect();
            let sum_l = |v: &[i64]| {
                if v.is_empty() {
                    Value::Null
                } else {
                    Value::Long(v.iter().sum())
                }
            };
            let sum_d = |v: &[f64]| {
                if v.is_empty() {
                    Value::Null
                } else {
                    Value::Double(v.iter().sum())
                }
            };
            let measures = l
                .measures
                .iter()
                .map(|m| match m.column.as_str() {
                    "AGG_SUM_x" => sum_l(&xs),
                    "AGG_COUNT_x" => Value::Long(i64::try_from(xs.len()).unwrap()),
                    "AGG_SUM_y" => sum_d(&ys),
                    "AGG_COUNT_y" => Value::Long(i64::try_from(ys.len()).unwrap()),
                    "AGG_SUM_sxg" => sum_l(&xgs),
                    #[allow(clippy::cast_possible_truncation)]
                    "AGG_MIN_x" => xs
                        .iter()
                        .min()
                        .map_or(Value::Null, |v| Value::Int(*v as i32)),
                    #[allow(clippy::cast_possible_truncation)]
                    "AGG_MAX_x" => xs
                        .iter()
                        .max()
                        .map_or(Value::Null, |v| Value::Int(*v as i32)),
                    "AGG_MIN_y" => ys
                        .iter()
                        .copied()
                        .reduce(f64::min)
                        .map_or(Value::Null, Value::Double),
                    "AGG_MAX_y" => ys
                        .iter()
                        .copied()
                        .reduce(f64::max)
                        .map_or(Value::Null, Value::Double),
                    other => panic!("no model for measure {other}"),
                })
                .collect();
            let row = AggRow {
                bucket,
                keys: keys.into(),
                last_event_ts: ts_of(le),
                latest,
                count: i64::try_from(evs.len()).unwrap(),
                measures,
            };
            (key, row)
        })
        .collect()
}

fn incremental(src: &str, events: &[Ev], cuts: &[usize]) -> (Layout, BTreeMap<Key, AggRow>) {
    let mut agg = aggregator(src, false);
    let l = agg.layout().clone();
    let mut merged: BTreeMap<Key, AggRow> = BTreeMap::new();
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (events.len() + 1)).collect();
    cuts.push(events.len());
    cuts.sort_unstable();
    let mut start = 0;
    for cut in cuts {
        for e in &events[start..cut.max(start)] {
            agg.record(&e.values(), e.arrival);
        }
        start = start.max(cut);
        let pending = agg.pending_rows();
        let bound = agg.drain_rows_bound();
        let delta = agg.drain().expect("drain");
        assert!(
            delta.row_count() <= bound,
            "{} rows drained, bound {bound}",
            delta.row_count()
        );
        for (g, rows) in &delta.rows {
            assert!(rows.len() <= pending);
            // Sorted by bucket then keys, each (bucket, keys) once.
            for w in rows.windows(2) {
                assert_eq!(
                    w[0].bucket
                        .cmp(&w[1].bucket)
                        .then_with(|| keys_cmp(&w[0].keys, &w[1].keys)),
                    std::cmp::Ordering::Less
                );
            }
            for r in rows {
                match merged.entry(key_of(*g, r)) {
                    std::collections::btree_map::Entry::Occupied(mut o) => {
                        o.get_mut().merge(r, &l).expect("in range");
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(r.clone());
                    }
                }
            }
        }
    }
    (l, merged)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn incremental_equals_recompute(
        events in proptest::collection::vec(ev_strategy(), 0..300),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        plain in any::<bool>(),
    ) {
        let src = if plain { MODEL_PLAIN } else { MODEL_GROUPED };
        let (_, merged) = incremental(src, &events, &cuts);
        let want = model(src, &events);
        prop_assert_eq!(merged.len(), want.len());
        for ((k, got), (wk, w)) in merged.iter().zip(&want) {
            prop_assert_eq!(k, wk);
            prop_assert_eq!(got, w);
        }
    }

    #[test]
    fn all_granularities_agree(
        events in proptest::collection::vec(ev_strategy(), 0..200),
        cuts in proptest::collection::vec(any::<usize>(), 0..4),
    ) {
        let (l, merged) = incremental(MODEL_GROUPED, &events, &cuts);
        for coarse in [Granularity::Minutes, Granularity::Hours, Granularity::Days, Granularity::Months, Granularity::Years] {
            let mut rolled: BTreeMap<Key, AggRow> = BTreeMap::new();
            for ((g, _, _), r) in &merged {
                if *g != Granularity::Seconds {
                    continue;
                }
                let mut r = r.clone();
                r.bucket = coarse.bucket_start(r.bucket);
                match rolled.entry(key_of(coarse, &r)) {
                    std::collections::btree_map::Entry::Occupied(mut o) => {
                        o.get_mut().merge(&r, &l).expect("in range");
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(r);
                    }
                }
            }
            let direct: BTreeMap<&Key, &AggRow> = merged.iter().filter(|((g, _, _), _)| *g == coarse).collect();
            prop_assert_eq!(rolled.iter().collect::<BTreeMap<_, _>>(), direct);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The hot path does not allocate for a group already seen. Each test runs in its own process
// under nextest, and the counter is per thread, so other tests do not disturb the count.

mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
    use std::cell::Cell;

    thread_local! {
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    pub(super) struct Counting;

    fn bump() {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    }

    // SAFETY: forwards every call to the system allocator unchanged; only counts.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
            bump();
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
            // SAFETY: same contract as the caller's.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
            bump();
            // SAFETY: same contract as the caller's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    pub(super) fn allocations() -> u64 {
        COUNT.with(Cell::get)
    }
}

#[global_allocator]
static ALLOCATOR: alloc_count::Counting = alloc_count::Counting;

#[test]
fn recording_a_seen_group_does_not_allocate() {
    let mut geo = aggregator(BUNDLED_GEO_APP, true);
    let t = ms("2026-11-20T10:15:00Z");
    let apis = ["PizzaShackAPI", "OrderAPI", "MenuAPI"];
    let cities = ["Naples", "Rome", "Milan"];
    // Warm up: every group once, with the longest apiName first so the latest buffer fits.
    for city in cities {
        geo.record(
            &[
                ValueRef::String(apis[0]),
                ValueRef::String("Italy"),
                ValueRef::String(city),
                ValueRef::Long(t),
            ],
            0,
        );
    }
    let mut stock = aggregator(STOCK, false);
    stock.record(&stock_event("IBM", 10.0, None, 1, 2, 5_000), 0);

    let before = alloc_count::allocations();
    for i in 0..3_000 {
        let (api, city) = (apis[i % 3], cities[(i / 3) % 3]);
        let ts = t + i64::try_from(i % 1000).unwrap();
        geo.record(
            &[
                ValueRef::String(api),
                ValueRef::String("Italy"),
                ValueRef::String(city),
                ValueRef::Long(ts),
            ],
            0,
        );
        #[allow(clippy::cast_precision_loss)]
        let price = i as f32;
        let event = [
            ValueRef::String("IBM"),
            ValueRef::Float(price),
            ValueRef::Null,
            ValueRef::Long(1),
            ValueRef::Int(3),
            ValueRef::Long(5_000 + ts % 1000),
        ];
        stock.record(&event, 0);
    }
    let after = alloc_count::allocations();
    assert_eq!(after - before, 0, "allocations while recording seen groups");
    assert_eq!(geo.pending_rows(), 3);
    let delta = geo.drain().expect("drain");
    assert_eq!(
        rows_of(&delta, Granularity::Seconds)
            .iter()
            .map(|r| r.count)
            .sum::<i64>(),
        3_003
    );
    assert_eq!(
        rows_of(&stock.drain().expect("drain"), Granularity::Seconds)[0].count,
        3_001
    );
}

#[test]
fn a_long_sum_out_of_range_is_an_error_in_a_row_or_where_rows_roll_up() {
    const SUMS: &str = "@app:name('Sums')\ndefine stream s (k string, x long, ts long);\n\
        define aggregation SumAgg from s select k, sum(x) as total group by k \
        aggregate by ts every sec ... year;";
    let t = ms("2026-11-20T10:15:00Z");
    let overflow = Err(EngineError::SumOverflow {
        aggregation: "SumAgg".into(),
        column: "AGG_SUM_x".into(),
    });
    let ev = |x: i64, t: i64| [ValueRef::String("k"), ValueRef::Long(x), ValueRef::Long(t)];
    // In one SECONDS row.
    let mut agg = aggregator(SUMS, false);
    agg.record(&ev(i64::MAX - 1, t), 0);
    agg.record(&ev(5, t), 0);
    assert_eq!(agg.drain().map(|_| ()), overflow);
    // Nothing of it is left behind.
    assert!(agg.drain().expect("drain").is_empty());
    // Two seconds that fit, in one minute that does not.
    let half = i64::MAX / 2 + 1;
    agg.record(&ev(half, t), 0);
    agg.record(&ev(half, t + 1000), 0);
    assert_eq!(agg.drain().map(|_| ()), overflow);
    // At the edge: exact.
    agg.record(&ev(i64::MAX - 5, t), 0);
    agg.record(&ev(5, t + 1000), 0);
    let delta = agg.drain().expect("drain");
    assert_eq!(
        rows_of(&delta, Granularity::Years)[0].measures,
        vec![Value::Long(i64::MAX)]
    );
}

#[test]
fn minus_zero_and_zero_are_one_group_as_in_the_databases_keys() {
    let mut agg = aggregator(
        "@app:name('Z')\ndefine stream s (k double, ts long);\n\
         define aggregation ZAgg from s select k, count() as n group by k \
         aggregate by ts every sec ... min;",
        false,
    );
    let t = ms("2026-11-20T10:15:00Z");
    for k in [0.0, -0.0, 0.0, 1.5] {
        agg.record(&[ValueRef::Double(k), ValueRef::Long(t)], 0);
    }
    let delta = agg.drain().expect("drain");
    let counts: Vec<i64> = rows_of(&delta, Granularity::Seconds)
        .iter()
        .map(|r| r.count)
        .collect();
    assert_eq!(counts, vec![3, 1]);
}

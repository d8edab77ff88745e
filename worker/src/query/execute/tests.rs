//! Store queries over rows produced by the real aggregator, checked against the queries and
//! results of Siddhi's own incremental-aggregation tests (`Aggregation1TestCase`).

use super::*;
use crate::engine::{Aggregator, layout};
use crate::siddhi::{App, BUNDLED_GEO_APP};

/// Rows of every granularity, as the store would return them, from events spread over shards.
struct Stored {
    layout: Layout,
    rows: Vec<(Granularity, Vec<StoredRow>)>,
}

fn store(app_src: &str, events: &[Vec<Value>], shards: usize) -> Stored {
    let app = App::parse(app_src).unwrap();
    let agg = &app.aggregations[0];
    let l = layout(&app, agg, shards > 1);
    let mut aggs: Vec<Aggregator> = (0..shards)
        .map(|_| Aggregator::new(&app, agg, l.clone()).unwrap())
        .collect();
    for (i, e) in events.iter().enumerate() {
        let refs: Vec<ValueRef<'_>> = e.iter().map(Value::as_ref).collect();
        aggs[i % shards].record(&refs, 1_000);
    }
    let mut rows: Vec<(Granularity, Vec<StoredRow>)> =
        l.granularities.iter().map(|g| (*g, Vec::new())).collect();
    for (n, a) in aggs.iter_mut().enumerate() {
        for (g, drained) in a.drain().expect("drain").rows {
            let slot = rows.iter_mut().find(|(rg, _)| *rg == g).unwrap();
            slot.1.extend(drained.into_iter().map(|row| StoredRow {
                shard_id: (shards > 1).then(|| format!("node-{n}")),
                row,
            }));
        }
    }
    Stored { layout: l, rows }
}

impl Stored {
    fn query(&self, q: &str) -> Result<ResultSet, QueryError> {
        let q = StoreQuery::parse(q)?;
        let rows = self
            .rows
            .iter()
            .find(|(g, _)| *g == q.per)
            .map(|(_, r)| r.clone())
            .unwrap_or_default();
        execute(&q, &self.layout, rows)
    }

    fn ok(&self, q: &str) -> ResultSet {
        self.query(q).unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    fn err(&self, q: &str) -> String {
        match self.query(q) {
            Ok(r) => panic!("{q}: expected an error, got {r:?}"),
            Err(e) => e.to_string(),
        }
    }
}

fn stock(
    symbol: &str,
    price: f32,
    closing: Option<f32>,
    volume: i64,
    quantity: i32,
    ts: i64,
) -> Vec<Value> {
    vec![
        Value::from(symbol),
        Value::Float(price),
        closing.map_or(Value::Null, Value::Float),
        Value::Long(volume),
        Value::Int(quantity),
        Value::Long(ts),
    ]
}

const STREAM: &str = "@app:name('Stocks')
define stream stockStream (symbol string, price float, lastClosingPrice float, volume long, quantity int, timestamp long);
";

fn app(agg: &str) -> String {
    format!("{STREAM}{agg}")
}

const BY_SYMBOL_SEC_HOUR: &str = "define aggregation stockAggregation from stockStream
    select symbol, avg(price) as avgPrice, sum(price) as totalPrice, (price * quantity) as lastTradeValue
    group by symbol aggregate by timestamp every sec...hour;";

const BY_SYMBOL_SEC_YEAR: &str = "define aggregation stockAggregation from stockStream
    select symbol, avg(price) as avgPrice, sum(price) as totalPrice, (price * quantity) as lastTradeValue
    group by symbol aggregate by timestamp every sec...year;";

/// incrementalStreamProcessorTest5/24/25/31–35.
fn data_a() -> Vec<Vec<Value>> {
    vec![
        stock("WSO2", 50.0, Some(60.0), 90, 6, 1_496_289_950_000),
        stock("WSO2", 70.0, None, 40, 10, 1_496_289_950_000),
        stock("WSO2", 60.0, Some(44.0), 200, 56, 1_496_289_952_000),
        stock("WSO2", 100.0, None, 200, 16, 1_496_289_952_000),
        stock("IBM", 100.0, None, 200, 26, 1_496_289_954_000),
        stock("IBM", 100.0, None, 200, 96, 1_496_289_954_000),
        stock("CISCO", 100.0, None, 200, 26, 1_513_578_087_000),
        stock("CISCO", 100.0, None, 200, 96, 1_513_578_087_000),
    ]
}

/// incrementalStreamProcessorTest17/18.
fn data_b() -> Vec<Vec<Value>> {
    vec![
        stock("WSO2", 50.0, Some(60.0), 90, 6, 1_496_289_950_000),
        stock("WSO2", 70.0, None, 40, 10, 1_496_289_950_000),
        stock("WSO2", 60.0, Some(44.0), 200, 56, 1_496_289_952_000),
        stock("WSO2", 100.0, None, 200, 16, 1_496_289_952_000),
        stock("WSO2", 50.0, Some(60.0), 90, 6, 1_496_289_950_000),
        stock("WSO2", 70.0, None, 40, 10, 1_496_289_950_000),
        stock("IBM", 100.0, None, 200, 26, 1_496_289_954_000),
        stock("IBM", 100.0, None, 200, 96, 1_496_289_954_000),
        stock("IBM", 900.0, None, 200, 60, 1_496_289_956_000),
        stock("IBM", 500.0, None, 200, 7, 1_496_289_956_000),
        stock("IBM", 400.0, None, 200, 9, 1_496_290_016_000),
        stock("IBM", 600.0, None, 200, 6, 1_496_290_076_000),
        stock("CISCO", 700.0, None, 200, 20, 1_496_293_676_000),
        stock("WSO2", 60.0, Some(44.0), 200, 56, 1_496_297_276_000),
        stock("CISCO", 800.0, None, 100, 10, 1_496_383_676_000),
        stock("CISCO", 900.0, None, 100, 15, 1_496_470_076_000),
        stock("IBM", 100.0, None, 200, 96, 1_499_062_076_000),
        stock("IBM", 400.0, None, 200, 9, 1_501_740_476_000),
        stock("WSO2", 60.0, Some(44.0), 200, 6, 1_533_276_476_000),
        stock("WSO2", 260.0, Some(44.0), 200, 16, 1_564_812_476_000),
        stock("CISCO", 260.0, Some(44.0), 200, 16, 1_596_434_876_000),
        stock("CISCO", 260.0, Some(44.0), 200, 16, 1_606_975_676_000),
    ]
}

fn l(v: i64) -> Value {
    Value::Long(v)
}
fn d(v: f64) -> Value {
    Value::Double(v)
}
fn f(v: f32) -> Value {
    Value::Float(v)
}
fn s(v: &str) -> Value {
    Value::from(v)
}

#[test]
fn siddhi_test5_whole_month_per_seconds() {
    let st = store(&app(BY_SYMBOL_SEC_HOUR), &data_a(), 1);
    let r = st.ok("from stockAggregation within \"2017-06-** **:**:**\" per \"seconds\"");
    assert_eq!(
        r.columns,
        [
            "AGG_TIMESTAMP",
            "symbol",
            "avgPrice",
            "totalPrice",
            "lastTradeValue"
        ]
    );
    assert_eq!(
        r.types,
        [
            AttrType::Long,
            AttrType::String,
            AttrType::Double,
            AttrType::Double,
            AttrType::Float
        ]
    );
    let want = vec![
        vec![l(1_496_289_950_000), s("WSO2"), d(60.0), d(120.0), f(700.0)],
        vec![
            l(1_496_289_952_000),
            s("WSO2"),
            d(80.0),
            d(160.0),
            f(1600.0),
        ],
        vec![
            l(1_496_289_954_000),
            s("IBM"),
            d(100.0),
            d(200.0),
            f(9600.0),
        ],
    ];
    assert_eq!(r.rows, want);
    // incrementalStreamProcessorTest25: `select * order by AGG_TIMESTAMP`, same rows in order.
    let r = st.ok("from stockAggregation within \"2017-06-** **:**:**\" per \"seconds\" select * order by AGG_TIMESTAMP ;");
    assert_eq!(r.rows, want);
}

#[test]
fn siddhi_tests31_to_35_wildcards_and_offsets() {
    let st = store(&app(BY_SYMBOL_SEC_HOUR), &data_a(), 1);
    let cisco = vec![
        l(1_513_578_087_000),
        s("CISCO"),
        d(100.0),
        d(200.0),
        f(9600.0),
    ];
    let r = st.ok("from stockAggregation within \"2017-**-** **:**:**\" per \"seconds\" select * order by AGG_TIMESTAMP");
    assert_eq!(r.rows.len(), 4);
    assert_eq!(r.rows[3], cisco);
    for within in [
        "\"2017-12-18 **:**:**\"",
        "\"2017-12-18 06:**:**\"",
        "\"2017-12-18 06:21:**\"",
        "\"2017-12-18 11:51:27 +05:30\"",
    ] {
        let r = st.ok(&format!("from stockAggregation within {within} per \"seconds\" select * order by AGG_TIMESTAMP ;"));
        assert_eq!(r.rows, std::slice::from_ref(&cisco), "{within}");
    }
    // incrementalStreamProcessorTest11: `on`.
    let r = st.ok("from stockAggregation on symbol == \"IBM\" within \"2017-06-** **:**:** +05:30\" per \"seconds\"; ");
    assert_eq!(
        r.rows,
        [vec![
            l(1_496_289_954_000),
            s("IBM"),
            d(100.0),
            d(200.0),
            f(9600.0)
        ]]
    );
    // The same hour per hours: one row per symbol.
    let r = st.ok("from stockAggregation within \"2017-06-01 04:**:**\" per \"hours\" select symbol, totalPrice, lastTradeValue");
    assert_eq!(
        r.rows,
        [
            vec![s("IBM"), d(200.0), f(9600.0)],
            vec![s("WSO2"), d(280.0), f(1600.0)]
        ]
    );
}

#[test]
fn siddhi_test17_months_and_test18_years() {
    let st = store(&app(BY_SYMBOL_SEC_YEAR), &data_b(), 1);
    let r = st.ok(
        "from stockAggregation within \"2017-01-01 00:00:00\", \"2021-01-01 00:00:00\" per \"months\" \
         select AGG_TIMESTAMP, symbol, avgPrice, totalPrice order by AGG_TIMESTAMP",
    );
    // Siddhi lists the three June rows in arrival order; here ties on AGG_TIMESTAMP keep bucket
    // order (by symbol).
    assert_eq!(
        r.rows,
        [
            vec![l(1_496_275_200_000), s("CISCO"), d(800.0), d(2400.0)],
            vec![
                l(1_496_275_200_000),
                s("IBM"),
                d(433.333_333_333_333_3),
                d(2600.0)
            ],
            vec![
                l(1_496_275_200_000),
                s("WSO2"),
                d(65.714_285_714_285_71),
                d(460.0)
            ],
            vec![l(1_498_867_200_000), s("IBM"), d(100.0), d(100.0)],
            vec![l(1_501_545_600_000), s("IBM"), d(400.0), d(400.0)],
            vec![l(1_533_081_600_000), s("WSO2"), d(60.0), d(60.0)],
            vec![l(1_564_617_600_000), s("WSO2"), d(260.0), d(260.0)],
            vec![l(1_596_240_000_000), s("CISCO"), d(260.0), d(260.0)],
            vec![l(1_606_780_800_000), s("CISCO"), d(260.0), d(260.0)],
        ]
    );
    let r = st.ok(
        "from stockAggregation within \"2017-01-01 00:00:00\", \"2021-01-01 00:00:00\" per \"years\" \
         select AGG_TIMESTAMP, symbol, avgPrice, totalPrice order by AGG_TIMESTAMP",
    );
    assert_eq!(
        r.rows,
        [
            vec![l(1_483_228_800_000), s("CISCO"), d(800.0), d(2400.0)],
            vec![l(1_483_228_800_000), s("IBM"), d(387.5), d(3100.0)],
            vec![
                l(1_483_228_800_000),
                s("WSO2"),
                d(65.714_285_714_285_71),
                d(460.0)
            ],
            vec![l(1_514_764_800_000), s("WSO2"), d(60.0), d(60.0)],
            vec![l(1_546_300_800_000), s("WSO2"), d(260.0), d(260.0)],
            vec![l(1_577_836_800_000), s("CISCO"), d(260.0), d(520.0)],
        ]
    );
}

#[test]
fn siddhi_test9_days_without_group_by() {
    let data: Vec<Vec<Value>> = data_b()
        .into_iter()
        .enumerate()
        // Test 9's list is test 17's without the repeated 04:05:50 pair and the December event.
        .filter(|(i, _)| *i != 4 && *i != 5 && *i != 21)
        .map(|(_, e)| e)
        .collect();
    let st = store(
        &app("define aggregation stockAggregation from stockStream
              select avg(price) as avgPrice, sum(price) as totalPrice, (price * quantity) as lastTradeValue, count() as count
              aggregate by timestamp every min, day, year ;"),
        &data,
        1,
    );
    let r = st.ok(
        "from stockAggregation within 1496200000000L, 1596434876000L per \"days\" \
         select AGG_TIMESTAMP, avgPrice, totalPrice, lastTradeValue, count order by AGG_TIMESTAMP",
    );
    assert_eq!(
        r.types,
        [
            AttrType::Long,
            AttrType::Double,
            AttrType::Double,
            AttrType::Float,
            AttrType::Long
        ]
    );
    assert_eq!(
        r.rows,
        [
            vec![
                l(1_496_275_200_000),
                d(303.333_333_333_333_3),
                d(3640.0),
                f(3360.0),
                l(12)
            ],
            vec![l(1_496_361_600_000), d(800.0), d(800.0), f(8000.0), l(1)],
            vec![l(1_496_448_000_000), d(900.0), d(900.0), f(13500.0), l(1)],
            vec![l(1_499_040_000_000), d(100.0), d(100.0), f(9600.0), l(1)],
            vec![l(1_501_718_400_000), d(400.0), d(400.0), f(3600.0), l(1)],
            vec![l(1_533_254_400_000), d(60.0), d(60.0), f(360.0), l(1)],
            vec![l(1_564_790_400_000), d(260.0), d(260.0), f(4160.0), l(1)],
            vec![l(1_596_412_800_000), d(260.0), d(260.0), f(4160.0), l(1)],
        ]
    );
}

#[test]
fn siddhi_test26_epoch_bounds_and_aliases() {
    let data = vec![
        stock("WSO2", 50.0, Some(60.0), 90, 6, 1_496_289_950_000),
        stock("WSO2", 70.0, None, 40, 10, 1_496_289_950_000),
        stock("WSO2", 50.0, Some(60.0), 90, 6, 1_496_289_950_000),
        stock("WSO2", 70.0, None, 40, 10, 1_496_289_950_000),
        stock("IBM", 100.0, None, 200, 26, 1_496_289_951_000),
        stock("IBM", 100.0, None, 200, 96, 1_496_289_951_000),
        stock("IBM", 900.0, None, 200, 60, 1_496_289_952_000),
        stock("IBM", 500.0, None, 200, 7, 1_496_289_952_000),
        stock("WSO2", 60.0, Some(44.0), 200, 56, 1_496_289_953_000),
        stock("WSO2", 100.0, None, 200, 16, 1_496_289_953_000),
        stock("IBM", 400.0, None, 200, 9, 1_496_289_953_000),
        stock("WSO2", 140.0, None, 200, 11, 1_496_289_953_000),
    ];
    let st = store(&app(BY_SYMBOL_SEC_YEAR), &data, 1);
    let r = st.ok(
        "from stockAggregation within 1496289951000L, 1496289952001L per \"seconds\" \
         select AGG_TIMESTAMP, symbol, avgPrice, totalPrice as sumPrice, lastTradeValue",
    );
    assert_eq!(
        r.columns,
        [
            "AGG_TIMESTAMP",
            "symbol",
            "avgPrice",
            "sumPrice",
            "lastTradeValue"
        ]
    );
    assert_eq!(
        r.rows,
        [
            vec![
                l(1_496_289_951_000),
                s("IBM"),
                d(100.0),
                d(200.0),
                f(9600.0)
            ],
            vec![
                l(1_496_289_952_000),
                s("IBM"),
                d(700.0),
                d(1400.0),
                f(3500.0)
            ],
        ]
    );
}

#[test]
fn siddhis_refusals() {
    let st = store(&app(BY_SYMBOL_SEC_HOUR), &data_a(), 1);
    // incrementalStreamProcessorTest21: per days on an aggregation kept every sec...hour.
    assert_eq!(
        st.err("from stockAggregation within \"2017-06-** **:**:**\" per \"days\""),
        "line 1, column 56: aggregation `stockAggregation` does not keep days (it keeps seconds, minutes, hours)"
    );
    // incrementalStreamProcessorTest20: an aggregation the app does not have.
    assert_eq!(
        st.err("from stockAgg within \"2017-06-** **:**:**\" per \"hours\""),
        "line 1, column 6: unknown aggregation `stockAgg` (the app has stockAggregation)"
    );
    assert_eq!(
        st.err("from stockAggregation within \"2017-06-** **:**:**\" per 1000"),
        "line 1, column 56: expected a quoted granularity like \"hours\", found `1000`"
    );
}

#[test]
fn semantic_errors_point_at_the_name() {
    let st = store(&app(BY_SYMBOL_SEC_HOUR), &data_a(), 1);
    let q = |tail: &str| format!("from stockAggregation within 0, 1 per 'sec' {tail}");
    let known = "AGG_TIMESTAMP, symbol, avgPrice, totalPrice, lastTradeValue";
    assert_eq!(
        st.err(&q("select symbl")),
        format!("line 1, column 52: unknown attribute `symbl` (known: {known})")
    );
    assert_eq!(
        st.err("from stockAggregation on price > 3 within 0, 1 per 'sec'"),
        format!("line 1, column 26: unknown attribute `price` (known: {known})")
    );
    assert_eq!(
        st.err("from stockAggregation on totalPrice within 0, 1 per 'sec'"),
        "line 1, column 26: `on` must be a condition, `totalPrice` is double"
    );
    assert_eq!(
        st.err("from stockAggregation on sum(totalPrice) > 1 within 0, 1 per 'sec'"),
        "line 1, column 26: sum() is not allowed here: `on` filters records before aggregating; use `having`"
    );
    assert_eq!(
        st.err(&q("select symbol group by sym")),
        format!("line 1, column 68: unknown attribute `sym` (known: {known})")
    );
    assert_eq!(
        st.err(&q("select symbol as s, totalPrice having t > 1")),
        "line 1, column 83: unknown attribute `t` (known: s, totalPrice, AGG_TIMESTAMP, symbol, avgPrice, lastTradeValue)"
    );
    assert_eq!(
        st.err(&q("select symbol having symbol")),
        "line 1, column 66: `having` must be a condition, `symbol` is string"
    );
    assert_eq!(
        st.err(&q("select symbol order by nope desc")),
        "line 1, column 68: unknown attribute `nope` (known: symbol, AGG_TIMESTAMP, avgPrice, totalPrice, lastTradeValue)"
    );
    assert_eq!(
        st.err(&q("select symbol, totalPrice as symbol")),
        "line 1, column 60: duplicate output name `symbol`"
    );
    assert_eq!(
        st.err(&q("select sum(symbol) as x")),
        "line 1, column 56: sum() needs a number, `symbol` is string"
    );
}

#[test]
fn select_group_by_having_order_limit() {
    let st = store(&app(BY_SYMBOL_SEC_YEAR), &data_b(), 1);
    let base = "from stockAggregation within \"2017-01-01 00:00:00\", \"2021-01-01 00:00:00\" per \"months\"";
    let r = st.ok(&format!(
        "{base} select symbol, sum(totalPrice) as total, count() as months, max(totalPrice) as best, \
         avg(avgPrice) as meanOfAvgs, min(AGG_TIMESTAMP) as first, lastTradeValue \
         group by symbol having total > 1000 order by total desc"
    ));
    assert_eq!(
        r.columns,
        [
            "symbol",
            "total",
            "months",
            "best",
            "meanOfAvgs",
            "first",
            "lastTradeValue"
        ]
    );
    assert_eq!(
        r.types,
        [
            AttrType::String,
            AttrType::Double,
            AttrType::Long,
            AttrType::Double,
            AttrType::Double,
            AttrType::Long,
            AttrType::Float
        ]
    );
    assert_eq!(
        r.rows,
        [
            vec![
                s("IBM"),
                d(3100.0),
                l(3),
                d(2600.0),
                d((2600.0 / 6.0 + 100.0 + 400.0) / 3.0),
                l(1_496_275_200_000),
                // The group's last record (August 2017) gives the non-aggregated values.
                f(3600.0)
            ],
            vec![
                s("CISCO"),
                d(2920.0),
                l(3),
                d(2400.0),
                d((800.0 + 260.0 + 260.0) / 3.0),
                l(1_496_275_200_000),
                f(4160.0)
            ],
        ]
    );
    // Aggregates without group by: one group of every record.
    let r = st.ok(&format!(
        "{base} select count() as n, sum(totalPrice) as total"
    ));
    assert_eq!(r.rows, [vec![l(9), d(6800.0)]]);
    // No records, no groups.
    let r = st.ok("from stockAggregation within 0, 1000 per 'months' select count() as n");
    assert_eq!(
        (r.columns.as_slice(), r.rows.len()),
        (["n".to_owned()].as_slice(), 0)
    );
    // Order by an attribute not selected; ties keep bucket order; offset then limit.
    let r = st.ok(&format!(
        "{base} select AGG_TIMESTAMP, symbol order by totalPrice desc, symbol limit 3 offset 1"
    ));
    assert_eq!(
        r.rows,
        [
            vec![l(1_496_275_200_000), s("CISCO")],
            vec![l(1_496_275_200_000), s("WSO2")],
            vec![l(1_501_545_600_000), s("IBM")],
        ]
    );
    let r = st.ok(&format!(
        "{base} select AGG_TIMESTAMP, totalPrice order by totalPrice limit 0"
    ));
    assert!(r.rows.is_empty());
    // `on` filters records before grouping; expressions over aggregates.
    let r = st.ok(
        "from stockAggregation on symbol != 'IBM' within \"2017-01-01 00:00:00\", \"2021-01-01 00:00:00\" \
         per \"months\" select symbol, count() * 10 as n, sum(totalPrice) / count() as mean group by symbol order by symbol desc",
    );
    assert_eq!(
        r.types,
        [AttrType::String, AttrType::Long, AttrType::Double]
    );
    assert_eq!(
        r.rows,
        [
            vec![s("WSO2"), l(30), d(780.0 / 3.0)],
            vec![s("CISCO"), l(30), d(2920.0 / 3.0)]
        ]
    );
    // Expressions per record, with nulls for division by zero.
    let r = st.ok(
        "from stockAggregation within \"2017-06-** **:**:**\" per \"months\" \
         select symbol, totalPrice > 1000 as big, avgPrice * 2 as twice, 7 / 0 as nothing, 'x' as tag",
    );
    assert_eq!(
        r.types,
        [
            AttrType::String,
            AttrType::Bool,
            AttrType::Double,
            AttrType::Int,
            AttrType::String
        ]
    );
    assert_eq!(
        r.rows,
        [
            vec![
                s("CISCO"),
                Value::Bool(true),
                d(1600.0),
                Value::Null,
                s("x")
            ],
            vec![
                s("IBM"),
                Value::Bool(true),
                d(2600.0 / 6.0 * 2.0),
                Value::Null,
                s("x")
            ],
            vec![
                s("WSO2"),
                Value::Bool(false),
                d(460.0 / 7.0 * 2.0),
                Value::Null,
                s("x")
            ],
        ]
    );
}

fn geo_event(api: &str, city: &str, ts: i64) -> Vec<Value> {
    vec![s(api), s("Italy"), s(city), l(ts)]
}

#[test]
fn naples_70k_merges_two_shards() {
    let hour = 1_795_168_800_000; // 2026-11-20T10:00:00Z
    let mut events = Vec::new();
    // Node 0 sees 30,000 Naples requests, node 1 sees 40,000 (store() deals events round-robin,
    // so interleave 30k pairs and 10k extra for node 1 with Rome events on node 0).
    for i in 0..30_000 {
        events.push(geo_event("PizzaShackAPI", "Naples", hour + i));
        events.push(geo_event("PizzaShackAPI", "Naples", hour + 1_000_000 + i));
    }
    for i in 0..10_000 {
        events.push(geo_event("MenuAPI", "Rome", hour + 2_000_000 + i));
        events.push(geo_event("OrderAPI", "Naples", hour + 3_000_000 + i));
    }
    let st = store(BUNDLED_GEO_APP, &events, 2);
    assert!(st.layout.partitioned);
    let hours = &st
        .rows
        .iter()
        .find(|(g, _)| *g == Granularity::Hours)
        .unwrap()
        .1;
    let naples: Vec<(Option<&str>, i64)> = hours
        .iter()
        .filter(|r| r.row.keys[1] == s("Naples"))
        .map(|r| (r.shard_id.as_deref(), r.row.count))
        .collect();
    assert_eq!(naples, [(Some("node-0"), 30_000), (Some("node-1"), 40_000)]);
    let r = st.ok(
        "from GeoLocationAgg within \"2026-11-20 10:**:**\" per \"hours\" select country, city, totalRequestCount",
    );
    assert_eq!(
        r.rows,
        [
            vec![s("Italy"), s("Naples"), l(70_000)],
            vec![s("Italy"), s("Rome"), l(10_000)]
        ]
    );
    // The latest apiName is the one of the latest event across both shards.
    let r = st
        .ok("from GeoLocationAgg on city == 'Naples' within \"2026-11-20 10:**:**\" per \"hours\"");
    assert_eq!(
        r.columns,
        [
            "AGG_TIMESTAMP",
            "apiName",
            "country",
            "city",
            "totalRequestCount"
        ]
    );
    assert_eq!(
        r.rows,
        [vec![
            l(hour),
            s("OrderAPI"),
            s("Italy"),
            s("Naples"),
            l(70_000)
        ]]
    );
    // Nothing in the next hour.
    assert!(
        st.ok("from GeoLocationAgg within \"2026-11-20 11:**:**\" per \"hours\"")
            .rows
            .is_empty()
    );
}

#[test]
fn sharding_and_row_order_do_not_change_answers() {
    let one = store(&app(BY_SYMBOL_SEC_YEAR), &data_b(), 1);
    let three = store(&app(BY_SYMBOL_SEC_YEAR), &data_b(), 3);
    for q in [
        "from stockAggregation within \"2017-**-** **:**:**\" per \"seconds\" select AGG_TIMESTAMP, symbol, avgPrice, totalPrice",
        "from stockAggregation within 0, 2000000000000 per \"hours\" select AGG_TIMESTAMP, symbol, avgPrice, totalPrice",
        "from stockAggregation within 0, 2000000000000 per \"days\" select symbol, sum(totalPrice) as t group by symbol",
        "from stockAggregation within 0, 2000000000000 per \"years\"",
    ] {
        let a = one.ok(q);
        let b = three.ok(q);
        assert_eq!(a, b, "{q}");
        // Rows in any order read the same.
        let parsed = StoreQuery::parse(q).unwrap();
        let mut rows = three
            .rows
            .iter()
            .find(|(g, _)| *g == parsed.per)
            .unwrap()
            .1
            .clone();
        rows.reverse();
        assert_eq!(execute(&parsed, &three.layout, rows).unwrap(), b, "{q}");
    }
    // Per seconds the merged shards answer exactly what one node would.
    let secs = one.ok("from stockAggregation within 0, 2000000000000 per 'sec'");
    assert_eq!(secs.rows.len(), 16);
}

#[test]
fn rows_outside_the_range_and_layouts_by_name() {
    let st = store(&app(BY_SYMBOL_SEC_HOUR), &data_a(), 1);
    let q = StoreQuery::parse("from stockAggregation within 1496289952000, 1496289954000 per 'sec' select symbol, AGG_TIMESTAMP").unwrap();
    let all = st
        .rows
        .iter()
        .find(|(g, _)| *g == Granularity::Seconds)
        .unwrap()
        .1
        .clone();
    assert_eq!(
        execute(&q, &st.layout, all).unwrap().rows,
        [vec![s("WSO2"), l(1_496_289_952_000)]]
    );
    let layouts = vec![st.layout.clone()];
    assert_eq!(q.find_layout(&layouts).unwrap(), &st.layout);
    let other = StoreQuery::parse("from Nope within 0, 1 per 'sec'").unwrap();
    assert_eq!(
        other.find_layout(&layouts).unwrap_err().to_string(),
        "line 1, column 6: unknown aggregation `Nope` (the app has stockAggregation)"
    );
    assert!(check(&q, &st.layout).is_ok());
}

fn mutate(src: &str, edits: &[(usize, u8, char)]) -> String {
    let mut chars: Vec<char> = src.chars().collect();
    for &(at, op, c) in edits {
        if chars.is_empty() {
            chars.push(c);
            continue;
        }
        let i = at % chars.len();
        match op % 3 {
            0 => chars.insert(i, c),
            1 => {
                chars.remove(i);
            }
            _ => chars[i] = c,
        }
    }
    chars.into_iter().collect()
}

const QUERIES: &[&str] = &[
    "from GeoLocationAgg on city == 'Naples' or country != \"x\" within \"2026-11-** **:**:**\" per \"hours\" \
     select country, city, sum(totalRequestCount) as n, AGG_TIMESTAMP group by country, city having n > 2 \
     order by n desc, city limit 5 offset 1;",
    "from GeoLocationAgg within 1795168800000L, 1795172400000 per 'sec' select * order by AGG_TIMESTAMP",
    "from GeoLocationAgg within \"2026-11-20 10:00:00 +05:30\", \"2026-11-21 00:00:00\" per 'days' \
     select count() as c, max(totalRequestCount) * 2 - 1 as m, avg(totalRequestCount) / 0 as z",
];

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

    #[test]
    fn arbitrary_queries_never_panic(s in "\\PC{0,160}") {
        let _ = StoreQuery::parse(&s);
    }

    /// Mutated queries either fail with an error or run; nothing panics.
    #[test]
    fn mutated_queries_never_panic(
        edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>(),
            proptest::sample::select(vec!['(', ')', ',', ';', '*', '-', '/', '\'', '"', ' ', 'x', '0', '9', '<', '=', '!'])), 1..6),
        which in 0..QUERIES.len(),
    ) {
        let hour = 1_795_168_800_000;
        let st = store(BUNDLED_GEO_APP, &[geo_event("A", "Naples", hour), geo_event("B", "Rome", hour + 5), geo_event("C", "Naples", hour + 7_200_000)], 2);
        let text = mutate(QUERIES[which], &edits);
        let _ = st.query(&text);
    }
}

#[test]
fn seed_queries_run() {
    let hour = 1_795_168_800_000;
    let st = store(
        BUNDLED_GEO_APP,
        &[
            geo_event("A", "Naples", hour),
            geo_event("B", "Rome", hour + 5),
        ],
        2,
    );
    for q in QUERIES {
        st.ok(q);
    }
}

/// A long sum or count past 64 bits — merged across shards, or summed over a group — is an error
/// naming it, never a wrapped total.
#[test]
fn sums_past_64_bits_are_an_error_when_shards_merge_or_groups_sum() {
    let src = app("define aggregation stockAggregation from stockStream
        select symbol, sum(volume) as totalVolume
        group by symbol aggregate by timestamp every sec...hour;");
    let big = i64::MAX - 10;
    // One second, one event on each of two shards: each row is in range, their merge is not.
    let s = store(
        &src,
        &[
            stock("WSO2", 1.0, None, big, 1, 1_496_289_950_000),
            stock("WSO2", 1.0, None, 20, 1, 1_496_289_950_000),
        ],
        2,
    );
    assert_eq!(
        s.err(r#"from stockAggregation within 0L, 1600000000000L per "seconds" select symbol, totalVolume"#),
        "`AGG_SUM_volume` of the shards' rows merged leaves the 64-bit range of a long"
    );
    // Two seconds, one on each shard (so that neither shard's minute row overflows): each row is
    // in range, their sum over the group is not.
    let s = store(
        &src,
        &[
            stock("WSO2", 1.0, None, big, 1, 1_496_289_950_000),
            stock("WSO2", 1.0, None, 20, 1, 1_496_289_951_000),
        ],
        2,
    );
    let q = r#"from stockAggregation within 0L, 1600000000000L per "seconds" select symbol, sum(totalVolume) as v group by symbol"#;
    assert_eq!(
        s.err(q),
        "a `sum` over a group leaves the 64-bit range of a long"
    );
    // In range, the same query answers exactly.
    let s = store(
        &src,
        &[
            stock("WSO2", 1.0, None, big, 1, 1_496_289_950_000),
            stock("WSO2", 1.0, None, 10, 1, 1_496_289_951_000),
        ],
        1,
    );
    assert_eq!(s.ok(q).rows, vec![vec![Value::from("WSO2"), l(i64::MAX)]]);
}

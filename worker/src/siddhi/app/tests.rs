use super::*;
use crate::siddhi::BUNDLED_GEO_APP;
use proptest::prelude::*;
use shardtally_publisher::protocol::Value;

fn err(src: &str) -> String {
    match App::parse(src) {
        Ok(app) => panic!("expected an error, parsed {app:?}"),
        Err(e) => e.to_string(),
    }
}

fn attr(name: &str, ty: AttrType) -> Attribute {
    Attribute::new(name, ty)
}

const STOCK: &str = "@app:name('Stocks')
define stream stockStream (symbol string, price float, lastClosingPrice float, volume long, quantity int, timestamp long);
";

fn stock(agg: &str) -> String {
    format!("{STOCK}{agg}")
}

#[test]
fn parses_the_bundled_geo_app_exactly() {
    let app = App::parse(BUNDLED_GEO_APP).unwrap();
    assert_eq!(app.name, "APIM_ANALYTICS_GEO");
    assert_eq!(
        app.streams,
        [StreamSchema::new(
            "geoTempStream",
            vec![
                attr("apiName", AttrType::String),
                attr("country", AttrType::String),
                attr("city", AttrType::String),
                attr("requestTimestamp", AttrType::Long),
            ]
        )]
    );
    let [agg] = app.aggregations.as_slice() else {
        panic!("{app:?}")
    };
    assert_eq!(agg.name, "GeoLocationAgg");
    assert_eq!(agg.stream, "geoTempStream");
    assert_eq!(agg.filter, None);
    assert_eq!(agg.partition_by_id, Some(true));
    assert_eq!(agg.purge, None);
    let select: Vec<String> = agg
        .select
        .iter()
        .map(|s| format!("{} -> {}", s.expr, s.name()))
        .collect();
    assert_eq!(
        select,
        [
            "apiName -> apiName",
            "country -> country",
            "city -> city",
            "count() -> totalRequestCount"
        ]
    );
    assert_eq!(agg.group_by, ["country", "city"]);
    assert_eq!(agg.aggregate_by.as_deref(), Some("requestTimestamp"));
    assert_eq!(agg.granularities, Granularity::ALL);
    assert_eq!(agg.pos, Pos::new(10, 1));
    assert!(app.stream("geoTempStream").is_some());
    assert!(app.aggregation("GeoLocationAgg").is_some());
}

#[test]
fn parses_purge_partition_and_siddhi_spellings() {
    let src = "/* header
   comment */
@App:name(\"X\") @app:description('ignored')
define stream S (a string, b int, c long, d float, e double, f bool);
@store(type='rdbms', datasource='APIM_ANALYTICS_DB', field.length='a:100')
@PartitionById  -- bare
@purge(enable='true', interval='10 sec', @retentionPeriod(sec='120 sec', min='24 hours', hours='30 days', days='1 year', months='all', years='all'))
@info(name='whatever')
DEFINE AGGREGATION A1 FROM S[b > 3 and not f]
SELECT a, sum(b) AS sb, avg(e) as ae, min(d) as mind, max(c) as maxc, (b * 2 + c) as lin
GROUP BY a
AGGREGATE BY c EVERY sec ... hour;
@PartitionById(enable='false')
@purge(enable='false')
define aggregation A2 from S select count() as n aggregate every day, sec, min, sec
";
    let app = App::parse(src).unwrap();
    assert_eq!(app.name, "X");
    assert_eq!(app.streams[0].attributes.len(), 6);
    assert_eq!(app.streams[0].attributes[5], attr("f", AttrType::Bool));
    let a1 = &app.aggregations[0];
    assert_eq!(a1.partition_by_id, Some(true));
    assert_eq!(
        a1.filter.as_ref().map(ToString::to_string).as_deref(),
        Some("b > 3 and not f")
    );
    assert_eq!(
        a1.granularities,
        [
            Granularity::Seconds,
            Granularity::Minutes,
            Granularity::Hours
        ]
    );
    let h = |n: u64| Some(Duration::from_secs(n * 3600));
    assert_eq!(
        a1.purge,
        Some(Purge {
            enabled: true,
            interval: Duration::from_secs(10),
            retention: vec![
                (Granularity::Seconds, Some(Duration::from_secs(120))),
                (Granularity::Minutes, h(24)),
                (Granularity::Hours, h(30 * 24)),
            ],
        })
    );
    let names: Vec<String> = a1.select.iter().map(SelectItem::name).collect();
    assert_eq!(names, ["a", "sb", "ae", "mind", "maxc", "lin"]);
    assert_eq!(a1.select[5].expr.to_string(), "b * 2 + c");
    let a2 = &app.aggregations[1];
    assert_eq!(a2.partition_by_id, Some(false));
    assert_eq!(a2.aggregate_by, None);
    assert!(a2.group_by.is_empty());
    assert_eq!(
        a2.granularities,
        [
            Granularity::Seconds,
            Granularity::Minutes,
            Granularity::Days
        ]
    );
    assert_eq!(
        a2.purge,
        Some(Purge {
            enabled: false,
            interval: Duration::from_secs(900),
            retention: vec![
                (Granularity::Seconds, Some(Duration::from_secs(120))),
                (Granularity::Minutes, h(24)),
                (Granularity::Days, h(365 * 24)),
            ],
        })
    );
}

#[test]
fn parses_siddhi_test_aggregations() {
    // The definitions of Siddhi's Aggregation1TestCase.
    for agg in [
        "define aggregation stockAggregation from stockStream select sum(price) as sumPrice \
         aggregate by timestamp every sec ... min",
        "define aggregation stockAggregation from stockStream select sum(price) as sumPrice \
         group by price, volume aggregate every sec, min, hour, day",
        "define aggregation stockAggregation from stockStream select symbol, avg(price) as avgPrice, \
         sum(price) as totalPrice, (price * quantity) as lastTradeValue group by symbol \
         aggregate by timestamp every sec...year ;",
        "define aggregation stockAggregation from stockStream select avg(price) as avgPrice, \
         sum(price) as totalPrice, (price * quantity) as lastTradeValue, count() as count \
         aggregate by timestamp every min, day, year ;",
    ] {
        let app = App::parse(&stock(agg)).unwrap_or_else(|e| panic!("{agg}: {e}"));
        assert_eq!(app.aggregations[0].name, "stockAggregation");
    }
}

#[test]
fn parses_literals_in_expressions() {
    let app = App::parse(&stock(
        "define aggregation a from stockStream[symbol != \"IBM\" and price >= 1.5f and volume < 10L and \
         quantity % 2 == 0 or symbol is null]
         select (price * -1) as neg, (quantity / 2) as half, sum(quantity * 3) as s
         aggregate every sec",
    ))
    .unwrap();
    let f = app.aggregations[0].filter.as_ref().unwrap();
    assert_eq!(
        f.to_string(),
        "symbol != 'IBM' and price >= 1.5f and volume < 10L and quantity % 2 == 0 or symbol is null"
    );
    assert_eq!(app.aggregations[0].select[0].expr.to_string(), "price * -1");
    let ExprKind::Binary(_, _, rhs) = &app.aggregations[0].select[0].expr.kind else {
        panic!()
    };
    assert_eq!(rhs.kind, ExprKind::Literal(Value::Int(-1)));
}

#[test]
fn syntax_errors_point_at_line_and_column() {
    let cases: &[(&str, &str)] = &[
        (
            "define stream S (a string);",
            "line 1, column 1: missing @app:name('…') (the name store queries use)",
        ),
        (
            "@app:name('A')\ndefine stream S (a string);",
            "line 2, column 28: the app defines no aggregation",
        ),
        (
            "@app:name('A')\ndefine stream S (a strin);",
            "line 2, column 20: unknown type `strin` (expected string, int, long, float, double or bool)",
        ),
        (
            "@app:name('A')\ndefine stream S ();",
            "line 2, column 18: expected an attribute name, found `)`",
        ),
        (
            "@app:name('A')\ndefine stream S (a string)\ndefine stream T (b int);",
            "line 3, column 1: expected `;`, found `define`",
        ),
        (
            "@app:name('A')\ndefine table T (a string);",
            "line 2, column 8: `define table` is not supported: a shardtally app has only `define stream` and `define aggregation`",
        ),
        (
            "@app:name('A')\nfrom S select a insert into T;",
            "line 2, column 1: queries are not supported: a shardtally app has only `define stream` and `define aggregation` (events are published straight into the streams)",
        ),
        (
            "@app:name('A')\n@store(type='x')",
            "line 2, column 1: annotation @store is not followed by a definition",
        ),
        (
            "@app:name('A') @app:name('B')",
            "line 1, column 16: duplicate @app:name",
        ),
        (
            "@app:name('  ')",
            "line 1, column 11: @app:name must not be empty",
        ),
        (
            "@app:name(a='b', c='d')",
            "line 1, column 1: @app:name takes one quoted name, like @app:name('MyApp')",
        ),
        (
            "@app:name('A'",
            "line 1, column 14: expected `,` or `)`, found end of input",
        ),
    ];
    for (src, want) in cases {
        assert_eq!(&err(src), want, "{src}");
    }
}

#[test]
fn aggregation_errors_point_at_line_and_column() {
    let cases: &[(&str, &str)] = &[
        (
            "define aggregation a from nope select count() as n aggregate every sec",
            "line 3, column 27: unknown stream `nope` (defined: stockStream)",
        ),
        (
            "define aggregation a from stockStream select symbl, count() as n aggregate every sec",
            "line 3, column 46: unknown attribute `symbl` in stream `stockStream` (attributes: symbol, price, lastClosingPrice, volume, quantity, timestamp)",
        ),
        (
            "define aggregation a from stockStream select count() as n group by symbol, sym aggregate every sec",
            "line 3, column 76: unknown attribute `sym` in stream `stockStream` (attributes: symbol, price, lastClosingPrice, volume, quantity, timestamp)",
        ),
        (
            "define aggregation a from stockStream select count() as n group by symbol, symbol aggregate every sec",
            "line 3, column 76: `symbol` appears twice in group by",
        ),
        (
            "define aggregation a from stockStream select count() as n aggregate by symbol every sec",
            "line 3, column 72: aggregate by needs a long attribute (epoch milliseconds), `symbol` is string",
        ),
        (
            "define aggregation a from stockStream select count() as n aggregate by ts every sec",
            "line 3, column 72: unknown attribute `ts` in stream `stockStream` (attributes: symbol, price, lastClosingPrice, volume, quantity, timestamp)",
        ),
        (
            "define aggregation a from stockStream select sum(symbol) as s aggregate every sec",
            "line 3, column 50: sum() needs a number, `symbol` is string",
        ),
        (
            "define aggregation a from stockStream select avg(price > 1) as s aggregate every sec",
            "line 3, column 50: avg() needs a number, `price > 1` is bool",
        ),
        (
            "define aggregation a from stockStream select sum(price) aggregate every sec",
            "line 3, column 46: `sum(price)` needs a name: write `sum(price) as <name>`",
        ),
        (
            "define aggregation a from stockStream select price * 2 aggregate every sec",
            "line 3, column 46: `price * 2` needs a name: write `price * 2 as <name>`",
        ),
        (
            "define aggregation a from stockStream select sum(price) * 2 as x aggregate every sec",
            "line 3, column 46: sum() is not allowed here: an aggregate function must be a whole select item, like `sum(x) as total`",
        ),
        (
            "define aggregation a from stockStream select max(sum(price)) as x aggregate every sec",
            "line 3, column 50: sum() is not allowed here: aggregate functions cannot be nested",
        ),
        (
            "define aggregation a from stockStream select symbol, price as symbol aggregate every sec",
            "line 3, column 54: duplicate output name `symbol`",
        ),
        (
            "define aggregation a from stockStream select count() as agg_timestamp aggregate every sec",
            "line 3, column 46: `AGG_TIMESTAMP` is reserved for the bucket start store queries read",
        ),
        (
            "define aggregation a from stockStream select null as x aggregate every sec",
            "line 3, column 46: cannot tell the type of `null`",
        ),
        (
            "define aggregation a from stockStream[price] select count() as n aggregate every sec",
            "line 3, column 39: the filter must be a condition, `price` is float",
        ),
        (
            "define aggregation a from stockStream select count() as n aggregate every week",
            "line 3, column 75: unknown granularity `week` (expected seconds, minutes, hours, days, months or years)",
        ),
        (
            "define aggregation a from stockStream select count() as n aggregate every year...sec",
            "line 3, column 75: range `years...seconds` runs backwards (write the finer granularity first)",
        ),
        (
            "define aggregation a from stockStream select * aggregate every sec",
            "line 3, column 46: an aggregation must name what it selects (`select *` is for queries)",
        ),
        (
            "define aggregation a from stockStream select count() as n aggregate every",
            "line 3, column 74: expected a granularity (sec, min, hour, day, month, year), found end of input",
        ),
        (
            "define aggregation a from stockStream select count() as n every sec",
            "line 3, column 59: expected `aggregate`, found `every`",
        ),
        (
            "define aggregation stockStream from stockStream select count() as n aggregate every sec",
            "line 3, column 20: `stockStream` is already a stream name",
        ),
        (
            "define aggregation a from stockStream select count() as n aggregate every sec;\n\
             define aggregation A from stockStream select count() as n aggregate every sec;",
            "line 4, column 20: aggregation `A` is defined twice (as `a` before; table names ignore case)",
        ),
        (
            "define aggregation a_very_long_aggregation_name_that_will_not_fit_in_sql_identifiers \
             from stockStream select count() as n aggregate every sec",
            "line 3, column 20: aggregation name `a_very_long_aggregation_name_that_will_not_fit_in_sql_identifiers` does not make a valid table name `a_very_long_aggregation_name_that_will_not_fit_in_sql_identifiers_SECONDS` (letters, digits, underscores, at most 63 characters)",
        ),
        (
            "define aggregation a from stockStream select SYMBOL, count() as n group by symbol aggregate every sec",
            "line 3, column 46: unknown attribute `SYMBOL` in stream `stockStream` (attributes: symbol, price, lastClosingPrice, volume, quantity, timestamp)",
        ),
        (
            "define aggregation a from stockStream select price as Symbol, count() as n group by symbol aggregate every sec",
            "line 3, column 1: aggregation `a` would have two columns named `symbol` and `Symbol` (names ignore case in SQL); rename one",
        ),
        (
            "define aggregation a from stockStream select price as AGG_COUNT aggregate every sec",
            "line 3, column 1: aggregation `a` would have two columns named `AGG_COUNT` and `AGG_COUNT` (names ignore case in SQL); rename one",
        ),
        (
            "define aggregation a from stockStream select sum(price) as s, sum(volume + 1) as price aggregate every sec",
            "line 3, column 1: aggregation `a` would have two columns named `AGG_SUM_price` and `AGG_SUM_price` (names ignore case in SQL); rename one",
        ),
        (
            "@PartitionById(enable='maybe') define aggregation a from stockStream select count() as n aggregate every sec",
            "line 3, column 16: @PartitionById(enable=…) must be 'true' or 'false', not 'maybe'",
        ),
        (
            "@PartitionById @PartitionById define aggregation a from stockStream select count() as n aggregate every sec",
            "line 3, column 16: duplicate @PartitionById",
        ),
        (
            "@purge(interval='soon') define aggregation a from stockStream select count() as n aggregate every sec",
            "line 3, column 8: bad duration 'soon' (expected like '10 sec', '24 hours', '1 year')",
        ),
        (
            "@purge(@retentionPeriod(sec='1 min', seconds='2 min')) define aggregation a from stockStream select count() as n aggregate every sec",
            "line 3, column 38: duplicate retention for seconds",
        ),
        (
            "@purge(@retentionPeriod(sec='0 sec')) define aggregation a from stockStream select count() as n aggregate every sec",
            "line 3, column 25: a retention period must be positive (or 'all')",
        ),
        (
            "@purge(@other(x='1')) define aggregation a from stockStream select count() as n aggregate every sec",
            "line 3, column 8: unexpected @other inside @purge (expected @retentionPeriod)",
        ),
    ];
    for (agg, want) in cases {
        assert_eq!(&err(&stock(agg)), want, "{agg}");
    }
    assert_eq!(
        err(
            "@app:name('A') define stream S (a int, a long); define aggregation x from S select count() as n aggregate every sec"
        ),
        "line 1, column 40: attribute `a` appears twice in stream `S`"
    );
    assert_eq!(
        err("@app:name('A') define stream S (a int); define stream S (b int);"),
        "line 1, column 55: stream `S` is defined twice"
    );
}

#[test]
fn parses_durations() {
    assert_eq!(parse_duration("10 sec"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("5min"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration(" 2 Hours "), Ok(Duration::from_secs(7200)));
    assert_eq!(
        parse_duration("1 month"),
        Ok(Duration::from_secs(30 * 86_400))
    );
    assert_eq!(
        parse_duration("1 year"),
        Ok(Duration::from_secs(365 * 86_400))
    );
    assert_eq!(parse_duration("250 ms"), Ok(Duration::from_millis(250)));
    assert!(parse_duration("ten sec").is_err());
    assert!(parse_duration("10").is_err());
    assert!(parse_duration("99999999999999999999 years").is_err());
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

const RICH: &str = "@app:name('R')
define stream S (a string, b int, c long, d float, e double, f bool);
@PartitionById(enable='true')
@purge(enable='true', interval='10 sec', @retentionPeriod(sec='120 sec', min='all'))
define aggregation A from S[not f or b > 2]
select a, sum(b) as sb, avg(e * 2) as ae, min(d) as mind, max(c) as maxc, (b * 2 + c) as lin, count() as n
group by a aggregate by c every sec...year;
";

proptest! {
    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
        let _ = App::parse(&s);
    }

    #[test]
    fn siddhi_flavoured_text_never_panics(s in "[@a-z()'\",;.:=*<>!/+\\- \n0-9]{0,200}") {
        let _ = App::parse(&s);
    }

    #[test]
    fn mutated_apps_never_panic(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), proptest::char::any()), 1..8),
        which in any::<bool>(),
    ) {
        let base = if which { BUNDLED_GEO_APP } else { RICH };
        let _ = App::parse(&mutate(base, &edits));
    }

    #[test]
    fn mutated_apps_with_syntax_chars_never_panic(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), proptest::sample::select(
            vec!['(', ')', '[', ']', ',', ';', '.', '@', '\'', '"', '*', '-', '/', ' ', '\n', 'x', '0'])), 1..8),
    ) {
        let _ = App::parse(&mutate(RICH, &edits));
    }
}

#[test]
fn rich_app_parses() {
    App::parse(RICH).unwrap();
}

//! From an aggregation definition to its physical [`Layout`] (Siddhi's table shape) and to the
//! per-column recipe the aggregator folds events with.

use shardtally_publisher::protocol::{AttrType, StreamSchema};

use crate::layout::{Column, Layout, Measure, MeasureKind, Output, OutputSource};
use crate::siddhi::{AggFunc, AggregationDef, App, Expr, ExprKind};
use crate::siddhi::{Calls, infer};

/// How one measure column folds an event's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fold {
    /// Add the value (`AGG_SUM_x`).
    Sum,
    /// Keep the smallest (`AGG_MIN_x`).
    Min,
    /// Keep the largest (`AGG_MAX_x`).
    Max,
    /// Count non-null values (`AGG_COUNT_x`, for `avg`).
    CountNonNull,
}

/// The recipe for one measure column: what to fold and how.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MeasurePlan {
    pub(crate) fold: Fold,
    pub(crate) arg: Expr,
}

/// A layout with the recipes behind its measure and latest columns.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub(crate) layout: Layout,
    /// One per `layout.measures`.
    pub(crate) measures: Vec<MeasurePlan>,
    /// One per `layout.latest`.
    pub(crate) latest: Vec<Expr>,
}

/// The physical layout of `agg`, Siddhi's table shape:
///
/// - keys: the group-by attributes in group-by order (none without `group by`);
/// - latest: the non-aggregated select items that are not group-by keys (an attribute keeps its
///   type, an expression's type is inferred as Siddhi does);
/// - measures after `AGG_COUNT`: `AGG_SUM_x`, `AGG_MIN_x`, `AGG_MAX_x` (x = the attribute, or the
///   item's alias when the argument is an expression) and, for `avg(x)`, `AGG_SUM_x` plus
///   `AGG_COUNT_x` (non-null count), each column once;
/// - `partitioned` = the aggregation's `@PartitionById` if given, else `global_partition_by_id`;
/// - `event_time` = whether it aggregates `by` an attribute.
///
/// `agg` is expected to come from [`App::parse`], which checks it; on a hand-built, unchecked
/// definition, attributes the stream lacks are typed `string`.
pub fn layout(app: &App, agg: &AggregationDef, global_partition_by_id: bool) -> Layout {
    match app.stream(&agg.stream) {
        Some(s) => layout_for(s, agg, global_partition_by_id),
        None => layout_for(
            &StreamSchema::new(agg.stream.clone(), Vec::new()),
            agg,
            global_partition_by_id,
        ),
    }
}

/// [`layout`] given the stream directly.
pub(crate) fn layout_for(
    stream: &StreamSchema,
    agg: &AggregationDef,
    global_partition_by_id: bool,
) -> Layout {
    plan(stream, agg, global_partition_by_id).layout
}

/// The layout of `agg` with its folding recipes.
pub(crate) fn plan(
    stream: &StreamSchema,
    agg: &AggregationDef,
    global_partition_by_id: bool,
) -> Plan {
    let attr_type = |name: &str| {
        stream
            .attributes
            .iter()
            .find(|a| a.name == name)
            .map_or(AttrType::String, |a| a.ty)
    };
    let type_of = |e: &Expr| {
        infer(e, &|name, _| Ok(attr_type(name)), Calls::Allowed)
            .ok()
            .flatten()
            .unwrap_or(AttrType::Double)
    };
    let keys: Vec<Column> = agg
        .group_by
        .iter()
        .map(|g| Column {
            name: g.clone(),
            ty: attr_type(g),
        })
        .collect();
    let mut latest = Vec::new();
    let mut latest_exprs = Vec::new();
    let mut measures: Vec<Measure> = Vec::new();
    let mut recipes: Vec<MeasurePlan> = Vec::new();
    let mut outputs = Vec::new();

    let mut measure =
        |column: String, kind: MeasureKind, ty: AttrType, fold: Fold, arg: &Expr| -> usize {
            let text = arg.to_string();
            if let Some(i) = measures.iter().zip(&recipes).position(|(m, r)| {
                m.column == column && r.fold == fold && r.arg.to_string() == text
            }) {
                return i;
            }
            measures.push(Measure { column, kind, ty });
            recipes.push(MeasurePlan {
                fold,
                arg: arg.clone(),
            });
            measures.len() - 1
        };

    for item in &agg.select {
        let name = item.name();
        let (source, ty) = match (&item.expr.kind, item.expr.as_attribute()) {
            (ExprKind::Call(AggFunc::Count, _), _) => (OutputSource::Count, AttrType::Long),
            (ExprKind::Call(func, args), _) => {
                let Some(arg) = args.first() else {
                    continue;
                };
                let x = arg
                    .as_attribute()
                    .map_or_else(|| name.clone(), str::to_owned);
                let arg_ty = type_of(arg);
                match func {
                    AggFunc::Sum => {
                        let ty = func.result_type(Some(arg_ty));
                        let i =
                            measure(format!("AGG_SUM_{x}"), MeasureKind::Sum, ty, Fold::Sum, arg);
                        (OutputSource::Measure(i), ty)
                    }
                    AggFunc::Min => {
                        let i = measure(
                            format!("AGG_MIN_{x}"),
                            MeasureKind::Min,
                            arg_ty,
                            Fold::Min,
                            arg,
                        );
                        (OutputSource::Measure(i), arg_ty)
                    }
                    AggFunc::Max => {
                        let i = measure(
                            format!("AGG_MAX_{x}"),
                            MeasureKind::Max,
                            arg_ty,
                            Fold::Max,
                            arg,
                        );
                        (OutputSource::Measure(i), arg_ty)
                    }
                    AggFunc::Avg => {
                        let sum_ty = AggFunc::Sum.result_type(Some(arg_ty));
                        let sum = measure(
                            format!("AGG_SUM_{x}"),
                            MeasureKind::Sum,
                            sum_ty,
                            Fold::Sum,
                            arg,
                        );
                        let count = measure(
                            format!("AGG_COUNT_{x}"),
                            MeasureKind::Sum,
                            AttrType::Long,
                            Fold::CountNonNull,
                            arg,
                        );
                        (OutputSource::Avg { sum, count }, AttrType::Double)
                    }
                    AggFunc::Count => (OutputSource::Count, AttrType::Long),
                }
            }
            (_, Some(attr)) if agg.group_by.iter().any(|g| g == attr) => {
                let i = agg.group_by.iter().position(|g| g == attr).unwrap_or(0);
                (
                    OutputSource::Key(i),
                    keys.get(i).map_or(AttrType::String, |c| c.ty),
                )
            }
            _ => {
                let ty = type_of(&item.expr);
                latest.push(Column {
                    name: name.clone(),
                    ty,
                });
                latest_exprs.push(item.expr.clone());
                (OutputSource::Latest(latest.len() - 1), ty)
            }
        };
        outputs.push(Output { name, source, ty });
    }
    Plan {
        layout: Layout {
            aggregation: agg.name.clone(),
            partitioned: agg.partition_by_id.unwrap_or(global_partition_by_id),
            event_time: agg.aggregate_by.is_some(),
            granularities: agg.granularities.clone(),
            keys,
            latest,
            measures,
            outputs,
        },
        measures: recipes,
        latest: latest_exprs,
    }
}

/// The column names of one of `layout`'s tables, in table order: `AGG_TIMESTAMP`, `SHARD_ID`
/// (when partitioned), `AGG_EVENT_TIMESTAMP` (when event-timed), keys, latest values,
/// `AGG_LAST_EVENT_TIMESTAMP`, `AGG_COUNT`, measures.
pub fn physical_columns(layout: &Layout) -> Vec<String> {
    let mut cols = vec!["AGG_TIMESTAMP".to_owned()];
    if layout.partitioned {
        cols.push("SHARD_ID".to_owned());
    }
    if layout.event_time {
        cols.push("AGG_EVENT_TIMESTAMP".to_owned());
    }
    cols.extend(layout.keys.iter().map(|c| c.name.clone()));
    cols.extend(layout.latest.iter().map(|c| c.name.clone()));
    cols.push("AGG_LAST_EVENT_TIMESTAMP".to_owned());
    cols.push("AGG_COUNT".to_owned());
    cols.extend(layout.measures.iter().map(|m| m.column.clone()));
    cols
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::Granularity;
    use crate::siddhi::BUNDLED_GEO_APP;

    fn col(name: &str, ty: AttrType) -> Column {
        Column {
            name: name.into(),
            ty,
        }
    }

    fn m(column: &str, kind: MeasureKind, ty: AttrType) -> Measure {
        Measure {
            column: column.into(),
            kind,
            ty,
        }
    }

    fn out(name: &str, source: OutputSource, ty: AttrType) -> Output {
        Output {
            name: name.into(),
            source,
            ty,
        }
    }

    #[test]
    fn geo_layout_is_siddhis_shape() {
        let app = App::parse(BUNDLED_GEO_APP).unwrap();
        let l = layout(&app, &app.aggregations[0], false);
        assert_eq!(
            l,
            Layout {
                aggregation: "GeoLocationAgg".into(),
                partitioned: true,
                event_time: true,
                granularities: Granularity::ALL.to_vec(),
                keys: vec![
                    col("country", AttrType::String),
                    col("city", AttrType::String)
                ],
                latest: vec![col("apiName", AttrType::String)],
                measures: vec![],
                outputs: vec![
                    out("apiName", OutputSource::Latest(0), AttrType::String),
                    out("country", OutputSource::Key(0), AttrType::String),
                    out("city", OutputSource::Key(1), AttrType::String),
                    out("totalRequestCount", OutputSource::Count, AttrType::Long),
                ],
            }
        );
        assert_eq!(
            physical_columns(&l),
            [
                "AGG_TIMESTAMP",
                "SHARD_ID",
                "AGG_EVENT_TIMESTAMP",
                "country",
                "city",
                "apiName",
                "AGG_LAST_EVENT_TIMESTAMP",
                "AGG_COUNT"
            ]
        );
    }

    #[test]
    fn measures_are_named_typed_and_shared_like_siddhi() {
        let app = App::parse(
            "@app:name('S')
             define stream stockStream (symbol string, price float, volume long, quantity int, timestamp long);
             @PartitionById(enable='false')
             define aggregation stockAgg from stockStream
             select symbol, avg(price) as avgPrice, sum(price) as totalPrice,
                    (price * quantity) as lastTradeValue, max(price) as maxPrice, min(quantity) as minQ,
                    sum(volume) as vol, count() as n, avg(volume * 2) as dbl, quantity
             group by symbol
             aggregate every sec, min;",
        )
        .unwrap();
        let l = layout(&app, &app.aggregations[0], true);
        assert!(
            !l.partitioned,
            "explicit enable='false' beats the global setting"
        );
        assert!(!l.event_time);
        assert_eq!(
            l.granularities,
            [Granularity::Seconds, Granularity::Minutes]
        );
        assert_eq!(l.keys, [col("symbol", AttrType::String)]);
        assert_eq!(
            l.latest,
            [
                col("lastTradeValue", AttrType::Float),
                col("quantity", AttrType::Int)
            ]
        );
        assert_eq!(
            l.measures,
            [
                m("AGG_SUM_price", MeasureKind::Sum, AttrType::Double),
                m("AGG_COUNT_price", MeasureKind::Sum, AttrType::Long),
                m("AGG_MAX_price", MeasureKind::Max, AttrType::Float),
                m("AGG_MIN_quantity", MeasureKind::Min, AttrType::Int),
                m("AGG_SUM_volume", MeasureKind::Sum, AttrType::Long),
                m("AGG_SUM_dbl", MeasureKind::Sum, AttrType::Long),
                m("AGG_COUNT_dbl", MeasureKind::Sum, AttrType::Long),
            ]
        );
        assert_eq!(
            l.outputs,
            [
                out("symbol", OutputSource::Key(0), AttrType::String),
                out(
                    "avgPrice",
                    OutputSource::Avg { sum: 0, count: 1 },
                    AttrType::Double
                ),
                out("totalPrice", OutputSource::Measure(0), AttrType::Double),
                out("lastTradeValue", OutputSource::Latest(0), AttrType::Float),
                out("maxPrice", OutputSource::Measure(2), AttrType::Float),
                out("minQ", OutputSource::Measure(3), AttrType::Int),
                out("vol", OutputSource::Measure(4), AttrType::Long),
                out("n", OutputSource::Count, AttrType::Long),
                out(
                    "dbl",
                    OutputSource::Avg { sum: 5, count: 6 },
                    AttrType::Double
                ),
                out("quantity", OutputSource::Latest(1), AttrType::Int),
            ]
        );
    }

    #[test]
    fn partitioning_follows_annotation_then_global() {
        let src = |ann: &str| {
            format!(
                "@app:name('A') define stream s (k string, t long);
                 {ann} define aggregation a from s select k, count() as c group by k aggregate every sec;"
            )
        };
        for (ann, global, want) in [
            ("", false, false),
            ("", true, true),
            ("@PartitionById", false, true),
            ("@PartitionById(enable='true')", false, true),
            ("@PartitionById(enable='false')", true, false),
        ] {
            let app = App::parse(&src(ann)).unwrap();
            assert_eq!(
                layout(&app, &app.aggregations[0], global).partitioned,
                want,
                "{ann} {global}"
            );
        }
    }

    #[test]
    fn without_group_by_there_are_no_keys() {
        let app = App::parse(
            "@app:name('A') define stream s (k string, v double, t long);
             define aggregation a from s select k, sum(v) as total aggregate by t every hour...day;",
        )
        .unwrap();
        let l = layout(&app, &app.aggregations[0], false);
        assert!(l.keys.is_empty());
        assert_eq!(l.latest, [col("k", AttrType::String)]);
        assert_eq!(
            l.measures,
            [m("AGG_SUM_v", MeasureKind::Sum, AttrType::Double)]
        );
        assert_eq!(l.granularities, [Granularity::Hours, Granularity::Days]);
    }
}

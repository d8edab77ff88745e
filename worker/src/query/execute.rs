//! Evaluating a store query over the rows of every shard.
//!
//! 1. Keep the rows whose bucket start is in `[start, end)`; merge the shards' rows of each
//!    `(bucket, keys)` with [`AggRow::merge`] (ties between shards on the latest value go to the
//!    greatest shard id, so the answer does not depend on the order rows arrive in).
//! 2. Turn each merged row into a record: `AGG_TIMESTAMP` (the bucket start), then the
//!    aggregation's outputs (avg = Σsum / Σcount).
//! 3. Filter by `on`.
//! 4. Select, as Siddhi's selector does: without `group by` and without aggregate functions,
//!    one result per record; otherwise one per group (groups in order of first appearance; with
//!    aggregate functions but no `group by`, one group of every record), where `count()`,
//!    `sum`, `avg`, `min`, `max` run over the group's records and other attributes take the
//!    group's last record's values. No records, no groups: an empty result.
//! 5. `having` (over the selected names, then the input attributes), `order by` (the same names;
//!    nulls first ascending), `offset`, `limit`. Without `order by`, results stay in bucket order:
//!    `AGG_TIMESTAMP` ascending, then the group-by keys.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use hashbrown::HashMap;
use shardtally_publisher::protocol::{AttrType, Value, ValueRef};

use crate::bucket::Granularity;
use crate::layout::{AggRow, Layout, OutputSource, StoredRow};
use crate::siddhi::eval::{Compiled, as_f64, coerce, hash_key_value, key_eq, keys_cmp, sort_cmp};
use crate::siddhi::{AggFunc, Calls, Expr, ExprKind, ParseError, Pos, SelectItem, infer};

use super::parse::StoreQuery;

/// The name of the bucket-start attribute every store query can read.
pub const AGG_TIMESTAMP: &str = "AGG_TIMESTAMP";

/// The answer to a store query.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultSet {
    /// Column names, in select order.
    pub columns: Vec<String>,
    /// Column types (values are null or of this type).
    pub types: Vec<AttrType>,
    /// The rows.
    pub rows: Vec<Vec<Value>>,
}

/// Why a store query cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The query text does not parse.
    #[error(transparent)]
    Syntax(#[from] ParseError),
    /// The query reads an aggregation the app does not define.
    #[error("line {}, column {}: unknown aggregation `{name}` (the app has {available})", pos.line, pos.column)]
    UnknownAggregation {
        /// The name in the query.
        name: String,
        /// The aggregations there are, comma-separated.
        available: String,
        /// Where the name is.
        pos: Pos,
    },
    /// `per` names a granularity the aggregation does not keep.
    #[error("line {}, column {}: aggregation `{aggregation}` does not keep {per} (it keeps {kept})", pos.line, pos.column)]
    GranularityNotKept {
        /// The aggregation.
        aggregation: String,
        /// The granularity asked for.
        per: Granularity,
        /// The granularities kept, comma-separated.
        kept: String,
        /// Where `per`'s value is.
        pos: Pos,
    },
    /// A name, type or clause that does not fit the aggregation (unknown attribute, a
    /// condition that is not a bool, …).
    #[error("{0}")]
    Invalid(ParseError),
    /// A count or a sum of longs, merged across shards or summed over a group, leaves the 64-bit
    /// range (never a wrapped answer).
    #[error("{0} leaves the 64-bit range of a long")]
    Overflow(String),
}

impl StoreQuery {
    /// The layout, among `layouts`, of the aggregation this query reads.
    pub fn find_layout<'a>(&self, layouts: &'a [Layout]) -> Result<&'a Layout, QueryError> {
        layouts
            .iter()
            .find(|l| l.aggregation == self.aggregation)
            .ok_or_else(|| QueryError::UnknownAggregation {
                name: self.aggregation.clone(),
                available: layouts
                    .iter()
                    .map(|l| l.aggregation.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                pos: self.aggregation_pos,
            })
    }
}

/// An aggregate call of the select or having clause, computed per group.
#[derive(Debug)]
struct AggSlot {
    text: String,
    func: AggFunc,
    /// Over the input record.
    arg: Option<Compiled>,
    ty: AttrType,
}

/// A query compiled against a layout. Rows being built are `[input | outputs | aggregates]`.
#[derive(Debug)]
struct Plan {
    n_in: usize,
    on: Option<Compiled>,
    columns: Vec<String>,
    types: Vec<AttrType>,
    /// Over `[input | … | aggregates]`.
    exprs: Vec<Compiled>,
    aggs: Vec<AggSlot>,
    grouped: bool,
    group_idx: Vec<usize>,
    /// Over the whole row.
    having: Option<Compiled>,
    order: Vec<(usize, bool)>,
}

/// Checks `query` against `layout` without running it: the aggregation's name, the `per`
/// granularity, every attribute and type.
pub fn check(query: &StoreQuery, layout: &Layout) -> Result<(), QueryError> {
    compile(query, layout).map(|_| ())
}

/// Runs `query` over `rows`: every shard's rows of the `per` table (rows outside the query's
/// range are ignored).
pub fn execute(
    query: &StoreQuery,
    layout: &Layout,
    rows: Vec<StoredRow>,
) -> Result<ResultSet, QueryError> {
    let plan = compile(query, layout)?;
    let merged = merge_shards(rows, layout, query.start_ms, query.end_ms)?;
    let records: Vec<Vec<Value>> = merged
        .iter()
        .map(|r| record(r, layout))
        .filter(|rec| plan.on.as_ref().is_none_or(|c| c.test(rec.as_slice())))
        .collect();
    let m = plan.exprs.len();
    let width = plan.n_in + m + plan.aggs.len();
    let mut out: Vec<Vec<Value>> = Vec::new();
    let finish = |mut row: Vec<Value>, out: &mut Vec<Vec<Value>>| {
        for (j, (e, ty)) in plan.exprs.iter().zip(&plan.types).enumerate() {
            let v = coerce(e.eval(row.as_slice()), *ty);
            row[plan.n_in + j] = v;
        }
        if plan.having.as_ref().is_none_or(|h| h.test(row.as_slice())) {
            out.push(row);
        }
    };
    if plan.grouped {
        let mut index: HashMap<GroupKey, usize> = HashMap::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, rec) in records.iter().enumerate() {
            let key = GroupKey(plan.group_idx.iter().map(|&g| rec[g].clone()).collect());
            let n = groups.len();
            let g = *index.entry(key).or_insert(n);
            if g == n {
                groups.push(Vec::new());
            }
            groups[g].push(i);
        }
        for members in groups {
            let Some(&last) = members.last() else {
                continue;
            };
            let mut row = records[last].clone();
            row.resize(width, Value::Null);
            for (s, slot) in plan.aggs.iter().enumerate() {
                row[plan.n_in + m + s] = aggregate(slot, &members, &records)?;
            }
            finish(row, &mut out);
        }
    } else {
        for mut row in records {
            row.resize(width, Value::Null);
            finish(row, &mut out);
        }
    }
    if !plan.order.is_empty() {
        out.sort_by(|a, b| {
            for &(i, desc) in &plan.order {
                let o = sort_cmp(a[i].as_ref(), b[i].as_ref());
                let o = if desc { o.reverse() } else { o };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
    }
    let skip = query
        .offset
        .map_or(0, |o| usize::try_from(o).unwrap_or(usize::MAX));
    let take = query
        .limit
        .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let rows = out
        .into_iter()
        .skip(skip)
        .take(take)
        .map(|mut r| {
            r.truncate(plan.n_in + m);
            r.drain(..plan.n_in);
            r
        })
        .collect();
    Ok(ResultSet {
        columns: plan.columns,
        types: plan.types,
        rows,
    })
}

/// Group-by values with the engine's key equality (bitwise for floats, nulls equal).
#[derive(Debug)]
struct GroupKey(Vec<Value>);

impl Hash for GroupKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        for v in &self.0 {
            hash_key_value(v.as_ref(), h);
        }
    }
}

impl PartialEq for GroupKey {
    fn eq(&self, other: &GroupKey) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| key_eq(a.as_ref(), b.as_ref()))
    }
}

impl Eq for GroupKey {}

fn compile(query: &StoreQuery, layout: &Layout) -> Result<Plan, QueryError> {
    if query.aggregation != layout.aggregation {
        return Err(QueryError::UnknownAggregation {
            name: query.aggregation.clone(),
            available: layout.aggregation.clone(),
            pos: query.aggregation_pos,
        });
    }
    if !layout.granularities.contains(&query.per) {
        return Err(QueryError::GranularityNotKept {
            aggregation: layout.aggregation.clone(),
            per: query.per,
            kept: layout
                .granularities
                .iter()
                .map(|g| g.name())
                .collect::<Vec<_>>()
                .join(", "),
            pos: query.per_pos,
        });
    }
    let invalid = QueryError::Invalid;
    let mut in_names: Vec<&str> = vec![AGG_TIMESTAMP];
    let mut in_types = vec![AttrType::Long];
    for o in &layout.outputs {
        in_names.push(&o.name);
        in_types.push(o.ty);
    }
    let n_in = in_names.len();
    let unknown = |name: &str, pos: Pos, known: &[&str]| {
        ParseError::at(
            pos,
            format!("unknown attribute `{name}` (known: {})", known.join(", ")),
        )
    };
    let input = |name: &str| in_names.iter().position(|n| *n == name);
    let resolve_in = |name: &str, pos: Pos| {
        input(name)
            .map(|i| in_types[i])
            .ok_or_else(|| unknown(name, pos, &in_names))
    };
    let slot_in = |e: &Expr| match &e.kind {
        ExprKind::Attribute(name) => input(name).ok_or_else(|| unknown(name, e.pos, &in_names)),
        _ => Err(ParseError::at(
            e.pos,
            "aggregate functions cannot be nested",
        )),
    };

    let on = match &query.on {
        Some(e) => {
            match infer(
                e,
                &resolve_in,
                Calls::Forbidden("`on` filters records before aggregating; use `having`"),
            )
            .map_err(invalid)?
            {
                None | Some(AttrType::Bool) => {}
                Some(t) => {
                    return Err(invalid(ParseError::at(
                        e.pos,
                        format!("`on` must be a condition, `{e}` is {t}"),
                    )));
                }
            }
            Some(Compiled::new(e, &mut |a| slot_in(a)).map_err(invalid)?)
        }
        None => None,
    };

    let star: Vec<SelectItem>;
    let items: &[SelectItem] = match &query.select {
        Some(items) => items,
        None => {
            star = in_names
                .iter()
                .map(|n| SelectItem {
                    expr: Expr::new(ExprKind::Attribute((*n).to_owned()), query.aggregation_pos),
                    alias: None,
                })
                .collect();
            &star
        }
    };
    let m = items.len();
    let mut aggs: Vec<AggSlot> = Vec::new();
    let register = |e: &Expr, aggs: &mut Vec<AggSlot>| -> Result<usize, ParseError> {
        let ExprKind::Call(func, args) = &e.kind else {
            return slot_in(e);
        };
        let text = e.to_string();
        if let Some(i) = aggs.iter().position(|s| s.text == text) {
            return Ok(n_in + m + i);
        }
        let (arg, arg_ty) = match args.first() {
            Some(a) => (
                Some(Compiled::new(a, &mut |x| slot_in(x))?),
                infer(
                    a,
                    &resolve_in,
                    Calls::Forbidden("aggregate functions cannot be nested"),
                )?,
            ),
            None => (None, None),
        };
        aggs.push(AggSlot {
            text,
            func: *func,
            arg,
            ty: func.result_type(arg_ty),
        });
        Ok(n_in + m + aggs.len() - 1)
    };

    let mut columns: Vec<String> = Vec::new();
    let mut types = Vec::new();
    let mut exprs = Vec::new();
    for item in items {
        let e = &item.expr;
        let ty = infer(e, &resolve_in, Calls::Allowed)
            .map_err(invalid)?
            .unwrap_or(AttrType::String);
        let name = item.name();
        if columns.contains(&name) {
            return Err(invalid(ParseError::at(
                e.pos,
                format!("duplicate output name `{name}`"),
            )));
        }
        exprs.push(Compiled::new(e, &mut |x| register(x, &mut aggs)).map_err(invalid)?);
        columns.push(name);
        types.push(ty);
    }

    let group_idx = query
        .group_by
        .iter()
        .map(|g| input(&g.name).ok_or_else(|| invalid(unknown(&g.name, g.pos, &in_names))))
        .collect::<Result<Vec<_>, _>>()?;

    // having and order by see the selected names first, then the input attributes.
    let mut visible: Vec<&str> = columns.iter().map(String::as_str).collect();
    visible.extend(in_names.iter().filter(|n| !columns.iter().any(|c| c == *n)));
    let find = |name: &str| {
        columns
            .iter()
            .position(|c| c == name)
            .map(|j| (n_in + j, types[j]))
            .or_else(|| input(name).map(|i| (i, in_types[i])))
    };
    let having = match &query.having {
        Some(e) => {
            let resolve = |name: &str, pos: Pos| {
                find(name)
                    .map(|(_, t)| t)
                    .ok_or_else(|| unknown(name, pos, &visible))
            };
            match infer(e, &resolve, Calls::Allowed).map_err(invalid)? {
                None | Some(AttrType::Bool) => {}
                Some(t) => {
                    return Err(invalid(ParseError::at(
                        e.pos,
                        format!("`having` must be a condition, `{e}` is {t}"),
                    )));
                }
            }
            Some(
                Compiled::new(e, &mut |x| match &x.kind {
                    ExprKind::Attribute(name) => find(name)
                        .map(|(i, _)| i)
                        .ok_or_else(|| unknown(name, x.pos, &visible)),
                    _ => register(x, &mut aggs),
                })
                .map_err(invalid)?,
            )
        }
        None => None,
    };
    let order = query
        .order_by
        .iter()
        .map(|o| {
            find(&o.attribute)
                .map(|(i, _)| (i, o.descending))
                .ok_or_else(|| invalid(unknown(&o.attribute, o.pos, &visible)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan {
        n_in,
        on,
        grouped: !group_idx.is_empty() || !aggs.is_empty(),
        columns,
        types,
        exprs,
        aggs,
        group_idx,
        having,
        order,
    })
}

/// Merges the shards' rows of each `(bucket, keys)` in `[start, end)`, in bucket order.
fn merge_shards(
    mut rows: Vec<StoredRow>,
    layout: &Layout,
    start: i64,
    end: i64,
) -> Result<Vec<AggRow>, QueryError> {
    rows.retain(|r| (start..end).contains(&r.row.bucket));
    rows.sort_by(|a, b| {
        a.row
            .bucket
            .cmp(&b.row.bucket)
            .then_with(|| keys_cmp(&a.row.keys, &b.row.keys))
            .then_with(|| a.shard_id.cmp(&b.shard_id))
    });
    let mut out: Vec<AggRow> = Vec::new();
    for r in rows {
        match out.last_mut() {
            Some(last)
                if last.bucket == r.row.bucket
                    && keys_cmp(&last.keys, &r.row.keys) == Ordering::Equal =>
            {
                last.merge(&r.row, layout).map_err(|column| {
                    QueryError::Overflow(format!("`{column}` of the shards' rows merged"))
                })?;
            }
            _ => out.push(r.row),
        }
    }
    Ok(out)
}

/// `AGG_TIMESTAMP`, then the aggregation's outputs, typed as the layout says.
fn record(r: &AggRow, layout: &Layout) -> Vec<Value> {
    fn get(v: &[Value], i: usize) -> ValueRef<'_> {
        v.get(i).map_or(ValueRef::Null, Value::as_ref)
    }
    let mut rec = Vec::with_capacity(1 + layout.outputs.len());
    rec.push(Value::Long(r.bucket));
    for o in &layout.outputs {
        let v = match o.source {
            OutputSource::Key(i) => coerce(get(&r.keys, i), o.ty),
            OutputSource::Latest(i) => coerce(get(&r.latest, i), o.ty),
            OutputSource::Count => Value::Long(r.count),
            OutputSource::Measure(i) => coerce(get(&r.measures, i), o.ty),
            OutputSource::Avg { sum, count } => {
                let (s, c) = (get(&r.measures, sum), as_f64(get(&r.measures, count)));
                if s.is_null() || c.is_nan() || c == 0.0 {
                    Value::Null
                } else {
                    Value::Double(as_f64(s) / c)
                }
            }
        };
        rec.push(v);
    }
    rec
}

/// One aggregate call over a group's records.
fn aggregate(
    slot: &AggSlot,
    members: &[usize],
    records: &[Vec<Value>],
) -> Result<Value, QueryError> {
    let values = || {
        members.iter().filter_map(|&i| {
            let v = slot.arg.as_ref()?.eval(records[i].as_slice());
            (!v.is_null()).then_some(v)
        })
    };
    Ok(match slot.func {
        AggFunc::Count => Value::Long(i64::try_from(members.len()).unwrap_or(i64::MAX)),
        AggFunc::Sum if slot.ty == AttrType::Long => {
            let mut sum = None;
            for v in values() {
                let x = match v {
                    ValueRef::Int(x) => i64::from(x),
                    ValueRef::Long(x) => x,
                    _ => continue,
                };
                sum = Some(match sum {
                    None => x,
                    Some(s) => i64::checked_add(s, x)
                        .ok_or_else(|| QueryError::Overflow("a `sum` over a group".to_owned()))?,
                });
            }
            sum.map_or(Value::Null, Value::Long)
        }
        AggFunc::Sum => values()
            .map(as_f64)
            .reduce(|a, b| a + b)
            .map_or(Value::Null, Value::Double),
        AggFunc::Avg => {
            let (sum, n) = values().fold((0.0, 0.0), |(s, n), v| (s + as_f64(v), n + 1.0));
            if n == 0.0 {
                Value::Null
            } else {
                Value::Double(sum / n)
            }
        }
        AggFunc::Min => values()
            .min_by(|a, b| sort_cmp(*a, *b))
            .map_or(Value::Null, |v| coerce(v, slot.ty)),
        AggFunc::Max => values()
            .max_by(|a, b| sort_cmp(*a, *b))
            .map_or(Value::Null, |v| coerce(v, slot.ty)),
    })
}

#[cfg(test)]
mod tests;

//! The physical shape of an aggregation — its columns, as Siddhi names them — and the rows that
//! move between the engine, the store and retrieval.
//!
//! This module is the contract between the three: the engine ([`crate::engine`]) produces
//! [`Delta`]s shaped by a [`Layout`]; the store ([`crate::store`]) adds them to the
//! `<Agg>_<GRANULARITY>` tables and reads [`StoredRow`]s back; retrieval ([`crate::query`]) merges
//! the shards' rows with [`AggRow::merge`], the same rule the engine and the SQL upsert use.
//!
//! ```text
//! <Agg>_HOURS: AGG_TIMESTAMP | SHARD_ID? | AGG_EVENT_TIMESTAMP? | keys… | latest… |
//!              AGG_LAST_EVENT_TIMESTAMP | AGG_COUNT | measures…
//! primary key (AGG_TIMESTAMP, SHARD_ID?, AGG_EVENT_TIMESTAMP?, keys…)
//! ```

use std::sync::Arc;

use shardtally_publisher::protocol::{AttrType, Value};

use crate::bucket::Granularity;

/// One stored column: a group-by key or a latest-value attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name (the attribute name or the select alias).
    pub name: String,
    /// Its Siddhi type.
    pub ty: AttrType,
}

/// How a measure column combines when two partial aggregates meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasureKind {
    /// Added (`AGG_SUM_x`, and `AGG_COUNT_x` non-null counts for `avg`).
    Sum,
    /// Smallest wins (`AGG_MIN_x`); null loses to any value.
    Min,
    /// Largest wins (`AGG_MAX_x`); null loses to any value.
    Max,
}

/// A measure column after `AGG_COUNT`: `AGG_SUM_x`, `AGG_MIN_x`, `AGG_MAX_x`, `AGG_COUNT_x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measure {
    /// Column name, e.g. `AGG_SUM_price`.
    pub column: String,
    /// Merge rule.
    pub kind: MeasureKind,
    /// Stored type: `long` for sums of int/long and for counts, `double` for sums of
    /// float/double, the input type for min/max.
    pub ty: AttrType,
}

/// How one output attribute of the aggregation (a `select` item) is computed from a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSource {
    /// A group-by key: `keys[i]`.
    Key(usize),
    /// A non-aggregated attribute or expression, latest by event time: `latest[i]`.
    Latest(usize),
    /// `count()`: `AGG_COUNT`.
    Count,
    /// `sum(x)`, `min(x)`, `max(x)`: `measures[i]`.
    Measure(usize),
    /// `avg(x)`: `measures[sum] / measures[count]` (a double; null when the count is 0).
    Avg {
        /// Index of `AGG_SUM_x` in `measures`.
        sum: usize,
        /// Index of `AGG_COUNT_x` (non-null count of x) in `measures`.
        count: usize,
    },
}

/// One output attribute of the aggregation, in `select` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The name a store query uses (`totalRequestCount`, `country`).
    pub name: String,
    /// Where its value comes from.
    pub source: OutputSource,
    /// Result type, following Siddhi (count → long, avg → double, …).
    pub ty: AttrType,
}

/// The physical layout of one aggregation: identical for each of its granularity tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Aggregation name (`GeoLocationAgg`); tables are `<name>_<GRANULARITY>`.
    pub aggregation: String,
    /// Whether rows carry `SHARD_ID` (partitioned by id).
    pub partitioned: bool,
    /// Whether rows carry `AGG_EVENT_TIMESTAMP` (the app aggregates by an event-time attribute).
    pub event_time: bool,
    /// The granularities kept, finest first.
    pub granularities: Vec<Granularity>,
    /// Group-by columns, in `group by` order; part of the primary key.
    pub keys: Vec<Column>,
    /// Non-aggregated select items, kept from the latest event by event time.
    pub latest: Vec<Column>,
    /// Measure columns after `AGG_COUNT`.
    pub measures: Vec<Measure>,
    /// The aggregation's output attributes, in `select` order.
    pub outputs: Vec<Output>,
}

impl Layout {
    /// The table of one granularity.
    pub fn table(&self, granularity: Granularity) -> String {
        granularity.table_name(&self.aggregation)
    }
}

/// A partial aggregate for one bucket and one group: what a flush adds to a row, and what a row
/// holds. Value vectors follow the [`Layout`]'s `keys`, `latest` and `measures`.
#[derive(Debug, Clone, PartialEq)]
pub struct AggRow {
    /// Bucket start, epoch ms (`AGG_TIMESTAMP`, and `AGG_EVENT_TIMESTAMP` when event-timed).
    pub bucket: i64,
    /// Group-by values: shared by every row of the group (a drain hands the same key to each
    /// granularity's row instead of copying its strings).
    pub keys: Arc<[Value]>,
    /// Event time of the latest event seen (`AGG_LAST_EVENT_TIMESTAMP`).
    pub last_event_ts: i64,
    /// Latest-value attributes, from the event at `last_event_ts`.
    pub latest: Vec<Value>,
    /// `AGG_COUNT`: events in this partial aggregate.
    pub count: i64,
    /// Measure values.
    pub measures: Vec<Value>,
}

impl AggRow {
    /// Adds `other` (same bucket and keys) into `self`: counts and sums add, min/max keep the
    /// extreme (null loses), latest values come from whichever saw the later event (ties: `other`,
    /// the newer write, wins — the same rule as the SQL upsert).
    ///
    /// Fails, naming the column (`AGG_COUNT`, `AGG_SUM_x`), when the count or a sum of longs
    /// would leave the 64-bit range; `self` is then partly merged.
    pub fn merge(&mut self, other: &AggRow, layout: &Layout) -> Result<(), String> {
        self.count = self
            .count
            .checked_add(other.count)
            .ok_or_else(|| "AGG_COUNT".to_owned())?;
        for ((mine, theirs), m) in self
            .measures
            .iter_mut()
            .zip(&other.measures)
            .zip(&layout.measures)
        {
            *mine = checked_combine(m.kind, mine, theirs).ok_or_else(|| m.column.clone())?;
        }
        if other.last_event_ts >= self.last_event_ts {
            self.last_event_ts = other.last_event_ts;
            self.latest.clone_from(&other.latest);
        }
        Ok(())
    }
}

/// Combines two measure values by `kind`, or `None` when a sum of longs leaves the 64-bit range
/// (never a wrapped total). Numeric types are those of the layout; a null on either side yields
/// the other.
pub fn checked_combine(kind: MeasureKind, a: &Value, b: &Value) -> Option<Value> {
    use Value::*;
    Some(match (a, b) {
        (Null, x) | (x, Null) => x.clone(),
        _ => match kind {
            MeasureKind::Sum => match (a, b) {
                (Long(x), Long(y)) => Long(x.checked_add(*y)?),
                (Int(x), Int(y)) => Long(i64::from(*x) + i64::from(*y)),
                _ => Double(as_f64(a) + as_f64(b)),
            },
            MeasureKind::Min => {
                if less(b, a) {
                    b.clone()
                } else {
                    a.clone()
                }
            }
            MeasureKind::Max => {
                if less(a, b) {
                    b.clone()
                } else {
                    a.clone()
                }
            }
        },
    })
}

/// A numeric value as f64 (non-numbers as NaN).
pub fn as_f64(v: &Value) -> f64 {
    match v {
        Value::Int(x) => f64::from(*x),
        #[allow(clippy::cast_precision_loss)]
        Value::Long(x) => *x as f64,
        Value::Float(x) => f64::from(*x),
        Value::Double(x) => *x,
        _ => f64::NAN,
    }
}

/// Total order used by min/max for values of one type (strings by bytes, bools false < true).
pub fn less(a: &Value, b: &Value) -> bool {
    use Value::*;
    match (a, b) {
        (String(x), String(y)) => x < y,
        (Int(x), Int(y)) => x < y,
        (Long(x), Long(y)) => x < y,
        (Bool(x), Bool(y)) => !x & y,
        _ => as_f64(a) < as_f64(b),
    }
}

/// The deltas of one flush for one aggregation: rows to add, per granularity. Within one
/// granularity, each `(bucket, keys)` appears at most once.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Delta {
    /// Rows per granularity, in the layout's granularity order.
    pub rows: Vec<(Granularity, Vec<AggRow>)>,
}

impl Delta {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.rows.iter().all(|(_, r)| r.is_empty())
    }

    /// Total rows across granularities.
    pub fn row_count(&self) -> usize {
        self.rows.iter().map(|(_, r)| r.len()).sum()
    }
}

/// A row read back from one shard's table.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    /// `SHARD_ID`, or `None` for an unpartitioned aggregation.
    pub shard_id: Option<String>,
    /// The partial aggregate.
    pub row: AggRow,
}

//! The incremental aggregator: folds events into partial aggregates per bucket and group, and
//! hands them out as [`Delta`]s.
//!
//! Events fold into the layout's finest granularity only — one hash lookup per event, by borrowed
//! values, without allocating for a group already seen. [`Aggregator::drain`] rolls the finest
//! rows up into every coarser granularity, so all granularities of one delta agree by
//! construction (calendar buckets nest: seconds ⊂ minutes ⊂ … ⊂ years).

use std::hash::{Hash, Hasher};

use hashbrown::{Equivalent, HashMap};
use shardtally_publisher::protocol::{AttrType, Value, ValueRef};

use super::plan::{Fold, plan};
use crate::bucket::Granularity;
use crate::layout::{AggRow, Delta, Layout, combine, less};
use crate::siddhi::eval::{Compiled, as_f64, assign, coerce, hash_key_value, key_eq, keys_cmp};
use crate::siddhi::{AggregationDef, App, Expr, ParseError};

/// The earliest event time the aggregator buckets by (0001-01-01T00:00:00Z, epoch ms).
pub const MIN_EVENT_TIME_MS: i64 = -62_135_596_800_000;
/// The latest event time the aggregator buckets by (9999-12-31T23:59:59.999Z, epoch ms).
pub const MAX_EVENT_TIME_MS: i64 = 253_402_300_799_999;

/// Why an [`Aggregator`] cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The aggregation reads a stream the app does not define.
    #[error("aggregation `{aggregation}` reads unknown stream `{stream}`")]
    UnknownStream {
        /// The aggregation.
        aggregation: String,
        /// The stream it names.
        stream: String,
    },
    /// An expression names an attribute the stream does not have.
    #[error("aggregation `{aggregation}`: {source}")]
    Invalid {
        /// The aggregation.
        aggregation: String,
        /// What is wrong and where.
        source: ParseError,
    },
    /// The layout given is not the one this definition produces (apart from `partitioned`).
    #[error("the layout given for aggregation `{aggregation}` does not match its definition")]
    LayoutMismatch {
        /// The aggregation.
        aggregation: String,
    },
}

/// Where a value to fold comes from.
#[derive(Debug, Clone)]
enum Arg {
    /// An attribute of the event, read without copying.
    Slot(usize),
    /// An expression over the event.
    Expr(Compiled),
}

impl Arg {
    fn eval<'a>(&'a self, event: &'a [ValueRef<'a>]) -> ValueRef<'a> {
        match self {
            Arg::Slot(i) => event.get(*i).copied().unwrap_or(ValueRef::Null),
            Arg::Expr(c) => c.eval(event),
        }
    }
}

#[derive(Debug, Clone)]
struct MeasureFold {
    fold: Fold,
    ty: AttrType,
    arg: Arg,
}

/// A finest-granularity row's identity: bucket start and group-by values.
#[derive(Debug, Clone)]
struct RowKey {
    bucket: i64,
    keys: Box<[Value]>,
}

impl Hash for RowKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_i64(self.bucket);
        for k in &self.keys {
            hash_key_value(k.as_ref(), h);
        }
    }
}

impl PartialEq for RowKey {
    fn eq(&self, other: &RowKey) -> bool {
        self.bucket == other.bucket
            && self.keys.len() == other.keys.len()
            && self
                .keys
                .iter()
                .zip(&other.keys)
                .all(|(a, b)| key_eq(a.as_ref(), b.as_ref()))
    }
}

impl Eq for RowKey {}

/// A [`RowKey`] seen through an event, without copying its values.
struct Probe<'a, 'e> {
    bucket: i64,
    event: &'a [ValueRef<'e>],
    key_idx: &'a [usize],
}

impl Probe<'_, '_> {
    fn key(&self, i: usize) -> ValueRef<'_> {
        self.event.get(i).copied().unwrap_or(ValueRef::Null)
    }
}

impl Hash for Probe<'_, '_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_i64(self.bucket);
        for &i in self.key_idx {
            hash_key_value(self.key(i), h);
        }
    }
}

impl Equivalent<RowKey> for Probe<'_, '_> {
    fn equivalent(&self, key: &RowKey) -> bool {
        self.bucket == key.bucket
            && self.key_idx.len() == key.keys.len()
            && self
                .key_idx
                .iter()
                .zip(&key.keys)
                .all(|(&i, k)| key_eq(self.key(i), k.as_ref()))
    }
}

/// A partial aggregate being built (the row minus its identity).
#[derive(Debug, Clone)]
struct Acc {
    last_event_ts: i64,
    /// Record order of the event that set `latest` (breaks event-time ties: later wins).
    seq: u64,
    latest: Vec<Value>,
    count: i64,
    measures: Vec<Value>,
}

/// The incremental aggregator of one aggregation. Pure and synchronous: [`record`] events,
/// [`drain`] deltas.
///
/// [`record`]: Aggregator::record
/// [`drain`]: Aggregator::drain
#[derive(Debug, Clone)]
pub struct Aggregator {
    layout: Layout,
    finest: Option<Granularity>,
    key_idx: Vec<usize>,
    time_idx: Option<usize>,
    filter: Option<Compiled>,
    measures: Vec<MeasureFold>,
    latest: Vec<Arg>,
    rows: HashMap<RowKey, Acc>,
    seq: u64,
}

impl Aggregator {
    /// Builds the aggregator of `agg` (from `app`), producing rows shaped by `layout` (from
    /// [`super::layout`]; its `partitioned` flag is not the aggregator's business).
    pub fn new(app: &App, agg: &AggregationDef, layout: Layout) -> Result<Aggregator, EngineError> {
        let Some(stream) = app.stream(&agg.stream) else {
            return Err(EngineError::UnknownStream {
                aggregation: agg.name.clone(),
                stream: agg.stream.clone(),
            });
        };
        let plan = plan(stream, agg, layout.partitioned);
        if plan.layout != layout {
            return Err(EngineError::LayoutMismatch {
                aggregation: agg.name.clone(),
            });
        }
        let invalid = |source: ParseError| EngineError::Invalid {
            aggregation: agg.name.clone(),
            source,
        };
        let position = |name: &str, pos| {
            stream
                .position(name)
                .ok_or_else(|| ParseError::at(pos, format!("unknown attribute `{name}`")))
        };
        let arg = |e: &Expr| -> Result<Arg, ParseError> {
            Ok(match e.as_attribute() {
                Some(name) => Arg::Slot(position(name, e.pos)?),
                None => Arg::Expr(Compiled::new(e, &mut |a| match a.as_attribute() {
                    Some(name) => position(name, a.pos),
                    None => Err(ParseError::at(a.pos, "aggregate calls cannot be nested")),
                })?),
            })
        };
        let key_idx = agg
            .group_by
            .iter()
            .map(|g| position(g, agg.pos))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let time_idx = match &agg.aggregate_by {
            Some(t) => Some(position(t, agg.pos).map_err(invalid)?),
            None => None,
        };
        let filter = match &agg.filter {
            Some(f) => match arg(f).map_err(invalid)? {
                Arg::Slot(i) => Some(Compiled::Slot(i)),
                Arg::Expr(c) => Some(c),
            },
            None => None,
        };
        let measures = plan
            .measures
            .iter()
            .zip(&layout.measures)
            .map(|(m, col)| {
                Ok(MeasureFold {
                    fold: m.fold,
                    ty: col.ty,
                    arg: arg(&m.arg)?,
                })
            })
            .collect::<Result<Vec<_>, ParseError>>()
            .map_err(invalid)?;
        let latest = plan
            .latest
            .iter()
            .map(arg)
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        Ok(Aggregator {
            finest: layout.granularities.iter().min().copied(),
            layout,
            key_idx,
            time_idx,
            filter,
            measures,
            latest,
            rows: HashMap::new(),
            seq: 0,
        })
    }

    /// The layout of the rows this aggregator produces.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Folds one event, given in the stream's attribute order (missing trailing attributes read
    /// as null), that arrived at `arrival_ms`.
    ///
    /// The event time is the `aggregate by` attribute, or `arrival_ms` without one. An event
    /// whose event-time value is null, or outside [`MIN_EVENT_TIME_MS`]..=[`MAX_EVENT_TIME_MS`],
    /// is bucketed by its arrival time instead (so it is still counted; callers wanting to
    /// refuse such events check [`Aggregator::event_time`] first). Events failing the
    /// aggregation's filter are skipped.
    pub fn record(&mut self, event: &[ValueRef<'_>], arrival_ms: i64) {
        let Some(finest) = self.finest else {
            return;
        };
        if let Some(f) = &self.filter
            && !f.test(event)
        {
            return;
        }
        let ts = self.event_time(event).unwrap_or(arrival_ms);
        let bucket = finest.bucket_start(ts.clamp(MIN_EVENT_TIME_MS, MAX_EVENT_TIME_MS));
        self.seq += 1;
        let seq = self.seq;
        let probe = Probe {
            bucket,
            event,
            key_idx: &self.key_idx,
        };
        if let Some(acc) = self.rows.get_mut(&probe) {
            fold(acc, &self.measures, &self.latest, event, ts, seq);
            return;
        }
        let mut acc = Acc {
            last_event_ts: i64::MIN,
            seq: 0,
            latest: vec![Value::Null; self.latest.len()],
            count: 0,
            // Non-null counts start at 0; sums, minima and maxima stay null until a value comes.
            measures: self
                .measures
                .iter()
                .map(|m| match m.fold {
                    Fold::CountNonNull => Value::Long(0),
                    _ => Value::Null,
                })
                .collect(),
        };
        fold(&mut acc, &self.measures, &self.latest, event, ts, seq);
        let keys = self
            .key_idx
            .iter()
            .map(|&i| probe.key(i).to_owned_value())
            .collect();
        self.rows.insert(RowKey { bucket, keys }, acc);
    }

    /// The event time `event` carries: its `aggregate by` value when that is a number within
    /// [`MIN_EVENT_TIME_MS`]..=[`MAX_EVENT_TIME_MS`]; `None` for arrival-time aggregations and
    /// for null or out-of-range values (which [`Aggregator::record`] buckets by arrival time).
    pub fn event_time(&self, event: &[ValueRef<'_>]) -> Option<i64> {
        let v = match event.get(self.time_idx?)? {
            ValueRef::Long(v) => *v,
            ValueRef::Int(v) => i64::from(*v),
            _ => return None,
        };
        (MIN_EVENT_TIME_MS..=MAX_EVENT_TIME_MS)
            .contains(&v)
            .then_some(v)
    }

    /// How many finest-granularity rows are pending; the next [`drain`](Aggregator::drain)
    /// returns at most this many rows per granularity.
    pub fn pending_rows(&self) -> usize {
        self.rows.len()
    }

    /// Returns and clears everything recorded since the last drain: for each granularity of the
    /// layout (finest first), one row per `(bucket, keys)`, sorted by bucket then keys (so
    /// concurrent writers upsert rows in one order).
    pub fn drain(&mut self) -> Delta {
        let mut level: Vec<(AggRow, u64)> = self
            .rows
            .drain()
            .map(|(k, acc)| {
                (
                    AggRow {
                        bucket: k.bucket,
                        keys: k.keys.into_vec(),
                        last_event_ts: acc.last_event_ts,
                        latest: acc.latest,
                        count: acc.count,
                        measures: acc.measures,
                    },
                    acc.seq,
                )
            })
            .collect();
        level.sort_by(|(a, _), (b, _)| {
            a.bucket
                .cmp(&b.bucket)
                .then_with(|| keys_cmp(&a.keys, &b.keys))
        });
        let mut grans = self.layout.granularities.clone();
        grans.sort();
        grans.dedup();
        let mut rows = Vec::with_capacity(grans.len());
        for (i, g) in grans.iter().enumerate() {
            let next = match grans.get(i + 1) {
                Some(coarser) => roll_up(&level, *coarser, &self.layout),
                None => Vec::new(),
            };
            rows.push((*g, level.into_iter().map(|(r, _)| r).collect()));
            level = next;
        }
        Delta { rows }
    }
}

fn fold(
    acc: &mut Acc,
    measures: &[MeasureFold],
    latest: &[Arg],
    event: &[ValueRef<'_>],
    ts: i64,
    seq: u64,
) {
    acc.count += 1;
    for (slot, m) in acc.measures.iter_mut().zip(measures) {
        fold_measure(m.fold, m.ty, slot, m.arg.eval(event));
    }
    // Same event time as the current latest: the later-recorded event wins.
    if ts >= acc.last_event_ts {
        acc.last_event_ts = ts;
        acc.seq = seq;
        for (slot, a) in acc.latest.iter_mut().zip(latest) {
            assign(slot, a.eval(event));
        }
    }
}

fn fold_measure(fold: Fold, ty: AttrType, slot: &mut Value, v: ValueRef<'_>) {
    match fold {
        Fold::CountNonNull => {
            if !v.is_null() {
                *slot = Value::Long(match slot {
                    Value::Long(n) => n.wrapping_add(1),
                    _ => 1,
                });
            }
        }
        Fold::Sum if ty == AttrType::Long => {
            let x = match v {
                ValueRef::Int(x) => i64::from(x),
                ValueRef::Long(x) => x,
                _ => return,
            };
            *slot = Value::Long(match slot {
                Value::Long(s) => s.wrapping_add(x),
                _ => x,
            });
        }
        Fold::Sum => {
            let x = match v {
                ValueRef::Int(_) | ValueRef::Long(_) | ValueRef::Float(_) | ValueRef::Double(_) => {
                    as_f64(v)
                }
                _ => return,
            };
            *slot = Value::Double(match slot {
                Value::Double(s) => *s + x,
                _ => x,
            });
        }
        Fold::Min | Fold::Max => {
            let c = coerce(v, ty);
            if c.is_null() {
                return;
            }
            let replace = slot.is_null()
                || match fold {
                    Fold::Min => less(&c, slot),
                    _ => less(slot, &c),
                };
            if replace {
                *slot = c;
            }
        }
    }
}

/// Merges the rows of one granularity into the buckets of the coarser `g`.
fn roll_up(level: &[(AggRow, u64)], g: Granularity, layout: &Layout) -> Vec<(AggRow, u64)> {
    let mut order: Vec<(i64, usize)> = level
        .iter()
        .enumerate()
        .map(|(i, (r, _))| (g.bucket_start(r.bucket), i))
        .collect();
    order.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| keys_cmp(&level[a.1].0.keys, &level[b.1].0.keys))
    });
    let mut out: Vec<(AggRow, u64)> = Vec::new();
    for (bucket, i) in order {
        let (row, seq) = &level[i];
        match out.last_mut() {
            Some((acc, acc_seq))
                if acc.bucket == bucket
                    && keys_cmp(&acc.keys, &row.keys) == std::cmp::Ordering::Equal =>
            {
                acc.count += row.count;
                for ((mine, theirs), m) in acc
                    .measures
                    .iter_mut()
                    .zip(&row.measures)
                    .zip(&layout.measures)
                {
                    *mine = combine(m.kind, mine, theirs);
                }
                if (row.last_event_ts, *seq) > (acc.last_event_ts, *acc_seq) {
                    acc.last_event_ts = row.last_event_ts;
                    *acc_seq = *seq;
                    acc.latest.clone_from(&row.latest);
                }
            }
            _ => {
                let mut r = row.clone();
                r.bucket = bucket;
                out.push((r, *seq));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;

//! The incremental aggregator: folds events into partial aggregates per bucket and group, and
//! hands them out as [`Delta`]s.
//!
//! Events fold into the layout's finest granularity only. Group-by values are interned once per
//! distinct group (a lookup by borrowed values, no allocation for a group already seen — groups
//! stay interned across drains), and rows are keyed by `(bucket, group id)`: two hash lookups
//! per event, no string copies. Row state lives in flat vectors, so a new row allocates only
//! what its latest values own. [`Aggregator::drain`] orders the groups once, then sorts and
//! rolls the finest rows up into every coarser granularity on integers, so all granularities of
//! one delta agree by construction (calendar buckets nest: seconds ⊂ minutes ⊂ … ⊂ years).

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use hashbrown::hash_map::Entry;
use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use shardtally_publisher::protocol::{AttrType, Value, ValueRef};

use super::plan::{Fold, plan};
use crate::bucket::Granularity;
use crate::layout::{AggRow, Delta, Layout, checked_combine, less};
use crate::siddhi::eval::{Compiled, as_f64, assign, coerce, hash_key_value, key_eq, keys_cmp};
use crate::siddhi::{AggregationDef, App, Expr, ParseError};

/// The earliest event time the aggregator buckets by (0001-01-01T00:00:00Z, epoch ms).
pub const MIN_EVENT_TIME_MS: i64 = -62_135_596_800_000;
/// The latest event time the aggregator buckets by (9999-12-31T23:59:59.999Z, epoch ms).
pub const MAX_EVENT_TIME_MS: i64 = 253_402_300_799_999;

/// Why an [`Aggregator`] cannot be built, or cannot hand out its rows.
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
    /// A sum of longs left the 64-bit range among the events recorded since the last drain (in
    /// one row, or in a coarser row adding several). Those events' rows are not handed out: a
    /// database would refuse the same sum, and a wrapped one would be a wrong total.
    #[error("aggregation `{aggregation}`: the sum in `{column}` overflows a 64-bit long")]
    SumOverflow {
        /// The aggregation.
        aggregation: String,
        /// The measure's column (`AGG_SUM_x`).
        column: String,
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

/// Interned group-by value tuples: each distinct tuple gets a dense id, kept across drains (up
/// to [`GROUPS_RETAINED`] of them, taking up to [`GROUPS_RETAINED_BYTES`]).
#[derive(Debug, Clone)]
struct Groups {
    hasher: DefaultHashBuilder,
    /// Ids, hashed by their values.
    table: HashTable<u32>,
    /// Values by id.
    keys: Vec<Arc<[Value]>>,
    /// About what `table` and `keys` take ([`Groups::footprint`] per group).
    bytes: usize,
    /// Past this many bytes, a drain forgets every group ([`GROUPS_RETAINED_BYTES`]).
    retained_bytes: usize,
}

/// Interned groups kept across drains; past this many, a drain forgets them all.
const GROUPS_RETAINED: usize = 1 << 20;

/// The memory interned groups may keep across drains, as [`Groups::footprint`] estimates it;
/// past it, a drain forgets them all. Key strings may be up to 254 characters each: 2²⁰ groups
/// of three such keys would hold ~800 MB, where the count bound alone was meant to keep ~100 MB
/// of short keys (2²⁰ groups of two short strings: ~115 MB estimated, so short keys still reach
/// the count first). A worker's other memory is bounded by its pending rows and events.
const GROUPS_RETAINED_BYTES: usize = 128 << 20;

impl Default for Groups {
    fn default() -> Groups {
        Groups {
            hasher: DefaultHashBuilder::default(),
            table: HashTable::new(),
            keys: Vec::new(),
            bytes: 0,
            retained_bytes: GROUPS_RETAINED_BYTES,
        }
    }
}

impl Groups {
    fn hash_event(&self, event: &[ValueRef<'_>], key_idx: &[usize]) -> u64 {
        let mut h = self.hasher.build_hasher();
        for &i in key_idx {
            hash_key_value(event.get(i).copied().unwrap_or(ValueRef::Null), &mut h);
        }
        h.finish()
    }

    fn hash_values(hasher: &DefaultHashBuilder, keys: &[Value]) -> u64 {
        let mut h = hasher.build_hasher();
        for k in keys {
            hash_key_value(k.as_ref(), &mut h);
        }
        h.finish()
    }

    /// The id of the event's group, interning it when new.
    fn id(&mut self, event: &[ValueRef<'_>], key_idx: &[usize]) -> u32 {
        let hash = self.hash_event(event, key_idx);
        let keys = &self.keys;
        let found = self.table.find(hash, |&id| {
            let stored = &keys[id as usize];
            key_idx
                .iter()
                .zip(stored.iter())
                .all(|(&i, k)| key_eq(event.get(i).copied().unwrap_or(ValueRef::Null), k.as_ref()))
        });
        if let Some(&id) = found {
            return id;
        }
        // Ids are dense and bounded by GROUPS_RETAINED between drains in practice; a u32
        // overflow would need four billion distinct groups in one flush.
        let id = u32::try_from(self.keys.len()).unwrap_or(u32::MAX);
        self.keys.push(
            key_idx
                .iter()
                .map(|&i| {
                    event
                        .get(i)
                        .copied()
                        .unwrap_or(ValueRef::Null)
                        .to_owned_value()
                })
                .collect(),
        );
        self.bytes += Groups::footprint(&self.keys[id as usize]);
        let (hasher, keys) = (&self.hasher, &self.keys);
        self.table.insert_unique(hash, id, |&id| {
            Groups::hash_values(hasher, &keys[id as usize])
        });
        id
    }

    /// Each group's rank in key order ([`keys_cmp`]).
    fn ranks(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.keys.len())
            .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
            .collect();
        order.sort_unstable_by(|&a, &b| keys_cmp(&self.keys[a as usize], &self.keys[b as usize]));
        let mut rank = vec![0u32; order.len()];
        for (r, &id) in order.iter().enumerate() {
            rank[id as usize] = u32::try_from(r).unwrap_or(u32::MAX);
        }
        rank
    }

    /// About what one interned group takes: its strings, its values, the `Arc`'s counts, its
    /// slots in `keys` and `table` (not the allocator's or the table's slack, nor the capacity
    /// `clear` keeps for the next groups).
    fn footprint(key: &[Value]) -> usize {
        let strings: usize = key
            .iter()
            .map(|v| match v {
                Value::String(s) => s.len(),
                _ => 0,
            })
            .sum();
        strings
            + std::mem::size_of_val(key)
            + 2 * std::mem::size_of::<usize>()
            + std::mem::size_of::<Arc<[Value]>>()
            + std::mem::size_of::<u32>()
            + 1
    }

    /// Whether the groups outgrew what is kept across drains.
    fn outgrown(&self) -> bool {
        self.keys.len() > GROUPS_RETAINED || self.bytes > self.retained_bytes
    }

    fn clear(&mut self) {
        self.table.clear();
        self.keys.clear();
        self.bytes = 0;
    }
}

/// A finest-granularity row's identity: bucket start and group id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RowId {
    bucket: i64,
    group: u32,
}

/// A partial aggregate being built (the row minus its identity); its latest values and measures
/// are in the aggregator's flat vectors, at the row's index.
#[derive(Debug, Clone, Copy)]
struct Acc {
    last_event_ts: i64,
    /// Record order of the event that set `latest` (breaks event-time ties: later wins).
    seq: u64,
    count: i64,
}

/// What the pending finest rows span, for [`Aggregator::drain_rows_bound`]: the groups they
/// belong to and, per coarser granularity, the buckets they fall in. Updated once per new
/// finest row (not per event); for events in time order the buckets cost one range check.
#[derive(Debug, Clone, Default)]
struct Span {
    /// `touched[group] == epoch`: the group has a pending row.
    touched: Vec<u32>,
    /// Starts at 1 (0 = never touched); a drain moves on to the next.
    epoch: u32,
    /// Groups with a pending row.
    groups: usize,
    /// One per granularity coarser than the finest.
    coarser: Vec<CoarserBuckets>,
}

#[derive(Debug, Clone)]
struct CoarserBuckets {
    granularity: Granularity,
    /// The last bucket noted, `[start, end)`, to skip the set for rows in the same bucket.
    last: (i64, i64),
    /// Every bucket noted since the last drain.
    seen: hashbrown::HashSet<i64>,
}

impl Span {
    fn new(coarser: impl Iterator<Item = Granularity>) -> Span {
        Span {
            touched: Vec::new(),
            epoch: 1,
            groups: 0,
            coarser: coarser
                .map(|granularity| CoarserBuckets {
                    granularity,
                    last: (0, 0),
                    seen: hashbrown::HashSet::new(),
                })
                .collect(),
        }
    }

    /// Notes a new finest row: `bucket` (its start) of `group`.
    fn note(&mut self, group: u32, bucket: i64) {
        let g = group as usize;
        if g >= self.touched.len() {
            self.touched.resize(g + 1, 0);
        }
        if self.touched[g] != self.epoch {
            self.touched[g] = self.epoch;
            self.groups += 1;
        }
        for c in &mut self.coarser {
            if !(c.last.0 <= bucket && bucket < c.last.1) {
                let start = c.granularity.bucket_start(bucket);
                c.last = (start, c.granularity.next_bucket(start));
                c.seen.insert(start);
            }
        }
    }

    /// The bound on the rows a drain of `finest` pending rows returns (see
    /// [`Aggregator::drain_rows_bound`]).
    fn bound(&self, finest: usize) -> usize {
        self.coarser.iter().fold(finest, |n, c| {
            n.saturating_add(finest.min(self.groups.saturating_mul(c.seen.len())))
        })
    }

    /// Forgets the pending rows (a drain took them). `groups_forgotten`: the group ids restart.
    fn reset(&mut self, groups_forgotten: bool) {
        self.groups = 0;
        for c in &mut self.coarser {
            c.last = (0, 0);
            c.seen.clear();
        }
        if groups_forgotten {
            self.touched.clear();
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.touched.fill(0);
            self.epoch = 1;
        }
    }
}

/// A row of one level of a drain: its identity, and where its values come from.
#[derive(Debug, Clone)]
struct LevelRow {
    bucket: i64,
    rank: u32,
    group: u32,
    acc: Acc,
    /// The finest row whose latest values this row carries.
    latest_from: usize,
    /// Measures (finest level: empty, they are in the flat vector at `latest_from`).
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
    /// The layout's granularities, finest first, each once.
    granularities: Vec<Granularity>,
    key_idx: Vec<usize>,
    time_idx: Option<usize>,
    filter: Option<Compiled>,
    measures: Vec<MeasureFold>,
    latest: Vec<Arg>,
    groups: Groups,
    rows: HashMap<RowId, u32>,
    accs: Vec<Acc>,
    /// Latest values of every row, `latest.len()` per row.
    latest_values: Vec<Value>,
    /// Measure values of every row, `measures.len()` per row.
    measure_values: Vec<Value>,
    span: Span,
    seq: u64,
    /// The first measure (index) whose long sum overflowed since the last drain.
    overflow: Option<usize>,
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
        let mut granularities = layout.granularities.clone();
        granularities.sort();
        granularities.dedup();
        Ok(Aggregator {
            span: Span::new(granularities.iter().skip(1).copied()),
            granularities,
            layout,
            key_idx,
            time_idx,
            filter,
            measures,
            latest,
            groups: Groups::default(),
            rows: HashMap::new(),
            accs: Vec::new(),
            latest_values: Vec::new(),
            measure_values: Vec::new(),
            seq: 0,
            overflow: None,
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
        let Some(&finest) = self.granularities.first() else {
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
        let group = self.groups.id(event, &self.key_idx);
        let (nl, nm) = (self.latest.len(), self.measures.len());
        let row = match self.rows.entry(RowId { bucket, group }) {
            Entry::Occupied(o) => *o.get() as usize,
            Entry::Vacant(v) => {
                let row = self.accs.len();
                v.insert(u32::try_from(row).unwrap_or(u32::MAX));
                self.span.note(group, bucket);
                self.accs.push(Acc {
                    last_event_ts: i64::MIN,
                    seq: 0,
                    count: 0,
                });
                self.latest_values
                    .resize(self.latest_values.len() + nl, Value::Null);
                // Non-null counts start at 0; sums, minima and maxima stay null until a value
                // comes.
                self.measure_values
                    .extend(self.measures.iter().map(|m| match m.fold {
                        Fold::CountNonNull => Value::Long(0),
                        _ => Value::Null,
                    }));
                row
            }
        };
        let overflow = fold(
            &mut self.accs[row],
            &mut self.latest_values[row * nl..(row + 1) * nl],
            &mut self.measure_values[row * nm..(row + 1) * nm],
            &self.measures,
            &self.latest,
            event,
            ts,
            seq,
        );
        self.overflow = self.overflow.or(overflow);
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

    /// An upper bound on the rows the next [`drain`](Aggregator::drain) returns, over every
    /// granularity: the finest rows, plus for each coarser granularity the smaller of that
    /// count and (groups with a pending row × distinct buckets of that granularity they fall
    /// in) — exact for one group, or where each coarser level's rows fall in one bucket. What
    /// a commit of these rows will write: [`pending_rows`](Aggregator::pending_rows) counts
    /// the finest level only, which misjudges a commit both ways — many keys make every finest
    /// row several coarser ones, few keys over a long span (a replay) many finest rows a few.
    pub fn drain_rows_bound(&self) -> usize {
        self.span.bound(self.rows.len())
    }

    /// Returns and clears everything recorded since the last drain: for each granularity of the
    /// layout (finest first), one row per `(bucket, keys)`, sorted by bucket then keys (so
    /// concurrent writers upsert rows in one order).
    ///
    /// # Errors
    ///
    /// [`EngineError::SumOverflow`] when a long sum of these rows left the 64-bit range; what
    /// was recorded is cleared all the same.
    pub fn drain(&mut self) -> Result<Delta, EngineError> {
        let grans = &self.granularities;
        let (nl, nm) = (self.latest.len(), self.measures.len());
        let rank = self.groups.ranks();
        // Sorted as small (bucket, rank, group, row) tuples, then made into rows.
        let mut order: Vec<(i64, u32, u32, u32)> = self
            .rows
            .drain()
            .map(|(id, row)| (id.bucket, rank[id.group as usize], id.group, row))
            .collect();
        order.sort_unstable_by_key(|&(bucket, rank, ..)| (bucket, rank));
        let finest: Vec<LevelRow> = order
            .into_iter()
            .map(|(bucket, rank, group, row)| {
                let row = row as usize;
                LevelRow {
                    bucket,
                    rank,
                    group,
                    acc: self.accs[row],
                    latest_from: row,
                    measures: Vec::new(),
                }
            })
            .collect();
        // Coarser levels, each rolled up from the one before.
        let mut coarse: Vec<(Granularity, Vec<LevelRow>)> = Vec::with_capacity(grans.len());
        for g in grans.iter().skip(1) {
            let below = coarse.last().map_or(&finest, |(_, rows)| rows);
            let rolled = roll_up(
                below,
                *g,
                &self.layout,
                &self.measure_values,
                nm,
                &mut self.overflow,
            );
            coarse.push((*g, rolled));
        }
        let mut latest_values = std::mem::take(&mut self.latest_values);
        let mut measure_values = std::mem::take(&mut self.measure_values);
        let keys = &self.groups.keys;
        let row_of = |r: &LevelRow, latest: Vec<Value>, measures: Vec<Value>| AggRow {
            bucket: r.bucket,
            keys: Arc::clone(&keys[r.group as usize]),
            last_event_ts: r.acc.last_event_ts,
            latest,
            count: r.acc.count,
            measures,
        };
        let mut rows = Vec::with_capacity(grans.len());
        // Coarse rows copy the latest values of their finest row; the finest rows take theirs.
        let mut coarse_rows: Vec<(Granularity, Vec<AggRow>)> = coarse
            .into_iter()
            .map(|(g, level)| {
                let out = level
                    .into_iter()
                    .map(|mut r| {
                        let latest =
                            latest_values[r.latest_from * nl..(r.latest_from + 1) * nl].to_vec();
                        let measures = std::mem::take(&mut r.measures);
                        row_of(&r, latest, measures)
                    })
                    .collect();
                (g, out)
            })
            .collect();
        if let Some(&g) = grans.first() {
            let out = finest
                .iter()
                .map(|r| {
                    let i = r.latest_from;
                    let latest = latest_values[i * nl..(i + 1) * nl]
                        .iter_mut()
                        .map(std::mem::take)
                        .collect();
                    let measures = measure_values[i * nm..(i + 1) * nm]
                        .iter_mut()
                        .map(std::mem::take)
                        .collect();
                    row_of(r, latest, measures)
                })
                .collect();
            rows.push((g, out));
        }
        rows.append(&mut coarse_rows);
        // Keep the allocations for the next flush.
        latest_values.clear();
        measure_values.clear();
        self.latest_values = latest_values;
        self.measure_values = measure_values;
        self.accs.clear();
        let forget = self.groups.outgrown();
        if forget {
            self.groups.clear();
        }
        self.span.reset(forget);
        if let Some(i) = self.overflow.take() {
            return Err(EngineError::SumOverflow {
                aggregation: self.layout.aggregation.clone(),
                column: self.layout.measures[i].column.clone(),
            });
        }
        Ok(Delta { rows })
    }
}

#[allow(clippy::too_many_arguments)]
fn fold(
    acc: &mut Acc,
    latest_slots: &mut [Value],
    measure_slots: &mut [Value],
    measures: &[MeasureFold],
    latest: &[Arg],
    event: &[ValueRef<'_>],
    ts: i64,
    seq: u64,
) -> Option<usize> {
    acc.count += 1;
    let mut overflow = None;
    for (i, (slot, m)) in measure_slots.iter_mut().zip(measures).enumerate() {
        if !fold_measure(m.fold, m.ty, slot, m.arg.eval(event)) && overflow.is_none() {
            overflow = Some(i);
        }
    }
    // Same event time as the current latest: the later-recorded event wins.
    if ts >= acc.last_event_ts {
        acc.last_event_ts = ts;
        acc.seq = seq;
        for (slot, a) in latest_slots.iter_mut().zip(latest) {
            assign(slot, a.eval(event));
        }
    }
    overflow
}

/// Folds `v` into `slot`; false when a long sum overflowed (the slot then holds the wrapped sum).
fn fold_measure(fold: Fold, ty: AttrType, slot: &mut Value, v: ValueRef<'_>) -> bool {
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
                _ => return true,
            };
            let (sum, overflowed) = match slot {
                Value::Long(s) => s.overflowing_add(x),
                _ => (x, false),
            };
            *slot = Value::Long(sum);
            return !overflowed;
        }
        Fold::Sum => {
            let x = match v {
                ValueRef::Int(_) | ValueRef::Long(_) | ValueRef::Float(_) | ValueRef::Double(_) => {
                    as_f64(v)
                }
                _ => return true,
            };
            *slot = Value::Double(match slot {
                Value::Double(s) => *s + x,
                _ => x,
            });
        }
        Fold::Min | Fold::Max => {
            let c = coerce(v, ty);
            if c.is_null() {
                return true;
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
    true
}

/// Merges the rows of one level (sorted by bucket, then group rank) into the buckets of the
/// coarser `g`, sorted the same way. `finest_measures` holds the finest rows' measures
/// (`nm` per row), read when `level` is the finest (its rows carry none of their own).
fn roll_up(
    level: &[LevelRow],
    g: Granularity,
    layout: &Layout,
    finest_measures: &[Value],
    nm: usize,
    overflow: &mut Option<usize>,
) -> Vec<LevelRow> {
    let mut order: Vec<(i64, u32, usize)> = level
        .iter()
        .enumerate()
        .map(|(i, r)| (g.bucket_start(r.bucket), r.rank, i))
        .collect();
    // `level` is sorted by (bucket, rank), so each of its buckets is one sorted run of this
    // order: the stable sort merges those runs instead of sorting from scratch.
    order.sort();
    let measures_of = |r: &LevelRow| -> Vec<Value> {
        if r.measures.len() == nm {
            r.measures.clone()
        } else {
            finest_measures[r.latest_from * nm..(r.latest_from + 1) * nm].to_vec()
        }
    };
    let mut out: Vec<LevelRow> = Vec::new();
    for (bucket, rank, i) in order {
        let row = &level[i];
        match out.last_mut() {
            Some(acc) if acc.bucket == bucket && acc.rank == rank => {
                acc.acc.count += row.acc.count;
                let theirs: &[Value] = if row.measures.len() == nm {
                    &row.measures
                } else {
                    &finest_measures[row.latest_from * nm..(row.latest_from + 1) * nm]
                };
                let pairs = acc.measures.iter_mut().zip(theirs).zip(&layout.measures);
                for (i, ((mine, theirs), m)) in pairs.enumerate() {
                    match checked_combine(m.kind, mine, theirs) {
                        Some(v) => *mine = v,
                        None => {
                            overflow.get_or_insert(i);
                        }
                    }
                }
                if (row.acc.last_event_ts, row.acc.seq) > (acc.acc.last_event_ts, acc.acc.seq) {
                    acc.acc.last_event_ts = row.acc.last_event_ts;
                    acc.acc.seq = row.acc.seq;
                    acc.latest_from = row.latest_from;
                }
            }
            _ => out.push(LevelRow {
                bucket,
                rank,
                group: row.group,
                acc: row.acc,
                latest_from: row.latest_from,
                measures: measures_of(row),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests;

//! Field generators compiled against a stream schema into deterministic events.
//!
//! A phase's `fields` (see [`GeneratorSpec`]) are type-checked against the stream's
//! [`StreamSchema`] once, by [`PhaseGenerator::compile`]; errors point at the offending value
//! (`path:line:column`). Events then come out of [`EventCursor`]s: each owns a seeded RNG and one
//! reusable row of [`Value`]s in schema order, so producing an event allocates nothing (constants
//! are written once; strings picked from a list reuse the row's buffer).
//!
//! Determinism: the events of a phase are a pure function of (seed, phase, number of parts): the
//! same scenario and seed give the same events, in the same order per cursor.
//!
//! Typing: attributes without a field are null. Integers fit `int` (if in range), `long`, `float`
//! and `double`; numbers with a fraction fit `float` and `double`; strings fit `string`, and a
//! `long` when they are RFC 3339 timestamps (stored as epoch milliseconds); bools fit `bool`;
//! null fits everything. Anything else is an error.

use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use rand::distr::{Distribution, Uniform};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shardtally_publisher::protocol::{AttrType, Attribute, StreamSchema, Value};

use crate::scenario::{GeneratorSpec, Item, Literal, Phase, Pos, Scenario, ScenarioError};

/// A phase's fields compiled against its stream: cheap to clone, shared by its cursors.
#[derive(Debug, Clone)]
pub struct PhaseGenerator {
    inner: Arc<Compiled>,
}

#[derive(Debug)]
struct Compiled {
    schema: StreamSchema,
    /// Constants in place, null elsewhere.
    template: Vec<Value>,
    /// Per-event generators: (attribute index, generator).
    dynamic: Vec<(usize, FieldGen)>,
    events: u64,
    /// Distinguishes phases when deriving seeds (unique per phase: events ≥ 1).
    first_event: u64,
}

#[derive(Debug)]
enum FieldGen {
    /// `one_of` (uniform or weighted) and `zipf`.
    Pick {
        values: Vec<Value>,
        sampler: Sampler,
    },
    /// `between` on int/long.
    IntRange { dist: Uniform<i64>, ty: AttrType },
    /// `between` on float/double.
    FloatRange { dist: Uniform<f64>, ty: AttrType },
    /// `sequence: [...]`.
    Cycle { values: Vec<Value> },
    /// `sequence: { start, step }` on int/long (checked to stay in range).
    IntCounter { start: i64, step: i64, ty: AttrType },
    /// `sequence: { start, step }` on float/double.
    FloatCounter { start: f64, step: f64, ty: AttrType },
}

#[derive(Debug)]
enum Sampler {
    Uniform(Uniform<usize>),
    /// Cumulative probabilities, last one 1.0.
    Cumulative(Vec<f64>),
}

impl Sampler {
    fn sample(&self, rng: &mut StdRng) -> usize {
        match self {
            Sampler::Uniform(u) => u.sample(rng),
            Sampler::Cumulative(c) => {
                let x: f64 = rng.random();
                c.partition_point(|&p| p <= x)
                    .min(c.len().saturating_sub(1))
            }
        }
    }

    /// Weighted sampling; weights are finite, ≥ 0 and not all 0 (checked by the caller).
    fn weighted(weights: &[f64]) -> Sampler {
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let mut cumulative: Vec<f64> = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        // The last positive weight's cumulative is exactly 1 despite rounding, so every draw in
        // [0, 1) lands on an entry with a positive weight.
        if let Some(last) = weights.iter().rposition(|w| *w > 0.0) {
            for c in &mut cumulative[last..] {
                *c = 1.0;
            }
        }
        Sampler::Cumulative(cumulative)
    }
}

impl PhaseGenerator {
    /// Compiles `phase`'s fields against `schema` (the phase's stream). Errors carry the
    /// scenario file's path and the position of the offending field or value.
    pub fn compile(
        scenario: &Scenario,
        phase: &Phase,
        schema: &StreamSchema,
    ) -> Result<PhaseGenerator, ScenarioError> {
        let mut template = vec![Value::Null; schema.attributes.len()];
        let mut dynamic = Vec::new();
        for field in &phase.fields {
            let Some(index) = schema.position(&field.name) else {
                let names: Vec<&str> = schema.attributes.iter().map(|a| a.name.as_str()).collect();
                return Err(scenario.error_at(
                    field.pos,
                    format!(
                        "stream `{}` has no attribute `{}` (attributes: {})",
                        schema.name,
                        field.name,
                        names.join(", ")
                    ),
                ));
            };
            let attr = &schema.attributes[index];
            let ctx = Ctx {
                scenario,
                attr,
                stream: &schema.name,
                events: phase.events,
            };
            match ctx.compile(&field.generator, field.value_pos)? {
                Compiled1::Constant(v) => template[index] = v,
                Compiled1::Dynamic(g) => dynamic.push((index, g)),
            }
        }
        Ok(PhaseGenerator {
            inner: Arc::new(Compiled {
                schema: schema.clone(),
                template,
                dynamic,
                events: phase.events,
                first_event: phase.first_event,
            }),
        })
    }

    /// The stream schema the rows follow.
    pub fn schema(&self) -> &StreamSchema {
        &self.inner.schema
    }

    /// The phase's number of events.
    pub fn events(&self) -> u64 {
        self.inner.events
    }

    /// A cursor over the phase's events `range` (clipped to `0..events`), its RNG seeded from
    /// `seed`, the phase and `part`.
    pub fn cursor(&self, range: Range<u64>, seed: u64, part: u32) -> EventCursor {
        let end = range.end.min(self.inner.events);
        let start = range.start.min(end);
        let mixed =
            splitmix64(splitmix64(splitmix64(seed) ^ self.inner.first_event) ^ u64::from(part));
        EventCursor {
            compiled: Arc::clone(&self.inner),
            rng: StdRng::seed_from_u64(mixed),
            next: start,
            end,
            row: self.inner.template.clone(),
        }
    }

    /// The phase's events split into `parts` contiguous ranges (one per publisher; the first
    /// ranges get the remainder), each with its own cursor. `parts` of 0 is treated as 1.
    pub fn split(&self, parts: u32, seed: u64) -> Vec<EventCursor> {
        let parts = parts.max(1);
        let n = self.inner.events;
        let (each, extra) = (n / u64::from(parts), n % u64::from(parts));
        let mut start = 0;
        (0..parts)
            .map(|k| {
                let len = each + u64::from(u64::from(k) < extra);
                let c = self.cursor(start..start + len, seed, k);
                start += len;
                c
            })
            .collect()
    }
}

/// Produces a range of a phase's events into one reusable row.
#[derive(Debug)]
pub struct EventCursor {
    compiled: Arc<Compiled>,
    rng: StdRng,
    next: u64,
    end: u64,
    row: Vec<Value>,
}

impl EventCursor {
    /// The next event's values in schema order, or `None` when the range is done. The row is
    /// overwritten by the following call.
    pub fn next_event(&mut self) -> Option<&[Value]> {
        if self.next >= self.end {
            return None;
        }
        let i = self.next;
        self.next += 1;
        for (index, g) in &self.compiled.dynamic {
            let Some(slot) = self.row.get_mut(*index) else {
                continue;
            };
            match g {
                FieldGen::Pick { values, sampler } => {
                    if let Some(v) = values.get(sampler.sample(&mut self.rng)) {
                        assign(slot, v);
                    }
                }
                FieldGen::IntRange { dist, ty } => {
                    *slot = int_value(*ty, dist.sample(&mut self.rng))
                }
                FieldGen::FloatRange { dist, ty } => {
                    *slot = float_value(*ty, dist.sample(&mut self.rng));
                }
                FieldGen::Cycle { values } => {
                    let len = values.len() as u64;
                    if let Some(v) = usize::try_from(i % len.max(1))
                        .ok()
                        .and_then(|k| values.get(k))
                    {
                        assign(slot, v);
                    }
                }
                FieldGen::IntCounter { start, step, ty } => {
                    // In range for every index of the phase: checked at compile time.
                    let v = i128::from(*start) + i128::from(i) * i128::from(*step);
                    *slot = int_value(*ty, i64::try_from(v).unwrap_or(i64::MAX));
                }
                FieldGen::FloatCounter { start, step, ty } => {
                    *slot = float_value(*ty, start + (i as f64) * step);
                }
            }
        }
        Some(&self.row)
    }

    /// Like [`EventCursor::next_event`], as an owned row.
    pub fn next_owned(&mut self) -> Option<Vec<Value>> {
        self.next_event().map(<[Value]>::to_vec)
    }

    /// The phase-local index of the next event.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Events left in this cursor's range.
    pub fn remaining(&self) -> u64 {
        self.end - self.next
    }

    /// The stream schema the rows follow.
    pub fn schema(&self) -> &StreamSchema {
        &self.compiled.schema
    }
}

/// Copies `src` into `dst`, reusing `dst`'s string buffer when both are strings.
fn assign(dst: &mut Value, src: &Value) {
    match (dst, src) {
        (Value::String(d), Value::String(s)) => {
            d.clear();
            d.push_str(s);
        }
        (dst, src) => *dst = src.clone(),
    }
}

#[allow(clippy::cast_possible_truncation)] // ranges are checked against the type at compile time
fn int_value(ty: AttrType, v: i64) -> Value {
    match ty {
        AttrType::Int => Value::Int(v as i32),
        _ => Value::Long(v),
    }
}

#[allow(clippy::cast_possible_truncation)] // float attributes take f32 precision by definition
fn float_value(ty: AttrType, v: f64) -> Value {
    match ty {
        AttrType::Float => Value::Float(v as f32),
        _ => Value::Double(v),
    }
}

/// SplitMix64: spreads seeds so that neighbouring inputs give unrelated RNG streams.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

enum Compiled1 {
    Constant(Value),
    Dynamic(FieldGen),
}

/// What compiling one field needs to know.
struct Ctx<'a> {
    scenario: &'a Scenario,
    attr: &'a Attribute,
    stream: &'a str,
    events: u64,
}

impl Ctx<'_> {
    fn error(&self, pos: Option<Pos>, message: impl Into<String>) -> ScenarioError {
        self.scenario.error_at(pos, message)
    }

    fn describe(&self) -> String {
        format!("{}.{} is {}", self.stream, self.attr.name, self.attr.ty)
    }

    fn compile(&self, spec: &GeneratorSpec, at: Option<Pos>) -> Result<Compiled1, ScenarioError> {
        Ok(match spec {
            GeneratorSpec::Constant(item) => Compiled1::Constant(self.value(item)?),
            GeneratorSpec::OneOf { values, weights } => {
                let values = self.values(values)?;
                let sampler = match weights {
                    Some(w) => Sampler::weighted(w),
                    None => Sampler::Uniform(
                        Uniform::new(0, values.len())
                            .map_err(|_| self.error(at, "`one_of` needs at least one value"))?,
                    ),
                };
                Compiled1::Dynamic(FieldGen::Pick { values, sampler })
            }
            GeneratorSpec::Zipf { values, s } => {
                let values = self.values(values)?;
                let weights: Vec<f64> = (1..=values.len())
                    .map(|k| 1.0 / (k as f64).powf(*s))
                    .collect();
                if weights.iter().any(|w| !w.is_finite()) || weights.iter().sum::<f64>() <= 0.0 {
                    return Err(self.error(at, format!("zipf exponent s = {s} is out of range")));
                }
                Compiled1::Dynamic(FieldGen::Pick {
                    values,
                    sampler: Sampler::weighted(&weights),
                })
            }
            GeneratorSpec::Cycle { values } => Compiled1::Dynamic(FieldGen::Cycle {
                values: self.values(values)?,
            }),
            GeneratorSpec::Between { lo, hi } => self.between(lo, hi)?,
            GeneratorSpec::Counter { start, step } => {
                self.counter(start.as_ref(), step.as_ref(), at)?
            }
        })
    }

    fn values(&self, items: &[Item]) -> Result<Vec<Value>, ScenarioError> {
        items.iter().map(|i| self.value(i)).collect()
    }

    /// A literal converted to the attribute's type.
    fn value(&self, item: &Item) -> Result<Value, ScenarioError> {
        let ty = self.attr.ty;
        let mismatch = || {
            let hint = match (&item.value, ty) {
                (Literal::Int(_) | Literal::Float(_) | Literal::Bool(_), AttrType::String) => {
                    format!("; quote it to make it a string: \"{}\"", item.value_text())
                }
                (Literal::Str(_), AttrType::Long) => {
                    "; a string fits a long only as an RFC 3339 timestamp (2026-11-20T10:00:00Z)"
                        .to_owned()
                }
                _ => String::new(),
            };
            self.error(
                item.pos,
                format!(
                    "{}; {} ({}) does not fit{hint}",
                    self.describe(),
                    item.value.kind(),
                    item.value
                ),
            )
        };
        Ok(match (&item.value, ty) {
            (Literal::Null, _) => Value::Null,
            (Literal::Str(s), AttrType::String) => Value::String(s.clone()),
            (Literal::Bool(b), AttrType::Bool) => Value::Bool(*b),
            (Literal::Int(v), AttrType::Int) => Value::Int(i32::try_from(*v).map_err(|_| {
                self.error(
                    item.pos,
                    format!("{}; {v} is out of the int range", self.describe()),
                )
            })?),
            (Literal::Int(v), AttrType::Long) => Value::Long(*v),
            (Literal::Str(s), AttrType::Long) => match parse_timestamp_ms(s) {
                Some(ms) => Value::Long(ms),
                None => return Err(mismatch()),
            },
            (Literal::Int(v), AttrType::Float | AttrType::Double) => float_value(ty, *v as f64),
            (Literal::Float(v), AttrType::Double) => Value::Double(*v),
            (Literal::Float(v), AttrType::Float) => {
                #[allow(clippy::cast_possible_truncation)]
                let f = *v as f32;
                if v.is_finite() && !f.is_finite() {
                    return Err(self.error(
                        item.pos,
                        format!("{}; {v} is out of the float range", self.describe()),
                    ));
                }
                Value::Float(f)
            }
            _ => return Err(mismatch()),
        })
    }

    /// An integer bound or start: an integer, or for `long` a timestamp.
    fn int_of(&self, item: &Item, what: &str) -> Result<i64, ScenarioError> {
        match (&item.value, self.attr.ty) {
            (Literal::Int(v), _) => Ok(*v),
            (Literal::Str(s), AttrType::Long) => parse_timestamp_ms(s).ok_or_else(|| {
                self.error(
                    item.pos,
                    format!(
                        "{what} `{s}` is not an RFC 3339 timestamp (e.g. 2026-11-20T10:00:00Z) \
                         or epoch milliseconds"
                    ),
                )
            }),
            (other, _) => Err(self.error(
                item.pos,
                format!(
                    "{}; {what} {other} does not fit (an integer is needed)",
                    self.describe()
                ),
            )),
        }
    }

    fn float_of(&self, item: &Item, what: &str) -> Result<f64, ScenarioError> {
        match &item.value {
            Literal::Int(v) => Ok(*v as f64),
            Literal::Float(v) if v.is_finite() => Ok(*v),
            other => Err(self.error(
                item.pos,
                format!(
                    "{}; {what} {other} does not fit (a number is needed)",
                    self.describe()
                ),
            )),
        }
    }

    fn int_range(&self) -> (i64, i64) {
        match self.attr.ty {
            AttrType::Int => (i64::from(i32::MIN), i64::from(i32::MAX)),
            _ => (i64::MIN, i64::MAX),
        }
    }

    fn between(&self, lo: &Item, hi: &Item) -> Result<Compiled1, ScenarioError> {
        let ty = self.attr.ty;
        match ty {
            AttrType::Int | AttrType::Long => {
                let (l, h) = (self.int_of(lo, "bound")?, self.int_of(hi, "bound")?);
                let (min, max) = self.int_range();
                for (item, v) in [(lo, l), (hi, h)] {
                    if v < min || v > max {
                        return Err(self.error(
                            item.pos,
                            format!("{}; bound {v} is out of the {ty} range", self.describe()),
                        ));
                    }
                }
                let dist = Uniform::new_inclusive(l, h).map_err(|_| {
                    self.error(lo.pos, format!("`between` needs lo ≤ hi, got [{l}, {h}]"))
                })?;
                Ok(Compiled1::Dynamic(FieldGen::IntRange { dist, ty }))
            }
            AttrType::Float | AttrType::Double => {
                let (l, h) = (self.float_of(lo, "bound")?, self.float_of(hi, "bound")?);
                if ty == AttrType::Float {
                    for (item, v) in [(lo, l), (hi, h)] {
                        #[allow(clippy::cast_possible_truncation)]
                        if !(v as f32).is_finite() {
                            return Err(self.error(
                                item.pos,
                                format!(
                                    "{}; bound {} is out of the float range",
                                    self.describe(),
                                    item.value
                                ),
                            ));
                        }
                    }
                }
                if l > h {
                    return Err(
                        self.error(lo.pos, format!("`between` needs lo ≤ hi, got [{l}, {h}]"))
                    );
                }
                let dist = Uniform::new_inclusive(l, h).map_err(|e| {
                    self.error(
                        lo.pos,
                        format!("`between` [{l}, {h}] is not a usable range: {e}"),
                    )
                })?;
                Ok(Compiled1::Dynamic(FieldGen::FloatRange { dist, ty }))
            }
            AttrType::String | AttrType::Bool => Err(self.error(
                lo.pos,
                format!(
                    "{}; `between` needs a numeric or timestamp (long) attribute — use one_of for \
                     a {ty}",
                    self.describe()
                ),
            )),
        }
    }

    fn counter(
        &self,
        start: Option<&Item>,
        step: Option<&Item>,
        at: Option<Pos>,
    ) -> Result<Compiled1, ScenarioError> {
        let ty = self.attr.ty;
        match ty {
            AttrType::Int | AttrType::Long => {
                let s = start.map_or(Ok(0), |i| self.int_of(i, "start"))?;
                let d = match step {
                    None => 1,
                    Some(
                        item @ Item {
                            value: Literal::Str(text),
                            ..
                        },
                    ) if ty == AttrType::Long => duration_ms(text).ok_or_else(|| {
                        self.error(
                            item.pos,
                            format!(
                                "step `{text}` is not a whole number of milliseconds \
                                     (e.g. 250ms, 1s)"
                            ),
                        )
                    })?,
                    Some(item) => self.int_of(item, "step")?,
                };
                let (min, max) = self.int_range();
                let last =
                    i128::from(s) + i128::from(self.events.saturating_sub(1)) * i128::from(d);
                for (v, which) in [(i128::from(s), "starts"), (last, "ends")] {
                    if v < i128::from(min) || v > i128::from(max) {
                        return Err(self.error(
                            start.and_then(|i| i.pos).or(at),
                            format!(
                                "{}; the sequence {which} at {v} over {} events, out of the {ty} \
                                 range",
                                self.describe(),
                                self.events
                            ),
                        ));
                    }
                }
                Ok(Compiled1::Dynamic(FieldGen::IntCounter {
                    start: s,
                    step: d,
                    ty,
                }))
            }
            AttrType::Float | AttrType::Double => {
                let s = start.map_or(Ok(0.0), |i| self.float_of(i, "start"))?;
                let d = step.map_or(Ok(1.0), |i| self.float_of(i, "step"))?;
                Ok(Compiled1::Dynamic(FieldGen::FloatCounter {
                    start: s,
                    step: d,
                    ty,
                }))
            }
            AttrType::String | AttrType::Bool => Err(self.error(
                at,
                format!(
                    "{}; `sequence: {{ start, step }}` counts numbers — use `sequence: [a, b, …]` \
                     to cycle through {ty} values",
                    self.describe()
                ),
            )),
        }
    }
}

impl Item {
    /// The literal as plain text (strings unquoted).
    fn value_text(&self) -> String {
        match &self.value {
            Literal::Str(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

/// An RFC 3339 timestamp (`2026-11-20T10:00:00Z`, offsets allowed) as epoch milliseconds.
pub fn parse_timestamp_ms(text: &str) -> Option<i64> {
    jiff::Timestamp::from_str(text.trim())
        .ok()
        .map(jiff::Timestamp::as_millisecond)
}

/// A duration (`250ms`, `1s`) as whole milliseconds.
fn duration_ms(text: &str) -> Option<i64> {
    let d = crate::scenario::parse_duration(text).ok()?;
    if d.subsec_nanos() % 1_000_000 != 0 {
        return None;
    }
    i64::try_from(d.as_millis()).ok()
}

#[cfg(test)]
mod tests;

//! Open batches: events are encoded straight into the BATCH frame of their stream, which is
//! sealed (given its sequence number) when it is full, has lingered, or on flush.
//!
//! [`Batcher`] is synchronous and knows nothing of sockets; the client keeps it behind one mutex
//! and hands sealed batches to the background task in seal order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hashbrown::HashMap;

use crate::error::PublishError;
use crate::event::Event;
use crate::protocol::frame::kind;
use crate::protocol::{
    AttrType, Attribute, BatchEncoder, Frame, LEN_PREFIX, ProtocolError, StreamSchema, Value,
    ValueRef,
};

/// A batch ready to send: its complete frame and what the buffer holds for it.
#[derive(Debug, Clone)]
pub(crate) struct SealedBatch {
    pub(crate) seq: u64,
    pub(crate) stream: Arc<str>,
    pub(crate) events: u32,
    /// Encoded event bytes (what the buffer reserved for them).
    pub(crate) event_bytes: u64,
    /// The complete BATCH frame, length prefix included.
    pub(crate) frame: Bytes,
    /// When the first event was published (the delivery deadline counts from here).
    pub(crate) opened_at: Instant,
    /// Per-event publish times (only when delivery reports are enabled).
    pub(crate) published_at: Vec<Instant>,
}

/// Batch size limits: the configured ones, lowered by what workers announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchLimits {
    pub(crate) max_events: u32,
    /// Complete frame size, length prefix included.
    pub(crate) max_bytes: usize,
}

impl BatchLimits {
    /// The limits a worker announced in WELCOME (`max_frame_len` is the `len` field's limit;
    /// 0 means none).
    pub(crate) fn announced(max_frame_len: u32, max_batch_events: u32) -> BatchLimits {
        BatchLimits {
            max_events: if max_batch_events == 0 {
                u32::MAX
            } else {
                max_batch_events
            },
            max_bytes: if max_frame_len == 0 {
                usize::MAX
            } else {
                usize::try_from(max_frame_len)
                    .unwrap_or(usize::MAX)
                    .saturating_add(LEN_PREFIX)
            },
        }
    }

    /// The tighter of two limits.
    pub(crate) fn min(self, other: BatchLimits) -> BatchLimits {
        BatchLimits {
            max_events: self.max_events.min(other.max_events),
            max_bytes: self.max_bytes.min(other.max_bytes),
        }
    }

    /// Whether a worker with these limits accepts the batch (neither REJECT `TooLarge` nor
    /// ERROR `FrameTooLarge`).
    pub(crate) fn admit(&self, batch: &SealedBatch) -> bool {
        batch.events <= self.max_events && batch.frame.len() <= self.max_bytes
    }
}

#[derive(Debug)]
struct OpenBatch {
    encoder: BatchEncoder,
    /// The schema the columns come from (`None`: columns taken from the events' field names).
    schema: Option<Arc<StreamSchema>>,
    columns: Vec<String>,
    opened_at: Option<Instant>,
    published_at: Vec<Instant>,
    event_bytes: u64,
}

#[derive(Debug)]
struct StreamSlot {
    name: Arc<str>,
    schema: Option<Arc<StreamSchema>>,
    open: Option<OpenBatch>,
    /// A worker's constraints were put on a given schema (the first worker's are kept).
    constrained: bool,
}

/// Refuses a value that does not fit `attr` ([`Attribute::check`], one pass): of another type
/// ([`PublishError::TypeMismatch`]), or one the worker's store cannot hold
/// ([`PublishError::InvalidValue`]: null in a group-by key, a string with NUL or longer than its
/// column, a non-finite number).
#[inline]
fn check_value(stream: &str, attr: &Attribute, v: ValueRef<'_>) -> Result<(), PublishError> {
    attr.check(v).map_err(|reason| match v.attr_type() {
        Some(got) if got != attr.ty => PublishError::TypeMismatch {
            stream: stream.to_owned(),
            attribute: attr.name.clone(),
            expected: attr.ty,
            got,
        },
        _ => PublishError::InvalidValue {
            stream: stream.to_owned(),
            attribute: attr.name.clone(),
            reason,
        },
    })
}

/// Where schemas come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SchemaSource {
    /// Given to the builder: authoritative, never replaced.
    Given,
    /// Announced by a worker at handshake.
    Learned,
}

/// The open batches of every stream.
#[derive(Debug)]
pub(crate) struct Batcher {
    /// By stream name; hashbrown's default hasher (foldhash) reads a short name a word at a
    /// time, where a byte-wise hash was a fifth of the per-event lookup.
    slots: HashMap<String, StreamSlot>,
    /// Events accepted (appended to a batch).
    published: u64,
    /// Some schema is known: events of other streams are refused.
    schemas_known: bool,
    schemas_given: bool,
    next_seq: u64,
    limits: BatchLimits,
    record_times: bool,
}

impl Batcher {
    pub(crate) fn new(limits: BatchLimits, record_times: bool) -> Batcher {
        Batcher {
            slots: HashMap::default(),
            published: 0,
            schemas_known: false,
            schemas_given: false,
            next_seq: 0,
            limits,
            record_times,
        }
    }

    #[cfg(test)]
    pub(crate) fn limits(&self) -> BatchLimits {
        self.limits
    }

    /// Lowers the limits to what a worker accepts (`max_frame_len` is the `len` field's limit).
    pub(crate) fn apply_peer_limits(&mut self, peer: BatchLimits) {
        self.limits = self.limits.min(peer);
    }

    /// Re-encodes a sealed batch as consecutive parts within `limits`, under fresh sequence
    /// numbers, in event order (each part keeps the batch's `opened_at` and its events' publish
    /// times). For a batch sealed under larger limits than a worker announced since, and never
    /// sent: its own seq is then never used. A single event larger than `limits` is a part of its
    /// own.
    pub(crate) fn split(
        &mut self,
        batch: &SealedBatch,
        limits: BatchLimits,
    ) -> Result<Vec<SealedBatch>, ProtocolError> {
        let body = batch.frame.slice(LEN_PREFIX + 1..);
        let Frame::Batch(frame) = Frame::decode(kind::BATCH, body)? else {
            return Err(ProtocolError::UnknownKind(kind::BATCH));
        };
        let mut encoder = BatchEncoder::new(&frame.stream, &frame.columns)?;
        let mut reader = frame.reader();
        let mut values = Vec::with_capacity(frame.columns.len());
        let mut parts = Vec::new();
        let mut first = 0;
        let mut event = 0;
        let mut event_bytes = 0u64;
        let mut part = |encoder: &mut BatchEncoder, event: usize, event_bytes: &mut u64| {
            let seq = self.next_seq;
            self.next_seq += 1;
            let events = encoder.event_count();
            parts.push(SealedBatch {
                seq,
                stream: Arc::clone(&batch.stream),
                events,
                event_bytes: std::mem::take(event_bytes),
                frame: encoder.seal(seq),
                opened_at: batch.opened_at,
                published_at: batch
                    .published_at
                    .get(first..event)
                    .map(<[Instant]>::to_vec)
                    .unwrap_or_default(),
            });
            first = event;
        };
        while reader.next_event(&mut values)? {
            let len = BatchEncoder::event_len(&values);
            if !encoder.is_empty()
                && (encoder.event_count() >= limits.max_events
                    || encoder.encoded_len() + len > limits.max_bytes)
            {
                part(&mut encoder, event, &mut event_bytes);
            }
            encoder.push_event(&values)?;
            event_bytes += u64::try_from(len).unwrap_or(u64::MAX);
            event += 1;
        }
        if !encoder.is_empty() {
            part(&mut encoder, event, &mut event_bytes);
        }
        Ok(parts)
    }

    /// Adds a schema. Given schemas win over learned ones — but a worker knows what its store
    /// holds: the first learned schema of the same shape puts its constraints (`required`,
    /// `max_chars`) on a given one. A learned schema for a stream that already has one is
    /// otherwise ignored (returns `false` when it differs, for a warning).
    pub(crate) fn add_schema(&mut self, schema: StreamSchema, source: SchemaSource) -> bool {
        if source == SchemaSource::Learned && self.schemas_given {
            if let Some(slot) = self.slots.get_mut(schema.name.as_str())
                && !slot.constrained
                && slot.schema.as_ref().is_some_and(|s| s.same_shape(&schema))
            {
                slot.constrained = true;
                slot.schema = Some(Arc::new(schema));
            }
            return true;
        }
        if source == SchemaSource::Given {
            self.schemas_given = true;
        }
        self.schemas_known = true;
        let slot = self
            .slots
            .entry(schema.name.clone())
            .or_insert_with(|| StreamSlot {
                name: Arc::from(schema.name.as_str()),
                schema: None,
                open: None,
                constrained: false,
            });
        match &slot.schema {
            Some(existing) if source == SchemaSource::Learned => **existing == schema,
            _ => {
                slot.schema = Some(Arc::new(schema));
                true
            }
        }
    }

    /// The schema of a stream, if known.
    pub(crate) fn schema(&self, stream: &str) -> Option<&Arc<StreamSchema>> {
        self.slots.get(stream).and_then(|s| s.schema.as_ref())
    }

    fn unknown_stream(&self, stream: &str) -> PublishError {
        let mut known: Vec<String> = self
            .slots
            .values()
            .filter(|s| s.schema.is_some())
            .map(|s| s.name.to_string())
            .collect();
        known.sort();
        PublishError::UnknownStream {
            stream: stream.to_owned(),
            known,
        }
    }

    /// Appends positional values (schema order) to the stream's open batch.
    ///
    /// `reserve` is called with the event's encoded size once the event is known valid; its
    /// error is returned as is. Sealed batches go to `sealed`.
    pub(crate) fn push_values(
        &mut self,
        stream: &str,
        values: &[ValueRef<'_>],
        reserve: impl FnOnce(u64) -> Result<(), PublishError>,
        sealed: &mut impl FnMut(SealedBatch),
    ) -> Result<(), PublishError> {
        let Some(slot) = self.slots.get_mut(stream) else {
            return Err(if self.schemas_known {
                self.unknown_stream(stream)
            } else {
                PublishError::SchemaRequired {
                    stream: stream.to_owned(),
                }
            });
        };
        let Some(schema) = &slot.schema else {
            // A stream published to before any schema was known, that no worker announced.
            return Err(if self.schemas_known {
                self.unknown_stream(stream)
            } else {
                PublishError::SchemaRequired {
                    stream: stream.to_owned(),
                }
            });
        };
        if values.len() != schema.attributes.len() {
            return Err(PublishError::WrongArity {
                stream: stream.to_owned(),
                expected: schema.attributes.len(),
                got: values.len(),
            });
        }
        for (attr, v) in schema.attributes.iter().zip(values) {
            check_value(stream, attr, *v)?;
        }
        let limits = self.limits;
        let record = self.record_times;
        let next_seq = &mut self.next_seq;
        // The open batch is usually this schema's: no reference-count traffic per event.
        if !slot
            .open
            .as_ref()
            .is_some_and(|o| o.schema.as_ref().is_some_and(|s| Arc::ptr_eq(s, schema)))
        {
            let schema = Arc::clone(schema);
            let columns: Vec<String> = schema.attributes.iter().map(|a| a.name.clone()).collect();
            replace_open(slot, Some(schema), columns, next_seq, sealed)?;
        }
        append(slot, values, limits, record, next_seq, reserve, sealed)?;
        self.published += 1;
        Ok(())
    }

    /// Appends a named-field event: mapped onto the schema when known (missing fields are null;
    /// `int` widens to `long`/`double`, `float` to `double`), else onto columns named after its
    /// fields.
    pub(crate) fn push_event(
        &mut self,
        stream: &str,
        event: &Event,
        reserve: impl FnOnce(u64) -> Result<(), PublishError>,
        sealed: &mut impl FnMut(SealedBatch),
    ) -> Result<(), PublishError> {
        if !self.slots.contains_key(stream) {
            if self.schemas_known {
                return Err(self.unknown_stream(stream));
            }
            self.slots.insert(
                stream.to_owned(),
                StreamSlot {
                    name: Arc::from(stream),
                    schema: None,
                    open: None,
                    constrained: false,
                },
            );
        }
        let limits = self.limits;
        let record = self.record_times;
        let next_seq = &mut self.next_seq;
        let Some(slot) = self.slots.get_mut(stream) else {
            return Err(PublishError::Closed);
        };
        if slot.schema.is_none() && self.schemas_known {
            // Published to before any schema was known, and no worker announced it since.
            return Err(self.unknown_stream(stream));
        }
        if let Some(schema) = &slot.schema {
            let mut values = vec![ValueRef::Null; schema.attributes.len()];
            for (name, v) in event.fields() {
                let Some(pos) = schema.position(name) else {
                    return Err(PublishError::UnknownAttribute {
                        stream: stream.to_owned(),
                        attribute: name.to_owned(),
                        known: schema.attributes.iter().map(|a| a.name.clone()).collect(),
                    });
                };
                let attr = &schema.attributes[pos];
                values[pos] = coerce(v, attr.ty).ok_or_else(|| PublishError::TypeMismatch {
                    stream: stream.to_owned(),
                    attribute: attr.name.clone(),
                    expected: attr.ty,
                    got: v.attr_type().unwrap_or(attr.ty),
                })?;
            }
            // Every attribute, so that a required one left out (null) is refused too.
            for (attr, v) in schema.attributes.iter().zip(&values) {
                check_value(stream, attr, *v)?;
            }
            let schema = Arc::clone(schema);
            if !slot
                .open
                .as_ref()
                .is_some_and(|o| o.schema.as_ref().is_some_and(|s| Arc::ptr_eq(s, &schema)))
            {
                let columns = schema.attributes.iter().map(|a| a.name.clone()).collect();
                replace_open(slot, Some(schema), columns, next_seq, sealed)?;
            }
            append(slot, &values, limits, record, next_seq, reserve, sealed)?;
            self.published += 1;
            return Ok(());
        }
        // No schema: the columns are the events' field names.
        let fits = slot.open.as_ref().is_some_and(|o| {
            o.schema.is_none()
                && event
                    .fields()
                    .all(|(n, _)| o.columns.iter().any(|c| c == n))
        });
        if !fits {
            let columns = event.fields().map(|(n, _)| n.to_owned()).collect();
            replace_open(slot, None, columns, next_seq, sealed)?;
        }
        let Some(open) = &slot.open else {
            return Err(PublishError::Closed);
        };
        let mut values = vec![ValueRef::Null; open.columns.len()];
        for (name, v) in event.fields() {
            if let Some(pos) = open.columns.iter().position(|c| c == name) {
                values[pos] = v.as_ref();
            }
        }
        append(slot, &values, limits, record, next_seq, reserve, sealed)?;
        self.published += 1;
        Ok(())
    }

    /// Seals every non-empty batch opened at or before `now - linger`.
    pub(crate) fn seal_lingering(
        &mut self,
        now: Instant,
        linger: Duration,
        sealed: &mut impl FnMut(SealedBatch),
    ) {
        for slot in self.slots.values_mut() {
            if let Some(open) = &mut slot.open
                && open
                    .opened_at
                    .is_some_and(|t| now.saturating_duration_since(t) >= linger)
            {
                sealed(seal(open, &slot.name, &mut self.next_seq));
            }
        }
    }

    /// Seals every non-empty batch.
    pub(crate) fn seal_all(&mut self, sealed: &mut impl FnMut(SealedBatch)) {
        for slot in self.slots.values_mut() {
            if let Some(open) = &mut slot.open
                && !open.encoder.is_empty()
            {
                sealed(seal(open, &slot.name, &mut self.next_seq));
            }
        }
    }

    /// Events accepted so far.
    pub(crate) fn published(&self) -> u64 {
        self.published
    }

    /// The sequence number the next sealed batch gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// Casts a value to the attribute's type when that loses nothing.
fn coerce(v: &Value, ty: AttrType) -> Option<ValueRef<'_>> {
    let r = v.as_ref();
    match (r.attr_type(), ty) {
        (None, _) => Some(ValueRef::Null),
        (Some(t), ty) if t == ty => Some(r),
        (Some(AttrType::Int), AttrType::Long) => match r {
            ValueRef::Int(x) => Some(ValueRef::Long(i64::from(x))),
            _ => None,
        },
        (Some(AttrType::Int), AttrType::Double) => match r {
            ValueRef::Int(x) => Some(ValueRef::Double(f64::from(x))),
            _ => None,
        },
        (Some(AttrType::Float), AttrType::Double) => match r {
            ValueRef::Float(x) => Some(ValueRef::Double(f64::from(x))),
            _ => None,
        },
        _ => None,
    }
}

/// Seals the slot's open batch (if it has events) and opens an empty one with these columns.
fn replace_open(
    slot: &mut StreamSlot,
    schema: Option<Arc<StreamSchema>>,
    columns: Vec<String>,
    next_seq: &mut u64,
    sealed: &mut impl FnMut(SealedBatch),
) -> Result<(), PublishError> {
    if let Some(open) = &mut slot.open
        && !open.encoder.is_empty()
    {
        sealed(seal(open, &slot.name, next_seq));
    }
    let encoder = BatchEncoder::new(&slot.name, &columns).map_err(|e| {
        PublishError::Event(crate::error::EventError::Custom(format!(
            "cannot encode stream {:?}: {e}",
            slot.name
        )))
    })?;
    slot.open = Some(OpenBatch {
        encoder,
        schema,
        columns,
        opened_at: None,
        published_at: Vec::new(),
        event_bytes: 0,
    });
    Ok(())
}

fn append(
    slot: &mut StreamSlot,
    values: &[ValueRef<'_>],
    limits: BatchLimits,
    record: bool,
    next_seq: &mut u64,
    reserve: impl FnOnce(u64) -> Result<(), PublishError>,
    sealed: &mut impl FnMut(SealedBatch),
) -> Result<(), PublishError> {
    let Some(open) = &mut slot.open else {
        return Err(PublishError::Closed);
    };
    let ev_len = BatchEncoder::event_len(values);
    if open.encoder.header_len() + ev_len > limits.max_bytes {
        return Err(PublishError::EventTooLarge {
            bytes: open.encoder.header_len() + ev_len,
            max: limits.max_bytes,
        });
    }
    if !open.encoder.is_empty() && open.encoder.encoded_len() + ev_len > limits.max_bytes {
        sealed(seal(open, &slot.name, next_seq));
    }
    let ev_len64 = u64::try_from(ev_len).unwrap_or(u64::MAX);
    reserve(ev_len64)?;
    if let Err(e) = open.encoder.push_event(values) {
        // Cannot happen for a checked event (column count matches, strings < 4 GiB as the
        // frame limit is lower); reported rather than panicking.
        return Err(PublishError::Event(crate::error::EventError::Custom(
            e.to_string(),
        )));
    }
    open.event_bytes += ev_len64;
    if open.opened_at.is_none() || record {
        let now = Instant::now();
        if open.opened_at.is_none() {
            open.opened_at = Some(now);
        }
        if record {
            open.published_at.push(now);
        }
    }
    if open.encoder.event_count() >= limits.max_events
        || open.encoder.encoded_len() >= limits.max_bytes
    {
        sealed(seal(open, &slot.name, next_seq));
    }
    Ok(())
}

fn seal(open: &mut OpenBatch, stream: &Arc<str>, next_seq: &mut u64) -> SealedBatch {
    let seq = *next_seq;
    *next_seq += 1;
    let events = open.encoder.event_count();
    let frame = open.encoder.seal(seq);
    SealedBatch {
        seq,
        stream: Arc::clone(stream),
        events,
        event_bytes: std::mem::take(&mut open.event_bytes),
        frame,
        opened_at: open.opened_at.take().unwrap_or_else(Instant::now),
        published_at: std::mem::take(&mut open.published_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Attribute, Frame};

    fn geo() -> StreamSchema {
        StreamSchema::new(
            "geo",
            vec![
                Attribute::new("api", AttrType::String),
                Attribute::new("ts", AttrType::Long),
                Attribute::new("ok", AttrType::Bool),
            ],
        )
    }

    fn batcher(max_events: u32, max_bytes: usize) -> Batcher {
        let mut b = Batcher::new(
            BatchLimits {
                max_events,
                max_bytes,
            },
            false,
        );
        b.add_schema(geo(), SchemaSource::Given);
        b
    }

    fn ok(_: u64) -> Result<(), PublishError> {
        Ok(())
    }

    /// Decodes a sealed batch into (seq, columns, events).
    fn open_up(b: &SealedBatch) -> (u64, Vec<String>, Vec<Vec<Value>>) {
        let Ok(Frame::Batch(f)) = Frame::decode(b.frame[4], b.frame.slice(5..)) else {
            panic!("not a batch frame");
        };
        assert_eq!(f.event_count, b.events);
        let mut r = f.reader();
        let mut out = Vec::new();
        let mut events = Vec::new();
        while r.next_event(&mut out).unwrap() {
            events.push(out.iter().map(ValueRef::to_owned_value).collect());
        }
        (f.seq, f.columns.clone(), events)
    }

    const EV: [ValueRef<'static>; 3] = [
        ValueRef::String("a"),
        ValueRef::Long(1),
        ValueRef::Bool(true),
    ];

    #[test]
    fn seals_by_count_with_consecutive_seqs() {
        let mut b = batcher(2, 1 << 20);
        let mut sealed = Vec::new();
        for _ in 0..5 {
            b.push_values("geo", &EV, ok, &mut |s| sealed.push(s))
                .unwrap();
        }
        assert_eq!(sealed.len(), 2);
        b.seal_all(&mut |s| sealed.push(s));
        let seqs: Vec<(u64, u32)> = sealed.iter().map(|s| (s.seq, s.events)).collect();
        assert_eq!(seqs, vec![(0, 2), (1, 2), (2, 1)]);
        let (seq, columns, events) = open_up(&sealed[2]);
        assert_eq!(seq, 2);
        assert_eq!(columns, ["api", "ts", "ok"]);
        assert_eq!(
            events,
            vec![vec![Value::from("a"), Value::Long(1), Value::Bool(true)]]
        );
        let ev_len = BatchEncoder::event_len(&EV) as u64;
        assert_eq!(sealed[0].event_bytes, 2 * ev_len);
        assert_eq!(b.next_seq(), 3);
    }

    #[test]
    fn seals_before_exceeding_the_byte_limit() {
        let header = BatchEncoder::new("geo", &["api", "ts", "ok"])
            .unwrap()
            .header_len();
        let ev_len = BatchEncoder::event_len(&EV);
        // Room for exactly two events.
        let mut b = batcher(100, header + 2 * ev_len + 1);
        let mut sealed = Vec::new();
        for _ in 0..5 {
            b.push_values("geo", &EV, ok, &mut |s| sealed.push(s))
                .unwrap();
        }
        let counts: Vec<u32> = sealed.iter().map(|s| s.events).collect();
        assert_eq!(counts, vec![2, 2]);
        assert!(sealed.iter().all(|s| s.frame.len() <= b.limits().max_bytes));
        // An event that cannot fit any batch is refused.
        let mut tiny = batcher(100, header + 4);
        assert!(matches!(
            tiny.push_values("geo", &EV, ok, &mut |_| {}),
            Err(PublishError::EventTooLarge { .. })
        ));
    }

    #[test]
    fn peer_limits_only_lower() {
        let mut b = batcher(1000, 1 << 20);
        b.apply_peer_limits(BatchLimits::announced(u32::MAX, 5000));
        assert_eq!(
            b.limits(),
            BatchLimits {
                max_events: 1000,
                max_bytes: 1 << 20
            }
        );
        b.apply_peer_limits(BatchLimits::announced(1000, 10));
        assert_eq!(
            b.limits(),
            BatchLimits {
                max_events: 10,
                max_bytes: 1004
            }
        );
    }

    #[test]
    fn announced_zero_means_no_limit() {
        let none = BatchLimits::announced(0, 0);
        assert_eq!(none.max_events, u32::MAX);
        assert_eq!(none.max_bytes, usize::MAX);
        assert_eq!(BatchLimits::announced(100, 7).max_bytes, 104);
    }

    /// A batch sealed under larger limits than a worker announced is re-encoded as parts within
    /// them: the same events in order, fresh seqs, byte and event accounting kept, each part
    /// admitted by those limits.
    #[test]
    fn a_split_batch_keeps_every_event_in_order_within_the_limits() {
        let mut b = Batcher::new(
            BatchLimits {
                max_events: 1000,
                max_bytes: 1 << 20,
            },
            true,
        );
        b.add_schema(geo(), SchemaSource::Given);
        let apis: Vec<String> = (0..25)
            .map(|i| format!("api-{i:0>width$}", width = i % 7))
            .collect();
        for (i, api) in apis.iter().enumerate() {
            let ev = [
                ValueRef::String(api),
                ValueRef::Long(i64::try_from(i).expect("i")),
                ValueRef::Bool(i % 2 == 0),
            ];
            b.push_values("geo", &ev, ok, &mut |_| panic!("not full"))
                .expect("push");
        }
        let mut sealed = Vec::new();
        b.seal_all(&mut |x| sealed.push(x));
        let whole = sealed.pop().expect("one batch");
        assert_eq!((whole.seq, whole.events), (0, 25));
        let peer = BatchLimits::announced(130, 4);
        assert!(!peer.admit(&whole));
        let parts = b.split(&whole, peer).expect("split");
        assert_eq!(b.next_seq(), 1 + u64::try_from(parts.len()).expect("n"));
        let mut next = 0;
        let mut bytes = 0;
        for (k, part) in parts.iter().enumerate() {
            assert_eq!(part.seq, 1 + k as u64);
            assert!(
                peer.admit(part),
                "part {k}: {} events, {} bytes",
                part.events,
                part.frame.len()
            );
            assert_eq!(part.opened_at, whole.opened_at);
            assert_eq!(part.published_at.len(), part.events as usize);
            let Frame::Batch(frame) =
                Frame::decode(kind::BATCH, part.frame.slice(LEN_PREFIX + 1..)).expect("decodes")
            else {
                panic!("not a batch");
            };
            assert_eq!(frame.seq, part.seq);
            let mut reader = frame.reader();
            let mut values = Vec::new();
            while reader.next_event(&mut values).expect("event") {
                assert_eq!(values[0], ValueRef::String(&apis[next]));
                assert_eq!(values[1], ValueRef::Long(i64::try_from(next).expect("i")));
                assert_eq!(
                    part.published_at[(part.events - reader.remaining() - 1) as usize],
                    whole.published_at[next]
                );
                bytes += BatchEncoder::event_len(&values) as u64;
                next += 1;
            }
        }
        assert_eq!(next, 25);
        assert_eq!(bytes, whole.event_bytes);
        assert_eq!(
            parts.iter().map(|p| p.event_bytes).sum::<u64>(),
            whole.event_bytes
        );
        // Four events per part at most; the frame limit makes some parts smaller still.
        assert!(parts.len() >= 7, "{} parts", parts.len());
        assert!(
            parts
                .iter()
                .any(|p| p.events < 4 && p.seq != parts.last().expect("last").seq)
        );
    }

    #[test]
    fn schema_errors_are_clear_and_leave_nothing_behind() {
        let mut b = batcher(10, 1 << 20);
        let mut sealed = Vec::new();
        let mut push = |b: &mut Batcher, s: &str, v: &[ValueRef<'_>]| {
            b.push_values(s, v, ok, &mut |x| sealed.push(x))
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            push(&mut b, "nope", &EV).unwrap_err(),
            "unknown stream \"nope\" (known streams: geo)"
        );
        assert_eq!(
            push(&mut b, "geo", &EV[..2]).unwrap_err(),
            "stream \"geo\" has 3 attributes, got 2 values"
        );
        assert_eq!(
            push(
                &mut b,
                "geo",
                &[ValueRef::String("a"), ValueRef::Int(1), ValueRef::Null]
            )
            .unwrap_err(),
            "attribute geo.ts is long, got a int value"
        );
        push(
            &mut b,
            "geo",
            &[ValueRef::Null, ValueRef::Null, ValueRef::Null],
        )
        .unwrap();
        let event = Event::new().with("api", "x").with("country", "IT");
        assert_eq!(
            b.push_event("geo", &event, ok, &mut |_| {})
                .unwrap_err()
                .to_string(),
            "stream \"geo\" has no attribute \"country\" (attributes: api, ts, ok)"
        );
        assert_eq!(
            b.push_event("geo", &Event::new().with("ok", "yes"), ok, &mut |_| {})
                .unwrap_err()
                .to_string(),
            "attribute geo.ok is bool, got a string value"
        );
        b.seal_all(&mut |x| sealed.push(x));
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].events, 1);
    }

    #[test]
    fn a_failed_reservation_appends_nothing() {
        let mut b = batcher(10, 1 << 20);
        let full = |_: u64| {
            Err(PublishError::BufferFull {
                events: 1,
                bytes: 1,
                waited: Duration::ZERO,
            })
        };
        assert!(matches!(
            b.push_values("geo", &EV, full, &mut |_| {}),
            Err(PublishError::BufferFull { .. })
        ));
        let mut sealed = Vec::new();
        b.seal_all(&mut |x| sealed.push(x));
        assert!(sealed.is_empty());
    }

    #[test]
    fn events_map_onto_the_schema_with_widening_and_nulls() {
        let mut b = batcher(10, 1 << 20);
        let event = Event::new().with("ts", 5i32).with("api", "x");
        b.push_event("geo", &event, ok, &mut |_| {}).unwrap();
        let mut sealed = Vec::new();
        b.seal_all(&mut |x| sealed.push(x));
        let (_, columns, events) = open_up(&sealed[0]);
        assert_eq!(columns, ["api", "ts", "ok"]);
        assert_eq!(
            events,
            vec![vec![Value::from("x"), Value::Long(5), Value::Null]]
        );
    }

    #[test]
    fn without_schemas_columns_follow_the_events() {
        let mut b = Batcher::new(
            BatchLimits {
                max_events: 100,
                max_bytes: 1 << 20,
            },
            true,
        );
        let mut sealed = Vec::new();
        assert!(matches!(
            b.push_values("s", &EV, ok, &mut |_| {}),
            Err(PublishError::SchemaRequired { .. })
        ));
        let e1 = Event::new().with("a", 1).with("b", "x");
        let e2 = Event::new().with("b", "y");
        let e3 = Event::new().with("c", true);
        for e in [&e1, &e2, &e3] {
            b.push_event("s", e, ok, &mut |x| sealed.push(x)).unwrap();
        }
        // e3 has a new field: the first batch was sealed to start one with its columns.
        assert_eq!(sealed.len(), 1);
        b.seal_all(&mut |x| sealed.push(x));
        let (_, c0, ev0) = open_up(&sealed[0]);
        assert_eq!(c0, ["a", "b"]);
        assert_eq!(
            ev0,
            vec![
                vec![Value::Int(1), Value::from("x")],
                vec![Value::Null, Value::from("y")]
            ]
        );
        let (_, c1, ev1) = open_up(&sealed[1]);
        assert_eq!(c1, ["c"]);
        assert_eq!(ev1, vec![vec![Value::Bool(true)]]);
        assert_eq!(sealed[0].published_at.len(), 2);
        b.push_event("typo", &e1, ok, &mut |_| {}).unwrap();
        // A schema learned later applies to the next events.
        assert!(b.add_schema(
            StreamSchema::new("s", vec![Attribute::new("a", AttrType::Long)]),
            SchemaSource::Learned
        ));
        assert!(matches!(
            b.push_event("other", &e1, ok, &mut |_| {}),
            Err(PublishError::UnknownStream { .. })
        ));
        // Published to before the schemas were known, and not among them: refused now too
        // (a worker would reject its batches).
        assert!(matches!(
            b.push_event("typo", &e1, ok, &mut |_| {}),
            Err(PublishError::UnknownStream { .. })
        ));
        assert!(matches!(
            b.push_values("typo", &EV, ok, &mut |_| {}),
            Err(PublishError::UnknownStream { .. })
        ));
        b.push_event("s", &Event::new().with("a", 7i64), ok, &mut |_| {})
            .unwrap();
        // A different announcement for the same stream is ignored (and flagged).
        assert!(!b.add_schema(
            StreamSchema::new("s", vec![Attribute::new("z", AttrType::Int)]),
            SchemaSource::Learned
        ));
        assert_eq!(b.schema("s").unwrap().attributes[0].name, "a");
    }

    #[test]
    fn given_schemas_win_over_learned_ones() {
        let mut b = batcher(10, 1 << 20);
        assert!(b.add_schema(
            StreamSchema::new("geo", vec![Attribute::new("x", AttrType::Int)]),
            SchemaSource::Learned
        ));
        assert_eq!(**b.schema("geo").unwrap(), geo());
        assert!(b.add_schema(StreamSchema::new("other", vec![]), SchemaSource::Learned));
        assert!(b.schema("other").is_none());
    }

    #[test]
    fn a_given_schema_takes_the_first_workers_constraints() {
        let mut b = batcher(10, 1 << 20);
        let mut constrained = geo();
        constrained.attributes[0] = constrained.attributes[0].clone().required().max_chars(5);
        assert!(b.add_schema(constrained.clone(), SchemaSource::Learned));
        assert_eq!(**b.schema("geo").unwrap(), constrained);
        let null_first = [ValueRef::Null, EV[1], EV[2]];
        assert!(matches!(
            b.push_values("geo", &null_first, ok, &mut |_| {}),
            Err(PublishError::InvalidValue { .. })
        ));
        // A second worker's different constraints do not flip them back and forth.
        assert!(b.add_schema(geo(), SchemaSource::Learned));
        assert_eq!(**b.schema("geo").unwrap(), constrained);
    }

    #[test]
    fn lingering_batches_are_sealed() {
        let mut b = batcher(100, 1 << 20);
        b.push_values("geo", &EV, ok, &mut |_| {}).unwrap();
        let mut sealed = Vec::new();
        let linger = Duration::from_millis(10);
        b.seal_lingering(Instant::now(), Duration::from_secs(3600), &mut |x| {
            sealed.push(x)
        });
        assert!(sealed.is_empty());
        b.seal_lingering(Instant::now() + linger, linger, &mut |x| sealed.push(x));
        assert_eq!(sealed.len(), 1);
        // Nothing left to seal.
        b.seal_lingering(Instant::now() + linger, linger, &mut |x| sealed.push(x));
        assert_eq!(sealed.len(), 1);
    }
}

//! [`BatchEncoder`]: builds a BATCH frame event by event, straight into its final bytes.
//!
//! The frame is laid out as it will be sent; the length, the sequence number and the event count
//! are patched in when the batch is sealed, so pushing an event is a bounds check and a few
//! `memcpy`s into one growing buffer — no allocation per event.
//!
//! ```text
//! +---------+------+-------------+------------+-----------+-----------+-------------+--------+
//! | len u32 | 0x03 | seq u64 (*) | str stream | u16 ncols | ncols×str | n_events(*) | events |
//! +---------+------+-------------+------------+-----------+-----------+-------------+--------+
//!   (*) patched by `seal`/`finish`
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{LEN_PREFIX, ProtocolError, kind, put_str, value_len};
use super::value::ValueRef;

const SEQ_AT: usize = LEN_PREFIX + 1;

/// Builds a BATCH frame incrementally.
#[derive(Debug)]
pub struct BatchEncoder {
    buf: BytesMut,
    /// The bytes before the first event (with zeroed len/seq/count), to start the next batch.
    header: Bytes,
    n_columns: usize,
    count: u32,
    capacity_hint: usize,
}

impl BatchEncoder {
    /// An empty batch for `stream` whose events have one value per column, in this order.
    ///
    /// Fails when there are more than 65535 columns or a name is 4 GiB or longer.
    pub fn new<S: AsRef<str>>(stream: &str, columns: &[S]) -> Result<BatchEncoder, ProtocolError> {
        BatchEncoder::with_capacity(stream, columns, 0)
    }

    /// Like [`BatchEncoder::new`], reserving `capacity` bytes for each batch up front.
    pub fn with_capacity<S: AsRef<str>>(
        stream: &str,
        columns: &[S],
        capacity: usize,
    ) -> Result<BatchEncoder, ProtocolError> {
        let mut header = BytesMut::new();
        header.put_u32(0);
        header.put_u8(kind::BATCH);
        header.put_u64(0);
        put_str(&mut header, stream, "stream")?;
        let n16 = u16::try_from(columns.len()).map_err(|_| ProtocolError::FieldTooLong {
            what: "column list",
            len: columns.len(),
        })?;
        header.put_u16(n16);
        for c in columns {
            put_str(&mut header, c.as_ref(), "column")?;
        }
        header.put_u32(0);
        let header = header.freeze();
        let mut enc = BatchEncoder {
            buf: BytesMut::new(),
            header,
            n_columns: columns.len(),
            count: 0,
            capacity_hint: capacity,
        };
        enc.start();
        Ok(enc)
    }

    fn start(&mut self) {
        self.buf.reserve(self.capacity_hint.max(self.header.len()));
        self.buf.extend_from_slice(&self.header);
        self.count = 0;
    }

    /// The encoded size of one event with these values (what [`BatchEncoder::push_event`] adds
    /// to [`BatchEncoder::encoded_len`]).
    pub fn event_len(values: &[ValueRef<'_>]) -> usize {
        values.iter().map(value_len).sum()
    }

    /// Number of columns per event.
    pub fn column_count(&self) -> usize {
        self.n_columns
    }

    /// Appends one event: exactly one value per column, in column order.
    ///
    /// On error nothing is appended.
    pub fn push_event(&mut self, values: &[ValueRef<'_>]) -> Result<(), ProtocolError> {
        if values.len() != self.n_columns {
            return Err(ProtocolError::ColumnCountMismatch {
                expected: self.n_columns,
                got: values.len(),
            });
        }
        if self.count == u32::MAX {
            return Err(ProtocolError::FieldTooLong {
                what: "event count",
                len: u32::MAX as usize + 1,
            });
        }
        let mut len = 0;
        for v in values {
            if let ValueRef::String(text) = v
                && u32::try_from(text.len()).is_err()
            {
                return Err(ProtocolError::FieldTooLong {
                    what: "string value",
                    len: text.len(),
                });
            }
            len += value_len(v);
        }
        // One bounds check for the whole event, then plain copies into the frame.
        let start = self.buf.len();
        self.buf.resize(start + len, 0);
        let mut out = &mut self.buf[start..];
        for v in values {
            out = write_value(out, v);
        }
        self.count += 1;
        Ok(())
    }

    /// Events pushed since the batch was started.
    pub fn event_count(&self) -> u32 {
        self.count
    }

    /// Whether no event has been pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The size of the complete frame so far, length prefix included.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// The size of an empty batch of this stream (the frame without events).
    pub fn header_len(&self) -> usize {
        self.header.len()
    }

    /// Seals the batch as sequence number `seq` and returns the complete frame (length prefix
    /// included), leaving the encoder empty and ready for the next batch.
    ///
    /// The frame's `len` field is the frame length minus 4; a frame over 4 GiB cannot be built
    /// (the caller keeps batches under the peer's `max_frame_len`) and is saturated.
    pub fn seal(&mut self, seq: u64) -> Bytes {
        let len = u32::try_from(self.buf.len() - LEN_PREFIX).unwrap_or(u32::MAX);
        self.buf[..LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
        self.buf[SEQ_AT..SEQ_AT + 8].copy_from_slice(&seq.to_be_bytes());
        let count_at = self.header.len() - 4;
        self.buf[count_at..count_at + 4].copy_from_slice(&self.count.to_be_bytes());
        let frame = self.buf.split().freeze();
        // The next batch of this stream is likely about the size of this one: allocate it at
        // once rather than growing (and copying) it step by step — but not much more, as a
        // sealed frame keeps its allocation until it is acked.
        self.capacity_hint = frame.len() + frame.len() / 8;
        self.start();
        frame
    }

    /// Seals the batch as sequence number `seq` and returns the complete frame.
    pub fn finish(mut self, seq: u64) -> Bytes {
        let len = u32::try_from(self.buf.len() - LEN_PREFIX).unwrap_or(u32::MAX);
        self.buf[..LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
        self.buf[SEQ_AT..SEQ_AT + 8].copy_from_slice(&seq.to_be_bytes());
        let count_at = self.header.len() - 4;
        self.buf[count_at..count_at + 4].copy_from_slice(&self.count.to_be_bytes());
        self.buf.freeze()
    }
}

/// Writes one value — `u8 tag | payload`, big-endian, strings as `u32 len | UTF-8` (PROTOCOL.md)
/// — at the start of `out`, which has room for it ([`value_len`]); returns the rest of `out`.
/// Strings are shorter than 4 GiB (checked by the caller).
fn write_value<'o>(out: &'o mut [u8], v: &ValueRef<'_>) -> &'o mut [u8] {
    fn put<'o>(out: &'o mut [u8], bytes: &[u8]) -> &'o mut [u8] {
        let (head, tail) = out.split_at_mut(bytes.len());
        head.copy_from_slice(bytes);
        tail
    }
    let (tag, rest) = out.split_at_mut(1);
    match *v {
        ValueRef::Null => {
            tag[0] = 0;
            rest
        }
        ValueRef::String(s) => {
            tag[0] = 1;
            let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
            put(put(rest, &len.to_be_bytes()), s.as_bytes())
        }
        ValueRef::Int(x) => {
            tag[0] = 2;
            put(rest, &x.to_be_bytes())
        }
        ValueRef::Long(x) => {
            tag[0] = 3;
            put(rest, &x.to_be_bytes())
        }
        ValueRef::Float(x) => {
            tag[0] = 4;
            put(rest, &x.to_bits().to_be_bytes())
        }
        ValueRef::Double(x) => {
            tag[0] = 5;
            put(rest, &x.to_bits().to_be_bytes())
        }
        ValueRef::Bool(x) => {
            tag[0] = 6;
            put(rest, &[u8::from(x)])
        }
    }
}

/// The sequence number of a sealed BATCH frame, or `None` when `frame` is not one.
pub fn batch_seq(frame: &[u8]) -> Option<u64> {
    let bytes = frame.get(SEQ_AT..SEQ_AT + 8)?;
    if frame[LEN_PREFIX] != kind::BATCH {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(bytes);
    Some(u64::from_be_bytes(seq))
}

//! Frames: the messages of the shardtally protocol, and their body encoding.
//!
//! Every frame on the wire is length-prefixed; all integers are big-endian:
//!
//! ```text
//! +-----------+---------+---------------------------+
//! | len: u32  | kind: u8| body (len - 1 bytes)      |
//! +-----------+---------+---------------------------+
//! str := u32 byte-length | UTF-8 bytes
//!
//! 0x01 HELLO    "STLY" | u16 version | str publisher_id | str auth_token | str client_name
//! 0x02 WELCOME  u16 version | str node_id | str shard_id | u32 max_frame_len | u32 max_batch_events
//!               | u16 n_streams | n × (str name | u16 n_attrs | n × attr)
//!               attr := str attr_name | u8 type | u8 flags | u32 max_chars   (version 2;
//!                       flags 0x01: required; max_chars 0xffffffff: no limit)
//!               attr := str attr_name | u8 type                               (version 1)
//! 0x03 BATCH    u64 batch_seq | str stream | u16 n_columns | n × str column | u32 n_events | events
//!               event := n_columns × (u8 tag | payload)
//! 0x04 ACK      u64 batch_seq
//! 0x05 REJECT   u64 batch_seq | u16 code | str reason
//! 0x06 PING     u64 nonce
//! 0x07 PONG     u64 nonce
//! 0x08 ERROR    u16 code | str message
//! 0x09 GOODBYE  str reason
//! ```
//!
//! Value tags: 0 null, 1 string (str), 2 int (i32), 3 long (i64), 4 float (f32 bits),
//! 5 double (f64 bits), 6 bool (u8 0/1). Schema type bytes: 1 string … 6 bool (the tag numbers).
//!
//! Decoding a frame validates everything but a batch's events, which [`EventReader`] validates as
//! it reads them (the worker reads each event once anyway). `PROTOCOL.md` is the full description.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::schema::{Attribute, StreamSchema};
use super::value::{AttrType, ValueRef};

/// The protocol version this crate speaks (and a publisher asks for).
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest version this crate still speaks: a worker answers a version-1 HELLO with a
/// version-1 WELCOME (without the attributes' constraints).
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// The longest publisher id (bytes) a worker accepts in HELLO; a longer one gets ERROR
/// `Malformed`.
pub const MAX_PUBLISHER_ID_LEN: usize = 128;
/// WELCOME `max_chars` (version 2) of an attribute without a length limit.
const NO_MAX_CHARS: u32 = u32::MAX;
/// WELCOME attribute flag (version 2): null is refused (a group-by key).
const ATTR_REQUIRED: u8 = 0x01;

/// The default maximum frame length (the `len` field), 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// The four bytes every HELLO body starts with.
pub const HELLO_MAGIC: [u8; 4] = *b"STLY";

/// Size of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Frame kind bytes.
pub mod kind {
    /// HELLO (publisher → worker).
    pub const HELLO: u8 = 0x01;
    /// WELCOME (worker → publisher).
    pub const WELCOME: u8 = 0x02;
    /// BATCH (publisher → worker).
    pub const BATCH: u8 = 0x03;
    /// ACK (worker → publisher).
    pub const ACK: u8 = 0x04;
    /// REJECT (worker → publisher).
    pub const REJECT: u8 = 0x05;
    /// PING (either way).
    pub const PING: u8 = 0x06;
    /// PONG (either way).
    pub const PONG: u8 = 0x07;
    /// ERROR (either way; the sender closes the connection after it).
    pub const ERROR: u8 = 0x08;
    /// GOODBYE (worker → publisher: draining).
    pub const GOODBYE: u8 = 0x09;
}

/// Errors of the wire protocol: malformed input while decoding, or a frame that cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The length prefix exceeds the maximum frame length (checked before anything is allocated).
    #[error("frame of {len} bytes exceeds the maximum frame length of {max} bytes")]
    FrameTooLarge {
        /// The announced (or, when encoding, the actual) frame length.
        len: u64,
        /// The maximum in force.
        max: usize,
    },
    /// The length prefix is 0: there is not even a kind byte.
    #[error("empty frame (length 0)")]
    EmptyFrame,
    /// The kind byte names no frame.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// A HELLO did not start with the magic `STLY`.
    #[error("bad magic {0:02x?} in HELLO (not a shardtally publisher?)")]
    BadMagic([u8; 4]),
    /// The peer speaks a protocol version this side does not.
    #[error(
        "unsupported protocol version {got} (this side speaks {MIN_PROTOCOL_VERSION} to \
         {PROTOCOL_VERSION})"
    )]
    UnsupportedVersion {
        /// The version the peer announced.
        got: u16,
    },
    /// The frame ended before a field was complete.
    #[error("truncated frame: {what} is cut off")]
    Truncated {
        /// The field being read.
        what: &'static str,
    },
    /// A string field is not valid UTF-8.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field being read.
        what: &'static str,
    },
    /// A value tag is not one of 0..=6.
    #[error("bad value tag {0}")]
    BadValueTag(u8),
    /// A schema type byte is not one of 1..=6.
    #[error("bad attribute type byte {0}")]
    BadTypeByte(u8),
    /// A WELCOME attribute's flags byte has bits this version does not define.
    #[error("bad attribute flags 0x{0:02x}")]
    BadAttributeFlags(u8),
    /// A bool value is neither 0 nor 1.
    #[error("bad bool byte {0}")]
    BadBool(u8),
    /// Bytes remain after the last field of a frame (or after the last event of a batch).
    #[error("{extra} trailing bytes after {what}")]
    TrailingBytes {
        /// What was complete.
        what: &'static str,
        /// How many bytes were left over.
        extra: usize,
    },
    /// Encoding: a field is too long for its length prefix (strings > 4 GiB, lists > 65535).
    #[error("cannot encode {what}: {len} exceeds the field's limit")]
    FieldTooLong {
        /// The field being written.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// Encoding: an event has a different number of values than the batch has columns.
    #[error("event has {got} values but the batch has {expected} columns")]
    ColumnCountMismatch {
        /// Columns in the batch.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// Reading from or writing to the socket failed.
    #[error("i/o error: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for ProtocolError {
    fn from(e: std::io::Error) -> ProtocolError {
        ProtocolError::Io(e)
    }
}

impl ProtocolError {
    /// The ERROR frame code to send to the peer before closing the connection.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ProtocolError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            ProtocolError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            ProtocolError::EmptyFrame
            | ProtocolError::UnknownKind(_)
            | ProtocolError::BadMagic(_)
            | ProtocolError::Truncated { .. }
            | ProtocolError::InvalidUtf8 { .. }
            | ProtocolError::BadValueTag(_)
            | ProtocolError::BadTypeByte(_)
            | ProtocolError::BadAttributeFlags(_)
            | ProtocolError::BadBool(_)
            | ProtocolError::TrailingBytes { .. } => ErrorCode::Malformed,
            ProtocolError::FieldTooLong { .. }
            | ProtocolError::ColumnCountMismatch { .. }
            | ProtocolError::Io(_) => ErrorCode::Internal,
        }
    }
}

macro_rules! wire_code {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $num:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A code this version does not know (kept verbatim).
            Other(u16),
        }

        impl From<u16> for $name {
            fn from(code: u16) -> $name {
                match code {
                    $($num => $name::$variant,)*
                    other => $name::Other(other),
                }
            }
        }

        impl From<$name> for u16 {
            fn from(code: $name) -> u16 {
                match code {
                    $($name::$variant => $num,)*
                    $name::Other(other) => other,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $($name::$variant => f.write_str(stringify!($variant)),)*
                    $name::Other(code) => write!(f, "code {code}"),
                }
            }
        }
    };
}

wire_code!(
    /// Why a worker rejected a batch (REJECT). A rejected batch can never succeed: do not retry it.
    RejectCode {
        /// The batch names a stream the worker has no schema for.
        UnknownStream = 1,
        /// A column or value does not match the stream's schema.
        SchemaMismatch = 2,
        /// The batch holds more events than the worker's `max_batch_events`.
        TooLarge = 3,
        /// The batch's events are malformed.
        Invalid = 4,
    }
);

wire_code!(
    /// The reason in an ERROR frame; the sender closes the connection after it.
    ErrorCode {
        /// The HELLO announced a protocol version the worker does not speak.
        UnsupportedVersion = 1,
        /// The auth token is missing or wrong.
        AuthFailed = 2,
        /// A frame's length prefix exceeded the maximum frame length.
        FrameTooLarge = 3,
        /// A frame could not be decoded.
        Malformed = 4,
        /// No HELLO arrived in time.
        HandshakeTimeout = 5,
        /// Nothing arrived for too long (missed heartbeats).
        IdleTimeout = 6,
        /// The worker is at its connection limit.
        TooManyConnections = 7,
        /// The worker is shutting down.
        ShuttingDown = 8,
        /// An internal error on the sender's side.
        Internal = 9,
        /// The worker only speaks TLS, and the connection is plaintext.
        TlsRequired = 10,
    }
);

/// HELLO: the publisher's opening frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the publisher speaks.
    pub version: u16,
    /// Unique per publisher instance: the dedup key is `(publisher_id, batch_seq)`.
    pub publisher_id: String,
    /// Shared secret; empty when none is configured.
    pub auth_token: String,
    /// Free text for logs (e.g. `shardtally-publisher/0.1.0`).
    pub client_name: String,
}

/// WELCOME: the worker's answer to a valid HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Protocol version the worker speaks.
    pub version: u16,
    /// The worker's node id.
    pub node_id: String,
    /// The shard id its aggregates are written under.
    pub shard_id: String,
    /// The largest frame (the `len` field) the worker accepts.
    pub max_frame_len: u32,
    /// The most events the worker accepts in one batch.
    pub max_batch_events: u32,
    /// The streams the worker accepts, with their schemas.
    pub streams: Vec<StreamSchema>,
}

/// BATCH: a sequence-numbered batch of events of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchFrame {
    /// Sequence number, unique per publisher id.
    pub seq: u64,
    /// The stream the events belong to.
    pub stream: String,
    /// Attribute names, positionally naming each event's values.
    pub columns: Vec<String>,
    /// Number of events in `events`.
    pub event_count: u32,
    /// The encoded events (a zero-copy slice of the received frame); read them with
    /// [`BatchFrame::reader`].
    pub events: Bytes,
}

impl BatchFrame {
    /// A reader over this batch's events.
    pub fn reader(&self) -> EventReader<'_> {
        EventReader::new(&self.events, self.columns.len(), self.event_count)
    }

    /// Reads every event once, checking that the events are well-formed.
    pub fn validate_events(&self) -> Result<(), ProtocolError> {
        let mut reader = self.reader();
        let mut out = Vec::with_capacity(self.columns.len());
        while reader.next_event(&mut out)? {}
        Ok(())
    }
}

/// Reads the events of a [`BatchFrame`] one at a time, validating them as it goes.
#[derive(Debug, Clone)]
pub struct EventReader<'a> {
    buf: &'a [u8],
    pos: usize,
    n_columns: usize,
    remaining: u32,
}

impl<'a> EventReader<'a> {
    /// A reader over `n_events` events of `n_columns` values each, encoded in `buf`.
    pub fn new(buf: &'a [u8], n_columns: usize, n_events: u32) -> EventReader<'a> {
        EventReader {
            buf,
            pos: 0,
            n_columns,
            remaining: n_events,
        }
    }

    /// Events not yet read.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// Reads the next event into `out` (cleared first; one value per column, strings borrowed
    /// from the frame). Returns `Ok(false)` after the last event.
    ///
    /// Errors on a malformed value or bytes left after the last event; after an error the reader
    /// stays on the bad event and returns the same error again.
    pub fn next_event(&mut self, out: &mut Vec<ValueRef<'a>>) -> Result<bool, ProtocolError> {
        out.clear();
        if self.remaining == 0 {
            let extra = self.buf.len() - self.pos;
            if extra != 0 {
                return Err(ProtocolError::TrailingBytes {
                    what: "the last event",
                    extra,
                });
            }
            return Ok(false);
        }
        let mut cur = Cursor {
            buf: self.buf,
            pos: self.pos,
        };
        for _ in 0..self.n_columns {
            match cur.value() {
                Ok(v) => out.push(v),
                Err(e) => {
                    out.clear();
                    return Err(e);
                }
            }
        }
        self.pos = cur.pos;
        self.remaining -= 1;
        Ok(true)
    }
}

/// One frame of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// 0x01: publisher → worker, first frame of a connection.
    Hello(Hello),
    /// 0x02: worker → publisher, answer to HELLO.
    Welcome(Welcome),
    /// 0x03: publisher → worker, events.
    Batch(BatchFrame),
    /// 0x04: worker → publisher, the batch is durably committed.
    Ack {
        /// The batch's sequence number.
        seq: u64,
    },
    /// 0x05: worker → publisher, the batch can never succeed (do not retry).
    Reject {
        /// The batch's sequence number.
        seq: u64,
        /// Why.
        code: RejectCode,
        /// Human-readable reason.
        reason: String,
    },
    /// 0x06: either way; the peer answers PONG with the same nonce.
    Ping {
        /// Echoed back in the PONG.
        nonce: u64,
    },
    /// 0x07: either way; answer to PING.
    Pong {
        /// The PING's nonce.
        nonce: u64,
    },
    /// 0x08: either way; the sender closes the connection after it.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable message.
        message: String,
    },
    /// 0x09: worker → publisher; the worker is draining: finish in-flight batches, send new ones
    /// elsewhere.
    Goodbye {
        /// Why.
        reason: String,
    },
}

impl Frame {
    /// The kind byte of this frame.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => kind::HELLO,
            Frame::Welcome(_) => kind::WELCOME,
            Frame::Batch(_) => kind::BATCH,
            Frame::Ack { .. } => kind::ACK,
            Frame::Reject { .. } => kind::REJECT,
            Frame::Ping { .. } => kind::PING,
            Frame::Pong { .. } => kind::PONG,
            Frame::Error { .. } => kind::ERROR,
            Frame::Goodbye { .. } => kind::GOODBYE,
        }
    }

    /// A short name for logs (`"BATCH"`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "HELLO",
            Frame::Welcome(_) => "WELCOME",
            Frame::Batch(_) => "BATCH",
            Frame::Ack { .. } => "ACK",
            Frame::Reject { .. } => "REJECT",
            Frame::Ping { .. } => "PING",
            Frame::Pong { .. } => "PONG",
            Frame::Error { .. } => "ERROR",
            Frame::Goodbye { .. } => "GOODBYE",
        }
    }

    /// Appends the complete frame (length prefix included) to `dst`.
    ///
    /// Fails, leaving `dst` as it was, when a field is too long or the frame would exceed
    /// `max_frame_len`.
    pub fn encode(&self, dst: &mut BytesMut, max_frame_len: usize) -> Result<(), ProtocolError> {
        let start = dst.len();
        let result = self.encode_unchecked(dst).and_then(|()| {
            let len = dst.len() - start - LEN_PREFIX;
            if len > max_frame_len {
                return Err(ProtocolError::FrameTooLarge {
                    len: len as u64,
                    max: max_frame_len,
                });
            }
            let len32 = u32::try_from(len).map_err(|_| ProtocolError::FrameTooLarge {
                len: len as u64,
                max: max_frame_len,
            })?;
            dst[start..start + LEN_PREFIX].copy_from_slice(&len32.to_be_bytes());
            Ok(())
        });
        if result.is_err() {
            dst.truncate(start);
        }
        result
    }

    /// Encodes the frame into a fresh buffer.
    pub fn to_bytes(&self, max_frame_len: usize) -> Result<Bytes, ProtocolError> {
        let mut buf = BytesMut::new();
        self.encode(&mut buf, max_frame_len)?;
        Ok(buf.freeze())
    }

    fn encode_unchecked(&self, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        dst.put_u32(0);
        dst.put_u8(self.kind());
        match self {
            Frame::Hello(h) => {
                dst.put_slice(&HELLO_MAGIC);
                dst.put_u16(h.version);
                put_str(dst, &h.publisher_id, "publisher_id")?;
                put_str(dst, &h.auth_token, "auth_token")?;
                put_str(dst, &h.client_name, "client_name")?;
            }
            Frame::Welcome(w) => {
                dst.put_u16(w.version);
                put_str(dst, &w.node_id, "node_id")?;
                put_str(dst, &w.shard_id, "shard_id")?;
                dst.put_u32(w.max_frame_len);
                dst.put_u32(w.max_batch_events);
                put_count16(dst, w.streams.len(), "stream list")?;
                for s in &w.streams {
                    put_str(dst, &s.name, "stream name")?;
                    put_count16(dst, s.attributes.len(), "attribute list")?;
                    for a in &s.attributes {
                        put_str(dst, &a.name, "attribute name")?;
                        dst.put_u8(type_byte(a.ty));
                        if w.version >= 2 {
                            dst.put_u8(if a.required { ATTR_REQUIRED } else { 0 });
                            dst.put_u32(a.max_chars.unwrap_or(NO_MAX_CHARS));
                        }
                    }
                }
            }
            Frame::Batch(b) => {
                dst.put_u64(b.seq);
                put_str(dst, &b.stream, "stream")?;
                put_count16(dst, b.columns.len(), "column list")?;
                for c in &b.columns {
                    put_str(dst, c, "column")?;
                }
                dst.put_u32(b.event_count);
                dst.put_slice(&b.events);
            }
            Frame::Ack { seq } => dst.put_u64(*seq),
            Frame::Reject { seq, code, reason } => {
                dst.put_u64(*seq);
                dst.put_u16((*code).into());
                put_str(dst, reason, "reason")?;
            }
            Frame::Ping { nonce } | Frame::Pong { nonce } => dst.put_u64(*nonce),
            Frame::Error { code, message } => {
                dst.put_u16((*code).into());
                put_str(dst, message, "message")?;
            }
            Frame::Goodbye { reason } => put_str(dst, reason, "reason")?,
        }
        Ok(())
    }

    /// Decodes a frame from its kind byte and body (the `len - 1` bytes after the kind).
    ///
    /// A BATCH's events are sliced out of `body` without copying and validated later by
    /// [`EventReader`].
    pub fn decode(kind_byte: u8, body: Bytes) -> Result<Frame, ProtocolError> {
        let mut cur = Cursor { buf: &body, pos: 0 };
        let frame = match kind_byte {
            kind::HELLO => {
                let magic = cur.array::<4>("magic")?;
                if magic != HELLO_MAGIC {
                    return Err(ProtocolError::BadMagic(magic));
                }
                let version = cur.version()?;
                Frame::Hello(Hello {
                    version,
                    publisher_id: cur.string("publisher_id")?,
                    auth_token: cur.string("auth_token")?,
                    client_name: cur.string("client_name")?,
                })
            }
            kind::WELCOME => {
                let version = cur.version()?;
                let node_id = cur.string("node_id")?;
                let shard_id = cur.string("shard_id")?;
                let max_frame_len = cur.u32("max_frame_len")?;
                let max_batch_events = cur.u32("max_batch_events")?;
                let n_streams = cur.u16("n_streams")?;
                // Every stream takes at least 6 bytes: never reserve more than the body can hold.
                let mut streams = Vec::with_capacity(usize::from(n_streams).min(cur.left() / 6));
                for _ in 0..n_streams {
                    let name = cur.string("stream name")?;
                    let n_attrs = cur.u16("n_attrs")?;
                    let mut attributes =
                        Vec::with_capacity(usize::from(n_attrs).min(cur.left() / 5));
                    for _ in 0..n_attrs {
                        let attr_name = cur.string("attribute name")?;
                        let ty = cur.u8("attribute type")?;
                        let mut attr = Attribute::new(attr_name, type_from_byte(ty)?);
                        if version >= 2 {
                            let flags = cur.u8("attribute flags")?;
                            if flags & !ATTR_REQUIRED != 0 {
                                return Err(ProtocolError::BadAttributeFlags(flags));
                            }
                            attr.required = flags & ATTR_REQUIRED != 0;
                            attr.max_chars =
                                Some(cur.u32("max_chars")?).filter(|&n| n != NO_MAX_CHARS);
                        }
                        attributes.push(attr);
                    }
                    streams.push(StreamSchema::new(name, attributes));
                }
                Frame::Welcome(Welcome {
                    version,
                    node_id,
                    shard_id,
                    max_frame_len,
                    max_batch_events,
                    streams,
                })
            }
            kind::BATCH => {
                let seq = cur.u64("batch_seq")?;
                let stream = cur.string("stream")?;
                let n_columns = cur.u16("n_columns")?;
                let mut columns = Vec::with_capacity(usize::from(n_columns).min(cur.left() / 4));
                for _ in 0..n_columns {
                    columns.push(cur.string("column")?);
                }
                let event_count = cur.u32("n_events")?;
                let events = body.slice(cur.pos..);
                return Ok(Frame::Batch(BatchFrame {
                    seq,
                    stream,
                    columns,
                    event_count,
                    events,
                }));
            }
            kind::ACK => Frame::Ack {
                seq: cur.u64("batch_seq")?,
            },
            kind::REJECT => Frame::Reject {
                seq: cur.u64("batch_seq")?,
                code: cur.u16("reject code")?.into(),
                reason: cur.string("reason")?,
            },
            kind::PING => Frame::Ping {
                nonce: cur.u64("nonce")?,
            },
            kind::PONG => Frame::Pong {
                nonce: cur.u64("nonce")?,
            },
            kind::ERROR => Frame::Error {
                code: cur.u16("error code")?.into(),
                message: cur.string("message")?,
            },
            kind::GOODBYE => Frame::Goodbye {
                reason: cur.string("reason")?,
            },
            other => return Err(ProtocolError::UnknownKind(other)),
        };
        let extra = cur.left();
        if extra != 0 {
            return Err(ProtocolError::TrailingBytes {
                what: frame.name(),
                extra,
            });
        }
        Ok(frame)
    }
}

/// The wire byte of an attribute type (schemas) — also the value tag of a non-null value.
pub fn type_byte(ty: AttrType) -> u8 {
    match ty {
        AttrType::String => 1,
        AttrType::Int => 2,
        AttrType::Long => 3,
        AttrType::Float => 4,
        AttrType::Double => 5,
        AttrType::Bool => 6,
    }
}

/// The attribute type of a wire type byte.
pub fn type_from_byte(byte: u8) -> Result<AttrType, ProtocolError> {
    Ok(match byte {
        1 => AttrType::String,
        2 => AttrType::Int,
        3 => AttrType::Long,
        4 => AttrType::Float,
        5 => AttrType::Double,
        6 => AttrType::Bool,
        other => return Err(ProtocolError::BadTypeByte(other)),
    })
}

/// Appends `str := u32 len | bytes`.
pub(crate) fn put_str(
    dst: &mut BytesMut,
    s: &str,
    what: &'static str,
) -> Result<(), ProtocolError> {
    let len =
        u32::try_from(s.len()).map_err(|_| ProtocolError::FieldTooLong { what, len: s.len() })?;
    dst.put_u32(len);
    dst.put_slice(s.as_bytes());
    Ok(())
}

fn put_count16(dst: &mut BytesMut, n: usize, what: &'static str) -> Result<(), ProtocolError> {
    let n16 = u16::try_from(n).map_err(|_| ProtocolError::FieldTooLong { what, len: n })?;
    dst.put_u16(n16);
    Ok(())
}

/// Encoded size of one value (tag included).
pub fn value_len(v: &ValueRef<'_>) -> usize {
    1 + match v {
        ValueRef::Null => 0,
        ValueRef::String(s) => 4 + s.len(),
        ValueRef::Int(_) | ValueRef::Float(_) => 4,
        ValueRef::Long(_) | ValueRef::Double(_) => 8,
        ValueRef::Bool(_) => 1,
    }
}

/// A bounds-checked big-endian reader over a byte slice.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if self.left() < n {
            return Err(ProtocolError::Truncated { what });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ProtocolError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn version(&mut self) -> Result<u16, ProtocolError> {
        let version = self.u16("version")?;
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
            return Err(ProtocolError::UnsupportedVersion { got: version });
        }
        Ok(version)
    }

    fn str(&mut self, what: &'static str) -> Result<&'a str, ProtocolError> {
        let len = self.u32(what)?;
        let len = usize::try_from(len).map_err(|_| ProtocolError::Truncated { what })?;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes).map_err(|_| ProtocolError::InvalidUtf8 { what })
    }

    fn string(&mut self, what: &'static str) -> Result<String, ProtocolError> {
        self.str(what).map(str::to_owned)
    }

    fn value(&mut self) -> Result<ValueRef<'a>, ProtocolError> {
        let tag = self.u8("value tag")?;
        Ok(match tag {
            0 => ValueRef::Null,
            1 => ValueRef::String(self.str("string value")?),
            2 => ValueRef::Int(i32::from_be_bytes(self.array("int value")?)),
            3 => ValueRef::Long(i64::from_be_bytes(self.array("long value")?)),
            4 => ValueRef::Float(f32::from_bits(self.u32("float value")?)),
            5 => ValueRef::Double(f64::from_bits(self.u64("double value")?)),
            6 => match self.u8("bool value")? {
                0 => ValueRef::Bool(false),
                1 => ValueRef::Bool(true),
                other => return Err(ProtocolError::BadBool(other)),
            },
            other => return Err(ProtocolError::BadValueTag(other)),
        })
    }
}

/// Reads the big-endian `u32` length prefix at the start of `buf`, if there are 4 bytes.
pub(crate) fn peek_len(buf: &[u8]) -> Option<u32> {
    let mut head = buf.get(..LEN_PREFIX)?;
    Some(head.get_u32())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::BatchEncoder;

    fn body(frame: &Frame) -> (u8, Bytes) {
        let bytes = frame.to_bytes(DEFAULT_MAX_FRAME_LEN).unwrap();
        (bytes[LEN_PREFIX], bytes.slice(LEN_PREFIX + 1..))
    }

    fn hello() -> Frame {
        Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            publisher_id: "gw-1".into(),
            auth_token: "secret".into(),
            client_name: "test".into(),
        })
    }

    #[test]
    fn hello_layout_is_as_documented() {
        let bytes = hello().to_bytes(DEFAULT_MAX_FRAME_LEN).unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(&(1u32 + 4 + 2 + 8 + 10 + 8).to_be_bytes());
        want.push(0x01);
        want.extend_from_slice(b"STLY");
        want.extend_from_slice(&2u16.to_be_bytes());
        for s in ["gw-1", "secret", "test"] {
            want.extend_from_slice(&u32::try_from(s.len()).unwrap().to_be_bytes());
            want.extend_from_slice(s.as_bytes());
        }
        assert_eq!(&bytes[..], &want[..]);
    }

    #[test]
    fn batch_layout_is_as_documented() {
        let mut enc = BatchEncoder::new("s", &["a", "b"]).unwrap();
        enc.push_event(&[ValueRef::String("x"), ValueRef::Bool(true)])
            .unwrap();
        enc.push_event(&[ValueRef::Null, ValueRef::Double(1.5)])
            .unwrap();
        let bytes = enc.finish(0x0102);
        let mut want = Vec::new();
        want.extend_from_slice(&[0; 4]);
        want.push(0x03);
        want.extend_from_slice(&0x0102u64.to_be_bytes());
        want.extend_from_slice(&[0, 0, 0, 1, b's', 0, 2, 0, 0, 0, 1, b'a', 0, 0, 0, 1, b'b']);
        want.extend_from_slice(&2u32.to_be_bytes());
        want.extend_from_slice(&[1, 0, 0, 0, 1, b'x', 6, 1, 0, 5]);
        want.extend_from_slice(&1.5f64.to_bits().to_be_bytes());
        let len = u32::try_from(want.len() - 4).unwrap();
        want[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(&bytes[..], &want[..]);
        assert_eq!(crate::protocol::batch_seq(&bytes), Some(0x0102));
    }

    #[test]
    fn bad_magic_is_rejected() {
        let (k, b) = body(&hello());
        let mut b = b.to_vec();
        b[0] = b'X';
        assert!(matches!(
            Frame::decode(k, Bytes::from(b)),
            Err(ProtocolError::BadMagic(m)) if &m == b"XTLY"
        ));
    }

    #[test]
    fn other_version_is_unsupported() {
        let (k, b) = body(&hello());
        for (version, speaks) in [(0u16, false), (1, true), (2, true), (3, false)] {
            let mut b = b.to_vec();
            b[4..6].copy_from_slice(&version.to_be_bytes());
            match Frame::decode(k, Bytes::from(b)) {
                Ok(Frame::Hello(h)) if speaks => assert_eq!(h.version, version),
                Err(err) if !speaks => {
                    assert!(
                        matches!(err, ProtocolError::UnsupportedVersion { got } if got == version)
                    );
                    assert_eq!(err.error_code(), ErrorCode::UnsupportedVersion);
                    assert_eq!(
                        err.to_string(),
                        format!("unsupported protocol version {version} (this side speaks 1 to 2)")
                    );
                }
                other => panic!("version {version}: {other:?}"),
            }
        }
    }

    fn welcome(version: u16) -> Welcome {
        Welcome {
            version,
            node_id: "n".into(),
            shard_id: "s".into(),
            max_frame_len: 1,
            max_batch_events: 1,
            streams: vec![StreamSchema::new(
                "st",
                vec![
                    Attribute::new("city", AttrType::String)
                        .required()
                        .max_chars(0x0102),
                    Attribute::new("n", AttrType::Long),
                ],
            )],
        }
    }

    #[test]
    fn welcome_layout_is_as_documented_in_both_versions() {
        let head = |version: u16| {
            let mut want = vec![0x02];
            want.extend_from_slice(&version.to_be_bytes());
            want.extend_from_slice(&[0, 0, 0, 1, b'n', 0, 0, 0, 1, b's', 0, 0, 0, 1, 0, 0, 0, 1]);
            want.extend_from_slice(&[0, 1, 0, 0, 0, 2, b's', b't', 0, 2]);
            want
        };
        // Version 2: type, flags (required), max_chars (0xffffffff: none).
        let mut want = head(2);
        want.extend_from_slice(&[
            0, 0, 0, 4, b'c', b'i', b't', b'y', 1, 0x01, 0, 0, 0x01, 0x02,
        ]);
        want.extend_from_slice(&[0, 0, 0, 1, b'n', 3, 0x00, 0xff, 0xff, 0xff, 0xff]);
        let bytes = Frame::Welcome(welcome(2))
            .to_bytes(DEFAULT_MAX_FRAME_LEN)
            .unwrap();
        assert_eq!(&bytes[LEN_PREFIX..], &want[..]);
        let (k, b) = body(&Frame::Welcome(welcome(2)));
        assert_eq!(Frame::decode(k, b).unwrap(), Frame::Welcome(welcome(2)));

        // Version 1 (answering an older publisher): type bytes only; the constraints are lost.
        let mut want = head(1);
        want.extend_from_slice(&[0, 0, 0, 4, b'c', b'i', b't', b'y', 1]);
        want.extend_from_slice(&[0, 0, 0, 1, b'n', 3]);
        let bytes = Frame::Welcome(welcome(1))
            .to_bytes(DEFAULT_MAX_FRAME_LEN)
            .unwrap();
        assert_eq!(&bytes[LEN_PREFIX..], &want[..]);
        let mut plain = welcome(1);
        plain.streams[0].attributes[0] = Attribute::new("city", AttrType::String);
        let (k, b) = body(&Frame::Welcome(welcome(1)));
        assert_eq!(Frame::decode(k, b).unwrap(), Frame::Welcome(plain));
    }

    #[test]
    fn unknown_kind_and_trailing_bytes_are_malformed() {
        let err = Frame::decode(0x0a, Bytes::new()).unwrap_err();
        assert!(matches!(err, ProtocolError::UnknownKind(0x0a)));
        assert_eq!(err.error_code(), ErrorCode::Malformed);
        let (k, b) = body(&Frame::Ack { seq: 1 });
        let mut b = b.to_vec();
        b.push(0);
        assert!(matches!(
            Frame::decode(k, Bytes::from(b)),
            Err(ProtocolError::TrailingBytes {
                what: "ACK",
                extra: 1
            })
        ));
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let (k, b) = body(&Frame::Goodbye {
            reason: "ab".into(),
        });
        let mut b = b.to_vec();
        b[4] = 0xff;
        assert!(matches!(
            Frame::decode(k, Bytes::from(b)),
            Err(ProtocolError::InvalidUtf8 { what: "reason" })
        ));
    }

    #[test]
    fn a_bad_type_byte_or_unknown_flags_in_welcome_are_rejected() {
        // The last attribute ends `u8 type | u8 flags | u32 max_chars`: `back` bytes from the
        // end, the byte that was `was` becomes `now`.
        let corrupt = |back: usize, was: u8, now: u8| {
            let (k, b) = body(&Frame::Welcome(welcome(PROTOCOL_VERSION)));
            let mut b = b.to_vec();
            let at = b.len() - back;
            assert_eq!(b[at], was);
            b[at] = now;
            Frame::decode(k, Bytes::from(b))
        };
        assert!(matches!(
            corrupt(6, 3, 7),
            Err(ProtocolError::BadTypeByte(7))
        ));
        assert!(matches!(
            corrupt(5, 0, 0x02),
            Err(ProtocolError::BadAttributeFlags(0x02))
        ));
    }

    fn batch_with_events(columns: usize, count: u32, events: &[u8]) -> BatchFrame {
        BatchFrame {
            seq: 1,
            stream: "s".into(),
            columns: (0..columns).map(|i| format!("c{i}")).collect(),
            event_count: count,
            events: Bytes::copy_from_slice(events),
        }
    }

    #[test]
    fn event_reader_rejects_bad_tags_bools_truncation_and_trailing_bytes() {
        let mut out = Vec::new();
        let b = batch_with_events(1, 1, &[9]);
        assert!(matches!(
            b.reader().next_event(&mut out),
            Err(ProtocolError::BadValueTag(9))
        ));
        let b = batch_with_events(1, 1, &[6, 2]);
        assert!(matches!(
            b.reader().next_event(&mut out),
            Err(ProtocolError::BadBool(2))
        ));
        let b = batch_with_events(1, 1, &[3, 0, 0]);
        let mut r = b.reader();
        assert!(matches!(
            r.next_event(&mut out),
            Err(ProtocolError::Truncated { what: "long value" })
        ));
        // The reader stays on the bad event.
        assert!(matches!(
            r.next_event(&mut out),
            Err(ProtocolError::Truncated { what: "long value" })
        ));
        let b = batch_with_events(1, 1, &[0, 0]);
        let mut r = b.reader();
        assert!(r.next_event(&mut out).unwrap());
        assert_eq!(out, vec![ValueRef::Null]);
        assert!(matches!(
            r.next_event(&mut out),
            Err(ProtocolError::TrailingBytes { extra: 1, .. })
        ));
        // Fewer events than announced.
        let b = batch_with_events(2, 2, &[2, 0, 0, 0, 1, 0]);
        let mut r = b.reader();
        assert!(r.next_event(&mut out).unwrap());
        assert_eq!(out, vec![ValueRef::Int(1), ValueRef::Null]);
        assert!(matches!(
            r.next_event(&mut out),
            Err(ProtocolError::Truncated { what: "value tag" })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn codes_convert_both_ways() {
        for c in 0..20u16 {
            assert_eq!(u16::from(RejectCode::from(c)), c);
            assert_eq!(u16::from(ErrorCode::from(c)), c);
        }
        assert_eq!(RejectCode::from(2), RejectCode::SchemaMismatch);
        assert_eq!(ErrorCode::from(9), ErrorCode::Internal);
        assert_eq!(ErrorCode::from(10), ErrorCode::TlsRequired);
        assert_eq!(ErrorCode::from(11), ErrorCode::Other(11));
        assert_eq!(ErrorCode::AuthFailed.to_string(), "AuthFailed");
    }

    #[test]
    fn encoder_checks_column_count_and_stays_unchanged_on_error() {
        let mut enc = BatchEncoder::new("s", &["a"]).unwrap();
        let before = enc.encoded_len();
        assert!(matches!(
            enc.push_event(&[ValueRef::Null, ValueRef::Null]),
            Err(ProtocolError::ColumnCountMismatch {
                expected: 1,
                got: 2
            })
        ));
        assert_eq!(enc.encoded_len(), before);
        assert_eq!(enc.event_count(), 0);
        let v = [ValueRef::String("hello")];
        enc.push_event(&v).unwrap();
        assert_eq!(enc.encoded_len(), before + BatchEncoder::event_len(&v));
        let first = enc.seal(1);
        assert_eq!(enc.event_count(), 0);
        assert_eq!(enc.encoded_len(), before);
        enc.push_event(&[ValueRef::Int(5)]).unwrap();
        let second = enc.seal(2);
        for (bytes, seq, want) in [
            (first, 1, ValueRef::String("hello")),
            (second, 2, ValueRef::Int(5)),
        ] {
            let Frame::Batch(b) = Frame::decode(bytes[4], bytes.slice(5..)).unwrap() else {
                panic!("not a batch");
            };
            assert_eq!((b.seq, b.event_count), (seq, 1));
            let mut r = b.reader();
            let mut out = Vec::new();
            assert!(r.next_event(&mut out).unwrap());
            assert_eq!(out, vec![want]);
            assert!(!r.next_event(&mut out).unwrap());
        }
    }
}

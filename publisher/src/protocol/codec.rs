//! [`FrameCodec`]: frames over a byte stream (tokio-util `Decoder`/`Encoder`).
//!
//! The decoder is a two-state machine in the manner of tokio-util's `length_delimited`:
//!
//! ```text
//!   Head ──(4 bytes: len ≤ max, len ≥ 1; reserve len)──▶ Data(len)
//!    ▲                                                    │
//!    └────────(len bytes: split off, decode; reserve 4)───┘
//! ```
//!
//! The length is checked against the maximum *before* any buffer space is reserved, so a peer
//! announcing a 4 GiB frame costs nothing but the error. A partial frame yields `Ok(None)`.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::frame::{DEFAULT_MAX_FRAME_LEN, Frame, LEN_PREFIX, ProtocolError, peek_len};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecodeState {
    /// Waiting for a length prefix.
    Head,
    /// The prefix is consumed; waiting for `len` bytes (kind + body).
    Data(usize),
}

/// Encodes and decodes [`Frame`]s, enforcing a maximum frame length.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame_len: usize,
    state: DecodeState,
}

impl FrameCodec {
    /// A codec accepting frames whose `len` field is at most `max_frame_len`.
    pub fn new(max_frame_len: usize) -> FrameCodec {
        FrameCodec {
            max_frame_len,
            state: DecodeState::Head,
        }
    }

    /// The maximum frame length in force.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Changes the maximum frame length (e.g. to the peer's limit after the handshake).
    pub fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.max_frame_len = max_frame_len;
    }

    fn decode_head(&mut self, src: &mut BytesMut) -> Result<Option<usize>, ProtocolError> {
        let Some(len) = peek_len(src) else {
            return Ok(None);
        };
        let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
        if len_usize > self.max_frame_len {
            return Err(ProtocolError::FrameTooLarge {
                len: u64::from(len),
                max: self.max_frame_len,
            });
        }
        if len_usize == 0 {
            return Err(ProtocolError::EmptyFrame);
        }
        src.advance(LEN_PREFIX);
        src.reserve(len_usize.saturating_sub(src.len()));
        Ok(Some(len_usize))
    }
}

impl Default for FrameCodec {
    fn default() -> FrameCodec {
        FrameCodec::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        let len = match self.state {
            DecodeState::Head => match self.decode_head(src)? {
                Some(len) => {
                    self.state = DecodeState::Data(len);
                    len
                }
                None => return Ok(None),
            },
            DecodeState::Data(len) => len,
        };
        if src.len() < len {
            return Ok(None);
        }
        self.state = DecodeState::Head;
        let mut frame = src.split_to(len).freeze();
        src.reserve(LEN_PREFIX);
        let kind = frame.get_u8();
        Frame::decode(kind, frame).map(Some)
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        frame.encode(dst, self.max_frame_len)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        frame.encode(dst, self.max_frame_len)
    }
}

/// Pre-encoded frames (length prefix included), written as they are: the publisher re-sends a
/// sealed batch as the same bytes. The length is not re-checked here.
impl Encoder<Bytes> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        dst.extend_from_slice(&frame);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::frame::PROTOCOL_VERSION;
    use crate::protocol::{
        AttrType, Attribute, BatchEncoder, ErrorCode, Hello, RejectCode, StreamSchema, Value,
        ValueRef, Welcome,
    };

    fn attr_type() -> impl Strategy<Value = AttrType> {
        prop_oneof![
            Just(AttrType::String),
            Just(AttrType::Int),
            Just(AttrType::Long),
            Just(AttrType::Float),
            Just(AttrType::Double),
            Just(AttrType::Bool),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            ".{0,12}".prop_map(Value::String),
            any::<i32>().prop_map(Value::Int),
            any::<i64>().prop_map(Value::Long),
            any::<u32>().prop_map(|b| Value::Float(f32::from_bits(b))),
            any::<u64>().prop_map(|b| Value::Double(f64::from_bits(b))),
            any::<bool>().prop_map(Value::Bool),
        ]
    }

    /// A batch: columns and events of matching width.
    fn batch() -> impl Strategy<Value = (u64, String, Vec<String>, Vec<Vec<Value>>)> {
        (0usize..5).prop_flat_map(|n| {
            (
                any::<u64>(),
                "[a-zA-Z]{0,8}",
                proptest::collection::vec("[a-z]{1,6}", n),
                proptest::collection::vec(proptest::collection::vec(value(), n), 0..6),
            )
        })
    }

    fn encode_batch(seq: u64, stream: &str, columns: &[String], events: &[Vec<Value>]) -> Bytes {
        let mut enc = BatchEncoder::new(stream, columns).unwrap();
        for e in events {
            let refs: Vec<ValueRef<'_>> = e.iter().map(Value::as_ref).collect();
            enc.push_event(&refs).unwrap();
        }
        enc.finish(seq)
    }

    fn decode_one(bytes: &[u8]) -> Result<Option<Frame>, ProtocolError> {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(bytes);
        codec.decode(&mut buf)
    }

    fn frame() -> impl Strategy<Value = Frame> {
        let s = || ".{0,10}";
        prop_oneof![
            (s(), s(), s()).prop_map(|(publisher_id, auth_token, client_name)| {
                Frame::Hello(Hello {
                    version: PROTOCOL_VERSION,
                    publisher_id,
                    auth_token,
                    client_name,
                })
            }),
            (
                s(),
                s(),
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec(
                    (s(), proptest::collection::vec((s(), attr_type()), 0..4)),
                    0..3
                )
            )
                .prop_map(|(node_id, shard_id, mfl, mbe, streams)| {
                    Frame::Welcome(Welcome {
                        version: PROTOCOL_VERSION,
                        node_id,
                        shard_id,
                        max_frame_len: mfl,
                        max_batch_events: mbe,
                        streams: streams
                            .into_iter()
                            .map(|(n, attrs)| {
                                StreamSchema::new(
                                    n,
                                    attrs
                                        .into_iter()
                                        .map(|(a, t)| Attribute::new(a, t))
                                        .collect(),
                                )
                            })
                            .collect(),
                    })
                }),
            batch().prop_map(|(seq, stream, columns, events)| {
                let bytes = encode_batch(seq, &stream, &columns, &events);
                decode_one(&bytes).unwrap().unwrap()
            }),
            any::<u64>().prop_map(|seq| Frame::Ack { seq }),
            (any::<u64>(), any::<u16>(), s()).prop_map(|(seq, c, reason)| Frame::Reject {
                seq,
                code: RejectCode::from(c),
                reason
            }),
            any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
            any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
            (any::<u16>(), s()).prop_map(|(c, message)| Frame::Error {
                code: ErrorCode::from(c),
                message
            }),
            s().prop_map(|reason| Frame::Goodbye { reason }),
        ]
    }

    /// Feeds `bytes` to a fresh decoder in chunks of the given sizes (cycled).
    fn decode_chunked(bytes: &[u8], chunks: &[usize]) -> Result<Vec<Frame>, ProtocolError> {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < bytes.len() {
            let n = chunks[i % chunks.len()].max(1).min(bytes.len() - pos);
            i += 1;
            buf.extend_from_slice(&bytes[pos..pos + n]);
            pos += n;
            while let Some(f) = codec.decode(&mut buf)? {
                out.push(f);
            }
        }
        assert!(buf.is_empty(), "bytes left over: {}", buf.len());
        Ok(out)
    }

    fn same_value(a: ValueRef<'_>, b: ValueRef<'_>) -> bool {
        match (a, b) {
            (ValueRef::Float(x), ValueRef::Float(y)) => x.to_bits() == y.to_bits(),
            (ValueRef::Double(x), ValueRef::Double(y)) => x.to_bits() == y.to_bits(),
            (a, b) => a == b,
        }
    }

    proptest! {
        #[test]
        fn frames_round_trip_across_chunk_splits(
            frames in proptest::collection::vec(frame(), 1..8),
            chunks in proptest::collection::vec(1usize..64, 1..16),
        ) {
            let mut codec = FrameCodec::default();
            let mut wire = BytesMut::new();
            for f in &frames {
                codec.encode(f, &mut wire).unwrap();
            }
            let decoded = decode_chunked(&wire, &chunks).unwrap();
            prop_assert_eq!(decoded, frames);
        }

        #[test]
        fn batch_events_round_trip(
            (seq, stream, columns, events) in batch(),
            chunks in proptest::collection::vec(1usize..32, 1..8),
        ) {
            let bytes = encode_batch(seq, &stream, &columns, &events);
            let decoded = decode_chunked(&bytes, &chunks).unwrap();
            prop_assert_eq!(decoded.len(), 1);
            let Frame::Batch(b) = &decoded[0] else {
                return Err(TestCaseError::fail("not a batch"));
            };
            prop_assert_eq!(b.seq, seq);
            prop_assert_eq!(&b.stream, &stream);
            prop_assert_eq!(&b.columns, &columns);
            prop_assert_eq!(b.event_count as usize, events.len());
            let mut reader = b.reader();
            let mut out = Vec::new();
            for e in &events {
                prop_assert!(reader.next_event(&mut out).unwrap());
                prop_assert_eq!(out.len(), e.len());
                for (got, want) in out.iter().zip(e) {
                    prop_assert!(same_value(*got, want.as_ref()), "{got:?} != {want:?}");
                }
            }
            prop_assert!(!reader.next_event(&mut out).unwrap());
            prop_assert!(out.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            chunks in proptest::collection::vec(1usize..32, 1..8),
        ) {
            let mut codec = FrameCodec::new(1024);
            let mut buf = BytesMut::new();
            let mut pos = 0;
            let mut i = 0;
            'feed: while pos < bytes.len() {
                let n = chunks[i % chunks.len()].min(bytes.len() - pos);
                i += 1;
                buf.extend_from_slice(&bytes[pos..pos + n]);
                pos += n;
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(Frame::Batch(b))) => {
                            let _ = b.validate_events();
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => {
                            let _ = e.error_code();
                            break 'feed;
                        }
                    }
                }
            }
        }

        #[test]
        fn garbage_bodies_behind_valid_prefixes_never_panic(
            parts in proptest::collection::vec(
                (0u8..12, proptest::collection::vec(any::<u8>(), 0..64)),
                1..6,
            ),
            chunks in proptest::collection::vec(1usize..32, 1..8),
        ) {
            let mut wire = Vec::new();
            for (kind, body) in &parts {
                wire.extend_from_slice(&u32::try_from(body.len() + 1).unwrap().to_be_bytes());
                wire.push(*kind);
                wire.extend_from_slice(body);
            }
            // Either every frame decodes (batches may still hold bad events) or an error stops it.
            match decode_chunked(&wire, &chunks) {
                Ok(frames) => {
                    prop_assert_eq!(frames.len(), parts.len());
                    for f in frames {
                        if let Frame::Batch(b) = f {
                            let _ = b.validate_events();
                        }
                    }
                }
                Err(e) => prop_assert_ne!(e.error_code(), ErrorCode::Internal),
            }
        }

        #[test]
        fn arbitrary_bodies_never_panic(
            kind in 0u8..12,
            body in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            if let Ok(Frame::Batch(b)) = Frame::decode(kind, Bytes::from(body)) {
                let _ = b.validate_events();
            }
        }

        #[test]
        fn truncated_frames_are_errors_not_panics(
            f in frame(),
            cut in any::<prop::sample::Index>(),
        ) {
            // A frame whose length prefix is honest but whose body is cut short is malformed.
            let bytes = f.to_bytes(DEFAULT_MAX_FRAME_LEN).unwrap();
            let body_len = bytes.len() - LEN_PREFIX - 1;
            prop_assume!(body_len > 0);
            let keep = cut.index(body_len);
            let body = bytes.slice(LEN_PREFIX + 1..LEN_PREFIX + 1 + keep);
            match Frame::decode(bytes[LEN_PREFIX], body) {
                Ok(Frame::Batch(b)) => prop_assert!(b.validate_events().is_err()),
                Ok(other) => prop_assert!(false, "decoded truncated {other:?}"),
                Err(e) => prop_assert_eq!(e.error_code(), ErrorCode::Malformed),
            }
        }
    }

    #[test]
    fn four_gib_length_prefix_is_rejected_without_allocating() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::with_capacity(8);
        buf.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, kind_byte()]);
        let cap_before = buf.capacity();
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, ProtocolError::FrameTooLarge { len: 0xffff_ffff, max } if max == DEFAULT_MAX_FRAME_LEN),
            "{err:?}"
        );
        assert_eq!(err.error_code(), ErrorCode::FrameTooLarge);
        assert_eq!(buf.capacity(), cap_before);
    }

    fn kind_byte() -> u8 {
        crate::protocol::frame::kind::BATCH
    }

    #[test]
    fn length_just_over_the_limit_is_rejected_and_at_the_limit_accepted() {
        let mut codec = FrameCodec::new(9);
        let ping = Frame::Ping { nonce: 7 }.to_bytes(9).unwrap();
        assert_eq!(ping.len(), 4 + 9);
        let mut buf = BytesMut::from(&ping[..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Ping { nonce: 7 })
        );
        let mut small = FrameCodec::new(8);
        let mut buf = BytesMut::from(&ping[..]);
        assert!(matches!(
            small.decode(&mut buf),
            Err(ProtocolError::FrameTooLarge { len: 9, max: 8 })
        ));
        let mut out = BytesMut::new();
        assert!(matches!(
            small.encode(Frame::Ping { nonce: 7 }, &mut out),
            Err(ProtocolError::FrameTooLarge { len: 9, max: 8 })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn partial_input_yields_none_and_reserves() {
        let mut codec = FrameCodec::default();
        let bytes = Frame::Goodbye {
            reason: "draining".into(),
        }
        .to_bytes(DEFAULT_MAX_FRAME_LEN)
        .unwrap();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&bytes[..2]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&bytes[2..6]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() >= bytes.len() - 4);
        buf.extend_from_slice(&bytes[6..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Goodbye {
                reason: "draining".into()
            })
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn zero_length_is_an_error() {
        assert!(matches!(
            decode_one(&[0, 0, 0, 0]),
            Err(ProtocolError::EmptyFrame)
        ));
    }

    #[test]
    fn pre_encoded_bytes_pass_through() {
        let bytes = encode_batch(
            3,
            "s",
            &["a".to_owned()],
            &[vec![Value::Int(1)], vec![Value::Null]],
        );
        let mut codec = FrameCodec::default();
        let mut wire = BytesMut::new();
        codec.encode(bytes.clone(), &mut wire).unwrap();
        assert_eq!(&wire[..], &bytes[..]);
        let Some(Frame::Batch(b)) = codec.decode(&mut wire).unwrap() else {
            panic!("not a batch");
        };
        assert_eq!((b.seq, b.event_count), (3, 2));
        b.validate_events().unwrap();
    }
}

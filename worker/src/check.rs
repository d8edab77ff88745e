//! What a batch's values must satisfy before they are folded, checked in the same pass that
//! decodes them (each batch is decoded once): the stream schema's types and constraints
//! ([`Attribute::check`](shardtally_publisher::protocol::Attribute::check): strings of at most
//! the column's characters, without NUL; finite numbers; non-null group-by keys). The catalog
//! puts the constraints on the schemas it announces, so a publisher that has them refuses such
//! an event alone at `publish`; here one bad event refuses its whole batch, so it can never fail
//! a flush.

use shardtally_publisher::protocol::{ErrorCode, ProtocolError, RejectCode, ValueRef};

use crate::catalog::Catalog;
use crate::ingest::IncomingBatch;

/// Why a batch's events are not taken.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refusal {
    /// Well-formed, but can never be accepted: `REJECT`, the publisher does not retry it.
    Reject(RejectCode, String),
    /// The event bytes are not valid: an `ERROR` frame, and the connection is closed.
    Malformed(ErrorCode, String),
}

impl From<ProtocolError> for Refusal {
    fn from(e: ProtocolError) -> Refusal {
        Refusal::Malformed(e.error_code(), e.to_string())
    }
}

/// Decodes every event of `batch` into `out` (one value per batch column, event after event;
/// strings borrowed from the frame) and checks every value. Returns the number of events.
pub(crate) fn decode_checked<'f>(
    catalog: &Catalog,
    batch: &'f IncomingBatch,
    out: &mut Vec<ValueRef<'f>>,
) -> Result<usize, Refusal> {
    out.clear();
    let schema = &catalog.streams()[batch.stream];
    let positions = &batch.positions;
    // A group-by key the batch does not carry would be null in every event.
    if batch.frame.event_count > 0
        && let Some(missing) = schema
            .attributes
            .iter()
            .enumerate()
            .find(|(p, a)| a.required && !positions.contains(p))
    {
        return Err(Refusal::Reject(
            RejectCode::Invalid,
            format!(
                "the batch has no column {}.{}, a group-by key, which must not be null",
                schema.name, missing.1.name
            ),
        ));
    }
    let attributes: Vec<_> = positions.iter().map(|&p| &schema.attributes[p]).collect();
    let width = positions.len();
    // Every value takes at least its one-byte tag: the claimed count cannot make us reserve more
    // than the frame's bytes (a 100-byte frame claiming 100,000 wide events reserves 100 values).
    out.reserve(
        width
            .saturating_mul(batch.frame.event_count as usize)
            .min(batch.frame.events.len()),
    );
    let mut event: Vec<ValueRef<'f>> = Vec::with_capacity(width);
    let mut reader = batch.frame.reader();
    let mut index = 0usize;
    while reader.next_event(&mut event)? {
        for (v, attr) in event.iter().zip(&attributes) {
            if let Err(reason) = attr.check(*v) {
                let code = match v.attr_type() {
                    Some(ty) if ty != attr.ty => RejectCode::SchemaMismatch,
                    _ => RejectCode::Invalid,
                };
                return Err(Refusal::Reject(
                    code,
                    format!("event #{index}: {}.{}: {reason}", schema.name, attr.name),
                ));
            }
        }
        out.extend_from_slice(&event);
        index += 1;
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::BytesMut;
    use shardtally_publisher::protocol::{BatchEncoder, Frame, FrameCodec};
    use tokio_util::codec::Decoder as _;

    use super::*;
    use crate::store::key_string_chars;

    /// Five string group-by keys: each may hold fewer characters than a non-key string.
    const WIDE_KEYS: &str = "@app:name('wide')
        define stream s (a string, b string, c string, d string, e string, n long);
        define aggregation WideAgg from s select a, b, c, d, e, count() as total
        group by a, b, c, d, e aggregate by n every sec;";

    /// Decodes and checks one batch of `events` over `columns` of stream `s` of `catalog`.
    fn check(
        catalog: &Catalog,
        columns: &[&str],
        events: &[Vec<ValueRef<'_>>],
    ) -> Result<usize, Refusal> {
        let mut encoder = BatchEncoder::new("s", columns).expect("columns");
        for e in events {
            encoder.push_event(e).expect("event");
        }
        let bytes = encoder.seal(1);
        let Ok(Some(Frame::Batch(frame))) =
            FrameCodec::new(1 << 20).decode(&mut BytesMut::from(&bytes[..]))
        else {
            panic!("not a batch");
        };
        let schema = &catalog.streams()[0];
        let positions: Vec<usize> = columns
            .iter()
            .map(|c| {
                schema
                    .attributes
                    .iter()
                    .position(|a| a.name == *c)
                    .expect("attribute")
            })
            .collect();
        let (reply, _replies) = tokio::sync::mpsc::unbounded_channel();
        let batch = IncomingBatch {
            publisher_id: Arc::from("p"),
            frame,
            stream: 0,
            positions: positions.into(),
            received_ms: 0,
            reply,
            held: crate::budget::HeldBytes::detached(1),
        };
        let mut out = Vec::new();
        let n = decode_checked(catalog, &batch, &mut out)?;
        assert_eq!(out.len(), n * columns.len());
        Ok(n)
    }

    fn event<'a>(a: &'a str) -> Vec<ValueRef<'a>> {
        let mut e = vec![ValueRef::String(a)];
        e.extend(["b", "c", "d", "e"].map(ValueRef::String));
        e.push(ValueRef::Long(1));
        e
    }

    #[test]
    fn group_by_keys_are_held_to_the_key_limit_in_characters_and_must_not_be_null() {
        let catalog = Catalog::from_text(WIDE_KEYS, true, "wide.siddhi").expect("app");
        let limit = key_string_chars(&catalog.layouts[0]);
        assert_eq!(limit, 124, "five string keys share the index budget");
        let columns = ["a", "b", "c", "d", "e", "n"];

        // At the limit in characters: accepted, though two-byte characters make it longer in
        // bytes (the character count decides, not the byte length).
        let ascii = "x".repeat(limit);
        let accented = "à".repeat(limit);
        let ok = [event(&ascii), event(&accented), event("Naples")];
        assert_eq!(check(&catalog, &columns, &ok), Ok(3));

        // One character over, in the third event: the whole batch is refused, naming it.
        let over = "à".repeat(limit + 1);
        let refused = check(&catalog, &columns, &[event("a"), event("b"), event(&over)]);
        assert_eq!(
            refused,
            Err(Refusal::Reject(
                RejectCode::Invalid,
                "event #2: s.a: a string of 125 characters; the store holds at most 124".into()
            ))
        );

        // A null key value, and a key column the batch does not carry at all.
        let mut null = event("a");
        null[0] = ValueRef::Null;
        assert_eq!(
            check(&catalog, &columns, &[event("a"), null]),
            Err(Refusal::Reject(
                RejectCode::Invalid,
                "event #1: s.a: null, but it is a group-by key, which must not be null".into(),
            ))
        );
        let without_a = event("a")[1..].to_vec();
        assert_eq!(
            check(&catalog, &columns[1..], &[without_a]),
            Err(Refusal::Reject(
                RejectCode::Invalid,
                "the batch has no column s.a, a group-by key, which must not be null".into(),
            ))
        );

        // A NUL inside a key is caught by the check every stored string gets.
        let refused = check(&catalog, &columns, &[event("a\0b")]);
        assert_eq!(
            refused,
            Err(Refusal::Reject(
                RejectCode::Invalid,
                "event #0: s.a: strings must not contain NUL characters".into()
            ))
        );
    }

    #[test]
    fn non_key_values_are_held_to_what_every_backend_stores_and_types_to_the_schema() {
        let catalog = Catalog::from_text(WIDE_KEYS, true, "wide.siddhi").expect("app");
        let columns = ["a", "b", "c", "d", "e", "n"];
        let mut wrong_type = event("a");
        wrong_type[5] = ValueRef::String("7");
        assert_eq!(
            check(&catalog, &columns, &[wrong_type]),
            Err(Refusal::Reject(
                RejectCode::SchemaMismatch,
                "event #0: s.n: long expected, got a string value".into()
            ))
        );
        // n is no key: null is taken (the event is bucketed by arrival time).
        let mut null_time = event("a");
        null_time[5] = ValueRef::Null;
        assert_eq!(check(&catalog, &columns, &[null_time]), Ok(1));
    }
}

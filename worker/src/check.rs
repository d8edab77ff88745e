//! What a batch's values must satisfy before they are folded, checked in the same pass that
//! decodes them (each batch is decoded once): the stream schema's types, what every backend can
//! store (strings of at most the column's characters, without NUL; finite numbers), and non-null
//! group-by keys within the key columns' limits. One bad event refuses its whole batch, so it can
//! never fail a flush.

use shardtally_publisher::protocol::{AttrType, ErrorCode, ProtocolError, RejectCode, ValueRef};

use crate::catalog::Catalog;
use crate::ingest::IncomingBatch;
use crate::store::{check_typed, key_string_chars};

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
    max_string_len: usize,
    batch: &'f IncomingBatch,
    out: &mut Vec<ValueRef<'f>>,
) -> Result<usize, Refusal> {
    out.clear();
    let schema = &catalog.streams()[batch.stream];
    let positions = &batch.positions;
    // The batch column (if any) carrying each group-by key, and the key column's type and
    // string limit, resolved once per batch.
    let keys: Vec<(Option<usize>, usize, usize, AttrType, usize)> = catalog
        .key_columns(batch.stream)
        .iter()
        .map(|&(pos, agg, key)| {
            let layout = &catalog.layouts[agg];
            let ty = layout.keys.get(key).map_or(AttrType::String, |c| c.ty);
            (
                positions.iter().position(|&p| p == pos),
                pos,
                agg,
                ty,
                key_string_chars(layout),
            )
        })
        .collect();
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
        for (v, &p) in event.iter().zip(positions.iter()) {
            if let Err(reason) = schema.check_value(p, *v) {
                return Err(Refusal::Reject(
                    RejectCode::SchemaMismatch,
                    format!("event #{index}: {reason}"),
                ));
            }
            if let Err(reason) = check_stored_value(*v, max_string_len) {
                return Err(Refusal::Reject(
                    RejectCode::Invalid,
                    format!(
                        "event #{index}: {}.{}: {reason}",
                        schema.name, schema.attributes[p].name
                    ),
                ));
            }
        }
        for &(column, pos, agg, ty, max_chars) in &keys {
            let value = column.map_or(ValueRef::Null, |i| event[i]);
            // The common case, decided without another pass over the string: a string key no
            // longer in bytes than the limit in characters (its NUL check was just done above).
            if let ValueRef::String(s) = value
                && ty == AttrType::String
                && s.len() <= max_chars
            {
                continue;
            }
            if let Err(e) = check_typed(ty, max_chars, true, value) {
                return Err(Refusal::Reject(
                    RejectCode::Invalid,
                    format!(
                        "event #{index}: {}.{} is a group-by key of {}: {e}",
                        schema.name, schema.attributes[pos].name, catalog.layouts[agg].aggregation
                    ),
                ));
            }
        }
        out.extend_from_slice(&event);
        index += 1;
    }
    Ok(index)
}

/// What every backend can store: strings of at most `max_chars` characters without NUL, finite
/// floating-point numbers.
fn check_stored_value(v: ValueRef<'_>, max_chars: usize) -> Result<(), String> {
    match v {
        ValueRef::String(text) => {
            if text.contains('\0') {
                return Err("strings must not contain NUL characters".into());
            }
            // Only count when the byte length could exceed the limit.
            if text.len() > max_chars {
                let chars = text.chars().count();
                if chars > max_chars {
                    return Err(format!(
                        "{chars} characters; the store holds at most {max_chars}"
                    ));
                }
            }
            Ok(())
        }
        ValueRef::Float(x) if !x.is_finite() => Err(format!("{x} is not a finite number")),
        ValueRef::Double(x) if !x.is_finite() => Err(format!("{x} is not a finite number")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::BytesMut;
    use shardtally_publisher::protocol::{BatchEncoder, Frame, FrameCodec};
    use tokio_util::codec::Decoder as _;

    use super::*;
    use crate::store::STRING_MAX_CHARS;

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
        let n = decode_checked(catalog, STRING_MAX_CHARS, &batch, &mut out)?;
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
                "event #2: s.a is a group-by key of WideAgg: string of 125 characters is longer \
                 than the column's 124"
                    .into()
            ))
        );

        // A null key value, and a key column the batch does not carry at all.
        let mut null = event("a");
        null[0] = ValueRef::Null;
        let expected = Err(Refusal::Reject(
            RejectCode::Invalid,
            "event #0: s.a is a group-by key of WideAgg: a group-by value is null; group-by \
             values must not be null"
                .into(),
        ));
        assert_eq!(check(&catalog, &columns, &[null]), expected);
        let without_a = event("a")[1..].to_vec();
        assert_eq!(check(&catalog, &columns[1..], &[without_a]), expected);

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
    fn stored_values_are_checked_for_what_every_backend_holds() {
        assert!(check_stored_value(ValueRef::String("Naples"), 6).is_ok());
        assert!(check_stored_value(ValueRef::String("Nàpoli"), 6).is_ok());
        let long = check_stored_value(ValueRef::String("Napoli!"), 6).unwrap_err();
        assert_eq!(long, "7 characters; the store holds at most 6");
        assert!(check_stored_value(ValueRef::String("a\0b"), 6).is_err());
        assert!(check_stored_value(ValueRef::Double(f64::NAN), 6).is_err());
        assert!(check_stored_value(ValueRef::Float(f32::INFINITY), 6).is_err());
        assert!(check_stored_value(ValueRef::Long(7), 6).is_ok());
        assert!(check_stored_value(ValueRef::Null, 6).is_ok());
    }
}

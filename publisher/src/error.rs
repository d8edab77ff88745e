//! The publisher's errors, one type per boundary: parsing a URL set, building the publisher,
//! building an event, publishing.

use std::time::Duration;

use crate::protocol::AttrType;

/// A receiver URL set could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlSetError {
    /// The URL set is empty.
    #[error("the receiver URL set is empty")]
    Empty,
    /// Braces, commas or pipes are out of place.
    #[error("bad receiver URL set: {message}")]
    Syntax {
        /// What is wrong, quoting the input.
        message: String,
    },
    /// Several URLs without braces: balancing or replication?
    #[error(
        "ambiguous receiver URL set {input:?}: write {{a,b}} to balance over the workers, \
         {{a|b}} for failover, or {{a}},{{b}} to send every event to each"
    )]
    Ambiguous {
        /// The input.
        input: String,
    },
    /// A group uses both `,` and `|`.
    #[error("group {group} mixes ',' (round-robin) and '|' (failover); use one or the other")]
    MixedSeparators {
        /// 1-based group number.
        group: usize,
    },
    /// A group has an empty member (`{a,,b}`, `{}`).
    #[error("member {member} of group {group} is empty")]
    EmptyMember {
        /// 1-based group number.
        group: usize,
        /// 1-based member number.
        member: usize,
    },
    /// The scheme is not `tcp`, `tls` or `ssl`.
    #[error("{url:?}: unsupported scheme {scheme:?} (use tcp://, tls:// or ssl://)")]
    BadScheme {
        /// The URL.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The port is missing, not a number, 0 or above 65535.
    #[error("{url:?}: bad port {port:?} (expected 1-65535)")]
    BadPort {
        /// The URL.
        url: String,
        /// The port as written.
        port: String,
    },
    /// The URL is otherwise malformed.
    #[error("{url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

/// The publisher could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The receiver URL set is invalid.
    #[error(transparent)]
    UrlSet(#[from] UrlSetError),
    /// `build` was called outside a tokio runtime.
    #[error("Publisher::build must be called from within a tokio runtime")]
    NoRuntime,
    /// A setting is out of range.
    #[error("invalid setting {setting}: {reason}")]
    Invalid {
        /// The builder method.
        setting: &'static str,
        /// Why.
        reason: String,
    },
    /// Two schemas were given for one stream.
    #[error("schema for stream {0:?} given twice")]
    DuplicateSchema(String),
    /// The TLS material for `tls://` endpoints is unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// An event could not be built from a `serde::Serialize` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The value is not a struct or a map with string keys.
    #[error("an event must serialize as a struct or a map, not {0}")]
    NotAStruct(&'static str),
    /// A field holds something that is not a scalar (a nested struct, a list, …).
    #[error("field {field:?}: {what} cannot be an attribute value")]
    Unsupported {
        /// The field.
        field: String,
        /// What it holds.
        what: &'static str,
    },
    /// An integer does not fit a `long`.
    #[error("field {field:?}: {value} does not fit a long")]
    OutOfRange {
        /// The field.
        field: String,
        /// The value.
        value: String,
    },
    /// A map key is not a string.
    #[error("map keys must be strings")]
    KeyNotString,
    /// The `Serialize` implementation failed.
    #[error("{0}")]
    Custom(String),
}

impl serde::ser::Error for EventError {
    fn custom<T: std::fmt::Display>(msg: T) -> EventError {
        EventError::Custom(msg.to_string())
    }
}

/// An event was not accepted by [`Publisher::publish`](crate::Publisher::publish).
///
/// Nothing of a refused event reaches the wire. Buffer-full refusals are counted in
/// [`Stats::dropped`](crate::Stats::dropped), schema refusals in
/// [`Stats::invalid`](crate::Stats::invalid).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PublishError {
    /// The stream has no schema while schemas are known.
    #[error("unknown stream {stream:?} (known streams: {})", known.join(", "))]
    UnknownStream {
        /// The stream.
        stream: String,
        /// The streams with a schema.
        known: Vec<String>,
    },
    /// The event has a field the stream does not define.
    #[error("stream {stream:?} has no attribute {attribute:?} (attributes: {})", known.join(", "))]
    UnknownAttribute {
        /// The stream.
        stream: String,
        /// The field.
        attribute: String,
        /// The stream's attributes.
        known: Vec<String>,
    },
    /// A value has the wrong type.
    #[error("attribute {stream}.{attribute} is {expected}, got a {got} value")]
    TypeMismatch {
        /// The stream.
        stream: String,
        /// The attribute.
        attribute: String,
        /// Its type.
        expected: AttrType,
        /// The value's type.
        got: AttrType,
    },
    /// A value of the right type that the worker's store cannot hold: null in a group-by key,
    /// a string with NUL or longer than its column, a non-finite number.
    #[error("attribute {stream}.{attribute}: {reason}")]
    InvalidValue {
        /// The stream.
        stream: String,
        /// The attribute.
        attribute: String,
        /// Why.
        reason: String,
    },
    /// `publish_values` got a different number of values than the stream has attributes.
    #[error("stream {stream:?} has {expected} attributes, got {got} values")]
    WrongArity {
        /// The stream.
        stream: String,
        /// Attributes in the schema.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// `publish_values` needs the stream's schema to name the values.
    #[error(
        "publish_values needs the schema of stream {stream:?}: give it to the builder with \
         .schema(…), or use publish(Event) until a worker has announced it"
    )]
    SchemaRequired {
        /// The stream.
        stream: String,
    },
    /// The event alone exceeds the largest batch a worker accepts.
    #[error("event of {bytes} bytes cannot fit a batch of at most {max} bytes")]
    EventTooLarge {
        /// The event's encoded size (plus the batch header).
        bytes: usize,
        /// The batch size limit.
        max: usize,
    },
    /// The buffer stayed full (for the block timeout, or at once with `DropNewest`); the event
    /// was dropped and counted as `buffer_full`.
    #[error(
        "buffer full ({events} events / {bytes} bytes buffered, waited {waited:?}): event dropped"
    )]
    BufferFull {
        /// Events buffered at the time.
        events: u64,
        /// Bytes buffered at the time.
        bytes: u64,
        /// How long `publish` waited for space.
        waited: Duration,
    },
    /// The event could not be converted from its `Serialize` form.
    #[error("cannot build the event: {0}")]
    Event(#[from] EventError),
    /// The publisher is closed.
    #[error("the publisher is closed")]
    Closed,
    /// `close` timed out; what was still undelivered is counted failed as `closed`.
    #[error("close timed out with {undelivered} events not yet acked (counted failed: closed)")]
    CloseTimeout {
        /// Events that were still unacked.
        undelivered: u64,
    },
}

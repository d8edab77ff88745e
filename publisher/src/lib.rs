//! shardtally publisher: the gateway-side SDK.
//!
//! A gateway embeds a [`Publisher`] and calls [`Publisher::publish`] (or the allocation-free
//! [`Publisher::publish_values`]) once per request. Events are batched per stream, kept in a
//! bounded buffer, and sent over TCP to shardtally workers, which aggregate them and ack each
//! batch only once it is committed to the database. The publisher balances over healthy workers,
//! fails over when one dies, and re-sends what was not acked; the worker deduplicates re-sends,
//! so every event counts exactly once.
//!
//! # Quick start
//!
//! ```no_run
//! use std::time::Duration;
//! use shardtally_publisher::{AttrType, Attribute, Event, Publisher, StreamSchema, ValueRef};
//!
//! # async fn gateway() -> Result<(), Box<dyn std::error::Error>> {
//! let publisher = Publisher::builder("{tcp://10.0.0.1:9611,tcp://10.0.0.2:9611}")
//!     .auth_token(std::env::var("SHARDTALLY_TOKEN").unwrap_or_default())
//!     .publisher_id("gateway-eu1")
//!     .schema(StreamSchema::new("geoTempStream", vec![
//!         Attribute::new("apiName", AttrType::String),
//!         Attribute::new("country", AttrType::String),
//!         Attribute::new("city", AttrType::String),
//!         Attribute::new("requestTimestamp", AttrType::Long),
//!     ]))
//!     .build()?;
//!
//! // Named fields (missing ones are null) ...
//! let event = Event::new()
//!     .with("apiName", "PizzaShackAPI")
//!     .with("country", "Italy")
//!     .with("city", "Naples")
//!     .with("requestTimestamp", 1_763_632_800_000i64);
//! publisher.publish("geoTempStream", &event).await?;
//!
//! // ... or positional values in schema order, encoded straight into the open batch.
//! publisher
//!     .publish_values("geoTempStream", &[
//!         ValueRef::String("PizzaShackAPI"),
//!         ValueRef::String("Italy"),
//!         ValueRef::String("Naples"),
//!         ValueRef::Long(1_763_632_800_000),
//!     ])
//!     .await?;
//!
//! println!("{:?}", publisher.stats());
//! publisher.close(Duration::from_secs(10)).await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`Publisher`] is a cheap `Clone` (`Send + Sync`): clone it into every gateway task. It must be
//! built inside a tokio runtime; one background task owns the connections.
//!
//! # Receiver URL sets
//!
//! | URL set | meaning |
//! |---|---|
//! | `tcp://h:9611` | one worker |
//! | `{tcp://a:9611,tcp://b:9611}` | round-robin over the healthy members, in turns of [`PublisherBuilder::batches_per_turn`] batches (8) |
//! | `{tcp://a:9611\|tcp://b:9611}` | failover: everything to the first healthy member, in order |
//! | `{tcp://a:9611,tcp://b:9611},{tcp://c:9611}` | **every** batch to each group |
//!
//! `tls://` (alias `ssl://`) members are reached over TLS (rustls): the worker's certificate is
//! checked against [`PublisherBuilder::tls_root_certificates_pem`] (or the system's trust store)
//! for the URL's host name or IP address, and
//! [`PublisherBuilder::tls_client_auth_pem`] presents a client certificate to workers that
//! require one. A `tcp://` publisher that reaches a TLS worker is told so and stops trying that
//! member. Mixing `,` and `|` in one group,
//! empty members, and several bare URLs are configuration errors ([`UrlSetError`]).
//!
//! **Several groups replicate.** Each group receives every event; that is meant for separate
//! clusters with separate databases. Two groups in front of workers sharing **one** database
//! count every event **twice**. To spread load over the workers of one cluster, put them in one
//! group: `{a,b,c}`.
//!
//! # Schemas
//!
//! Events are checked against the stream's schema at `publish`: an unknown stream or attribute,
//! a value of the wrong type, or one the workers' store cannot hold (a null group-by key, a
//! string over its `max_chars` or with NUL, a non-finite number) is refused with a
//! [`PublishError`] naming it, counted in
//! [`Stats::invalid`], and never reaches the wire. Schemas come from
//! [`PublisherBuilder::schema`] (authoritative) or, when none is given, from the first worker's
//! handshake. A publisher that starts while every worker is down knows no schema yet: it accepts
//! [`Event`]s into its buffer as they are, and the worker validates them (a batch it rejects is
//! counted failed as `rejected` and never retried). [`Publisher::publish_values`] always needs a
//! schema, since positional values are named by it.
//!
//! [`Event`]s convert lossless numbers: an `int` value fills a `long` or `double` attribute, a
//! `float` a `double`. [`Event::from_serialize`] builds an event from any `serde::Serialize`
//! struct of scalar fields.
//!
//! # Batching and the buffer
//!
//! A stream's batch is sealed at [`batch_max_events`](PublisherBuilder::batch_max_events) or
//! [`batch_max_bytes`](PublisherBuilder::batch_max_bytes) (both lowered to what workers
//! announce), or [`linger`](PublisherBuilder::linger) after its first event. An event stays in the
//! buffer — bounded by [`buffer_max_events`](PublisherBuilder::buffer_max_events) and
//! [`buffer_max_bytes`](PublisherBuilder::buffer_max_bytes) — until its batch is acked by every
//! group or fails. When the buffer is full, [`FullPolicy::Block`] waits up to its timeout for
//! space and [`FullPolicy::DropNewest`] gives up at once; either way the event is dropped,
//! `publish` returns [`PublishError::BufferFull`], and the drop is counted in
//! [`Stats::dropped`] under `buffer_full`. `publish` never waits longer than the block timeout.
//!
//! # Delivery
//!
//! - Each batch carries `(publisher_id, batch_seq)`, the workers' dedup key. The publisher id is
//!   the configured prefix plus a random suffix, unique per instance, as sequence numbers restart
//!   at 0.
//! - A batch leaves the buffer only when acked (workers ack after committing).
//! - A worker that fails — connect or write error, ERROR or GOODBYE frame, three missed
//!   heartbeats ([`heartbeat_interval`](PublisherBuilder::heartbeat_interval)), or a batch not
//!   acked within [`ack_timeout`](PublisherBuilder::ack_timeout) while the worker acked nothing
//!   else meanwhile — is marked unhealthy; its
//!   unacked batches are re-sent to the other healthy members of its group (never to it while
//!   another is healthy), and it is reconnected after a capped exponential backoff with jitter
//!   ([`reconnect_backoff`](PublisherBuilder::reconnect_backoff)).
//! - A batch the worker rejects is failed with its reason (`rejected`) and never retried.
//! - An event not acked within [`delivery_deadline`](PublisherBuilder::delivery_deadline) of its
//!   publication is failed (`deadline`).
//! - Nothing is silent: every drop and failure is counted by reason in [`Stats`], and with
//!   [`delivery_reports`](PublisherBuilder::delivery_reports) each batch's outcome per group
//!   arrives as a [`DeliveryReport`] (with per-event publish times, for latency measurements).
//!
//! [`Publisher::flush`] seals the open batches and waits until everything published before it
//! is acked or failed. [`Publisher::close`] stops accepting events, waits up to its timeout for
//! delivery, then counts what is left as failed (`closed`). Dropping the last handle without
//! `close` stops delivery at once.
//!
//! # Layout
//! - [`protocol`]: values, schemas, frames and the codec (shared with the worker); the byte
//!   layouts are in `PROTOCOL.md`.
//! - `endpoint`: receiver URL sets and member selection.
//! - `event`: [`Event`], built field by field or from a `serde::Serialize` struct.
//! - `batch`, `buffer`: open batches per stream, the bounded buffer and its [`FullPolicy`].
//! - `client`: the [`Publisher`] handle and its builder.
//! - `dispatch`, `connection`: the background task and the per-connection tasks.
//! - `backoff`: reconnect delays. `stats`, `report`: [`Stats`] and [`DeliveryReport`]s.
//! - `error`: one error type per boundary.
//! - `layer` (feature `tower`): a tower layer publishing one event per HTTP request.
#![warn(missing_docs)]

mod backoff;
mod batch;
mod buffer;
mod client;
mod connection;
mod dispatch;
mod endpoint;
mod error;
mod event;
#[cfg(feature = "tower")]
pub mod layer;
pub mod protocol;
mod report;
mod stats;
pub mod tls;

pub use backoff::backoff_delay;
pub use buffer::FullPolicy;
pub use client::{DEFAULT_BATCHES_PER_TURN, Publisher, PublisherBuilder};
pub use endpoint::{Endpoint, EndpointGroup, GroupMode, Scheme, UrlSet};
pub use error::{ConfigError, EventError, PublishError, UrlSetError};
pub use event::Event;
pub use protocol::{AttrType, Attribute, StreamSchema, Value, ValueRef};
pub use report::{DeliveryReport, Outcome};
pub use stats::{
    DROPPED_BUFFER_FULL, EndpointState, EndpointStats, FAILED_CLOSED, FAILED_DEADLINE,
    FAILED_REJECTED, Stats,
};

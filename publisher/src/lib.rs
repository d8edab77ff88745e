//! shardtally publisher: the gateway-side SDK.
//!
//! # Layout
//! - [`protocol`]: values, schemas, frames and the codec (shared with the worker).
//! - `endpoint`: receiver URL sets and member selection.
//! - `event`: [`Event`], built field by field or from a `serde::Serialize` struct.
//! - `batch`, `buffer`: open batches per stream, the bounded buffer and its [`FullPolicy`].
//! - `client`: the [`Publisher`] handle and its builder.
//! - `dispatch`, `connection`: the background task and the per-connection tasks.
//! - `backoff`: reconnect delays. `stats`, `report`: [`Stats`] and [`DeliveryReport`]s.
//! - `error`: one error type per boundary.
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
pub mod protocol;
mod report;
mod stats;

pub use backoff::backoff_delay;
pub use buffer::FullPolicy;
pub use client::{Publisher, PublisherBuilder};
pub use endpoint::{Endpoint, EndpointGroup, GroupMode, Scheme, UrlSet};
pub use error::{ConfigError, EventError, PublishError, UrlSetError};
pub use event::Event;
pub use protocol::{AttrType, Attribute, StreamSchema, Value, ValueRef};
pub use report::{DeliveryReport, Outcome};
pub use stats::{
    DROPPED_BUFFER_FULL, EndpointState, EndpointStats, FAILED_CLOSED, FAILED_DEADLINE,
    FAILED_REJECTED, Stats,
};

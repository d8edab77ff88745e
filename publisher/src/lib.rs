//! shardtally publisher: the gateway-side SDK.
//!
//! # Layout
//! - [`protocol`]: values, schemas, frames and the codec (shared with the worker).

pub mod protocol;

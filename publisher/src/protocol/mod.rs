//! The shardtally wire protocol: typed values, stream schemas, frames and their codec.
//!
//! The worker depends on this module; see `PROTOCOL.md` for the byte layouts.

mod schema;
mod value;

pub use schema::{Attribute, StreamSchema};
pub use value::{AttrType, Value, ValueRef};

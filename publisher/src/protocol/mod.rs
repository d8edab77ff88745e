//! The shardtally wire protocol: typed values, stream schemas, frames and their codec.
//!
//! The worker depends on this module; see `PROTOCOL.md` for the byte layouts.
//!
//! - [`Frame`] and its parts: the messages ([`frame`] module docs draw the layouts).
//! - [`FrameCodec`]: tokio-util codec with a maximum frame length enforced before allocating.
//! - [`BatchEncoder`]: builds a BATCH frame event by event without per-event allocation.
//! - [`EventReader`]: reads a received batch's events, borrowing strings from the frame.

mod codec;
mod encoder;
pub mod frame;
mod schema;
mod value;

pub use codec::FrameCodec;
pub use encoder::{BatchEncoder, batch_seq};
pub use frame::{
    BatchFrame, DEFAULT_MAX_FRAME_LEN, ErrorCode, EventReader, Frame, HELLO_MAGIC, Hello,
    LEN_PREFIX, MAX_PUBLISHER_ID_LEN, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, ProtocolError,
    RejectCode, Welcome,
};
pub use schema::{Attribute, StreamSchema};
pub use value::{AttrType, Value, ValueRef};

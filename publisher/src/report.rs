//! Delivery reports: one per batch per group (a batch split for one group alone: one per part
//! there instead), for callers that measure end-to-end latency
//! (the load generator). Enable with
//! [`PublisherBuilder::delivery_reports`](crate::PublisherBuilder::delivery_reports).

use std::time::Instant;

/// The fate of one batch in one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    /// The stream.
    pub stream: String,
    /// The group (index in the URL set).
    pub group: usize,
    /// The batch's sequence number.
    pub seq: u64,
    /// Events in the batch.
    pub events: u32,
    /// When each event was published, in order (recorded only when reports are enabled).
    pub published_at: Vec<Instant>,
    /// Acked or failed.
    pub outcome: Outcome,
}

/// How a batch ended in one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A worker committed it.
    Acked {
        /// The node id of the worker that acked.
        node_id: String,
        /// When the ack arrived.
        at: Instant,
    },
    /// It will not be delivered.
    Failed {
        /// Why (`rejected: …`, `deadline`, `closed`).
        reason: String,
        /// When it was given up.
        at: Instant,
    },
}

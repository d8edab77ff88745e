//! The aggregation engine: synchronous, pure `record` / `drain` producing
//! [`crate::layout::Delta`]s.
//!
//! - [`layout`] turns a parsed aggregation into its physical [`crate::layout::Layout`] (Siddhi's
//!   table shape).
//! - [`Aggregator`] folds events into partial aggregates and drains them as deltas.

mod aggregator;
mod plan;

pub use aggregator::{Aggregator, EngineError, MAX_EVENT_TIME_MS, MIN_EVENT_TIME_MS};
pub(crate) use plan::layout_for;
pub use plan::{layout, physical_columns};

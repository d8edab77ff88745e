//! The aggregation engine: synchronous, pure `record` / `drain` producing [`crate::layout::Delta`]s.
